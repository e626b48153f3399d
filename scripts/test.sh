#!/usr/bin/env bash
# README command 2: bootstrap, lint, type check, then the whole test suite (one SparkSession, one broker).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/bootstrap.sh"
"$ROOT/scripts/postgres.sh" >/dev/null || [[ -z "${CI:-}" ]]  # PostgreSQL for the tests; required under CI
"$ROOT/scripts/chromium.sh" >/dev/null || [[ -z "${CI:-}" ]]  # headless Chromium for the browser tests; required under CI
"$ROOT/scripts/alertmanager.sh" >/dev/null || [[ -z "${CI:-}" ]]  # Alertmanager for the notifier tests; required under CI
(cd "$ROOT" && .venv/bin/mypy)  # type check: detectors/ and jobs/ ([tool.mypy] in pyproject.toml)
cd "$ROOT"
.venv/bin/ruff check jobs detectors tools evaluation tests bench
exec .venv/bin/python -m pytest -q "$@"
