// Live refresh of the worklist: every few seconds, fetch the rows of the current view (same filters, sort
// and page) and the draft banner, as HTML rendered (and escaped) by the server inside a small JSON answer,
// and swap them in when they changed. No library, no page reload.
(function () {
  "use strict";
  const table = document.getElementById("worklist");
  const rows = document.getElementById("rows");
  const total = document.getElementById("total");
  const refreshed = document.getElementById("refreshed");
  const bannerSlot = document.getElementById("banner-slot");
  if (!table || !rows) return;
  const url = table.dataset.rowsUrl;
  const intervalMs = 3000;
  let busy = false;

  async function refresh() {
    if (busy || document.visibilityState === "hidden") return;
    busy = true;
    try {
      const response = await fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin",
                                           cache: "no-store" });
      if (response.status === 401) { window.location.reload(); return; }
      if (!response.ok) { refreshed.textContent = "refresh failed (" + response.status + ")"; return; }
      const answer = await response.json();
      if (answer.rows !== rows.dataset.last) {
        rows.innerHTML = answer.rows;
        rows.dataset.last = answer.rows;
      }
      if (bannerSlot && answer.banner !== bannerSlot.dataset.last) {
        bannerSlot.innerHTML = answer.banner;
        bannerSlot.dataset.last = answer.banner;
      }
      if (total) total.textContent = String(answer.total);
      refreshed.textContent = "updated " + new Date().toLocaleTimeString();
    } catch (error) {
      refreshed.textContent = "offline, retrying";
    } finally {
      busy = false;
    }
  }
  window.setInterval(refresh, intervalMs);
  document.addEventListener("visibilitychange", refresh);
})();
