"use strict";
const SVG = "http://www.w3.org/2000/svg";
const PAGE_BURN = 14.4;

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

// One bar per burn-rate window on a log scale (0.1 to 1000), the page threshold dashed.
function burnChart(burns) {
  const width = 360, height = 120, left = 40, bar = (width - left) / Math.max(burns.length, 1);
  const y = (v) => { const clamped = Math.min(Math.max(v, 0.1), 1000); return height - 20 - (Math.log10(clamped) + 1) / 4 * (height - 30); };
  const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  for (const tick of [0.1, 1, 10, 100, 1000]) {
    chart.append(svg("text", { x: 2, y: y(tick) + 4, fill: "#8a96a3", "font-size": 10 }, String(tick)));
  }
  burns.forEach((b, i) => {
    const x = left + i * bar + 4;
    if (b.burn_rate !== null) {
      const top = y(b.burn_rate);
      chart.append(svg("rect", { x, y: top, width: bar - 8, height: height - 20 - top,
        fill: b.burn_rate >= PAGE_BURN ? "#f85149" : b.burn_rate >= 1 ? "#d29922" : "#3fb950" }));
    }
    chart.append(svg("text", { x: x + (bar - 8) / 2, y: height - 6, fill: "#8a96a3", "font-size": 10, "text-anchor": "middle" }, b.window));
  });
  chart.append(svg("line", { x1: left, x2: width, y1: y(PAGE_BURN), y2: y(PAGE_BURN), stroke: "#f85149", "stroke-dasharray": "4 3" }));
  return chart;
}

function budgetBar(remaining) {
  const bar = el("div", { class: "bar" });
  bar.style.width = `${Math.round(100 * Math.max(0, Math.min(1, remaining ?? 0)))}%`;
  if ((remaining ?? 0) < 0.25) bar.style.background = "#f85149";
  return el("div", { class: "track" }, bar);
}

async function load() {
  let data;
  try {
    data = await api("/api/v1/slo");
  } catch (error) {
    document.querySelector("#slo-error").textContent = error.message;
    return;
  }
  document.querySelector("#gates").replaceChildren(...Object.entries(data.gates).map(([service, gate]) =>
    el("tr", { "data-service": service }, el("td", {}, service), el("td", {}, statusBadge(gate.state)), el("td", {}, (gate.reasons || []).join("; ")))));
  document.querySelector("#slos").replaceChildren(...data.slos.map((s) =>
    el("div", { class: "slo", "data-slo": s.name },
      el("h3", {}, `${s.name} · ${s.service} · ${(100 * s.target).toFixed(2)} % over ${s.window}`),
      el("p", {}, "budget left: ", s.budget_remaining === null ? "no data" : `${(100 * s.budget_remaining).toFixed(1)} %`,
        ` (of ${s.budget_minutes.toFixed(0)} min) · state `, statusBadge(s.state)),
      budgetBar(s.budget_remaining),
      burnChart(s.burn_rates))));
}

setupLogin(() => { load(); setInterval(load, 15000); });
