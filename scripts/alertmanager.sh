#!/usr/bin/env bash
# Prometheus Alertmanager for the notifier's tests and the demo, from Debian's packages (no download).
#
#   scripts/alertmanager.sh                 print the alertmanager binary, installing it when missing
#   scripts/alertmanager.sh start DIR [PORT] [WEBHOOK_URL]
#                                           start it on 127.0.0.1:PORT (default 9093) with
#                                           conf/alertmanager.yml, its receiver's URL replaced by
#                                           WEBHOOK_URL when given; config, data and log in DIR;
#                                           prints its URL; the pid is in DIR/alertmanager.pid
#   scripts/alertmanager.sh stop DIR        stop the one started with DIR
#
# Idempotent: when the binary is already there it only prints its path; otherwise it
# installs the `prometheus-alertmanager` package with apt-get (as root, or through sudo),
# with services kept from starting (Debian's package would start one on :9093). The
# pytest fixture (tests/alertmanager_fixture.py) starts its own, on a free port.
#
# exit 1: Alertmanager is missing and could not be installed, or did not start
set -euo pipefail

log() { printf '[alertmanager] %s\n' "$*" >&2; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

find_bin() {
  local name
  for name in "${ANOMALY_ALERTMANAGER:-}" prometheus-alertmanager alertmanager; do
    [[ -n "$name" ]] || continue
    if command -v "$name" >/dev/null 2>&1; then
      readlink -f "$(command -v "$name")"
      return 0
    fi
  done
  [[ -x /usr/bin/prometheus-alertmanager ]] && { echo /usr/bin/prometheus-alertmanager; return 0; }
  return 1
}

install_bin() {
  if bin="$(find_bin)"; then
    echo "$bin"
    return 0
  fi
  # shellcheck source=scripts/apt.sh
  source "$ROOT/scripts/apt.sh"
  APT_NO_SERVICE_START=1 apt_install alertmanager "install Prometheus Alertmanager by hand (or set ANOMALY_ALERTMANAGER)" \
    prometheus-alertmanager || return 1
  if ! bin="$(find_bin)"; then
    log "prometheus-alertmanager installed but its binary was not found"
    return 1
  fi
  log "installed: $bin"
  echo "$bin"
}

start() {
  local dir="$1" port="${2:-9093}" webhook="${3:-}" config bin
  bin="$(install_bin)" || exit 1
  mkdir -p "$dir/data"
  config="$dir/alertmanager.yml"
  if [[ -n "$webhook" ]]; then
    sed "s#http://127.0.0.1:5001/alertmanager#${webhook}#" "$ROOT/conf/alertmanager.yml" >"$config"
  else
    cp "$ROOT/conf/alertmanager.yml" "$config"
  fi
  # --cluster.listen-address= : a single instance, no gossip port
  "$bin" --config.file="$config" --storage.path="$dir/data" \
    --web.listen-address="127.0.0.1:$port" --cluster.listen-address= --log.level=warn --data.retention=744h \
    >"$dir/alertmanager.log" 2>&1 &
  echo $! >"$dir/alertmanager.pid"
  local i
  for i in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1; then
      echo "http://127.0.0.1:$port"
      return 0
    fi
    if ! kill -0 "$(cat "$dir/alertmanager.pid")" 2>/dev/null; then
      log "did not start:"
      tail -20 "$dir/alertmanager.log" >&2
      return 1
    fi
    sleep 0.1
  done
  log "not ready on port $port after 10 s (log: $dir/alertmanager.log)"
  return 1
}

stop() {
  local dir="$1" pid
  [[ -f "$dir/alertmanager.pid" ]] || return 0
  pid="$(cat "$dir/alertmanager.pid")"
  kill "$pid" 2>/dev/null || true
  rm -f "$dir/alertmanager.pid"
}

case "${1:-}" in
  "") install_bin ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) log "usage: $0 [start DIR [PORT] [WEBHOOK_URL] | stop DIR]"; exit 2 ;;
esac
