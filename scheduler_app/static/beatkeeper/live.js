// Live regions ({% live_region %}): htmx refreshes them; this says when it should wait and
// when a refresh failed. A region is left alone while the operator works in it (a focused
// field, a ticked box, an opened <details>) or the tab is hidden, so a refresh never takes
// their place. A region holding a changelist's checkboxes gets Django's actions.js bound to
// its new rows after each refresh.
"use strict";
window.bkLiveIdle = function (id) {
  const region = document.getElementById(id);
  if (!region || document.visibilityState !== "visible") return false;
  return !region.querySelector(":focus, input[type=checkbox]:checked, details[open]");
};
(function () {
  function note(region, text) {
    const box = region.querySelector("[data-live-note]");
    if (box) box.textContent = text;
  }
  function failed(event) {
    const region = event.detail.elt;
    if (!region || !region.classList || !region.classList.contains("bk-live")) return;
    const why = event.detail.xhr && event.detail.xhr.status ? "HTTP " + event.detail.xhr.status : "no answer";
    note(region, "Could not refresh (" + why + "); showing what was read before.");
  }
  document.addEventListener("htmx:responseError", failed);
  document.addEventListener("htmx:sendError", failed);
  document.addEventListener("htmx:beforeSwap", function (event) {
    // An answer without the region (the login page after the session ended) keeps the last one.
    const region = event.detail.elt;
    if (!region || !region.classList || !region.classList.contains("bk-live")) return;
    if (!event.detail.xhr.responseText.includes('id="' + region.id + '"')) {
      event.detail.shouldSwap = false;
      note(region, "Could not refresh (signed out?); showing what was read before. Reload the page.");
    }
  });
  // The changelist's boxes read afresh at each use: what actions.js keeps holds no old rows.
  const actionBoxes = {
    get length() { return document.querySelectorAll("tr input.action-select").length; },
    forEach(fn) { document.querySelectorAll("tr input.action-select").forEach(fn); },
    [Symbol.iterator]() { return document.querySelectorAll("tr input.action-select")[Symbol.iterator](); },
  };
  document.addEventListener("htmx:afterSwap", function (event) {
    const region = event.detail.elt;
    if (region && region.classList && region.classList.contains("bk-live")) {
      const swapped = document.getElementById(region.id);  // the new element (outerHTML swap)
      if (window.Actions && swapped && swapped.querySelector("tr input.action-select")) window.Actions(actionBoxes);
      document.body.dataset.liveRefreshes = String(Number(document.body.dataset.liveRefreshes || 0) + 1);
    }
  });
})();
