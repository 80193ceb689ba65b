// The web UI in headless Chromium (Debian's) against real `roster dev` servers and a sidecar:
// every page, live updates through blocking queries, the key/value editor with its checks,
// sessions, ACL login and management, narrow screens and the keyboard, the connection indicator.
//
//   node --test e2e/ui/test.mjs            (after `cargo build --workspace --bins`)
//   ROSTER_UI_SCREENSHOTS=docs/ui node --test e2e/ui/test.mjs     also writes the README's screenshots

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const ROOT = new URL("../../", import.meta.url).pathname;
const BIN = process.env.ROSTER_BIN || `${ROOT}target/debug/roster`;
const SIDECAR_BIN = process.env.ROSTER_SIDECAR_BIN || `${ROOT}target/debug/roster-sidecar`;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.ROSTER_UI_SCREENSHOTS;

const DEV = "127.0.0.1:17850";
const SIDECAR = "127.0.0.1:17854";
const ACL = "127.0.0.1:17860";
const FLAKY = "127.0.0.1:17870";
const DC2 = "127.0.0.1:17880";
const MANAGEMENT = randomUUID();

const children = [];
let browser;

function start(bin, args) {
  const child = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  child.stderr.on("data", (d) => { log = (log + d).slice(-4000); });
  child.log = () => log;
  children.push(child);
  return child;
}

function devServer(http, rpc, extra = []) {
  return start(BIN, ["dev", "--http-addr", http, "--rpc-addr", rpc, "--dns-addr", "off", ...extra]);
}

async function api(addr, path, { method = "GET", body, token } = {}) {
  const headers = token ? { "X-Consul-Token": token } : {};
  const res = await fetch(`http://${addr}${path}`, { method, headers, body: typeof body === "string" || body === undefined ? body : JSON.stringify(body) });
  const text = await res.text();
  let data = text;
  try { data = text ? JSON.parse(text) : null; } catch { /* plain text */ }
  return { status: res.status, data };
}

async function eventually(what, fn, ms = 15000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      if (await fn()) return;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

async function ready(addr, child, token) {
  await eventually(`the server at ${addr} (log: ${child.log()})`, async () => {
    const r = await api(addr, "/v1/status/leader", { token });
    return r.status === 200 && r.data;
  }, 30000);
}

// A few services on three nodes, checks in every state, some keys: what the pages show.
async function seed(addr, token) {
  const nodes = [["node-a", "10.0.0.1"], ["node-b", "10.0.0.2"], ["node-c", "10.0.0.3"]];
  const services = [
    ["web", 8080, ["v2", "public"], "passing", ["node-a", "node-b"]],
    ["api", 9090, ["v2"], "passing", ["node-a", "node-b", "node-c"]],
    ["db", 5432, ["primary"], "warning", ["node-c"]],
    ["cache", 6379, [], "critical", ["node-b"]],
  ];
  for (const [node, address] of nodes) {
    for (const [name, port, tags, status, on] of services) {
      if (!on.includes(node)) continue;
      const body = {
        Node: node, Address: address, NodeMeta: { zone: node === "node-c" ? "b" : "a" },
        Service: { ID: `${name}-${node}`, Service: name, Port: port, Tags: tags, Meta: { version: "1.4.2" } },
        Check: { CheckID: `service:${name}-${node}`, Name: `${name} HTTP`, ServiceID: `${name}-${node}`, Status: status, Output: `HTTP GET http://${address}:${port}/health: ${status === "passing" ? "200 OK" : status === "warning" ? "429 Too Many Requests" : "connection refused"}` },
      };
      const r = await api(addr, "/v1/catalog/register", { method: "PUT", body, token });
      assert.equal(r.status, 200, JSON.stringify(r.data));
    }
  }
  for (const [k, v] of [["app/config.json", '{"replicas": 3, "log": "info"}'], ["app/feature-flags/dark-mode", "on"], ["team/owner", "platform"]]) {
    assert.equal((await api(addr, `/v1/kv/${k}`, { method: "PUT", body: v, token })).status, 200);
  }
}

before(async () => {
  const dev = devServer(DEV, "127.0.0.1:17851", ["--gossip-addr", "127.0.0.1:17852", "--wan-addr", "127.0.0.1:17855"]);
  // A second datacenter, joined to the first over the WAN pool: the datacenter switcher.
  const dc2 = devServer(DC2, "127.0.0.1:17881", ["--gossip-addr", "off", "--datacenter", "dc2", "--wan-addr", "127.0.0.1:17882", "--retry-join-wan", "127.0.0.1:17855"]);
  const acl = devServer(ACL, "127.0.0.1:17861", ["--gossip-addr", "off", "--acl-enabled", "--acl-default-policy", "deny", "--acl-initial-management", MANAGEMENT]);
  await ready(DEV, dev);
  await ready(ACL, acl, MANAGEMENT);
  await ready(DC2, dc2);
  await api(DC2, "/v1/agent/service/register", { method: "PUT", body: { Name: "only-in-dc2", Port: 2 } });
  await eventually("dc2 in dc1's list of datacenters", async () => (await api(DEV, "/v1/catalog/datacenters")).data.length === 2);
  const sidecar = start(SIDECAR_BIN, ["--node-name", "pod-ui", "--address", "127.0.0.1", "--servers", DEV, "--gossip-addr", "127.0.0.1:17853", "--gossip-seeds", "127.0.0.1:17852", "--http-addr", SIDECAR, "--dns-addr", "off"]);
  await seed(DEV);
  await seed(ACL, MANAGEMENT);
  await eventually(`the sidecar (log: ${sidecar.log()})`, async () => (await api(SIDECAR, "/v1/agent/self")).status === 200, 30000);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // No background networking: this machine's network is closed and Chromium would keep trying.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  if (browser) await browser.close();
  for (const c of children) c.kill("SIGKILL");
});

// A page that fails the test on any uncaught script error.
async function open(path, { addr = DEV, width = 1200, height = 800 } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(e.message));
  page.on("dialog", (d) => d.accept());
  await page.goto(`http://${addr}${path}`);
  return page;
}

