"use strict";
async function refresh() {
  const page = await api("/api/v1/incidents?limit=100");
  // Open ones first (awaiting approval on top), then the newest finished ones.
  const rank = (i) => i.status === "awaiting_approval" ? 0 : (FINAL.has(i.status) ? 2 : 1);
  const items = page.items.slice().sort((a, b) => rank(a) - rank(b) || b.created_at - a.created_at);
  const body = document.querySelector("#incidents");
  body.replaceChildren(...items.map((i) => el("tr", { "data-incident": i.incident_id, "data-status": i.status },
    el("td", {}, el("a", { href: `incident.html?id=${encodeURIComponent(i.incident_id)}` }, i.incident_id)),
    el("td", {}, statusBadge(i.status)), el("td", {}, i.service || ""), el("td", {}, i.signal || ""),
    el("td", {}, i.summary || ""), el("td", {}, when(i.created_at)))));
}
setupLogin(() => {
  refresh();
  streamEvents((event) => {
    const feed = document.querySelector("#feed");
    const text = event.lines.length ? event.lines.join(" · ") : (event.status || event.node);
    feed.prepend(el("li", { "data-incident": event.incident_id, "data-node": event.node },
      el("span", {}, when(event.at), " "), el("span", { class: "phase" }, event.phase),
      el("a", { href: `incident.html?id=${encodeURIComponent(event.incident_id)}` }, event.incident_id), " ", text));
    while (feed.children.length > 200) feed.lastChild.remove();
    refresh();
  });
});
