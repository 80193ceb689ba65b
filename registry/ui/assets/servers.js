// The cluster's servers: Raft membership, the leader and autopilot's view of their health. Raft
// and autopilot reads do not block, so the page watches the servers' own catalog entries (the
// "consul" service and its serfHealth checks) and reads them again on every change.

import { call, watch } from "./api.js";
import { h, replace, table, badge, message, dl } from "./dom.js";
import { showError } from "./shell.js";

export function servers(ctx) {
  const out = h("div", {}, h("p", {}, "Loading…"));
  replace(ctx.main, h("h1", {}, "Servers"), out);
  let generation = 0;
  async function load() {
    const mine = ++generation;
    try {
      const [raft, health] = await Promise.all([
        call("/v1/operator/raft/configuration", { signal: ctx.signal }),
        call("/v1/operator/autopilot/health", { signal: ctx.signal }).catch((e) => ({ data: null, error: e })),
      ]);
      if (mine !== generation) return;
      render(raft.data, health.data);
    } catch (e) {
      if (!ctx.signal.aborted) showError(out, e);
    }
  }
  function render(raft, health) {
    const byId = new Map(((health && health.Servers) || []).map((s) => [s.ID, s]));
    const leader = (raft.Servers || []).find((s) => s.Leader);
    const rows = (raft.Servers || []).map((s) => {
      const hs = byId.get(s.ID) || {};
      const role = s.Leader ? "leader" : s.Voter ? "follower" : "non-voter";
      return [
        h("strong", {}, s.Node),
        s.Address,
        role,
        hs.Healthy === undefined ? "unknown" : badge(hs.Healthy ? "passing" : "critical", hs.Healthy ? "healthy" : "unhealthy"),
        hs.SerfStatus || "",
        hs.LastContact || "",
        hs.LastIndex === undefined ? "" : `${hs.LastIndex} (term ${hs.LastTerm})`,
      ];
    });
    replace(
      out,
      dl([
        ["Leader", leader ? `${leader.Node} (${leader.Address})` : "none"],
        ["Raft index", String(raft.Index || "")],
        ["Autopilot", health ? `${health.Healthy ? "healthy" : "unhealthy"}, failure tolerance ${health.FailureTolerance}` : "not available"],
      ]),
      table("Servers", ["Server", "Raft address", "Raft state", "Health", "Gossip", "Last contact", "Last index"], rows),
      leader ? null : message("error", "No leader: the cluster cannot take writes until one is elected."),
    );
  }
  watch("/v1/health/service/consul", {}, ctx.signal, () => load(), (e) => showError(out, e));
}
