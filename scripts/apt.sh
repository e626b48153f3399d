# Sourced by scripts/chromium.sh and scripts/postgres.sh: install Debian packages the tests need.
#
#   apt_install WHAT HINT PACKAGE...
#
# As root, or through passwordless sudo; tries the install, and once more after
# `apt-get update` (a fresh machine's package lists may be empty or stale). On
# failure it says why (WHAT names the missing thing, HINT what to do without
# apt-get) with the tail of apt's log, and returns 1. With
# APT_NO_SERVICE_START=1 a temporary policy-rc.d (exit 101: "action forbidden")
# keeps the packages from starting services of their own (Debian's postgresql
# would start a "main" cluster on port 5432).
# Needs a log function (each script prefixes its own lines).

apt_install() {
  local what="$1" hint="$2"
  shift 2
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      log "$what not found and not root (nor passwordless sudo): apt-get install $*"
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    log "$what not found and no apt-get: $hint"
    return 1
  fi
  log "installing $* (apt-get)"
  local apt_log policy="" status=0
  apt_log="$(mktemp)"
  if [[ "${APT_NO_SERVICE_START:-0}" == 1 && ! -e /usr/sbin/policy-rc.d ]]; then
    "${sudo[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
    policy=/usr/sbin/policy-rc.d
  fi
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
  if ! "${apt[@]}" install -y -q --no-install-recommends "$@" >>"$apt_log" 2>&1; then
    "${apt[@]}" update -q >>"$apt_log" 2>&1 || true
    if ! "${apt[@]}" install -y -q --no-install-recommends "$@" >>"$apt_log" 2>&1; then
      log "apt-get install $* failed:"
      tail -20 "$apt_log" >&2
      status=1
    fi
  fi
  [[ -z "$policy" ]] || "${sudo[@]}" rm -f "$policy"
  rm -f "$apt_log"
  return "$status"
}
