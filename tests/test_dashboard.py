"""The dashboard, the report and the demo's log, against a table filled by the real job.

One Chromium (Debian's, via Playwright) and one job run (the demo's path:
./spark-submit.sh with conf/demo.yaml) for the whole session: see
tests/browser_fixture.py. The dashboard runs as ``python -m tools.dashboard`` with a
token, so every request below, the live channel included, passes the token check.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.browser_fixture import TOKEN, XSS_APP

pytestmark = pytest.mark.browser
SCREENSHOT_DIR = os.environ.get("ANOMALY_SCREENSHOT_DIR")  # set to refresh docs/img/*.png


class Session:
    """A page with the token cookie set, recording console errors and dialogs."""

    def __init__(self, page, base: str) -> None:
        self.page = page
        self.base = base
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

        def on_dialog(dialog) -> None:
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)

    def open(self, path: str) -> None:
        self.page.goto(self.base + path)


@pytest.fixture
def session(browser, dashboard):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.goto(dashboard.url + "?token=" + TOKEN)  # the first visit sets the token cookie
    s = Session(page, dashboard.url)
    yield s
    context.close()
    assert s.errors == [], f"browser console errors: {s.errors}"
    assert s.dialogs == [], f"a dialog opened: {s.dialogs}"


def db_rows(demo_run, sql: str, params: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(demo_run.db)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def test_demo_job_log_is_quiet(demo_run):
    """The demo's job prints the project's lines: no Java stack trace, no state-server WARN,
    no py4j chatter on stop, no JDBC isolation warnings; every batch's progress line is there."""
    assert demo_run.returncode == 0, demo_run.stderr[-3000:]
    log = demo_run.stdout + demo_run.stderr
    assert not re.search(r"^\s+at [\w$.]+\(", log, re.M), f"Java stack trace in the log:\n{log[-4000:]}"
    assert not re.search(r"^\S+ WARN TransformWithState", log, re.M), log[-4000:]
    for noise in (
        "Connection reset",
        "py4j",
        "READ_UNCOMMITTED",
        "Traceback",
        "received return type of UDF",
        "Disabling AQE",
    ):
        assert noise not in log, f"{noise!r} in the job's log:\n{log[-4000:]}"
    # Every line is the project's own: its logging format, nothing else (Spark 4.2's incubator-module
    # notice and PySpark's worker start line are dropped by spark-submit.sh; a WARN or ERROR from
    # Spark would show up here too, and fail the test).
    ours = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ INFO anomaly\.")
    foreign = [line for line in log.splitlines() if line.strip() and not ours.match(line)]
    assert foreign == [], "lines that are not the project's:\n" + "\n".join(foreign[:20])
    batches = [int(b) for b in re.findall(r"\[demo\] batch (\d+):", log)]
    assert batches and batches == list(range(len(batches))), batches
    # every batch's line is there, the last one's included: their results add up to the table's rows
    logged = sum(int(n.replace(",", "")) for n in re.findall(r"\[demo\] batch \d+: .*?, ([\d,]+) results", log))
    assert logged == db_rows(demo_run, "SELECT COUNT(*) FROM predictions")[0][0] > 0
    assert re.search(r"query \S+ stopped", log)


def test_applications_page_lists_every_application(session, demo_run):
    expected = sorted(r[0] for r in db_rows(demo_run, "SELECT DISTINCT application FROM predictions"))
    assert XSS_APP in expected and len(expected) == 5
    session.open("")
    session.page.wait_for_selector("#apps tbody tr")
    names = session.page.eval_on_selector_all("#apps a.app-link", "els => els.map(e => e.textContent)")
    assert sorted(names) == expected
    # the untrusted name is text: no element was made from it
    assert session.page.eval_on_selector_all("main img", "els => els.length") == 0
    assert "of 5" in session.page.text_content("#pageinfo")
    session.page.fill("#search", "ship")
    session.page.wait_for_function("document.querySelectorAll('#apps a.app-link').length === 1")
    assert session.page.text_content("#apps a.app-link") == "shipping"
    if SCREENSHOT_DIR:
        session.page.fill("#search", "")
        session.page.wait_for_function("document.querySelectorAll('#apps a.app-link').length === 5")
        session.page.screenshot(
            path=str(Path(SCREENSHOT_DIR) / "dashboard-applications.png"),
            clip={"x": 0, "y": 0, "width": 1000, "height": 380},
        )


