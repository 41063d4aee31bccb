// The schedule form's live preview: the next runs in the schedule's zone and UTC,
// fetched (GET, nothing saved) whenever a schedule field changes. Text only: no HTML
// from the server is inserted.
"use strict";
(function () {
  const KIND_ROWS = {
    crontab: ["minute", "cron_timezone"],
    interval: ["every"],
    clocked: ["clocked_time"],
    solar: ["solar_event"],
  };

  function showKind(form) {
    const chosen = form.querySelector("input[name=kind]:checked");
    const kind = chosen ? chosen.value : "crontab";
    for (const [name, fields] of Object.entries(KIND_ROWS)) {
      for (const field of fields) {
        const row = form.querySelector(".field-" + field) || form.querySelector(".form-row.field-" + field);
        const box = row && (row.closest(".form-row") || row);
        if (box) box.hidden = name !== kind;
      }
    }
  }

  function setStatus(text) {
    document.getElementById("bk-preview-status").textContent = text;
  }

  function render(data) {
    const table = document.getElementById("bk-preview-table");
    const body = table.querySelector("tbody");
    body.replaceChildren();
    if (!data.ok) {
      table.hidden = true;
      const problems = Object.entries(data.errors || {}).map(([field, errors]) => field + ": " + errors.join(" "));
      setStatus(problems.length ? "Fix the schedule: " + problems.join("; ") : "Fill in the schedule.");
      return;
    }
    if (!data.runs.length) {
      table.hidden = true;
      setStatus("This schedule will not run again.");
      return;
    }
    for (const run of data.runs) {
      const row = body.insertRow();
      row.insertCell().textContent = run.local.replace("T", " ");
      row.insertCell().textContent = run.utc.replace("T", " ").replace("+00:00", "Z");
      const mark = row.insertCell();
      if (run.dst_change) {
        mark.textContent = "UTC offset changes (daylight saving)";
        mark.className = "bk-dst";
      }
    }
    table.hidden = false;
    setStatus("Next " + data.runs.length + " runs, zone " + data.zone + ":");
  }

  let pending = null;
  function refresh(form) {
    clearTimeout(pending);
    pending = setTimeout(async function () {
      const preview = document.getElementById("bk-preview");
      const params = new URLSearchParams(new FormData(form));
      params.delete("csrfmiddlewaretoken");
      if (preview.dataset.object) params.set("object", preview.dataset.object); // its last run and policy
      const url = preview.dataset.url;
      try {
        const response = await fetch(url + "?" + params.toString(), { credentials: "same-origin" });
        render(await response.json());
      } catch (error) {
        setStatus("Preview unavailable: " + error);
      }
    }, 250);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const preview = document.getElementById("bk-preview");
    if (!preview) return;
    const form = preview.closest("form");
    showKind(form);
    form.addEventListener("input", () => refresh(form));
    form.addEventListener("change", function (event) {
      if (event.target.name === "kind") showKind(form);
      refresh(form);
    });
    refresh(form);
  });
})();
