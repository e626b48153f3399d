"""Config validation (jobs/config.py): errors name the field; defaults are what the README says."""

from __future__ import annotations

import copy

import pytest

from jobs.config import PRODUCER_DEFAULTS, ConfigError, parse_config

BASE = {
    "checkpoint_dir": "/tmp/anomaly-test-checkpoints",
    "streams": [
        {
            "name": "web",
            "source": {"bootstrap_servers": "broker:9092", "topics": ["metrics"]},
            "aggregation": {"agg_function": "avg", "agg_window_millis": 60_000},
            "detectors": [{"name": "ema"}],
            "sinks": {"output_topic": "out", "dead_letter_topic": "dlq"},
        }
    ],
}


def config_with(**changes) -> dict:
    """BASE with stream-level sections updated, e.g. aggregation={"deduplicate": False}."""
    raw = copy.deepcopy(BASE)
    for section, values in changes.items():
        if isinstance(values, dict):
            raw["streams"][0][section].update(values)
        else:
            raw["streams"][0][section] = values
    return raw


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"aggregation": {"agg_function": "mean"}}, "streams[0].aggregation.agg_function", "must be one of"),
        ({"aggregation": {"agg_window_millis": 0}}, "streams[0].aggregation.agg_window_millis", "> 0"),
        ({"aggregation": {"deduplicate": "yes"}}, "streams[0].aggregation.deduplicate", "true or false"),
        ({"aggregation": {"windowsize": 5}}, "streams[0].aggregation", "windowsize"),
        ({"buckets": 0}, "streams[0].buckets", ">= 1"),
        ({"buckets": 100_000}, "streams[0].buckets", "at most 65,536"),
        ({"buckets": "many"}, "streams[0].buckets", "integer"),
        ({"source": {"starting_offsets": "now"}}, "streams[0].source.starting_offsets", "must be one of"),
        ({"sinks": {"dead_letter_topic": None}}, "streams[0].sinks.dead_letter_topic", "required"),
        (
            {"sinks": {"kafka_options": {"linger.ms": "5"}}},
            "streams[0].sinks.kafka_options.linger.ms",
            "kafka.<producer config>",
        ),
        (
            {"sinks": {"kafka_options": {"kafka.bootstrap.servers": "x:1"}}},
            "streams[0].sinks.kafka_options.kafka.bootstrap.servers",
            "sinks.bootstrap_servers",
        ),
    ],
)
def test_errors_name_the_field(changes, field, words):
    with pytest.raises(ConfigError) as info:
        parse_config(config_with(**changes))
    assert str(info.value).startswith(field), str(info.value)
    assert words in str(info.value)


def test_deduplicate_is_on_by_default_and_can_be_turned_off():
    assert parse_config(BASE).streams[0].aggregation.deduplicate is True
    assert parse_config(config_with(aggregation={"deduplicate": False})).streams[0].aggregation.deduplicate is False


def test_producer_options_inherit_the_source_security_settings_only_on_the_same_cluster():
    secured = {"kafka.security.protocol": "SASL_SSL", "kafka.sasl.mechanism": "PLAIN", "kafka.fetch.max.bytes": "1"}
    same = parse_config(config_with(source={"kafka_options": secured})).streams[0]
    assert same.producer_options == {
        **PRODUCER_DEFAULTS,
        "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "PLAIN",
    }  # consumer-only settings (fetch.max.bytes) stay with the source
    other = parse_config(
        config_with(source={"kafka_options": secured}, sinks={"bootstrap_servers": "other:9092"})
    ).streams[0]
    assert other.producer_options == PRODUCER_DEFAULTS
    tuned = parse_config(config_with(sinks={"kafka_options": {"kafka.linger.ms": "0", "kafka.acks": "all"}}))
    assert tuned.streams[0].producer_options == {**PRODUCER_DEFAULTS, "kafka.linger.ms": "0", "kafka.acks": "all"}


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"source": {"kafka_timeout_millis": 999}}, "streams[0].source.kafka_timeout_millis", ">= 1000"),
        ({"sinks": {"kafka_timeout_millis": "10 min"}}, "streams[0].sinks.kafka_timeout_millis", "integer"),
        ({"sinks": {"kafka_timeout_millis": 20_000}}, "streams[0].sinks.kafka_timeout_millis", ">= 30020"),
        (
            {"sinks": {"kafka_timeout_millis": 5_000, "kafka_options": {"kafka.request.timeout.ms": "5000"}}},
            "streams[0].sinks.kafka_timeout_millis",
            "kafka.request.timeout.ms 5000 + kafka.linger.ms 20",
        ),
    ],
)
def test_kafka_timeout_errors_name_the_field(changes, field, words):
    with pytest.raises(ConfigError) as info:
        parse_config(config_with(**changes))
    assert str(info.value).startswith(field) and words in str(info.value), str(info.value)


