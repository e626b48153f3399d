"""A worked example of a third-party detector plugin for streaming-anomaly.

Install it next to the job (``pip install ./tests/plugin_example``) and a job
config can say ``detector: zscore_example``; nothing in this project changes.
The only link is the entry point group below.
"""

from setuptools import setup

setup(
    name="zscore-example",
    version="0.1.0",
    description="Example streaming-anomaly detector plugin: cumulative mean/std z-score",
    python_requires=">=3.10",
    packages=["zscore_example"],
    # detectors.base is provided by the host project; pip --no-deps in the tests.
    install_requires=["streaming-anomaly", "numpy>=1.26"],
    entry_points={
        "streaming_anomaly.detectors": [
            "zscore_example = zscore_example.detector:ZScoreDetector",
        ],
    },
)
