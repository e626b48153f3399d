"""A local Prometheus Alertmanager and a webhook receiver that records what it is sent.

For the tests (tests/alertmanager_fixture.py) and the demo (tools/demo.py): Debian's
``prometheus-alertmanager`` binary (``scripts/alertmanager.sh`` prints it, installing it when
missing) started on a loopback port with its storage in a directory, and a ``http.server`` thread
that records every POST (Alertmanager's webhook receiver, and the notifier's generic webhook
target), answering with what ``answer(path, body)`` returns (200 unless a test scripts a failure).

The config groups by incident with short timers (group_wait 300 ms, group_interval 1 s) and the
shipped config's ``repeat_interval`` (720 h): a notification that comes twice is a real duplicate,
not a repeat. ``restart()`` stops the server with SIGTERM (Alertmanager writes its notification
log and silences to its data dir on the way out) and starts it again on the same port and data
dir, as a service manager would.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def alertmanager_binary() -> str:
    """The binary's path (``scripts/alertmanager.sh`` installs it when missing); RuntimeError when none."""
    proc = subprocess.run([str(REPO / "scripts" / "alertmanager.sh")], capture_output=True, text=True, check=False)
    binary = proc.stdout.strip()
    if proc.returncode != 0 or not binary:
        raise RuntimeError(f"no Alertmanager: {proc.stderr.strip()[-300:]}")
    return binary


CONFIG = """global:
  resolve_timeout: 5m
route:
  receiver: local-webhook
  group_by: [alertname, incident_id]
  group_wait: 300ms
  group_interval: 1s
  repeat_interval: 720h
receivers:
  - name: local-webhook
    webhook_configs:
      - url: {url}
        send_resolved: true
"""


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class WebhookReceiver:
    """Records every POST; ``answer(path, body)`` may return a status other than 200."""

    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    answer: Callable[[str, Any], int] = lambda path, body: 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def received(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def notifications(self, incident_ids: set[str] | None = None) -> list[tuple[str, str]]:
        """(incident_id, 'firing' | 'resolved') per alert per notification Alertmanager sent."""
        out = []
        for request in self.received("/alertmanager"):
            for alert in request.body.get("alerts", []):
                incident = alert.get("labels", {}).get("incident_id", "")
                if incident_ids is None or incident in incident_ids:
                    out.append((incident, alert.get("status", "?")))
        return out


def _handler(receiver_box: list[WebhookReceiver]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            receiver = receiver_box[0]
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
            status = receiver.answer(self.path, body)
            if status < 300:
                with receiver.lock:
                    receiver.requests.append(Received(self.path, dict(self.headers), body, time.monotonic()))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def start_receiver() -> WebhookReceiver:
    box: list[WebhookReceiver] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(box))
    server.daemon_threads = True
    receiver = WebhookReceiver(server)
    box.append(receiver)
    threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True).start()
    return receiver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AlertmanagerServer:
    binary: str
    base: Path
    port: int
    receiver: WebhookReceiver
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.base / "alertmanager.log", "a")  # noqa: SIM115 - the server's, closed by the OS
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.base / 'alertmanager.yml'}",
                f"--storage.path={self.base / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--data.retention=744h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/-/ready", timeout=1).read()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("Alertmanager did not start:\n" + self.log_tail()) from None
                time.sleep(0.1)

    @classmethod
    def create(cls, binary: str, base: Path, receiver: WebhookReceiver) -> AlertmanagerServer:
        """A server whose receiver is ``receiver``'s ``/alertmanager``, config and data in ``base``; not started."""
        base.mkdir(parents=True, exist_ok=True)
        (base / "alertmanager.yml").write_text(CONFIG.format(url=receiver.url + "/alertmanager"))
        return cls(binary, base, _free_port(), receiver)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self) -> str:
        path = self.base / "alertmanager.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=5) as response:
            return list(json.loads(response.read()))

    def silences(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/api/v2/silences", timeout=5) as response:
            return list(json.loads(response.read()))
