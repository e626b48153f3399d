"""A real single-node Kafka broker (KRaft, broker+controller in one JVM) for the demo and the tests.

The broker runs from the jars that ``scripts/bootstrap.sh`` resolves into ``.jars/kafka/`` (override
the directory with ``ANOMALY_KAFKA_JARS``); no Kafka distribution, Docker or ZooKeeper is needed::

    with LocalKafkaBroker() as broker:
        broker.create_topic("metrics", partitions=2)
        produce(broker.bootstrap_servers, ...)
        broker.restart()          # same ports, same data: for broker-down fault tests

or, for a broker to play with, ``python -m tools.local_kafka run``.

``sasl_ssl=True`` adds a second listener, ``SASL_SSL`` with SCRAM-SHA-512 (``broker.sasl_ssl_servers``),
beside the PLAINTEXT one: a self-signed CA and a broker certificate for 127.0.0.1 are generated under
``log_dir/tls/`` (``ca.pem`` is what a client trusts), and :meth:`LocalKafkaBroker.add_scram_user`
creates users with Kafka's own ``kafka-configs`` tool (``kafka.admin.ConfigCommand``, same jars).

Layout of ``log_dir`` (a temporary directory unless one is given)::

    server.properties     generated broker config
    log4j.properties      logging config for a reload4j slf4j binding
    log4j2.properties     logging config for a log4j2 slf4j binding (what Kafka 4.x ships)
    broker.log            the JVM's stdout/stderr, i.e. all broker logging
    data/                 Kafka's ``log.dirs`` (topic partitions, KRaft metadata log)

Process safety: the JVM runs in its own process group; ``stop()`` sends SIGTERM to the group, waits,
then SIGKILLs it. Every running broker is also stopped by an ``atexit`` hook and by a SIGTERM/SIGHUP
handler (installed only while those signals have their default disposition), and, when started from
the main thread, the JVM gets ``PR_SET_PDEATHSIG=SIGKILL`` (via ``setpriv``) so it dies with the
Python process even on ``kill -9``.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
JARS_ENV = "ANOMALY_KAFKA_JARS"
DEFAULT_HEAP = "512m"
# How long start() waits for its ports to be released (e.g. by a broker that is still exiting).
PORT_WAIT_S = 3.0
# A test broker on a small shared machine: the serial GC and the C1-only JIT cut startup CPU and
# time; throughput is far above what a demo needs.
DEFAULT_JVM_OPTS = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


class KafkaBrokerError(RuntimeError):
    """The local broker could not be set up, started or stopped."""


class KafkaJarsMissing(KafkaBrokerError):
    """The broker jars are not there: run scripts/bootstrap.sh."""


# --------------------------------------------------------------------------- environment


def kafka_jar_dir() -> Path:
    """The directory holding the broker jars (``$ANOMALY_KAFKA_JARS`` or ``<repo>/.jars/kafka``)."""
    override = os.environ.get(JARS_ENV)
    return Path(override).expanduser().resolve() if override else REPO_ROOT / ".jars" / "kafka"


def check_kafka_jars(jar_dir: Path | None = None) -> Path:
    """Return ``jar_dir`` if it holds a usable broker classpath, else raise :class:`KafkaJarsMissing`."""
    jar_dir = Path(jar_dir) if jar_dir is not None else kafka_jar_dir()
    jars = [p.name for p in jar_dir.glob("*.jar")] if jar_dir.is_dir() else []
    if not any(name.startswith("kafka_2.") for name in jars) or not any(
        name.startswith("kafka-clients-") for name in jars
    ):
        raise KafkaJarsMissing(
            f"no Kafka broker jars in {jar_dir} (expected kafka_2.13-*.jar and its dependencies). "
            f"Run scripts/bootstrap.sh to resolve them, or point {JARS_ENV} at a directory holding them."
        )
    return jar_dir


def java_executable() -> str:
    """``$JAVA_HOME/bin/java`` if JAVA_HOME is set, else ``java`` from PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        if not os.access(java, os.X_OK):
            raise KafkaBrokerError(f"JAVA_HOME={java_home} but {java} is not an executable")
        return str(java)
    java = shutil.which("java")
    if java is None:
        raise KafkaBrokerError("no 'java' on PATH and JAVA_HOME is not set: install a Java 17 runtime")
    return java


