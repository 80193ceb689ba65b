//! What a server tells its agent API about itself: `self`, `members`, `force-leave` and `reload`
//! as a server answers them (the routes and their checks are `crate::agent::api`'s).

use std::collections::BTreeMap;

use serde_json::json;

use super::ApiError;
use crate::api::AgentMember;
use crate::app::{now_ms, App};
use crate::state::Command;

/// The agent's address as other members reach it (the host of its RPC address).
pub fn my_address(app: &App) -> String {
    host_port(&app.me.rpc_addr).0.to_string()
}

fn host_port(addr: &str) -> (&str, u16) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().unwrap_or(8300)),
        None => (addr, 8300),
    }
}

/// Consul's LAN members list (`?wan=1`: the WAN pool, whose members are named `node.dc`). The
/// servers are the Raft members; with gossip on, live clients (sidecars) of the pool join them.
pub async fn members(app: &App, wan: bool) -> Vec<AgentMember> {
    if let (true, Some(pool)) = (wan, &app.wan) {
        return wan_members(app, pool).await;
    }
    let m = app.raft.metrics().borrow().clone();
    let dc = &app.config.datacenter;
    let mut out: Vec<AgentMember> = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| {
            let (addr, port) = host_port(&n.rpc_addr);
            let tags = BTreeMap::from([
                ("acls".to_string(), if app.config.acl_enabled { "1" } else { "0" }.to_string()),
                ("build".to_string(), format!("{}:roster", env!("CARGO_PKG_VERSION"))),
                ("dc".to_string(), dc.clone()),
                ("id".to_string(), format!("{id:016x}")),
                ("port".to_string(), port.to_string()),
                ("raft_vsn".to_string(), "3".to_string()),
                ("role".to_string(), "consul".to_string()),
                ("segment".to_string(), String::new()),
                ("vsn".to_string(), "2".to_string()),
                ("vsn_max".to_string(), "3".to_string()),
                ("vsn_min".to_string(), "2".to_string()),
            ]);
            let name = if wan { format!("{}.{dc}", n.name) } else { n.name.clone() };
            AgentMember::new(name, addr.to_string(), port, tags, 1)
        })
        .collect();
    if wan {
        return out;
    }
    if let Some(g) = &app.gossip {
        for (name, member) in g.live_members().await {
            if out.iter().any(|m| m.name == name) {
                continue;
            }
            let tags = BTreeMap::from([
                ("build".to_string(), format!("{}:roster", member.version)),
                ("dc".to_string(), member.datacenter.clone()),
                ("role".to_string(), "node".to_string()),
                ("segment".to_string(), String::new()),
                ("vsn".to_string(), "2".to_string()),
            ]);
            out.push(AgentMember::new(name, member.address.clone(), 8301, tags, 1));
        }
    }
    out
}

