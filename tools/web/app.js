/* Application page: charts of one application, detector toggles, date range, live rows. */
"use strict";
(function () {
  const C = window.AnomalyCharts;
  const params = new URLSearchParams(location.search);
  const name = params.get("name") || "";
  const status = document.getElementById("status");
  const state = { from: params.get("from"), to: params.get("to"), handle: null, data: null, source: null, hidden: new Set() };
  document.getElementById("title").textContent = name;
  document.title = name + " - anomalies";

  function toLocalInput(ms) { return new Date(ms).toISOString().slice(0, 19); } // inputs are UTC
  function fromLocalInput(text) { return text ? Date.parse(text + "Z") : null; }

  function setStatus(text, error) {
    status.textContent = text;
    status.className = error ? "status error" : "status";
  }

  async function load() {
    const started = performance.now();
    const q = new URLSearchParams({ application: name });
    if (state.from) q.set("from", state.from);
    if (state.to) q.set("to", state.to);
    setStatus("loading...");
    const resp = await fetch("api/series?" + q.toString());
    const body = await resp.json();
    if (!resp.ok) { setStatus(body.error || resp.statusText, true); return; }
    state.data = body;
    document.getElementById("from").value = toLocalInput(body.from);
    document.getElementById("to").value = toLocalInput(body.to);
    const info = body.rows.toLocaleString() + " rows in range" +
      (body.bucket_ms ? ", drawn as min/max per " + (body.bucket_ms / 1000).toLocaleString() + " s (every anomaly kept)" : "");
    document.getElementById("info").textContent = info;
    state.handle = C.render(document.getElementById("charts"), body, {
      hidden: Array.from(state.hidden),
      onZoom: (a, b) => {
        if (a === null) { state.from = null; state.to = null; } else {
          state.from = String(Date.parse(String(a).replace(" ", "T") + "Z"));
          state.to = String(Date.parse(String(b).replace(" ", "T") + "Z"));
        }
        load();
      },
      onLegendToggle: (d, wasHidden) => toggle(d, wasHidden),
    });
    drawToggles();
    C.fillTable(document.querySelector("#anomalies tbody"), C.anomalyRows(body), C.anomalyCells, 500);
    setStatus("");
    document.body.dataset.loadMs = String(Math.round(performance.now() - started)); // fetch + draw (bench)
    live();
  }

  function toggle(d, visible) {
    if (visible) state.hidden.delete(d); else state.hidden.add(d);
    state.handle.setVisible(d, visible);
    const box = document.querySelector('#detectors input[data-detector="' + CSS.escape(d) + '"]');
    if (box) box.checked = visible;
  }

  function drawToggles() {
    const bar = document.getElementById("detectors");
    bar.replaceChildren();
    const label = document.createElement("span");
    label.textContent = "Detectors:";
    bar.appendChild(label);
    for (const d of state.handle.detectors) {
      const l = document.createElement("label");
      l.className = "toggle";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = !state.hidden.has(d);
      box.dataset.detector = d;
      box.addEventListener("change", () => toggle(d, box.checked));
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = C.colorOf(state.handle.detectors, d);
      const text = document.createElement("span");
      text.textContent = d;
      l.append(box, swatch, text);
      bar.appendChild(l);
    }
  }

  function live() {
    if (state.source) { state.source.close(); state.source = null; }
    const on = document.getElementById("live").checked;
    // live rows extend the range only when it ends at the latest data
    if (!on || !state.data || (state.data.last !== null && state.data.to <= state.data.last)) return;
    const q = new URLSearchParams({ application: name, after: String(state.data.last === null ? 0 : state.data.last) });
    const source = new EventSource("api/live?" + q.toString());
    source.addEventListener("rows", (ev) => {
      const rows = JSON.parse(ev.data);
      for (const r of rows) state.data.last = Math.max(state.data.last || 0, r.ts);
      if (!state.handle.addRows(rows)) { load(); return; }
      drawToggles();
      C.fillTable(document.querySelector("#anomalies tbody"), C.anomalyRows(state.data), C.anomalyCells, 500);
      setStatus("live: " + rows.length + " new row(s) at " + new Date().toISOString().slice(11, 19) + " UTC");
    });
    source.onerror = () => setStatus("live channel interrupted; retrying", true);
    state.source = source;
  }

  document.getElementById("range").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const a = fromLocalInput(document.getElementById("from").value);
    const b = fromLocalInput(document.getElementById("to").value);
    if (a === null || b === null || b <= a) { setStatus("choose a start before the end", true); return; }
    state.from = String(a); state.to = String(b);
    load();
  });
  for (const button of document.querySelectorAll("#range button[data-range]")) {
    button.addEventListener("click", () => {
      const last = state.data ? state.data.last + 1 : null;
      if (button.dataset.range === "all" && state.data) { state.from = String(state.data.first); state.to = String(last); }
      else if (last !== null) { state.from = String(last - Number(button.dataset.range)); state.to = String(last); }
      load();
    });
  }
  document.getElementById("live").addEventListener("change", live);
  load().catch((err) => setStatus(String(err), true));
})();