async function close(page) {
  assert.deepEqual(page.errors, [], "uncaught script errors");
  await page.context().close();
}

const heading = (page) => page.locator("main h1");

test("every page renders from the root, and says what it shows", async () => {
  const page = await open("/");
  await page.waitForURL("**/ui/dc1/services");
  const nav = await page.evaluate(() => performance.getEntriesByType("navigation")[0].toJSON());
  console.log(`first load of / (redirect, page, modules, first API answer): load event at ${Math.round(nav.loadEventEnd)} ms`);
  await page.locator("main table").getByRole("link", { name: "web", exact: true }).waitFor();
  assert.equal(await heading(page).textContent(), "Services");
  // Instances and health as the seed made them: db has a warning, cache is critical.
  const row = (name) => page.locator("main tr", { has: page.getByRole("link", { name, exact: true }) });
  assert.match(await row("api").textContent(), /3 passing3/);
  assert.match(await row("db").textContent(), /1 warning1/);
  assert.match(await row("cache").textContent(), /1 critical1/);
  if (SHOTS) { mkdirSync(SHOTS, { recursive: true }); await page.screenshot({ path: `${SHOTS}/services.png` }); }

  // Filters: by tag text, and by health.
  await page.getByLabel("Search").fill("primary");
  await page.getByText("1 of 5 services").waitFor();
  await page.getByLabel("Search").fill("");
  await page.getByLabel("Health").selectOption("critical");
  await page.getByText("1 of 5 services").waitFor();
  assert.equal(await page.locator("main tbody tr").count(), 1);
  await page.getByLabel("Health").selectOption("");

  await page.getByRole("link", { name: "api", exact: true }).click();
  await page.waitForURL("**/ui/dc1/services/api");
  await page.getByText("3 instances").waitFor();
  assert.equal(await page.locator("main section.card").count(), 3);
  assert.match(await page.locator("main").textContent(), /HTTP GET http:\/\/10\.0\.0\.3:9090\/health: 200 OK/);
  assert.match(await page.locator("main").textContent(), /Meta version1\.4\.2/);
  if (SHOTS) await page.screenshot({ path: `${SHOTS}/service.png` });

  await page.getByRole("link", { name: "Nodes" }).click();
  await page.waitForURL("**/ui/dc1/nodes");
  await page.getByRole("link", { name: "node-c" }).click();
  await page.waitForURL("**/ui/dc1/nodes/node-c");
  await page.getByRole("link", { name: "db", exact: true }).waitFor();
  assert.match(await page.locator("main").textContent(), /429 Too Many Requests/);

  await page.getByRole("link", { name: "Key/Value" }).click();
  await page.getByRole("link", { name: "app/" }).click();
  await page.waitForURL("**/ui/dc1/kv/app/");
  await page.getByRole("link", { name: "feature-flags/" }).waitFor();
  if (SHOTS) await page.screenshot({ path: `${SHOTS}/kv.png` });
  await page.getByRole("link", { name: "config.json" }).click();
  assert.equal(await page.getByLabel("Value").inputValue(), '{"replicas": 3, "log": "info"}');
  // A JSON value opens in JSON mode.
  assert.equal(await page.getByLabel("JSON (checked before saving)").isChecked(), true);

  await page.getByRole("link", { name: "Servers" }).click();
  await page.getByText("failure tolerance 0").waitFor();
  assert.match(await page.locator("main table").textContent(), /roster-dev127\.0\.0\.1:17851leaderhealthyalive/);
  if (SHOTS) await page.screenshot({ path: `${SHOTS}/servers.png` });

  await page.getByRole("link", { name: "Sessions" }).click();
  await page.getByText("No sessions.").waitFor();
  // ACLs are off on this server: the page says so rather than failing.
  await page.getByRole("link", { name: "Access control" }).click();
  await page.getByText("ACLs are disabled on this cluster").waitFor();
  // An unknown page says so.
  await page.goto(`http://${DEV}/ui/dc1/nothing-here`);
  await page.getByText('There is no page "nothing-here"').waitFor();
  await close(page);
});

