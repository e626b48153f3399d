"""Packaging for the streaming anomaly-detection job.

pyspark is pinned to the Spark version in deps/pom.xml, the single place where
versions live, so the Python package and the Maven Kafka connector always match.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
SPARK_VERSION = re.search(r"<spark\.version>([^<]+)</spark\.version>", (HERE / "deps" / "pom.xml").read_text()).group(1)

# Everything the Spark job needs; detectors/ alone only needs numpy.
SPARK_DEPS = [
    f"pyspark=={SPARK_VERSION}",
    # pyspark's testing helpers and Arrow conversion break on pandas 3
    "pandas>=2.2,<3",
    "pyarrow>=15",
    # transformWithState talks to the JVM state server over protobuf
    "protobuf>=4.21",
    "grpcio>=1.60",
    "kafka-python>=2.2",
    "pyyaml>=6",
]

# The dashboard and the HTML report (tools/dashboard.py, tools/report.py): plotly ships
# plotly.js inside its wheel, so no page loads anything from the internet.
DASHBOARD_DEPS = [
    "plotly>=5.20",
    "starlette>=0.37",
    "uvicorn>=0.29",
    "python-multipart>=0.0.9",  # the sandbox's CSV upload form
]

setup(
    name="streaming-anomaly",
    version="0.1.0",
    description="Kafka -> Spark Structured Streaming -> stateful anomaly detectors -> Kafka + JDBC",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # jobs: the streaming query (shipped to executors); detectors: the pure detector library;
    # tools: what runs around the query (demo, local broker, cluster, backtest, dashboard, report);
    # evaluation: NAB scoring. See README "How it works".
    packages=find_packages(
        include=["jobs", "jobs.*", "detectors", "detectors.*", "incidents", "tools", "tools.*", "evaluation"]
    ),
    package_data={"tools": ["web/*.js", "web/*.css"]},
    install_requires=[
        "numpy>=1.26",
    ],
    extras_require={
        "spark": SPARK_DEPS,
        "postgres": ["psycopg[binary]>=3.1"],
        "dashboard": DASHBOARD_DEPS,
        "dev": [
            *SPARK_DEPS,
            *DASHBOARD_DEPS,
            # browser tests drive Debian's chromium (scripts/chromium.sh); no browser download
            "playwright>=1.44",
            # tests/test_postgres_sink.py and tools/repository.py's PostgreSQL reads
            "psycopg[binary]>=3.1",
            "pytest>=8",
            "pytest-timeout>=2.3",
            "chispa>=0.10",
            "hypothesis>=6.100",
            "ruff>=0.6",
            # scripts/test.sh type-checks detectors/ and jobs/ ([tool.mypy] in pyproject.toml)
            "mypy>=1.10",
            # the plugin example test builds a wheel of tests/plugin_example offline
            "setuptools>=70.1",
            "wheel",
            # the executors' Python environment for a cluster (--archives), see tools/cluster.py
            "venv-pack>=0.2",
            # the local broker's TLS certificates (tools/local_kafka.py)
            "cryptography>=42",
        ],
    },
    entry_points={
        "console_scripts": [
            "anomaly-job=jobs.main:main",
            "anomaly-backtest=tools.backtest:main",
            "anomaly-dashboard=tools.dashboard:main",
            "anomaly-report=tools.report:main",
            "anomaly-notify=tools.notify:main",
            "anomaly-feedback=tools.feedback:main",
        ],
        # Built-in detectors register in code; third-party packages add theirs here:
        #   entry_points={"streaming_anomaly.detectors": ["mine = mypkg.mod:MyDetector"]}
        "streaming_anomaly.detectors": [],
    },
)
