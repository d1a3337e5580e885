// Live lists: recent jobs (status, progress, cancel, delete), the gallery of stored outputs
// (with their parameters and "recall parameters"), and models with the memory budget.

import { blobUrl, del, get, post } from "./api.js";
import { capabilities, models } from "./catalog.js";
import { ago, bar, errorBox, h } from "./dom.js";
import { queueLabel, resultView } from "./run.js";

const REFRESH_MS = 1500;

/** Re-render `render()` into `main` every REFRESH_MS while the page stays; returns a stopper. */
function live(render) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    await render();
    if (!stopped) timer = setTimeout(tick, REFRESH_MS);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

export function jobsPage(main) {
  const table = h("tbody");
  const error = h("div");
  main.replaceChildren(h("h1", {}, "Jobs"), error,
    h("div.table-wrap", {}, h("table.jobs", {}, h("thead", {}, h("tr", {}, ["Job", "Status", "Progress", "Model",
      "Created", ""].map((t) => h("th", { scope: "col" }, t)))), table)));
  let shown = "";
  return live(async () => {
    try {
      const page = await get("/v1/jobs?limit=50");
      error.replaceChildren();
      const seen = JSON.stringify(page.data.map((j) => [j.id, j.status, j.progress, j.progress_label, j.queue_position]));
      if (seen === shown) return; // unchanged: keep the rows (and keyboard focus) as they are
      shown = seen;
      table.replaceChildren(...page.data.map(jobRow));
      if (!page.data.length) table.append(h("tr", {}, h("td.empty", { colSpan: 6 }, "No jobs yet. Run an operation from ",
        h("a", { href: "#/" }, "Capabilities"), ".")));
    } catch (e) {
      error.replaceChildren(errorBox(e));
    }
  });
}

function jobRow(job) {
  const active = job.status === "queued" || job.status === "running";
  const act = (label, fn, cls = "secondary") => h(`button.${cls}`, { type: "button", onclick: async (e) => {
    e.target.disabled = true;
    try { await fn(); } catch (err) { e.target.replaceWith(errorBox(err)); }
  } }, label);
  const label = job.status === "queued" ? queueLabel(job) : job.progress_label;
  return h("tr", { dataset: { jobId: job.id, status: job.status } },
    h("td", {}, h("a", { href: `#/job/${job.id}` }, job.id.slice(0, 16) + "…"), h("br"), h("small.muted", {}, job.type)),
    h("td", {}, h(`span.badge.${job.status}`, {}, job.status)),
    h("td", {}, bar(active || job.status === "succeeded" ? job.progress : 0, `progress of ${job.id}`), " ",
      h("small", {}, label || "")),
    h("td", {}, job.model || ""),
    h("td", {}, ago(job.created_at)),
    h("td", {}, h("div.cell-actions", {}, active ? act("Cancel", () => post(`/v1/jobs/${job.id}/cancel`), "danger") : null,
      act("Delete", () => del(`/v1/jobs/${job.id}`)))));
}

export async function galleryPage(main) {
  const grid = h("div.gallery");
  const detail = h("section.detail", { "aria-live": "polite" });
  main.replaceChildren(h("h1", {}, "Gallery"), h("p.muted", {}, "Stored outputs, newest first."), detail, grid);
  const more = h("button.secondary", { type: "button", hidden: true }, "Show more");
  main.append(h("div.actions", {}, more));
  let after = "";
  const load = async () => {
    more.disabled = true;
    const page = await get(`/v1/files?limit=100${after ? `&after=${after}` : ""}`);
    tiles(grid, detail, page.data.filter((f) => f.meta && f.meta.job_id));
    after = page.last_id;
    more.hidden = !page.has_more;
    more.disabled = false;
  };
  more.addEventListener("click", load);
  await load();
  if (!grid.childElementCount) {
    grid.append(h("p.empty", {}, "No outputs yet: generate something from ", h("a", { href: "#/" }, "Capabilities"), "."));
  }
}

