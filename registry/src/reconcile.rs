//! The leader turns gossip membership into the catalog, as Consul's leader reconciles Serf members:
//! a live member has a passing `serfHealth`; one the failure detector gave up on goes critical (its
//! services leave `?passing` answers and sessions bound to the node are invalidated); one that left
//! cleanly, or stayed failed longer than `reap_after`, is deregistered.
//!
//! `plan` is pure and decides; `reconcile_loop` feeds it the catalog and this server's gossip view
//! and proposes what it decided. Raft servers are left to the RPC probe in `cluster`, and catalog
//! nodes without a `serfHealth` check (registered through the catalog API) are never touched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{CheckRegistration, Coordinate, CoordinateEntry, DeregisterRequest, HealthStatus, RegisterRequest};
use crate::app::{now_ms, App};
use crate::gossip::{Member, PoolView, Role};
use crate::state::Command;

pub const SERF_CHECK: &str = "serfHealth";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Register the node if needed and set its `serfHealth` passing.
    Alive { member: Member, node_exists: bool },
    /// Set the node's `serfHealth` critical.
    Failed { node: String },
    /// Remove the node and everything on it.
    Deregister { node: String, why: &'static str },
}

/// What the leader knows when it plans.
pub struct Inputs<'a> {
    pub datacenter: &'a str,
    /// Every catalog node, with its `serfHealth` status when it has one.
    pub catalog: &'a BTreeMap<String, Option<HealthStatus>>,
    pub view: &'a PoolView,
    /// Raft servers, watched by the RPC probe instead.
    pub servers: &'a BTreeSet<String>,
    /// When each node was first seen failed by this leader.
    pub failed_since: &'a HashMap<String, Instant>,
    pub now: Instant,
    pub reap_after: Duration,
    /// False while a new leader's gossip view may still be filling: no failures declared yet.
    pub settled: bool,
}

pub fn plan(i: &Inputs) -> Vec<Action> {
    let mut actions = Vec::new();
    for member in i.view.live.values() {
        if member.role != Role::Client || member.datacenter != i.datacenter || i.servers.contains(&member.name) {
            continue;
        }
        let serf = i.catalog.get(&member.name);
        if serf != Some(&Some(HealthStatus::Passing)) {
            actions.push(Action::Alive { member: member.clone(), node_exists: serf.is_some() });
        }
    }
    for (node, serf) in i.catalog {
        let Some(status) = serf else { continue };
        if i.servers.contains(node) || i.view.live.contains_key(node) {
            continue;
        }
        if i.view.left.contains_key(node) {
            actions.push(Action::Deregister { node: node.clone(), why: "left the pool" });
        } else if !i.settled {
            continue;
        } else if *status != HealthStatus::Critical {
            actions.push(Action::Failed { node: node.clone() });
        } else if i.failed_since.get(node).is_some_and(|t| i.now.saturating_duration_since(*t) >= i.reap_after) {
            actions.push(Action::Deregister { node: node.clone(), why: "failed for longer than reap_after" });
        }
    }
    actions
}

fn serf_check(status: HealthStatus) -> CheckRegistration {
    CheckRegistration {
        check_id: Some(SERF_CHECK.into()),
        name: Some("Serf Health Status".into()),
        status: Some(status),
        output: Some(if status == HealthStatus::Passing {
            "Agent alive and reachable".into()
        } else {
            "Agent not live or unreachable".into()
        }),
        ..Default::default()
    }
}

fn command_for(action: &Action, datacenter: &str) -> Command {
    match action {
        Action::Alive { member, node_exists } => Command::Register {
            request: RegisterRequest {
                node: Some(member.name.clone()),
                address: Some(member.address.clone()),
                datacenter: Some(datacenter.to_string()),
                check: Some(serf_check(HealthStatus::Passing)),
                // Keep the meta the sidecar registered; a new node needs its address.
                skip_node_update: *node_exists,
                ..Default::default()
            },
            now_ms: now_ms(),
        },
        Action::Failed { node } => Command::CheckStatus {
            node: node.clone(),
            check_id: SERF_CHECK.into(),
            status: HealthStatus::Critical,
            output: "Agent not live or unreachable".into(),
            now_ms: now_ms(),
        },
        Action::Deregister { node, .. } => Command::Deregister {
            request: DeregisterRequest { node: Some(node.clone()), ..Default::default() },
            now_ms: now_ms(),
        },
    }
}

