//! The agent's local state: this pod's node, services and checks, each with a "synced" mark, in the
//! manner of Consul's agent. Pure (no I/O, time passed in): the sync loop asks for `pending` work and
//! marks it done; a full anti-entropy pass `compare`s with what the servers hold and marks drift in
//! both directions (missing or different there: push; there but not here: remove).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::api::{
    AgentService, CatalogNode, CheckRegistration, DeregisterRequest, HealthCheck, HealthStatus, Meta, RegisterRequest,
    ServiceRegistration,
};

/// The node-level check the servers' leader owns; never ours to sync or remove.
pub const SERF_CHECK: &str = "serfHealth";
/// The service the leader registers for every server (Consul's `consul` service); likewise.
pub const SERVER_SERVICE: &str = "consul";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub address: String,
    pub datacenter: String,
    pub meta: Meta,
}

/// A check as the agent holds it: what the API shows, plus the timers the agent runs.
#[derive(Debug, Clone)]
pub struct LocalCheck {
    pub check: HealthCheck,
    /// TTL checks: how long an update stays good.
    pub ttl: Option<Duration>,
    pub ttl_deadline: Option<Instant>,
    /// `deregister_critical_service_after`.
    pub deregister_after: Option<Duration>,
    pub critical_since: Option<Instant>,
    /// How the agent runs it, as agent health answers show it.
    pub definition: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
struct Tracked<T> {
    value: T,
    synced: bool,
    version: u64,
}

/// Why a TTL update was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TtlError {
    Unknown,
    NotTtl,
}

/// Writes the servers still need, each tagged with the version it was built from.
#[derive(Debug, Default)]
pub struct Pending {
    pub node: Option<(u64, RegisterRequest)>,
    pub services: Vec<(String, u64, RegisterRequest)>,
    pub checks: Vec<(String, u64, RegisterRequest)>,
    pub removed_services: Vec<(String, DeregisterRequest)>,
    pub removed_checks: Vec<(String, DeregisterRequest)>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.node.is_none()
            && self.services.is_empty()
            && self.checks.is_empty()
            && self.removed_services.is_empty()
            && self.removed_checks.is_empty()
    }
}

#[derive(Debug)]
pub struct LocalState {
    node: NodeInfo,
    node_synced: Option<u64>,
    services: BTreeMap<String, Tracked<AgentService>>,
    checks: BTreeMap<String, Tracked<LocalCheck>>,
    removed_services: BTreeSet<String>,
    removed_checks: BTreeSet<String>,
    version: u64,
}

impl LocalState {
    pub fn new(node: NodeInfo) -> Self {
        LocalState {
            node,
            node_synced: None,
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            removed_services: BTreeSet::new(),
            removed_checks: BTreeSet::new(),
            version: 0,
        }
    }

    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    pub fn services(&self) -> impl Iterator<Item = &AgentService> {
        self.services.values().map(|t| &t.value)
    }

    pub fn service(&self, id: &str) -> Option<&AgentService> {
        self.services.get(id).map(|t| &t.value)
    }

    pub fn checks(&self) -> impl Iterator<Item = &LocalCheck> {
        self.checks.values().map(|t| &t.value)
    }

    pub fn check(&self, id: &str) -> Option<&LocalCheck> {
        self.checks.get(id).map(|t| &t.value)
    }

    /// Adds or replaces a service and its checks; checks it had before and no longer lists go.
    /// Returns the IDs of checks removed that way (their runners must stop), and of the checks
    /// re-registered unchanged, which keep their status (their runners may go on).
    pub fn add_service(
        &mut self,
        service: AgentService,
        checks: Vec<LocalCheck>,
        now: Instant,
    ) -> (Vec<String>, Vec<String>) {
        let id = service.id.clone();
        let keep: BTreeSet<&str> = checks.iter().map(|c| c.check.check_id.as_str()).collect();
        let stale: Vec<String> = self
            .checks
            .values()
            .filter(|c| c.value.check.service_id == id && !keep.contains(c.value.check.check_id.as_str()))
            .map(|c| c.value.check.check_id.clone())
            .collect();
        for c in &stale {
            self.remove_check(c);
        }
        let version = self.next_version();
        self.removed_services.remove(&id);
        let synced = self.services.get(&id).is_some_and(|t| t.synced && t.value == service);
        self.services.insert(id, Tracked { value: service, synced, version });
        let mut kept = Vec::new();
        for c in checks {
            let cid = c.check.check_id.clone();
            if self.add_check(c, now) {
                kept.push(cid);
            }
        }
        (stale, kept)
    }

