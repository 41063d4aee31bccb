/* The trends page's charts: Chart.js (vendor/chart.umd.min.js) over the figures the page
   carries as JSON (#bk-trends-data, written by Django's json_script). */
"use strict";
(function () {
  function label(iso, hours) {
    const d = new Date(iso);
    const hh = String(d.getUTCHours()).padStart(2, "0") + ":00";
    if (hours < 6) return hh;
    return d.toLocaleDateString("en-GB", { weekday: "short", day: "numeric", timeZone: "UTC" }) + " " + hh;
  }

  function axis(title, extra) {
    return Object.assign({ title: { display: true, text: title }, beginAtZero: true }, extra || {});
  }

  function draw() {
    const source = document.getElementById("bk-trends-data");
    if (!source || typeof Chart === "undefined") return;
    const data = JSON.parse(source.textContent);
    const labels = data.labels.map((iso) => label(iso, data.step_hours));
    const x = axis(data.step_hours < 6 ? "hour (UTC)" : "6 hours from (UTC)", { ticks: { maxRotation: 0, autoSkip: true } });
    const common = { responsive: true, maintainAspectRatio: false, animation: false, interaction: { mode: "index", intersect: false } };
    new Chart(document.getElementById("bk-chart-throughput"), {
      type: "bar",
      data: {
        labels: labels,
        datasets: [
          { label: "runs / hour", data: data.per_hour, backgroundColor: "#2f6fb5", yAxisID: "y" },
          { type: "line", label: "error rate (%)", data: data.error_rate, borderColor: "#c8382e",
            backgroundColor: "#c8382e", yAxisID: "errors", spanGaps: true, pointRadius: 2 },
        ],
      },
      options: Object.assign({}, common, {
        scales: { x: x, y: axis("runs per hour"), errors: axis("error rate (%)", { position: "right", max: 100, grid: { drawOnChartArea: false } }) },
      }),
    });
    new Chart(document.getElementById("bk-chart-duration"), {
      type: "line",
      data: {
        labels: labels,
        datasets: [
          { label: "p50 (s)", data: data.p50, borderColor: "#3a9b4e", backgroundColor: "#3a9b4e", spanGaps: true, pointRadius: 2 },
          { label: "p95 (s)", data: data.p95, borderColor: "#b35c00", backgroundColor: "#b35c00", spanGaps: true, pointRadius: 2 },
        ],
      },
      options: Object.assign({}, common, { scales: { x: x, y: axis("duration (seconds)") } }),
    });
    document.getElementById("bk-trends").dataset.drawn = "1";
  }

  document.addEventListener("DOMContentLoaded", draw);
})();
