//! Server membership: bootstrap from expected peers, join and removal, and the server RPC port
//! (Raft RPCs, server info, join requests, commands forwarded by followers).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warp::Filter;

use crate::app::App;
use crate::raft::network::{CLUSTER_HEADER, RPC_APPEND, RPC_SNAPSHOT, RPC_VOTE, TARGET_HEADER};
use crate::raft::{decode, encode, NodeId, ServerNode};
use crate::state::{Command, CommandResult};

/// What `GET /raft/info` tells another server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    pub id: NodeId,
    pub node: ServerNode,
    pub initialized: bool,
    pub leader: Option<(NodeId, ServerNode)>,
    pub voters: Vec<NodeId>,
    /// The cluster's identity, once made (last, with a default: older servers leave it out).
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// The id of the last entry in its log (for the election watchdog, `raft::election`; older
    /// servers leave it out).
    #[serde(default)]
    pub last_log: Option<crate::raft::LogId>,
    /// How long ago it last heard from a leader (0: it leads; None: it follows none, or is an
    /// older server).
    #[serde(default)]
    pub leader_contact_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: NodeId,
    pub node: ServerNode,
    /// The joiner's cluster identity, if its state has one (a server that belonged to a cluster).
    #[serde(default)]
    pub cluster_id: Option<String>,
}

/// Why a request from a server of another cluster is refused, if it is: only when both sides know
/// their identity and they differ (a new server knows none until it has caught up).
pub fn cluster_mismatch(ours: Option<&str>, theirs: Option<&str>) -> Option<String> {
    match (ours, theirs) {
        (Some(o), Some(t)) if o != t => {
            Some(format!("refused: the sender belongs to cluster {t}; this server belongs to cluster {o}"))
        }
        _ => None,
    }
}

/// Logs a refusal at most once a minute (a stray server retries many times a second).
fn log_refusal(reason: &str) {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if crate::telemetry::once_a_minute(&LAST) {
        tracing::warn!("server RPC {reason} (logged once a minute)");
    }
}

/// Answer to a forwarded command: `None` when the receiver is not the leader.
type ForwardReply = Result<Option<(u64, CommandResult)>, String>;

/// The node ID is random on first start and kept in the data dir (like Consul's node-id file).
pub fn load_or_create_node_id(dir: &Path) -> std::io::Result<NodeId> {
    let path = dir.join("node-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(id) = text.trim().parse() {
            return Ok(id);
        }
    }
    let id: NodeId = rand::random::<u64>() >> 1;
    std::fs::write(&path, id.to_string())?;
    Ok(id)
}

async fn info(app: &App) -> ServerInfo {
    let heard = app
        .raft
        .with_raft_state(|st| (st.server_state, st.vote_ref().committed, st.vote_last_modified()))
        .await
        .ok()
        .and_then(|(state, committed, at)| match state {
            openraft::ServerState::Leader => Some(0),
            _ if committed => at.map(|t| t.elapsed().as_millis() as u64),
            _ => None,
        });
    let m = app.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    ServerInfo {
        id: app.id,
        node: app.me.clone(),
        initialized: m.membership_config.log_id().is_some(),
        leader: m.current_leader.and_then(|id| membership.get_node(&id).map(|n| (id, n.clone()))),
        voters: membership.voter_ids().collect(),
        cluster_id: app.sm.read(|s| s.cluster_id().map(str::to_string)),
        last_log: app.last_log.get(),
        leader_contact_ms: heard,
    }
}

