// sregraph control room: shared helpers. Every value from the API is put on the page as text (never as HTML):
// incident text quotes logs and alerts, which anyone can write.
"use strict";

const TOKEN_KEY = "sregraph-token";
const FINAL = new Set(["healthy", "resolved", "escalated"]);

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
}

function statusBadge(status) {
  return el("span", { class: `status ${status || ""}` }, status || "?");
}

class Unauthorised extends Error {}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "Authorization": `Bearer ${token()}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  if (response.status === 401) { showLogin("the token was refused"); throw new Unauthorised(); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

// The parts every page shares: the header with its links, and the token form (hidden until needed).
function pageChrome() {
  document.querySelector("header").replaceChildren(
    el("h1", {}, "sregraph"), el("a", { href: "./" }, "control room"), el("a", { href: "slo.html" }, "SLOs"),
    el("a", { href: "/docs" }, "API"), el("span", { class: "who" }));
  const login = el("form", { id: "login", class: "login hidden" },
    el("section", {},
      el("h2", {}, "API token"),
      el("p", {}, "Paste a token from ", el("code", {}, "sregraph token create NAME --role operator"), ". It is kept in this tab only."),
      el("input", { id: "token", type: "password", autocomplete: "off", placeholder: "srg_…" }),
      el("button", { class: "approve", type: "submit" }, "Open"),
      el("p", { id: "login-error", class: "error" })));
  document.querySelector("header").after(login);
}

function showLogin(why) {
  document.querySelector("#login").classList.remove("hidden");
  document.querySelector("#content").classList.add("hidden");
  document.querySelector("#login-error").textContent = why || "";
}

function setupLogin(start) {
  pageChrome();
  document.querySelector("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.querySelector("#token").value.trim());
    location.reload();
  });
  if (!token()) { showLogin(""); return; }
  api("/api/v1/whoami").then((me) => {
    document.querySelector(".who").textContent = `${me.name} (${me.role})`;
    document.body.dataset.role = me.role;
    start(me);
  }).catch((error) => { if (!(error instanceof Unauthorised)) showLogin(error.message); });
}

// Server-sent events over fetch (EventSource cannot send the Authorization header); reconnects with
// Last-Event-ID, so nothing still in the server's log is missed.
async function streamEvents(onEvent) {
  let lastId = "";
  for (;;) {
    try {
      const headers = { "Authorization": `Bearer ${token()}` };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await fetch("/api/v1/events", { headers });
      if (response.status === 401) { showLogin("the token was refused"); return; }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("id: ")) lastId = line.slice(4);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) onEvent(JSON.parse(data));
        }
      }
    } catch (error) {
      console.warn("event stream dropped", error);
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}
