"""SparkSession for the job, the demo and the tests: one place for Spark settings."""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pyspark.sql import SparkSession

REPO_ROOT = Path(__file__).resolve().parent.parent
JAR_DIR = Path(os.environ.get("ANOMALY_SPARK_JARS", REPO_ROOT / ".jars" / "spark"))

DEFAULT_CONF = {
    # transformWithState keeps its state in RocksDB (required by the operator)
    "spark.sql.streaming.stateStore.providerClass": (
        "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
    ),
    # changelog checkpointing: each batch uploads a small delta, not a snapshot
    "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
    # Spark's default of 200 partitions means 200 tiny state stores per batch;
    # fixed at the first run of a checkpoint, so choose it up front.
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.streaming.noDataMicroBatches.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
    # the sink's observed counts (jobs/sinks.py: one per dead-letter reason) make a plan of more
    # than Spark's default 25 fields, and Spark warns on the job's log the first time it prints one
    "spark.sql.debug.maxToStringFields": "100",
}


# HotSpot does not JIT-compile methods over 8,000 bytes of bytecode, and the code
# Spark generates for the source stage's validation (one big projection) is
# such a method: interpreted, it halved the stage's throughput (measured with
# and without the flag: 226k vs 361k records/s on 2 cores).
JIT_OPTIONS = "-XX:-DontCompileHugeMethods"

# A JDK class-data-sharing archive of a driver that has run the job (docs/operations.md, "Faster
# driver starts"): the driver JVM maps Spark's classes from it instead of loading and verifying them
# one by one (bench/driver_start.py). While the file named does not exist yet, the driver starts ready
# to write it on request (``jcmd <pid> VM.cds dynamic_dump <file>``), its warnings about the classes it
# leaves out kept from the job's log. An archive that does not fit this JDK or classpath is ignored.
CLASS_ARCHIVE_ENV = "ANOMALY_DRIVER_CLASS_ARCHIVE"


def class_archive_option() -> str:
    """The driver JVM's option for ``$ANOMALY_DRIVER_CLASS_ARCHIVE``: map the file, or be ready to write
    it when it does not exist yet; ``""`` when the variable is unset."""
    path = os.environ.get(CLASS_ARCHIVE_ENV, "")
    if not path:
        return ""
    return f" -XX:SharedArchiveFile={path}" if os.path.isfile(path) else " -XX:+RecordDynamicDumpInfo -Xlog:cds*=error"


def job_jars() -> list[str]:
    """The Kafka connector and JDBC drivers resolved by scripts/bootstrap.sh."""
    jars = sorted(glob.glob(str(JAR_DIR / "*.jar")))
    if not jars:
        raise RuntimeError(
            f"no jars in {JAR_DIR}: run scripts/bootstrap.sh (it resolves the Kafka connector "
            "and JDBC drivers from Maven Central)"
        )
    return jars


def build_session(
    app_name: str = "anomaly-job", conf: Mapping[str, str] | None = None, temp_dir: Mapping[str, Path] | None = None
) -> SparkSession:
    """Create (or reuse) the SparkSession.

    Under spark-submit the master and jars come from the command line; run from
    plain Python (tests, demo) it defaults to local mode with the bootstrap jars.
    ``temp_dir`` (jobs/workdir.py ``claim``) receives Spark's scratch files and the
    driver JVM's temp files, unless ``conf`` sets ``spark.local.dir`` itself; under
    spark-submit the driver's ``java.io.tmpdir`` is set by spark-submit.sh.
    """
    conf = {**DEFAULT_CONF, **dict(conf or {})}
    if temp_dir is not None:
        conf.setdefault("spark.local.dir", str(temp_dir["spark"]))
        # Python's tempfile in the driver and in Spark's Python workers (they inherit the environment)
        os.environ["TMPDIR"] = str(temp_dir["python"])
    # Spark's Python workers must run this interpreter (the venv's), not `python3`
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    under_submit = "SPARK_SUBMIT_OPTS" in os.environ or os.environ.get("ANOMALY_UNDER_SUBMIT") == "1"
    if not under_submit:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # a cluster from plain Python (bench/throughput.py --master): the caller adds the code and
        # venv shipping settings (tools/cluster.py shipping_conf), as spark-submit.sh does
        master = os.environ.get("ANOMALY_SPARK_MASTER", "local[*]")
        builder = builder.master(master)
        builder = builder.config("spark.jars", ",".join(job_jars()))
        java_options = conf.pop(
            "spark.driver.extraJavaOptions",
            f"{JIT_OPTIONS} -Dlog4j2.configurationFile={REPO_ROOT / 'conf' / 'log4j2.properties'}",
        )
        if temp_dir is not None:  # the JVM's temp files (RocksDB's native library...): with the job's
            java_options += f" -Djava.io.tmpdir={temp_dir['jvm']}"
        java_options += class_archive_option()
        builder = builder.config("spark.driver.extraJavaOptions", java_options)
        builder = builder.config("spark.driver.memory", os.environ.get("ANOMALY_DRIVER_MEMORY", "2g"))
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
