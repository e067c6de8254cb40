// The console's only script (served from /console/static/, nothing from elsewhere): confirm before an action,
// drop empty filter fields from a shared link, and refresh the #live section of a page every few seconds.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  // A refund's confirmation names its amount: "{amount}" is the form's amount field, or all that remains.
  const amount = form.elements.amount ? form.elements.amount.value.trim() || "all that remains of" : "";
  const question = (form.dataset.confirm || "Are you sure?").replace("{amount}", amount);
  if (form.classList.contains("confirm") && !window.confirm(question)) {
    event.preventDefault();
  }
  if (form.id === "filters") {
    // An empty field is no filter: leave it out of the URL so the link says only what it filters on.
    for (const input of form.querySelectorAll("input")) {
      if (input.type !== "checkbox" && !input.value.trim()) input.disabled = true;
    }
  }
});

async function refresh() {
  const live = document.getElementById("live");
  if (!live || !live.dataset.live) return;
  if (!document.hidden) {
    try {
      const answer = await fetch(window.location.href, { credentials: "same-origin", redirect: "manual" });
      if (answer.ok) {
        const fresh = new DOMParser().parseFromString(await answer.text(), "text/html").getElementById("live");
        if (fresh) live.replaceWith(fresh);
      }
    } catch (error) {
      // The orchestrator restarting: try again at the next tick.
    }
  }
  const next = document.getElementById("live");
  if (next && next.dataset.live) window.setTimeout(refresh, Number(next.dataset.live) * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live && live.dataset.live) window.setTimeout(refresh, Number(live.dataset.live) * 1000);
});