    /// Removes a service and its checks; returns the removed check IDs, or None if it was unknown.
    pub fn remove_service(&mut self, id: &str) -> Option<Vec<String>> {
        self.services.remove(id)?;
        self.removed_services.insert(id.to_string());
        let checks: Vec<String> = self
            .checks
            .values()
            .filter(|c| c.value.check.service_id == id)
            .map(|c| c.value.check.check_id.clone())
            .collect();
        for c in &checks {
            // Deregistering the service removes its checks on the servers too.
            self.checks.remove(c);
        }
        Some(checks)
    }

    /// Adds or replaces a check. A check re-registered with the same definition keeps its status,
    /// output and timers (a client that re-registers on every start must not reset them): then
    /// this returns true.
    pub fn add_check(&mut self, mut check: LocalCheck, now: Instant) -> bool {
        check.check.node = self.node.name.clone();
        if let Some(t) = self.checks.get(&check.check.check_id) {
            let (old, new) = (&t.value.check, &check.check);
            let same = (&old.name, &old.check_type, &old.interval, &old.timeout, &old.notes, &old.service_id)
                == (&new.name, &new.check_type, &new.interval, &new.timeout, &new.notes, &new.service_id)
                && (t.value.ttl, t.value.deregister_after) == (check.ttl, check.deregister_after);
            if same {
                check.check.status = old.status;
                check.check.output = old.output.clone();
                check.ttl_deadline = t.value.ttl_deadline;
                check.critical_since = t.value.critical_since;
                let (synced, version) = (t.synced, t.version);
                self.checks.insert(check.check.check_id.clone(), Tracked { value: check, synced, version });
                return true;
            }
        }
        if let Some(ttl) = check.ttl {
            check.ttl_deadline = Some(now + ttl);
        }
        if check.check.status == HealthStatus::Critical {
            check.critical_since = Some(now);
        }
        let id = check.check.check_id.clone();
        let version = self.next_version();
        self.removed_checks.remove(&id);
        self.checks.insert(id, Tracked { value: check, synced: false, version });
        false
    }

    pub fn remove_check(&mut self, id: &str) -> bool {
        if self.checks.remove(id).is_none() {
            return false;
        }
        self.removed_checks.insert(id.to_string());
        true
    }

    /// A new result for a check. A status change must reach the servers now; a new output alone
    /// waits for the next full sync (as Consul defers output-only updates).
    pub fn set_check_status(&mut self, id: &str, status: HealthStatus, output: String, now: Instant) -> bool {
        let version = self.next_version();
        let Some(t) = self.checks.get_mut(id) else { return false };
        let c = &mut t.value;
        let status_changed = c.check.status != status;
        c.check.output = output;
        if status_changed {
            c.check.status = status;
            c.critical_since = (status == HealthStatus::Critical).then_some(now);
            t.synced = false;
            t.version = version;
        }
        status_changed
    }

    /// `/v1/agent/check/pass|warn|fail|update/:id`.
    pub fn update_ttl(&mut self, id: &str, status: HealthStatus, output: String, now: Instant) -> Result<(), TtlError> {
        let t = self.checks.get_mut(id).ok_or(TtlError::Unknown)?;
        let ttl = t.value.ttl.ok_or(TtlError::NotTtl)?;
        t.value.ttl_deadline = Some(now + ttl);
        self.set_check_status(id, status, output, now);
        Ok(())
    }

