// The key/value store as a tree: folders are prefixes up to a "/". A folder's listing and an open
// key are watched live; saves and deletes are check-and-set against the index the page read, so
// a concurrent edit is reported instead of overwritten.

import { call, watch, kvPath, decodeValue, byteLength } from "./api.js";
import { h, link, replace, table, empty, message, field, dl } from "./dom.js";
import { base, showError, notify, navigate } from "./shell.js";

function href(key) {
  return `${base()}/kv/${key.split("/").map(encodeURIComponent).join("/")}`;
}

function crumbs(path) {
  const parts = path.split("/").filter(Boolean);
  const out = [link(`${base()}/kv/`, "Key/Value")];
  let prefix = "";
  for (const p of parts.slice(0, path.endsWith("/") ? parts.length : parts.length - 1)) {
    prefix += `${p}/`;
    out.push(" / ", link(href(prefix), p));
  }
  return h("p", { class: "crumbs" }, out, " /");
}

export function kv(ctx) {
  const path = ctx.path;
  if (path === "" || path.endsWith("/")) folder(ctx, path);
  else key(ctx, path);
}

// What is wrong with a value in the chosen format, or null.
export function invalidJson(text) {
  try {
    JSON.parse(text);
    return null;
  } catch (e) {
    return e.message;
  }
}

function looksJson(text) {
  const t = text.trim();
  return (t.startsWith("{") || t.startsWith("[")) && invalidJson(t) === null;
}

// Plain text or JSON, as radio buttons.
function formatChooser(name, json) {
  const plain = h("input", { type: "radio", name, id: `${name}-plain`, value: "plain", checked: !json });
  const js = h("input", { type: "radio", name, id: `${name}-json`, value: "json", checked: json });
  const set = h(
    "fieldset",
    { class: "format" },
    h("legend", {}, "Format"),
    plain, h("label", { for: `${name}-plain` }, "Plain text"),
    js, h("label", { for: `${name}-json` }, "JSON (checked before saving)"),
  );
  return [set, () => js.checked];
}

function folder(ctx, prefix) {
  const listing = h("div", {}, h("p", {}, "Loading…"));
  const nameInput = h("input", { id: "kv-new-name", type: "text", autocomplete: "off", "aria-describedby": "kv-new-name-hint" });
  const valueInput = h("textarea", { id: "kv-new-value", rows: 6 });
  const [format, isJson] = formatChooser("kv-new-format", false);
  const out = h("div");
  const form = h(
    "form",
    { class: "form", "aria-labelledby": "kv-new-title", novalidate: true },
    h("h2", { id: "kv-new-title" }, "Create a key"),
    field("kv-new-name", `Name (under ${prefix || "the root"})`, nameInput, "End the name with / to create a folder."),
    field("kv-new-value", "Value", valueInput),
    format,
    h("button", { type: "submit" }, "Create"),
    out,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = nameInput.value;
    const value = valueInput.value;
    if (!name) return replace(out, message("error", "Give the key a name."));
    if (name.startsWith("/")) return replace(out, message("error", "A key may not start with /: names are relative to the folder you are in."));
    const full = prefix + name;
    const folderOnly = full.endsWith("/");
    if (!folderOnly && isJson()) {
      const bad = invalidJson(value);
      if (bad) return replace(out, message("error", `The value is not valid JSON: ${bad}`));
    }
    try {
      // cas=0: create only, never overwrite a key someone else made meanwhile.
      const { data } = await call(kvPath(full), { method: "PUT", query: { cas: 0 }, body: folderOnly ? "" : value });
      if (data !== true) return replace(out, message("error", `A key named ${full} already exists: open it to edit it.`));
      notify(`Created ${full}.`);
      navigate(href(full));
    } catch (e) {
      replace(out, message("error", `Not created: ${e.message}`));
    }
  });
  const actions = prefix
    ? h("p", {}, h("button", { type: "button", class: "danger", onclick: () => removeFolder(prefix) }, `Delete folder ${prefix} and everything in it`))
    : null;
  replace(ctx.main, crumbs(prefix), h("h1", {}, prefix || "Key/Value"), listing, actions, form);

  watch(kvPath(prefix), { keys: true, separator: "/" }, ctx.signal, (keys) => {
    const list = (keys || []).filter((k) => k !== prefix);
    if (!list.length) return replace(listing, empty(prefix ? "This folder is empty." : "The store is empty."));
    replace(
      listing,
      table(
        `Keys in ${prefix || "the root"}`,
        ["Name", "Kind", ""],
        list.map((k) => {
          const name = k.slice(prefix.length);
          const isFolder = k.endsWith("/");
          return [
            link(href(k), name),
            isFolder ? "folder" : "key",
            h("button", { type: "button", class: "danger", "aria-label": `Delete ${k}`, onclick: () => (isFolder ? removeFolder(k) : removeKey(k)) }, "Delete"),
          ];
        }),
      ),
    );
  }, (e) => showError(listing, e), { missing: true });
}

