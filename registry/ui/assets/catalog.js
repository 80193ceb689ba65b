// Services, nodes and sessions: lists and details, kept live by blocking queries.

import { call, watch, segment } from "./api.js";
import { h, link, replace, table, badge, healthBadges, worst, dl, tags, empty, message, field, STATUSES } from "./dom.js";
import { base, showError, notify } from "./shell.js";

function searchBox(id, label, placeholder, onChange) {
  const input = h("input", { id, type: "search", placeholder, autocomplete: "off", oninput: onChange });
  return [field(id, label, input), input];
}

function statusFilter(id, onChange) {
  const select = h(
    "select",
    { id, onchange: onChange },
    h("option", { value: "" }, "Any"),
    STATUSES.map((s) => h("option", { value: s }, s)),
  );
  return [field(id, "Health", select), select];
}

function counts(checks) {
  const c = { passing: 0, warning: 0, critical: 0 };
  for (const x of checks) c[x.Status in c ? x.Status : "critical"] += 1;
  return c;
}

export function services(ctx) {
  let data = null;
  const list = h("div", { class: "results" }, h("p", {}, "Loading…"));
  const [searchField, search] = searchBox("service-search", "Search", "Name or tag", render);
  const [statusField, status] = statusFilter("service-health", render);
  replace(ctx.main, h("h1", {}, "Services"), h("div", { class: "filters" }, searchField, statusField), list);

  function render() {
    if (!data) return;
    const q = search.value.trim().toLowerCase();
    const rows = data
      .map((s) => ({ s, c: { passing: s.ChecksPassing, warning: s.ChecksWarning, critical: s.ChecksCritical } }))
      .filter(({ s }) => !q || s.Name.toLowerCase().includes(q) || (s.Tags || []).some((t) => t.toLowerCase().includes(q)))
      .filter(({ c }) => !status.value || worst(c) === status.value);
    replace(
      list,
      rows.length
        ? table(
            "Services",
            ["Service", "Health", "Instances", "Tags"],
            rows.map(({ s, c }) => [link(`${base()}/services/${segment(s.Name)}`, s.Name), healthBadges(c), String(s.InstanceCount), tags(s.Tags)]),
          )
        : empty(data.length ? "No service matches." : "No services are registered."),
      h("p", { class: "muted" }, `${rows.length} of ${data.length} services`),
    );
  }
  watch("/v1/internal/ui/services", {}, ctx.signal, (d) => { data = d || []; render(); }, (e) => showError(list, e));
}

export function service(ctx, name) {
  const list = h("div", {}, h("p", {}, "Loading…"));
  replace(ctx.main, h("p", { class: "crumbs" }, link(`${base()}/services`, "Services"), " / "), h("h1", {}, name), list);
  watch(`/v1/health/service/${segment(name)}`, {}, ctx.signal, (entries) => {
    entries = entries || [];
    if (!entries.length) return replace(list, empty("This service has no instances (it may have been deregistered)."));
    const all = entries.flatMap((e) => e.Checks || []);
    replace(
      list,
      h("p", {}, `${entries.length} instance${entries.length === 1 ? "" : "s"} `, healthBadges(counts(all))),
      entries.map((e) => instance(e)),
    );
  }, (e) => showError(list, e));
}

function instance(e) {
  const s = e.Service;
  const address = `${s.Address || e.Node.Address}:${s.Port}`;
  const checks = e.Checks || [];
  return h(
    "section",
    { class: "card", "aria-label": `Instance ${s.ID} on ${e.Node.Node}` },
    h("h2", {}, s.ID, " ", h("span", { class: "muted" }, "on "), link(`${base()}/nodes/${segment(e.Node.Node)}`, e.Node.Node), " ", badge(worst(counts(checks)))),
    dl([
      ["Address", address],
      ["Tags", tags(s.Tags)],
      ...Object.entries(s.Meta || {}).map(([k, v]) => [`Meta ${k}`, v]),
    ]),
    checkList(checks),
  );
}

function checkList(checks) {
  if (!checks.length) return empty("No checks.");
  return h(
    "ul",
    { class: "checks" },
    checks.map((c) =>
      h(
        "li",
        { class: "check" },
        badge(c.Status),
        " ",
        h("strong", {}, c.Name || c.CheckID),
        " ",
        h("span", { class: "muted" }, c.CheckID, c.ServiceID ? "" : " (node check)"),
        c.Output ? h("pre", { class: "output" }, c.Output) : null,
      ),
    ),
  );
}

