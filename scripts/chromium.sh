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

if [[ "$(id -u)" == 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  log "chromium not found and not root (nor passwordless sudo): apt-get install chromium"
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  log "chromium not found and no apt-get: install Chromium by hand (or set ANOMALY_CHROMIUM)"
  exit 1
fi

log "installing the chromium package (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt_log="$(mktemp)"
trap 'rm -f "$apt_log"' EXIT
install() {
  "${sudo[@]}" apt-get install -y -q --no-install-recommends chromium fonts-liberation >>"$apt_log" 2>&1
}
if ! install; then
  "${sudo[@]}" apt-get update -q >>"$apt_log" 2>&1 || true
  if ! install; then
    log "apt-get install chromium failed:"
    tail -20 "$apt_log" >&2
    exit 1
  fi
fi
if ! bin="$(find_bin)"; then
  log "chromium installed but not found on PATH"
  exit 1
fi
log "installed: $bin"
echo "$bin"
