"""What runs around the streaming query, never inside it: the demo, the synthetic stream, the
local Kafka broker and Spark cluster, the backtest, the results repository, the dashboard and
the HTML report. None of it is shipped to executors (spark-submit.sh ships ``jobs`` and
``detectors`` only), and importing it does not import pyspark."""