fn msgpack<T: Serialize>(value: &T) -> warp::reply::Response {
    match encode(value) {
        Ok(bytes) => warp::http::Response::new(bytes.into()),
        Err(e) => {
            let mut r = warp::http::Response::new(format!("encode: {e}").into());
            *r.status_mut() = warp::http::StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

fn bad_body(e: impl std::fmt::Display) -> warp::reply::Response {
    let mut r = warp::http::Response::new(format!("invalid RPC body: {e}").into());
    *r.status_mut() = warp::http::StatusCode::BAD_REQUEST;
    r
}

/// The server RPC port's routes.
pub fn rpc_routes(app: Arc<App>) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let with_app = warp::any().map(move || app.clone());
    // Peers only (the RPC port is not for clients); bodies may be empty (`elect`).
    let body = warp::body::bytes();
    let rpc = warp::post().and(warp::path("raft")).and(warp::path::param::<String>()).and(warp::path::end());
    let cluster = warp::header::optional::<String>(CLUSTER_HEADER);
    let target = warp::header::optional::<String>(TARGET_HEADER);
    let calls = rpc.and(cluster).and(target).and(with_app.clone()).and(body).then(
        |call: String, cluster: Option<String>, target: Option<String>, app: Arc<App>, body: Bytes| async move {
            // A Raft RPC meant for another member (this address's previous, wiped, server): refuse it.
            if let Some(t) = target.filter(|t| *t != app.id.to_string()) {
                let reason =
                    format!("meant for node {t}, refused by node {} (a new server at a member's address)", app.id);
                log_refusal(&reason);
                let mut r = warp::http::Response::new(Bytes::from(reason).into());
                *r.status_mut() = warp::http::StatusCode::CONFLICT;
                return r;
            }
            // On every append: compared under the read lock, nothing copied.
            if let Some(reason) = app.sm.read(|s| cluster_mismatch(s.cluster_id(), cluster.as_deref())) {
                log_refusal(&reason);
                let mut r = warp::http::Response::new(Bytes::from(reason).into());
                *r.status_mut() = warp::http::StatusCode::FORBIDDEN;
                return r;
            }
            match call.as_str() {
                RPC_APPEND => match decode(&body) {
                    Ok(req) => {
                        *app.last_contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                        msgpack(&app.raft.append_entries(req).await)
                    }
                    Err(e) => bad_body(e),
                },
                RPC_VOTE => match decode(&body) {
                    Ok(req) => msgpack(&app.raft.vote(req).await),
                    Err(e) => bad_body(e),
                },
                RPC_SNAPSHOT => match decode(&body) {
                    Ok(req) => {
                        *app.last_contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                        msgpack(&app.raft.install_snapshot(req).await)
                    }
                    Err(e) => bad_body(e),
                },
                "write" => match decode::<Command>(&body) {
                    Ok(cmd) => msgpack(&handle_forwarded_write(&app, cmd).await),
                    Err(e) => bad_body(e),
                },
                // The leader is handing off before it stops: campaign now, its lease has run out.
                "elect" => msgpack(&app.raft.trigger().elect().await.map_err(|e| e.to_string())),
                "join" => match decode::<JoinRequest>(&body) {
                    Ok(req) => msgpack(&handle_join(&app, req).await),
                    Err(e) => bad_body(e),
                },
                _ => {
                    let mut r = warp::http::Response::new(Bytes::from("unknown RPC").into());
                    *r.status_mut() = warp::http::StatusCode::NOT_FOUND;
                    r
                }
            }
        },
    );
    let info_route = warp::get()
        .and(warp::path!("raft" / "info"))
        .and(with_app)
        .then(|app: Arc<App>| async move { msgpack(&info(&app).await) });
    info_route.or(calls).unify()
}

async fn handle_forwarded_write(app: &App, cmd: Command) -> ForwardReply {
    match app.proposer.propose(cmd).await {
        Ok(r) => Ok(Some(r)),
        Err(crate::app::ProposeError::NotLeader) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends a command to the leader's RPC port, with this server's cluster identity.
pub async fn forward_command(
    dialer: &crate::tls::dial::Dialer,
    rpc_addr: &str,
    cluster: Option<&str>,
    cmd: &Command,
) -> ForwardReply {
    let body = encode(cmd).map_err(|e| e.to_string())?;
    let mut request =
        dialer.rpc().post(dialer.rpc_url(rpc_addr, "/raft/write")).timeout(Duration::from_secs(30)).body(body);
    if let Some(id) = cluster {
        request = request.header(CLUSTER_HEADER, id);
    }
    let resp = request.send().await.map_err(|e| format!("forwarding to leader {rpc_addr}: {e}"))?;
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    decode::<ForwardReply>(&bytes).map_err(|e| e.to_string())?
}

/// Leader side of a join: add as learner (waits until caught up), then promote to voter.
async fn handle_join(app: &App, req: JoinRequest) -> Result<(), String> {
    if !app.is_leader() {
        return Err("not the leader".into());
    }
    if let Some(reason) = app.sm.read(|s| cluster_mismatch(s.cluster_id(), req.cluster_id.as_deref())) {
        tracing::warn!(node = %req.node.name, "join {reason}");
        return Err(format!("join of {} {reason}", req.node.name));
    }
    let (voters, stale): (BTreeSet<NodeId>, Vec<(NodeId, ServerNode)>) = {
        let m = app.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        // Members with the joiner's name or address under another ID: the server it replaces (its
        // data directory was lost). As Consul's leader does, take the old one out first, so one
        // process never counts as two members.
        let stale = membership
            .nodes()
            .filter(|(id, n)| {
                **id != req.id && **id != app.id && (n.name == req.node.name || n.rpc_addr == req.node.rpc_addr)
            })
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        (membership.voter_ids().collect(), stale)
    };
    if voters.contains(&req.id) {
        return Ok(());
    }
    for (id, node) in stale {
        tracing::warn!(old = id, new = req.id, node = %node, "a server rejoined under a new ID: removing its old member");
        remove_server(app, id).await?;
    }
    // Autopilot makes it a voter once it has been healthy for ServerStabilizationTime.
    tracing::info!(id = req.id, node = %req.node, "adding server as learner");
    app.raft.add_learner(req.id, req.node.clone(), true).await.map_err(|e| e.to_string())?;
    app.removed_servers.lock().unwrap_or_else(|p| p.into_inner()).remove(&req.node.name);
    Ok(())
}

/// Changes the Raft configuration, waiting (up to 5 s) for one already under way to finish first:
/// autopilot's promotions and an operator's removal may meet.
pub async fn change_membership(
    app: &App,
    change: impl Into<openraft::ChangeMembers<NodeId, ServerNode>> + Clone,
) -> Result<(), String> {
    use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match app.raft.change_membership(change.clone(), false).await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_))))
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Removes a server from the Raft configuration (leader only).
pub async fn remove_server(app: &App, id: NodeId) -> Result<(), String> {
    let (voters, learners): (BTreeSet<NodeId>, BTreeSet<NodeId>) = {
        let m = app.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        (membership.voter_ids().collect(), membership.learner_ids().collect())
    };
    if learners.contains(&id) {
        // A learner never counted towards quorum: just drop it.
        let remove = openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id]));
        return change_membership(app, remove).await;
    }
    if !voters.contains(&id) {
        return Err(format!("server {id} is not in the Raft configuration"));
    }
    let remaining: BTreeSet<NodeId> = voters.into_iter().filter(|v| *v != id).collect();
    if remaining.is_empty() {
        return Err("cannot remove the last server".into());
    }
    // Relative, so a change that finished meanwhile (a promotion) is kept.
    change_membership(app, openraft::ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await?;
    Ok(())
}

