//! Autopilot's membership duties on the leader, as Consul's: a server that joins becomes a voter
//! only once it has been healthy for `ServerStabilizationTime`; with `CleanupDeadServers`, a server
//! gossip has seen failed or gone for a while ([`dead_grace`]) leaves the Raft configuration (a minority at a
//! time, never below `MinQuorum`); and a server that is live in gossip but not in the
//! configuration (restarted after such a cleanup) is added back, unless it was removed on purpose
//! while it ran (the operator's scale-down), until it stops. `plan` is pure; `run` is the loop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::api::AutopilotConfiguration;
use crate::app::App;
use crate::raft::NodeId;

/// How long a server must be failed or gone before cleanup removes it: three stabilization
/// periods (30 s by default), at least 5 s, so that a restart (a rolling update, a rescheduled
/// pod) brings it back untouched.
pub fn dead_grace(stabilization: Duration) -> Duration {
    (stabilization * 3).max(Duration::from_secs(5))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A live server not in the configuration: add it as a learner.
    Add { name: String, rpc_addr: String },
    /// A learner healthy for long enough: make it a voter.
    Promote { id: NodeId, name: String },
    /// A server dead for long enough: take it out.
    Remove { id: NodeId, name: String },
}

pub struct Inputs<'a> {
    pub me: NodeId,
    pub voters: &'a BTreeMap<NodeId, String>,
    pub learners: &'a BTreeMap<NodeId, String>,
    /// Since when each server has been healthy (None: not healthy now).
    pub healthy_since: &'a BTreeMap<NodeId, Option<SystemTime>>,
    /// Live servers of this datacenter in gossip, with their RPC addresses.
    pub live: &'a BTreeMap<String, String>,
    /// Servers gossip shows failed or left, with since when.
    pub down_since: &'a BTreeMap<String, Instant>,
    /// Servers removed on purpose while live: not added back until they stop.
    pub removed: &'a BTreeSet<String>,
    pub config: &'a AutopilotConfiguration,
    pub now: Instant,
    pub wall: SystemTime,
}

pub fn plan(i: &Inputs) -> Vec<Step> {
    let mut steps = Vec::new();
    let known: BTreeSet<&String> = i.voters.values().chain(i.learners.values()).collect();
    for (name, rpc_addr) in i.live {
        if !known.contains(name) && !i.removed.contains(name) {
            steps.push(Step::Add { name: name.clone(), rpc_addr: rpc_addr.clone() });
        }
    }
    let stabilization =
        crate::api::parse_go_duration(&i.config.server_stabilization_time).unwrap_or(Duration::from_secs(10));
    for (id, name) in i.learners {
        let stable = i.healthy_since.get(id).copied().flatten().and_then(|since| i.wall.duration_since(since).ok());
        if stable.is_some_and(|s| s >= stabilization) {
            steps.push(Step::Promote { id: *id, name: name.clone() });
        }
    }
    if i.config.cleanup_dead_servers {
        // Dead: out of gossip for the grace period and not answering the leader now (both, so a
        // broken gossip link alone never costs a healthy server its seat).
        let grace = dead_grace(stabilization);
        let dead = |id: &NodeId, name: &String| {
            *id != i.me
                && !i.live.contains_key(name)
                && i.healthy_since.get(id).copied().flatten().is_none()
                && i.down_since.get(name).is_some_and(|since| i.now.saturating_duration_since(*since) >= grace)
        };
        for (id, name) in i.learners.iter().filter(|(id, n)| dead(id, n)) {
            steps.push(Step::Remove { id: *id, name: name.clone() });
        }
        let dead_voters: Vec<(&NodeId, &String)> = i.voters.iter().filter(|(id, n)| dead(id, n)).collect();
        let remaining = i.voters.len() - dead_voters.len();
        // Only a minority at a time (the rest must still be a quorum of the old configuration),
        // and never below MinQuorum.
        if !dead_voters.is_empty() && remaining > i.voters.len() / 2 && remaining >= i.config.min_quorum as usize {
            for (id, name) in dead_voters {
                steps.push(Step::Remove { id: *id, name: name.clone() });
            }
        }
    }
    steps
}