/// Runs on every server with gossip on, acting only while it leads.
pub async fn reconcile_loop(app: Arc<App>, gossip: Arc<crate::gossip::Membership>) {
    let mut shutdown = app.shutdown.subscribe();
    let mut leading_since: Option<Instant> = None;
    let mut failed_since: HashMap<String, Instant> = HashMap::new();
    // A new leader waits this long for gossip to show who is alive before declaring failures.
    let settle = Duration::from_secs(5);
    let reap_after = Duration::from_secs(app.config.reap_after_secs);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
        if !app.is_leader() {
            leading_since = None;
            failed_since.clear();
            continue;
        }
        let now = Instant::now();
        let since = *leading_since.get_or_insert(now);
        let catalog: BTreeMap<String, Option<HealthStatus>> = app.sm.read(|s| {
            let mut nodes: BTreeMap<String, Option<HealthStatus>> =
                s.catalog_nodes().1.into_iter().map(|n| (n.node, None)).collect();
            for c in s.checks_in_state(None).1.into_iter().filter(|c| c.check_id == SERF_CHECK) {
                nodes.insert(c.node, Some(c.status));
            }
            nodes
        });
        failed_since.retain(|n, _| catalog.get(n) == Some(&Some(HealthStatus::Critical)));
        for (node, status) in &catalog {
            if *status == Some(HealthStatus::Critical) {
                failed_since.entry(node.clone()).or_insert(now);
            }
        }
        let servers: BTreeSet<String> =
            app.raft.metrics().borrow().membership_config.membership().nodes().map(|(_, n)| n.name.clone()).collect();
        let view = gossip.view().await;
        let actions = plan(&Inputs {
            datacenter: &app.config.datacenter,
            catalog: &catalog,
            view: &view,
            servers: &servers,
            failed_since: &failed_since,
            now,
            reap_after,
            settled: now.saturating_duration_since(since) >= settle,
        });
        for action in actions {
            match &action {
                Action::Alive { member, .. } => tracing::info!(node = %member.name, "member alive"),
                Action::Failed { node } => tracing::warn!(node = %node, "member failed"),
                Action::Deregister { node, why } => tracing::info!(node = %node, why, "member deregistered"),
            }
            if let Err(e) = app.propose(command_for(&action, &app.config.datacenter)).await {
                tracing::warn!(error = %e, "could not reconcile a gossip member");
                break;
            }
        }
    }
}

/// Coordinates the members published that should be stored: new ones, and ones that moved (by
/// more than 0.1 ms) or whose confidence changed, of nodes in the catalog. Serf's coordinates move
/// a little with every probe; storing each wiggle would only churn the Raft log.
pub fn coordinate_updates(
    published: &BTreeMap<String, Coordinate>,
    stored: &BTreeMap<String, Coordinate>,
    registered: &BTreeSet<String>,
) -> Vec<CoordinateEntry> {
    published
        .iter()
        .filter(|(node, _)| registered.contains(*node))
        .filter(|(node, new)| {
            stored.get(*node).is_none_or(|old| {
                raw_gap(old, new) > 1.0e-4
                    || (old.error - new.error).abs() > 0.05
                    || (old.height - new.height).abs() > 1.0e-4
            })
        })
        .map(|(node, coord)| CoordinateEntry { node: node.clone(), segment: String::new(), coord: coord.clone() })
        .collect()
}

fn raw_gap(a: &Coordinate, b: &Coordinate) -> f64 {
    a.vec.iter().zip(&b.vec).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}

