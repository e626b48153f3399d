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
#   --py-files build/anomaly_job.zip   the jobs/ and detectors/ packages, rebuilt on every submit
#   log4j2 config (conf/log4j2.properties) for a quiet driver log in local mode
# The executors' Python needs numpy, pandas (<3), pyarrow and protobuf: on a cluster ship an
# environment with --archives (see README "Running on a cluster").
#
# Job options (python -m jobs.main --help): --config FILE, --available-now, --checkpoint-dir DIR,
# --validate.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

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

# Package the Python code the driver and executors import.
mkdir -p "$ROOT/build"
rm -f "$ROOT/build/anomaly_job.zip"
(cd "$ROOT" && "$VENV/bin/python" - <<'PY'
import pathlib, zipfile
with zipfile.ZipFile("build/anomaly_job.zip", "w", zipfile.ZIP_DEFLATED) as z:
    for package in ("jobs", "detectors"):
        for path in sorted(pathlib.Path(package).rglob("*.py")):
            z.write(path)
PY
)

extra=()
has_master=false
for arg in "${submit_args[@]}"; do [[ "$arg" == "--master" || "$arg" == --master=* ]] && has_master=true; done
$has_master || extra+=(--master "local[*]")
jars="$(ls "$ROOT"/.jars/spark/*.jar | paste -sd, -)"
extra+=(--jars "$jars")
extra+=(--py-files "$ROOT/build/anomaly_job.zip")
# -XX:-DontCompileHugeMethods: let the JIT compile Spark's big generated validation method (see jobs/session.py)
extra+=(--conf "spark.driver.extraJavaOptions=-XX:-DontCompileHugeMethods -Dlog4j2.configurationFile=file:$ROOT/conf/log4j2.properties")
extra+=(--conf "spark.executor.extraJavaOptions=-XX:-DontCompileHugeMethods")
extra+=(--conf "spark.ui.showConsoleProgress=false")

export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$VENV/bin/python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$VENV/bin/python}"
export ANOMALY_UNDER_SUBMIT=1
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
exec "$VENV/bin/spark-submit" "${extra[@]}" "${submit_args[@]}" "$ROOT/jobs/main.py" "${job_args[@]}"
