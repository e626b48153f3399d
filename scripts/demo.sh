#!/usr/bin/env bash
# README command 1: bootstrap, then run the demo end to end (broker, synthetic stream, job, summary).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/python" -m tools.demo "$@"