test("a check changing state changes the page live, without reloading it", async () => {
  const reg = { Name: "live", ID: "live-1", Port: 7000, Check: { CheckID: "live-ttl", Name: "live heartbeat", TTL: "300s" } };
  assert.equal((await api(DEV, "/v1/agent/service/register", { method: "PUT", body: reg })).status, 200);
  const page = await open("/ui/dc1/services/live");
  const check = page.locator("li.check", { hasText: "live heartbeat" });
  await check.locator(".badge-critical").waitFor();
  await page.evaluate(() => { window.sameDocument = true; });
  assert.equal((await api(DEV, "/v1/agent/check/pass/live-ttl?note=all%20good", { method: "PUT" })).status, 200);
  await check.locator(".badge-passing").waitFor({ timeout: 10000 });
  assert.match(await check.textContent(), /all good/);
  await api(DEV, "/v1/agent/check/warn/live-ttl?note=slow", { method: "PUT" });
  await check.locator(".badge-warning").waitFor({ timeout: 10000 });
  assert.equal(await page.evaluate(() => window.sameDocument), true, "the page was reloaded");

  // The services list follows too: deregistering removes the row.
  await page.getByRole("link", { name: "Services", exact: true }).first().click();
  const row = page.locator("main tr", { has: page.getByRole("link", { name: "live", exact: true }) });
  await row.waitFor();
  await api(DEV, "/v1/agent/service/deregister/live-1", { method: "PUT" });
  await row.waitFor({ state: "detached", timeout: 10000 });
  await close(page);
});

