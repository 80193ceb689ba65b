// Access control: tokens, policies and roles; list, create, edit, delete. Each list is watched
// live; forms show the servers' own message when they refuse (a rule that does not parse).

import { call, watch, segment } from "./api.js";
import { h, link, replace, table, empty, message, field, tags } from "./dom.js";
import { base, showError, notify, navigate } from "./shell.js";

const KINDS = {
  tokens: { one: "token", api: "token", title: "Tokens", id: "AccessorID" },
  policies: { one: "policy", api: "policy", title: "Policies", id: "ID" },
  roles: { one: "role", api: "role", title: "Roles", id: "ID" },
};

export function acl(ctx) {
  const [kind = "tokens", id] = ctx.rest;
  if (!KINDS[kind]) return navigate(`${base()}/acl/tokens`, { swap: true });
  const sub = h(
    "nav",
    { class: "subnav", "aria-label": "Access control" },
    Object.entries(KINDS).map(([k, v]) => {
      const a = link(`${base()}/acl/${k}`, v.title);
      if (k === kind) a.setAttribute("aria-current", "page");
      return a;
    }),
  );
  const body = h("div", {}, h("p", {}, "Loading…"));
  replace(ctx.main, h("h1", {}, id ? (id === "new" ? `New ${KINDS[kind].one}` : `Edit ${KINDS[kind].one}`) : "Access control"), sub, body);
  if (id) edit(ctx, kind, id, body);
  else list(ctx, kind, body);
}

function aclError(el, e) {
  if (e.status === 401) replace(el, message("info", "ACLs are disabled on this cluster: there are no tokens, policies or roles to manage."));
  else showError(el, e);
}

const names = (list) => (list || []).map((x) => x.Name || x.ID).join(", ");

function list(ctx, kind, body) {
  const k = KINDS[kind];
  const create = link(`${base()}/acl/${kind}/new`, `Create a ${k.one}`);
  create.className = "button";
  watch(`/v1/acl/${kind}`, {}, ctx.signal, (items) => {
    items = items || [];
    let rows;
    if (kind === "tokens") {
      rows = items.map((t) => [link(`${base()}/acl/tokens/${segment(t.AccessorID)}`, h("code", {}, t.AccessorID)), t.Description || "", names(t.Policies), names(t.Roles), t.Local ? "local" : "global"]);
    } else if (kind === "policies") {
      rows = items.map((p) => [link(`${base()}/acl/policies/${segment(p.ID)}`, p.Name), p.Description || "", tags(p.Datacenters)]);
    } else {
      rows = items.map((r) => [link(`${base()}/acl/roles/${segment(r.ID)}`, r.Name), r.Description || "", names(r.Policies)]);
    }
    const headers = { tokens: ["Accessor ID", "Description", "Policies", "Roles", "Scope"], policies: ["Name", "Description", "Datacenters"], roles: ["Name", "Description", "Policies"] }[kind];
    replace(body, h("p", {}, create), rows.length ? table(k.title, headers, rows) : empty(`No ${kind}.`));
  }, (e) => aclError(body, e));
}

// Checkboxes for linking policies or roles by ID.
function picker(id, legend, all, chosen) {
  const ids = new Set((chosen || []).map((x) => x.ID));
  const boxes = all.map((x) => {
    const box = h("input", { type: "checkbox", id: `${id}-${x.ID}`, value: x.ID, checked: ids.has(x.ID) });
    return [box, h("label", { for: `${id}-${x.ID}` }, x.Name)];
  });
  const set = h("fieldset", { class: "picker" }, h("legend", {}, legend), boxes.length ? boxes.map(([b, l]) => h("span", { class: "pick" }, b, l)) : h("span", { class: "muted" }, "none exist"));
  return [set, () => boxes.filter(([b]) => b.checked).map(([b]) => ({ ID: b.value }))];
}

