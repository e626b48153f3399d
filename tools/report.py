"""A self-contained HTML report: ``python -m tools.report --jdbc URL --out report.html``.

One file that opens from disk with no server and no network: plotly.js (from the
plotly package), the chart code of the dashboard (tools/web/charts.js) and the
data are inlined. At the top, a summary table per application and detector
(points, anomalies, first and last ts); below, the dashboard's charts for each
application (value, a band and anomaly markers per detector; hover, zoom and
legend toggles work offline).

Names are HTML-escaped in the markup; the data sit in a JSON script block with
every ``<`` escaped, so no application name can end the block or open a tag.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tools.dashboard import default_range, plotly_js, series_json
from tools.repository import RepositoryError, ResultsRepository, to_utc

WEB = Path(__file__).resolve().parent / "web"
MAX_APPLICATIONS = 200  # one file; pick applications with --application beyond this


def _ms(ts: datetime) -> int:
    return round(ts.timestamp() * 1000)


def _fmt(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def collect(
    repo: ResultsRepository,
    applications: list[str] | None = None,
    from_ts: str | None = None,
    to_ts: str | None = None,
) -> list[dict[str, Any]]:
    """Per application: the summary rows and the charts' data for the range (default: its last 7 days)."""
    names = applications or repo.get_applications()
    out = []
    for name in names:
        rng = default_range(repo, name)
        if rng is None:
            continue
        start = _ms(to_utc(from_ts)) if from_ts else rng[0]
        end = _ms(to_utc(to_ts)) if to_ts else rng[1]
        out.append(
            {
                "application": name,
                "summary": repo.detector_summary(name, start, end),
                "series": series_json(repo.series(name, start, end)),
            }
        )
    return out


def _json_for_script(value: Any) -> str:
    # "<" escaped: the text can never close the <script> block nor open a comment
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c")


def render(apps: list[dict[str, Any]], title: str, source: str) -> str:
    rows = []
    for i, app in enumerate(apps):
        for detector, points, anomalies, first, last in app["summary"]:
            rows.append(
                "<tr>"
                + f'<td><a href="#app-{i}">{html.escape(app["application"])}</a></td>'
                + f"<td>{html.escape(detector)}</td><td>{points:,}</td>"
                + f'<td class="{"has" if anomalies else ""}">{anomalies:,}</td>'
                + f"<td>{_fmt(first)}</td><td>{_fmt(last)}</td></tr>"
            )
    sections = "\n".join(
        f'<section id="app-{i}"><h2>{html.escape(app["application"])}</h2>'
        f'<p class="info">{app["series"]["rows"]:,} rows from {_fmt(_dt(app["series"]["from"]))} to '
        f"{_fmt(_dt(app['series']['to']))} UTC"
        + (" (drawn as min/max per bucket; every anomaly kept)" if app["series"]["bucket_ms"] else "")
        + f'</p><div id="charts-{i}"></div></section>'
        for i, app in enumerate(apps)
    )
    data = {"applications": [{"application": a["application"], "series": a["series"]} for a in apps]}
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    style = (WEB / "style.css").read_text()
    scripts = "".join(
        f"<script>{text}</script>\n"
        for text in (
            plotly_js().decode("utf-8"),
            (WEB / "charts.js").read_text(),
        )
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{style}
.has {{ color: #c62828; font-weight: 600; }}</style></head>
<body><main>
<h1>{html.escape(title)}</h1>
<p class="info">{html.escape(source)}; generated {generated}; {len(apps)} application(s).</p>
<table class="grid summary"><thead><tr><th>application</th><th>detector</th><th>points</th><th>anomalies</th>
<th>first ts (UTC)</th><th>last ts (UTC)</th></tr></thead><tbody>
{"".join(rows)}
</tbody></table>
{sections}
</main>
<script type="application/json" id="report-data">{_json_for_script(data)}</script>
{scripts}<script>{(WEB / "report.js").read_text()}</script>
</body></html>
"""


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def write_report(
    repo: ResultsRepository,
    out: Path,
    applications: list[str] | None = None,
    from_ts: str | None = None,
    to_ts: str | None = None,
    title: str = "Anomaly report",
) -> int:
    """Write the report; returns how many applications it holds."""
    apps = collect(repo, applications, from_ts, to_ts)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(render(apps, title, f"table {repo.table} at {repo.url.split('?', 1)[0]}"), encoding="utf-8")
    tmp.replace(out)
    return len(apps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anomaly-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jdbc", required=True, help="jdbc:sqlite:PATH or jdbc:postgresql://host:port/db")
    parser.add_argument("--table", default="predictions")
    parser.add_argument("--user", help="database user (PostgreSQL)")
    parser.add_argument("--out", required=True, help="the HTML file to write")
    parser.add_argument("--from", dest="from_ts", help="start (ISO-8601; default: 7 days before the last point)")
    parser.add_argument("--to", dest="to_ts", help="end, exclusive (ISO-8601; default: after the last point)")
    parser.add_argument("--application", action="append", help="an application to include (repeatable; default all)")
    parser.add_argument("--title", default="Anomaly report")
    args = parser.parse_args(argv)
    try:
        repo = ResultsRepository(args.jdbc, args.table, args.user)
        if not args.application and repo.count_applications() > MAX_APPLICATIONS:
            print(
                f"anomaly-report: more than {MAX_APPLICATIONS} applications; choose some with --application",
                file=sys.stderr,
            )
            return 2
        n = write_report(repo, Path(args.out), args.application, args.from_ts, args.to_ts, args.title)
    except (ValueError, RepositoryError) as err:
        print(f"anomaly-report: {err}", file=sys.stderr)
        return 2
    print(f"report: {Path(args.out).resolve()} ({n} application(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
