//! LAN gossip membership, wrapped in one type over chitchat (feature `gossip`; servers and sidecars).
//!
//! Every sidecar and server gossips a few small keys about itself (constants below, well under 1 KiB
//! per node). Failure detection is chitchat's phi-accrual detector, spread over all members. The
//! pure `diff` turns two views of the live members into typed change events; `Membership` feeds it
//! from chitchat's live-node watch. The transport is injected, so tests run in process and cut links
//! to simulate partitions; over the network it is UDP, sealed with the pool's key when there is one
//! (`encrypted`).

mod encrypted;
pub mod events;
pub mod rotation;
pub mod udp;
pub mod vivaldi;

pub use encrypted::{GossipKey, Keyring};
pub use udp::GossipUdpTransport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::transport::Transport;
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
};
use tokio::sync::watch;

/// Gossip keys. Changing one breaks mixed-version pools: add new ones instead.
pub const KEY_ADDRESS: &str = "addr";
pub const KEY_DATACENTER: &str = "dc";
pub const KEY_ROLE: &str = "role";
pub const KEY_VERSION: &str = "vsn";
/// Set by a member that is shutting down cleanly: the leader deregisters it instead of waiting.
pub const KEY_LEFT: &str = "left";
/// The member's Vivaldi coordinate (JSON), as its prober last published it.
pub const KEY_COORD: &str = "coord";
/// A server's Raft RPC address (host:port): how the leader adds it back to the configuration.
pub const KEY_RPC: &str = "rpc";
/// A WAN member's HTTP API address, where requests for its datacenter are forwarded.
pub const KEY_HTTP: &str = "http";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "server" => Some(Role::Server),
            "client" => Some(Role::Client),
            _ => None,
        }
    }
}

/// What the pool knows about one live member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub address: String,
    pub datacenter: String,
    pub role: Role,
    pub version: String,
    /// Where it gossips (from its chitchat ID).
    pub gossip_addr: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    Joined(Member),
    Updated(Member),
    /// Failed or left: no longer live.
    Left(String),
}

/// Reads one member out of its gossip state; `None` until it has gossiped every key.
pub fn member_of(id: &ChitchatId, state: &NodeState) -> Option<Member> {
    Some(Member {
        name: id.node_id.to_string(),
        address: state.get(KEY_ADDRESS)?.to_string(),
        datacenter: state.get(KEY_DATACENTER)?.to_string(),
        role: Role::parse(state.get(KEY_ROLE)?)?,
        version: state.get(KEY_VERSION)?.to_string(),
        gossip_addr: id.gossip_advertise_addr,
    })
}

/// Reads members out of gossip state; nodes that have not gossiped every key yet are skipped.
pub fn members_from_states(states: &BTreeMap<ChitchatId, NodeState>) -> BTreeMap<String, Member> {
    states.iter().filter_map(|(id, state)| member_of(id, state)).map(|m| (m.name.clone(), m)).collect()
}

/// The changes that turn `before` into `after`.
pub fn diff(before: &BTreeMap<String, Member>, after: &BTreeMap<String, Member>) -> Vec<MembershipChange> {
    let mut changes = Vec::new();
    for (name, member) in after {
        match before.get(name) {
            None => changes.push(MembershipChange::Joined(member.clone())),
            Some(old) if old != member => changes.push(MembershipChange::Updated(member.clone())),
            Some(_) => {}
        }
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        changes.push(MembershipChange::Left(name.clone()));
    }
    changes
}

/// Gossip round interval: each member gossips with a few others this often.
pub const DEFAULT_INTERVAL_MS: u64 = 200;
/// Phi-accrual threshold: lower detects sooner, higher tolerates more loss (docs/benchmarks.md).
pub const DEFAULT_PHI_THRESHOLD: f64 = 8.0;

