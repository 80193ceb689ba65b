//! `/v1/status/*` and `/v1/operator/raft/*`.

use std::sync::Arc;

use std::time::Duration;

use warp::http::{Method, StatusCode};

use super::acl::{authorize, require_global};
use super::{ok_json, require_leader, ApiError, ApiResult, Req};
use crate::acl::{Access, Global};
use crate::api::{AutopilotHealth, RaftConfiguration, RaftServer, ServerHealth};
use crate::app::App;
use crate::gossip::rotation;
use crate::state::{Command, CommandResult};

pub async fn handle_status(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    if req.method != Method::GET {
        return Err(ApiError::MethodNotAllowed(req.method.clone()));
    }
    match tail {
        "leader" => {
            // Ready means ready: clients take a known leader as "the agent is up" and create sessions
            // at once, which needs this server's node and its serfHealth in the catalog. Until the
            // leader has registered them, no leader is reported.
            let registered = app.sm.read(|s| s.check(&app.me.name, "serfHealth").is_some());
            Ok(ok_json(&app.leader().filter(|_| registered).map(|(_, n)| n.rpc_addr).unwrap_or_default()))
        }
        "peers" => {
            let m = app.raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let peers: Vec<String> =
                membership.voter_ids().filter_map(|id| membership.get_node(&id).map(|n| n.rpc_addr.clone())).collect();
            Ok(ok_json(&peers))
        }
        _ => Err(ApiError::NotFound(String::new())),
    }
}

/// `/v1/operator/keyring`: the pool's gossip keys. Listing counts, over the live members, who holds
/// each key and who seals with it (`?local-only` answers the same: there is no WAN pool yet).
/// Install (POST), use (PUT) and remove (DELETE) go to every member through gossip
/// (`gossip::rotation`) and answer once every live member shows the change, or after 10 s with
/// the members that do not. Without encryption every call fails as Consul's do.
async fn keyring(app: &App, req: &Req) -> ApiResult {
    let off = || {
        let what = if req.method == Method::GET {
            "Keyring is empty (encryption not enabled)"
        } else {
            "No keyring to modify (encryption not enabled)"
        };
        ApiError::BadRequest(format!("{}: {what}", app.me.name))
    };
    let gossip = app.gossip.as_ref().filter(|g| g.keyring().is_some()).ok_or_else(off)?;
    let dc = &app.config.datacenter;
    let action = match req.method {
        Method::GET => {
            let members = gossip.member_keys().await;
            let (keys, primary) = rotation::counts(&members);
            return Ok(ok_json(&serde_json::json!([{
                "WAN": false, "Datacenter": dc, "Segment": "", "Keys": keys, "PrimaryKeys": primary,
                "NumNodes": members.len(), "Messages": {},
            }])));
        }
        Method::POST => rotation::Action::Install,
        Method::PUT => rotation::Action::Use,
        Method::DELETE => rotation::Action::Remove,
        ref m => return Err(ApiError::MethodNotAllowed(m.clone())),
    };
    #[derive(serde::Deserialize)]
    struct KeyBody {
        #[serde(rename = "Key", default)]
        key: String,
    }
    let body: KeyBody = super::json::decode(&req.body)?;
    if body.key.is_empty() {
        return Err(ApiError::BadRequest("Missing key: the body must be {\"Key\": \"<base64 key>\"}".into()));
    }
    let op = gossip.request_keyring(action, &body.key).await.map_err(ApiError::BadRequest)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let members = gossip.member_keys().await;
        let lagging = rotation::not_done(&members, &op);
        if lagging.is_empty() {
            return Ok(super::text(StatusCode::OK, ""));
        }
        if std::time::Instant::now() >= deadline {
            let mut message = format!(
                "1 error occurred:\n\t* {dc} (LAN) error: {}/{} nodes reported failure\n",
                lagging.len(),
                members.len()
            );
            for node in &lagging {
                message.push_str(&format!("\t* {node}: did not apply the keyring change within 10 s\n"));
            }
            return Err(ApiError::Internal(message));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn configuration(app: &App) -> RaftConfiguration {
    let m = app.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let servers = membership
        .nodes()
        .map(|(id, n)| RaftServer {
            id: format!("{id}"),
            node: n.name.clone(),
            address: n.rpc_addr.clone(),
            leader: m.current_leader == Some(*id),
            protocol_version: "3".into(),
            voter: voters.contains(id),
        })
        .collect();
    RaftConfiguration { servers, index: m.membership_config.log_id().map_or(0, |l| l.index) }
}

/// The leader probes every server once a second, so contact is known to about a second: three
/// missed probes make a server unhealthy, and autopilot's `LastContactThreshold` can widen this
/// but not narrow it.
const CONTACT_THRESHOLD: Duration = Duration::from_secs(3);

fn go_duration(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        crate::api::format_go_duration(d)
    }
}

/// The leader's view of every server, as Consul's autopilot reports it.
/// Brings each server's health and "stable since" up to date (autopilot's promotions read them).
pub async fn refresh_server_health(app: &App) {
    autopilot_health(app).await;
}

async fn autopilot_health(app: &App) -> AutopilotHealth {
    let m = app.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let leader_last_index = m.last_log_index.unwrap_or(0);
    let settings = app.sm.read(|s| s.autopilot());
    let contact_threshold =
        crate::api::parse_go_duration(&settings.last_contact_threshold).unwrap_or_default().max(CONTACT_THRESHOLD);
    let versions: std::collections::BTreeMap<String, String> = match &app.gossip {
        Some(g) => g.live_members().await.into_iter().map(|(name, member)| (name, member.version)).collect(),
        None => Default::default(),
    };
    let contact = app.server_contact.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut stability = app.server_stability.lock().unwrap_or_else(|p| p.into_inner());
    let now = std::time::SystemTime::now();
    let mut servers = Vec::new();
    for (id, node) in membership.nodes() {
        let is_me = *id == app.id;
        let (last_term, last_index, last_contact) = if is_me {
            (m.current_term, leader_last_index, Some(Duration::ZERO))
        } else {
            let matched = m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten());
            (
                matched.map_or(0, |l| l.leader_id.term),
                matched.map_or(0, |l| l.index),
                contact.get(id).map(|t| t.elapsed()),
            )
        };
        let healthy = crate::api::server_is_healthy(
            last_contact,
            contact_threshold,
            last_term,
            m.current_term,
            last_index,
            leader_last_index,
            settings.max_trailing_logs,
        );
        let since = match stability.get(id) {
            Some((was, since)) if *was == healthy => *since,
            _ => now,
        };
        stability.insert(*id, (healthy, since));
        let version = if is_me {
            env!("CARGO_PKG_VERSION").to_string()
        } else {
            versions.get(&node.name).cloned().unwrap_or_default()
        };
        servers.push(ServerHealth {
            id: id.to_string(),
            name: node.name.clone(),
            address: node.rpc_addr.clone(),
            serf_status: if last_contact.is_some_and(|c| c <= contact_threshold) { "alive" } else { "failed" }.into(),
            version,
            leader: is_me,
            last_contact: last_contact.map_or_else(|| "never".into(), go_duration),
            last_term,
            last_index,
            healthy,
            voter: voters.contains(id),
            stable_since: humantime::format_rfc3339_seconds(since).to_string(),
        });
    }
    stability.retain(|id, _| membership.get_node(id).is_some());
    let healthy_voters = servers.iter().filter(|s| s.voter && s.healthy).count();
    AutopilotHealth {
        healthy: servers.iter().all(|s| s.healthy),
        failure_tolerance: crate::api::failure_tolerance(voters.len(), healthy_voters),
        servers,
    }
}

