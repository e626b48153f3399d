"""Job configuration: load YAML, validate everything before Spark starts.

Every error names the field it is about, e.g.
``streams[0].aggregation.agg_function: must be one of none, sum, ...; got 'mean'``.

A config holds one or more streams::

    checkpoint_dir: work/checkpoints        # one sub-directory per stream
    streams:
      - name: web
        source:
          bootstrap_servers: 127.0.0.1:9092
          topics: [metrics-a, metrics-b]     # or topic_pattern: "metrics-.*"
          starting_offsets: earliest
        aggregation:
          agg_function: avg
          agg_window_millis: 60000
          allowed_lateness_millis: 30000
        detectors:
          - name: ema
            params: {window: 50}
        sinks:
          output_topic: anomalies
          dead_letter_topic: anomalies-dlq
          jdbc: {url: "jdbc:sqlite:work/anomalies.db", table: predictions}
          # PostgreSQL: jdbc: {url: "jdbc:postgresql://db:5432/anomaly", user: job,
          #                    password_env: PG_PASSWORD}   # or password_file: /run/secrets/pg
          # (the password itself is never in the config, the url or properties)
          incidents_topic: incidents          # incident transitions; null: none on Kafka
        incidents: {resolve_after: 5}         # optional: the incident rules (incidents/rules.py);
                                              # {enabled: false} turns the incident layer off

``source.feedback_topic`` (default ``incident-feedback``, null: not read) is the
topic of operators' incident feedback, read by the same query.

Relative paths (checkpoint_dir, SQLite files) are resolved against the current directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from detectors import ParamError, get_detector_class
from incidents.rules import IncidentConfigError, IncidentSettings, parse_settings
from jobs import aggregations
from jobs.sanitize import ENV_NAME, is_sql_identifier

STARTING_OFFSETS = ("earliest", "latest")
DEFAULT_DETECTOR = "default"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """The config is invalid; the message starts with the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


SECURITY_PROTOCOLS = ("SASL_SSL", "SASL_PLAINTEXT", "SSL")
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
_SASL_MODULES = {
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
}


@dataclass(frozen=True)
class KafkaSecurity:
    """How the job authenticates to a secured Kafka cluster; secrets come from environment variables.

    SASL (SCRAM or PLAIN) over TLS, or mutual TLS (``protocol: SSL`` with a client ``keystore``).
    """

    protocol: str
    sasl_mechanism: str | None = None
    username_env: str | None = None
    password_env: str | None = None
    # PEM file of the CA certificate(s) the broker's certificate is checked against (absent: the JVM's)
    truststore: str | None = None
    # mTLS: PEM file holding the client's certificate chain and its private key
    keystore: str | None = None
    key_password_env: str | None = None

    def describe(self) -> str:
        """``SASL_SSL/SCRAM-SHA-512``: for messages (never a secret)."""
        return f"{self.protocol}/{self.sasl_mechanism}" if self.sasl_mechanism else self.protocol

    def username(self) -> str | None:
        return os.environ.get(self.username_env) if self.username_env else None

    def client_options(self) -> dict[str, str]:
        """Kafka client settings as Spark options (``kafka.`` prefix), secrets read now from the environment."""

        def env(name: str | None, what: str) -> str:
            value = os.environ.get(name or "")
            if not value:
                raise ConfigError(f"source.security.{what}", f"environment variable {name} is not set")
            return value

        options = {"kafka.security.protocol": self.protocol}
        if self.sasl_mechanism:
            user, password = env(self.username_env, "username_env"), env(self.password_env, "password_env")

            def quoted(text: str) -> str:
                return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

            options["kafka.sasl.mechanism"] = self.sasl_mechanism
            options["kafka.sasl.jaas.config"] = (
                f"{_SASL_MODULES[self.sasl_mechanism]} required username={quoted(user)} password={quoted(password)};"
            )
        if self.truststore:
            options["kafka.ssl.truststore.type"] = "PEM"
            options["kafka.ssl.truststore.location"] = self.truststore
        if self.keystore:
            options["kafka.ssl.keystore.type"] = "PEM"
            options["kafka.ssl.keystore.location"] = self.keystore
            if self.key_password_env:
                options["kafka.ssl.key.password"] = env(self.key_password_env, "key_password_env")
        return options


