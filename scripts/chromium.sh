#!/usr/bin/env bash
# Headless Chromium for the browser tests, from Debian's packages (no browser download).
#
# Idempotent: when a chromium binary is already there it only prints its path;
# otherwise it installs the `chromium` package with apt-get (as root, or through
# sudo). Playwright drives this binary (executable_path); it downloads no browser.
#
# stdout: the chromium executable, e.g. /usr/bin/chromium
# exit 1: Chromium is missing and could not be installed (the browser tests then
#         skip, or fail when CI is set)
set -euo pipefail

log() { printf '[chromium] %s\n' "$*" >&2; }

find_bin() {
  local name
  for name in "${ANOMALY_CHROMIUM:-}" chromium chromium-browser; do
    [[ -n "$name" ]] || continue
    if command -v "$name" >/dev/null 2>&1; then
      readlink -f "$(command -v "$name")"
      return 0
    fi
  done
  return 1
}

if bin="$(find_bin)"; then
  echo "$bin"
  exit 0
fi

# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
apt_install chromium "install Chromium by hand (or set ANOMALY_CHROMIUM)" chromium fonts-liberation || exit 1
if ! bin="$(find_bin)"; then
  log "chromium installed but not found on PATH"
  exit 1
fi
log "installed: $bin"
echo "$bin"