test("keys are created, edited and deleted with check-and-set, and bad input gets a message", async () => {
  const page = await open("/ui/dc1/kv/");
  const name = page.getByLabel(/^Name/);
  const value = page.getByLabel("Value");
  const create = page.getByRole("button", { name: "Create" });
  const error = page.locator("main .msg-error");

  await name.fill("/leading");
  await create.click();
  await error.filter({ hasText: "A key may not start with /" }).waitFor();
  await name.fill("");
  await create.click();
  await error.filter({ hasText: "Give the key a name." }).waitFor();

  await name.fill("svc/settings");
  await page.getByLabel("JSON (checked before saving)").check();
  await value.fill('{"port": 80,');
  await create.click();
  await error.filter({ hasText: "The value is not valid JSON" }).waitFor();
  assert.equal((await api(DEV, "/v1/kv/svc/settings")).status, 404, "nothing written");

  await value.fill('{"port": 80}');
  await create.click();
  await page.waitForURL("**/ui/dc1/kv/svc/settings");
  assert.equal((await api(DEV, "/v1/kv/svc/settings?raw")).data.port, 80);
  // Creating it again never overwrites it.
  await page.goto(`http://${DEV}/ui/dc1/kv/svc/`);
  await page.getByLabel(/^Name/).fill("settings");
  await page.getByLabel("Value").fill("other");
  await page.getByRole("button", { name: "Create" }).click();
  await page.locator("main .msg-error", { hasText: "already exists" }).waitFor();
  await page.getByRole("link", { name: "settings", exact: true }).click();

  // An edit saves at the index read.
  const editor = page.getByLabel("Value");
  await editor.fill('{"port": 81}');
  await page.getByRole("button", { name: "Save" }).click();
  await page.locator("main .msg-ok", { hasText: "Saved." }).waitFor();
  assert.equal((await api(DEV, "/v1/kv/svc/settings?raw")).data.port, 81);
  // Invalid JSON is refused before anything is sent.
  await editor.fill("{port: 82}");
  await page.getByRole("button", { name: "Save" }).click();
  await page.locator("main .msg-error", { hasText: "not valid JSON" }).waitFor();

  // Someone else writes meanwhile: the page says so live, and a save is refused with a message.
  await api(DEV, "/v1/kv/svc/settings", { method: "PUT", body: '{"port": 90}' });
  await page.getByText("This key changed on the servers since you opened it").waitFor({ timeout: 10000 });
  await editor.fill('{"port": 82}');
  await page.getByRole("button", { name: "Save" }).click();
  await page.locator("main .msg-error", { hasText: "someone changed this key since you opened it" }).waitFor();
  assert.equal((await api(DEV, "/v1/kv/svc/settings?raw")).data.port, 90, "their write stands");
  await page.getByRole("button", { name: "Load the new value" }).click();
  assert.equal(await page.getByLabel("Value").inputValue(), '{"port": 90}');

  await page.getByRole("button", { name: "Delete" }).click();
  await page.waitForURL("**/ui/dc1/kv/svc/");
  assert.equal((await api(DEV, "/v1/kv/svc/settings")).status, 404);

  // A folder and everything under it.
  for (const k of ["tree/a", "tree/b/c", "tree/b/d"]) await api(DEV, `/v1/kv/${k}`, { method: "PUT", body: "x" });
  await page.goto(`http://${DEV}/ui/dc1/kv/`);
  await page.getByRole("button", { name: "Delete tree/" }).click();
  await page.getByRole("link", { name: "tree/" }).waitFor({ state: "detached" });
  assert.equal((await api(DEV, "/v1/kv/tree/?recurse")).status, 404);
  assert.equal((await api(DEV, "/v1/kv/app/config.json")).status, 200, "other keys stay");
  await close(page);
});

test("a node's sessions are listed and can be invalidated", async () => {
  const { data } = await api(DEV, "/v1/session/create", { method: "PUT", body: { Name: "leader-election", Node: "roster-dev" } });
  const page = await open("/ui/dc1/nodes/roster-dev");
  const row = page.locator("main tr", { hasText: data.ID });
  await row.waitFor();
  assert.match(await row.textContent(), /leader-election/);
  await row.getByRole("button", { name: `Invalidate session ${data.ID}` }).click();
  await row.waitFor({ state: "detached", timeout: 10000 });
  assert.deepEqual((await api(DEV, `/v1/session/info/${data.ID}`)).data, []);
  await close(page);
});