@dataclass(frozen=True)
class SourceConfig:
    bootstrap_servers: str
    topics: tuple[str, ...] = ()
    topic_pattern: str | None = None
    starting_offsets: str = "earliest"
    max_offsets_per_trigger: int | None = None
    require_timezone: bool = True
    # events stamped further ahead of their Kafka record timestamp are rejected:
    # one message from the year 3000 would otherwise push the watermark past
    # every real event and make them all late
    max_future_millis: int = 24 * 3600 * 1000
    kafka_options: Mapping[str, str] = field(default_factory=dict)
    security: KafkaSecurity | None = None
    # incident feedback (JSON keyed by application) read by the same query; None: not read
    feedback_topic: str | None = "incident-feedback"
    # how long the driver's offset look-ups and an executor's read of a batch wait for the broker
    kafka_timeout_millis: int = 600_000

    @property
    def reader_options(self) -> dict[str, str]:
        """Options of Spark's Kafka reader from this section, security aside: the timeouts, then kafka_options."""
        return {**{key: str(self.kafka_timeout_millis) for key in SOURCE_DEFAULTS}, **self.kafka_options}


@dataclass(frozen=True)
class AggregationConfig:
    agg_function: str = "none"
    agg_window_millis: int = 0
    allowed_lateness_millis: int = 0
    # an event with the same application, ts and value as one already counted in
    # an open window is a duplicate (a producer retry): dead-lettered, not counted
    deduplicate: bool = True


@dataclass(frozen=True)
class DetectorConfig:
    name: str
    params: Mapping[str, Any]
    # the value written to the `detector` column; defaults to the name, must be
    # unique within a stream so two EMA detectors with different windows can coexist
    label: str


@dataclass(frozen=True)
class JdbcConfig:
    url: str
    table: str = "predictions"
    user: str | None = None
    # the password never sits in the config: it is read, when connecting, from the
    # environment variable named here or from the first line of this file
    password_env: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    password_file: str | None = None
    # a failed micro-batch write is retried this many times (backoff 1 s, 2 s, 4 s, ...
    # capped at 30 s) before the query fails; a restart then replays the batch
    write_retries: int = 5

    def resolve_password(self) -> str | None:
        """The password from ``password_env`` or ``password_file``; None when neither is set.

        Errors name the variable or file, never a value.
        """
        if self.password_env:
            password = os.environ.get(self.password_env)
            if password is None:
                raise ConfigError("sinks.jdbc.password_env", f"environment variable {self.password_env} is not set")
            return password
        if self.password_file:
            try:
                text = Path(self.password_file).read_text(encoding="utf-8")
            except OSError as err:
                raise ConfigError(
                    "sinks.jdbc.password_file", f"cannot read {self.password_file}: {err.strerror}"
                ) from None
            lines = text.splitlines()
            if not lines or not lines[0]:
                raise ConfigError("sinks.jdbc.password_file", f"{self.password_file} is empty")
            return lines[0]
        return None


@dataclass(frozen=True)
class SinksConfig:
    output_topic: str | None
    dead_letter_topic: str | None
    bootstrap_servers: str | None = None
    jdbc: JdbcConfig | None = None
    # options of Spark's Kafka writer (producer settings as "kafka.<name>"), on top
    # of PRODUCER_DEFAULTS and, when the sinks use the source's cluster, the
    # source's security settings
    kafka_options: Mapping[str, str] = field(default_factory=dict)
    # incident transitions (keyed by incident_id); tables beside the results table when jdbc is set
    incidents_topic: str | None = "incidents"
    # how long a result or dead-letter write (and its wait for the topic's metadata) waits for the broker
    kafka_timeout_millis: int = 600_000


