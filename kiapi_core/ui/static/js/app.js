// The playground's entry point: the token dialog, the server status line and the #/ router.
//   #/                      capabilities and their operations
//   #/op/<family>/<op>      an operation's form (?job=<id> recalls, ?<field>=<file id> hands a file)
//   #/job/<id>              one job
//   #/jobs  #/gallery  #/models

import { get, onTokenNeeded, setToken, token } from "./api.js";
import { errorBox, h } from "./dom.js";
import { galleryPage, jobsPage, modelsPage } from "./lists.js";
import { homePage, jobPage, operationPage } from "./pages.js";

const main = document.getElementById("main");
const status = document.getElementById("status");
let leave = null; // cleanup of the current page (timers, listeners)
let pendingToken = null;

/** Ask for the token in a modal dialog (once at a time); resolves to what was entered. */
function askToken(message) {
  if (pendingToken) return pendingToken;
  const dialog = document.getElementById("token-dialog");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const error = document.getElementById("token-error");
  error.hidden = !message;
  error.textContent = message || "";
  input.value = "";
  pendingToken = new Promise((resolve) => {
    const done = (event) => {
      event.preventDefault();
      if (!input.value.trim()) return;
      form.removeEventListener("submit", done);
      dialog.close();
      pendingToken = null;
      resolve(input.value.trim());
    };
    form.addEventListener("submit", done);
    dialog.addEventListener("cancel", (event) => event.preventDefault(), { once: true });
  });
  dialog.showModal();
  input.focus();
  return pendingToken;
}

/**
 * Make sure requests will be accepted: /health stays open without a token but then answers
 * only {status, version}; a full answer means the token (or none) is right. Asking this way
 * needs no failing request.
 */
async function ensureAccess() {
  let message = token() ? "" : null;
  for (;;) {
    const health = await get("/health");
    if ("capabilities" in health) return health;
    if (message === "") message = "The server refused the token.";
    setToken(await askToken(message));
    message = "The server refused the token.";
  }
}

function showStatus(health) {
  const queue = health.queue || {};
  status.replaceChildren(`v${health.version}`, health.demo ? h("span.badge.demo", { title: "tiny random-weight models; outputs are noise" }, "demo") : "",
    queue.running ? h("span.badge.running", {}, "busy") : "", queue.queued ? ` ${queue.queued} queued` : "");
}

async function route() {
  if (leave) { leave(); leave = null; }
  const [path, rawQuery] = (location.hash.slice(1) || "/").split("?");
  const query = new URLSearchParams(rawQuery || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.toggleAttribute("aria-current", link.dataset.nav === (parts[0] || "home"));
  }
  main.replaceChildren(h("p.muted", {}, "Loading…"));
  delete main.dataset.ready; // set again once the page is drawn (for scripts and tests)
  try {
    if (parts[0] === "op" && parts.length === 3) leave = await operationPage(main, parts[1], parts[2], query);
    else if (parts[0] === "job" && parts[1]) leave = await jobPage(main, parts[1]);
    else if (parts[0] === "jobs") leave = jobsPage(main);
    else if (parts[0] === "gallery") await galleryPage(main);
    else if (parts[0] === "models") leave = modelsPage(main);
    else await homePage(main);
    document.title = `${main.querySelector("h1") ? main.querySelector("h1").textContent : "kiapi"} · kiapi playground`;
  } catch (error) {
    main.replaceChildren(h("h1", {}, "Something went wrong"), errorBox(error), h("p", {}, h("a", { href: "#/" }, "Back to the capabilities")));
  }
  main.dataset.ready = "1";
}

async function start() {
  onTokenNeeded(askToken);
  try {
    showStatus(await ensureAccess());
  } catch (error) {
    main.replaceChildren(h("h1", {}, "The server did not answer"), errorBox(error));
    return;
  }
  window.addEventListener("hashchange", route);
  await route();
  setInterval(async () => {
    try { showStatus(await get("/health")); } catch { /* shown on the next success */ }
  }, 5000);
}

start();