/// `GET /readyz`, the servers' Kubernetes readiness probe: ready when this server is a voter, a
/// leader is known and (on a follower) the leader was heard from within the election timeout.
/// Ready servers are the ones the client Service sends traffic to.
pub fn readiness(app: &App) -> Result<&'static str, String> {
    let rx = app.raft.metrics();
    let m = rx.borrow();
    if !m.membership_config.membership().voter_ids().any(|v| v == app.id) {
        return Err("not a Raft voter (yet)".into());
    }
    let Some(leader) = m.current_leader else { return Err("no known Raft leader".into()) };
    if leader == app.id {
        return Ok("ready: Raft leader");
    }
    let window = app.config.election_timeout_max_ms().max(1000) * 2;
    match *app.last_contact.lock().unwrap_or_else(|p| p.into_inner()) {
        Some(t) if (t.elapsed().as_millis() as u64) <= window => Ok("ready: Raft follower in contact with the leader"),
        Some(t) => Err(format!("no contact with the Raft leader for {} ms", t.elapsed().as_millis())),
        None => Err("no contact with the Raft leader yet".into()),
    }
}

pub async fn handle_operator(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    let authz = if req.method == Method::GET {
        super::blocking::check_read(app, &super::QueryOpts::parse(req)?).await?;
        authorize(app, req)?
    } else {
        super::acl::authorize_write(app, req)?
    };
    let need = if req.method == Method::GET { Access::Read } else { Access::Write };
    // The keyring has its own ACL rule, as in Consul.
    let global = if tail == "keyring" { Global::Keyring } else { Global::Operator };
    require_global(&authz, global, need)?;
    match (tail, &req.method) {
        ("raft/configuration", &Method::GET) => {
            let opts = super::QueryOpts::parse(req)?;
            super::blocking::check_read(app, &opts).await?;
            Ok(ok_json(&configuration(app)))
        }
        ("raft/peer", &Method::DELETE) => {
            let config = configuration(app);
            let wanted_id = req.get("id");
            let wanted_addr = req.get("address");
            if wanted_id.is_none() && wanted_addr.is_none() {
                return Err(ApiError::BadRequest(
                    "Must specify ?id with server id or ?address with IP:port of peer to remove".into(),
                ));
            }
            let server = config
                .servers
                .iter()
                .find(|s| {
                    Some(s.id.as_str()) == wanted_id
                        || Some(s.node.as_str()) == wanted_id
                        || Some(s.address.as_str()) == wanted_addr
                })
                .ok_or_else(|| ApiError::BadRequest("address or id not found in the Raft configuration".into()))?;
            let id: u64 = server.id.parse().map_err(|_| ApiError::Internal("bad server id".into()))?;
            require_leader(app)?;
            // Removed on purpose: autopilot leaves it out while it keeps running.
            let removed = || app.removed_servers.lock().unwrap_or_else(|p| p.into_inner());
            removed().insert(server.node.clone());
            if let Err(e) = crate::cluster::remove_server(app, id).await {
                removed().remove(&server.node);
                return Err(ApiError::BadRequest(e));
            }
            Ok(ok_json(&true))
        }
        ("raft/transfer-leader", &Method::POST) => {
            require_leader(app)?;
            let to = match req.get("id").filter(|i| !i.is_empty()) {
                None => None,
                Some(id) => {
                    let config = configuration(app);
                    let server = config.servers.iter().find(|s| s.id == id || s.node == id).ok_or_else(|| {
                        ApiError::BadRequest(format!("server {id:?} not found in the Raft configuration"))
                    })?;
                    Some(server.id.parse::<u64>().map_err(|_| ApiError::Internal("bad server id".into()))?)
                }
            };
            let new_leader = crate::cluster::hand_off_leadership(app, to).await.map_err(ApiError::Internal)?;
            Ok(ok_json(&serde_json::json!({ "Success": true, "Leader": new_leader.to_string() })))
        }
        ("autopilot/health", &Method::GET) => {
            // Only the leader knows how far each server has got: forwarded there, never stale.
            require_leader(app)?;
            let health = autopilot_health(app).await;
            let status = if health.healthy { StatusCode::OK } else { StatusCode::TOO_MANY_REQUESTS };
            Ok(super::json(status, &health))
        }
        ("autopilot/configuration", &Method::GET) => Ok(ok_json(&app.sm.read(|s| s.autopilot()))),
        ("autopilot/configuration", &Method::PUT) => {
            let config: crate::api::AutopilotConfiguration = super::json::decode(&req.body)?;
            for (name, value) in [
                ("LastContactThreshold", &config.last_contact_threshold),
                ("ServerStabilizationTime", &config.server_stabilization_time),
            ] {
                crate::api::parse_go_duration(value)
                    .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {name}: {e}")))?;
            }
            let cas = match req.get("cas") {
                None => None,
                Some(v) => Some(
                    v.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("Error parsing cas value: {v:?}")))?,
                ),
            };
            require_leader(app)?;
            match app.propose(Command::AutopilotSet { config, cas }).await?.1 {
                CommandResult::Bool(b) => Ok(ok_json(&b)),
                other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
            }
        }
        ("usage", &Method::GET) => {
            // Only this datacenter is known, so `?global` answers the same.
            let (index, usage) = app.sm.read(|s| s.usage());
            let dc = app.config.datacenter.clone();
            let body = serde_json::json!({
                "Usage": { dc: usage },
                "Index": index,
                "LastContact": app.last_contact_ms(),
                "KnownLeader": app.knows_leader(),
                "ConsistencyLevel": if req.has("stale") { "stale" } else { "leader" },
                "NotModified": false,
                "ResultsFilteredByACLs": false,
            });
            Ok(super::with_query_meta(app, ok_json(&body), index))
        }
        ("keyring", _) => keyring(app, req).await,
        (
            "raft/configuration"
            | "raft/peer"
            | "raft/transfer-leader"
            | "autopilot/health"
            | "autopilot/configuration"
            | "usage",
            m,
        ) => Err(ApiError::MethodNotAllowed(m.clone())),
        _ => Err(ApiError::NotFound(String::new())),
    }
}
