// flotilla console: live updates and confirmations. Pages work without it.
"use strict";
(function () {
  const KEY = "flotilla.live";
  let source = null;
  let timer = null;
  let busy = false;
  let again = false;

  function main() { return document.getElementById("content"); }

  // Re-render the page's content in place, keeping open <details> open.
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const open = new Set([...document.querySelectorAll("details[open][id]")].map((d) => d.id));
      const resp = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (resp.redirected || !resp.ok) { return; }
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const fresh = doc.getElementById("content");
      if (!fresh) { return; }
      const had = main().contains(document.activeElement) ? document.activeElement.id : null;
      main().innerHTML = fresh.innerHTML;
      for (const a of fresh.getAttributeNames()) { main().setAttribute(a, fresh.getAttribute(a)); }
      for (const id of open) { const d = document.getElementById(id); if (d) { d.open = true; } }
      document.title = doc.title;
      wire();
      if (had && document.getElementById(had)) { document.getElementById(had).focus(); }
      const stamp = document.querySelector(".updated");
      if (stamp) { stamp.textContent = "Updated " + new Date().toLocaleTimeString(); }
      follow();
    } catch (e) {
      // A failed refresh leaves the page as it was; the next change tries again.
    } finally {
      busy = false;
      if (again) { again = false; setTimeout(refresh, 250); }
    }
  }

  function on() { return localStorage.getItem(KEY) !== "off"; }

  function stop() {
    if (source) { source.close(); source = null; }
    if (timer) { clearInterval(timer); timer = null; }
  }

  // Follow what this page shows: server-sent events and/or a poll.
  function follow() {
    const m = main();
    const url = m.getAttribute("data-live");
    const every = Number(m.getAttribute("data-every") || 0);
    if (!on() || url === null) { stop(); return; }
    if (url && (!source || source.url.indexOf(url) < 0)) {
      stop();
      source = new EventSource(url);
      source.addEventListener("change", refresh);
    } else if (!url && source) {
      source.close(); source = null;
    }
    if (every > 0 && !timer) { timer = setInterval(refresh, every * 1000); }
  }

  function wire() {
    const box = document.getElementById("live");
    if (box) {
      box.checked = on();
      box.addEventListener("change", () => {
        localStorage.setItem(KEY, box.checked ? "on" : "off");
        const stamp = document.querySelector(".updated");
        if (stamp) { stamp.textContent = box.checked ? "Live" : "Paused"; }
        if (box.checked) { refresh(); } else { stop(); }
      });
    }
    for (const f of document.querySelectorAll("form[data-confirm]")) {
      f.addEventListener("submit", (e) => { if (!confirm(f.getAttribute("data-confirm"))) { e.preventDefault(); } });
    }
  }

  // Back and forward show the filters of the URL, not what was typed before leaving.
  window.addEventListener("pageshow", () => {
    for (const f of document.querySelectorAll("form.filters")) { f.reset(); }
  });

  document.addEventListener("DOMContentLoaded", () => {
    wire();
    follow();
    const stamp = document.querySelector(".updated");
    if (stamp && main().getAttribute("data-live") !== null) { stamp.textContent = on() ? "Live" : "Paused"; }
  });
})();