def random_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (like ``Uuid.randomUuid``)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids ids that look like CLI options
            return cid


def listener_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` free ports below the kernel's ephemeral range, for servers that go down and come back.

    While a broker is down its clients reconnect every second or so; a connect to a closed loopback
    port inside the ephemeral range can be given that very port as its local end and connect to
    itself (TCP simultaneous open), and the broker then cannot bind it again (seen after a 5-minute
    outage). Outside the range no client socket ever gets the port.
    """
    import random

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    picked: list[int] = []
    for _ in range(2000):
        port = rng.randrange(max(1024, low - 12000), low)
        if port not in picked and _port_bindable(host, port):
            picked.append(port)
            if len(picked) == n:
                return picked
    return free_ports(n, host)  # a crowded range: fall back to any free ports


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free on ``host`` a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Java server sockets set SO_REUSEADDR too, so TIME_WAIT leftovers do not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    out = "\n".join(text.splitlines()[-lines:])
    if "NOP) logger implementation" in text:
        out += (
            "\n[local_kafka] NOTE: the broker's logging is disabled (slf4j found no binding on the broker "
            "classpath), so the real error is not shown. The slf4j binding in deps/pom.xml must match "
            "slf4j-api 1.7.x, e.g. org.apache.logging.log4j:log4j-slf4j-impl (what Kafka 4.x ships)."
        )
    return out


# --------------------------------------------------------------------------- process safety

_LIVE: set[LocalKafkaBroker] = set()
_LIVE_LOCK = threading.RLock()
_HANDLERS_INSTALLED = False


def stop_all_brokers() -> None:
    """Stop every broker started by this process (atexit and signal hook; safe to call any time)."""
    with _LIVE_LOCK:
        brokers = list(_LIVE)
    for broker in brokers:
        with contextlib.suppress(Exception):
            broker.stop()


def _on_fatal_signal(signum: int, frame: Any) -> None:
    stop_all_brokers()
    # Die the way the signal would have killed us, so the exit status stays truthful.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_safety_hooks() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(stop_all_brokers)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        # Respect handlers installed by the application (Spark, pytest...): only replace the default.
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _on_fatal_signal)


# --------------------------------------------------------------------------- the broker

_LOG4J1 = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.org.apache.kafka.storage.internals.log.LogCleaner=WARN
"""

_LOG4J2 = """\
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


class LocalKafkaBroker:
    """A single-node KRaft Kafka broker in a child JVM, bound to loopback.

    :param log_dir: working directory (config, ``broker.log``, ``data/``). A temporary one is created,
        and removed by :meth:`close` / ``__exit__``, when not given. A given directory is never removed
        and may be reused across instances (it is only formatted once).
    :param num_partitions: ``num.partitions`` for auto-created topics.
    :param port, controller_port: fixed loopback ports; free ones are picked when not given. They stay
        the same across :meth:`restart`.
    :param heap: JVM ``-Xmx``.
    :param startup_timeout: seconds to wait for the broker to serve metadata requests.
    :param config: extra/overriding ``server.properties`` entries.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        *,
        num_partitions: int = 2,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = DEFAULT_HEAP,
        jvm_opts: tuple[str, ...] | list[str] = DEFAULT_JVM_OPTS,
        startup_timeout: float = 60.0,
        config: Mapping[str, Any] | None = None,
        jar_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        sasl_ssl: bool = False,
    ) -> None:
        self.jar_dir = check_kafka_jars(Path(jar_dir) if jar_dir is not None else None)
        self.java = java_executable()
        self.host = host
        self.num_partitions = num_partitions
        self.heap = heap
        self.jvm_opts = tuple(jvm_opts)
        self.startup_timeout = startup_timeout
        self.extra_config = dict(config or {})
        if port is None or controller_port is None:
            picked = listener_ports(2, host)
            port = port if port is not None else next(p for p in picked if p != controller_port)
            controller_port = controller_port if controller_port is not None else next(p for p in picked if p != port)
        if port == controller_port:
            raise ValueError("port and controller_port must differ")
        self.sasl_ssl_port = (
            next(p for p in listener_ports(3, host) if p not in (port, controller_port)) if sasl_ssl else None
        )
        self.port = port
        self.controller_port = controller_port
        self._owns_dir = log_dir is None
        self._log_dir = Path(tempfile.mkdtemp(prefix="local-kafka-")) if log_dir is None else Path(log_dir)
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self._log_dir = self._log_dir.resolve()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._lock = threading.RLock()
        self.last_startup_seconds: float | None = None

    # -- properties -----------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sasl_ssl_servers(self) -> str:
        """Bootstrap servers of the SASL_SSL (SCRAM-SHA-512) listener; ``sasl_ssl=True`` only."""
        if self.sasl_ssl_port is None:
            raise KafkaBrokerError("this broker has no SASL_SSL listener (start it with sasl_ssl=True)")
        return f"{self.host}:{self.sasl_ssl_port}"

    @property
    def ca_file(self) -> Path:
        """The PEM CA certificate that signed the SASL_SSL listener's certificate (what clients trust)."""
        return self._log_dir / "tls" / "ca.pem"

    @property
    def log_dir(self) -> Path:
        return self._log_dir

    @property
    def data_dir(self) -> Path:
        """Kafka's ``log.dirs``: partition data and the KRaft metadata log."""
        return self._log_dir / "data"

    @property
    def broker_log(self) -> Path:
        return self._log_dir / "broker.log"

    @property
    def config_file(self) -> Path:
        return self._log_dir / "server.properties"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running else "stopped"
        return f"LocalKafkaBroker({self.bootstrap_servers}, {state}, log_dir={str(self._log_dir)!r})"

    # -- configuration ----------------------------------------------------------------------------

    def server_properties(self) -> dict[str, str]:
        props: dict[str, Any] = {
            "process.roles": "broker,controller",
            "node.id": 1,
            # Static quorum: with a single voter it needs no --standalone/--initial-controllers at
            # format time and nothing about the endpoints is written into the metadata log, so a data
            # dir stays usable if a later instance picks other ports.
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": self.num_partitions,
            "default.replication.factor": 1,
            "min.insync.replicas": 1,
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
            "offsets.topic.replication.factor": 1,
            # 50 partitions by default: creating them makes the first consumer group join slow.
            "offsets.topic.num.partitions": 4,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 4,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "group.initial.rebalance.delay.ms": 0,
            # After a crash (kill()), the restarted controller keeps the dead incarnation's session
            # alive for broker.session.timeout.ms and refuses the new registration until it expires:
            # the 9 s default made a crash-restart take ~12 s.
            "broker.heartbeat.interval.ms": 500,
            "broker.session.timeout.ms": 3000,
            # Durability comes from the OS page cache (it survives a JVM kill); no fsync per message.
            "log.flush.interval.messages": 9223372036854775807,
            "log.segment.bytes": 64 * 1024 * 1024,
            "log.retention.hours": 168,
            # The cleaner (for __consumer_offsets) allocates this on the heap; the 128 MiB default is a
            # quarter of our heap.
            "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
            # A small machine shared with Spark.
            "num.network.threads": 2,
            "num.io.threads": 2,
            "background.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
            "num.replica.fetchers": 1,
        }
        if self.sasl_ssl_port is not None:
            secured = f"SASL_SSL://{self.host}:{self.sasl_ssl_port}"
            props["listeners"] += "," + secured
            props["advertised.listeners"] += "," + secured
            props["listener.security.protocol.map"] += ",SASL_SSL:SASL_SSL"
            prefix = "listener.name.sasl_ssl."
            props[prefix + "sasl.enabled.mechanisms"] = "SCRAM-SHA-512"
            props[prefix + "scram-sha-512.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
            props[prefix + "ssl.keystore.type"] = "PEM"
            props[prefix + "ssl.keystore.location"] = str(self._log_dir / "tls" / "broker.pem")
        props.update(self.extra_config)
        return {k: str(v) for k, v in props.items()}

    def _write_tls_files(self) -> None:
        """A self-signed CA and a broker certificate for ``host`` (kept across restarts)."""
        tls = self._log_dir / "tls"
        if (tls / "broker.pem").exists() and self.ca_file.exists():
            return
        tls.mkdir(parents=True, exist_ok=True)
        ca_pem, broker_pem = make_tls_files(self.host)
        self.ca_file.write_bytes(ca_pem)
        key_file = tls / "broker.pem"
        key_file.touch(mode=0o600)
        key_file.write_bytes(broker_pem)

    def add_scram_user(self, user: str, password: str, mechanism: str = "SCRAM-SHA-512") -> None:
        """Create (or update) a SCRAM user with Kafka's ``kafka-configs`` tool, over the PLAINTEXT listener.

        The password goes to the tool in a file it reads (``--add-config-file``), not on its command line.
        """
        with tempfile.NamedTemporaryFile("w", dir=self._log_dir, suffix=".properties", delete=False) as f:
            f.write(f"{mechanism}=iterations=4096,password={password}\n")
            secret_file = f.name
        try:
            cmd = self._java_cmd(
                "kafka.admin.ConfigCommand",
                "--bootstrap-server",
                self.bootstrap_servers,
                "--alter",
                "--entity-type",
                "users",
                "--entity-name",
                user,
                "--add-config-file",
                secret_file,
                heap="256m",
            )
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, start_new_session=True)
        finally:
            os.unlink(secret_file)
        if res.returncode != 0:
            raise KafkaBrokerError(f"creating SCRAM user {user!r} failed (exit {res.returncode}): {res.stderr[-1500:]}")

    def _write_config(self) -> None:
        lines = ["# generated by tools/local_kafka.py"] + [f"{k}={v}" for k, v in self.server_properties().items()]
        self.config_file.write_text("\n".join(lines) + "\n")
        (self._log_dir / "log4j.properties").write_text(_LOG4J1)
        (self._log_dir / "log4j2.properties").write_text(_LOG4J2)

    def _java_cmd(self, main_class: str, *args: str, heap: str) -> list[str]:
        return [
            self.java,
            f"-Xmx{heap}",
            *self.jvm_opts,
            f"-Dlog4j.configuration=file:{self._log_dir / 'log4j.properties'}",
            f"-Dlog4j2.configurationFile={self._log_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self._log_dir}",
            "-cp",
            f"{self.jar_dir}{os.sep}*",
            main_class,
            *args,
        ]

    def _format_storage(self) -> None:
        if (self.data_dir / "meta.properties").exists():
            return  # formatted by an earlier start (restart, or a reused log_dir)
        cmd = self._java_cmd(
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            random_cluster_id(),
            "--config",
            str(self.config_file),
            "--ignore-formatted",
            heap="256m",
        )
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, start_new_session=True)
        if res.returncode != 0:
            raise KafkaBrokerError(
                f"formatting {self.data_dir} failed (exit {res.returncode}):\n{res.stdout}\n{res.stderr}"
            )

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> LocalKafkaBroker:
        """Start the broker and wait until it serves metadata. No-op if it is already running."""
        with self._lock:
            if self.is_running:
                return self
            _install_safety_hooks()
            t0 = time.monotonic()
            self._wait_ports_free(timeout=PORT_WAIT_S)
            if self.sasl_ssl_port is not None:
                self._write_tls_files()
            self._write_config()
            self._format_storage()

            cmd = self._java_cmd("kafka.Kafka", str(self.config_file), heap=self.heap)
            # The JVM dies with this process even on SIGKILL. PDEATHSIG fires when the *thread* that
            # forked exits, so only do it from the main thread (which lives as long as the process).
            setpriv = shutil.which("setpriv")
            if setpriv and threading.current_thread() is threading.main_thread():
                cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
            self._log_file = open(self.broker_log, "ab")  # noqa: SIM115 - closed in stop()
            self._log_file.write(f"\n===== starting broker: {' '.join(cmd)}\n".encode())
            self._log_file.flush()
            with _LIVE_LOCK:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log_file,
                    stderr=subprocess.STDOUT,
                    cwd=self._log_dir,
                    start_new_session=True,  # own process group: stop() signals the whole group
                )
                _LIVE.add(self)
            try:
                self._wait_ready(deadline=t0 + self.startup_timeout)
            except BaseException:
                self.stop(timeout=5.0)
                raise
            self.last_startup_seconds = time.monotonic() - t0
            log.info("Kafka broker %s up in %.1f s", self.bootstrap_servers, self.last_startup_seconds)
            return self

    def _wait_ports_free(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            busy = [p for p in (self.port, self.controller_port) if not _port_bindable(self.host, p)]
            if not busy:
                return
            if time.monotonic() > deadline:
                raise KafkaBrokerError(
                    f"cannot start the broker: port(s) {busy} on {self.host} are in use by another process"
                )
            time.sleep(0.2)

    def _wait_ready(self, deadline: float) -> None:
        from kafka import KafkaAdminClient  # imported lazily: the module is usable without kafka-python

        assert self._proc is not None
        last_error: Exception | None = None
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise KafkaBrokerError(
                    f"the Kafka broker exited during startup (exit code {rc}). "
                    f"Last lines of {self.broker_log}:\n{_tail(self.broker_log)}"
                )
            if time.monotonic() > deadline:
                raise KafkaBrokerError(
                    f"the Kafka broker did not become ready within {self.startup_timeout:.0f} s "
                    f"(last error: {last_error!r}). "
                    f"Last lines of {self.broker_log}:\n{_tail(self.broker_log)}"
                )
            if _port_open(self.host, self.port):
                try:
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.bootstrap_servers,
                        request_timeout_ms=5000,
                        client_id="local-kafka-readiness",
                    )
                    try:
                        admin.list_topics()
                        return
                    finally:
                        admin.close()
                except Exception as exc:  # not ready yet: retry until the deadline
                    last_error = exc
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the broker: SIGTERM its process group, wait ``timeout`` s, then SIGKILL. Idempotent.

        The log dir and the ports are kept, so :meth:`start` brings the same broker back.
        """
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                self._signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("Kafka broker pid %s ignored SIGTERM for %.0f s: killing", proc.pid, timeout)
                    self._signal_group(proc, signal.SIGKILL)
                    proc.wait()
            self._proc = None
            with _LIVE_LOCK:
                _LIVE.discard(self)
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def kill(self) -> None:
        """Crash the broker (SIGKILL, no clean shutdown): for fault tests. :meth:`start` recovers it."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._signal_group(self._proc, signal.SIGKILL)
                self._proc.wait()
            self.stop()

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
        # The child is its own group leader (start_new_session), so pgid == pid while it is not reaped.
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def restart(self, timeout: float = 20.0) -> LocalKafkaBroker:
        """Stop then start again, on the same ports and log dir (topics and data survive)."""
        self.stop(timeout=timeout)
        return self.start()

    def close(self) -> None:
        """Stop the broker and remove its log dir if this instance created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self._log_dir, ignore_errors=True)

    def __enter__(self) -> LocalKafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- topics -----------------------------------------------------------------------------------

    def admin(self, **kwargs: Any):  # -> kafka.KafkaAdminClient (kept untyped: lazy import)
        """A kafka-python admin client for this broker; close it when done."""
        from kafka import KafkaAdminClient

        return KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, **kwargs)

    def list_topics(self) -> list[str]:
        admin = self.admin()
        try:
            return sorted(t for t in admin.list_topics() if not t.startswith("__"))
        finally:
            admin.close()

    def create_topic(
        self,
        name: str,
        partitions: int | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        exist_ok: bool = True,
        timeout: float = 30.0,
    ) -> None:
        """Create ``name`` (``num_partitions`` partitions unless given) and wait until every partition
        has a leader. An existing topic is accepted when ``exist_ok`` (its partition count is not changed)."""
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        partitions = partitions if partitions is not None else self.num_partitions
        topic = NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=1,
            topic_configs={k: str(v) for k, v in (config or {}).items()},
        )
        admin = self.admin()
        try:
            try:
                admin.create_topics([topic], timeout_ms=int(timeout * 1000))
            except TopicAlreadyExistsError:
                if not exist_ok:
                    raise
            deadline = time.monotonic() + timeout
            while True:
                try:
                    (desc,) = admin.describe_topics([name])
                    parts = desc.get("partitions") or []
                    if desc.get("error_code", 0) == 0 and parts and all(_leader(p) >= 0 for p in parts):
                        return
                except Exception as exc:  # metadata not propagated yet
                    log.debug("waiting for topic %s: %r", name, exc)
                if time.monotonic() > deadline:
                    raise KafkaBrokerError(f"topic {name!r} has no leader for all partitions after {timeout} s")
                time.sleep(0.1)
        finally:
            admin.close()


def make_tls_files(host: str, days: int = 30) -> tuple[bytes, bytes]:
    """(CA certificate, broker private key + certificate chain), PEM: a self-signed CA for tests and demos."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject: str, issuer: x509.Name | None, key, signer, ca: bool):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            try:
                alt: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(host))]
            except ValueError:
                alt = [x509.DNSName(host)]
            builder = builder.add_extension(x509.SubjectAlternativeName([*alt, x509.DNSName("localhost")]), False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("streaming-anomaly local CA", None, ca_key, ca_key, ca=True)
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker_cert = build(host, ca_cert.subject, broker_key, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    key_pem = broker_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    chain = broker_cert.public_bytes(pem) + ca_cert.public_bytes(pem)
    return ca_cert.public_bytes(pem), key_pem + chain


def _leader(partition: Mapping[str, Any]) -> int:
    leader = partition.get("leader_id", partition.get("leader"))
    return -1 if leader is None else int(leader)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.local_kafka", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start a broker, print its bootstrap servers, run until Ctrl-C")
    run.add_argument("--log-dir", help="keep config, broker.log and data here (default: a temp dir)")
    run.add_argument("--port", type=int, help="broker port (default: a free one)")
    run.add_argument("--controller-port", type=int, help="controller port (default: a free one)")
    run.add_argument("--partitions", type=int, default=2, help="num.partitions for auto-created topics")
    run.add_argument("--topic", action="append", default=[], help="create this topic (repeatable)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("kafka").setLevel(logging.WARNING)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGINT explicitly too: a shell starts background jobs with SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    broker = LocalKafkaBroker(
        args.log_dir, port=args.port, controller_port=args.controller_port, num_partitions=args.partitions
    )
    try:
        broker.start()
        for topic in args.topic:
            broker.create_topic(topic)
        print(broker.bootstrap_servers, flush=True)
        print(
            f"pid {broker.pid}, log {broker.broker_log}. Ctrl-C to stop.",
            file=sys.stderr,
            flush=True,
        )
        while True:
            time.sleep(1.0)
            if not broker.is_running:
                print(f"the broker died; last lines of its log:\n{_tail(broker.broker_log)}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping the broker...", file=sys.stderr, flush=True)
        if args.log_dir:
            broker.stop()
        else:
            broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
