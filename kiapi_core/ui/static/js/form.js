// A form generated from an operation's request schema (OpenAPI 3.1 / JSON Schema), so any
// plugin's operation gets a page without UI code. Every input's `name` is the request field's
// name (`loras[0].scale` inside repeatable groups), so the form can be scripted too.

import { h, inline } from "./dom.js";
import { resolve } from "./catalog.js";
import { fileField } from "./files.js";

/** Fields shown up front (besides required ones, `model` and file inputs); the rest fold away. */
const COMMON = new Set(["prompt", "negative_prompt", "width", "height", "steps", "resolution", "scale",
  "format", "image_strength", "strength", "text"]);
/** Strings that deserve a text area. */
const LONG = /prompt|text|caption|description|message/;

/** Build the form; returns {el, values(), set(params, inputs), setFile(field, fileId), field(name)}. */
export function buildForm(op, models) {
  const schema = op.schema;
  const required = new Set(schema.required || []);
  const fields = new Map();
  const primary = h("div.fields");
  const advanced = h("div.fields");
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    if (name === "mode") continue; // the playground always runs jobs async and follows them
    const ctx = { doc: op.doc, inputs: op.inputs || {} };
    const field = name === "model" && models ? modelField(models, raw, op) : makeField(ctx, name, raw, required.has(name));
    fields.set(name, field);
    const up = required.has(name) || name === "model" || field.kind === "file" || COMMON.has(name);
    (up ? primary : advanced).append(field.el);
  }
  const el = h("div.form-fields", {}, primary);
  if (advanced.childElementCount) {
    el.append(h("details.more", {}, h("summary", {}, `More options (${advanced.childElementCount})`), advanced));
  }
  const modeProp = (schema.properties || {}).mode;
  const defaults = Object.fromEntries(Object.entries(schema.properties || {})
    .filter(([name, raw]) => name !== "model" && "default" in raw).map(([name, raw]) => [name, raw.default]));
  return {
    el,
    field: (name) => fields.get(name),
    values() {
      const out = {};
      for (const [name, field] of fields) {
        const value = field.get();
        // A value equal to the declared default is left to the server (some defaults only make
        // sense together with another field, e.g. a webhook's event filter without a webhook).
        if (value !== undefined && !(name in defaults && same(value, defaults[name]))) out[name] = value;
      }
      if (modeProp) out.mode = "async";
      return out;
    },
    set(params, inputs = {}, reveal = true) {
      for (const [name, field] of fields) {
        if (field.kind === "file") {
          const id = inputs[name] || params[`${name}_file_id`];
          if (id) field.set(id);
        } else if (name in params) {
          field.set(params[name]);
        }
      }
      if (reveal) for (const details of el.querySelectorAll("details")) details.open = true;
    },
    missing() {
      return [...fields].filter(([name, f]) => required.has(name) && f.get() === undefined).map(([n]) => n);
    },
  };
}