# A few buckets per shuffle partition (4 by default): every task gets several,
# and a bucket of 100,000 applications / 32 holds ~3,000 applications' state
# (a few MB), rewritten once per micro-batch.
DEFAULT_BUCKETS = 32
MAX_BUCKETS = 65_536

# Throughput over a single record's latency (20 ms at most): results come in
# micro-batch bursts, so bigger producer batches cost nothing visible. No
# compression by default: every consumer must be able to read the topic (e.g.
# kafka-python needs an extra package for lz4); set it in sinks.kafka_options.
#
# A broker outage is ridden out, not fatal: the Kafka clients' default timeouts would fail the query
# after 2 minutes (measured: the producer's delivery.timeout.ms of 120 s expired a result write), and
# a stream that dies at night needs a person. With these, a write waits up to 10 minutes for the
# broker to come back (Kafka retries within that time); a longer outage fails the query, and a restart
# resumes from the checkpoint. Set the wait with sinks.kafka_timeout_millis and
# source.kafka_timeout_millis (both default 10 minutes), or each option in kafka_options.
PRODUCER_TIMEOUTS = ("kafka.delivery.timeout.ms", "kafka.max.block.ms")
PRODUCER_DEFAULTS = {
    "kafka.linger.ms": "20",
    "kafka.batch.size": "262144",
    "kafka.delivery.timeout.ms": "600000",  # default 120 s: the first limit an outage hits
    "kafka.max.block.ms": "600000",  # default 60 s: waiting for metadata of the output topic
}
# The source's side of the same (override in source.kafka_options): the driver's offset look-ups
# (default.api.timeout.ms, default 60 s per try, 3 tries) and the executors' reads
# (kafkaConsumer.pollTimeoutMs, default spark.network.timeout = 120 s per task attempt).
SOURCE_DEFAULTS = {
    "kafka.default.api.timeout.ms": "600000",
    "kafkaConsumer.pollTimeoutMs": "600000",
}
# source options that describe how to reach the cluster rather than what to read
_CONNECTION_PREFIXES = ("kafka.security.", "kafka.ssl.", "kafka.sasl.", "kafka.client.dns.")


@dataclass(frozen=True)
class StreamConfig:
    name: str
    source: SourceConfig
    aggregation: AggregationConfig
    detectors: tuple[DetectorConfig, ...]
    sinks: SinksConfig
    idle_timeout_millis: int = 7 * 24 * 3600 * 1000
    # Applications are hashed into this many buckets; the stateful operator keeps
    # one state value, one timer and one output frame per bucket, so its fixed
    # costs are paid per bucket per micro-batch, not per application. Fixed by
    # the checkpoint (the state is laid out by bucket).
    buckets: int = DEFAULT_BUCKETS
    # the incident layer (incidents/): on unless the stream's `incidents.enabled` is false
    incidents: IncidentSettings = field(default_factory=IncidentSettings)

    @property
    def output_bootstrap_servers(self) -> str:
        return self.sinks.bootstrap_servers or self.source.bootstrap_servers

    @property
    def producer_options(self) -> dict[str, str]:
        """Options for the Kafka writes of results and dead letters (bootstrap servers excluded)."""
        options = dict(PRODUCER_DEFAULTS)
        options.update({key: str(self.sinks.kafka_timeout_millis) for key in PRODUCER_TIMEOUTS})
        if self.sinks.bootstrap_servers in (None, self.source.bootstrap_servers):
            options.update({k: v for k, v in self.source.kafka_options.items() if k.startswith(_CONNECTION_PREFIXES)})
            if self.source.security is not None:  # same cluster, same credentials
                options.update(self.source.security.client_options())
        options.update(self.sinks.kafka_options)
        return options


