// Small DOM helpers: elements from data (text is always set as text, never parsed as HTML).

/** h("button.primary", {onclick, type: "button"}, "Run") */
export function h(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) { el.replaceChildren(); return el; }

export function ago(seconds) {
  const delta = Math.max(0, Date.now() / 1000 - seconds);
  if (delta < 60) return `${Math.round(delta)} s ago`;
  if (delta < 3600) return `${Math.round(delta / 60)} min ago`;
  if (delta < 86400) return `${Math.round(delta / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleString();
}

export function duration(seconds) {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 ** 2).toFixed(1)} MB`;
}

/** A progress bar: value in [0, 1] or null (indeterminate). */
export function bar(value, label) {
  const el = h("progress", { max: 1, "aria-label": label || "progress" });
  if (value !== null && value !== undefined) el.value = value;
  return el;
}

/** An error box for an ApiError or any Error. */
export function errorBox(error) {
  const body = (error && error.body) || {};
  return h("div.error", { role: "alert" },
    h("strong", {}, body.code ? `${body.code}: ` : "Error: "), error.message || String(error),
    body.job_id ? h("span.muted", {}, ` (job ${body.job_id})`) : null);
}

/** Very small Markdown: headings, lists, code blocks, paragraphs, `code`, **bold**, links. */
export function markdown(text) {
  const out = h("div.guide");
  const lines = (text || "").split("\n");
  let list = null;
  let para = [];
  const flush = () => {
    if (para.length) out.append(inline(h("p"), para.join(" ")));
    para = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.startsWith("```")) {
      flush(); list = null;
      const code = [];
      while (++i < lines.length && !lines[i].startsWith("```")) code.push(lines[i]);
      out.append(h("pre", {}, h("code", {}, code.join("\n"))));
    } else if (/^#{1,6} /.test(line)) {
      flush(); list = null;
      const level = Math.min(6, line.indexOf(" ") + 1); // "# " is an h2 inside a page
      out.append(inline(h(`h${level}`), line.replace(/^#+ /, "")));
    } else if (/^\s*[-*] /.test(line)) {
      flush();
      if (!list) { list = h("ul"); out.append(list); }
      list.append(inline(h("li"), line.replace(/^\s*[-*] /, "")));
    } else if (/^\s+\S/.test(line) && list) {
      const item = list.lastElementChild;
      inline(item, " " + line.trim());
    } else if (!line.trim()) {
      flush(); list = null;
    } else {
      list = null; para.push(line.trim());
    }
  }
  flush();
  return out;
}

/** Append `text` to `el` with inline Markdown (`code`, **bold**, links) as elements. */
export function inline(el, text) {
  const pattern = /(`[^`]+`|\*\*[^*]+\*\*|\[[^\]]+\]\([^)]+\))/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    el.append(text.slice(last, match.index));
    const token = match[0];
    if (token.startsWith("`")) el.append(h("code", {}, token.slice(1, -1)));
    else if (token.startsWith("**")) el.append(h("strong", {}, token.slice(2, -2)));
    else {
      const [, label, href] = token.match(/\[([^\]]+)\]\(([^)]+)\)/);
      el.append(/^(\/(?!\/)|https?:|#)/.test(href) ? h("a", { href }, label) : label);
    }
    last = match.index + token.length;
  }
  el.append(text.slice(last));
  return el;
}