/// The failure detector for a gossip interval: chitchat's phi accrual, with heartbeat intervals
/// assumed at one gossip round before samples arrive, and failed members kept an hour so the
/// pool can tell "failed" from "never known". Phi uses the mean of the last `sampling_window_size`
/// heartbeat intervals; chitchat's default window (1,000 samples, 8 KB per member watched) would
/// cost every pod 8 MB in a pool of 1,000, while 100 samples (20 s of rounds) estimate the mean as well.
pub fn failure_detector(interval: Duration, phi_threshold: f64) -> FailureDetectorConfig {
    FailureDetectorConfig {
        phi_threshold,
        sampling_window_size: 100,
        initial_interval: interval,
        max_interval: interval * 10,
        dead_node_grace_period: Duration::from_secs(3600),
    }
}

/// One pool per datacenter: members of another datacenter's pool ignore our messages.
pub fn cluster_id(datacenter: &str) -> String {
    format!("roster-{datacenter}")
}

/// Which pool a member joins: its datacenter's LAN pool (servers and sidecars), or the WAN pool of
/// every datacenter's servers (Consul's serf_wan), whose members are named `node.dc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Lan,
    Wan,
}

/// The WAN pool's chitchat cluster: one for all datacenters.
pub const WAN_CLUSTER_ID: &str = "roster-wan";

/// Everything the pool knows, by node name: live members, members the failure detector gave up on,
/// and members that announced a clean leave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolView {
    pub live: BTreeMap<String, Member>,
    pub failed: BTreeMap<String, Member>,
    pub left: BTreeMap<String, Member>,
}

/// Sorts gossip state into a [`PoolView`]. Only a name's newest generation counts: a pod that left
/// and came back under the same name is whatever its new incarnation is. A member is failed only
/// once it has been live here: one just heard of, whose heartbeats have not been judged yet, is
/// still joining and not listed (chitchat counts it dead until then).
pub fn pool_view<'a>(
    states: &BTreeMap<ChitchatId, NodeState>,
    live_ids: impl IntoIterator<Item = &'a ChitchatId>,
    ever_live: &std::collections::BTreeSet<ChitchatId>,
) -> PoolView {
    let live_ids: std::collections::BTreeSet<&ChitchatId> = live_ids.into_iter().collect();
    let mut newest: BTreeMap<&str, (&ChitchatId, &NodeState)> = BTreeMap::new();
    for (id, state) in states {
        let slot = newest.entry(&*id.node_id).or_insert((id, state));
        if id.generation_id > slot.0.generation_id {
            *slot = (id, state);
        }
    }
    let mut view = PoolView::default();
    for (id, state) in newest.into_values() {
        let Some(member) = member_of(id, state) else { continue };
        if state.get(KEY_LEFT).is_some() {
            view.left.insert(member.name.clone(), member);
        } else if live_ids.contains(id) {
            view.live.insert(member.name.clone(), member);
        } else if ever_live.contains(id) {
            view.failed.insert(member.name.clone(), member);
        }
    }
    view
}

/// How this node joins the pool.
pub struct MembershipConfig {
    pub me: Member,
    pub gossip_addr: SocketAddr,
    /// What other members dial (the pod IP when listening on 0.0.0.0); defaults to `gossip_addr`.
    pub advertise_addr: Option<SocketAddr>,
    /// host:port of other members (DNS names allowed, re-resolved by chitchat).
    pub seeds: Vec<String>,
    pub cluster_id: String,
    pub gossip_interval: Duration,
    pub failure_detector: FailureDetectorConfig,
}

/// What a server or sidecar says about itself to join its datacenter's pool over UDP.
pub struct Joining {
    pub pool: Pool,
    pub name: String,
    /// The node's address in the catalog (pod IP).
    pub address: String,
    pub datacenter: String,
    pub role: Role,
    pub bind: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub seeds: Vec<String>,
    pub interval: Duration,
    pub phi_threshold: f64,
    /// The pool's shared key (base64, as configured): every datagram sealed with it. None: plaintext.
    pub key: Option<String>,
    /// Where the keyring is kept across restarts (servers: in their data directory); when it
    /// exists it wins over `key`, which may have been rotated away since.
    pub keyring_file: Option<std::path::PathBuf>,
}