@dataclass(frozen=True)
class JobConfig:
    streams: tuple[StreamConfig, ...]
    checkpoint_dir: str
    trigger: str = "processing_time"  # or available_now
    trigger_interval: str = "5 seconds"
    spark_conf: Mapping[str, str] = field(default_factory=dict)
    source_path: str | None = None
    # Spark's scratch files and the JVM's temp files (RocksDB's native library...); emptied at start-up
    temp_dir: str = "work/tmp"


# -- helpers ------------------------------------------------------------------------
def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(name, f"must be a mapping, got {type(value).__name__}")
    return value


def _check_keys(section: Mapping[str, Any], allowed: tuple[str, ...], name: str) -> None:
    for key in section:
        if key not in allowed:
            raise ConfigError(f"{name}.{key}", f"unknown field; allowed: {', '.join(allowed)}")


@overload
def _str(value: Any, name: str, required: Literal[True] = ...) -> str: ...
@overload
def _str(value: Any, name: str, required: bool) -> str | None: ...
def _str(value: Any, name: str, required: bool = True) -> str | None:
    if value is None:
        if required:
            raise ConfigError(name, "is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(name, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _int(value: Any, name: str, minimum: int = 0, default: int | None = None) -> int:
    if value is None:
        if default is None:
            raise ConfigError(name, "is required")
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {value}")
    return value


def _bool(value: Any, name: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(name, f"must be true or false, got {value!r}")
    return value


def _choice(value: Any, name: str, choices: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}; got {value!r}")
    return value


def _string_map(value: Any, name: str) -> dict[str, str]:
    section = _mapping(value, name)
    return {str(k): str(v) for k, v in section.items()}


# -- sections -----------------------------------------------------------------------
def _source(raw: Any, name: str, base_dir: Path | None = None) -> SourceConfig:
    section = _mapping(raw, name)
    _check_keys(
        section,
        (
            "bootstrap_servers",
            "topics",
            "topic_pattern",
            "starting_offsets",
            "max_offsets_per_trigger",
            "require_timezone",
            "max_future_millis",
            "kafka_options",
            "security",
            "feedback_topic",
            "kafka_timeout_millis",
        ),
        name,
    )
    topics_raw = section.get("topics")
    pattern = _str(section.get("topic_pattern"), f"{name}.topic_pattern", required=False)
    if isinstance(topics_raw, str):
        topics_raw = [topics_raw]
    topics: tuple[str, ...] = ()
    if topics_raw is not None:
        if not isinstance(topics_raw, list) or not topics_raw:
            raise ConfigError(f"{name}.topics", "must be a topic name or a non-empty list of names")
        topics = tuple(_str(t, f"{name}.topics[{i}]") for i, t in enumerate(topics_raw))
    if bool(topics) == bool(pattern):
        raise ConfigError(f"{name}.topics", "give exactly one of topics (list) or topic_pattern (regex)")
    if section.get("feedback_topic") in topics:
        raise ConfigError(f"{name}.feedback_topic", "must not be one of the metric topics")
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ConfigError(f"{name}.topic_pattern", f"not a valid regular expression: {err}") from None
    mopt = section.get("max_offsets_per_trigger")
    kafka_options = _string_map(section.get("kafka_options"), f"{name}.kafka_options")
    for key in kafka_options:
        if key in ("subscribe", "subscribePattern", "assign", "startingOffsets", "kafka.bootstrap.servers"):
            raise ConfigError(f"{name}.kafka_options.{key}", "set this through the source fields, not kafka_options")
    return SourceConfig(
        bootstrap_servers=_str(section.get("bootstrap_servers"), f"{name}.bootstrap_servers"),
        topics=topics,
        topic_pattern=pattern,
        starting_offsets=_choice(
            section.get("starting_offsets"), f"{name}.starting_offsets", STARTING_OFFSETS, SourceConfig.starting_offsets
        ),
        max_offsets_per_trigger=None if mopt is None else _int(mopt, f"{name}.max_offsets_per_trigger", 1),
        require_timezone=_bool(
            section.get("require_timezone"), f"{name}.require_timezone", SourceConfig.require_timezone
        ),
        max_future_millis=_int(
            section.get("max_future_millis"), f"{name}.max_future_millis", 0, default=SourceConfig.max_future_millis
        ),
        kafka_options=kafka_options,
        security=_security(section.get("security"), f"{name}.security", base_dir),
        feedback_topic=_str(section.get("feedback_topic", SourceConfig.feedback_topic), f"{name}.feedback_topic",
                            required=False),
        kafka_timeout_millis=_int(
            section.get("kafka_timeout_millis"),
            f"{name}.kafka_timeout_millis",
            1000,
            default=SourceConfig.kafka_timeout_millis,
        ),
    )


def _env_name(value: Any, name: str) -> str | None:
    env = _str(value, name, required=False)
    if env is not None and not ENV_NAME.match(env):
        raise ConfigError(
            name, f"must be an environment variable name (the secret stays out of the config), got {env!r}"
        )
    return env


def _security(raw: Any, name: str, base_dir: Path | None) -> KafkaSecurity | None:
    if raw is None:
        return None
    section = _mapping(raw, name)
    _check_keys(
        section,
        ("protocol", "sasl_mechanism", "username_env", "password_env", "truststore", "keystore", "key_password_env"),
        name,
    )
    protocol = _choice(section.get("protocol"), f"{name}.protocol", SECURITY_PROTOCOLS, "SASL_SSL")
    mechanism = section.get("sasl_mechanism")
    if protocol.startswith("SASL"):
        mechanism = _choice(mechanism, f"{name}.sasl_mechanism", SASL_MECHANISMS, "SCRAM-SHA-512")
        for key in ("username_env", "password_env"):
            if section.get(key) is None:
                raise ConfigError(f"{name}.{key}", f"is required with {protocol} (the name of an environment variable)")
    elif mechanism is not None:
        raise ConfigError(f"{name}.sasl_mechanism", f"only with a SASL protocol, not {protocol}")

    def path(key: str) -> str | None:
        value = _str(section.get(key), f"{name}.{key}", required=False)
        if value is not None and base_dir is not None and not Path(value).is_absolute():
            value = str((base_dir / value).resolve())
        return value

    return KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=mechanism,
        username_env=_env_name(section.get("username_env"), f"{name}.username_env"),
        password_env=_env_name(section.get("password_env"), f"{name}.password_env"),
        truststore=path("truststore"),
        keystore=path("keystore"),
        key_password_env=_env_name(section.get("key_password_env"), f"{name}.key_password_env"),
    )


def _aggregation(raw: Any, name: str) -> AggregationConfig:
    section = _mapping(raw, name)
    _check_keys(section, ("agg_function", "agg_window_millis", "allowed_lateness_millis", "deduplicate"), name)
    defaults = AggregationConfig
    function = _choice(section.get("agg_function"), f"{name}.agg_function", aggregations.NAMES, defaults.agg_function)
    window = _int(section.get("agg_window_millis"), f"{name}.agg_window_millis", 0, default=defaults.agg_window_millis)
    if function != "none" and window <= 0:
        raise ConfigError(f"{name}.agg_window_millis", f"must be > 0 when agg_function is {function!r}")
    if function == "none" and window != 0:
        raise ConfigError(f"{name}.agg_window_millis", "must be 0 (or absent) when agg_function is 'none'")
    lateness = _int(
        section.get("allowed_lateness_millis"), f"{name}.allowed_lateness_millis", 0,
        default=defaults.allowed_lateness_millis,
    )
    deduplicate = _bool(section.get("deduplicate"), f"{name}.deduplicate", defaults.deduplicate)
    return AggregationConfig(function, window, lateness, deduplicate)


def _detectors(raw: Any, name: str) -> tuple[DetectorConfig, ...]:
    if raw is None:
        raw = [{"name": DEFAULT_DETECTOR}]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(name, "must be a non-empty list of detectors")
    out: list[DetectorConfig] = []
    for i, item in enumerate(raw):
        fname = f"{name}[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        section = _mapping(item, fname)
        _check_keys(section, ("name", "params", "label"), fname)
        det_name = _str(section.get("name"), f"{fname}.name")
        params = _mapping(section.get("params"), f"{fname}.params")
        try:
            cls = get_detector_class(det_name, f"{fname}.name")
            validated = cls.params.validate(params, prefix=f"{fname}.params.")
        except ParamError as err:
            raise ConfigError(err.field, err.message) from None
        label = _str(section.get("label") or det_name, f"{fname}.label")
        if not _NAME_RE.match(label):
            raise ConfigError(f"{fname}.label", f"must match {_NAME_RE.pattern}, got {label!r}")
        if any(d.label == label for d in out):
            raise ConfigError(f"{fname}.label", f"duplicate detector label {label!r}; set a distinct label")
        out.append(DetectorConfig(det_name, validated, label))
    return tuple(out)


def _jdbc(raw: Any, name: str, base_dir: Path | None) -> JdbcConfig | None:
    if raw is None:
        return None
    section = _mapping(raw, name)
    _check_keys(section, ("url", "table", "user", "password_env", "password_file", "properties", "write_retries"), name)
    url = _str(section.get("url"), f"{name}.url")
    # checked before anything echoes the url: an error message must not carry a secret
    if re.search(r"[?&;]password=", url, re.IGNORECASE):
        raise ConfigError(f"{name}.url", "must not contain the password; use password_env or password_file")
    if not (url.startswith("jdbc:sqlite:") or url.startswith("jdbc:postgresql:")):
        raise ConfigError(f"{name}.url", f"must start with jdbc:sqlite: or jdbc:postgresql:, got {url!r}")
    if url.startswith("jdbc:sqlite:") and base_dir is not None:
        path = url[len("jdbc:sqlite:") :]
        if path and path != ":memory:" and not Path(path).is_absolute():
            url = "jdbc:sqlite:" + str((base_dir / path).resolve())
    table = _str(section.get("table") or JdbcConfig.table, f"{name}.table")
    if not is_sql_identifier(table):
        raise ConfigError(f"{name}.table", f"must be a plain SQL identifier, got {table!r}")
    properties = _string_map(section.get("properties"), f"{name}.properties")
    for key in properties:
        if "password" in key.lower():
            raise ConfigError(
                f"{name}.properties.{key}", "secrets do not go in the config; use password_env or password_file"
            )
    password_env = _str(section.get("password_env"), f"{name}.password_env", required=False)
    password_file = _str(section.get("password_file"), f"{name}.password_file", required=False)
    if password_env and password_file:
        raise ConfigError(f"{name}.password_file", "give at most one of password_env or password_file")
    if password_env and not ENV_NAME.match(password_env):
        raise ConfigError(f"{name}.password_env", f"must be an environment variable name, got {password_env!r}")
    if password_file and base_dir is not None and not Path(password_file).is_absolute():
        password_file = str((base_dir / password_file).resolve())
    return JdbcConfig(
        url=url,
        table=table,
        user=_str(section.get("user"), f"{name}.user", required=False),
        password_env=password_env,
        properties=properties,
        password_file=password_file,
        write_retries=_int(section.get("write_retries"), f"{name}.write_retries", 0, default=JdbcConfig.write_retries),
    )


def _producer_timeout(value: Any, name: str, kafka_options: Mapping[str, str]) -> int:
    """sinks.kafka_timeout_millis; the producer refuses a delivery.timeout.ms under linger.ms + request.timeout.ms."""
    timeout = _int(value, f"{name}.kafka_timeout_millis", 1000, default=SinksConfig.kafka_timeout_millis)
    if "kafka.delivery.timeout.ms" in kafka_options:
        return timeout
    parts = {"kafka.request.timeout.ms": "30000", "kafka.linger.ms": PRODUCER_DEFAULTS["kafka.linger.ms"]}
    parts.update({k: v for k, v in kafka_options.items() if k in parts})
    if all(v.isdigit() for v in parts.values()) and timeout < sum(map(int, parts.values())):
        raise ConfigError(
            f"{name}.kafka_timeout_millis",
            f"must be >= {sum(map(int, parts.values()))} (kafka.request.timeout.ms {parts['kafka.request.timeout.ms']} "
            f"+ kafka.linger.ms {parts['kafka.linger.ms']}: Kafka's producer refuses a shorter delivery timeout), "
            f"got {timeout}",
        )
    return timeout


def _sinks(raw: Any, name: str, base_dir: Path | None) -> SinksConfig:
    section = _mapping(raw, name)
    _check_keys(
        section,
        (
            "output_topic",
            "dead_letter_topic",
            "bootstrap_servers",
            "jdbc",
            "kafka_options",
            "incidents_topic",
            "kafka_timeout_millis",
        ),
        name,
    )
    kafka_options = _string_map(section.get("kafka_options"), f"{name}.kafka_options")
    for key in kafka_options:
        if not key.startswith("kafka.") or key in ("kafka.bootstrap.servers", "kafka.key.serializer"):
            raise ConfigError(
                f"{name}.kafka_options.{key}",
                "only producer settings, as kafka.<producer config> (bootstrap servers: sinks.bootstrap_servers)",
            )
    sinks = SinksConfig(
        output_topic=_str(section.get("output_topic"), f"{name}.output_topic", required=False),
        dead_letter_topic=_str(section.get("dead_letter_topic"), f"{name}.dead_letter_topic", required=False),
        bootstrap_servers=_str(section.get("bootstrap_servers"), f"{name}.bootstrap_servers", required=False),
        jdbc=_jdbc(section.get("jdbc"), f"{name}.jdbc", base_dir),
        kafka_options=kafka_options,
        incidents_topic=_str(section.get("incidents_topic", SinksConfig.incidents_topic), f"{name}.incidents_topic",
                             required=False),
        kafka_timeout_millis=_producer_timeout(section.get("kafka_timeout_millis"), name, kafka_options),
    )
    if sinks.output_topic is None and sinks.jdbc is None:
        raise ConfigError(name, "configure at least one of output_topic or jdbc, or results go nowhere")
    if sinks.dead_letter_topic is None:
        raise ConfigError(f"{name}.dead_letter_topic", "is required: bad and late messages are never dropped silently")
    return sinks


def _stream(raw: Any, name: str, base_dir: Path | None) -> StreamConfig:
    section = _mapping(raw, name)
    _check_keys(
        section,
        ("name", "source", "aggregation", "detectors", "sinks", "idle_timeout_millis", "buckets", "incidents"),
        name,
    )
    stream_name = _str(section.get("name"), f"{name}.name")
    if not _NAME_RE.match(stream_name):
        raise ConfigError(f"{name}.name", f"must match {_NAME_RE.pattern}, got {stream_name!r}")
    if "source" not in section:
        raise ConfigError(f"{name}.source", "is required")
    if "sinks" not in section:
        raise ConfigError(f"{name}.sinks", "is required")
    return StreamConfig(
        name=stream_name,
        source=_source(section["source"], f"{name}.source", base_dir),
        aggregation=_aggregation(section.get("aggregation"), f"{name}.aggregation"),
        detectors=_detectors(section.get("detectors"), f"{name}.detectors"),
        sinks=_sinks(section["sinks"], f"{name}.sinks", base_dir),
        idle_timeout_millis=_int(
            section.get("idle_timeout_millis"),
            f"{name}.idle_timeout_millis",
            1,
            default=StreamConfig.idle_timeout_millis,
        ),
        buckets=_buckets(section.get("buckets"), f"{name}.buckets"),
        incidents=_incidents(section.get("incidents"), f"{name}.incidents"),
    )


def _incidents(raw: Any, name: str) -> IncidentSettings:
    """The stream's incident rules (incidents/rules.py reads them; its errors are renamed to the full field)."""
    try:
        return parse_settings(raw, default_enabled=True, prefix=f"{name}.")
    except IncidentConfigError as err:
        raise ConfigError(err.field, err.message) from None


def _buckets(value: Any, name: str) -> int:
    buckets = _int(value, name, 1, default=DEFAULT_BUCKETS)
    if buckets > MAX_BUCKETS:
        raise ConfigError(name, f"must be at most {MAX_BUCKETS:,}, got {buckets:,}")
    return buckets


def parse_config(raw: Any, base_dir: Path | None = None, source_path: str | None = None) -> JobConfig:
    """Validate a config already loaded into Python objects."""
    section = _mapping(raw, "config")
    _check_keys(
        section, ("checkpoint_dir", "trigger", "trigger_interval", "spark_conf", "streams", "temp_dir"), "config"
    )
    streams_raw = section.get("streams")
    if not isinstance(streams_raw, list) or not streams_raw:
        raise ConfigError("streams", "must be a non-empty list of streams")
    streams = tuple(_stream(s, f"streams[{i}]", base_dir) for i, s in enumerate(streams_raw))
    names = [s.name for s in streams]
    for i, stream_name in enumerate(names):
        if names.index(stream_name) != i:
            raise ConfigError(f"streams[{i}].name", f"duplicate stream name {stream_name!r}")
    checkpoint = _str(section.get("checkpoint_dir"), "checkpoint_dir")
    if base_dir is not None and "://" not in checkpoint and not Path(checkpoint).is_absolute():
        checkpoint = str((base_dir / checkpoint).resolve())
    temp_dir = _str(section.get("temp_dir"), "temp_dir", required=False)
    if temp_dir is None:  # beside a local checkpoint dir (work/checkpoints -> work/tmp), else ./work/tmp
        local = checkpoint.removeprefix("file:") if "://" not in checkpoint or checkpoint.startswith("file:") else None
        temp_dir = str(Path(local).parent / "tmp") if local else JobConfig.temp_dir
    if base_dir is not None and not Path(temp_dir).is_absolute():
        temp_dir = str((base_dir / temp_dir).resolve())
    return JobConfig(
        temp_dir=temp_dir,
        streams=streams,
        checkpoint_dir=checkpoint,
        trigger=_choice(section.get("trigger"), "trigger", ("processing_time", "available_now"), JobConfig.trigger),
        trigger_interval=_str(section.get("trigger_interval") or JobConfig.trigger_interval, "trigger_interval"),
        spark_conf=_string_map(section.get("spark_conf"), "spark_conf"),
        source_path=source_path,
    )


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``${NAME}`` and ``${NAME:-default}`` with environment values.

    >>> expand_env("servers: ${X:-127.0.0.1:9092}", {})
    'servers: 127.0.0.1:9092'
    """
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"${{{name}}}", "environment variable is not set and has no default (${NAME:-default})")

    return _ENV_REF.sub(substitute, text)


def load_config(path: str | Path) -> JobConfig:
    """Read a YAML config file (with ``${ENV}`` references) and validate it."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", f"file not found: {path}")
    try:
        raw = yaml.safe_load(expand_env(path.read_text()))
    except yaml.YAMLError as err:
        raise ConfigError("config", f"{path} is not valid YAML: {err}") from None
    return parse_config(raw, base_dir=Path.cwd(), source_path=str(path))
