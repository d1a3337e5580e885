// FileRef inputs: upload (file chooser, drag and drop, paste) or pick a stored file or an
// earlier output. The value sent is always a Files-API reference: {"type": "file_id", ...}.

import { blobUrl, get, upload } from "./api.js";
import { bytes, errorBox, h } from "./dom.js";

/** A FileRef field; `kind` is what the operation expects ("image" or any "file"). */
export function fileField(name, label, help, isRequired, kind = "image") {
  let value;
  const id = `f-${name.replace(/[^\w-]/g, "_")}`;
  const input = h("input", { type: "file", id, name, accept: kind === "image" ? "image/*" : undefined,
    "aria-describedby": `${id}-status` });
  const preview = h("div.preview");
  const status = h("small.help", { id: `${id}-status`, "aria-live": "polite" },
    help || "", kind === "image" ? " Drop an image here, paste one, or pick a stored file." : "");
  const picker = h("div.picker", { hidden: true });
  const zone = h("div.drop", { tabindex: 0, "aria-label": `${label}: drop or paste a file` }, preview,
    h("div.drop-actions", {}, input,
      h("button.secondary", { type: "button", onclick: () => togglePicker() }, "Stored files…")));

  async function show(ref, note) {
    value = ref;
    preview.replaceChildren();
    if (ref.type !== "file_id") {
      preview.append(h("code", {}, ref.type));
      return;
    }
    try {
      const record = await get(`/v1/files/${ref.file_id}`);
      if (record.content_type.startsWith("image/")) {
        preview.append(h("img", { src: await blobUrl(ref.file_id), alt: record.filename }));
      }
      status.replaceChildren(note || "Using ", h("strong", {}, record.filename), ` (${bytes(record.size)}) · `,
        h("code", {}, ref.file_id),
        " ", h("button.link", { type: "button", onclick: () => reset() }, "Clear"));
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  }

  function reset() {
    value = undefined;
    input.value = "";
    preview.replaceChildren();
    status.replaceChildren(help || "");
  }

  async function take(file) {
    if (!file) return;
    status.replaceChildren(`Uploading ${file.name || "pasted file"}…`);
    try {
      const record = await upload(file, file.name || "pasted.png");
      await show({ type: "file_id", file_id: record.file_id }, "Uploaded ");
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  }

  async function togglePicker() {
    picker.hidden = !picker.hidden;
    if (picker.hidden) return;
    picker.replaceChildren(h("p.muted", {}, "Loading stored files…"));
    try {
      const page = await get("/v1/files?limit=60");
      const files = page.data.filter((f) => kind !== "image" || f.content_type.startsWith("image/"));
      picker.replaceChildren();
      if (!files.length) picker.append(h("p.muted", {}, "No stored files yet."));
      for (const f of files) {
        const button = h("button.thumb", { type: "button", title: f.filename, dataset: { fileId: f.file_id },
          onclick: () => { picker.hidden = true; show({ type: "file_id", file_id: f.file_id }); } },
        f.content_type.startsWith("image/") ? h("img", { alt: f.filename }) : h("span", {}, f.filename),
        h("small", {}, f.meta && f.meta.job_id ? "output" : "upload"));
        picker.append(button);
        const img = button.querySelector("img");
        if (img) blobUrl(f.file_id).then((url) => { img.src = url; }).catch(() => {});
      }
    } catch (error) {
      picker.replaceChildren(errorBox(error));
    }
  }

  input.addEventListener("change", () => take(input.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    take(e.dataTransfer.files[0]);
  });
  zone.addEventListener("paste", (e) => {
    const file = [...e.clipboardData.files][0];
    if (file) { e.preventDefault(); take(file); }
  });

  const el = h("div.field.file", { dataset: { field: name } },
    h("label", { for: id }, label, isRequired ? h("span.req", { title: "required" }, " *") : null),
    zone, status, picker);
  return {
    kind: "file", el, take,
    get: () => value,
    set: (v) => {
      if (typeof v === "string") return show({ type: "file_id", file_id: v });
      // A job's params summarise inline inputs ({"type": "data_url", "chars": ...}): not a reference.
      if (v && (v.file_id || v.url || v.data_url)) return show(v);
      return undefined;
    },
  };
}