impl Joining {
    /// Joins over real UDP with the servers' and sidecars' common settings.
    pub async fn join_udp(self) -> anyhow::Result<Membership> {
        let bind = self.bind;
        let config = MembershipConfig {
            me: Member {
                name: self.name,
                address: self.address,
                datacenter: self.datacenter.clone(),
                role: self.role,
                version: env!("CARGO_PKG_VERSION").into(),
                gossip_addr: self.advertise.unwrap_or(bind),
            },
            gossip_addr: bind,
            advertise_addr: self.advertise,
            seeds: self.seeds,
            cluster_id: match self.pool {
                Pool::Lan => cluster_id(&self.datacenter),
                Pool::Wan => WAN_CLUSTER_ID.to_string(),
            },
            gossip_interval: self.interval,
            failure_detector: failure_detector(self.interval, self.phi_threshold),
        };
        let keyring = match (&self.key, &self.keyring_file) {
            (None, _) => None,
            (Some(key), file) => Some(match file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
                Some(saved) => {
                    let keyring = Keyring::from_saved(&saved).map_err(anyhow::Error::msg)?;
                    tracing::info!(
                        "gossip keys loaded from the saved keyring (the configured key may have been rotated)"
                    );
                    keyring
                }
                None => Keyring::new(key).map_err(anyhow::Error::msg)?,
            }),
        };
        let me = Arc::new(vivaldi::Shared::new(&config.me.name));
        let transport = GossipUdpTransport { keyring: keyring.clone(), me: me.clone() };
        let mut membership = Membership::start(config, &transport)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start gossip on {bind}: {e:#}"))?;
        membership.coordinates = me.clone();
        membership.keyring = keyring.clone();
        membership.keyring_file = self.keyring_file.clone();
        let stop = membership.stop.subscribe();
        tokio::spawn(udp::probe_loop(membership.chitchat(), me, keyring.clone(), bind, self.interval * 2, stop));
        if let Some(keyring) = keyring {
            membership.publish_keys(&keyring).await;
            let stop = membership.stop.subscribe();
            let (chitchat, file) = (membership.chitchat(), self.keyring_file.clone());
            tokio::spawn(keyring_loop(chitchat, keyring, file, stop));
        }
        Ok(membership)
    }
}

/// This node's membership in the gossip pool.
pub struct Membership {
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    id: ChitchatId,
    interval: Duration,
    /// Taken by the first `shutdown`/`leave`.
    handle: tokio::sync::Mutex<Option<ChitchatHandle>>,
    /// Sequence of the events this member fired (its gossip keys).
    fired: std::sync::atomic::AtomicU64,
    /// Every member this node has seen live (see [`pool_view`]).
    ever_live: Arc<std::sync::Mutex<std::collections::BTreeSet<ChitchatId>>>,
    /// This member's network coordinate (stays at the origin without a prober).
    coordinates: Arc<vivaldi::Shared>,
    /// The pool's keys (None: plaintext gossip).
    keyring: Option<Keyring>,
    keyring_file: Option<std::path::PathBuf>,
    /// Sequence of the keyring requests this member made (their gossip keys).
    keyring_requests: std::sync::atomic::AtomicU64,
    /// Turned true when gossip stops, ending the tasks beside chitchat (the prober).
    stop: watch::Sender<bool>,
}