def _open_app(session, name: str) -> None:
    session.open("app?" + urllib.parse.urlencode({"name": name}))
    session.page.wait_for_selector(".chart .scatterlayer")
    session.page.wait_for_function("document.getElementById('info').textContent.length > 0")


MARKERS_JS = """() => Array.from(document.querySelectorAll('.chart')).flatMap(div => {
  const drawn = div.querySelectorAll('.scatterlayer .trace');
  return div.data.map((t, i) => [t.meta.role, t.meta.detector, i]).filter(x => x[0] === 'anomaly')
    .map(([, d, i]) => [div.dataset.aggFunction, Number(div.dataset.aggWindowMillis), d,
                        drawn[i].querySelectorAll('.points path').length]);
})"""


def test_application_page_draws_every_anomaly_and_toggles_detectors(session, demo_run):
    app = "shipping"
    expected = {
        (f, w, d): n
        for f, w, d, n in db_rows(
            demo_run,
            "SELECT agg_function, agg_window_millis, detector, COUNT(*) FROM predictions "
            "WHERE application = ? AND is_anomaly = 1 GROUP BY 1, 2, 3",
            (app,),
        )
    }
    assert sum(expected.values()) > 0
    _open_app(session, app)
    assert session.page.text_content("h1") == app
    drawn = {(f, w, d): n for f, w, d, n in session.page.evaluate(MARKERS_JS)}
    assert drawn == expected
    detectors = sorted(r[0] for r in db_rows(demo_run, "SELECT DISTINCT detector FROM predictions"))
    fills = "() => document.querySelectorAll('.chart .scatterlayer .trace .js-fill').length"
    assert session.page.evaluate(fills) == len(detectors)  # one band per detector
    if SCREENSHOT_DIR:
        session.page.screenshot(
            path=str(Path(SCREENSHOT_DIR) / "dashboard-application.png"),
            clip={"x": 0, "y": 0, "width": 1200, "height": 520},
        )
    session.page.uncheck('#detectors input[data-detector="ema"]')
    session.page.wait_for_function(f"({fills})() === {len(detectors) - 1}")
    markers = "() => document.querySelectorAll('.chart .scatterlayer .points path').length"
    hidden = sum(n for (_, _, d), n in expected.items() if d == "ema")
    assert session.page.evaluate(markers) == sum(expected.values()) - hidden
    session.page.check('#detectors input[data-detector="ema"]')
    session.page.wait_for_function(f"({fills})() === {len(detectors)}")


def test_live_row_appears_within_5_s(session, demo_run):
    app = "auth"
    _open_app(session, app)
    (last,) = db_rows(demo_run, "SELECT MAX(ts) FROM predictions WHERE application = ?", (app,))[0]
    later = datetime.fromisoformat(last.replace("Z", "+00:00")) + timedelta(minutes=5)
    ts = later.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    con = sqlite3.connect(demo_run.db)
    with con:
        con.execute(
            "INSERT INTO predictions (application, ts, agg_function, agg_window_millis, agg_value, detector, "
            "value_lower_limit, value_upper_limit, anomaly_probability, is_anomaly) "
            "VALUES (?, ?, 'avg', 300000, 987.654, 'ema', 1.0, 2.0, 0.999999, 1)",
            (app, ts),
        )
    con.close()
    started = time.monotonic()
    session.page.wait_for_function(
        "document.querySelector('#anomalies tbody tr td:nth-child(4)').textContent === '987.654'", timeout=5000
    )
    assert time.monotonic() - started < 5
    assert session.page.text_content("#anomalies tbody tr td:first-child") == ts[:19].replace("T", " ")


def test_untrusted_application_name_is_text(session):
    _open_app(session, XSS_APP)
    assert session.page.text_content("h1") == XSS_APP
    assert session.page.eval_on_selector_all("main img", "els => els.length") == 0
    session.page.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert session.dialogs == []


