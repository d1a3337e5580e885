// The landing page (capabilities with their operations and guides), one page per operation
// (its generated form and the run panel) and one page per job.

import { get } from "./api.js";
import { capabilities, documentOf, models, operation, operations } from "./catalog.js";
import { errorBox, h, markdown } from "./dom.js";
import { buildForm } from "./form.js";
import { resultView, runJob, watchJob } from "./run.js";

export async function homePage(main) {
  const caps = await capabilities();
  main.replaceChildren(h("h1", {}, "Capabilities"));
  if (!caps.length) {
    main.append(h("p.empty", {}, "No capability plugin is installed. Install one (",
      h("code", {}, "pip install kiapi-ernie"), ") and restart the server."));
    return;
  }
  const grid = h("div.cards");
  main.append(grid);
  for (const cap of caps) {
    const card = h("section.card", { "aria-labelledby": `cap-${cap.name}` },
      h("h2", { id: `cap-${cap.name}` }, cap.title),
      h("p.muted", {}, `${cap.domain} · ${cap.name} · v${cap.version}`),
      cap.summary ? h("p", {}, cap.summary) : null);
    const list = h("ul.ops");
    card.append(list);
    grid.append(card);
    try {
      for (const op of await operations(cap)) {
        list.append(h("li", {}, h("a.op", { href: `#/op/${cap.name}/${op.name}` }, h("strong", {}, op.name),
          markdown(op.blurb || op.summary || ""))));
      }
      const doc = await documentOf(cap);
      card.append(h("details.guide-box", {}, h("summary", {}, "Guide"), markdown(doc.info.description || "")),
        h("p.links", {}, h("a", { href: cap.docs }, "Swagger UI"), " · ", h("a", { href: cap.redoc }, "ReDoc"),
          " · ", h("a", { href: cap.openapi }, "OpenAPI")));
    } catch (error) {
      card.append(errorBox(error));
    }
  }
}

export async function operationPage(main, capName, opName, query) {
  const op = await operation(capName, opName);
  let modelList = null;
  try { modelList = await models(op.capability); } catch { modelList = null; }
  const form = buildForm(op, modelList);
  const panel = h("section.run-panel", { "aria-label": "Result" },
    h("p.empty", {}, "Fill in the form and press Run: the job's progress and its result appear here."));
  const run = h("button.primary", { type: "submit" }, "Run");
  const formEl = h("form.op-form", { novalidate: false }, form.el, h("div.actions", {}, run,
    h("button.secondary", { type: "button", onclick: () => exampleInto(form, op) }, "Fill in the example")));
  // Leaving the page closes its event stream: browsers allow only six connections per server.
  const leaving = new AbortController();
  const again = (body) => submit(body);
  async function submit(body) {
    run.disabled = true;
    try { await runJob(op, body, panel, { onAgain: again, signal: leaving.signal }); } finally { run.disabled = false; }
  }
  formEl.addEventListener("submit", (event) => {
    event.preventDefault();
    const missing = form.missing();
    if (!formEl.reportValidity()) return;
    if (missing.length) {
      panel.replaceChildren(errorBox(new Error(`required: ${missing.join(", ")}`)));
      return;
    }
    let body;
    try { body = form.values(); } catch (error) { panel.replaceChildren(errorBox(error)); return; }
    submit(body);
  });
  // Paste an image anywhere on the page (outside text fields) into the first file input.
  const firstFile = [...formEl.querySelectorAll(".field.file")][0];
  const onPaste = (event) => {
    if (!firstFile || !document.body.contains(formEl) || /INPUT|TEXTAREA/.test(event.target.tagName)) return;
    const file = [...event.clipboardData.files][0];
    if (file) { event.preventDefault(); form.field(firstFile.dataset.field).take(file); }
  };
  document.addEventListener("paste", onPaste);
  main.replaceChildren(
    h("nav.crumbs", { "aria-label": "Breadcrumb" }, h("a", { href: "#/" }, "Capabilities"), " / ",
      op.capability.title),
    h("h1", {}, `${opName[0].toUpperCase()}${opName.slice(1)}`, h("span.muted", {}, ` · ${capName}`)),
    markdown(op.blurb),
    h("p.muted", {}, h("code", {}, `POST ${op.path}`), op.alwaysAsync ? " · always runs as a background job" : ""),
    op.description && op.description !== op.blurb && !op.description.startsWith("`POST ") ? h("details.guide-box", {}, h("summary", {}, "About this operation"), markdown(op.description)) : "",
    h("div.op-layout", {}, formEl, panel));
  await prefill(form, op, query);
  return () => { leaving.abort(); document.removeEventListener("paste", onPaste); };
}

/** `?job=<id>` recalls a job's parameters; `?<field>=<file id>` hands a file to a file input. */
async function prefill(form, op, query) {
  const jobId = query.get("job");
  if (jobId) {
    const job = await get(`/v1/jobs/${jobId}`);
    form.set(job.params || {}, job.inputs || {});
  } else if (op.example) {
    // A fresh form starts from the operation's example (a prompt, sizes that run), minus its
    // fixed seed and its inline sample files: pressing Run right away just works.
    const { seed, mode, ...values } = op.example;
    for (const name of Object.keys(values)) if (form.field(name)?.kind === "file") delete values[name];
    form.set(values, {}, false);
  }
  for (const [name, value] of query) {
    const field = form.field(name);
    if (name !== "job" && field && field.kind === "file") field.set(value);
  }
}

function exampleInto(form, op) {
  if (!op.example) return;
  const { mode, ...values } = op.example;
  // An inline sample image is uploaded first, so the form always holds a Files-API reference.
  for (const [name, value] of Object.entries(values)) {
    const field = form.field(name);
    if (field && field.kind === "file" && value && value.type === "data_url") {
      field.take(dataUrlFile(value.data_url, "example"));
      delete values[name];
    }
  }
  form.set(values);
}

export async function jobPage(main, jobId) {
  const leaving = new AbortController();
  const job = await get(`/v1/jobs/${jobId}`);
  const panel = h("section.run-panel");
  main.replaceChildren(h("nav.crumbs", {}, h("a", { href: "#/jobs" }, "Jobs"), " / ", jobId),
    h("h1", {}, `${job.capability || job.type} job`), h("p.muted", {}, `${job.type} · ${job.model || ""}`), panel);
  if (["queued", "running"].includes(job.status)) watchJob(jobId, panel, { signal: leaving.signal }); // drawn now, followed live
  else panel.replaceChildren(h("div.job", { dataset: { jobId, status: job.status } },
    h("p", {}, `Status: ${job.status}`), await resultView(job)));
  return () => leaving.abort();
}

/** A File from a base64 data URL (decoded here: the page's CSP does not let fetch() read data:). */
function dataUrlFile(url, stem) {
  const [head, data] = url.split(",", 2);
  const type = head.slice(5).split(";")[0];
  const raw = atob(data);
  const buffer = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) buffer[i] = raw.charCodeAt(i);
  return new File([buffer], `${stem}.${type.split("/")[1] || "bin"}`, { type });
}
