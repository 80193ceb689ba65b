// DOM building. Text from the API (service names, KV values, check output) always goes in as
// text nodes, never as HTML, so a key named <script> stays a name.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

// A link the router follows without reloading the page.
export function link(href, ...children) {
  return h("a", { href, "data-nav": true }, ...children);
}

export const STATUSES = ["passing", "warning", "critical"];

export function badge(status, text) {
  const known = STATUSES.includes(status) ? status : "critical";
  return h("span", { class: `badge badge-${known}` }, text ?? status);
}

// Passing/warning/critical counts as badges, the worst first; "no checks" when all are zero.
export function healthBadges(counts) {
  const parts = ["critical", "warning", "passing"]
    .filter((s) => counts[s] > 0)
    .map((s) => badge(s, `${counts[s]} ${s}`));
  return parts.length ? h("span", { class: "badges" }, parts) : h("span", { class: "muted" }, "no checks");
}

export function worst(counts) {
  return ["critical", "warning", "passing"].find((s) => counts[s] > 0) || "passing";
}

// A table in a horizontally scrolling box, so a narrow screen scrolls the table, not the page.
export function table(caption, headers, rows) {
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      {},
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))),
    ),
  );
}

// A message in the page: "error" ones are announced at once.
export function message(kind, ...text) {
  return h("p", { class: `msg msg-${kind}`, role: kind === "error" ? "alert" : "status" }, ...text);
}

export function field(id, label, input, hint) {
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    input,
    hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null,
  );
}

export function dl(pairs) {
  return h(
    "dl",
    { class: "pairs" },
    pairs.filter(([, v]) => v !== undefined && v !== null && v !== "").map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
  );
}

export function tags(list) {
  return list && list.length ? h("span", { class: "tags" }, list.map((t) => h("span", { class: "tag" }, t))) : "";
}

export function empty(text) {
  return h("p", { class: "muted" }, text);
}