impl Membership {
    pub async fn start(config: MembershipConfig, transport: &dyn Transport) -> anyhow::Result<Membership> {
        // A new generation on every start: peers tell a restart from a node that never left.
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(
                config.me.name.clone(),
                generation,
                config.advertise_addr.unwrap_or(config.gossip_addr),
            ),
            cluster_id: config.cluster_id,
            gossip_interval: config.gossip_interval,
            listen_addr: config.gossip_addr,
            seed_nodes: config.seeds,
            failure_detector_config: config.failure_detector,
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let me = &config.me;
        let keys = vec![
            (KEY_ADDRESS.to_string(), me.address.clone()),
            (KEY_DATACENTER.to_string(), me.datacenter.clone()),
            (KEY_ROLE.to_string(), me.role.as_str().to_string()),
            (KEY_VERSION.to_string(), me.version.clone()),
        ];
        let interval = chitchat_config.gossip_interval;
        let handle = spawn_chitchat(chitchat_config, keys, transport).await?;
        let ever_live: Arc<std::sync::Mutex<std::collections::BTreeSet<ChitchatId>>> = Default::default();
        let mut live = handle.chitchat().lock().await.live_nodes_watcher();
        let seen = ever_live.clone();
        // Ends when chitchat stops (the watch's sender goes).
        tokio::spawn(async move {
            loop {
                let ids: Vec<ChitchatId> = live.borrow_and_update().keys().cloned().collect();
                seen.lock().unwrap_or_else(|p| p.into_inner()).extend(ids);
                if live.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Membership {
            chitchat: handle.chitchat(),
            id: handle.chitchat_id().clone(),
            interval,
            handle: tokio::sync::Mutex::new(Some(handle)),
            fired: std::sync::atomic::AtomicU64::new(0),
            ever_live,
            coordinates: Arc::new(vivaldi::Shared::new(&config.me.name)),
            keyring: None,
            keyring_file: None,
            keyring_requests: std::sync::atomic::AtomicU64::new(0),
            stop: watch::channel(false).0,
        })
    }

    /// Fires a user event into the pool: it goes into this member's gossip state, and only the
    /// latest few of its events stay there.
    pub async fn fire(&self, event: &crate::api::UserEvent) -> anyhow::Result<()> {
        let seq = self.fired.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let value = serde_json::to_string(event)?;
        let mut guard = self.chitchat.lock().await;
        let state = guard.self_node_state();
        state.set(events::event_key(seq), value);
        let old: Vec<String> = state.iter_prefix(events::KEY_EVENT_PREFIX).map(|(k, _)| k.to_string()).collect();
        for key in old.iter().take(old.len().saturating_sub(events::EVENTS_GOSSIPED_PER_MEMBER)) {
            state.delete(key);
        }
        Ok(())
    }

    /// Delivers the pool's events to `buffer` as they arrive, those whose filters match this
    /// member (`local` tells its node name and services), until gossip stops.
    pub async fn deliver_events(
        &self,
        buffer: std::sync::Arc<events::EventBuffer>,
        local: impl Fn() -> (String, events::LocalServices),
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut rx = self.watch().await;
        loop {
            let gossiped = events::events_in(&rx.borrow_and_update());
            if !gossiped.is_empty() {
                let (node, services) = local();
                for event in gossiped {
                    buffer.offer(event, |e| events::delivers_to(e, &node, &services));
                }
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// The live members now (this node included).
    pub async fn live_members(&self) -> BTreeMap<String, Member> {
        let guard = self.chitchat.lock().await;
        let live: BTreeMap<ChitchatId, NodeState> = guard.live_nodes_watcher().borrow().clone();
        members_from_states(&live)
    }

    /// Live, failed and left members as this node sees them now.
    pub async fn view(&self) -> PoolView {
        let guard = self.chitchat.lock().await;
        let live: Vec<ChitchatId> = guard.live_nodes().cloned().collect();
        let mut ever_live = self.ever_live.lock().unwrap_or_else(|p| p.into_inner());
        ever_live.extend(live.iter().cloned());
        pool_view(guard.node_states(), live.iter(), &ever_live)
    }

    /// This member's chitchat identity (name, generation, gossip address).
    pub fn id(&self) -> &ChitchatId {
        &self.id
    }

    /// The chitchat state underneath, for benchmarks and diagnostics.
    pub fn chitchat(&self) -> Arc<tokio::sync::Mutex<Chitchat>> {
        self.chitchat.clone()
    }

    /// The gossip address other members reach this one at.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.id.gossip_advertise_addr
    }

    /// Announces a clean leave and gives gossip a few rounds to carry it, then stops gossiping.
    pub async fn leave(&self) -> anyhow::Result<()> {
        self.chitchat.lock().await.self_node_state().set(KEY_LEFT, "1");
        tokio::time::sleep(self.interval * 5).await;
        self.shutdown().await
    }

    /// A receiver of the live members, updated as gossip changes them; feed it to `diff`.
    pub async fn watch(&self) -> watch::Receiver<BTreeMap<ChitchatId, NodeState>> {
        self.chitchat.lock().await.live_nodes_watcher()
    }

    /// Publishes one more fact about this member in its gossip state.
    pub async fn announce(&self, key: &str, value: &str) {
        self.chitchat.lock().await.self_node_state().set(key, value);
    }

    /// The RPC addresses the live servers announced, by node name.
    pub async fn server_rpc_addrs(&self) -> BTreeMap<String, String> {
        self.announced(KEY_RPC).await
    }

    /// What the live members announced under `key`, by node name.
    pub async fn announced(&self, key: &str) -> BTreeMap<String, String> {
        let guard = self.chitchat.lock().await;
        let live: BTreeMap<ChitchatId, NodeState> = guard.live_nodes_watcher().borrow().clone();
        live.iter().filter_map(|(id, state)| Some((id.node_id.to_string(), state.get(key)?.to_string()))).collect()
    }

    /// This member's network coordinate.
    pub fn coordinate(&self) -> crate::api::Coordinate {
        self.coordinates.coordinate()
    }

    /// The pool's keyring (None: plaintext gossip).
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// Publishes this member's keys in its gossip state.
    async fn publish_keys(&self, keyring: &Keyring) {
        let keys = serde_json::to_string(&rotation::MemberKeys::of(keyring)).unwrap_or_default();
        self.chitchat.lock().await.self_node_state().set(rotation::KEY_KEYRING, keys);
    }

    /// Asks the pool to install, use or remove a gossip key: applied here first (refused here,
    /// refused to all), then gossiped for every member to apply. Returns the request, to wait for.
    pub async fn request_keyring(&self, action: rotation::Action, key: &str) -> Result<rotation::KeyringOp, String> {
        let keyring = self.keyring.as_ref().ok_or("No keyring to modify (encryption not enabled)")?;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let op = rotation::KeyringOp { action, key: Keyring::normalize(key)?, at_ms };
        rotation::apply(keyring, &op)?;
        save_keyring(self.keyring_file.as_deref(), keyring);
        let seq = self.keyring_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut guard = self.chitchat.lock().await;
        let state = guard.self_node_state();
        state.set(format!("{}{seq:020}", rotation::KEY_OP_PREFIX), serde_json::to_string(&op).unwrap_or_default());
        let old: Vec<String> = state.iter_prefix(rotation::KEY_OP_PREFIX).map(|(k, _)| k.to_string()).collect();
        for key in old.iter().take(old.len().saturating_sub(rotation::OPS_GOSSIPED_PER_MEMBER)) {
            state.delete(key);
        }
        state.set(rotation::KEY_KEYRING, serde_json::to_string(&rotation::MemberKeys::of(keyring)).unwrap_or_default());
        Ok(op)
    }

    /// The keys each live member published.
    pub async fn member_keys(&self) -> BTreeMap<String, Option<rotation::MemberKeys>> {
        let guard = self.chitchat.lock().await;
        let live: BTreeMap<ChitchatId, NodeState> = guard.live_nodes_watcher().borrow().clone();
        rotation::member_keys(&live)
    }

    /// The coordinates the live members published, by node name.
    pub async fn member_coordinates(&self) -> BTreeMap<String, crate::api::Coordinate> {
        let guard = self.chitchat.lock().await;
        let live: BTreeMap<ChitchatId, NodeState> = guard.live_nodes_watcher().borrow().clone();
        live.iter()
            .filter_map(|(id, state)| {
                let coord: crate::api::Coordinate = serde_json::from_str(state.get(KEY_COORD)?).ok()?;
                coord.is_valid().then(|| (id.node_id.to_string(), coord))
            })
            .collect()
    }

    /// Stops gossiping without a word: peers detect the absence as a failure.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        match self.handle.lock().await.take() {
            Some(h) => h.shutdown().await,
            None => Ok(()),
        }
    }
}

/// Writes the keyring where it survives a restart (owner-only: it holds the pool's keys).
fn save_keyring(file: Option<&std::path::Path>, keyring: &Keyring) {
    let Some(file) = file else { return };
    let tmp = file.with_extension("tmp");
    let written = {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        options.mode(0o600);
        options.open(&tmp).and_then(|mut f| f.write_all(keyring.saved().as_bytes()).and_then(|_| f.sync_all()))
    };
    if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, file)) {
        tracing::warn!(file = %file.display(), error = %e, "cannot save the gossip keyring");
    }
}

