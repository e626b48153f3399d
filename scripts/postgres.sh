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

# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
# Debian's package would create and start a cluster of its own ("15/main" on port 5432): keep it stopped
APT_NO_SERVICE_START=1 apt_install initdb/pg_ctl "install the PostgreSQL server (15+) by hand" postgresql || exit 1
if ! bin="$(find_bin)"; then
  log "postgresql installed but initdb/pg_ctl not found under /usr/lib/postgresql/*/bin"
  exit 1
fi
log "installed: $bin"
echo "$bin"
