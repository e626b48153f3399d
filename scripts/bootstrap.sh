#!/usr/bin/env bash
# Idempotent toolchain bootstrap, called by both README commands and .ci/run.
#
#   1. .venv with the project installed in editable mode (pip install -e .[dev])
#   2. .jars/spark  : Kafka connector + JDBC drivers for spark-submit (pinned in deps/pom.xml)
#   3. .jars/kafka  : the Kafka broker used by the demo and the tests
#
# Everything comes from PyPI and Maven Central. A second run takes seconds:
# each step is skipped while its inputs (setup.py, deps/pom.xml) are unchanged.
# --venv-only: step 1 alone (scripts/test.sh --fast runs no JVM: no Java, Maven or jars needed).
set -euo pipefail
venv_only=0
if [[ "${1:-}" == --venv-only ]]; then venv_only=1; fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP_DIR="$ROOT/.jars"
mkdir -p "$STAMP_DIR"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

need() {
  command -v "$1" >/dev/null 2>&1 || { log "missing '$1': $2"; exit 1; }
}
need "$PYTHON" "install Python 3.10+"
if (( ! venv_only )); then
  need java "install a Java 17 runtime (Debian: apt-get install openjdk-17-jre-headless)"
  need mvn "install Maven (Debian: apt-get install maven)"
fi

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# --- 1. Python environment ---------------------------------------------------
py_hash="$(hash_of setup.py deps/pom.xml)"
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [[ "$(cat "$STAMP_DIR/.python.stamp" 2>/dev/null)" != "$py_hash" ]]; then
  log "installing the project and its Python dependencies (pip install -e .[dev])"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # PYTHONWARNINGS reaches pip's build subprocess: setuptools' generic "editable
  # installation" banner is not about this project and would be the first thing
  # a new user reads.
  PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
  echo "$py_hash" > "$STAMP_DIR/.python.stamp"
fi

if (( venv_only )); then
  log "ready: $VENV (no jars: --venv-only)"
  exit 0
fi

# --- 2./3. Maven Central artifacts ------------------------------------------
pyspark_jars="$("$VENV/bin/python" -c 'import pyspark, os; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"
jar_hash="$(hash_of deps/pom.xml)"
resolve() {  # resolve <profile> <dir>
  local profile="$1" dir="$2"
  if [[ "$(cat "$dir/.stamp" 2>/dev/null)" == "$jar_hash" ]]; then return; fi
  log "resolving Maven profile '$profile' into $dir"
  rm -rf "$dir" && mkdir -p "$dir"
  mvn -q -B -f deps/pom.xml -P"$profile" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$dir" >"$dir.log" 2>&1 \
      || { log "Maven failed, see $dir.log"; tail -20 "$dir.log" >&2; exit 1; }
  echo "$jar_hash" > "$dir/.stamp"
}
resolve spark "$ROOT/.jars/spark-all"
resolve kafka "$ROOT/.jars/kafka"

# Spark already ships most of the connector's transitive jars (Scala, Hadoop,
# slf4j...). Adding a second copy at another version breaks class loading, so
# only the jars pyspark does not have go on the job's classpath.
if [[ "$(cat "$ROOT/.jars/spark/.stamp" 2>/dev/null)" != "$jar_hash" ]]; then
  rm -rf "$ROOT/.jars/spark" && mkdir -p "$ROOT/.jars/spark"
  for jar in "$ROOT"/.jars/spark-all/*.jar; do
    base="$(basename "$jar" | sed -E 's/-[0-9][0-9A-Za-z.\-]*\.jar$//')"
    if ! compgen -G "$pyspark_jars/$base-[0-9]*.jar" >/dev/null; then
      cp "$jar" "$ROOT/.jars/spark/"
    fi
  done
  echo "$jar_hash" > "$ROOT/.jars/spark/.stamp"
fi
log "ready: $(ls "$ROOT"/.jars/spark/*.jar | wc -l) job jars, $(ls "$ROOT"/.jars/kafka/*.jar | wc -l) broker jars"