    /// Timers: TTL checks not updated in time go critical; services with a check critical longer
    /// than its `deregister_critical_service_after` are removed. Returns what changed.
    pub fn tick(&mut self, now: Instant) -> Tick {
        let mut tick = Tick::default();
        let expired: Vec<(String, Duration)> = self
            .checks
            .values()
            .filter(|t| t.value.check.status != HealthStatus::Critical)
            .filter_map(|t| match (t.value.ttl, t.value.ttl_deadline) {
                (Some(ttl), Some(d)) if d <= now => Some((t.value.check.check_id.clone(), ttl)),
                _ => None,
            })
            .collect();
        for (id, ttl) in expired {
            let output = format!("TTL expired (last update more than {} ago)", crate::api::format_go_duration(ttl));
            self.set_check_status(&id, HealthStatus::Critical, output, now);
            tick.expired.push(id);
        }
        let reap: BTreeSet<String> = self
            .checks
            .values()
            .filter_map(|t| {
                let c = &t.value;
                let (after, since) = (c.deregister_after?, c.critical_since?);
                (now.saturating_duration_since(since) >= after && !c.check.service_id.is_empty())
                    .then(|| c.check.service_id.clone())
            })
            .collect();
        for service in reap {
            if let Some(checks) = self.remove_service(&service) {
                tick.stopped_checks.extend(checks);
                tick.deregistered.push(service);
            }
        }
        tick
    }

    fn register_request(
        &self,
        service: Option<ServiceRegistration>,
        checks: Vec<CheckRegistration>,
    ) -> RegisterRequest {
        RegisterRequest {
            node: Some(self.node.name.clone()),
            address: Some(self.node.address.clone()),
            datacenter: Some(self.node.datacenter.clone()),
            node_meta: Some(self.node.meta.clone()),
            service,
            checks: (!checks.is_empty()).then_some(checks),
            ..Default::default()
        }
    }

    /// Everything not yet on the servers.
    pub fn pending(&self) -> Pending {
        let mut p = Pending::default();
        if self.node_synced.is_none() {
            p.node = Some((self.version, self.register_request(None, Vec::new())));
        }
        for (id, t) in self.services.iter().filter(|(_, t)| !t.synced) {
            // A service travels with its checks, so it never shows up without them.
            let checks = self
                .checks
                .values()
                .filter(|c| c.value.check.service_id == *id)
                .map(|c| to_registration(&c.value.check))
                .collect();
            p.services.push((
                id.clone(),
                t.version,
                self.register_request(Some(to_service_registration(&t.value)), checks),
            ));
        }
        for (id, t) in self.checks.iter().filter(|(_, t)| !t.synced) {
            let svc = &t.value.check.service_id;
            if !svc.is_empty() && self.services.get(svc).is_some_and(|s| !s.synced) {
                continue; // goes with its service
            }
            let mut r = self.register_request(None, vec![to_registration(&t.value.check)]);
            r.skip_node_update = true;
            p.checks.push((id.clone(), t.version, r));
        }
        let dereg = |service_id: Option<String>, check_id: Option<String>| DeregisterRequest {
            node: Some(self.node.name.clone()),
            datacenter: Some(self.node.datacenter.clone()),
            service_id,
            check_id,
        };
        p.removed_services =
            self.removed_services.iter().map(|id| (id.clone(), dereg(Some(id.clone()), None))).collect();
        p.removed_checks = self.removed_checks.iter().map(|id| (id.clone(), dereg(None, Some(id.clone())))).collect();
        p
    }

    pub fn node_synced(&mut self) {
        self.node_synced = Some(self.version);
    }

    /// Marks a service (and the checks that went with it) synced, unless it changed meanwhile.
    pub fn service_synced(&mut self, id: &str, version: u64, request: &RegisterRequest) {
        if let Some(t) = self.services.get_mut(id).filter(|t| t.version == version) {
            t.synced = true;
        }
        for c in request.checks.iter().flatten() {
            let cid = c.check_id.as_deref().unwrap_or_default();
            if let Some(t) = self.checks.get_mut(cid) {
                if t.value.check.status == c.status.unwrap_or_default() {
                    t.synced = true;
                }
            }
        }
    }

