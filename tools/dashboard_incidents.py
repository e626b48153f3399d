"""The dashboard's incident pages (mounted by :mod:`tools.dashboard`).

* ``/incidents``        open incidents first, then recent ones; filter by state, application,
                        severity; precision per application from the operators' labels
* ``/incidents/<id>``   one incident: its fields, its timeline (every transition), the
                        application's chart around it with the incident's span and transitions
                        drawn on it, and feedback buttons
* ``/api/incidents``, ``/api/incidents/<id>``: the JSON behind them;
  ``POST /api/incidents/<id>/feedback`` (JSON ``{"label", "by", "comment"}``) produces the feedback
  record on the job's feedback topic (``--bootstrap-servers``, ``--feedback-topic``), exactly what
  ``python -m tools.feedback`` sends. The job acts on it; the page shows the incident's new state
  once the job has written it.

The tables are read through :class:`tools.incidents_repository.IncidentsRepository`; a database
without them shows an empty page that says so. The feedback call accepts only a JSON body, which a
page of another site cannot send without the browser asking first (and the token cookie is
SameSite=Strict).
"""

from __future__ import annotations

import re
from typing import Any

from jobs.config import ConfigError
from tools.feedback import feedback_record, send_feedback
from tools.incidents_repository import SEVERITIES, STATES
from tools.repository import RepositoryError

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
CONTEXT_MS = 6 * 3_600_000  # chart range around an incident, each side

INCIDENTS_BODY = """<h1>Incidents</h1>
<form id="filters" class="toolbar" autocomplete="off">
 <label>State <select id="state"><option value="">any</option>""" + "".join(
    f'<option value="{s}">{s}</option>' for s in STATES
) + """</select></label>
 <label>Application <select id="application"><option value="">any</option></select></label>
 <label>Severity <select id="severity"><option value="">any</option>""" + "".join(
    f'<option value="{s}">{s}</option>' for s in SEVERITIES
) + """</select></label>
</form>
<p id="info" class="info"></p>
<table id="incidents" class="grid"><thead><tr><th>application</th><th>detector</th><th>state</th>
<th>severity</th><th>opened (UTC)</th><th>resolved (UTC)</th><th>peak value</th><th>windows</th>
<th>feedback</th></tr></thead><tbody></tbody></table>
<h2>Precision per application (from the labels given)</h2>
<table id="precision" class="grid"><thead><tr><th>application</th><th>incidents</th><th>labelled</th>
<th>true_positive</th><th>false_positive</th><th>expected</th><th>new_normal</th><th>precision</th></tr></thead>
<tbody></tbody></table>"""

INCIDENT_BODY = """<h1 id="title"></h1>
<p id="info" class="info"></p>
<table id="fields" class="grid summary"><tbody></tbody></table>
<h2>Feedback</h2>
<form id="feedback" class="toolbar" autocomplete="off">
 <button type="button" data-label="true_positive">true positive</button>
 <button type="button" data-label="false_positive">false positive</button>
 <button type="button" data-label="expected">expected</button>
 <button type="button" data-label="new_normal">new normal</button>
 <label>by <input id="by" maxlength="200"></label>
 <label>comment <input id="comment" maxlength="2000" size="40"></label>
 <span id="feedback-result" class="info"></span>
</form>
<div id="charts"></div>
<h2>Timeline</h2>
<table id="events" class="grid"><thead><tr><th>seq</th><th>transition</th><th>state</th><th>event time (UTC)</th>
<th>severity</th><th>peak value</th><th>windows</th><th>resolution</th><th>feedback</th></tr></thead>
<tbody></tbody></table>"""


