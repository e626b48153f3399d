#!/usr/bin/env bash
# Submit the anomaly-detection job with Spark's own spark-submit (from the venv).
#
#   ./spark-submit.sh [spark-submit options...] -- --config conf/demo.yaml [job options...]
#   ./spark-submit.sh --config conf/demo.yaml            # no "--": everything goes to the job
#
# Adds what the job needs and passes every spark-submit option through unchanged:
#   --master local[*]          unless you give --master (standalone, yarn, k8s://...)
#   --jars  .jars/spark/*.jar  Kafka connector + SQLite/PostgreSQL JDBC drivers (from Maven Central,
#                              resolved by scripts/bootstrap.sh); shipped to the cluster by Spark
#   --py-files build/anomaly_job.zip   the jobs/, detectors/ and incidents/ packages (the query), rebuilt on every submit
#   log4j2 config (conf/log4j2.properties) for a quiet driver log in local mode
#   on a cluster master (spark://, yarn, k8s://): the venv packed with venv-pack (build/anomaly-env.tar.gz,
#                              rebuilt when its packages change) as --archives ...#env, with
#                              the executors' python3 taken from it (./env/bin first on their PATH); ANOMALY_SHIP_ENV=0,
#                              or your own spark.pyspark.python, turns this off
#   the driver JVM's java.io.tmpdir in the job's temp_dir (see README "Reliability")
#
# Job options (python -m jobs.main --help): --config FILE, --available-now, --checkpoint-dir DIR,
# --validate.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

submit_args=()
job_args=()
if [[ " $* " == *" -- "* ]]; then
  while [[ $# -gt 0 && "$1" != "--" ]]; do submit_args+=("$1"); shift; done
  shift  # the "--"
  job_args=("$@")
else
  job_args=("$@")
fi
for arg in "${submit_args[@]}" "${job_args[@]}"; do
  if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then usage; exit 0; fi
done
if [[ ${#job_args[@]} -eq 0 ]]; then usage >&2; exit 2; fi

VENV="${ANOMALY_VENV:-$ROOT/.venv}"
if [[ ! -x "$VENV/bin/spark-submit" ]] || ! compgen -G "$ROOT/.jars/spark/*.jar" >/dev/null; then
  echo "spark-submit.sh: run scripts/bootstrap.sh first (venv or jars missing)" >&2
  exit 1
fi

# Package the Python code the driver and executors import: jobs/, detectors/, incidents/ only (tools/ and
# evaluation/ run around the query, never in it); rebuilt on every submit.
(cd "$ROOT" && "$VENV/bin/python" -m tools.cluster code-zip >/dev/null)

extra=()
master="local[*]"
prev=""
own_python=false
for arg in "${submit_args[@]}"; do
  [[ "$prev" == "--master" ]] && master="$arg"
  [[ "$arg" == --master=* ]] && master="${arg#--master=}"
  [[ "$arg" == spark.pyspark.python=* ]] && own_python=true
  prev="$arg"
done
[[ " ${submit_args[*]} " == *" --master"* ]] || extra+=(--master "$master")
executor_tmp=""
if [[ "$master" != local* ]]; then
  if [[ "${ANOMALY_SHIP_ENV:-1}" != 0 ]] && ! $own_python; then
    # the executors' Python: this venv, packed (cached while its packages are unchanged)
    env_archive="$(cd "$ROOT" && "$VENV/bin/python" -m tools.cluster pack-env)"
    extra+=(--archives "$env_archive#env")
    # Spark runs the Python of the executors *and* of a few driver-side helpers (transformWithState's
    # schema check) with one command, spark.pyspark.python. "./env/bin/python" exists only in an
    # executor's working dir, so the command is "python3" found on PATH: ./env/bin first on the
    # executors (spark.executorEnv.PATH; the executor JVM resolves it), the venv first on the driver.
    extra+=(--conf "spark.pyspark.python=python3")
    # (Spark hands the executors' environment to the driver-side helpers too: the venv comes second)
    extra+=(--conf "spark.executorEnv.PATH=./env/bin:$VENV/bin:$PATH")
    extra+=(--conf "spark.pyspark.driver.python=$VENV/bin/python")
    export PATH="$VENV/bin:$PATH"
  fi
  # an executor's temp files in its own working dir (removed with it), not in the host's /tmp
  executor_tmp=" -Djava.io.tmpdir=."
fi
# the driver JVM starts before the job's Python: give it the job's temp dir now
driver_tmp=""
config=""
prev=""
for arg in "${job_args[@]}"; do
  [[ "$prev" == "--config" ]] && config="$arg"
  [[ "$arg" == --config=* ]] && config="${arg#--config=}"
  prev="$arg"
done
# (from the caller's directory: the config's relative paths are relative to it)
if [[ -n "$config" ]] \
    && tmp_dir="$(PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$VENV/bin/python" -m jobs.main --config "$config" --print-temp-dir 2>/dev/null)"; then
  mkdir -p "$tmp_dir"
  driver_tmp=" -Djava.io.tmpdir=$tmp_dir"
fi
# a class-data-sharing archive for the driver JVM, when one is named: mapped, or, while the file does not
# exist yet, the JVM ready to write it on request (see jobs/session.py)
driver_cds=""
archive="${ANOMALY_DRIVER_CLASS_ARCHIVE:-}"
if [[ -n "$archive" && -f "$archive" ]]; then
  driver_cds=" -XX:SharedArchiveFile=$archive"
elif [[ -n "$archive" ]]; then
  driver_cds=" -XX:+RecordDynamicDumpInfo -Xlog:cds*=error"
fi
jars="$(ls "$ROOT"/.jars/spark/*.jar | paste -sd, -)"
extra+=(--jars "$jars")
extra+=(--py-files "$ROOT/build/anomaly_job.zip")
# -XX:-DontCompileHugeMethods: let the JIT compile Spark's big generated validation method (see jobs/session.py)
extra+=(--conf "spark.driver.extraJavaOptions=-XX:-DontCompileHugeMethods -Dlog4j2.configurationFile=file:$ROOT/conf/log4j2.properties$driver_tmp$driver_cds")
extra+=(--conf "spark.executor.extraJavaOptions=-XX:-DontCompileHugeMethods$executor_tmp")
extra+=(--conf "spark.ui.showConsoleProgress=false")

export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$VENV/bin/python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$VENV/bin/python}"
export ANOMALY_UNDER_SUBMIT=1
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
# Spark 4.2 prints two lines on every start that are neither errors nor ours: the JVM's
# "WARNING: Using incubator modules: jdk.incubator.vector" (Spark's launcher always adds that
# module; no JVM flag silences the notice) and PySpark's "Starting Streaming
# TransformWithStateInPandas Python worker." (print()ed, with a blank line, before any of the
# job's code is imported). Exactly those lines are dropped from stderr; everything else passes
# through unchanged, line by line. The filter ignores Ctrl-C and TERM so that the job's own
# lines on a clean stop still get through; it ends when spark-submit closes stderr. exec keeps
# this script's PID the JVM's, so signals reach spark-submit as before.
exec "$VENV/bin/spark-submit" "${extra[@]}" "${submit_args[@]}" "$ROOT/jobs/main.py" "${job_args[@]}" \
  2> >(trap '' INT TERM; exec awk '
        /^WARNING: Using incubator modules: jdk\.incubator\.vector$/ { next }
        /^Starting Streaming TransformWithStateInPandas Python worker\.$/ { blank = 1; next }
        blank && /^$/ { blank = 0; next }
        { blank = 0; print; fflush() }' >&2)
