/* The static report: every application's charts from the JSON embedded in the file. */
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  data.applications.forEach((app, i) => {
    const container = document.getElementById("charts-" + i);
    const handle = window.AnomalyCharts.render(container, app.series, {
      onLegendToggle: (d, visible) => handle.setVisible(d, visible),
    });
  });
  document.body.dataset.rendered = "true";
})();
