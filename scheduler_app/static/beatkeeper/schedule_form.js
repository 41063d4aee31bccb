// The schedule form's live preview: the next runs in the schedule's zone and UTC,
// fetched (GET, nothing saved) whenever a schedule field changes, shown right under the
// schedule's fields; a problem is shown by the field it is about. A whole crontab
// expression pasted into "Whole expression" fills the five fields. Text only: no HTML
// from the server is inserted.
"use strict";
(function () {
  const KIND_ROWS = {
    crontab: ["cron_expression", "minute", "cron_timezone"],
    interval: ["every"],
    clocked: ["clocked_time"],
    solar: ["solar_event"],
  };
  const CRON_PARTS = ["minute", "hour", "day_of_month", "month_of_year", "day_of_week"];

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

  // Each field's problem under the field itself (its box in a row of several), not only in the preview.
  // The server's errors of the last save are replaced by the preview's, which are current.
  function showErrors(form, errors) {
    for (const old of form.querySelectorAll(".bk-preview-error")) old.remove();
    const scheduleSet = form.querySelector(".field-kind") && form.querySelector(".field-kind").closest("fieldset");
    if (scheduleSet) for (const stale of scheduleSet.querySelectorAll(".errorlist")) stale.remove();
    for (const [field, messages] of Object.entries(errors)) {
      const box = form.querySelector(".fieldBox.field-" + field) || form.querySelector(".form-row.field-" + field);
      if (!box) continue;
      const note = document.createElement("p");
      note.className = "bk-preview-error";
      note.setAttribute("role", "alert");
      note.textContent = messages.join(" ");
      box.after(note); // under the field (a row of several fields: under its own box)
    }
  }

  function render(form, data) {
    const table = document.getElementById("bk-preview-table");
    const body = table.querySelector("tbody");
    body.replaceChildren();
    showErrors(form, data.ok ? {} : data.errors || {});
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
    // Each slot as beat sends it: the send moment (its jitter in), the nominal slot where that
    // differs, and what a calendar does to it (a skipped slot: its row struck through, said why).
    for (const run of data.runs) {
      const row = body.insertRow();
      if (run.skipped) row.className = "bk-skipped";
      row.insertCell().textContent = run.shown_local;
      row.insertCell().textContent = run.shown_utc;
      const notes = [];
      if (run.skipped) notes.push("not sent");
      if (run.shown_slot) notes.push("slot " + run.shown_slot);
      if (run.note) notes.push(run.note);
      if (run.dst_change) notes.push("UTC offset changes (daylight saving)");
      const mark = row.insertCell();
      mark.textContent = notes.join("; ");
      mark.className = run.skipped ? "bk-skip-note" : run.dst_change ? "bk-dst" : "bk-run-note";
    }
    table.hidden = false;
    const hashed = data.hashed ? " H: " + data.hashed + "." : "";
    setStatus("Next " + data.runs.length + " slots, as beat will send them (zone " + data.zone + ")." + hashed);
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
        render(form, await response.json());
      } catch (error) {
        setStatus("Preview unavailable: " + error);
      }
    }, 250);
  }

  // "30 2 * * *" pasted: the five fields take its parts (the pasted text is then cleared,
  // so the five fields are what is sent).
  function fillFromExpression(form, input) {
    const parts = input.value.trim().split(/\s+/).filter(Boolean);
    if (parts.length !== CRON_PARTS.length) return;
    CRON_PARTS.forEach((name, index) => {
      const field = form.querySelector("[name=" + name + "]");
      if (field) field.value = parts[index];
    });
    input.value = "";
    input.placeholder = parts.join(" ") + " (filled in below)";
  }

  document.addEventListener("DOMContentLoaded", function () {
    const preview = document.getElementById("bk-preview");
    if (!preview) return;
    const form = preview.closest("form");
    const scheduleSet = form.querySelector(".field-kind") && form.querySelector(".field-kind").closest("fieldset");
    if (scheduleSet) scheduleSet.after(preview); // the preview (and its errors) right under the schedule's fields
    const paste = document.getElementById("bk-cron-paste");
    if (paste) paste.addEventListener("input", () => fillFromExpression(form, paste));
    showKind(form);
    form.addEventListener("input", () => refresh(form));
    form.addEventListener("change", function (event) {
      if (event.target.name === "kind") showKind(form);
      refresh(form);
    });
    refresh(form);
  });
})();
