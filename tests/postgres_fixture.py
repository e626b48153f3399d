"""Session fixture ``postgres``: a throwaway PostgreSQL cluster on a free loopback port.

The server binaries come from Debian's packages (``scripts/postgres.sh`` installs them;
``scripts/test.sh`` runs it first). The fixture creates a temporary cluster with
``initdb`` -- as the ``postgres`` OS user when the tests run as root, since initdb
and postgres refuse root -- starts it on 127.0.0.1 with its unix socket inside the
temporary directory and fsync off, creates a database owned by a fresh login role
with a random password (scram-sha-256 over TCP), and always stops the server
(``pg_ctl stop -m immediate``) and removes the directory.

Without the binaries, or when the server cannot start, the tests that use it skip
with the reason -- except under CI (``CI`` set), where they fail instead, so a CI
run cannot pass without really exercising PostgreSQL.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

OS_USER = "postgres"
DATABASE = "anomaly"
ROLE = "anomaly_app"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False)
    bin_dir: Path
    socket_dir: Path

    @property
    def jdbc_url(self) -> str:
        """No credentials in it: they go as the job's user/password_env."""
        return f"jdbc:postgresql://{self.host}:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """libpq conninfo without the password: ``psycopg.connect(dsn, password=...)``."""
        return f"host={self.host} port={self.port} dbname={self.database} user={self.user}"

    @property
    def connect_params(self) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect`` (password included)."""
        return {
            "host": self.host,
            "port": self.port,
            "dbname": self.database,
            "user": self.user,
            "password": self.password,
        }

    def psql(self, sql: str, database: str | None = None) -> str:
        """Run SQL as the cluster's superuser over the unix socket; returns stdout."""
        return _run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                OS_USER,
                "-d",
                database or self.database,
            ],
            input_text=sql,
        )


class PostgresUnavailable(RuntimeError):
    pass


def _bin_dir() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        path = Path(candidate)
        if all((path / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres", "psql")):
            return path
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found: run scripts/postgres.sh")


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def _as_server_user() -> list[str]:
    """Command prefix that runs a server tool as a non-root user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        raise PostgresUnavailable(f"running as root and there is no {OS_USER!r} OS user to run initdb as") from None
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", OS_USER, "--"]
    raise PostgresUnavailable("running as root and runuser (util-linux) is missing")


def _run(cmd: list[str], input_text: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(cmd, input=input_text, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise PostgresUnavailable(
            f"{Path(cmd[cmd.index('--') + 1] if '--' in cmd else cmd[0]).name} failed "
            f"(exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    return proc.stdout


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid)


@dataclass
class _Cluster:
    """The cluster's lifecycle; ``stop`` is safe to call at any point, more than once."""

    base: Path
    bin_dir: Path = field(init=False)
    prefix: list[str] = field(init=False)
    started: bool = False

    def __post_init__(self) -> None:
        self.bin_dir = _bin_dir()
        self.prefix = _as_server_user()

    @property
    def data(self) -> Path:
        return self.base / "data"

    def start(self) -> PostgresServer:
        if self.prefix:
            entry = pwd.getpwnam(OS_USER)
            _chown_tree(self.base, entry.pw_uid, entry.pw_gid)
        os.chmod(self.base, 0o700)
        _run(
            [
                *self.prefix,
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                OS_USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        port = self._start_on_free_port()
        password = secrets.token_urlsafe(24)
        server = PostgresServer(
            host="127.0.0.1",
            port=port,
            database=DATABASE,
            user=ROLE,
            password=password,
            bin_dir=self.bin_dir,
            socket_dir=self.base,
        )
        # the password is url-safe base64: nothing in it needs quoting inside '...'
        server.psql(
            f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}';\nCREATE DATABASE {DATABASE} OWNER {ROLE};\n",
            database="postgres",
        )
        return server

    def _start_on_free_port(self) -> int:
        last: Exception | None = None
        for _ in range(3):  # another process may take the port between probe and bind
            port = _free_port()
            conf = (
                f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.base}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 32MB\nmax_connections = 40\nmax_wal_size = 256MB\n"
                "log_min_messages = warning\nlog_connections = off\n"
            )
            with open(self.data / "postgresql.auto.conf", "a", encoding="utf-8") as fh:
                fh.write(conf)
            try:
                self.started = True
                _run(
                    [
                        *self.prefix,
                        str(self.bin_dir / "pg_ctl"),
                        "-D",
                        str(self.data),
                        "-l",
                        str(self.base / "server.log"),
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ]
                )
                return port
            except PostgresUnavailable as err:
                last = err
                self.stop()
        log_tail = ""
        log_file = self.base / "server.log"
        if log_file.exists():
            log_tail = log_file.read_text(errors="replace")[-1500:]
        raise PostgresUnavailable(f"the server did not start: {last}\n{log_tail}")

    def stop(self) -> None:
        if self.started and (self.data / "postmaster.pid").exists():
            subprocess.run(
                [*self.prefix, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
                check=False,
            )
        self.started = False


def _unavailable(reason: str) -> None:
    message = f"PostgreSQL unavailable, its tests cannot run: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: failing instead of skipping)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    # /tmp, not pytest's tmp_path: its parents are private to root, and the server runs as postgres
    base = Path(tempfile.mkdtemp(prefix="anomaly-pg-"))
    cluster: _Cluster | None = None
    try:
        try:
            cluster = _Cluster(base)
            server = cluster.start()
        except (PostgresUnavailable, OSError, subprocess.TimeoutExpired) as err:
            _unavailable(str(err))
        yield server
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
