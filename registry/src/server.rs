//! Wires config, Raft, cluster membership and HTTP together around one `App`, and runs the leader's
//! and the agent's periodic duties.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::api::{parse_go_duration, HealthStatus};
pub use crate::app::{now_ms, App, ProposeError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{Raft, ServerNode};
use crate::state::{Command, WatchHub};

/// Leader duties, run on every server but acting only while it leads: expire session TTLs, keep the
/// servers registered in the catalog with a passing `serfHealth`.
pub async fn leader_loop(app: Arc<App>) {
    let mut shutdown = app.shutdown.subscribe();
    let mut was_leader = false;
    let mut registered_membership = None;
    let mut acl_ready = false;
    let mut tombstones = TombstoneGc::default();
    let mut raft_metrics = app.raft.metrics();
    loop {
        // Every 250 ms, and at once when this server gains or loses leadership: a new leader
        // registers the servers right away, so the node is ready moments after the election.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = raft_metrics.wait_for(|m| (m.current_leader == Some(app.id)) != was_leader) => {}
            _ = shutdown.changed() => return,
        }
        let leader = app.is_leader();
        if leader && !was_leader {
            // New leader: every TTL session gets a fresh deadline, as Consul resets timers on election.
            app.session_deadlines.lock().unwrap_or_else(|p| p.into_inner()).clear();
            registered_membership = None;
            acl_ready = false;
            tombstones = TombstoneGc::default();
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        if app.config.acl_enabled && !acl_ready {
            match crate::http::acl::ensure_acl_bootstrap(&app).await {
                Ok(()) => acl_ready = true,
                Err(e) => tracing::warn!(error = %e, "could not initialize ACLs"),
            }
        }
        // (Re-)register the servers whenever the Raft configuration changes.
        let membership = *app.raft.metrics().borrow().membership_config.log_id();
        // Also after a snapshot restore, which can drop this server's own registration.
        let registered = app.sm.read(|s| s.check(&app.me.name, "serfHealth").is_some());
        if registered_membership != Some(membership) || !registered {
            match register_servers(&app).await {
                Ok(()) => registered_membership = Some(membership),
                Err(e) => tracing::warn!(error = %e, "could not register servers in the catalog"),
            }
        }
        // Expired ACL tokens are refused at once; the leader also deletes them, as Consul's reaper does.
        let now = crate::http::acl::now_rfc3339();
        if app.config.acl_enabled && app.sm.read(|s| !s.acl_expired_tokens(&now).is_empty()) {
            if let Err(e) = app.propose(Command::AclTokensReapExpired { now }).await {
                tracing::warn!(error = %e, "could not delete expired ACL tokens");
            }
        }
        let (kv_index, buried) = app.sm.read(|s| (s.indexes().kvs, s.kv_tombstone_count()));
        if let Some(up_to) = tombstones.due(Instant::now(), kv_index, TOMBSTONE_TTL) {
            if buried > 0 {
                if let Err(e) = app.propose(Command::KvReapTombstones { up_to }).await {
                    tracing::warn!(error = %e, "could not reap KV tombstones");
                }
            }
        }
        for id in expired_sessions(&app) {
            tracing::info!(session = %id, "session TTL expired");
            if let Err(e) = app.propose(Command::SessionDestroy { id, now_ms: now_ms() }).await {
                tracing::warn!(error = %e, "could not destroy expired session");
            }
        }
    }
}

/// Consul's tombstone TTL: a deleted key keeps counting in its prefixes' indexes this long.
const TOMBSTONE_TTL: Duration = Duration::from_secs(15 * 60);
/// How often the leader notes the KV index (Consul's tombstone GC granularity).
const TOMBSTONE_GRANULARITY: Duration = Duration::from_secs(30);

/// The leader's tombstone GC, as Consul's: it notes the KV index every 30 s and, once a note is older
/// than the TTL, every tombstone up to that index may go. Only indexes travel in the reap command,
/// so every server forgets the same tombstones.
#[derive(Default)]
struct TombstoneGc {
    hints: VecDeque<(Instant, u64)>,
}

impl TombstoneGc {
    fn due(&mut self, now: Instant, kv_index: u64, ttl: Duration) -> Option<u64> {
        if self.hints.back().is_none_or(|(at, _)| now.duration_since(*at) >= TOMBSTONE_GRANULARITY) {
            self.hints.push_back((now, kv_index));
        }
        let mut up_to = None;
        while let Some(&(at, index)) = self.hints.front() {
            if now.duration_since(at) < ttl {
                break;
            }
            up_to = Some(index);
            self.hints.pop_front();
        }
        up_to
    }
}

fn expired_sessions(app: &App) -> Vec<String> {
    let sessions = app.sm.read(|s| s.session_list().1);
    let mut deadlines = app.session_deadlines.lock().unwrap_or_else(|p| p.into_inner());
    deadlines.retain(|id, _| sessions.iter().any(|s| &s.id == id));
    let now = Instant::now();
    let mut expired = Vec::new();
    for s in sessions.iter().filter(|s| !s.ttl.is_empty()) {
        match deadlines.get(&s.id) {
            Some(d) if *d <= now => expired.push(s.id.clone()),
            Some(_) => {}
            None => {
                if let Ok(ttl) = parse_go_duration(&s.ttl) {
                    deadlines.insert(s.id.clone(), now + ttl * 2);
                }
            }
        }
    }
    expired
}

/// Registers every Raft server as a catalog node with the `consul` service and a passing `serfHealth`.
async fn register_servers(app: &App) -> Result<(), ProposeError> {
    let members: Vec<ServerNode> =
        app.raft.metrics().borrow().membership_config.membership().nodes().map(|(_, n)| n.clone()).collect();
    for node in members {
        let host = node.rpc_addr.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or(node.rpc_addr.clone());
        let port = node.rpc_addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(8300);
        let request = crate::api::RegisterRequest {
            node: Some(node.name.clone()),
            address: Some(host),
            datacenter: Some(app.config.datacenter.clone()),
            service: Some(crate::api::ServiceRegistration {
                id: Some("consul".into()),
                service: "consul".into(),
                port: Some(port),
                ..Default::default()
            }),
            check: Some(crate::api::CheckRegistration {
                check_id: Some("serfHealth".into()),
                name: Some("Serf Health Status".into()),
                status: Some(HealthStatus::Passing),
                output: Some("Agent alive and reachable".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        app.propose(Command::Register { request, now_ms: now_ms() }).await?;
    }
    Ok(())
}

/// Listening addresses a started server actually bound (ports may have been 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The API's address: plain HTTP, or HTTPS when plain HTTP is off.
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub rpc: SocketAddr,
}

/// Starts a server and runs it until `shutdown` flips to true.
pub async fn run(
    config: Config,
    shutdown_signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (app, tasks) = start(config).await?;
    let mut raft_metrics = app.raft.metrics();
    let fatal = tokio::select! {
        _ = shutdown_signal => None,
        _ = app.leave.notified() => {
            tracing::info!("leaving: asked through /v1/agent/leave");
            None
        }
        // The Raft core stops for good on a storage error (its log could not be written: a full or
        // failing disk). Serving on would answer from a frozen state (a former leader would even go
        // on believing it leads and answer default-mode reads from it) and never catch up, even once
        // the disk has room again: exit instead, as etcd does, for a supervisor to restart the server
        // (the log reopens intact).
        m = raft_metrics.wait_for(|m| raft_failed(&m.running_state).is_some()) => {
            m.ok().and_then(|m| raft_failed(&m.running_state))
        }
    };
    if let Some(e) = &fatal {
        tracing::error!(error = %e, "the Raft core stopped: shutting down");
    }
    stop(app, tasks).await;
    match fatal {
        Some(e) => Err(anyhow::anyhow!("the Raft core stopped: {e}")),
        None => Ok(()),
    }
}

/// A Raft core's fatal error other than being shut down.
fn raft_failed(state: &Result<(), openraft::error::Fatal<crate::raft::NodeId>>) -> Option<String> {
    match state {
        Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// Everything `start` spawned.
pub struct Tasks {
    handles: Vec<tokio::task::JoinHandle<()>>,
    pub bound: Bound,
}

pub async fn start(config: Config) -> anyhow::Result<(Arc<App>, Tasks)> {
    config.validate().map_err(anyhow::Error::msg)?;
    let tls = match config.tls.files() {
        Some(files) => Some(crate::tls::Material::load(files).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let http_listener = match config.http_enabled {
        true => Some(tokio::net::TcpListener::bind(config.http_addr).await?),
        false => None,
    };
    let https_listener = match config.https_addr {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    let rpc_listener = tokio::net::TcpListener::bind(config.rpc_addr).await?;
    let dns_listeners = crate::dns::bind_at(config.dns_addr, config.dns_addr_optional).await?;
    let https = https_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let http = match (&http_listener, https) {
        (Some(l), _) => l.local_addr()?,
        (None, Some(a)) => a,
        (None, None) => anyhow::bail!("neither HTTP nor HTTPS is on"),
    };
    let bound = Bound { http, https, rpc: rpc_listener.local_addr()? };
    let mut config = config;
    if config.advertise_https.is_none() {
        config.advertise_https = https.map(|a| a.to_string());
    }
    // With port 0 (tests), advertise what was actually bound.
    if config.advertise_rpc.is_none() {
        config.advertise_rpc = Some(bound.rpc.to_string());
    }
    if config.advertise_http.is_none() {
        config.advertise_http = Some(bound.http.to_string());
    }

    let (log_store, snapshot_dir, id) = match &config.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            (
                LogStore::open(&dir.join("raft.redb"))?,
                Some(dir.join("snapshots")),
                crate::cluster::load_or_create_node_id(dir)?,
            )
        }
        None => (LogStore::in_memory()?, None, rand::random::<u64>() >> 1),
    };
    let hub = WatchHub::new();
    let sm = StateMachineStore::open(&config.datacenter, snapshot_dir, hub)?;
    let raft_config = openraft::Config {
        cluster_name: "roster".into(),
        heartbeat_interval: config.raft_heartbeat_ms,
        election_timeout_min: config.raft_election_timeout_ms,
        // openraft's leader lease equals the max election timeout: keep it close to the min so a
        // failover does not wait out a long lease.
        election_timeout_max: config.election_timeout_max_ms(),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_threshold),
        max_in_snapshot_log_to_keep: config.snapshot_threshold / 10,
        install_snapshot_timeout: 5_000,
        ..Default::default()
    }
    .validate()?;
    let outgoing = tls.clone().map(|material| crate::tls::dial::Outgoing {
        material,
        verify_outgoing: config.tls.verify_outgoing || config.tls.verify_server_hostname,
        verify_server_hostname: config.tls.verify_server_hostname,
        domain: config.dns.domain.clone(),
    });
    let dialer = Arc::new(crate::tls::dial::Dialer::new(outgoing, &config.datacenter).map_err(anyhow::Error::msg)?);
    let lease = Arc::new(crate::raft::lease::LeaseClock::default());
    let network = Network::new(sm.clone(), dialer.clone(), lease.clone());
    let last_log = log_store.last_log_view();
    let raft = Raft::new(id, Arc::new(raft_config), network, log_store, sm.clone()).await?;
    let me = ServerNode {
        name: config.node_name.clone(),
        rpc_addr: config.advertised_rpc(),
        http_addr: config.advertised_http(),
    };
    let gossip = match config.gossip_addr {
        Some(addr) => {
            let g = start_gossip(&config, &me, addr).await?;
            g.announce(crate::gossip::KEY_RPC, &me.rpc_addr).await;
            Some(Arc::new(g))
        }
        None => None,
    };
    let wan = match config.wan_addr {
        Some(addr) => Some(Arc::new(crate::wan::Wan::start(&config, &me, addr).await?)),
        None => None,
    };
    let http = crate::client::http_builder().build()?;
    let metrics = Metrics::new();
    let node = crate::agent::NodeInfo {
        name: me.name.clone(),
        address: me.rpc_addr.rsplit_once(':').map_or(me.rpc_addr.clone(), |(h, _)| h.to_string()),
        datacenter: config.datacenter.clone(),
        meta: crate::api::Meta::from([("consul-network-segment".to_string(), String::new())]),
    };
    let (agent, check_updates) = crate::agent::Agent::new(node, config.enable_script_checks);
    let remote_tokens = crate::acl_remote::RemoteTokens::new(&config);
    let app = Arc::new(App {
        id,
        me,
        config,
        proposer: crate::proposer::Proposer::start(raft.clone()),
        read_barrier: crate::proposer::ReadBarrier::start(raft.clone()),
        lease,
        last_log,
        raft,
        sm,
        http,
        dialer,
        metrics,
        session_deadlines: Mutex::new(HashMap::new()),
        agent,
        last_contact: Mutex::new(None),
        server_contact: Mutex::new(Default::default()),
        server_stability: Mutex::new(Default::default()),
        removed_servers: Mutex::new(Default::default()),
        gossip: gossip.clone(),
        wan,
        blocking_queries: Default::default(),
        shutdown: watch::channel(false).0,
        leave: tokio::sync::Notify::new(),
        events: Default::default(),
        acl_replication: Default::default(),
        remote_tokens,
    });

    let mut handles = Vec::new();
    let stop_rx = app.shutdown.subscribe();
    let graceful = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    use crate::http::serve::{serve, Limits, Transport};
    let limits = Limits {
        max_conns_per_client: app.config.http_max_conns_per_client,
        header_read_timeout: Duration::from_millis(app.config.http_read_header_timeout_ms.max(1)),
    };
    let acceptor = |require_client_certificate: bool| -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
        match tls.as_ref().filter(|m| m.has_certificate()) {
            Some(m) => {
                Ok(Some(Arc::new(m.server_config(require_client_certificate).map_err(anyhow::Error::msg)?).into()))
            }
            None => Ok(None),
        }
    };
    let verify_incoming = app.config.tls.verify_incoming;
    // Consul's RPC port: TLS once the server has a certificate; plain too unless verify_incoming.
    let rpc_transport = match acceptor(verify_incoming)? {
        Some(a) if verify_incoming => Transport::Tls(a),
        Some(a) => Transport::TlsOrPlain(a),
        None => Transport::Plain,
    };
    let rpc_limits = Limits { max_conns_per_client: 0, ..limits };
    let rpc_routes = crate::cluster::rpc_routes(app.clone());
    handles.push(tokio::spawn(serve(rpc_listener, rpc_routes, rpc_limits, rpc_transport, graceful(stop_rx.clone()))));
    if let Some(listener) = http_listener {
        let routes = crate::http::routes(app.clone());
        handles.push(tokio::spawn(serve(listener, routes, limits, Transport::Plain, graceful(stop_rx.clone()))));
    }
    if let (Some(listener), Some(a)) = (https_listener, acceptor(verify_incoming)?) {
        let routes = crate::http::routes(app.clone());
        handles.push(tokio::spawn(serve(listener, routes, limits, Transport::Tls(a), graceful(stop_rx))));
    }
    if let Some(m) = tls {
        handles.push(tokio::spawn(m.watch(Duration::from_secs(1), app.shutdown.subscribe())));
    }
    handles.push(tokio::spawn(crate::cluster::bootstrap(app.clone())));
    handles.push(tokio::spawn(leader_loop(app.clone())));
    handles.push(tokio::spawn(crate::acl_replication::run(app.clone())));
    handles.push(tokio::spawn(app.agent.clone().run(check_updates, app.shutdown.subscribe())));
    let catalog: Arc<dyn crate::agent::sync::Catalog> = app.clone();
    let sync_every = Duration::from_secs(60);
    handles.push(tokio::spawn(crate::agent::sync::sync_loop(
        app.agent.clone(),
        catalog,
        sync_every,
        app.shutdown.subscribe(),
    )));
    handles.push(tokio::spawn(crate::metrics::watch_raft(app.clone())));
    handles.push(tokio::spawn(crate::cluster::probe_servers(app.clone())));
    handles.push(tokio::spawn(crate::raft::election::watchdog(app.clone())));
    handles.push(tokio::spawn(crate::autopilot::run(app.clone(), gossip.clone())));
    if let Some(listeners) = dns_listeners {
        let catalog = Arc::new(crate::dns_catalog::StateCatalog(app.clone()));
        let settings = app.config.dns.clone();
        handles.push(tokio::spawn(crate::dns::serve(listeners, catalog, settings, app.shutdown.subscribe())));
    }
    if let Some(g) = gossip {
        handles.push(tokio::spawn(crate::reconcile::reconcile_loop(app.clone(), g.clone())));
        handles.push(tokio::spawn(crate::reconcile::coordinate_loop(app.clone(), g.clone(), Duration::from_secs(5))));
        let (app, buffer) = (app.clone(), app.events.clone());
        handles.push(tokio::spawn(async move {
            let shutdown = app.shutdown.subscribe();
            g.deliver_events(buffer, || app.agent.for_events(), shutdown).await;
        }));
    }
    tracing::info!(node = %app.me.name, id = app.id, http = %bound.http, https = ?bound.https, rpc = %bound.rpc, "roster server started");
    Ok((app, Tasks { handles, bound }))
}

async fn start_gossip(config: &Config, me: &ServerNode, addr: SocketAddr) -> anyhow::Result<crate::gossip::Membership> {
    let host = me.rpc_addr.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or(me.rpc_addr.clone());
    crate::gossip::Joining {
        pool: crate::gossip::Pool::Lan,
        name: me.name.clone(),
        address: host,
        datacenter: config.datacenter.clone(),
        role: crate::gossip::Role::Server,
        bind: addr,
        advertise: config.gossip_advertise,
        seeds: config.gossip_seeds.clone(),
        interval: Duration::from_millis(config.gossip_interval_ms),
        phi_threshold: config.gossip_phi_threshold,
        key: config.gossip_key.clone(),
        keyring_file: config.data_dir.as_ref().map(|d| d.join("gossip.keyring")),
    }
    .join_udp()
    .await
}

/// Graceful stop: hand leadership off, stop serving, then shut Raft down.
pub async fn stop(app: Arc<App>, tasks: Tasks) {
    tracing::info!("shutting down");
    // A stopped Raft core has nothing to hand off (its metrics may still say it leads).
    if app.is_leader() && app.raft.metrics().borrow().running_state.is_ok() {
        if let Err(e) = crate::cluster::hand_off_leadership(&app, None).await {
            tracing::warn!(error = %e, "leadership hand-off failed");
        }
    }
    let _ = app.shutdown.send(true);
    if let Some(g) = &app.gossip {
        let _ = g.leave().await;
    }
    if let Some(w) = &app.wan {
        let _ = w.membership().leave().await;
    }
    // In-flight blocking queries may wait minutes: give everything 3 s, then cut it off.
    let aborts: Vec<_> = tasks.handles.iter().map(|h| h.abort_handle()).collect();
    if tokio::time::timeout(Duration::from_secs(3), futures::future::join_all(tasks.handles)).await.is_err() {
        aborts.iter().for_each(|a| a.abort());
    }
    let _ = app.raft.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_are_reaped_only_up_to_an_index_older_than_the_ttl() {
        let mut gc = TombstoneGc::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        assert_eq!(gc.due(t0, 10, ttl), None);
        assert_eq!(gc.due(t0 + Duration::from_secs(31), 20, ttl), None);
        // The first note (index 10) is now a TTL old; the second (20) is not yet.
        assert_eq!(gc.due(t0 + Duration::from_secs(61), 25, ttl), Some(10));
        assert_eq!(gc.due(t0 + Duration::from_secs(62), 25, ttl), None);
        assert_eq!(gc.due(t0 + Duration::from_secs(95), 30, ttl), Some(20));
    }
}