def incident_routes(settings: Any, page: Any, series_json: Any) -> list[Any]:
    """The routes above; ``page`` and ``series_json`` are the dashboard's page shell and chart JSON."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    incidents = settings.incidents

    def bad(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def list_page(request: Request) -> HTMLResponse:
        return HTMLResponse(page("Incidents", "incidents.js", INCIDENTS_BODY))

    async def incident_page(request: Request) -> HTMLResponse:
        return HTMLResponse(page("Incident", "incident.js", INCIDENT_BODY, root="../"))

    async def api_list(request: Request) -> JSONResponse:
        q = request.query_params

        def work() -> dict[str, Any]:
            if incidents is None or not incidents.available():
                return {"available": False, "incidents": [], "applications": [], "precision": [],
                        "message": "no incident tables in this database yet: the job writes them once "
                                   "incidents are on and a batch has run"}
            rows = incidents.incidents(q.get("state") or None, q.get("application") or None,
                                       q.get("severity") or None)
            return {"available": True, "incidents": rows, "applications": incidents.applications(),
                    "precision": incidents.precision()}

        try:
            return JSONResponse(await run_in_threadpool(work))
        except ValueError as err:
            return bad(str(err))

    async def api_incident(request: Request) -> JSONResponse:
        incident_id = request.path_params["incident_id"]
        if not _ID_RE.match(incident_id):
            return bad("incident id must be 32 lowercase hex characters")
        out = await run_in_threadpool(_incident_json, settings, incident_id, series_json)
        return JSONResponse(out) if out is not None else bad("no such incident", 404)

    async def api_feedback(request: Request) -> JSONResponse:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return bad("send the feedback as application/json", 415)
        try:
            body = await request.json()
        except ValueError:
            return bad("the body is not JSON")
        status, out = await run_in_threadpool(_feedback, settings, request.path_params["incident_id"], body)
        return JSONResponse(out, status_code=status)

    return [
        Route("/incidents", list_page),
        Route("/incidents/{incident_id}", incident_page),
        Route("/api/incidents", api_list),
        Route("/api/incidents/{incident_id}", api_incident),
        Route("/api/incidents/{incident_id}/feedback", api_feedback, methods=["POST"]),
    ]


def _feedback(settings: Any, incident_id: str, body: Any) -> tuple[int, dict[str, Any]]:
    """Check the request and produce the feedback record: (HTTP status, JSON answer)."""
    if not settings.bootstrap_servers:
        return 503, {"error": "this dashboard was started without --bootstrap-servers: it cannot send feedback"}
    if not isinstance(body, dict):
        return 400, {"error": "the body must be a JSON object"}
    incidents = settings.incidents
    known = incidents is not None and _ID_RE.match(incident_id) and incidents.available()
    row = incidents.incident(incident_id) if known else None
    if row is None:
        return 404, {"error": "no such incident"}
    try:
        record = feedback_record(row["application"], incident_id, str(body.get("label")), body.get("by") or None,
                                 body.get("comment") or None)
    except ConfigError as err:
        return 400, {"error": str(err)}
    try:
        meta = send_feedback(settings.bootstrap_servers, settings.feedback_topic, record, 15.0)
    except Exception as err:  # the broker unreachable: the operator should know it was not sent
        return 502, {"error": f"could not send the feedback to {settings.feedback_topic!r}: {err}"}
    return 200, {"sent": record, "topic": settings.feedback_topic, "partition": meta.partition, "offset": meta.offset}


def _incident_json(settings: Any, incident_id: str, series_json: Any) -> dict[str, Any] | None:
    """The incident, its events and its application's chart (its own aggregation and detector) around it."""
    incidents = settings.incidents
    if incidents is None or not incidents.available():
        return None
    row = incidents.incident(incident_id)
    if row is None:
        return None
    events = incidents.events(incident_id)
    last = max([row["opened_at"], *(e["event_ts"] for e in events if e.get("event_ts") is not None)])
    end = row["resolved_at"] if row.get("resolved_at") is not None else last
    start, stop = row["opened_at"] - CONTEXT_MS, end + CONTEXT_MS
    chart = None
    try:
        view = series_json(settings.repo.series(row["application"], start, stop))
        key = (row["agg_function"], row["agg_window_millis"])
        for c in view["charts"]:
            if (c["agg_function"], c["agg_window_millis"]) == key:
                detector = row["detector"]
                c["lines"] = {d: v for d, v in c["lines"].items() if d == detector}
                c["anomalies"] = {d: v for d, v in c["anomalies"].items() if d == detector}
                chart = {**view, "charts": [c]}
    except (RepositoryError, ValueError):  # no results table here: the page works without the chart
        chart = None
    return {"incident": row, "events": events, "series": chart,
            "feedback_enabled": bool(settings.bootstrap_servers)}
