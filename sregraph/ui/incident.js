"use strict";
const id = new URLSearchParams(location.search).get("id") || "";
const text = (selector, value) => { document.querySelector(selector).textContent = value ?? ""; };
const rows = (selector, items, cells) =>
  document.querySelector(selector).replaceChildren(...items.map((item) => el("tr", {}, ...cells(item).map((c) => el("td", {}, c)))));

function confidenceBar(p) {
  // Sized through the CSSOM: the page's Content-Security-Policy refuses inline style attributes.
  const bar = el("div", { class: "bar" });
  bar.style.width = `${Math.round(100 * p)}%`;
  return el("div", { class: "track" }, bar);
}

async function load() {
  const inc = await api(`/api/v1/incidents/${encodeURIComponent(id)}`);
  document.body.dataset.status = inc.status;
  text("#title", `Incident ${inc.incident_id}`);
  document.querySelector("#status").replaceChildren(statusBadge(inc.status));
  text("#summary", inc.trigger ? `${inc.trigger.service || ""}: ${inc.trigger.summary || ""}` : "");
  text("#escalation", inc.escalation ? `Escalated: ${inc.escalation}` : "");
  const diagnosis = inc.diagnosis || { hypotheses: [], notes: [] };
  rows("#hypotheses", diagnosis.hypotheses, (h) => [h.service, h.fault_type, h.confidence.toFixed(2), confidenceBar(h.confidence)]);
  text("#notes", (diagnosis.notes || []).join(" · "));
  const top = diagnosis.hypotheses[0];
  rows("#evidence", top ? top.evidence : [], (e) => [e.kind, e.service, e.summary, e.weight.toFixed(2)]);
  rows("#actions", inc.actions, (a) => [a.action.kind, a.action.service, a.status, a.detail]);
  text("#verification", inc.verification ? (inc.verification.recovered ? "Recovered." : "Not recovered.") : "");
  rows("#timeline", inc.timeline, (t) => [when(t.at), t.event]);
  rows("#nearby", inc.nearby || [], (n) => [when(n.at), n.kind, n.service || "every service", n.title]);
  text("#postmortem", inc.postmortem ? inc.postmortem.markdown : "not written yet");
  // Incidents that wait for a human page the escalation tiers until someone takes them.
  const needsHuman = ["awaiting_approval", "escalated"].includes(inc.status);
  document.querySelector("#ack-line").classList.toggle("hidden", !needsHuman || Boolean(inc.acknowledged));
  document.querySelector("#ack").disabled = !["operator", "admin"].includes(document.body.dataset.role);
  text("#acked", inc.acknowledged ? `Acknowledged by ${inc.acknowledged.by} at ${when(inc.acknowledged.at)}.` : "");
  const gate = document.querySelector("#gate");
  gate.classList.toggle("hidden", !inc.waiting_for_approval);
  const plan = inc.plan ? inc.plan.actions.map((a) => `${a.kind} ${a.service}`).join(", ") : "";
  text("#gate-plan", plan);
  const mayDecide = ["operator", "admin"].includes(document.body.dataset.role);
  for (const button of gate.querySelectorAll("button")) button.disabled = !mayDecide;
  if (!mayDecide) text("#gate-note", "your token may read only (viewer)");
}

async function decide(verb) {
  for (const button of document.querySelectorAll("#gate button")) button.disabled = true;
  try {
    await api(`/api/v1/incidents/${encodeURIComponent(id)}/${verb}`,
      { method: "POST", body: JSON.stringify({ reason: document.querySelector("#reason").value }) });
    text("#gate-note", `${verb === "approve" ? "approved" : "rejected"}; the worker resumes the incident`);
  } catch (error) {
    text("#gate-note", error.message);
  }
}

setupLogin(() => {
  document.querySelector("#approve").addEventListener("click", () => decide("approve"));
  document.querySelector("#reject").addEventListener("click", () => decide("reject"));
  document.querySelector("#ack").addEventListener("click", async () => {
    try {
      await api(`/api/v1/incidents/${encodeURIComponent(id)}/acknowledge`, { method: "POST", body: "{}" });
      load();
    } catch (error) {
      text("#ack-note", error.message);
    }
  });
  load();
  streamEvents((event) => { if (event.incident_id === id) load(); });
});