function makeField(ctx, name, raw, isRequired, prefix = "") {
  const doc = ctx.doc;
  const full = prefix + name;
  let prop = raw;
  let nullable = false;
  if (raw.anyOf) {
    const others = raw.anyOf.filter((s) => s.type !== "null");
    nullable = others.length < raw.anyOf.length;
    prop = others.length === 1 ? { ...others[0], ...strip(raw) } : raw;
  }
  if (prop.$ref === "#/components/schemas/FileRef") {
    const kind = ctx.inputs[full.replace(/\[\d+\]/g, "[]")] || "image";
    return fileField(full, label(name, raw), raw.description || prop.description, isRequired, kind);
  }
  prop = resolve(doc, prop);
  const info = { full, label: label(name, raw), help: raw.description || prop.description, nullable, isRequired };
  if (prop.enum) return choiceField(info, prop.enum, raw.default ?? prop.default);
  if (prop.type === "boolean") return boolField(info, raw.default ?? prop.default);
  if (prop.type === "integer" || prop.type === "number") return numberField(info, prop, raw.default ?? prop.default);
  if (prop.type === "string") return textField(info, prop, raw.default ?? prop.default, LONG.test(name));
  if (prop.type === "array" && prop.items) {
    const item = resolve(doc, prop.items);
    if (item.type === "object" && item.properties) return groupField(ctx, info, item);
    if (item.enum) return checksField(info, item.enum, raw.default ?? prop.default);
    return listField(info, raw.default ?? prop.default);
  }
  if (prop.anyOf) return textField(info, { type: "string" }, raw.default ?? prop.default, false, true);
  return jsonField(info, raw.default ?? prop.default);
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function strip(raw) {
  const { anyOf, ...rest } = raw;
  return rest;
}

function label(name, raw) {
  return raw.title || name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function wrap(info, input, extra) {
  const id = `f-${info.full.replace(/[^\w-]/g, "_")}`;
  input.id = id;
  const help = info.help ? inline(h("small.help", { id: `${id}-help` }), info.help) : null;
  if (help) input.setAttribute("aria-describedby", help.id);
  return h("div.field", { dataset: { field: info.full } },
    h("label", { for: id }, info.label, info.isRequired ? h("span.req", { title: "required" }, " *") : null),
    extra || input, help);
}

function choiceField(info, options, fallback) {
  const select = h("select", { name: info.full },
    info.nullable && fallback === undefined ? h("option", { value: "" }, "(server default)") : null,
    options.map((v) => h("option", { value: String(v) }, String(v))));
  if (fallback !== undefined) select.value = String(fallback);
  return {
    kind: "choice", el: wrap(info, select),
    get: () => (select.value === "" ? undefined : options.find((v) => String(v) === select.value)),
    set: (v) => { select.value = v === null || v === undefined ? "" : String(v); },
  };
}

function boolField(info, fallback) {
  const box = h("input", { type: "checkbox", name: info.full, checked: Boolean(fallback) });
  const el = wrap(info, box);
  el.classList.add("check");
  return { kind: "bool", el, get: () => box.checked, set: (v) => { box.checked = Boolean(v); } };
}

function numberField(info, prop, fallback) {
  const integer = prop.type === "integer";
  const min = prop.minimum ?? (prop.exclusiveMinimum !== undefined ? prop.exclusiveMinimum + (integer ? 1 : 0) : undefined);
  const max = prop.maximum ?? (prop.exclusiveMaximum !== undefined ? prop.exclusiveMaximum - (integer ? 1 : 0) : undefined);
  const step = integer ? 1 : (min !== undefined && max !== undefined && max - min <= 10 ? 0.01 : "any");
  const input = h("input", { type: "number", name: info.full, inputmode: integer ? "numeric" : "decimal",
    min, max, step, required: info.isRequired, placeholder: fallback === undefined ? "default" : undefined });
  if (fallback !== undefined && fallback !== null) input.value = String(fallback);
  let extra = null;
  if (min !== undefined && max !== undefined && max - min <= 1000) {
    const slider = h("input", { type: "range", min, max, step: step === "any" ? 0.01 : step, "aria-hidden": "true",
      tabindex: "-1", value: input.value || String(min) });
    slider.addEventListener("input", () => { input.value = slider.value; });
    input.addEventListener("input", () => { if (input.value !== "") slider.value = input.value; });
    extra = h("div.range", {}, slider, input);
  }
  return {
    kind: "number", el: wrap(info, input, extra),
    get: () => (input.value === "" ? undefined : Number(input.value)),
    set: (v) => {
      input.value = v === null || v === undefined ? "" : String(v);
      input.dispatchEvent(new Event("input"));
    },
  };
}

function textField(info, prop, fallback, long, numeric = false) {
  const attrs = { name: info.full, required: info.isRequired && !numeric, minlength: prop.minLength,
    maxlength: prop.maxLength, placeholder: fallback === undefined ? (info.nullable ? "default" : "") : "" };
  const color = prop.pattern === "^#[0-9a-fA-F]{6}$";
  const input = long ? h("textarea", { ...attrs, rows: 3 }) : h("input", { ...attrs, type: color ? "color" : "text" });
  if (fallback !== undefined && fallback !== null) input.value = String(fallback);
  return {
    kind: "text", el: wrap(info, input),
    get: () => {
      if (input.value === "") return undefined;
      return numeric && /^-?\d+(\.\d+)?$/.test(input.value.trim()) ? Number(input.value) : input.value;
    },
    set: (v) => { input.value = v === null || v === undefined ? "" : String(v); },
  };
}

/** An array of enum values: one checkbox per value. */
function checksField(info, options, fallback) {
  const chosen = new Set(Array.isArray(fallback) ? fallback : []);
  const boxes = options.map((v) => h("input", { type: "checkbox", name: info.full, value: String(v), checked: chosen.has(v) }));
  const group = h("fieldset.checks", {}, h("legend", {}, info.label),
    boxes.map((box, i) => h("label", {}, box, ` ${options[i]}`)));
  const el = h("div.field", { dataset: { field: info.full } }, group, info.help ? inline(h("small.help"), info.help) : null);
  return {
    kind: "checks", el,
    get: () => {
      const values = options.filter((v, i) => boxes[i].checked);
      return values.length ? values : undefined;
    },
    set: (v) => boxes.forEach((box, i) => { box.checked = Array.isArray(v) && v.includes(options[i]); }),
  };
}

function listField(info, fallback) {
  const input = h("input", { type: "text", name: info.full, placeholder: "comma-separated" });
  if (Array.isArray(fallback)) input.value = fallback.join(", ");
  return {
    kind: "list", el: wrap(info, input),
    get: () => (input.value.trim() === "" ? undefined : input.value.split(",").map((s) => s.trim()).filter(Boolean)),
    set: (v) => { input.value = Array.isArray(v) ? v.join(", ") : ""; },
  };
}

function jsonField(info, fallback) {
  const input = h("textarea", { name: info.full, rows: 3, placeholder: "JSON", spellcheck: "false" });
  if (fallback !== undefined && fallback !== null) input.value = JSON.stringify(fallback);
  return {
    kind: "json", el: wrap(info, input),
    get: () => (input.value.trim() === "" ? undefined : JSON.parse(input.value)),
    set: (v) => { input.value = v === undefined || v === null ? "" : JSON.stringify(v); },
  };
}

/** A list of objects (LoRAs: file + scale) as repeatable groups of fields. */
function groupField(ctx, info, item) {
  const list = h("div.groups");
  const rows = [];
  const add = (values) => {
    const fields = new Map();
    const box = h("fieldset.group", {}, h("legend", {}, `${info.label} ${rows.length + 1}`));
    const index = rows.length;
    for (const [name, raw] of Object.entries(item.properties)) {
      const field = makeField(ctx, name, raw, (item.required || []).includes(name), `${info.full}[${index}].`);
      fields.set(name, field);
      box.append(field.el);
      if (values && name in values) field.set(values[name]);
    }
    const row = { box, fields };
    box.append(h("button.link", { type: "button", onclick: () => { rows.splice(rows.indexOf(row), 1); box.remove(); renumber(); } },
      "Remove"));
    rows.push(row);
    list.append(box);
  };
  // Keep names (`loras[0].scale`) and legends in step with the rows after a removal.
  const renumber = () => rows.forEach((row, i) => {
    row.box.querySelector("legend").textContent = `${info.label} ${i + 1}`;
    for (const input of row.box.querySelectorAll("[name]")) {
      input.name = input.name.replace(/^(.*?)\[\d+\]/, `$1[${i}]`);
    }
  });
  const el = h("div.field.repeat", { dataset: { field: info.full } },
    h("span.label", {}, info.label), info.help ? h("small.help", {}, info.help) : null, list,
    h("button.secondary", { type: "button", onclick: () => add() }, `Add ${info.label.replace(/s$/, "").toLowerCase()}`));
  return {
    kind: "group", el,
    get: () => {
      const out = rows.map(({ fields }) => {
        const value = {};
        for (const [name, field] of fields) {
          const v = field.get();
          if (v !== undefined) value[name] = v;
        }
        return value;
      });
      return out.length ? out : undefined;
    },
    set: (values) => {
      rows.splice(0).forEach((r) => r.box.remove());
      for (const v of values || []) add(v);
    },
  };
}

/** The `model` field: a select filled from the capability's model list. */
function modelField(models, raw, op) {
  const info = { full: "model", label: "Model", help: raw.description, isRequired: false };
  const select = h("select", { name: "model" }, models.map((m) => h("option", { value: m.name },
    [m.name, m.default ? " (default)" : "", m.aliases && m.aliases.length ? ` · ${m.aliases.join(", ")}` : "",
      m.ready === false ? " · weights missing" : ""].join(""))));
  const chosen = models.find((m) => m.default) || models[0];
  if (chosen) select.value = chosen.name;
  const note = h("small.note");
  const explain = () => {
    const model = models.find((m) => m.name === select.value);
    note.replaceChildren();
    if (!model) return;
    if (model.ready === false) {
      note.append("Weights missing: run ", h("code", {}, `kiapi activate ${op.capability.name}:${model.name}`),
        " on the server first.");
      note.className = "note warn";
    } else if (model.demo) {
      note.append(`${model.demo}; small sizes and few steps run fastest.`);
      note.className = "note";
    }
  };
  select.addEventListener("change", explain);
  explain();
  const el = wrap(info, select);
  el.append(note);
  return {
    kind: "model", el,
    get: () => select.value || undefined,
    set: (v) => {
      const model = models.find((m) => m.name === v || (m.aliases || []).includes(v));
      if (model) { select.value = model.name; explain(); }
    },
  };
}
