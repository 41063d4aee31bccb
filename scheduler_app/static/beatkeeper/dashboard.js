// The dashboard refreshes its panel in place every few seconds. The panel is rendered
// by Django's templates (escaped); a failed fetch leaves the last panel and says so.
"use strict";
(function () {
  document.addEventListener("DOMContentLoaded", function () {
    const box = document.getElementById("bk-dashboard");
    if (!box) return;
    const seconds = Number(box.dataset.refresh) || 10;
    async function refresh() {
      try {
        const response = await fetch(box.dataset.url, { credentials: "same-origin" });
        if (!response.ok) throw new Error("HTTP " + response.status);
        box.innerHTML = await response.text();
        box.dataset.refreshed = String(Number(box.dataset.refreshed || 0) + 1);
      } catch (error) {
        const note = document.getElementById("bk-updated");
        if (note) note.textContent = "Could not refresh (" + error.message + "); showing the last figures.";
      }
    }
    setInterval(refresh, seconds * 1000);
  });
})();