async function edit(ctx, kind, id, body) {
  const k = KINDS[kind];
  const isNew = id === "new";
  let item = {};
  let policies = [];
  let roles = [];
  try {
    if (!isNew) item = (await call(`/v1/acl/${k.api}/${segment(id)}`)).data || {};
    if (kind !== "policies") policies = (await call("/v1/acl/policies")).data || [];
    if (kind === "tokens") roles = (await call("/v1/acl/roles")).data || [];
  } catch (e) {
    return aclError(body, e);
  }
  const out = h("div");
  const fields = [];
  const read = [];
  const text = (name, label, value, opts = {}) => {
    const input = opts.area
      ? h("textarea", { id: `acl-${name}`, rows: 10, spellcheck: "false", class: "code" }, value || "")
      : h("input", { id: `acl-${name}`, type: "text", value: value || "", autocomplete: "off", required: opts.required });
    fields.push(field(`acl-${name}`, label, input, opts.hint));
    read.push((o) => { o[name] = opts.list ? input.value.split(",").map((s) => s.trim()).filter(Boolean) : input.value; });
  };
  if (kind === "tokens") {
    if (!isNew) fields.push(h("p", {}, "Accessor ID ", h("code", {}, item.AccessorID)));
    text("Description", "Description", item.Description);
    const [p, chosenPolicies] = picker("acl-policies", "Policies", policies, item.Policies);
    const [r, chosenRoles] = picker("acl-roles", "Roles", roles, item.Roles);
    fields.push(p, r);
    read.push((o) => { o.Policies = chosenPolicies(); o.Roles = chosenRoles(); });
    if (isNew) {
      const local = h("input", { type: "checkbox", id: "acl-local" });
      fields.push(h("div", { class: "field" }, local, h("label", { for: "acl-local" }, "Local to this datacenter")));
      read.push((o) => { o.Local = local.checked; });
    }
  } else if (kind === "policies") {
    text("Name", "Name", item.Name, { required: true });
    text("Description", "Description", item.Description);
    text("Rules", "Rules (HCL or JSON)", item.Rules, { area: true, hint: 'For example: key_prefix "app/" { policy = "write" }' });
    text("Datacenters", "Datacenters (comma-separated; empty: all)", (item.Datacenters || []).join(", "), { list: true });
  } else {
    text("Name", "Name", item.Name, { required: true });
    text("Description", "Description", item.Description);
    const [p, chosenPolicies] = picker("acl-policies", "Policies", policies, item.Policies);
    fields.push(p);
    read.push((o) => { o.Policies = chosenPolicies(); });
  }
  const remove = isNew
    ? null
    : h("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Delete this ${k.one}?`)) return;
        try {
          await call(`/v1/acl/${k.api}/${segment(id)}`, { method: "DELETE" });
          notify(`Deleted the ${k.one}.`);
          navigate(`${base()}/acl/${kind}`);
        } catch (e) {
          replace(out, message("error", `Not deleted: ${e.message}`));
        }
      } }, "Delete");
  const form = h("form", { class: "form", novalidate: true }, fields, h("div", { class: "buttons" }, h("button", { type: "submit" }, isNew ? "Create" : "Save"), remove), out);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const o = isNew ? {} : { ...item };
    for (const r of read) r(o);
    if (kind !== "tokens" && !o.Name) return replace(out, message("error", `Give the ${k.one} a name.`));
    try {
      const path = isNew ? `/v1/acl/${k.api}` : `/v1/acl/${k.api}/${segment(id)}`;
      const { data } = await call(path, { method: "PUT", body: JSON.stringify(o) });
      if (kind === "tokens" && isNew) {
        // The one time the page shows a new token's secret.
        replace(body, message("ok", "Token created. Its secret (shown once here): ", h("code", { id: "new-secret" }, data.SecretID)), h("p", {}, link(`${base()}/acl/tokens`, "Back to tokens")));
        return;
      }
      notify(`Saved the ${k.one}.`);
      navigate(`${base()}/acl/${kind}`);
    } catch (e) {
      replace(out, message("error", `Not saved: ${e.message}`));
    }
  });
  replace(body, form);
}