def test_sandbox_runs_ema_on_a_nab_series_and_scores_it(session):
    session.open("sandbox")
    session.page.wait_for_selector('#path option[value="realKnownCause/nyc_taxi.csv"]', state="attached")
    session.page.select_option("#path", "realKnownCause/nyc_taxi.csv")
    session.page.select_option("#detector", "ema")
    # the form is the detector's ParamSchema: a bad value is refused next to its field
    session.page.fill("#param-window", "1")
    session.page.click("#run")
    session.page.wait_for_function("document.querySelector('[data-error-for=\"window\"]').textContent !== ''")
    assert ">=" in session.page.text_content('[data-error-for="window"]')
    session.page.fill("#param-window", "")  # empty: the default
    session.page.click("#run")
    session.page.wait_for_function("document.getElementById('score').dataset.score", timeout=60_000)
    score = float(session.page.get_attribute("#score", "data-score"))
    assert -100 <= score <= 100
    assert "NAB score" in session.page.text_content("#score")
    assert session.page.evaluate("document.getElementById('result').data.length") == 4
    # NAB windows are shaded
    assert session.page.evaluate("document.getElementById('result').layout.shapes.length") > 0


def test_sandbox_stays_in_its_data_folder(dashboard):
    for path in ("../labels/combined_windows.json", "/etc/passwd", "../../../../etc/passwd"):
        body = urllib.parse.urlencode({"detector": "ema", "params": "{}", "path": path}).encode()
        request = urllib.request.Request(dashboard.url + "api/sandbox", data=body, method="POST")
        request.add_header("Authorization", f"Bearer {dashboard.token}")
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer = json.loads(resp.read())
        assert "path" in answer["errors"] and "ts" not in answer, answer


def test_token_is_required_on_every_request(dashboard):
    for path in (
        "",
        "app?name=auth",
        "api/applications",
        "api/series?application=auth",
        "api/live?application=auth",
        "static/app.js",
        "static/plotly.min.js",
        "sandbox",
    ):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(dashboard.url + path, timeout=10)
        assert err.value.code == 401, path
        wrong = urllib.request.Request(dashboard.url + path, headers={"Authorization": "Bearer wrong"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(wrong, timeout=10)
        assert err.value.code == 401, path
    # the token in the address: a cookie, and a redirect that takes it out of the address bar
    import http.client

    host, port = urllib.parse.urlsplit(dashboard.url).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", f"/app?name=auth&token={TOKEN}")
    resp = conn.getresponse()
    assert resp.status == 303 and resp.getheader("Location") == "/app?name=auth"
    assert f"anomaly_dashboard_token={TOKEN}" in resp.getheader("Set-Cookie")
    conn.close()
    ok = urllib.request.Request(dashboard.url + "api/applications", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(ok, timeout=10) as resp:
        assert json.loads(resp.read())["total"] == 5


def test_report_renders_from_disk_with_the_network_blocked(browser, demo_run, tmp_path):
    from tools.report import write_report
    from tools.repository import ResultsRepository

    out = tmp_path / "report.html"
    assert write_report(ResultsRepository(demo_run.jdbc_url), out) == 5
    context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
    requested: list[str] = []

    def block(route) -> None:
        requested.append(route.request.url)
        route.abort()

    context.route(re.compile(r"^(?!file:).*"), block)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (errors.append("dialog " + d.message), d.dismiss()))
    page.goto(out.as_uri())
    page.wait_for_selector("body[data-rendered=true]")
    charts = page.evaluate("document.querySelectorAll('.chart .main-svg').length")
    assert charts >= 5  # one chart (at least) per application, each drawn as SVG
    drawn = page.evaluate("document.querySelectorAll('.chart .scatterlayer .points path').length")
    (anomalies,) = db_rows(demo_run, "SELECT COUNT(*) FROM predictions WHERE is_anomaly = 1")[0]
    assert drawn == anomalies
    names = page.eval_on_selector_all("table.summary tbody tr td:first-child", "els => els.map(e => e.textContent)")
    assert XSS_APP in names
    assert page.eval_on_selector_all("main img", "els => els.length") == 0
    context.close()
    assert errors == [] and requested == []


def test_dashboard_refuses_a_public_bind_without_token(monkeypatch, capsys):
    from tools.dashboard import main

    monkeypatch.delenv("ANOMALY_DASHBOARD_TOKEN", raising=False)
    assert main(["--jdbc", "jdbc:sqlite:/nonexistent.db", "--host", "0.0.0.0"]) == 2  # refused before binding
    assert "ANOMALY_DASHBOARD_TOKEN" in capsys.readouterr().err