export function nodes(ctx) {
  let list = null;
  let checks = [];
  const out = h("div", { class: "results" }, h("p", {}, "Loading…"));
  const [searchField, search] = searchBox("node-search", "Search", "Name or address", render);
  const [statusField, status] = statusFilter("node-health", render);
  replace(ctx.main, h("h1", {}, "Nodes"), h("div", { class: "filters" }, searchField, statusField), out);
  function render() {
    if (!list) return;
    const q = search.value.trim().toLowerCase();
    const rows = list
      .map((n) => ({ n, c: counts(checks.filter((c) => c.Node === n.Node)) }))
      .filter(({ n }) => !q || n.Node.toLowerCase().includes(q) || n.Address.toLowerCase().includes(q))
      .filter(({ c }) => !status.value || worst(c) === status.value);
    replace(
      out,
      rows.length
        ? table("Nodes", ["Node", "Address", "Health"], rows.map(({ n, c }) => [link(`${base()}/nodes/${segment(n.Node)}`, n.Node), n.Address, healthBadges(c)]))
        : empty(list.length ? "No node matches." : "No nodes are registered."),
      h("p", { class: "muted" }, `${rows.length} of ${list.length} nodes`),
    );
  }
  watch("/v1/catalog/nodes", {}, ctx.signal, (d) => { list = d || []; render(); }, (e) => showError(out, e));
  watch("/v1/health/state/any", {}, ctx.signal, (d) => { checks = d || []; render(); }, (e) => showError(out, e));
}

export function node(ctx, name) {
  const info = h("div", {}, h("p", {}, "Loading…"));
  const services = h("div");
  const checks = h("div");
  const sessionsBox = h("div");
  replace(
    ctx.main,
    h("p", { class: "crumbs" }, link(`${base()}/nodes`, "Nodes"), " / "),
    h("h1", {}, name),
    info,
    h("h2", {}, "Services"), services,
    h("h2", {}, "Checks"), checks,
    h("h2", {}, "Sessions"), sessionsBox,
  );
  watch(`/v1/catalog/node/${segment(name)}`, {}, ctx.signal, (d) => {
    if (!d || !d.Node) {
      replace(info, message("error", "No node of this name is registered."));
      replace(services);
      return;
    }
    replace(info, dl([["Address", d.Node.Address], ["Datacenter", d.Node.Datacenter], ...Object.entries(d.Node.Meta || {}).map(([k, v]) => [`Meta ${k}`, v])]));
    const list = Object.values(d.Services || {});
    replace(
      services,
      list.length
        ? table("Services on this node", ["Service", "ID", "Port", "Tags"], list.map((s) => [link(`${base()}/services/${segment(s.Service)}`, s.Service), s.ID, String(s.Port), tags(s.Tags)]))
        : empty("No services on this node."),
    );
  }, (e) => showError(info, e));
  watch(`/v1/health/node/${segment(name)}`, {}, ctx.signal, (d) => replace(checks, checkList(d || [])), (e) => showError(checks, e));
  watch(`/v1/session/node/${segment(name)}`, {}, ctx.signal, (d) => replace(sessionsBox, sessionTable(d || [], false)), (e) => showError(sessionsBox, e));
}

export function sessions(ctx) {
  const out = h("div", {}, h("p", {}, "Loading…"));
  replace(ctx.main, h("h1", {}, "Sessions"), out);
  watch("/v1/session/list", {}, ctx.signal, (d) => replace(out, sessionTable(d || [], true)), (e) => showError(out, e));
}

function sessionTable(list, withNode) {
  if (!list.length) return empty("No sessions.");
  const headers = ["Session", ...(withNode ? ["Node"] : []), "Name", "Behavior", "TTL", "Lock delay", ""];
  return table(
    "Sessions",
    headers,
    list.map((s) => [
      h("code", {}, s.ID),
      ...(withNode ? [link(`${base()}/nodes/${segment(s.Node)}`, s.Node)] : []),
      s.Name || "",
      s.Behavior,
      s.TTL || "none",
      `${Math.round((s.LockDelay || 0) / 1e9)} s`,
      h("button", { type: "button", class: "danger", "aria-label": `Invalidate session ${s.ID}`, onclick: () => invalidate(s) }, "Invalidate"),
    ]),
  );
}

async function invalidate(s) {
  if (!confirm(`Invalidate session ${s.ID}? Locks it holds are released (or their keys deleted, by its behavior).`)) return;
  try {
    await call(`/v1/session/destroy/${segment(s.ID)}`, { method: "PUT" });
    notify(`Session ${s.ID} invalidated.`);
  } catch (e) {
    notify(`Could not invalidate the session: ${e.message}`);
  }
}
