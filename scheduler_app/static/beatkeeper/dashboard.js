// The dashboard refreshes its panel in place every few seconds. The panel is rendered
// by Django's templates (escaped); a failed fetch leaves the last panel and says so.
// Its two charts are drawn by Chart.js (vendor/chart.umd.min.js) from the figures the
// panel carries as JSON (#bk-hour-data, #bk-task-data, written by Django's json_script),
// again after every refresh.
"use strict";
(function () {
  const charts = [];

  function figures(id) {
    const source = document.getElementById(id);
    return source ? JSON.parse(source.textContent) : null;
  }

  function draw(box) {
    if (typeof Chart === "undefined") return;
    charts.splice(0).forEach((chart) => chart.destroy());
    const common = { responsive: true, maintainAspectRatio: false, animation: false };
    const hours = figures("bk-hour-data");
    if (hours) {
      charts.push(new Chart(document.getElementById("bk-chart-hours"), {
        type: "bar",
        data: {
          labels: hours.labels,
          datasets: [
            { label: "success", data: hours.success, backgroundColor: "#3a9b4e" },
            { label: "failure", data: hours.failure, backgroundColor: "#c8382e" },
            { label: "other", data: hours.other, backgroundColor: "#8a94a6" },
          ],
        },
        options: Object.assign({}, common, {
          interaction: { mode: "index", intersect: false },
          scales: {
            x: { stacked: true, ticks: { maxRotation: 0, autoSkip: true } },
            y: { stacked: true, beginAtZero: true, title: { display: true, text: "runs" } },
          },
        }),
      }));
    }
    const tasks = figures("bk-task-data");
    if (tasks) {
      charts.push(new Chart(document.getElementById("bk-chart-tasks"), {
        type: "bar",
        data: { labels: tasks.labels, datasets: [{ label: "median (s)", data: tasks.seconds, backgroundColor: "#447e9b" }] },
        options: Object.assign({}, common, {
          indexAxis: "y",
          plugins: { legend: { display: false } },
          scales: { x: { beginAtZero: true, title: { display: true, text: "seconds" } } },
        }),
      }));
    }
    box.dataset.charts = String(charts.length);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const box = document.getElementById("bk-dashboard");
    if (!box) return;
    draw(box);
    const seconds = Number(box.dataset.refresh) || 10;
    async function refresh() {
      try {
        const response = await fetch(box.dataset.url, { credentials: "same-origin" });
        if (!response.ok) throw new Error("HTTP " + response.status);
        box.innerHTML = await response.text();
        draw(box);
        box.dataset.refreshed = String(Number(box.dataset.refreshed || 0) + 1);
      } catch (error) {
        const note = document.getElementById("bk-updated");
        if (note) note.textContent = "Could not refresh (" + error.message + "); showing the last figures.";
      }
    }
    setInterval(refresh, seconds * 1000);
  });
})();
