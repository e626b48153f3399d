/* Incidents page: open incidents first, then recent ones; filters; precision per application. */
"use strict";
(function () {
  const C = window.AnomalyCharts;
  const status = document.getElementById("status");
  const appSelect = document.getElementById("application");

  function cell(tr, content) {
    const td = document.createElement("td");
    if (typeof content === "string") td.textContent = content; else td.appendChild(content);
    tr.appendChild(td);
  }

  function fillApplications(names) {
    const chosen = appSelect.value;
    const known = Array.from(appSelect.options).map((o) => o.value);
    if (known.length === names.length + 1 && names.every((n, i) => known[i + 1] === n)) return;
    appSelect.replaceChildren();
    for (const name of ["", ...names]) {
      const opt = document.createElement("option");
      opt.value = name;
      opt.textContent = name === "" ? "any" : name;
      appSelect.appendChild(opt);
    }
    appSelect.value = names.includes(chosen) ? chosen : "";
  }

  function incidentRow(i) {
    const tr = document.createElement("tr");
    tr.className = "incident state-" + i.state;
    tr.dataset.incidentId = i.incident_id;
    const link = document.createElement("a");
    link.href = "incidents/" + encodeURIComponent(i.incident_id);
    link.textContent = i.application;
    link.className = "incident-link";
    cell(tr, link);
    for (const text of [i.detector, i.state, i.severity, C.fmtTs(i.opened_at),
      i.resolved_at === null ? "" : C.fmtTs(i.resolved_at), C.fmtNum(i.peak_value), String(i.window_count),
      i.feedback || ""]) cell(tr, text);
    return tr;
  }

  function precisionRow(p) {
    const tr = document.createElement("tr");
    for (const text of [p.application, String(p.incidents), String(p.labelled), String(p.true_positive),
      String(p.false_positive), String(p.expected), String(p.new_normal),
      p.precision === null ? "no labels" : (100 * p.precision).toFixed(0) + " %"]) cell(tr, text);
    return tr;
  }

  async function load() {
    const q = new URLSearchParams({
      state: document.getElementById("state").value, application: appSelect.value,
      severity: document.getElementById("severity").value,
    });
    const resp = await fetch("api/incidents?" + q.toString());
    const body = await resp.json();
    if (!resp.ok) { status.textContent = body.error || resp.statusText; status.className = "status error"; return; }
    status.textContent = "";
    const info = document.getElementById("info");
    if (!body.available) info.textContent = body.message;
    else info.textContent = body.incidents.length ? body.incidents.length + " incidents" : "no incident matches";
    fillApplications(body.applications);
    document.querySelector("#incidents tbody").replaceChildren(...body.incidents.map(incidentRow));
    document.querySelector("#precision tbody").replaceChildren(...body.precision.map(precisionRow));
  }

  function reload() { load().catch((err) => { status.textContent = String(err); status.className = "status error"; }); }
  for (const id of ["state", "application", "severity"]) document.getElementById(id).addEventListener("change", reload);
  document.getElementById("filters").addEventListener("submit", (ev) => { ev.preventDefault(); reload(); });
  reload();
  setInterval(() => { if (!document.hidden) reload(); }, 15000);
})();