test("with ACLs: a denied read asks for a token, a token shows only what it may read, and tokens and policies are managed", async () => {
  const rules = 'service "web" { policy = "read" }\nnode_prefix "" { policy = "read" }';
  const policy = await api(ACL, "/v1/acl/policy", { method: "PUT", body: { Name: "web-reader", Rules: rules }, token: MANAGEMENT });
  const limited = await api(ACL, "/v1/acl/token", { method: "PUT", body: { Description: "web reader", Policies: [{ ID: policy.data.ID }] }, token: MANAGEMENT });

  const page = await open("/ui/dc1/servers", { addr: ACL });
  await page.getByText("The cluster needs a token to show this.").waitFor();
  await page.getByRole("link", { name: "Log in with a token" }).click();
  await page.getByLabel("Token (its SecretID)").fill("not-a-token");
  const submit = page.locator("main").getByRole("button", { name: "Log in" });
  await submit.click();
  await page.locator("main .msg-error", { hasText: "does not know this token" }).waitFor();
  await page.getByLabel("Token (its SecretID)").fill(limited.data.SecretID);
  await submit.click();
  // Back where the login started: still denied, and the page says why.
  await page.waitForURL("**/ui/dc1/servers");
  await page.getByText("Your token may not read this.").waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("roster.token")), limited.data.SecretID);
  assert.equal(await page.evaluate(() => localStorage.length), 0, "nothing in local storage");

  await page.getByRole("link", { name: "Services" }).click();
  await page.getByText("1 of 1 services").waitFor();
  assert.equal(await page.locator("main tbody tr").count(), 1);
  assert.match(await page.locator("main tbody").textContent(), /^web/);

  // The management token: ACL pages.
  await page.locator("header").getByRole("button", { name: "Log out" }).click();
  await page.locator("header").getByRole("button", { name: "Log in" }).click();
  await page.getByLabel("Token (its SecretID)").fill(MANAGEMENT);
  await submit.click();
  await page.locator("header").getByRole("button", { name: "Log out" }).waitFor();
  await page.getByRole("link", { name: "Access control" }).click();
  await page.locator("main table", { hasText: "web reader" }).waitFor();
  if (SHOTS) await page.screenshot({ path: `${SHOTS}/acl-tokens.png` });

  await page.locator("main nav").getByRole("link", { name: "Policies" }).click();
  await page.getByRole("link", { name: "Create a policy" }).click();
  await page.getByLabel("Name").fill("kv-app");
  await page.getByLabel("Rules (HCL or JSON)").fill('key_prefix "app/" { policy = "sometimes" }');
  await page.getByRole("button", { name: "Create" }).click();
  // The servers' own message about the rule.
  await page.locator("main .msg-error", { hasText: "Not saved" }).waitFor();
  assert.match(await page.locator("main .msg-error").textContent(), /sometimes/);
  await page.getByLabel("Rules (HCL or JSON)").fill('key_prefix "app/" { policy = "read" }');
  await page.getByRole("button", { name: "Create" }).click();
  await page.getByRole("link", { name: "kv-app" }).waitFor();

  await page.locator("main nav").getByRole("link", { name: "Roles" }).click();
  await page.getByRole("link", { name: "Create a role" }).click();
  await page.getByLabel("Name").fill("app-readers");
  await page.getByLabel("kv-app").check();
  await page.getByRole("button", { name: "Create" }).click();
  await page.locator("main table", { hasText: "app-readers" }).waitFor();
  assert.match(await page.locator("main table").textContent(), /app-readerskv-app/);

  await page.locator("main nav").getByRole("link", { name: "Tokens" }).click();
  await page.getByRole("link", { name: "Create a token" }).click();
  await page.getByLabel("Description").fill("app config reader");
  // Through the role only: the token gets the policy's rights from it.
  await page.getByLabel("app-readers").check();
  await page.getByRole("button", { name: "Create" }).click();
  const secret = await page.locator("#new-secret").textContent();
  // The token the page made reads what its policy allows, and nothing else.
  assert.equal((await api(ACL, "/v1/kv/app/config.json", { token: secret })).status, 200);
  assert.equal((await api(ACL, "/v1/kv/team/owner", { token: secret })).status, 403);
  await close(page);
});

test("the datacenter switcher shows another datacenter's catalog through this server", async () => {
  const page = await open("/ui/dc1/services");
  await page.getByRole("link", { name: "cache", exact: true }).waitFor();
  const select = page.getByLabel("Datacenter");
  assert.equal(await select.isEnabled(), true);
  assert.deepEqual(await select.locator("option").allTextContents(), ["dc1", "dc2"]);
  await select.selectOption("dc2");
  await page.waitForURL("**/ui/dc2/services");
  await page.getByRole("link", { name: "only-in-dc2" }).waitFor();
  assert.equal(await page.getByRole("link", { name: "cache", exact: true }).count(), 0);
  // Live there too: a registration in dc2 shows up through dc1's server.
  await api(DC2, "/v1/agent/service/register", { method: "PUT", body: { Name: "new-in-dc2", Port: 3 } });
  await page.getByRole("link", { name: "new-in-dc2" }).waitFor({ timeout: 10000 });
  await page.getByRole("link", { name: "Key/Value" }).click();
  await page.waitForURL("**/ui/dc2/kv");
  await page.getByText("The store is empty.").waitFor();
  await close(page);
});

test("a sidecar serves the same UI for its pod", async () => {
  const page = await open("/", { addr: SIDECAR });
  await page.waitForURL("**/ui/dc1/services");
  await page.getByRole("link", { name: "cache" }).waitFor();
  await page.getByRole("link", { name: "Nodes" }).click();
  await page.getByRole("link", { name: "pod-ui" }).waitFor();
  await close(page);
});

