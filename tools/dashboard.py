"""The live dashboard: ``python -m tools.dashboard --jdbc URL`` (or ``anomaly-dashboard``).

A small Starlette app served by uvicorn. It reads the job's result table through
:class:`tools.repository.ResultsRepository` (read-only, never through Spark):

* ``/``             applications: latest point, anomalies in range, a sparkline; search, sort, paging
* ``/app?name=A``   one chart per (agg_function, agg_window_millis): value, a band and markers per
                    detector (toggle each), date range, zoom; new rows arrive over Server-Sent Events
* ``/sandbox``      a backtest of one CSV with a form generated from the detector's ParamSchema
* ``/incidents``    the job's incidents, one incident's timeline on its chart, feedback buttons
                    (:mod:`tools.dashboard_incidents`)
* ``/api/...``      the JSON behind those pages; ``/api/live`` is the event stream

Charts are drawn by plotly.js, served from the plotly Python package: no page
loads anything from the internet. Every page's script is a static file (the
Content-Security-Policy allows no inline script) and renders names with
``textContent``, so an application name from Kafka is shown, never run.

Binding to anything but loopback requires a token (``ANOMALY_DASHBOARD_TOKEN``),
checked on every request, the event stream included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from tools.dashboard_incidents import incident_routes
from tools.feedback import DEFAULT_TOPIC as FEEDBACK_TOPIC
from tools.incidents_repository import IncidentsRepository
from tools.repository import ResultsRepository, SeriesView, to_utc
from tools.sandbox import SandboxConfig, detector_forms, list_data_files, run_sandbox

log = logging.getLogger("anomaly.dashboard")
STATIC = Path(__file__).resolve().parent / "web"
TOKEN_ENV = "ANOMALY_DASHBOARD_TOKEN"
TOKEN_COOKIE = "anomaly_dashboard_token"
DEFAULT_RANGE = timedelta(days=7)
LIVE_POLL_S = 1.0
PAGE_SIZE_MAX = 200
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclass
class Settings:
    repo: ResultsRepository
    sandbox: SandboxConfig
    token: str | None = None
    live_poll_s: float = LIVE_POLL_S
    sandbox_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    incidents: IncidentsRepository | None = None
    bootstrap_servers: str | None = None  # where feedback goes (None: the buttons say it cannot be sent)
    feedback_topic: str = FEEDBACK_TOPIC


def series_json(view: SeriesView) -> dict[str, Any]:
    """A SeriesView as the page's JSON: a list of charts, each with lines and anomalies per detector."""
    charts = []
    for key in sorted(set(view.lines) | set(view.anomalies)):
        charts.append(
            {
                "agg_function": key[0],
                "agg_window_millis": key[1],
                "lines": view.lines.get(key, {}),
                "anomalies": view.anomalies.get(key, {}),
            }
        )
    return {
        "from": view.from_ms,
        "to": view.to_ms,
        "rows": view.rows,
        "bucket_ms": view.bucket_ms,
        "charts": charts,
    }


def default_range(repo: ResultsRepository, application: str | None) -> tuple[int, int] | None:
    """The last 7 days of data (of one application, or of the table): (from ms, to ms)."""
    span = repo.time_range(application)
    if span is None:
        return None
    last = span[1]
    start = max(span[0], last - DEFAULT_RANGE)
    return _ms(start), _ms(last) + 1


def _ms(ts: datetime) -> int:
    return round(ts.timestamp() * 1000)


def _range_args(params: Any, repo: ResultsRepository, application: str | None) -> tuple[int, int] | None:
    """``from``/``to`` query parameters (epoch ms or ISO-8601), else the default range."""

    def parse(text: str | None) -> int | None:
        if not text:
            return None
        if text.lstrip("-").isdigit():
            return int(text)
        return _ms(to_utc(text))

    start, end = parse(params.get("from")), parse(params.get("to"))
    if start is None or end is None:
        default = default_range(repo, application)
        if default is None:
            return None
        start = default[0] if start is None else start
        end = default[1] if end is None else end
    if end <= start:
        raise ValueError("'to' must be after 'from'")
    return start, end


def prediction_json(p: Any) -> dict[str, Any]:
    r = p.anomaly_results
    return {
        "agg_function": p.agg_function,
        "agg_window_millis": p.agg_window_millis,
        "detector": p.detector,
        "ts": _ms(p.ts),
        "value": p.agg_value,
        "lower": r.value_lower_limit,
        "upper": r.value_upper_limit,
        "prob": r.anomaly_probability,
        "is_anomaly": r.is_anomaly,
    }


