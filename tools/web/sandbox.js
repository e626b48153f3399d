/* Sandbox: the form is generated from each detector's ParamSchema (/api/detectors). */
"use strict";
(function () {
  const C = window.AnomalyCharts;
  const form = document.getElementById("sandbox");
  const select = document.getElementById("detector");
  const paramsDiv = document.getElementById("params");
  let detectors = [];

  function range(p) {
    const parts = [];
    if (p.minimum !== null) parts.push((p.exclusive_minimum ? "> " : ">= ") + p.minimum);
    if (p.maximum !== null) parts.push((p.exclusive_maximum ? "< " : "<= ") + p.maximum);
    if (p.nullable) parts.push("empty or null: none");
    return parts.join(", ");
  }

  function drawParams() {
    const det = detectors.find((d) => d.name === select.value);
    paramsDiv.replaceChildren();
    document.getElementById("summary").textContent = det ? det.summary : "";
    if (!det) return;
    for (const p of det.params) {
      const row = document.createElement("div");
      row.className = "param";
      const label = document.createElement("label");
      label.textContent = p.name + " (" + p.type + ")";
      let input;
      if (p.choices) {
        input = document.createElement("select");
        for (const c of p.choices) {
          const o = document.createElement("option");
          o.value = String(c); o.textContent = String(c);
          o.selected = c === p.default;
          input.appendChild(o);
        }
      } else if (p.type === "bool") {
        input = document.createElement("select");
        for (const c of ["true", "false"]) {
          const o = document.createElement("option");
          o.value = c; o.textContent = c; o.selected = String(p.default) === c;
          input.appendChild(o);
        }
      } else {
        input = document.createElement("input");
        input.type = "text"; // the server validates; a number input would hide what was typed
        input.value = p.default === null ? "" : String(p.default);
        input.inputMode = p.type === "str" ? "text" : "decimal";
      }
      input.name = p.name;
      input.dataset.param = p.name;
      label.htmlFor = input.id = "param-" + p.name;
      const help = document.createElement("div");
      help.className = "help";
      const err = document.createElement("div");
      err.className = "error";
      err.dataset.errorFor = p.name;
      help.textContent = p.description + (range(p) ? " (" + range(p) + ")" : "") + "; default " + JSON.stringify(p.default);
      help.appendChild(err);
      row.append(label, input, help);
      paramsDiv.appendChild(row);
    }
  }

  function showErrors(errors) {
    for (const el of document.querySelectorAll("[data-error-for]")) el.textContent = "";
    for (const [field, message] of Object.entries(errors || {})) {
      let el = document.querySelector('[data-error-for="' + CSS.escape(field) + '"]');
      if (!el) el = document.querySelector('[data-error-for="run"]');
      el.textContent = (el.textContent ? el.textContent + "; " : "") + (el.dataset.errorFor === field ? "" : field + ": ") + message;
    }
  }

  function plot(r) {
    const det = r.detector;
    const anomalies = r.ts.map((t, i) => i).filter((i) => r.is_anomaly[i]);
    const traces = [
      { x: r.ts, y: r.lower, mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false },
      { x: r.ts, y: r.upper, mode: "lines", fill: "tonexty", fillcolor: "rgba(31,119,180,0.18)", line: { width: 0 },
        name: C.plotlyText(det) + " bounds", hoverinfo: "skip" },
      { x: r.ts, y: r.value, mode: "lines", line: { width: 1, color: "#333" }, name: "value" },
      { x: anomalies.map((i) => r.ts[i]), y: anomalies.map((i) => r.value[i]), mode: "markers",
        marker: { size: 9, color: "#d62728", symbol: "circle-open", line: { width: 2 } },
        name: C.plotlyText(det) + " anomalies" },
    ];
    const shapes = (r.windows || []).map(([a, b]) => ({ type: "rect", xref: "x", yref: "paper", x0: a, x1: b, y0: 0, y1: 1,
      fillcolor: "rgba(255,193,7,0.25)", line: { width: 0 }, layer: "below" }));
    Plotly.newPlot(document.getElementById("result"), traces, {
      height: 420, margin: { l: 60, r: 20, t: 30, b: 40 }, xaxis: { type: "date" }, shapes: shapes,
      hovermode: "x unified", legend: { orientation: "h" },
      title: { text: r.windows && r.windows.length ? "shaded: NAB anomaly windows" : "", font: { size: 13 } },
    }, { responsive: true, displaylogo: false });
    const score = document.getElementById("score");
    const n = r.is_anomaly.filter(Boolean).length;
    let text = r.ts.length.toLocaleString() + " points, " + n.toLocaleString() + " flagged by " + det + ".";
    if (r.score) {
      const s = r.score.standard;
      text += " NAB score (standard profile, threshold optimised on this series): " + s.score.toFixed(2) +
        " (TP " + s.tp + ", FP " + s.fp + ", FN " + s.fn + ")";
    } else {
      text += " No labels for this series: no NAB score.";
    }
    score.textContent = text;
    score.dataset.score = r.score ? String(r.score.standard.score) : "";
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData();
    data.set("detector", select.value);
    const params = {};
    for (const input of paramsDiv.querySelectorAll("[data-param]")) params[input.dataset.param] = input.value;
    data.set("params", JSON.stringify(params));
    data.set("path", document.getElementById("path").value);
    const file = document.getElementById("file").files[0];
    if (file) data.set("file", file);
    document.getElementById("run").disabled = true;
    document.getElementById("score").textContent = "running...";
    try {
      const resp = await fetch("api/sandbox", { method: "POST", body: data });
      const body = await resp.json();
      showErrors(body.errors);
      if (body.errors) document.getElementById("score").textContent = "";
      else plot(body);
    } catch (err) {
      showErrors({ run: String(err) });
    } finally {
      document.getElementById("run").disabled = false;
    }
  });

  fetch("api/detectors").then((r) => r.json()).then((body) => {
    detectors = body.detectors;
    for (const d of detectors) {
      const o = document.createElement("option");
      o.value = d.name; o.textContent = d.name;
      select.appendChild(o);
    }
    const paths = document.getElementById("path");
    for (const f of body.files) {
      const o = document.createElement("option");
      o.value = f; o.textContent = f;
      paths.appendChild(o);
    }
    select.addEventListener("change", drawParams);
    drawParams();
  });
})();
