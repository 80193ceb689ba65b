// The shell: header (navigation, datacenter, connection, login), the router (paths under
// /ui/<dc>/...), and the login page. Each page is a function of a context whose `signal` aborts
// its blocking queries when the user navigates away.

import { call, onConnection, session, setToken, token } from "./api.js";
import { base, navigate, notify } from "./shell.js";
import { h, link, message, replace, field } from "./dom.js";
import { services, service, nodes, node, sessions } from "./catalog.js";
import { kv } from "./kv.js";
import { acl } from "./acl.js";
import { servers } from "./servers.js";

const main = document.getElementById("main");
const NAV = [
  ["services", "Services"],
  ["nodes", "Nodes"],
  ["kv", "Key/Value"],
  ["sessions", "Sessions"],
  ["acl", "Access control"],
  ["servers", "Servers"],
];
let current = null;

const PAGES = {
  services: (ctx) => (ctx.rest.length ? service(ctx, ctx.rest.join("/")) : services(ctx)),
  nodes: (ctx) => (ctx.rest.length ? node(ctx, ctx.rest.join("/")) : nodes(ctx)),
  kv: (ctx) => kv(ctx),
  sessions: (ctx) => sessions(ctx),
  acl: (ctx) => acl(ctx),
  servers: (ctx) => servers(ctx),
  login: (ctx) => login(ctx),
};

function route(moveFocus) {
  const parts = location.pathname.replace(/^\/ui\/?/, "").split("/");
  const [dc, section, ...rest] = parts.map((p) => { try { return decodeURIComponent(p); } catch { return p; } });
  if (!dc || !section) {
    history.replaceState(null, "", `/ui/${encodeURIComponent(dc || session.dc)}/services`);
    return route(moveFocus);
  }
  if (dc !== session.dc) {
    session.dc = dc;
    renderDatacenters();
  }
  if (current) current.abort();
  current = new AbortController();
  renderNav();
  const page = PAGES[section];
  const ctx = { main, signal: current.signal, section, rest: rest.filter(Boolean), path: rest.join("/"), params: new URLSearchParams(location.search) };
  if (!page) {
    replace(main, h("h1", {}, "Not found"), message("error", `There is no page "${section}". `, link(`${base()}/services`, "Go to services"), "."));
  } else {
    page(ctx);
  }
  const titled = main.querySelector("h1");
  document.title = titled ? `${titled.textContent} · Roster` : "Roster";
  if (moveFocus) main.focus();
}

function renderNav() {
  const ul = document.getElementById("nav");
  const section = location.pathname.replace(/^\/ui\/?/, "").split("/")[1];
  replace(
    ul,
    NAV.map(([id, label]) => {
      const a = link(`${base()}/${id}`, label);
      a.dataset.section = id;
      if (id === section) a.setAttribute("aria-current", "page");
      return h("li", {}, a);
    }),
  );
}

let datacenters = [];
function renderDatacenters() {
  const select = document.getElementById("dc");
  const list = datacenters.includes(session.dc) || !session.dc ? datacenters : [session.dc, ...datacenters];
  replace(select, list.map((d) => h("option", { value: d, selected: d === session.dc }, d)));
  // One datacenter: nothing to switch to, but the name stays visible.
  select.disabled = list.length < 2;
}

function renderLogin() {
  const button = document.getElementById("login");
  button.textContent = token() ? "Log out" : "Log in";
}

function login(ctx) {
  const next = ctx.params.get("next") || `${base()}/services`;
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true, "aria-describedby": "token-hint" });
  const out = h("div");
  const form = h(
    "form",
    { class: "form", novalidate: true },
    field("token", "Token (its SecretID)", input, "Kept in this tab's session storage only; closing the tab forgets it."),
    h("button", { type: "submit" }, "Log in"),
    out,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const secret = input.value.trim();
    if (!secret) return replace(out, message("error", "Paste a token's SecretID first."));
    try {
      const { data } = await call("/v1/acl/token/self", { secret });
      setToken(secret);
      renderLogin();
      notify(`Logged in${data && data.Description ? ` as ${data.Description}` : ""}.`);
      navigate(next.startsWith("/ui/") ? next : `${base()}/services`);
    } catch (e) {
      if (e.status === 403) replace(out, message("error", "The cluster does not know this token (ACL not found)."));
      else if (e.status === 401) replace(out, message("error", "ACLs are disabled on this cluster: no token is needed."));
      else replace(out, message("error", `Could not check the token: ${e.message}`));
    }
  });
  replace(ctx.main, h("h1", {}, "Log in"), form);
  input.focus();
}

async function start() {
  try {
    const { data } = await call("/v1/catalog/datacenters");
    datacenters = Array.isArray(data) ? data : [];
  } catch (e) {
    datacenters = [];
  }
  if (!session.dc) session.dc = datacenters[0] || "dc1";
  const conn = document.getElementById("conn");
  onConnection((ok) => {
    conn.textContent = ok ? "Live" : "Connection lost: retrying…";
    conn.className = ok ? "conn conn-ok" : "conn conn-lost";
  });
  document.getElementById("dc").addEventListener("change", (ev) => {
    const parts = location.pathname.replace(/^\/ui\/?/, "").split("/");
    navigate(`/ui/${encodeURIComponent(ev.target.value)}/${parts[1] || "services"}`);
  });
  document.getElementById("login").addEventListener("click", () => {
    if (token()) {
      setToken("");
      renderLogin();
      notify("Logged out.");
      route(false);
    } else {
      navigate(`${base()}/login?next=${encodeURIComponent(location.pathname)}`);
    }
  });
  document.addEventListener("click", (ev) => {
    const a = ev.target.closest && ev.target.closest("a[data-nav]");
    if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
    const to = new URL(a.href, location.href);
    if (to.origin !== location.origin) return;
    ev.preventDefault();
    navigate(to.pathname + to.search);
  });
  window.addEventListener("popstate", () => route(true));
  window.addEventListener("roster:navigate", () => route(true));
  const first = location.pathname.replace(/^\/ui\/?/, "").split("/")[0];
  if (first) session.dc = decodeURIComponent(first);
  renderDatacenters();
  renderLogin();
  route(false);
}

start();