@lru_cache(maxsize=1)
def plotly_js() -> bytes:
    """plotly.min.js from the installed plotly package (no CDN)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode("utf-8")


def page(title: str, script: str, body: str, root: str = "") -> str:
    """A page shell; the body is fixed markup, data arrive as JSON and are set as text.
    ``root`` leads back to the dashboard's base from a page one level down (``../``)."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{root}static/style.css"></head>
<body><nav><a href="{root or './'}">Applications</a> <a href="{root}incidents">Incidents</a>
<a href="{root}sandbox">Sandbox</a>
<span id="status" class="status"></span></nav>
<main>{body}</main>
<script src="{root}static/plotly.min.js"></script><script src="{root}static/charts.js"></script>
<script src="{root}static/{script}"></script></body></html>"""


APPS_BODY = """<h1>Applications</h1>
<form id="filters" class="toolbar" autocomplete="off">
 <label>Search <input id="search" type="search" placeholder="name contains"></label>
 <label>Sort <select id="sort"><option value="recent_anomaly">most recent anomaly</option>
  <option value="anomalies">most anomalies in range</option><option value="name">name</option></select></label>
 <label>Range <select id="range"><option value="7d">last 7 days of data</option><option value="1d">last day</option>
  <option value="30d">last 30 days</option><option value="all">all</option></select></label>
</form>
<table id="apps" class="grid"><thead><tr><th>application</th><th>latest point</th><th>latest value</th>
<th>anomalies in range</th><th>last anomaly</th><th>trend</th></tr></thead><tbody></tbody></table>
<div class="pager"><button id="prev" type="button">&larr; previous</button> <span id="pageinfo"></span>
<button id="next" type="button">next &rarr;</button></div>"""

APP_BODY = """<h1 id="title"></h1>
<form id="range" class="toolbar" autocomplete="off">
 <label>From (UTC) <input id="from" type="datetime-local" step="1"></label>
 <label>To (UTC) <input id="to" type="datetime-local" step="1"></label>
 <button type="submit">Apply</button>
 <button type="button" data-range="3600000">1 h</button><button type="button" data-range="86400000">1 d</button>
 <button type="button" data-range="604800000">7 d</button><button type="button" data-range="all">all</button>
 <label><input id="live" type="checkbox" checked> live</label>
</form>
<div id="detectors" class="toolbar"></div>
<p id="info" class="info"></p>
<div id="charts"></div>
<h2>Anomalies in range (newest first)</h2>
<table id="anomalies" class="grid"><thead><tr><th>ts (UTC)</th><th>chart</th><th>detector</th><th>value</th>
<th>lower</th><th>upper</th><th>probability</th></tr></thead><tbody></tbody></table>"""

SANDBOX_BODY = """<h1>Sandbox: backtest a detector on a series</h1>
<form id="sandbox" class="sandbox" autocomplete="off">
 <fieldset><legend>Series (CSV with timestamp,value)</legend>
  <label>From the data folder <select id="path" name="path"><option value="">(none)</option></select></label>
  <label>or upload <input id="file" name="file" type="file" accept=".csv,text/csv"></label>
  <span class="error" data-error-for="path"></span><span class="error" data-error-for="file"></span>
 </fieldset>
 <fieldset><legend>Detector</legend><select id="detector" name="detector"></select>
  <span id="summary" class="info"></span><span class="error" data-error-for="detector"></span>
  <div id="params"></div></fieldset>
 <button id="run" type="submit">Run</button> <span class="error" data-error-for="run"></span>