pub async fn agent_self(app: &App) -> serde_json::Value {
    let m = app.raft.metrics().borrow().clone();
    let leader_addr = app.leader().map(|(_, n)| n.rpc_addr).unwrap_or_default();
    let voters = m.membership_config.membership().voter_ids().count();
    let me = members(app, false).await.into_iter().find(|m| m.name == app.me.name);
    let (bind, port) = (app.config.http_addr.ip().to_string(), app.config.http_addr.port());
    json!({
        "Config": {
            "Datacenter": app.config.datacenter,
            "PrimaryDatacenter": app.config.primary_datacenter(),
            "NodeName": app.me.name,
            "NodeID": format!("{:016x}", app.id),
            "Revision": "roster",
            "Server": true,
            "Version": env!("CARGO_PKG_VERSION"),
        },
        // The settings clients read (Consul's full DebugConfig is hundreds of fields).
        "DebugConfig": {
            "ACLsEnabled": app.config.acl_enabled,
            "ACLDefaultPolicy": app.config.acl_default_policy,
            "ACLDownPolicy": app.config.acl_down_policy,
            "ACLTokenReplication": app.config.acl_replicates(),
            "AdvertiseAddrLAN": my_address(app),
            "BindAddr": bind,
            "ClientAddrs": [bind],
            "Datacenter": app.config.datacenter,
            "DataDir": app.config.data_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default(),
            "DevMode": app.config.data_dir.is_none(),
            "HTTPPort": port,
            "KVMaxValueSize": app.config.kv_max_value_size,
            "NodeName": app.me.name,
            "PrimaryDatacenter": app.config.primary_datacenter(),
            "RaftSnapshotThreshold": app.config.snapshot_threshold,
            "ServerMode": true,
        },
        "Member": me,
        "Stats": {
            "agent": app.agent.stats(),
            "build": {"prerelease": "", "revision": "roster", "version": env!("CARGO_PKG_VERSION")},
            "consul": {
                "acl": if app.config.acl_enabled { "enabled" } else { "disabled" },
                "bootstrap": "false",
                "known_datacenters": "1",
                "leader": (m.current_leader == Some(app.id)).to_string(),
                "leader_addr": leader_addr,
                "server": "true",
            },
            "raft": {
                "applied_index": m.last_applied.map_or(0, |l| l.index).to_string(),
                "commit_index": m.last_applied.map_or(0, |l| l.index).to_string(),
                "last_log_index": m.last_log_index.unwrap_or(0).to_string(),
                "last_snapshot_index": m.snapshot.map_or(0, |l| l.index).to_string(),
                "num_peers": voters.saturating_sub(1).to_string(),
                "state": format!("{:?}", m.state),
                "term": m.current_term.to_string(),
                "last_contact": app.last_contact_ms().to_string(),
                "protocol_version": "3",
            },
        },
        "Meta": {"consul-network-segment": ""},
    })
}

/// Consul's force-leave: a failed member is marked left at once (its node leaves the catalog)
/// instead of waiting out the reap time; a live member refutes it and stays. `prune` also forgets
/// it, which for Roster is the same: a left node is not kept.
pub async fn force_leave(app: &App, node: &str, _prune: bool) -> Result<(), ApiError> {
    let known = app.sm.read(|s| s.catalog_node(node).1.is_some());
    let live = match &app.gossip {
        Some(g) => g.live_members().await.contains_key(node),
        None => false,
    };
    let server = app.raft.metrics().borrow().membership_config.membership().nodes().any(|(_, n)| n.name == node);
    if !known && !live {
        // Consul answers 500; the name is the client's mistake.
        return Err(ApiError::BadRequest(format!("No node found with name '{node}'")));
    }
    if !live && !server && known {
        let request = crate::api::DeregisterRequest { node: Some(node.to_string()), ..Default::default() };
        app.propose(Command::Deregister { request, now_ms: now_ms() }).await?;
    }
    Ok(())
}

/// Reads the configuration file again and checks it; settings a running server cannot change
/// (addresses, data directory) keep their values until a restart, as with Consul.
pub fn reload(app: &App) -> Result<(), ApiError> {
    if let Some(path) = &app.config.config_file {
        let c = crate::config::Config::from_file(path)
            .map_err(|e| ApiError::BadRequest(format!("Failed reloading: {e}")))?;
        c.validate().map_err(|e| ApiError::BadRequest(format!("Failed reloading: {e}")))?;
        tracing::info!(file = %path.display(), "configuration reloaded; addresses and storage apply at the next restart");
    }
    Ok(())
}

/// `/v1/agent/members?wan=1` with a WAN pool: every datacenter's servers, named `node.dc`, with
/// Serf's status (alive, left, failed) and their WAN gossip address.
async fn wan_members(app: &App, pool: &crate::wan::Wan) -> Vec<AgentMember> {
    pool.members()
        .await
        .into_iter()
        .map(|(m, status)| {
            let tags = BTreeMap::from([
                ("acls".to_string(), if app.config.acl_enabled { "1" } else { "0" }.to_string()),
                ("build".to_string(), format!("{}:roster", m.version)),
                ("dc".to_string(), m.datacenter.clone()),
                ("role".to_string(), "consul".to_string()),
                ("segment".to_string(), String::new()),
                ("vsn".to_string(), "2".to_string()),
            ]);
            AgentMember::new(m.name.clone(), m.gossip_addr.ip().to_string(), m.gossip_addr.port(), tags, status)
        })
        .collect()
}
