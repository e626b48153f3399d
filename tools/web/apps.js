/* Applications page: one page of applications at a time, searched and sorted by the server. */
"use strict";
(function () {
  const C = window.AnomalyCharts;
  const PAGE = 50;
  const state = { offset: 0, timer: null };
  const status = document.getElementById("status");

  async function load() {
    const q = new URLSearchParams({
      search: document.getElementById("search").value,
      sort: document.getElementById("sort").value,
      days: document.getElementById("range").value.replace("d", ""),
      offset: String(state.offset), limit: String(PAGE),
    });
    const resp = await fetch("api/applications?" + q.toString());
    const body = await resp.json();
    if (!resp.ok) { status.textContent = body.error || resp.statusText; status.className = "status error"; return; }
    status.textContent = "";
    const tbody = document.querySelector("#apps tbody");
    tbody.replaceChildren();
    for (const a of body.applications) {
      const tr = document.createElement("tr");
      const link = document.createElement("a");
      link.href = "app?" + new URLSearchParams({ name: a.application }).toString();
      link.textContent = a.application;
      link.className = "app-link";
      const cells = [link, C.fmtTs(a.last_ts), C.fmtNum(a.last_value), String(a.anomalies),
        a.last_anomaly_ts ? C.fmtTs(a.last_anomaly_ts) : "never"];
      for (const c of cells) {
        const td = document.createElement("td");
        if (typeof c === "string") td.textContent = c; else td.appendChild(c);
        tr.appendChild(td);
      }
      if (a.anomalies > 0) tr.className = "has-anomalies";
      const spark = document.createElement("td");
      const div = document.createElement("div");
      div.className = "spark";
      spark.appendChild(div);
      tr.appendChild(spark);
      tbody.appendChild(tr);
      if (a.spark.length) {
        Plotly.newPlot(div, [{ x: a.spark.map((p) => p[0]), y: a.spark.map((p) => p[1]), type: "scatter",
          mode: "lines", line: { width: 1, color: "#1f77b4" }, hoverinfo: "skip" }],
        { width: 160, height: 32, margin: { l: 0, r: 0, t: 0, b: 0 }, xaxis: { visible: false },
          yaxis: { visible: false }, showlegend: false }, { staticPlot: true });
      }
    }
    const last = Math.min(state.offset + PAGE, body.total);
    document.getElementById("pageinfo").textContent = body.total === 0 ? "no applications" :
      (state.offset + 1).toLocaleString() + "-" + last.toLocaleString() + " of " + body.total.toLocaleString();
    document.getElementById("prev").disabled = state.offset === 0;
    document.getElementById("next").disabled = last >= body.total;
  }

  function reload() { state.offset = 0; load(); }
  document.getElementById("search").addEventListener("input", () => {
    clearTimeout(state.timer);
    state.timer = setTimeout(reload, 250);
  });
  document.getElementById("filters").addEventListener("submit", (ev) => { ev.preventDefault(); reload(); });
  document.getElementById("sort").addEventListener("change", reload);
  document.getElementById("range").addEventListener("change", reload);
  document.getElementById("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); load(); });
  document.getElementById("next").addEventListener("click", () => { state.offset += PAGE; load(); });
  load().catch((err) => { status.textContent = String(err); status.className = "status error"; });
  setInterval(() => { if (!document.hidden) load(); }, 15000); // the list refreshes itself
})();