    pub fn check_synced(&mut self, id: &str, version: u64) {
        if let Some(t) = self.checks.get_mut(id).filter(|t| t.version == version) {
            t.synced = true;
        }
    }

    pub fn service_removed(&mut self, id: &str) {
        if !self.services.contains_key(id) {
            self.removed_services.remove(id);
        }
    }

    pub fn check_removed(&mut self, id: &str) {
        if !self.checks.contains_key(id) {
            self.removed_checks.remove(id);
        }
    }

    /// Full anti-entropy: compares with what the servers hold for this node and marks the drift.
    pub fn compare(&mut self, remote: Option<&CatalogNode>, remote_checks: &[HealthCheck]) {
        let Some(remote) = remote else {
            // The servers lost this node (or never had it): everything goes again.
            self.node_synced = None;
            self.services.values_mut().for_each(|t| t.synced = false);
            self.checks.values_mut().for_each(|t| t.synced = false);
            return;
        };
        let n = &remote.node;
        if n.address != self.node.address || n.meta.clone().unwrap_or_default() != self.node.meta {
            self.node_synced = None;
        }
        for (id, t) in self.services.iter_mut() {
            if remote.services.get(id).is_none_or(|r| !same_service(&t.value, r)) {
                t.synced = false;
            }
        }
        for id in remote.services.keys().filter(|id| *id != SERVER_SERVICE && !self.services.contains_key(*id)) {
            self.removed_services.insert(id.clone());
        }
        let by_id: BTreeMap<&str, &HealthCheck> = remote_checks.iter().map(|c| (c.check_id.as_str(), c)).collect();
        for (id, t) in self.checks.iter_mut() {
            let c = &t.value.check;
            let same = by_id.get(id.as_str()).is_some_and(|r| {
                r.status == c.status
                    && r.output == c.output
                    && r.name == c.name
                    && r.service_id == c.service_id
                    && r.notes == c.notes
            });
            if !same {
                t.synced = false;
            }
        }
        for id in by_id.keys().filter(|id| **id != SERF_CHECK && !self.checks.contains_key(**id)) {
            self.removed_checks.insert(id.to_string());
        }
    }
}

/// What a `tick` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tick {
    pub expired: Vec<String>,
    pub deregistered: Vec<String>,
    pub stopped_checks: Vec<String>,
}

fn same_service(local: &AgentService, remote: &crate::api::NodeService) -> bool {
    local.service == remote.service
        && local.kind.as_deref().unwrap_or_default() == remote.kind
        && local.tags == remote.tags
        && local.port == remote.port
        && local.address == remote.address
        && local.meta == remote.meta.clone().unwrap_or_default()
        && local.weights == remote.weights
        && local.enable_tag_override == remote.enable_tag_override
}

fn to_service_registration(s: &AgentService) -> ServiceRegistration {
    ServiceRegistration {
        id: Some(s.id.clone()),
        service: s.service.clone(),
        tags: Some(s.tags.clone()),
        address: Some(s.address.clone()),
        tagged_addresses: s.tagged_addresses.clone(),
        meta: Some(s.meta.clone()),
        port: Some(s.port),
        weights: Some(s.weights),
        enable_tag_override: Some(s.enable_tag_override),
        kind: s.kind.clone(),
        proxy: s.proxy.clone(),
    }
}