function tiles(grid, detail, outputs) {
  for (const file of outputs) {
    const isImage = file.content_type.startsWith("image/");
    const img = isImage ? h("img", { alt: file.filename, loading: "lazy" }) : h("span", {}, file.filename);
    const tile = h("button.tile", { type: "button", dataset: { fileId: file.file_id },
      onclick: () => showDetail(detail, file) }, img,
    h("small", {}, `${file.meta.capability || ""} ${file.meta.model || ""} · ${ago(file.created_at)}`));
    grid.append(tile);
    if (isImage) blobUrl(file.file_id).then((url) => { img.src = url; }).catch(() => {});
  }
}

async function showDetail(detail, file) {
  detail.replaceChildren(h("p.muted", {}, "Loading…"));
  try {
    const job = await get(`/v1/jobs/${file.meta.job_id}`);
    detail.replaceChildren(h("h2", {}, file.filename), await resultView({ ...job, artifacts: [file.file_id] }));
    detail.scrollIntoView({ block: "nearest" });
  } catch (error) {
    detail.replaceChildren(h("h2", {}, file.filename), h("p.muted", {}, "Its job is no longer kept."), errorBox(error));
  }
}

export function modelsPage(main) {
  const memory = h("section.memory");
  const list = h("div.model-list");
  main.replaceChildren(h("h1", {}, "Models and memory"), memory, list);
  return live(async () => {
    try {
      const [stats, caps] = await Promise.all([get("/v1/memory"), capabilities()]);
      renderMemory(memory, stats);
      const sections = [];
      for (const cap of caps) sections.push(modelSection(cap, await models(cap), stats));
      list.replaceChildren(...sections);
    } catch (error) {
      memory.replaceChildren(errorBox(error));
    }
  });
}

function renderMemory(el, stats) {
  const budget = stats.budget_gb || 0;
  const used = stats.used_gb || 0;
  el.replaceChildren(h("h2", {}, "Memory budget"),
    h("meter", { min: 0, max: budget || 1, value: used, "aria-label": "memory used of budget" }),
    h("p", {}, `${used.toFixed(2)} GB used of ${budget.toFixed(2)} GB (${stats.budget_source || "budget"}); `,
      `${(stats.resident_gb || 0).toFixed(2)} GB resident, ${(stats.reserved_gb || 0).toFixed(2)} GB reserved by running jobs.`),
    stats.demo ? h("p.note", {}, "Demo mode: tiny random-weight models, outputs are noise.") : "");
}

function modelSection(cap, list, stats) {
  const resident = new Map((stats.resident || []).map((r) => [`${r.family || r.capability}:${r.model}`, r]));
  const rows = list.map((m) => {
    const loaded = resident.get(`${cap.name}:${m.name}`) || (stats.resident || []).find((r) => r.model === m.name &&
      (r.family === cap.name || r.capability === cap.name));
    const action = (verb) => h("button.secondary", { type: "button", onclick: async (e) => {
      e.target.disabled = true;
      try { await post(`/v1/memory/models/${cap.name}/${m.name}/${verb}`); } catch (err) { e.target.after(errorBox(err)); }
    } }, verb === "load" ? "Load" : "Unload");
    return h("li.model", { dataset: { model: `${cap.name}:${m.name}` } },
      h("strong", {}, m.name), m.default ? h("span.badge", {}, "default") : "",
      loaded ? h("span.badge.succeeded", {}, "loaded") : "",
      m.ready === false
        ? h("span.warn", {}, " weights missing: run ", h("code", {}, `kiapi activate ${cap.name}:${m.name}`))
        : h("span.muted", {}, m.demo ? " demo weights" : " ready"),
      h("small.muted", {}, (m.aliases || []).length ? ` aliases: ${m.aliases.join(", ")}` : ""),
      h("span.row-actions", {}, m.ready === false ? "" : (loaded ? action("unload") : action("load"))));
  });
  return h("section.card", {}, h("h2", {}, cap.title), h("ul.models", {}, rows));
}