/// A server's identity and view, from its RPC port.
pub async fn server_info(dialer: &crate::tls::dial::Dialer, addr: &str) -> Option<ServerInfo> {
    server_info_within(dialer, addr, Duration::from_secs(2)).await
}

/// [`server_info`] with a timeout of its own.
pub async fn server_info_within(
    dialer: &crate::tls::dial::Dialer,
    addr: &str,
    timeout: Duration,
) -> Option<ServerInfo> {
    let resp = dialer.rpc().get(dialer.rpc_url(addr, "/raft/info")).timeout(timeout).send().await.ok()?;
    decode(&resp.bytes().await.ok()?).ok()
}

/// Resolves `retry_join` entries; a DNS name may stand for several servers.
async fn resolve_peers(entries: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in entries {
        match tokio::net::lookup_host(entry.as_str()).await {
            Ok(addrs) => out.extend(addrs.map(|a| a.to_string())),
            Err(e) => tracing::debug!(peer = %entry, error = %e, "cannot resolve peer yet"),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Brings this server into a cluster: initialize a single server, bootstrap once `bootstrap_expect`
/// servers see each other, or join an existing cluster through its leader. Retries until done.
pub async fn bootstrap(app: Arc<App>) {
    let mut shutdown = app.shutdown.subscribe();
    let expect = app.config.bootstrap_expect;
    loop {
        if app.raft.metrics().borrow().membership_config.log_id().is_some() {
            return;
        }
        if expect == 1 && app.config.retry_join.is_empty() {
            let mut members = BTreeMap::new();
            members.insert(app.id, app.me.clone());
            match app.raft.initialize(members).await {
                Ok(()) => tracing::info!("bootstrapped a single-server cluster"),
                Err(e) => tracing::debug!(error = %e, "initialize"),
            }
            return;
        }
        if let Err(e) = try_join_or_bootstrap(&app, expect).await {
            tracing::info!(reason = %e, "waiting for peers");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn try_join_or_bootstrap(app: &App, expect: usize) -> Result<(), String> {
    let mut servers: BTreeMap<NodeId, ServerNode> = BTreeMap::new();
    servers.insert(app.id, app.me.clone());
    for addr in resolve_peers(&app.config.retry_join).await {
        let Some(peer) = server_info(&app.dialer, &addr).await else { continue };
        if peer.initialized {
            // An existing cluster: ask its leader to add us.
            let Some((_, leader)) = peer.leader else { return Err("peer has no leader yet".into()) };
            let cluster_id = app.sm.read(|s| s.cluster_id().map(str::to_string));
            let body =
                encode(&JoinRequest { id: app.id, node: app.me.clone(), cluster_id }).map_err(|e| e.to_string())?;
            let resp = app
                .dialer
                .rpc()
                .post(app.dialer.rpc_url(&leader.rpc_addr, "/raft/join"))
                .timeout(Duration::from_secs(60))
                .body(body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
            let reply: Result<(), String> = decode(&bytes).map_err(|e| e.to_string())?;
            reply?;
            tracing::info!(leader = %leader, "joined the cluster");
            return Ok(());
        }
        servers.insert(peer.id, peer.node);
    }
    if servers.len() < expect {
        return Err(format!("{} of {expect} expected servers visible", servers.len()));
    }
    // Only the lowest ID bootstraps, so no two servers can initialize different configurations.
    if servers.keys().next() != Some(&app.id) {
        return Err("waiting for the lowest-ID server to bootstrap".into());
    }
    tracing::info!(servers = servers.len(), "bootstrapping the cluster");
    app.raft.initialize(servers).await.map_err(|e| e.to_string())
}

/// Hands leadership to the most up-to-date voter before this leader stops (openraft 0.9 has no
/// TimeoutNow): stop heartbeats, wait out the leader lease, ask the chosen follower to campaign.
/// Without it, followers first wait for their own election timeouts, then for the lease.
/// `to`: the voter to hand off to; by default the most up-to-date one. Returns the new leader's ID.
pub async fn hand_off_leadership(app: &App, to: Option<NodeId>) -> Result<NodeId, String> {
    let m = app.raft.metrics().borrow().clone();
    if m.current_leader != Some(app.id) {
        return Err("this server is not the leader".into());
    }
    let membership = m.membership_config.membership();
    let is_voter = |id: NodeId| id != app.id && membership.voter_ids().any(|v| v == id);
    let target_id = match to {
        Some(id) if is_voter(id) => id,
        Some(id) => return Err(format!("server {id} is not another voter")),
        None => m
            .replication
            .as_ref()
            .and_then(|r| {
                r.iter()
                    .filter(|(id, _)| is_voter(**id))
                    .max_by_key(|(_, matched)| matched.map(|l| l.index))
                    .map(|(id, _)| *id)
            })
            .ok_or("there is no other voter to hand off to")?,
    };
    let target = membership.get_node(&target_id).cloned().ok_or("unknown target server")?;
    tracing::info!(to = %target, "handing off leadership");
    app.raft.runtime_config().heartbeat(false);
    tokio::time::sleep(Duration::from_millis(app.config.election_timeout_max_ms() + 100)).await;
    let asked = app
        .dialer
        .rpc()
        .post(app.dialer.rpc_url(&target.rpc_addr, "/raft/elect"))
        .timeout(Duration::from_secs(2))
        .body(Vec::new())
        .send()
        .await;
    let mut rx = app.raft.metrics();
    let changed =
        tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|m| m.current_leader.is_some_and(|l| l != app.id)))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|m| m.current_leader));
    // Still running (a transfer, not a shutdown): heartbeats back on, as follower or leader.
    app.raft.runtime_config().heartbeat(true);
    match (asked, changed) {
        (Err(e), _) => Err(format!("asking {target} to campaign: {e}")),
        (_, Some(leader)) => Ok(leader),
        _ => Err("leadership did not move within 3 s".into()),
    }
}

/// Leader side failure detection for servers: each one's RPC port is probed every second; three
/// misses in a row set its `serfHealth` critical (which also invalidates its sessions), and an answer
/// sets it passing again. Sidecars are watched by gossip instead (see the sidecar).
pub async fn probe_servers(app: Arc<App>) {
    let mut shutdown = app.shutdown.subscribe();
    let mut misses: BTreeMap<NodeId, u32> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        if !app.is_leader() {
            misses.clear();
            continue;
        }
        let members: Vec<(NodeId, ServerNode)> = app
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != app.id)
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        misses.retain(|id, _| members.iter().any(|(m, _)| m == id));
        let probes = members.iter().map(|(_, n)| async {
            app.dialer
                .rpc()
                .get(app.dialer.rpc_url(&n.rpc_addr, "/raft/info"))
                .timeout(Duration::from_millis(800))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        });
        let results = futures::future::join_all(probes).await;
        for ((id, node), alive) in members.iter().zip(results) {
            if alive {
                app.server_contact.lock().unwrap_or_else(|p| p.into_inner()).insert(*id, Instant::now());
            }
            let count = misses.entry(*id).or_insert(0);
            *count = if alive { 0 } else { *count + 1 };
            let want = if *count >= 3 {
                crate::api::HealthStatus::Critical
            } else if *count == 0 {
                crate::api::HealthStatus::Passing
            } else {
                continue;
            };
            let current = app.sm.read(|s| s.check(&node.name, "serfHealth").map(|c| c.status));
            if current.is_none() || current == Some(want) {
                continue;
            }
            let output = if want == crate::api::HealthStatus::Critical {
                "Agent not live or unreachable".to_string()
            } else {
                "Agent alive and reachable".to_string()
            };
            tracing::info!(server = %node, status = want.as_str(), "server health changed");
            let cmd = Command::CheckStatus {
                node: node.name.clone(),
                check_id: "serfHealth".into(),
                status: want,
                output,
                now_ms: crate::app::now_ms(),
            };
            if let Err(e) = app.propose(cmd).await {
                tracing::warn!(error = %e, "could not update server health");
            }
        }
    }
}