/// The leader's autopilot pass every 2 s (every server runs it; only the leader acts).
pub async fn run(app: Arc<App>, gossip: Option<Arc<crate::gossip::Membership>>) {
    let mut shutdown = app.shutdown.subscribe();
    let mut down_since: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return,
        }
        if !app.is_leader() {
            down_since.clear();
            continue;
        }
        if app.sm.read(|s| s.cluster_id().is_none()) {
            let id = uuid::Uuid::new_v4().to_string();
            match app.proposer.propose(crate::state::Command::ClusterIdSet { id: id.clone() }).await {
                Ok(_) => tracing::info!(cluster_id = %id, "this cluster's identity is made"),
                Err(e) => tracing::warn!(error = %e, "could not store the cluster's identity"),
            }
        }
        let (voters, learners) = {
            let m = app.raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
            let mut voters = BTreeMap::new();
            let mut learners = BTreeMap::new();
            for (id, node) in membership.nodes() {
                if voter_ids.contains(id) { &mut voters } else { &mut learners }.insert(*id, node.name.clone());
            }
            (voters, learners)
        };
        // Live servers of this datacenter, and the configured ones gossip does not show live
        // (failed, left, or never heard of): without gossip, nobody is judged down.
        let (live, down): (BTreeMap<String, String>, BTreeSet<String>) = match &gossip {
            Some(g) => {
                let view = g.view().await;
                let rpc = g.server_rpc_addrs().await;
                let live: BTreeMap<String, String> = view
                    .live
                    .values()
                    .filter(|m| m.role == crate::gossip::Role::Server && m.datacenter == app.config.datacenter)
                    .filter_map(|m| Some((m.name.clone(), rpc.get(&m.name)?.clone())))
                    .collect();
                let down =
                    voters.values().chain(learners.values()).filter(|n| !view.live.contains_key(*n)).cloned().collect();
                (live, down)
            }
            None => Default::default(),
        };
        let now = Instant::now();
        down_since.retain(|n, _| down.contains(n));
        for name in &down {
            down_since.entry(name.clone()).or_insert(now);
        }
        // A server removed on purpose may come back once it has stopped.
        let removed: BTreeSet<String> = {
            let mut removed = app.removed_servers.lock().unwrap_or_else(|p| p.into_inner());
            removed.retain(|n| live.contains_key(n));
            removed.clone()
        };
        crate::http::refresh_server_health(&app).await;
        let healthy_since: BTreeMap<NodeId, Option<SystemTime>> = app
            .server_stability
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, (healthy, since))| (*id, healthy.then_some(*since)))
            .collect();
        let config = app.sm.read(|s| s.autopilot());
        let steps = plan(&Inputs {
            me: app.id,
            voters: &voters,
            learners: &learners,
            healthy_since: &healthy_since,
            live: &live,
            down_since: &down_since,
            removed: &removed,
            config: &config,
            now,
            wall: SystemTime::now(),
        });
        for step in steps {
            if let Err(e) = take(&app, &step).await {
                tracing::warn!(?step, error = %e, "autopilot step failed");
                break;
            }
        }
    }
}

