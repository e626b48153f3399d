"""The dashboard's incident pages in headless Chromium, over tables this test fills.

A SQLite database gets a results table (two applications, a minute of ``avg`` per row, two
detectors) and the job's two incident tables (the contract's columns), and ``python -m
tools.dashboard`` serves it with a token and ``--bootstrap-servers`` of the session's broker, so
the feedback buttons produce real records. The database starts without the incident tables: the
list answers with its message first, then the test creates and fills them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from jobs.result_format import TABLE_COLUMNS
from tests.browser_fixture import free_port
from tests.test_notify import incident_id
from tools.incidents_repository import EVENT_FIELDS, INCIDENT_FIELDS
from tools.synthetic import consume_all

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parent.parent
TOKEN = "incidents-token-81d2"
T0 = 1_709_280_000_000  # 2024-03-01T08:00:00Z
MIN = 60_000
XSS = "<img src=x onerror=alert(2)>"


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def transitions(app: str, first: int, states: list[tuple[str, str, int]], severity: str = "warning",
                feedback: str | None = None) -> list[dict]:
    """Event rows of one incident: (transition, state, minutes after its first window) each."""
    out = []
    for seq, (transition, state, minutes) in enumerate(states, start=1):
        resolved = state == "resolved"
        out.append({
            "incident_id": incident_id(app, first), "seq": seq, "transition": transition, "state": state,
            "application": app, "detector": "default", "agg_function": "avg", "agg_window_millis": MIN,
            "opened_at": iso(first), "event_ts": iso(first + minutes * MIN),
            "resolved_at": iso(first + minutes * MIN) if resolved else None, "severity": severity,
            "peak_probability": 0.9999, "peak_value": 90.0 + seq, "peak_ts": iso(first), "value_lower_limit": 8.0,
            "value_upper_limit": 12.0, "explanation": json.dumps({"kind": "spike"}), "window_count": seq,
            "resolution": ("clean" if feedback is None else feedback) if resolved else None,
            "feedback": feedback if transition == "feedback" or (resolved and feedback) else None,
        })
    return out


INCIDENTS = [
    transitions("checkout", T0 + 100 * MIN, [("opened", "open", 0), ("updated", "open", 2)], "critical"),
    transitions("checkout", T0 + 30 * MIN, [("opened", "open", 0), ("resolved", "resolved", 12)]),
    transitions("auth", T0 + 40 * MIN, [("opened", "open", 0), ("resolved", "resolved", 3)],
                feedback="false_positive"),
    transitions("auth", T0 + 90 * MIN, [("opened", "open", 0), ("feedback", "open", 1)], feedback="true_positive"),
    transitions(XSS, T0 + 50 * MIN, [("opened", "flapping", 0)]),
]


def fill_results(con: sqlite3.Connection) -> None:
    cols = ", ".join(TABLE_COLUMNS)
    con.execute(f"CREATE TABLE predictions ({cols})")
    rows = []
    for app in ("checkout", "auth", XSS):
        for i in range(240):
            value = 10.0 + (80.0 if i in (30, 100, 101) else 0.0)
            for det in ("default", "ema"):
                row = {"application": app, "ts": iso(T0 + i * MIN), "agg_function": "avg", "agg_window_millis": MIN,
                       "agg_value": value, "detector": det, "value_lower_limit": 8.0, "value_upper_limit": 12.0,
                       "anomaly_probability": 0.99999 if value > 50 else 0.1, "is_anomaly": int(value > 50),
                       "explanation": None}
                rows.append(tuple(row[c] for c in TABLE_COLUMNS))
    con.executemany(f"INSERT INTO predictions VALUES ({', '.join('?' * len(TABLE_COLUMNS))})", rows)


def fill_incidents(con: sqlite3.Connection) -> None:
    con.execute(f"CREATE TABLE incident_events ({', '.join(EVENT_FIELDS)}, PRIMARY KEY (incident_id, seq))")
    con.execute(f"CREATE TABLE incidents ({', '.join(INCIDENT_FIELDS)}, PRIMARY KEY (incident_id))")
    for events in INCIDENTS:
        for e in events:
            con.execute(f"INSERT INTO incident_events VALUES ({', '.join('?' * len(EVENT_FIELDS))})",
                        tuple(e[c] for c in EVENT_FIELDS))
        last = {**events[-1], "last_seq": events[-1]["seq"]}
        con.execute(f"INSERT INTO incidents VALUES ({', '.join('?' * len(INCIDENT_FIELDS))})",
                    tuple(last[c] for c in INCIDENT_FIELDS))


def api(url: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def incidents_dashboard(kafka_broker, tmp_path_factory):
    work = tmp_path_factory.mktemp("incidents-dash")
    db = work / "results.db"
    con = sqlite3.connect(db)
    with con:
        fill_results(con)
    topic = f"feedback-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, partitions=2)
    port = free_port()
    command = [sys.executable, "-m", "tools.dashboard", "--jdbc", f"jdbc:sqlite:{db}", "--port", str(port),
               "--bootstrap-servers", kafka_broker.bootstrap_servers, "--feedback-topic", topic]
    log_path = work / "dashboard.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env={**os.environ, "ANOMALY_DASHBOARD_TOKEN": TOKEN},
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            empty = api(url + "api/incidents")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the dashboard did not start:\n{log_path.read_text()}")
            time.sleep(0.2)
    with con:
        fill_incidents(con)
    con.close()
    yield {"url": url, "topic": topic, "empty": empty}
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def page(browser, incidents_dashboard):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    tab = context.new_page()
    errors, dialogs = [], []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    tab.goto(incidents_dashboard["url"] + "?token=" + TOKEN)
    yield tab
    context.close()
    assert errors == [] and dialogs == []


def listed(tab) -> list[tuple[str, str]]:
    rows = tab.eval_on_selector_all(
        "#incidents tbody tr", "rows => rows.map(r => [r.cells[0].textContent, r.cells[2].textContent])")
    return [tuple(r) for r in rows]


def test_without_incident_tables_the_list_says_so(incidents_dashboard):
    empty = incidents_dashboard["empty"]
    assert empty["available"] is False and empty["incidents"] == []
    assert "no incident tables in this database yet" in empty["message"]


def test_incidents_page_open_first_filters_and_precision(page, incidents_dashboard):
    page.goto(incidents_dashboard["url"] + "incidents")
    page.wait_for_selector("#incidents tbody tr")
    rows = listed(page)
    # open ones (open, flapping) first, newest opening first; then resolved, newest first
    assert rows == [("checkout", "open"), ("auth", "open"), (XSS, "flapping"), ("auth", "resolved"),
                    ("checkout", "resolved")]
    assert page.eval_on_selector_all("main img", "els => els.length") == 0  # the hostile name is text
    page.select_option("#state", "resolved")
    page.wait_for_function("document.querySelectorAll('#incidents tbody tr').length === 2")
    page.select_option("#application", "checkout")
    page.wait_for_function("document.querySelectorAll('#incidents tbody tr').length === 1")
    assert listed(page) == [("checkout", "resolved")]
    page.select_option("#state", "")
    page.select_option("#application", "")
    page.select_option("#severity", "critical")
    page.wait_for_function("document.querySelectorAll('#incidents tbody tr').length === 1")
    assert listed(page) == [("checkout", "open")]
    precision = page.eval_on_selector_all(
        "#precision tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))")
    by_app = {r[0]: r for r in precision}
    assert by_app["auth"] == ["auth", "2", "2", "1", "1", "0", "0", "50 %"]
    assert by_app["checkout"][-1] == "no labels"


def test_incident_page_timeline_chart_and_feedback_button(page, incidents_dashboard, kafka_broker):
    events = INCIDENTS[1]  # checkout, opened then resolved
    ident = events[0]["incident_id"]
    page.goto(incidents_dashboard["url"] + "incidents")
    page.click(f"#incidents tr[data-incident-id='{ident}'] a")
    page.wait_for_selector("#events tbody tr")
    assert page.url.endswith(f"/incidents/{ident}")
    assert page.text_content("#title") == "checkout: incident resolved"
    timeline = page.eval_on_selector_all("#events tbody tr", "rows => rows.map(r => r.cells[1].textContent)")
    assert timeline == ["opened", "resolved"]
    page.wait_for_selector(".chart .scatterlayer")
    # the incident's span and one line per transition on its chart; only its own detector drawn
    shapes = page.evaluate("() => document.querySelector('.chart').layout.shapes.length")
    assert shapes == 1 + len(events)
    detectors = page.evaluate(
        "() => [...new Set(document.querySelector('.chart').data.map(t => t.meta.detector).filter(d => d))]")
    assert detectors == ["default"]
    page.fill("#by", "alice")
    page.fill("#comment", "planned load test")
    page.click("#feedback button[data-label='false_positive']")
    page.wait_for_function("document.getElementById('feedback-result').textContent.startsWith('sent ')")
    (got,) = consume_all(kafka_broker.bootstrap_servers, incidents_dashboard["topic"], timeout_s=20)
    assert got.key == b"checkout"
    value = json.loads(got.value)
    assert {k: value[k] for k in ("application", "incident_id", "label", "by", "comment")} == {
        "application": "checkout", "incident_id": ident, "label": "false_positive", "by": "alice",
        "comment": "planned load test"}


def test_feedback_api_refuses_bad_requests(incidents_dashboard):
    base = incidents_dashboard["url"] + "api/incidents/"
    ident = INCIDENTS[0][0]["incident_id"]

    def post(path: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
        request = urllib.request.Request(base + path, data=body, method="POST", headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    assert post(f"{ident}/feedback", b'{"label": "meh"}')[1]["error"].startswith("label: must be one of")
    assert post(f"{ident}/feedback", b"label=false_positive", "application/x-www-form-urlencoded")[0] == 415
    assert post(f"{'0' * 32}/feedback", b'{"label": "expected"}')[0] == 404