/// Applies the pool's keyring requests as they arrive through gossip (each once, oldest first),
/// publishing and saving the keys after a change, until gossip stops.
async fn keyring_loop(
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    keyring: Keyring,
    file: Option<std::path::PathBuf>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = chitchat.lock().await.live_nodes_watcher();
    let mut applied = std::collections::HashSet::new();
    loop {
        let ops = rotation::ops_in(&rx.borrow_and_update());
        let before = rotation::MemberKeys::of(&keyring);
        for (id, op) in ops {
            if applied.insert(id) {
                if let Err(e) = rotation::apply(&keyring, &op) {
                    tracing::warn!(action = ?op.action, error = %e, "keyring request refused");
                }
            }
        }
        let after = rotation::MemberKeys::of(&keyring);
        if after != before {
            tracing::info!(keys = after.keys.len(), "gossip keyring changed");
            save_keyring(file.as_deref(), &keyring);
            let value = serde_json::to_string(&after).unwrap_or_default();
            chitchat.lock().await.self_node_state().set(rotation::KEY_KEYRING, value);
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chitchat::transport::ChannelTransport;
    use std::time::Instant;

    fn member(name: &str, version: &str) -> Member {
        Member {
            name: name.into(),
            address: format!("10.0.0.{}", name.len()),
            datacenter: "dc1".into(),
            role: Role::Client,
            version: version.into(),
            gossip_addr: ([127, 0, 0, 1], 8301).into(),
        }
    }

    #[test]
    fn diff_reports_joins_updates_and_leaves() {
        let before: BTreeMap<_, _> =
            [member("a", "1"), member("b", "1")].into_iter().map(|m| (m.name.clone(), m)).collect();
        let after: BTreeMap<_, _> =
            [member("b", "2"), member("c", "1")].into_iter().map(|m| (m.name.clone(), m)).collect();
        assert_eq!(
            diff(&before, &after),
            vec![
                MembershipChange::Updated(member("b", "2")),
                MembershipChange::Joined(member("c", "1")),
                MembershipChange::Left("a".into()),
            ]
        );
        assert!(diff(&after, &after).is_empty());
    }

    #[test]
    fn only_the_newest_generation_of_a_name_counts() {
        let state = |left: bool| {
            let mut st = NodeState::for_test();
            for (k, v) in [(KEY_ADDRESS, "10.0.0.1"), (KEY_DATACENTER, "dc1"), (KEY_ROLE, "client"), (KEY_VERSION, "1")]
            {
                st.set(k, v);
            }
            if left {
                st.set(KEY_LEFT, "1");
            }
            st
        };
        let addr: SocketAddr = ([10, 0, 0, 1], 8301).into();
        let old = ChitchatId::new("pod-a".to_string(), 1, addr);
        let new = ChitchatId::new("pod-a".to_string(), 2, addr);
        let other = ChitchatId::new("pod-b".to_string(), 1, addr);
        let states =
            BTreeMap::from([(old.clone(), state(true)), (new.clone(), state(false)), (other.clone(), state(false))]);
        // The old incarnation left; the new one is live, then fails: failed, not left.
        let seen = std::collections::BTreeSet::from([new.clone(), other.clone()]);
        let view = pool_view(&states, [&other], &Default::default());
        assert!(view.live.contains_key("pod-b") && view.failed.is_empty(), "never live: joining, not failed: {view:?}");
        assert!(!view.live.contains_key("pod-a") && !view.left.contains_key("pod-a"));
        let view = pool_view(&states, [&new, &other], &seen);
        assert!(view.live.contains_key("pod-a") && view.left.is_empty() && view.failed.is_empty());
        let view = pool_view(&states, [&other], &seen);
        assert!(view.failed.contains_key("pod-a"), "{view:?}");
        assert!(!view.left.contains_key("pod-a"));
        assert!(view.live.contains_key("pod-b"));
    }

    async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn members_see_each_other_detect_a_partition_and_heal() {
        let transport = ChannelTransport::with_mtu(65_507);
        let addr = |i: u16| -> SocketAddr { ([127, 0, 0, 1], 20_000 + i).into() };
        let mut nodes = Vec::new();
        for i in 1..=3u16 {
            let config = MembershipConfig {
                me: Member {
                    name: format!("pod-{i}"),
                    address: format!("10.0.0.{i}"),
                    datacenter: "dc1".into(),
                    role: if i == 1 { Role::Server } else { Role::Client },
                    version: "0.1.0".into(),
                    gossip_addr: addr(i),
                },
                gossip_addr: addr(i),
                advertise_addr: None,
                seeds: vec![addr(1).to_string()],
                cluster_id: "test".into(),
                gossip_interval: Duration::from_millis(50),
                failure_detector: FailureDetectorConfig {
                    initial_interval: Duration::from_millis(100),
                    max_interval: Duration::from_secs(1),
                    ..Default::default()
                },
            };
            nodes.push(Membership::start(config, &transport).await.expect("start"));
        }
        for n in &nodes {
            eventually("everyone to see 3 members", Duration::from_secs(10), async || {
                n.live_members().await.len() == 3
            })
            .await;
        }
        let seen = nodes[1].live_members().await;
        assert_eq!(seen["pod-1"].role, Role::Server);
        assert_eq!(seen["pod-3"].address, "10.0.0.3");

        // Cut pod-3 off: the others detect it as gone, and it loses them.
        let before = nodes[0].live_members().await;
        transport.remove_link(addr(3), addr(1)).await;
        transport.remove_link(addr(3), addr(2)).await;
        eventually("pod-3 to be detected", Duration::from_secs(20), async || {
            !nodes[0].live_members().await.contains_key("pod-3")
        })
        .await;
        let after = nodes[0].live_members().await;
        assert_eq!(diff(&before, &after), vec![MembershipChange::Left("pod-3".into())]);

        // Heal: pod-3 is back.
        transport.add_link(addr(3), addr(1)).await;
        transport.add_link(addr(3), addr(2)).await;
        eventually("pod-3 to rejoin", Duration::from_secs(20), async || nodes[0].live_members().await.len() == 3).await;

        // A clean leave is told apart from a failure.
        let leaver = nodes.pop().expect("pod-3");
        leaver.leave().await.expect("leave");
        eventually("pod-3's leave to spread", Duration::from_secs(10), async || {
            let view = nodes[0].view().await;
            view.left.contains_key("pod-3") && !view.live.contains_key("pod-3") && !view.failed.contains_key("pod-3")
        })
        .await;
        for n in nodes {
            n.shutdown().await.expect("shutdown");
        }
    }
}
