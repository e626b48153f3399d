#!/usr/bin/env bash
# PostgreSQL server binaries for the tests, from Debian's packages (no Docker).
#
# Idempotent: when initdb and pg_ctl are already there it only prints where they
# are (a few milliseconds); otherwise it installs the `postgresql` package with
# apt-get (as root, or through sudo). It starts no server: the pytest fixture in
# tests/postgres_fixture.py makes a throwaway cluster per test session.
#
# stdout: the directory holding initdb/pg_ctl/postgres, e.g. /usr/lib/postgresql/15/bin
# exit 1: PostgreSQL is missing and could not be installed (the PostgreSQL tests then skip,
#         or fail when CI is set)
set -euo pipefail

log() { printf '[postgres] %s\n' "$*" >&2; }

find_bin() {
  local dir
  # the newest major version installed wins; Debian keeps the server out of PATH
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
      echo "$dir"
      return 0
    fi
  done
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
    return 0
  fi
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
  log "initdb/pg_ctl not found and not root (nor passwordless sudo): apt-get install postgresql"
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  log "initdb/pg_ctl not found and no apt-get: install the PostgreSQL server (15+) by hand"
  exit 1
fi

log "installing the postgresql package (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt_log="$(mktemp)"
cleanup=(rm -f "$apt_log")
# Debian's package creates and starts a cluster of its own ("15/main" on port 5432)
# through invoke-rc.d; a temporary policy-rc.d (exit 101: "action forbidden") stops
# that start, so installing leaves no server running
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  "${sudo[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
  cleanup+=(/usr/sbin/policy-rc.d)
fi
trap '"${sudo[@]}" "${cleanup[@]}"' EXIT
install() {
  "${sudo[@]}" apt-get install -y -q --no-install-recommends postgresql >>"$apt_log" 2>&1
}
if ! install; then
  "${sudo[@]}" apt-get update -q >>"$apt_log" 2>&1 || true
  if ! install; then
    log "apt-get install postgresql failed:"
    tail -20 "$apt_log" >&2
    exit 1
  fi
fi
if ! bin="$(find_bin)"; then
  log "postgresql installed but initdb/pg_ctl not found under /usr/lib/postgresql/*/bin"
  exit 1
fi
log "installed: $bin"
echo "$bin"
