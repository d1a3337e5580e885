// What the server offers, read at run time: the root OpenAPI index of capabilities, each
// capability's OpenAPI document (operations and request schemas) and its model list.

import { get } from "./api.js";

let index = null;
const documents = new Map();

/** The capabilities (root /openapi.json `x-kiapi-capabilities`), fetched once. */
export async function capabilities() {
  if (!index) index = (await get("/openapi.json"))["x-kiapi-capabilities"] || [];
  return index;
}

export async function capability(name) {
  const found = (await capabilities()).find((c) => c.name === name);
  if (!found) throw new Error(`no capability '${name}' on this server`);
  return found;
}

export async function documentOf(cap) {
  if (!documents.has(cap.name)) documents.set(cap.name, await get(cap.openapi));
  return documents.get(cap.name);
}

export function models(cap) { return get(cap.models); }

/** The operations of a capability: name, path, summary, description, request schema. */
export async function operations(cap) {
  const doc = await documentOf(cap);
  return cap.operations.map((path) => {
    const post = doc.paths[path].post;
    const media = post.requestBody.content["application/json"];
    const example = media.examples && media.examples.default ? media.examples.default.value : null;
    return {
      name: path.split("/").pop(), path, capability: cap, summary: post.summary, description: post.description,
      blurb: /^`POST /.test(post.description || "") ? post.summary : (post.description || "").split("\n\n")[0] || post.summary,
      schema: resolve(doc, media.schema), doc, example,
      alwaysAsync: !(post.parameters || []).some((p) => p.name === "Accept"),
      inputs: (cap.inputs || {})[path.split("/").pop()] || {},
      jobType: (cap.job_types || {})[path.split("/").pop()],
    };
  });
}

export async function operation(capName, opName) {
  const found = (await operations(await capability(capName))).find((op) => op.name === opName);
  if (!found) throw new Error(`no operation '${opName}' in capability '${capName}'`);
  return found;
}

/** The operation that makes jobs of this type (for "recall parameters"). */
export async function operationForJob(job) {
  for (const cap of await capabilities()) {
    if (job.capability && cap.name !== job.capability) continue;
    for (const [name, type] of Object.entries(cap.job_types || {})) {
      if (type === job.type) return operation(cap.name, name);
    }
  }
  return null;
}

/** Operations that take a file input, with the field to put it in: targets for "use as input". */
export async function fileTargets() {
  const out = [];
  for (const cap of await capabilities()) {
    for (const op of await operations(cap)) {
      for (const [name, prop] of Object.entries(op.schema.properties || {})) {
        if (isFileRef(op.doc, prop) && (op.inputs[name] || "image") === "image") out.push({ op, field: name });
      }
    }
  }
  return out;
}

export function resolve(doc, schema) {
  let out = schema;
  const seen = new Set();
  while (out && out.$ref && !seen.has(out.$ref)) {
    seen.add(out.$ref);
    const target = out.$ref.replace("#/components/schemas/", "");
    const { $ref, ...rest } = out;
    out = { ...doc.components.schemas[target], ...rest, "x-ref": target };
  }
  return out;
}

export function isFileRef(doc, schema) {
  return Boolean(schema) && schema.$ref === "#/components/schemas/FileRef";
}