</form>
<div id="score" class="info"></div>
<div id="result" class="chart"></div>"""


def create_app(settings: Settings) -> Any:
    """The dashboard's ASGI app: pages, the JSON and live APIs, the sandbox, incidents; behind the token guard."""
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    routes = [
        *_page_routes(),
        *_application_routes(settings),
        *_sandbox_routes(settings),
        *incident_routes(settings, page, series_json),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    return _Guard(app, settings.token)


def _bad(message: str, status: int = 400) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def _page_routes() -> list[Any]:
    """The HTML pages, the bundled plotly.js and an empty favicon."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)  # none; without this route every page logs a 404

    async def apps_page(request: Request) -> HTMLResponse:
        return HTMLResponse(page("Applications", "apps.js", APPS_BODY))

    async def app_page(request: Request) -> HTMLResponse:
        return HTMLResponse(page("Application", "app.js", APP_BODY))

    async def sandbox_page(request: Request) -> HTMLResponse:
        return HTMLResponse(page("Sandbox", "sandbox.js", SANDBOX_BODY))

    async def plotly(request: Request) -> Response:
        body = await run_in_threadpool(plotly_js)
        return Response(body, media_type="application/javascript", headers={"Cache-Control": "max-age=86400"})

    return [
        Route("/favicon.ico", favicon),
        Route("/", apps_page),
        Route("/app", app_page),
        Route("/sandbox", sandbox_page),
        Route("/static/plotly.min.js", plotly),
    ]


def _application_routes(settings: Settings) -> list[Any]:
    """/api/applications (the list page), /api/series (one application's rows) and /api/live (its new rows)."""
    from starlette.routing import Route

    return [
        Route("/api/applications", _api_applications(settings.repo)),
        Route("/api/series", _api_series(settings.repo)),
        Route("/api/live", _api_live(settings)),
    ]


def _api_applications(repo: ResultsRepository) -> Any:
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    async def api_applications(request: Request) -> JSONResponse:
        q = request.query_params
        try:
            limit = min(PAGE_SIZE_MAX, max(1, int(q.get("limit", "50"))))
            offset = max(0, int(q.get("offset", "0")))
            days = q.get("days", "7")
            search, sort = q.get("search", "")[:200], q.get("sort", "recent_anomaly")
        except ValueError as err:
            return _bad(str(err))

        def work() -> dict[str, Any]:
            span = repo.time_range()
            if span is None:
                return {"total": 0, "applications": [], "from": None, "to": None}
            end = _ms(span[1]) + 1
            start = _ms(span[0]) if days == "all" else max(_ms(span[0]), end - int(float(days) * 86_400_000))
            rows = repo.application_summaries(start, end, search, sort, offset, limit)
            sparks = repo.sparklines([r.application for r in rows], start, end)
            return {
                "total": repo.count_applications(search),
                "from": start,
                "to": end,
                "applications": [
                    {
                        "application": r.application,
                        "last_ts": _ms(r.last_ts),
                        "last_value": r.last_value,
                        "anomalies": r.anomalies,
                        "last_anomaly_ts": _ms(r.last_anomaly_ts) if r.last_anomaly_ts else None,
                        "spark": sparks.get(r.application, []),
                    }
                    for r in rows
                ],
            }

        try:
            return JSONResponse(await run_in_threadpool(work))
        except ValueError as err:
            return _bad(str(err))

    return api_applications


def _api_series(repo: ResultsRepository) -> Any:
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    async def api_series(request: Request) -> JSONResponse:
        name = request.query_params.get("application")
        if not name:
            return _bad("application is required")

        def work() -> dict[str, Any] | None:
            rng = _range_args(request.query_params, repo, name)
            if rng is None:
                return None
            span = repo.time_range(name)
            out = series_json(repo.series(name, rng[0], rng[1]))
            out["application"] = name
            out["first"], out["last"] = (_ms(span[0]), _ms(span[1])) if span else (None, None)
            return out

        try:
            out = await run_in_threadpool(work)
        except ValueError as err:
            return _bad(str(err))
        if out is None:
            return _bad("no rows for this application", 404)
        return JSONResponse(out)

    return api_series


def _api_live(settings: Settings) -> Any:
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse

    repo = settings.repo

    async def api_live(request: Request) -> Response:
        """Server-Sent Events: rows of one application newer than ``after`` (epoch ms), polled."""
        name = request.query_params.get("application")
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            return _bad("after must be epoch milliseconds")
        if not name:
            return _bad("application is required")

        async def events() -> Any:
            nonlocal after
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                rows = await run_in_threadpool(repo.rows_after, name, after)
                if rows:
                    after = max(_ms(p.ts) for p in rows)
                    yield f"event: rows\ndata: {json.dumps([prediction_json(p) for p in rows])}\n\n"
                else:
                    yield ": idle\n\n"  # a comment line keeps proxies from closing the stream
                await asyncio.sleep(settings.live_poll_s)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return api_live


def _sandbox_routes(settings: Settings) -> list[Any]:
    """/api/detectors (the sandbox form's choices) and /api/sandbox (a backtest run)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def api_detectors(request: Request) -> JSONResponse:
        files = await run_in_threadpool(list_data_files, settings.sandbox)
        return JSONResponse({"detectors": detector_forms(), "files": files})

    async def api_sandbox(request: Request) -> JSONResponse:
        form = await request.form(max_files=1, max_fields=200, max_part_size=settings.sandbox.max_bytes)
        detector = str(form.get("detector") or "")
        try:
            params = json.loads(str(form.get("params") or "{}"))
            if not isinstance(params, dict):
                raise ValueError
        except ValueError:
            return JSONResponse({"errors": {"params": "params must be a JSON object"}}, status_code=400)
        upload = form.get("file")
        data = None
        if upload is not None and not isinstance(upload, str) and upload.filename:
            data = await upload.read(settings.sandbox.max_bytes + 1)
        path = str(form.get("path") or "")
        if data is None and not path:
            return JSONResponse({"errors": {"path": "choose a file from the data folder or upload one"}})
        async with settings.sandbox_slots:
            out = await run_in_threadpool(run_sandbox, settings.sandbox, detector, params, path or None, data)
        # a refused field is an answer the form shows next to the field, not a failed request
        return JSONResponse(out)

    return [Route("/api/detectors", api_detectors), Route("/api/sandbox", api_sandbox, methods=["POST"])]


PAGES = ("/", "/app", "/sandbox", "/incidents")


def _without_token(scope: dict) -> bytes:
    from urllib.parse import parse_qsl, urlencode

    query = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1")) if k != "token"]
    path = scope.get("root_path", "") + scope["path"]
    return (path + ("?" + urlencode(query) if query else "")).encode("latin-1")


class _Guard:
    """ASGI middleware: the token check (when one is set) and security headers on every response."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token

    def _authorised(self, scope: dict) -> tuple[bool, bool]:
        """(allowed, came in the query string: set the cookie so later requests carry it)."""
        if not self.token:
            return True, False
        from http.cookies import SimpleCookie
        from urllib.parse import parse_qs

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        candidates = []
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            candidates.append(auth[7:].strip())
        cookie = SimpleCookie()
        with contextlib.suppress(Exception):  # a malformed cookie header is no token
            cookie.load(headers.get("cookie", ""))
        if TOKEN_COOKIE in cookie:
            candidates.append(cookie[TOKEN_COOKIE].value)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        ok = any(hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates)
        if not ok and any(hmac.compare_digest(q.encode(), self.token.encode()) for q in query):
            return True, True
        return ok, False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        allowed, set_cookie = self._authorised(scope)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if set_cookie and self.token:
                    headers.append(
                        (b"set-cookie", f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode())
                    )
                message = {**message, "headers": headers}
            await send(message)

        if set_cookie and scope["path"] in PAGES and scope.get("method") == "GET":
            # the token came in the address: keep it in the cookie, out of the address bar and history
            await send_with_headers(
                {"type": "http.response.start", "status": 303, "headers": [(b"location", _without_token(scope))]}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if not allowed:
            body = b"401: this dashboard needs its token (?token=... once, or Authorization: Bearer ...)\n"
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"www-authenticate", b"Bearer")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send_with_headers)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_data_dir() -> Path | None:
    here = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "nab" / "data"
    return here if here.is_dir() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-dashboard",
        description="Live dashboard over the job's result table (read-only), with a backtest sandbox.",
        epilog=f"Binding to a non-loopback address requires the token in ${TOKEN_ENV}.",
    )
    parser.add_argument("--jdbc", required=True, help="jdbc:sqlite:PATH or jdbc:postgresql://host:port/db")
    parser.add_argument("--table", default="predictions", help="result table (default predictions)")
    parser.add_argument("--user", help="database user (PostgreSQL)")
    parser.add_argument("--password-env", help="environment variable holding the database password")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    parser.add_argument(
        "--data-dir", help="CSV folder the sandbox may read (default: ../shared/data/nab/data if present)"
    )
    parser.add_argument(
        "--labels", help="NAB combined_windows.json for the sandbox's NAB score (keys relative to --data-dir)"
    )
    parser.add_argument("--sandbox-timeout", type=float, default=60.0, help="seconds per sandbox run (default 60)")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers for the incidents' feedback buttons")
    parser.add_argument(
        "--feedback-topic", default=FEEDBACK_TOPIC, help=f"the job's feedback topic (default {FEEDBACK_TOPIC})"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        print(
            f"refusing to bind {args.host}: other machines could read the results. Set {TOKEN_ENV} "
            "to a secret and open the dashboard with ?token=<secret>, or bind 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    password = os.environ.get(args.password_env) if args.password_env else None
    try:
        repo = ResultsRepository(args.jdbc, args.table, args.user, password)
        incidents = IncidentsRepository(args.jdbc, args.user, password)
    except ValueError as err:
        print(f"anomaly-dashboard: {err}", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    labels = Path(args.labels) if args.labels else None
    if labels is None and data_dir is not None:
        guess = data_dir.parent / "labels" / "combined_windows.json"
        labels = guess if guess.is_file() else None
    sandbox = SandboxConfig(data_dir, labels, timeout_s=args.sandbox_timeout)
    settings = Settings(repo, sandbox, token, incidents=incidents, bootstrap_servers=args.bootstrap_servers,
                        feedback_topic=args.feedback_topic)
    app = create_app(settings)
    import uvicorn

    where = f"http://{args.host if ':' not in args.host else f'[{args.host}]'}:{args.port}/"
    log.info("results: %r; sandbox data folder: %s", repo, data_dir or "(uploads only)")
    if token:
        log.info("dashboard at %s -- token required on every request (open %s?token=<%s>)", where, where, TOKEN_ENV)
    else:
        log.info("dashboard at %s (loopback only, no token)", where)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2, access_log=False
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
