// HTTP access to the kiapi server: the bearer token, JSON calls, uploads, job event streams
// and artifact bytes as blob URLs (an <img src> cannot carry an Authorization header).

const TOKEN_KEY = "kiapi.token";

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

let askToken = null; // set by the app: () => Promise<string> (the token dialog)

export function onTokenNeeded(fn) { askToken = fn; }
export function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra) {
  const out = { ...extra };
  const t = token();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

/** fetch() with the token; a 401 asks for the token once and retries. */
export async function request(method, path, { json, body, headers: extra, signal } = {}) {
  const init = { method, headers: headers(extra), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  let response = await fetch(path, init);
  if (response.status === 401 && askToken) {
    setToken(await askToken("The server refused the token."));
    init.headers = { ...init.headers, ...headers() };
    response = await fetch(path, init);
  }
  return response;
}

async function decode(response) {
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, typeof data === "object" ? data : { detail: data });
  return data;
}

export async function get(path, options) { return decode(await request("GET", path, options)); }
export async function post(path, json, options = {}) { return decode(await request("POST", path, { ...options, json })); }
export async function del(path) { return decode(await request("DELETE", path)); }

/** Store a File or Blob in the Files API; resolves to its FileRecord. */
export async function upload(file, name) {
  const form = new FormData();
  form.append("file", file, name || file.name || "upload.bin");
  return decode(await request("POST", "/v1/files", { body: form }));
}

/**
 * Follow a job: calls onJob(job) on every change until it ends; resolves to the final Job.
 * Reads the server-sent events with fetch (EventSource cannot send the token) and falls back
 * to long polling if the stream breaks.
 */
export async function follow(jobId, onJob, signal) {
  let last = null;
  try {
    const response = await request("GET", `/v1/jobs/${jobId}/events`, { signal });
    if (!response.ok || !response.body) throw new ApiError(response.status, null);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (data) { last = JSON.parse(data); onJob(last); }
      }
    }
  } catch (error) {
    if (signal && signal.aborted) throw error;
  }
  while (!last || !isFinished(last)) {
    if (signal && signal.aborted) throw new DOMException("aborted", "AbortError");
    last = await get(`/v1/jobs/${jobId}?wait=10`, { signal });
    onJob(last);
  }
  return last;
}

export function isFinished(job) {
  return ["succeeded", "failed", "canceled"].includes(job.status);
}

const blobs = new Map(); // file id -> object URL (stored files never change, so they are reused)
const MAX_BLOBS = 300; // beyond this the oldest URLs are revoked (images already shown stay shown)

/** An object URL for a stored file's bytes (works with a token, unlike a plain URL). */
export async function blobUrl(fileId) {
  if (!blobs.has(fileId)) {
    const response = await request("GET", `/v1/files/${fileId}/download`);
    if (!response.ok) throw new ApiError(response.status, null);
    blobs.set(fileId, URL.createObjectURL(await response.blob()));
    for (const [old, url] of blobs) {
      if (blobs.size <= MAX_BLOBS) break;
      URL.revokeObjectURL(url);
      blobs.delete(old);
    }
  }
  return blobs.get(fileId);
}
