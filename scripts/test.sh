#!/usr/bin/env bash
# README command 2: bootstrap, lint, type check, then the test suite (one SparkSession, one broker).
#
#   scripts/test.sh          the whole suite, what CI runs; ends with the 10 slowest tests
#   scripts/test.sh --fast   only the tests that need no Spark, broker, PostgreSQL, cluster, browser or
#                            Alertmanager (markers from fixtures: tests/lanes.py); no Maven jars, no installs
#   scripts/test.sh --long   the whole suite with the fault tests' longer soak (ANOMALY_LONG_TESTS=1)
#
# Other arguments go to pytest (scripts/test.sh --fast tests/test_windows.py -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lane=full
args=()
for arg in "$@"; do
  case "$arg" in
    --fast) lane=fast ;;
    --long) lane=long ;;
    *) args+=("$arg") ;;
  esac
done
if [[ "$lane" == fast ]]; then
  "$ROOT/scripts/bootstrap.sh" --venv-only
else
  "$ROOT/scripts/bootstrap.sh"
  "$ROOT/scripts/postgres.sh" >/dev/null || [[ -z "${CI:-}" ]]  # PostgreSQL for the tests; required under CI
  "$ROOT/scripts/chromium.sh" >/dev/null || [[ -z "${CI:-}" ]]  # headless Chromium for the browser tests; required under CI
  "$ROOT/scripts/alertmanager.sh" >/dev/null || [[ -z "${CI:-}" ]]  # Alertmanager for the notifier tests; required under CI
fi
(cd "$ROOT" && .venv/bin/mypy)  # type check: detectors/ and jobs/ ([tool.mypy] in pyproject.toml)
cd "$ROOT"
.venv/bin/ruff check jobs detectors tools evaluation tests bench
case "$lane" in
  fast) exec .venv/bin/python -m pytest -q --fast "${args[@]}" ;;
  long) export ANOMALY_LONG_TESTS=1 ;;
esac
exec .venv/bin/python -m pytest -q --durations=10 "${args[@]}"
