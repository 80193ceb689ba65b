//! The one `App` every handler shares: Raft, the state machine, the proposer and the agent's own
//! state, with the leader look-ups and proposal path handlers use. Wired up by `server`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::api::parse_go_duration;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{NodeId, Raft, ServerNode};
use crate::state::{Command, CommandResult};

/// Unix time in milliseconds, as carried inside commands.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("No cluster leader")]
    NoLeader,
    /// This server stopped leading while the write was queued: retry through the new leader.
    #[error("not the leader")]
    NotLeader,
    #[error("{0}")]
    Raft(String),
}

/// The state every handler shares.
pub struct App {
    pub id: NodeId,
    pub me: ServerNode,
    pub config: Config,
    pub raft: Raft,
    pub sm: StateMachineStore,
    /// Batches this server's writes into log entries while it leads.
    pub proposer: crate::proposer::Proposer,
    /// Batches leadership confirmations of `?consistent` reads.
    pub read_barrier: crate::proposer::ReadBarrier,
    /// Followers' acknowledgements of this server's leadership (default-mode reads' lease).
    pub lease: Arc<crate::raft::lease::LeaseClock>,
    /// The id of the last entry in this server's Raft log.
    pub last_log: crate::raft::log_store::LastLogView,
    /// Client for calls outside the cluster (auth methods' JWKS and token review).
    pub http: reqwest::Client,
    /// Clients for other servers: RPC ports and HTTP APIs, over TLS where configured.
    pub dialer: Arc<crate::tls::dial::Dialer>,
    pub metrics: Metrics,
    /// Leader-side session TTL deadlines (Consul keeps these in memory on the leader too).
    pub session_deadlines: Mutex<HashMap<String, Instant>>,
    /// This server's agent: its node's own services and checks (`/v1/agent/*`).
    pub agent: Arc<crate::agent::Agent>,
    /// When this server last heard from a leader (for X-Consul-LastContact).
    pub last_contact: Mutex<Option<Instant>>,
    /// On the leader: when each other server last answered its probe (autopilot's LastContact).
    pub server_contact: Mutex<std::collections::BTreeMap<NodeId, Instant>>,
    /// On the leader: each server's autopilot health and since when (StableSince).
    pub server_stability: Mutex<std::collections::BTreeMap<NodeId, (bool, std::time::SystemTime)>>,
    /// Servers taken out of the Raft configuration on purpose while they ran (by name): autopilot
    /// does not add them back until gossip sees them stop.
    pub removed_servers: Mutex<std::collections::BTreeSet<String>>,
    /// This server's place in the LAN gossip pool, when gossip is on.
    pub gossip: Option<Arc<crate::gossip::Membership>>,
    /// This server's place in the WAN pool of every datacenter's servers, when it has one.
    pub wan: Option<Arc<crate::wan::Wan>>,
    /// Blocking queries open now, against `http_max_blocking_queries`.
    pub blocking_queries: std::sync::atomic::AtomicUsize,
    pub shutdown: watch::Sender<bool>,
    /// `/v1/agent/leave` asks the process to leave and stop, as a signal would.
    pub leave: tokio::sync::Notify,
    /// User events this agent received (`/v1/event/list`).
    pub events: Arc<crate::gossip::events::EventBuffer>,
    /// ACL replication from the primary datacenter, when this is a secondary (`/v1/acl/replication`).
    pub acl_replication: crate::acl_replication::Replication,
    /// Tokens this (secondary) datacenter asked its primary about.
    pub remote_tokens: crate::acl_remote::RemoteTokens,
}

impl App {
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Whether this server leads and a quorum acknowledged it within its lease, so a default-mode
    /// read may be answered from its own state (Consul's leader lease; see `raft::lease`). The lease
    /// is the election timeout less a heartbeat of margin. A leader cut off from its quorum
    /// (partitioned, its followers paused, or itself paused and resumed) stops serving its own,
    /// possibly stale, state within about a second instead of for the whole partition.
    /// It must also have applied its term's read floor (see `ReadBarrier::floor_applied`): a
    /// lease proves no newer leader, not that this one's state holds what older ones committed.
    pub fn leader_lease_held(&self) -> bool {
        let lease =
            Duration::from_millis(self.config.raft_election_timeout_ms.saturating_sub(self.config.raft_heartbeat_ms));
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.current_leader != Some(self.id) {
            return false;
        }
        if !self.read_barrier.floor_applied(m.vote.leader_id().term, m.last_applied.map(|l| l.index)) {
            return false;
        }
        let configs = m.membership_config.membership().get_joint_config();
        self.lease.quorum_age(self.id, m.vote.leader_id(), configs, Instant::now()).is_some_and(|age| age < lease)
    }

    pub fn leader(&self) -> Option<(NodeId, ServerNode)> {
        // Borrow, don't clone the whole metrics: this runs on every answer.
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Whether a leader is known (the `X-Consul-KnownLeader` header).
    pub fn knows_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader.is_some()
    }

    /// Waits (up to `timeout`) for a leader to be known.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<(NodeId, ServerNode)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return None;
            }
        }
    }

    /// Milliseconds since this server last heard from the leader (0 on the leader).
    pub fn last_contact_ms(&self) -> u64 {
        if self.is_leader() {
            return 0;
        }
        match *self.last_contact.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(t) => t.elapsed().as_millis() as u64,
            None => 0,
        }
    }

    /// Proposes a command; on a follower the command is forwarded to the leader's RPC port.
    /// Returns the log index it was committed at and the state machine's answer.
    pub async fn propose(&self, cmd: Command) -> Result<(u64, CommandResult), ProposeError> {
        let kind = cmd.kind();
        let started = Instant::now();
        let result = self.propose_inner(cmd).await;
        self.metrics.observe_commit(kind, started.elapsed());
        result
    }

    async fn propose_inner(&self, cmd: Command) -> Result<(u64, CommandResult), ProposeError> {
        for _attempt in 0..3 {
            let Some((leader_id, leader)) = self.wait_leader(Duration::from_secs(5)).await else {
                return Err(ProposeError::NoLeader);
            };
            if leader_id == self.id {
                match self.proposer.propose(cmd.clone()).await {
                    Err(ProposeError::NotLeader) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    other => return other,
                }
            }
            let cluster = self.sm.read(|s| s.cluster_id().map(str::to_string));
            match crate::cluster::forward_command(&self.dialer, &leader.rpc_addr, cluster.as_deref(), &cmd).await {
                Ok(Some(r)) => {
                    // Read-your-writes: do not answer before this server has applied the write.
                    let _ = tokio::time::timeout(Duration::from_secs(5), self.sm.wait_applied(r.0)).await;
                    return Ok(r);
                }
                Ok(None) => {
                    // That server is no longer leader; let metrics catch up and retry.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(ProposeError::Raft(e)),
            }
        }
        Err(ProposeError::NoLeader)
    }

    /// Resets a session's TTL deadline (leader only; Consul gives sessions 2 x TTL before invalidating).
    pub fn touch_session(&self, id: &str, ttl: &str) {
        if let Ok(ttl) = parse_go_duration(ttl) {
            if !ttl.is_zero() {
                self.session_deadlines
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.to_string(), Instant::now() + ttl * 2);
            }
        }
    }
}