/// Runs on every server with gossip on: while it leads, stores the members' published
/// coordinates every few seconds (what Consul's agents send through `Coordinate.Update`).
pub async fn coordinate_loop(app: Arc<App>, gossip: Arc<crate::gossip::Membership>, every: Duration) {
    let mut shutdown = app.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if !app.is_leader() {
            continue;
        }
        let published = gossip.member_coordinates().await;
        let (stored, registered) = app.sm.read(|s| {
            let stored: BTreeMap<String, Coordinate> =
                s.coordinates().1.into_iter().map(|e| (e.node, e.coord)).collect();
            let registered: BTreeSet<String> = s.catalog_nodes().1.into_iter().map(|n| n.node).collect();
            (stored, registered)
        });
        let updates = coordinate_updates(&published, &stored, &registered);
        if updates.is_empty() {
            continue;
        }
        if let Err(e) = app.propose(Command::CoordinateUpdate { updates }).await {
            tracing::debug!(error = %e, "could not store coordinates");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_moved_or_new_coordinates_of_registered_nodes_are_stored() {
        let at = |x: f64, error: f64| {
            let mut c = Coordinate::origin();
            c.vec[0] = x;
            c.error = error;
            c
        };
        let published = BTreeMap::from([
            ("new".to_string(), at(0.001, 1.0)),
            ("moved".to_string(), at(0.002, 0.3)),
            ("still".to_string(), at(0.00101, 0.3)),
            ("surer".to_string(), at(0.001, 0.2)),
            ("ghost".to_string(), at(0.001, 0.2)),
        ]);
        let stored = BTreeMap::from([
            ("moved".to_string(), at(0.001, 0.3)),
            ("still".to_string(), at(0.001, 0.3)),
            ("surer".to_string(), at(0.001, 0.9)),
        ]);
        let registered: BTreeSet<String> = ["new", "moved", "still", "surer"].iter().map(|s| s.to_string()).collect();
        let nodes: Vec<String> =
            coordinate_updates(&published, &stored, &registered).into_iter().map(|e| e.node).collect();
        assert_eq!(nodes, ["moved", "new", "surer"]);
    }

    fn member(name: &str, role: Role) -> Member {
        Member {
            name: name.into(),
            address: "10.0.0.1".into(),
            datacenter: "dc1".into(),
            role,
            version: "0.1.0".into(),
            gossip_addr: ([10, 0, 0, 1], 8301).into(),
        }
    }

    struct Case {
        catalog: BTreeMap<String, Option<HealthStatus>>,
        view: PoolView,
        servers: BTreeSet<String>,
        failed_since: HashMap<String, Instant>,
        settled: bool,
    }

    impl Case {
        fn new() -> Self {
            Case {
                catalog: BTreeMap::new(),
                view: PoolView::default(),
                servers: BTreeSet::new(),
                failed_since: HashMap::new(),
                settled: true,
            }
        }
        fn node(mut self, name: &str, serf: Option<HealthStatus>) -> Self {
            self.catalog.insert(name.into(), serf);
            self
        }
        fn live(mut self, m: Member) -> Self {
            self.view.live.insert(m.name.clone(), m);
            self
        }
        fn left(mut self, m: Member) -> Self {
            self.view.left.insert(m.name.clone(), m);
            self
        }
        fn plan(&self, now: Instant) -> Vec<Action> {
            plan(&Inputs {
                datacenter: "dc1",
                catalog: &self.catalog,
                view: &self.view,
                servers: &self.servers,
                failed_since: &self.failed_since,
                now,
                reap_after: Duration::from_secs(60),
                settled: self.settled,
            })
        }
    }

    #[test]
    fn live_members_get_a_passing_serf_check_once() {
        let c = Case::new().live(member("pod-a", Role::Client)).node("pod-b", Some(HealthStatus::Passing));
        let c = c.live(member("pod-b", Role::Client));
        assert_eq!(
            c.plan(Instant::now()),
            vec![Action::Alive { member: member("pod-a", Role::Client), node_exists: false }],
            "pod-b is already passing: nothing to write"
        );
        let c = Case::new().live(member("pod-a", Role::Client)).node("pod-a", Some(HealthStatus::Critical));
        assert_eq!(
            c.plan(Instant::now()),
            vec![Action::Alive { member: member("pod-a", Role::Client), node_exists: true }],
            "a failed member that came back is passing again"
        );
    }

    #[test]
    fn a_member_gone_from_gossip_fails_then_is_reaped() {
        let now = Instant::now();
        let mut c = Case::new().node("pod-a", Some(HealthStatus::Passing));
        assert_eq!(c.plan(now), vec![Action::Failed { node: "pod-a".into() }]);
        c = c.node("pod-a", Some(HealthStatus::Critical));
        c.failed_since.insert("pod-a".into(), now);
        assert!(c.plan(now + Duration::from_secs(59)).is_empty(), "not reaped before reap_after");
        assert_eq!(
            c.plan(now + Duration::from_secs(60)),
            vec![Action::Deregister { node: "pod-a".into(), why: "failed for longer than reap_after" }]
        );
    }

    #[test]
    fn a_clean_leave_deregisters_at_once_even_before_settling() {
        let mut c = Case::new().node("pod-a", Some(HealthStatus::Passing)).left(member("pod-a", Role::Client));
        c.settled = false;
        assert_eq!(c.plan(Instant::now()), vec![Action::Deregister { node: "pod-a".into(), why: "left the pool" }]);
    }

    #[test]
    fn leaves_alone_external_nodes_servers_other_datacenters_and_an_unsettled_view() {
        let mut other_dc = member("pod-x", Role::Client);
        other_dc.datacenter = "dc2".into();
        let mut c = Case::new()
            .node("external", None)
            .node("server-1", Some(HealthStatus::Passing))
            .live(member("server-2", Role::Server))
            .live(other_dc)
            .node("pod-a", Some(HealthStatus::Passing));
        c.servers.insert("server-1".into());
        c.settled = false;
        assert!(c.plan(Instant::now()).is_empty(), "{:?}", c.plan(Instant::now()));
        c.settled = true;
        assert_eq!(c.plan(Instant::now()), vec![Action::Failed { node: "pod-a".into() }]);
    }
}