// WCAG's contrast ratio of every visible text against the background it is drawn on (the nearest
// ancestor with one): at least 4.5:1, disabled controls aside (WCAG exempts them).
async function lowContrast(page) {
  return page.evaluate(() => {
    const rgb = (c) => (c.match(/[\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => {
      const f = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const background = (el) => {
      for (let e = el; e; e = e.parentElement) {
        const c = rgb(getComputedStyle(e).backgroundColor);
        if (c.length === 3 || c[3] > 0) return c.slice(0, 3);
      }
      return [255, 255, 255];
    };
    const bad = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let t = walker.nextNode(); t; t = walker.nextNode()) {
      const el = t.parentElement;
      if (!t.textContent.trim() || !el || el.closest("[disabled], .visually-hidden, noscript, option")) continue;
      const box = el.getBoundingClientRect();
      if (!box.width || !box.height || getComputedStyle(el).visibility === "hidden") continue;
      const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(background(el))];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      if (ratio < 4.5) bad.push(`${t.textContent.trim().slice(0, 30)}: ${ratio.toFixed(2)}`);
    }
    return bad;
  });
}

test("every text is readable: contrast of at least 4.5:1 on every page", async () => {
  const page = await open("/ui/dc1/services");
  for (const path of ["services", "services/db", "nodes/node-c", "kv/app/", "kv/app/config.json", "servers", "acl", "login"]) {
    await page.goto(`http://${DEV}/ui/dc1/${path}`);
    await page.locator("main h1").waitFor();
    await page.waitForFunction(() => !document.querySelector("main").textContent.includes("Loading…"));
    assert.deepEqual(await lowContrast(page), [], `${path}: text below 4.5:1`);
  }
  // The connection indicator when lost, and an error message.
  await page.evaluate(() => { document.getElementById("conn").className = "conn conn-lost"; });
  await page.goto(`http://${DEV}/ui/dc1/kv/`);
  await page.getByLabel(/^Name/).fill("/x");
  await page.getByRole("button", { name: "Create" }).click();
  await page.locator("main .msg-error").waitFor();
  assert.deepEqual(await lowContrast(page), [], "an error message");
  await close(page);
});

test("at 360 px nothing scrolls sideways, every control has a label, and the keyboard reaches everything", async () => {
  const page = await open("/ui/dc1/services", { width: 360, height: 740 });
  for (const path of ["services", "services/api", "nodes", "nodes/node-b", "kv/app/", "kv/app/config.json", "sessions", "servers", "login"]) {
    await page.goto(`http://${DEV}/ui/dc1/${path}`);
    await page.locator("main h1").waitFor();
    await page.waitForFunction(() => !document.querySelector("main").textContent.includes("Loading…"));
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(wide <= 360, `${path}: the page is ${wide} px wide`);
    const unlabelled = await page.evaluate(() =>
      [...document.querySelectorAll("input, select, textarea")].filter((el) => el.labels.length === 0 && !el.getAttribute("aria-label")).map((el) => el.outerHTML),
    );
    assert.deepEqual(unlabelled, [], `${path}: controls without a label`);
  }
  if (SHOTS) {
    await page.goto(`http://${DEV}/ui/dc1/services`);
    await page.locator("main table").waitFor();
    await page.screenshot({ path: `${SHOTS}/services-360.png` });
  }

  await page.goto(`http://${DEV}/ui/dc1/services`);
  await page.locator("main table").waitFor();
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to content");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Nodes");
  await page.keyboard.press("Enter");
  await page.waitForURL("**/ui/dc1/nodes");
  assert.equal(await heading(page).textContent(), "Nodes");
  // Navigation moves focus to the page's content, for screen readers and the next Tab.
  assert.equal(await page.evaluate(() => document.activeElement.id), "main");
  await close(page);
});

test("losing the servers shows in the header, and the page recovers when they return", async () => {
  let server = devServer(FLAKY, "127.0.0.1:17871", ["--gossip-addr", "off"]);
  await ready(FLAKY, server);
  const page = await open("/ui/dc1/services", { addr: FLAKY });
  await page.locator("#conn", { hasText: "Live" }).waitFor();
  server.kill("SIGKILL");
  await page.locator("#conn", { hasText: "Connection lost" }).waitFor({ timeout: 15000 });
  server = devServer(FLAKY, "127.0.0.1:17871", ["--gossip-addr", "off"]);
  await ready(FLAKY, server);
  await page.locator("#conn", { hasText: "Live" }).waitFor({ timeout: 20000 });
  // The watch starts over against the new server (its index went back): new services show.
  await api(FLAKY, "/v1/agent/service/register", { method: "PUT", body: { Name: "after-restart", Port: 1 } });
  await page.getByRole("link", { name: "after-restart" }).waitFor({ timeout: 15000 });
  await close(page);
});
