// The /v1 API as the page uses it: the token from session storage, the chosen datacenter, errors
// as ApiError, and blocking queries for everything that is shown live.

const TOKEN_KEY = "roster.token";

export const session = { dc: "" };

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

// The token lives in this tab's session storage only: closing the tab forgets it.
export function setToken(secret) {
  if (secret) sessionStorage.setItem(TOKEN_KEY, secret);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, text) {
    super(text || `HTTP ${status}`);
    this.status = status;
  }
}

const connectionListeners = new Set();
let connected = true;

export function onConnection(fn) {
  connectionListeners.add(fn);
  fn(connected);
}

function setConnected(ok) {
  if (ok === connected) return;
  connected = ok;
  for (const fn of connectionListeners) fn(ok);
}

// `/v1/kv/a b/c` with each segment encoded: keys may hold any character.
export function kvPath(key) {
  return "/v1/kv/" + key.split("/").map(encodeURIComponent).join("/");
}

export function segment(name) {
  return encodeURIComponent(name);
}

function url(path, query) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v === undefined || v === null || v === false) continue;
    u.searchParams.set(k, v === true ? "" : String(v));
  }
  if (session.dc && !u.searchParams.has("dc")) u.searchParams.set("dc", session.dc);
  return u;
}

// One request. Answers { data, index }; `missing: true` lets a 404 answer null (a KV prefix with
// no keys is a 404 that still carries an index to block on).
export async function call(path, { method = "GET", query, body, signal, missing = false, secret } = {}) {
  const headers = {};
  const t = secret ?? token();
  if (t) headers["X-Consul-Token"] = t;
  let res;
  try {
    res = await fetch(url(path, query), { method, headers, body, signal, cache: "no-store" });
  } catch (e) {
    if (signal && signal.aborted) throw e;
    setConnected(false);
    throw new ApiError(0, "The servers cannot be reached");
  }
  let bodyText;
  try {
    bodyText = await res.text();
  } catch (e) {
    if (signal && signal.aborted) throw e;
    setConnected(false);
    throw new ApiError(0, "The connection to the servers broke");
  }
  setConnected(true);
  const index = Number(res.headers.get("X-Consul-Index") || 0);
  if (res.status === 404 && missing) return { data: null, index };
  if (!res.ok) throw new ApiError(res.status, bodyText.trim() || res.statusText);
  let data = null;
  if (bodyText) {
    try {
      data = JSON.parse(bodyText);
    } catch {
      throw new ApiError(res.status, "The servers answered something that is not JSON");
    }
  }
  return { data, index };
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

// Keeps `path` live with blocking queries until `signal` aborts: `onData(data, index)` on the
// first answer and on every change. Unreachable servers and 5xx are retried with backoff (the
// header's indicator shows the connection lost); a 4xx (403: the token may not read this) goes to
// `onError` and ends the watch. An answer without an index cannot block: it is shown once.
export function watch(path, query, signal, onData, onError, opts = {}) {
  (async () => {
    let index = 0;
    let delay = 1000;
    let first = true;
    while (!signal.aborted) {
      const started = Date.now();
      try {
        const q = { ...query };
        if (index > 0) Object.assign(q, { index, wait: "60s" });
        const r = await call(path, { query: q, signal, ...opts });
        delay = 1000;
        if (first || r.index !== index) onData(r.data, r.index);
        first = false;
        if (r.index === 0) return;
        // An index that goes backwards (a restored snapshot) starts the watch over.
        const same = r.index === index;
        index = r.index < index ? 0 : r.index;
        // Never spin: an unchanged answer that came back at once waits a second.
        if (same && Date.now() - started < 1000) await sleep(1000, signal);
      } catch (e) {
        if (signal.aborted) return;
        onError(e);
        if (e.status >= 400 && e.status < 500) return;
        // After a failure the server may be another one (restarted, its index lower): read
        // afresh instead of blocking on an index it may never reach.
        index = 0;
        first = true;
        await sleep(delay, signal);
        delay = Math.min(delay * 2, 10000);
      }
    }
  })();
}

// base64 (the KV API's values) to text; null when the bytes are not UTF-8.
export function decodeValue(b64) {
  if (!b64) return "";
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
}

export function byteLength(b64) {
  return b64 ? atob(b64).length : 0;
}