def test_kafka_timeouts_default_to_ten_minutes_and_are_configurable_per_side():
    from jobs.config import SOURCE_DEFAULTS

    stream = parse_config(BASE).streams[0]
    assert stream.source.reader_options == SOURCE_DEFAULTS == {
        "kafka.default.api.timeout.ms": "600000",
        "kafkaConsumer.pollTimeoutMs": "600000",
    }
    assert stream.producer_options["kafka.delivery.timeout.ms"] == stream.producer_options["kafka.max.block.ms"]
    assert stream.producer_options["kafka.max.block.ms"] == "600000"
    short = parse_config(
        config_with(
            source={"kafka_timeout_millis": 40_000, "kafka_options": {"kafkaConsumer.pollTimeoutMs": "50000"}},
            sinks={"kafka_timeout_millis": 45_000, "kafka_options": {"kafka.request.timeout.ms": "5000"}},
        )
    ).streams[0]
    # kafka_options still win over the field, option by option
    assert short.source.reader_options == {
        "kafka.default.api.timeout.ms": "40000",
        "kafkaConsumer.pollTimeoutMs": "50000",
    }
    assert short.producer_options == {
        **PRODUCER_DEFAULTS,
        "kafka.delivery.timeout.ms": "45000",
        "kafka.max.block.ms": "45000",
        "kafka.request.timeout.ms": "5000",
    }


def test_a_checkpoint_built_with_other_settings_is_refused_before_spark_starts(tmp_path, monkeypatch):
    from jobs import main, session

    raw = copy.deepcopy(BASE)
    raw["checkpoint_dir"] = str(tmp_path)
    raw["streams"].append({**copy.deepcopy(raw["streams"][0]), "name": "db"})
    first = parse_config(raw)
    for stream in first.streams:  # what a first run leaves behind
        main.check_checkpoint(stream, main.checkpoint_of(first, stream))
    raw["streams"][1]["detectors"] = [{"name": "ema", "params": {"window": 7}}]

    def no_spark(**_):
        raise AssertionError("the SparkSession was built before the checkpoints were checked")

    monkeypatch.setattr(session, "build_session", no_spark)
    with pytest.raises(main.CheckpointMismatch, match=r"stream 'db'.*detector 'ema' was"):
        main.run(parse_config(raw))


def test_buckets_default_and_changing_them_or_an_old_state_layout_is_refused(tmp_path):
    import json

    from jobs import main

    assert parse_config(BASE).streams[0].buckets == 32
    raw = copy.deepcopy(BASE)
    raw["checkpoint_dir"] = str(tmp_path)
    job = parse_config(raw)
    stream = job.streams[0]
    main.check_checkpoint(stream, main.checkpoint_of(job, stream))
    main.check_checkpoint(stream, main.checkpoint_of(job, stream))  # same config: fine
    raw["streams"][0]["buckets"] = 64
    with pytest.raises(main.CheckpointMismatch, match=r"buckets was 32, config says 64"):
        main.check_checkpoint(parse_config(raw).streams[0], main.checkpoint_of(job, stream))
    # a checkpoint of the per-application operator (no state layout recorded)
    fingerprint = tmp_path / stream.name / main.FINGERPRINT_FILE
    old = json.loads(fingerprint.read_text())
    del old["state_layout"], old["buckets"]
    fingerprint.write_text(json.dumps(old))
    with pytest.raises(main.CheckpointMismatch, match=r"older version of the job.*per application.*new checkpoint"):
        main.check_checkpoint(stream, main.checkpoint_of(job, stream))


SECURITY = {
    "protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "username_env": "T_KAFKA_USER",
    "password_env": "T_KAFKA_PASSWORD",
    "truststore": "/etc/ca.pem",
}


