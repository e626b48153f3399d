/* Charts shared by the dashboard's application page and the static report.
 *
 * One Plotly chart per (agg_function, agg_window_millis). Per detector: a band
 * (lower and upper bound, filled) and anomaly markers, in that detector's colour;
 * one value line. Every string that reaches Plotly goes through plotlyText():
 * Plotly reads a few HTML-like tags in labels, so names are entity-escaped there
 * and show as the characters they are. Everything else is set with textContent.
 */
"use strict";
(function (global) {
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

  function plotlyText(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function fmtTs(ms) {
    return new Date(ms).toISOString().replace("T", " ").replace(".000Z", "").replace("Z", "");
  }

  function fmtNum(x) {
    if (x === null || x === undefined) return "";
    const a = Math.abs(x);
    return a !== 0 && (a >= 1e6 || a < 1e-3) ? x.toExponential(4) : String(Math.round(x * 1e4) / 1e4);
  }

  function windowLabel(fn, ms) {
    if (fn === "none") return "none (every point)";
    const units = [[86400000, "d"], [3600000, "h"], [60000, "min"], [1000, "s"]];
    for (const [size, unit] of units) if (ms % size === 0) return fn + " over " + ms / size + " " + unit;
    return fn + " over " + ms + " ms";
  }

  function detectorsOf(data) {
    const names = new Set();
    for (const c of data.charts) {
      Object.keys(c.lines).forEach((d) => names.add(d));
      Object.keys(c.anomalies).forEach((d) => names.add(d));
    }
    return Array.from(names).sort();
  }

  function colorOf(detectors, d) {
    const i = detectors.indexOf(d);
    return PALETTE[(i < 0 ? detectors.length : i) % PALETTE.length];
  }

  function fade(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + alpha + ")";
  }

  function traces(chart, detectors, hidden) {
    const out = [];
    const dets = Object.keys(chart.lines).sort();
    for (const d of dets) {
      const l = chart.lines[d];
      const color = colorOf(detectors, d);
      const visible = hidden.has(d) ? false : true;
      out.push({
        x: l.ts, y: l.lower, type: "scatter", mode: "lines", line: { width: 0, color: color },
        hoverinfo: "skip", showlegend: false, legendgroup: d, visible: visible, connectgaps: false,
        meta: { detector: d, role: "lower" }, name: plotlyText(d) + " lower",
      });
      out.push({
        x: l.ts, y: l.upper, type: "scatter", mode: "lines", fill: "tonexty", fillcolor: fade(color, 0.18),
        line: { width: 0.5, color: fade(color, 0.5) }, legendgroup: d, visible: visible, connectgaps: false,
        customdata: l.ts.map((_, i) => [l.lower[i], l.prob[i]]),
        hovertemplate: plotlyText(d) + ": [%{customdata[0]:.4g}, %{y:.4g}], p %{customdata[1]:.4f}<extra></extra>",
        meta: { detector: d, role: "band" }, name: plotlyText(d) + " bounds",
      });
    }
    const first = dets[0];
    if (first !== undefined) {
      const l = chart.lines[first];
      out.push({
        x: l.ts, y: l.value, type: "scatter", mode: "lines", line: { width: 1.2, color: "#333" },
        name: "value", hovertemplate: "value %{y:.6g}<extra></extra>", meta: { detector: null, role: "value" },
      });
    }
    for (const d of Object.keys(chart.anomalies).sort()) {
      const a = chart.anomalies[d];
      out.push({
        x: a.ts, y: a.value, type: "scatter", mode: "markers", legendgroup: d,
        visible: hidden.has(d) ? false : true,
        marker: { size: 9, color: colorOf(detectors, d), symbol: "circle-open", line: { width: 2 } },
        customdata: a.ts.map((_, i) => [a.lower[i], a.upper[i], a.prob[i]]),
        hovertemplate: "<b>" + plotlyText(d) + " anomaly</b> %{y:.6g} [%{customdata[0]:.4g}, %{customdata[1]:.4g}]," +
          " p %{customdata[2]:.6f}<extra></extra>",
        meta: { detector: d, role: "anomaly" }, name: plotlyText(d) + " anomalies",
      });
    }
    return out;
  }

  function layout(chart, data) {
    return {
      title: { text: plotlyText(windowLabel(chart.agg_function, chart.agg_window_millis)), font: { size: 14 } },
      height: 330, margin: { l: 60, r: 20, t: 36, b: 40 }, hovermode: "x unified",
      xaxis: { type: "date", range: data.from !== undefined ? [data.from, data.to] : undefined },
      yaxis: { automargin: true }, legend: { orientation: "h", y: -0.18 }, uirevision: "keep",
    };
  }

  /* Draw every chart of `data` into `container`; returns a handle for toggles and live rows. */
  function render(container, data, opts) {
    opts = opts || {};
    const hidden = new Set(opts.hidden || []);
    const detectors = detectorsOf(data);
    const config = { responsive: true, displaylogo: false, scrollZoom: false, staticPlot: !!opts.staticPlot };
    const divs = [];
    container.replaceChildren();
    data.charts.forEach((chart) => {
      const div = document.createElement("div");
      div.className = "chart";
      div.dataset.aggFunction = chart.agg_function;
      div.dataset.aggWindowMillis = String(chart.agg_window_millis);
      container.appendChild(div);
      Plotly.newPlot(div, traces(chart, detectors, hidden), layout(chart, data), config);
      if (opts.onZoom) {
        div.on("plotly_relayout", (ev) => {
          if (ev["xaxis.range[0]"] !== undefined) opts.onZoom(ev["xaxis.range[0]"], ev["xaxis.range[1]"]);
          else if (ev["xaxis.autorange"]) opts.onZoom(null, null);
        });
      }
      div.on("plotly_legendclick", (ev) => {
        const d = ev.data[ev.curveNumber].meta && ev.data[ev.curveNumber].meta.detector;
        if (d && opts.onLegendToggle) {
          opts.onLegendToggle(d, hidden.has(d));
          return false;
        }
        return true;
      });
      divs.push({ div: div, chart: chart });
    });

    function redraw() {
      for (const { div, chart } of divs) Plotly.react(div, traces(chart, detectors, hidden), layout(chart, data), config);
    }

    return {
      detectors: detectors,
      divs: divs.map((x) => x.div),
      setVisible(d, visible) {
        if (visible) hidden.delete(d); else hidden.add(d);
        for (const { div } of divs) {
          const idx = [];
          div.data.forEach((t, i) => { if (t.meta && t.meta.detector === d) idx.push(i); });
          if (idx.length) Plotly.restyle(div, { visible: visible }, idx);
        }
      },
      /* Append live rows (the /api/live shape); false when a row needs a chart that is not drawn. */
      addRows(rows) {
        let known = true;
        for (const r of rows) {
          const entry = divs.find((x) => x.chart.agg_function === r.agg_function &&
            x.chart.agg_window_millis === r.agg_window_millis);
          if (!entry) { known = false; continue; }
          const add = (into) => {
            const c = into[r.detector] || (into[r.detector] = { ts: [], value: [], lower: [], upper: [], prob: [] });
            c.ts.push(r.ts); c.value.push(r.value); c.lower.push(r.lower); c.upper.push(r.upper); c.prob.push(r.prob);
          };
          add(entry.chart.lines);
          if (r.is_anomaly) add(entry.chart.anomalies);
          if (!detectors.includes(r.detector)) detectors.push(r.detector);
          if (data.to !== undefined && r.ts >= data.to) data.to = r.ts + 1;
        }
        redraw();
        return known;
      },
    };
  }

  /* Anomalies of `data`, newest first, as plain rows for a table. */
  function anomalyRows(data) {
    const out = [];
    for (const c of data.charts) {
      for (const d of Object.keys(c.anomalies)) {
        const a = c.anomalies[d];
        for (let i = 0; i < a.ts.length; i++) {
          out.push({ ts: a.ts[i], chart: windowLabel(c.agg_function, c.agg_window_millis), detector: d,
            value: a.value[i], lower: a.lower[i], upper: a.upper[i], prob: a.prob[i] });
        }
      }
    }
    return out.sort((x, y) => y.ts - x.ts);
  }

  function fillTable(tbody, rows, cells, limit) {
    tbody.replaceChildren();
    for (const r of rows.slice(0, limit || rows.length)) {
      const tr = document.createElement("tr");
      for (const text of cells(r)) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
  }

  function anomalyCells(r) {
    return [fmtTs(r.ts), r.chart, r.detector, fmtNum(r.value), fmtNum(r.lower), fmtNum(r.upper),
      r.prob === null ? "" : r.prob.toFixed(6)];
  }

  global.AnomalyCharts = { render, anomalyRows, fillTable, anomalyCells, fmtTs, fmtNum, windowLabel,
    detectorsOf, colorOf, plotlyText };
})(window);
