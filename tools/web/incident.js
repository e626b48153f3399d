/* One incident: its fields, its application's chart with the incident drawn on it, its timeline,
 * and the feedback buttons (they produce the feedback record through the dashboard). */
"use strict";
(function () {
  const C = window.AnomalyCharts;
  const status = document.getElementById("status");
  const incidentId = decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop());
  const COLORS = { opened: "#c62828", reopened: "#c62828", updated: "#ef6c00", flapping: "#8e24aa",
    no_data: "#757575", resolved: "#2e7d32", split: "#2e7d32", feedback: "#1565c0" };

  function row(tbody, cells) {
    const tr = document.createElement("tr");
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
    return tr;
  }

  function fields(i) {
    const tbody = document.querySelector("#fields tbody");
    tbody.replaceChildren();
    const list = [["incident", i.incident_id], ["state", i.state], ["severity", i.severity],
      ["detector", i.detector], ["aggregation", C.windowLabel(i.agg_function, i.agg_window_millis)],
      ["opened (UTC)", C.fmtTs(i.opened_at)], ["resolved (UTC)", i.resolved_at === null ? "" : C.fmtTs(i.resolved_at)],
      ["resolution", i.resolution || ""], ["feedback", i.feedback || ""],
      ["peak", C.fmtNum(i.peak_value) + " at " + C.fmtTs(i.peak_ts) + ", p " + i.peak_probability],
      ["band at the peak", "[" + C.fmtNum(i.value_lower_limit) + ", " + C.fmtNum(i.value_upper_limit) + "]"],
      ["windows", String(i.window_count)], ["explanation", i.explanation || ""]];
    for (const [k, v] of list) row(tbody, [k, v]).dataset.field = k;
  }

  function drawChart(body) {
    const container = document.getElementById("charts");
    if (!body.series) { container.textContent = "no results of this application to draw"; return; }
    const handle = C.render(container, body.series, {});
    const i = body.incident;
    const end = i.resolved_at === null ? body.series.to : i.resolved_at;
    const shapes = [{ type: "rect", xref: "x", yref: "paper", x0: i.opened_at, x1: end, y0: 0, y1: 1,
      fillcolor: "rgba(198,40,40,0.08)", line: { width: 0 }, layer: "below" }];
    const annotations = [];
    for (const e of body.events) {
      const color = COLORS[e.transition] || "#333";
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: e.event_ts, x1: e.event_ts, y0: 0, y1: 1,
        line: { color: color, width: 1, dash: "dot" } });
      annotations.push({ x: e.event_ts, y: 1, xref: "x", yref: "paper", text: C.plotlyText(e.transition),
        showarrow: false, textangle: -90, xanchor: "right", yanchor: "top", font: { size: 10, color: color } });
    }
    for (const div of handle.divs) Plotly.relayout(div, { shapes: shapes, annotations: annotations });
  }

  function timeline(events) {
    const tbody = document.querySelector("#events tbody");
    tbody.replaceChildren();
    for (const e of events) {
      row(tbody, [String(e.seq), e.transition, e.state, C.fmtTs(e.event_ts), e.severity, C.fmtNum(e.peak_value),
        String(e.window_count), e.resolution || "", e.feedback || ""]).className = "event transition-" + e.transition;
    }
  }

  async function load() {
    const resp = await fetch("../api/incidents/" + encodeURIComponent(incidentId));
    const body = await resp.json();
    if (!resp.ok) {
      document.getElementById("info").textContent = body.error || resp.statusText;
      return null;
    }
    const i = body.incident;
    document.getElementById("title").textContent = i.application + ": incident " + i.state;
    document.getElementById("info").textContent = "";
    fields(i);
    timeline(body.events);
    if (!body.feedback_enabled) {
      document.getElementById("feedback-result").textContent =
        "feedback is off: the dashboard was started without --bootstrap-servers";
      for (const b of document.querySelectorAll("#feedback button")) b.disabled = true;
    }
    return body;
  }

  async function send(label) {
    const result = document.getElementById("feedback-result");
    result.className = "info";
    result.textContent = "sending " + label + " ...";
    const resp = await fetch("../api/incidents/" + encodeURIComponent(incidentId) + "/feedback", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ label: label, by: document.getElementById("by").value,
        comment: document.getElementById("comment").value }),
    });
    const body = await resp.json();
    if (!resp.ok) { result.className = "error"; result.textContent = body.error || resp.statusText; return; }
    result.textContent = "sent " + body.sent.label + " to " + body.topic + " (partition " + body.partition +
      ", offset " + body.offset + "); the job applies it with its next batch";
  }

  for (const b of document.querySelectorAll("#feedback button")) {
    b.addEventListener("click", () => send(b.dataset.label).catch((err) => {
      const result = document.getElementById("feedback-result");
      result.className = "error";
      result.textContent = String(err);
    }));
  }
  load().then((body) => { if (body) drawChart(body); })
    .catch((err) => { status.textContent = String(err); status.className = "status error"; });
})();