@pytest.mark.parametrize(
    ("security", "field", "words"),
    [
        ({**SECURITY, "password_env": "p@ss"}, "streams[0].source.security.password_env", "environment variable name"),
        (
            {k: v for k, v in SECURITY.items() if k != "username_env"},
            "streams[0].source.security.username_env",
            "required",
        ),
        ({**SECURITY, "sasl_mechanism": "GSSAPI"}, "streams[0].source.security.sasl_mechanism", "must be one of"),
        ({"protocol": "SSL", "sasl_mechanism": "PLAIN"}, "streams[0].source.security.sasl_mechanism", "SASL"),
        ({**SECURITY, "password": "x"}, "streams[0].source.security.password", "unknown field"),
    ],
)
def test_security_errors_name_the_field(security, field, words):
    with pytest.raises(ConfigError) as info:
        parse_config(config_with(source={"security": security}))
    assert str(info.value).startswith(field) and words in str(info.value), str(info.value)


def test_security_secrets_come_from_the_environment_when_used_and_reach_the_sinks(monkeypatch):
    stream = parse_config(config_with(source={"security": SECURITY})).streams[0]
    monkeypatch.delenv("T_KAFKA_PASSWORD", raising=False)
    monkeypatch.setenv("T_KAFKA_USER", "job")
    with pytest.raises(ConfigError, match="T_KAFKA_PASSWORD is not set"):
        stream.source.security.client_options()
    monkeypatch.setenv("T_KAFKA_PASSWORD", 'zq"9x')
    options = stream.source.security.client_options()
    assert options["kafka.sasl.jaas.config"] == (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="job" password="zq\\"9x";'
    )
    assert options["kafka.ssl.truststore.location"] == "/etc/ca.pem"
    assert stream.producer_options["kafka.sasl.jaas.config"] == options["kafka.sasl.jaas.config"]
    assert "zq" not in repr(stream)  # the config object holds the variable names only


def test_temp_dir_defaults_beside_a_local_checkpoint_dir():
    assert parse_config(BASE).temp_dir == "/tmp/tmp"  # beside /tmp/anomaly-test-checkpoints
    assert parse_config({**BASE, "checkpoint_dir": "s3a://b/ck"}).temp_dir == "work/tmp"
    assert parse_config({**BASE, "temp_dir": "/var/tmp/job"}).temp_dir == "/var/tmp/job"


def test_a_refused_login_in_a_wrapped_java_error_names_the_listener_mechanism_and_user(monkeypatch):
    from jobs.main import failure_message

    stream = parse_config(config_with(source={"security": SECURITY})).streams[0]
    monkeypatch.setenv("T_KAFKA_USER", "job")
    # how py4j shows a failed Admin call: the cause is on a later line, not the first
    error = (
        "An error occurred while calling o78.get.\n"
        ": java.util.concurrent.ExecutionException: org.apache.kafka.common.errors.SaslAuthenticationException: "
        "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512\n"
        "\tat java.base/java.util.concurrent.CompletableFuture.reportGet(CompletableFuture.java:396)"
    )
    message = failure_message(stream, error)
    assert message.startswith(f"Kafka authentication failed at listener {stream.source.bootstrap_servers} (SASL_SSL/")
    assert "user 'job', password from $T_KAFKA_PASSWORD" in message
    assert "invalid credentials" in message and "o78" not in message
    assert failure_message(stream, "Connection refused\nmore") == "Connection refused"


def test_the_driver_class_archive_is_mapped_when_it_exists_and_recorded_for_while_it_does_not(
    monkeypatch, tmp_path
):
    from jobs.session import CLASS_ARCHIVE_ENV, class_archive_option

    monkeypatch.delenv(CLASS_ARCHIVE_ENV, raising=False)
    assert class_archive_option() == ""
    archive = tmp_path / "driver.jsa"
    monkeypatch.setenv(CLASS_ARCHIVE_ENV, str(archive))
    assert "-XX:+RecordDynamicDumpInfo" in class_archive_option()  # ready to be written with jcmd
    assert "SharedArchiveFile" not in class_archive_option()
    archive.write_bytes(b"")
    assert class_archive_option() == f" -XX:SharedArchiveFile={archive}"
