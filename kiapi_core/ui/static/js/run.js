// Running a job and showing it: live progress from the job's event stream (label, queue
// position, elapsed time, cancel), then the result inline with its parameters, a download
// link, "run again", "new seed" and "use as input" for another operation.

import { blobUrl, follow, get, isFinished, post } from "./api.js";
import { bar, bytes, duration, errorBox, h } from "./dom.js";
import { fileTargets, operationForJob } from "./catalog.js";

/** Submit `body` to `op` and follow the job in `panel`; resolves to the final Job (or null). */
export async function runJob(op, body, panel, { onAgain, signal } = {}) {
  panel.replaceChildren(h("p.muted", {}, "Submitting…"));
  let accepted;
  try {
    // Operations without a `mode` field answer synchronously: ask for the Job JSON, not bytes.
    accepted = await post(op.path, body, { headers: { Accept: "application/json" } });
  } catch (error) {
    panel.replaceChildren(errorBox(error));
    return null;
  }
  return watchJob(accepted.job_id || accepted.id, panel, { body, onAgain, signal });
}

/** Follow an existing job in `panel` (the job page, and the run panel after submitting). */
export async function watchJob(jobId, panel, { body, onAgain, signal } = {}) {
  const started = performance.now();
  const label = h("span.label", {}, "queued");
  const elapsed = h("span.elapsed", {}, "0.0 s");
  const progress = bar(null, "job progress");
  const cancel = h("button.danger", { type: "button", onclick: async () => {
    cancel.disabled = true;
    try { await post(`/v1/jobs/${jobId}/cancel`); } catch (error) { panel.append(errorBox(error)); }
  } }, "Cancel");
  const live = h("div.live", { "aria-live": "polite" }, label);
  const head = h("div.job-head", {}, h("a.job-id", { href: `#/job/${jobId}` }, jobId), elapsed, cancel);
  const box = h("div.job", { dataset: { jobId, status: "queued" } }, head, progress, live);
  panel.replaceChildren(box);
  const timer = setInterval(() => { elapsed.textContent = duration((performance.now() - started) / 1000); }, 100);

  const update = (job) => {
    box.dataset.status = job.status;
    if (job.status === "queued") {
      label.textContent = queueLabel(job);
      progress.removeAttribute("value");
    } else {
      label.textContent = job.progress_label || job.status;
      if (typeof job.progress === "number") progress.value = job.progress;
    }
  };
  let job;
  try {
    job = await follow(jobId, update, signal);
  } catch (error) {
    clearInterval(timer);
    if (signal && signal.aborted) return null; // the page was left
    panel.append(errorBox(error));
    return null;
  }
  clearInterval(timer);
  if (job.started_at && job.finished_at) elapsed.textContent = duration(job.finished_at - job.created_at);
  update(job);
  cancel.remove();
  box.append(await resultView(job, { body, onAgain }));
  return job;
}

/** "queued · next in line" or "queued · 2 ahead" (queue_position counts the jobs ahead). */
export function queueLabel(job) {
  const ahead = job.queue_position;
  return ahead ? `queued · ${ahead} ahead` : "queued · next in line";
}

/** A finished job: its error, or its outputs with parameters and follow-up actions. */
export async function resultView(job, { body, onAgain } = {}) {
  const out = h("div.result");
  if (job.status === "failed") {
    out.append(errorBox({ message: job.error || "failed", body: { code: job.error_code } }));
  } else if (job.status === "canceled") {
    out.append(h("p.notice", {}, "Canceled."));
  } else if (!isFinished(job)) {
    return out;
  }
  for (const warning of job.warnings || []) out.append(h("p.note", {}, warning));
  for (const fileId of job.artifacts || []) out.append(await artifactView(fileId));
  const actions = h("div.actions");
  if (onAgain && body) {
    actions.append(h("button.secondary", { type: "button", onclick: () => onAgain(body) }, "Run again"));
    if ("seed" in (job.params || {})) {
      actions.append(h("button.secondary", { type: "button", onclick: () => {
        const { seed, ...rest } = body;
        onAgain({ ...rest, seed: Math.floor(Math.random() * 2 ** 31) });
      } }, "New seed"));
    }
  } else if (job.params) {
    const op = await operationForJob(job);
    if (op) actions.append(h("a.button.secondary", { href: `#/op/${op.capability.name}/${op.name}?job=${job.id}` }, "Recall parameters"));
  }
  if (actions.childElementCount) out.append(actions);
  if (job.params && Object.keys(job.params).length) {
    out.append(h("details.params", {}, h("summary", {}, "Parameters"), h("pre", {}, JSON.stringify(job.params, null, 2))));
  }
  return out;
}

/** One stored file: inline image (or a download), its download link and "use as input". */
export async function artifactView(fileId) {
  const card = h("figure.artifact", { dataset: { fileId } });
  try {
    const record = await get(`/v1/files/${fileId}`);
    const url = await blobUrl(fileId);
    if (record.content_type.startsWith("image/")) {
      card.append(h("img", { src: url, alt: `output ${record.filename}` }));
    }
    const caption = h("figcaption", {}, h("a", { href: url, download: record.filename }, `Download ${record.filename}`),
      ` · ${record.content_type} · ${bytes(record.size)}`);
    const meta = record.meta || {};
    if (meta.width && meta.height) caption.append(` · ${meta.width}×${meta.height}`);
    card.append(caption);
    if (record.content_type.startsWith("image/")) card.append(await useAsInput(fileId));
  } catch (error) {
    card.append(errorBox(error));
  }
  return card;
}

async function useAsInput(fileId) {
  const targets = await fileTargets();
  if (!targets.length) return "";
  const select = h("select", { "aria-label": "Use this output as the input of" },
    h("option", { value: "" }, "Use as input for…"),
    targets.map(({ op, field }) => h("option", { value: `#/op/${op.capability.name}/${op.name}?${field}=${fileId}` },
      `${op.capability.name} ${op.name}${field === "image" ? "" : ` (${field})`}`)));
  select.addEventListener("change", () => { if (select.value) location.hash = select.value; });
  return h("div.use", {}, select);
}
