#!/usr/bin/env bash
# A Spark standalone cluster on loopback from the venv's pyspark: master + 2 workers (1 core each).
#
#   scripts/cluster.sh start     # master spark://127.0.0.1:7077, UI http://127.0.0.1:8080/
#   scripts/cluster.sh status
#   scripts/cluster.sh stop      # leaves no process behind
#
# Options (after the command): --workers N, --port P, --ui-port P, --dir DIR (default work/cluster).
# Logs and work dirs go under work/cluster/. See tools/cluster.py and README "Running on a cluster".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ ! -x "$ROOT/.venv/bin/spark-class" ]]; then
  echo "cluster.sh: run scripts/bootstrap.sh first" >&2
  exit 1
fi
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m tools.cluster "$@"