fn to_registration(c: &HealthCheck) -> CheckRegistration {
    CheckRegistration {
        node: Some(c.node.clone()),
        check_id: Some(c.check_id.clone()),
        name: Some(c.name.clone()),
        status: Some(c.status),
        notes: Some(c.notes.clone()),
        output: Some(c.output.clone()),
        service_id: (!c.service_id.is_empty()).then(|| c.service_id.clone()),
        check_type: Some(c.check_type.clone()),
        interval: Some(c.interval.clone()),
        timeout: Some(c.timeout.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Node, NodeService, Weights};

    fn state() -> LocalState {
        LocalState::new(NodeInfo {
            name: "pod-1".into(),
            address: "10.0.0.1".into(),
            datacenter: "dc1".into(),
            meta: Meta::new(),
        })
    }

    fn service(id: &str) -> AgentService {
        AgentService {
            id: id.into(),
            service: "web".into(),
            tags: vec!["v1".into()],
            meta: Meta::new(),
            port: 8080,
            address: String::new(),
            socket_path: String::new(),
            tagged_addresses: None,
            weights: Weights { passing: 1, warning: 1 },
            enable_tag_override: false,
            kind: None,
            proxy: None,
            datacenter: "dc1".into(),
        }
    }

    fn check(id: &str, service_id: &str, ttl: Option<Duration>) -> LocalCheck {
        LocalCheck {
            check: HealthCheck {
                check_id: id.into(),
                name: id.into(),
                service_id: service_id.into(),
                service_name: if service_id.is_empty() { String::new() } else { "web".into() },
                check_type: "ttl".into(),
                ..Default::default()
            },
            ttl,
            ttl_deadline: None,
            deregister_after: None,
            critical_since: None,
            definition: Default::default(),
        }
    }

    /// Applies every pending write as if the servers took it.
    fn sync_all(s: &mut LocalState) -> Pending {
        let p = s.pending();
        if p.node.is_some() {
            s.node_synced();
        }
        for (id, v, r) in &p.services {
            s.service_synced(id, *v, r);
        }
        for (id, v, _) in &p.checks {
            s.check_synced(id, *v);
        }
        for (id, _) in &p.removed_services {
            s.service_removed(id);
        }
        for (id, _) in &p.removed_checks {
            s.check_removed(id);
        }
        p
    }

    #[test]
    fn a_service_travels_with_its_checks_and_only_changes_follow() {
        let now = Instant::now();
        let mut s = state();
        s.add_service(service("web-1"), vec![check("service:web-1", "web-1", Some(Duration::from_secs(10)))], now);
        let p = sync_all(&mut s);
        assert!(p.node.is_some());
        assert_eq!(p.services.len(), 1);
        assert_eq!(p.services[0].2.checks.as_ref().map(Vec::len), Some(1));
        assert!(p.checks.is_empty(), "the check went with its service");
        assert!(s.pending().is_empty(), "nothing left once synced");

        // Output only: stays local until the next full sync.
        assert!(!s.set_check_status("service:web-1", HealthStatus::Critical, "still down".into(), now));
        assert!(s.pending().is_empty());
        // A status change is pushed alone, without the service.
        s.update_ttl("service:web-1", HealthStatus::Passing, "ok".into(), now).unwrap();
        let p = sync_all(&mut s);
        assert!(p.services.is_empty());
        assert_eq!(p.checks.len(), 1);
        assert!(p.checks[0].2.skip_node_update);
        assert_eq!(p.checks[0].2.checks.as_ref().unwrap()[0].status, Some(HealthStatus::Passing));
    }

    #[test]
    fn re_registering_unchanged_keeps_status_and_sync() {
        let now = Instant::now();
        let mut s = state();
        s.add_service(service("web-1"), vec![check("service:web-1", "web-1", Some(Duration::from_secs(10)))], now);
        s.update_ttl("service:web-1", HealthStatus::Passing, "ok".into(), now).unwrap();
        sync_all(&mut s);
        let (stale, kept) =
            s.add_service(service("web-1"), vec![check("service:web-1", "web-1", Some(Duration::from_secs(10)))], now);
        assert!(stale.is_empty());
        assert_eq!(kept, vec!["service:web-1".to_string()]);
        assert_eq!(s.check("service:web-1").map(|c| c.check.status), Some(HealthStatus::Passing));
        assert!(s.pending().is_empty(), "nothing changed, nothing to push");
        let mut changed = check("service:web-1", "web-1", Some(Duration::from_secs(20)));
        changed.check.interval = "20s".into();
        changed.check.status = HealthStatus::Critical;
        let (_, kept) = s.add_service(service("web-1"), vec![changed], now);
        assert!(kept.is_empty(), "a changed definition starts over");
        assert_eq!(s.check("service:web-1").map(|c| c.check.status), Some(HealthStatus::Critical));
    }

    #[test]
    fn a_change_during_a_push_is_not_lost() {
        let now = Instant::now();
        let mut s = state();
        s.add_check(check("c1", "", Some(Duration::from_secs(10))), now);
        let p = s.pending();
        let (id, v, _) = &p.checks[0];
        // The check changes while its write is in flight: the older write must not mark it synced.
        s.update_ttl("c1", HealthStatus::Passing, "ok".into(), now).unwrap();
        s.check_synced(id, *v);
        assert_eq!(s.pending().checks.len(), 1);
    }

    #[test]
    fn ttl_expiry_and_deregister_critical_service_after() {
        let now = Instant::now();
        let mut s = state();
        let mut c = check("service:web-1", "web-1", Some(Duration::from_secs(10)));
        c.deregister_after = Some(Duration::from_secs(30));
        s.add_service(service("web-1"), vec![c], now);
        s.update_ttl("service:web-1", HealthStatus::Passing, "ok".into(), now).unwrap();
        sync_all(&mut s);
        assert_eq!(s.tick(now + Duration::from_secs(9)), Tick::default());
        let t = s.tick(now + Duration::from_secs(11));
        assert_eq!(t.expired, vec!["service:web-1".to_string()]);
        assert_eq!(s.check("service:web-1").unwrap().check.status, HealthStatus::Critical);
        assert!(s.check("service:web-1").unwrap().check.output.starts_with("TTL expired"));
        assert_eq!(s.tick(now + Duration::from_secs(40)), Tick::default(), "critical 29 s: kept");
        let t = s.tick(now + Duration::from_secs(42));
        assert_eq!(t.deregistered, vec!["web-1".to_string()]);
        assert!(s.service("web-1").is_none());
        let p = s.pending();
        assert_eq!(p.removed_services.len(), 1);
        assert_eq!(s.update_ttl("nope", HealthStatus::Passing, String::new(), now), Err(TtlError::Unknown));
    }

    #[test]
    fn full_sync_repairs_drift_both_ways() {
        let now = Instant::now();
        let mut s = state();
        s.add_service(service("web-1"), vec![check("service:web-1", "web-1", Some(Duration::from_secs(10)))], now);
        sync_all(&mut s);

        // The servers lost everything: all of it goes again.
        s.compare(None, &[]);
        let p = sync_all(&mut s);
        assert!(p.node.is_some());
        assert_eq!(p.services.len(), 1);

        // The servers hold a stale copy, a stranger service and check on our node, and serfHealth.
        let mut stale = NodeService {
            id: "web-1".into(),
            service: "web".into(),
            tags: vec!["old".into()],
            port: 8080,
            weights: Weights { passing: 1, warning: 1 },
            ..Default::default()
        };
        let remote = CatalogNode {
            node: Node { node: "pod-1".into(), address: "10.0.0.1".into(), ..Default::default() },
            services: [
                ("web-1".to_string(), stale.clone()),
                (
                    "ghost".to_string(),
                    NodeService { id: "ghost".into(), service: "ghost".into(), ..Default::default() },
                ),
            ]
            .into_iter()
            .collect(),
        };
        let local_check = s.check("service:web-1").unwrap().check.clone();
        let ghost_check = HealthCheck { check_id: "ghost-check".into(), ..Default::default() };
        let serf = HealthCheck { check_id: SERF_CHECK.into(), ..Default::default() };
        s.compare(Some(&remote), &[local_check.clone(), ghost_check, serf]);
        let p = sync_all(&mut s);
        assert!(p.node.is_none(), "node unchanged");
        assert_eq!(p.services.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), vec!["web-1"]);
        assert_eq!(p.removed_services.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), vec!["ghost"]);
        assert_eq!(p.removed_checks.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), vec!["ghost-check"]);

        // In agreement: nothing to do.
        stale.tags = vec!["v1".into()];
        let remote = CatalogNode { services: [("web-1".to_string(), stale)].into_iter().collect(), ..remote };
        s.compare(Some(&remote), &[local_check]);
        assert!(s.pending().is_empty(), "{:?}", s.pending());
    }
}