async function removeFolder(prefix) {
  if (!confirm(`Delete ${prefix} and every key under it?`)) return;
  try {
    await call(kvPath(prefix), { method: "DELETE", query: { recurse: true } });
    notify(`Deleted ${prefix} and everything under it.`);
    const parent = prefix.slice(0, -1).split("/").slice(0, -1).join("/");
    if (location.pathname.startsWith(href(prefix))) navigate(href(parent ? `${parent}/` : ""));
  } catch (e) {
    notify(`Not deleted: ${e.message}`);
  }
}

async function removeKey(k, modifyIndex) {
  if (!confirm(`Delete ${k}?`)) return false;
  try {
    const query = modifyIndex ? { cas: modifyIndex } : {};
    const { data } = await call(kvPath(k), { method: "DELETE", query });
    if (data === false) {
      notify(`${k} changed since you opened it: not deleted. Look at the new value first.`);
      return false;
    }
    notify(`Deleted ${k}.`);
    return true;
  } catch (e) {
    notify(`Not deleted: ${e.message}`);
    return false;
  }
}

function key(ctx, name) {
  const body = h("div", {}, h("p", {}, "Loading…"));
  const parent = name.split("/").slice(0, -1).join("/");
  replace(ctx.main, crumbs(name), h("h1", {}, name.split("/").pop()), body);
  let opened = null; // the entry as the editor was filled from it
  let textarea = null;
  let out = null;
  let notice = null;

  function fill(entry) {
    opened = entry;
    const text = decodeValue(entry.Value);
    const info = dl([
      ["Key", entry.Key],
      ["Size", `${byteLength(entry.Value)} bytes`],
      ["Flags", String(entry.Flags)],
      ["Locked by session", entry.Session || ""],
      ["Modify index", String(entry.ModifyIndex)],
    ]);
    notice = h("div");
    out = h("div");
    if (text === null) {
      replace(body, info, message("info", "This value is binary (not UTF-8 text): it can be read through the API but not edited here."), deleteButton());
      return;
    }
    textarea = h("textarea", { id: "kv-value", rows: 12, spellcheck: "false" }, text);
    const [format, isJson] = formatChooser("kv-format", looksJson(text));
    const form = h(
      "form",
      { class: "form", novalidate: true },
      field("kv-value", "Value", textarea),
      format,
      h("div", { class: "buttons" }, h("button", { type: "submit" }, "Save"), deleteButton()),
      out,
    );
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (isJson()) {
        const bad = invalidJson(textarea.value);
        if (bad) return replace(out, message("error", `Not saved: the value is not valid JSON: ${bad}`));
      }
      try {
        const { data } = await call(kvPath(name), { method: "PUT", query: { cas: opened.ModifyIndex }, body: textarea.value });
        if (data === true) {
          replace(out, message("ok", "Saved."));
          const fresh = await call(kvPath(name), { missing: true });
          if (fresh.data && fresh.data[0]) {
            opened = fresh.data[0];
            replace(notice);
          }
        } else {
          replace(out, message("error", "Not saved: someone changed this key since you opened it. Your text is still here; copy it, then load their value and edit that."));
        }
      } catch (e) {
        replace(out, message("error", `Not saved: ${e.message}`));
      }
    });
    replace(body, info, notice, form);
  }

  function deleteButton() {
    return h("button", {
      type: "button",
      class: "danger",
      onclick: async () => {
        if (await removeKey(name, opened && opened.ModifyIndex)) navigate(href(parent ? `${parent}/` : ""));
      },
    }, "Delete");
  }

  watch(kvPath(name), {}, ctx.signal, (entries) => {
    const entry = entries && entries[0];
    if (!entry) {
      opened = null;
      return replace(body, message("info", "No key of this name (it may have been deleted). ", link(href(parent ? `${parent}/` : ""), "Back to the folder"), "."));
    }
    if (!opened || !textarea) return fill(entry);
    if (entry.ModifyIndex !== opened.ModifyIndex) {
      // Changed on the servers while open: say so, and never replace what the user is typing.
      const reload = h("button", { type: "button", onclick: () => fill(entry) }, "Load the new value");
      replace(notice, message("info", `This key changed on the servers since you opened it (index ${entry.ModifyIndex}). `, reload));
    }
  }, (e) => showError(body, e), { missing: true });
}