async fn take(app: &App, step: &Step) -> Result<(), String> {
    match step {
        Step::Add { name, rpc_addr } => {
            let info = crate::cluster::server_info(&app.dialer, rpc_addr).await.ok_or("no answer from its RPC port")?;
            if info.node.name != *name {
                return Err(format!("{rpc_addr} is {}, not {name}", info.node.name));
            }
            tracing::info!(server = %name, id = info.id, "autopilot: adding a server back as a learner");
            app.raft.add_learner(info.id, info.node, false).await.map(|_| ()).map_err(|e| e.to_string())
        }
        Step::Promote { id, name } => {
            tracing::info!(server = %name, "autopilot: promoting a stable server to voter");
            crate::cluster::change_membership(app, openraft::ChangeMembers::AddVoterIds(BTreeSet::from([*id]))).await
        }
        Step::Remove { id, name } => {
            tracing::warn!(server = %name, "autopilot: removing a dead server (CleanupDeadServers)");
            crate::cluster::remove_server(app, *id).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        voters: BTreeMap<NodeId, String>,
        learners: BTreeMap<NodeId, String>,
        healthy_since: BTreeMap<NodeId, Option<SystemTime>>,
        live: BTreeMap<String, String>,
        down_since: BTreeMap<String, Instant>,
        removed: BTreeSet<String>,
        config: AutopilotConfiguration,
        now: Instant,
        wall: SystemTime,
    }

    impl Case {
        fn new(voters: &[(NodeId, &str)]) -> Case {
            let voters: BTreeMap<NodeId, String> = voters.iter().map(|(i, n)| (*i, n.to_string())).collect();
            let live = voters.values().map(|n| (n.clone(), format!("{n}:8300"))).collect();
            Case {
                voters,
                learners: BTreeMap::new(),
                healthy_since: BTreeMap::new(),
                live,
                down_since: BTreeMap::new(),
                removed: BTreeSet::new(),
                config: AutopilotConfiguration::consul_defaults(),
                now: Instant::now() + Duration::from_secs(3600),
                wall: SystemTime::now(),
            }
        }

        fn dead_for(&mut self, name: &str, secs: u64) {
            self.live.remove(name);
            self.down_since.insert(name.into(), self.now - Duration::from_secs(secs));
        }

        fn plan(&self) -> Vec<Step> {
            plan(&Inputs {
                me: 1,
                voters: &self.voters,
                learners: &self.learners,
                healthy_since: &self.healthy_since,
                live: &self.live,
                down_since: &self.down_since,
                removed: &self.removed,
                config: &self.config,
                now: self.now,
                wall: self.wall,
            })
        }
    }

    #[test]
    fn a_learner_becomes_a_voter_once_stable() {
        let mut c = Case::new(&[(1, "s1"), (2, "s2")]);
        c.learners.insert(3, "s3".into());
        c.live.insert("s3".into(), "s3:8300".into());
        c.healthy_since.insert(3, Some(c.wall - Duration::from_secs(4)));
        assert_eq!(c.plan(), vec![], "healthy for 4 s of the 10 s");
        c.healthy_since.insert(3, Some(c.wall - Duration::from_secs(11)));
        assert_eq!(c.plan(), vec![Step::Promote { id: 3, name: "s3".into() }]);
        c.healthy_since.insert(3, None);
        assert_eq!(c.plan(), vec![], "unhealthy now");
    }

    #[test]
    fn dead_servers_go_a_minority_at_a_time_after_the_grace() {
        let mut c = Case::new(&[(1, "s1"), (2, "s2"), (3, "s3"), (4, "s4"), (5, "s5")]);
        c.dead_for("s4", 10);
        assert_eq!(c.plan(), vec![], "within the grace: maybe restarting");
        c.dead_for("s4", 31);
        assert_eq!(c.plan(), vec![Step::Remove { id: 4, name: "s4".into() }]);
        c.dead_for("s5", 40);
        assert_eq!(c.plan().len(), 2, "two of five: still a minority");
        c.dead_for("s3", 40);
        assert_eq!(c.plan(), vec![], "three of five: never a majority");
        c.config.cleanup_dead_servers = false;
        c.live.insert("s3".into(), "s3:8300".into());
        c.down_since.remove("s3");
        assert_eq!(c.plan(), vec![], "cleanup off");
        let mut c = Case::new(&[(1, "s1"), (2, "s2"), (3, "s3")]);
        c.dead_for("s3", 60);
        c.config.min_quorum = 3;
        assert_eq!(c.plan(), vec![], "MinQuorum holds");
        let mut c = Case::new(&[(1, "s1"), (2, "s2"), (3, "s3")]);
        c.dead_for("s3", 60);
        c.healthy_since.insert(3, Some(c.wall));
        assert_eq!(c.plan(), vec![], "out of gossip but answering Raft: kept");
    }

    #[test]
    fn a_live_server_missing_from_the_configuration_comes_back_unless_removed_on_purpose() {
        let mut c = Case::new(&[(1, "s1"), (2, "s2")]);
        c.live.insert("s3".into(), "10.0.0.3:8300".into());
        assert_eq!(c.plan(), vec![Step::Add { name: "s3".into(), rpc_addr: "10.0.0.3:8300".into() }]);
        c.removed.insert("s3".into());
        assert_eq!(c.plan(), vec![], "removed while running: stays out until it stops");
    }
}
