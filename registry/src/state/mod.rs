//! The pure state machine: catalog, KV and sessions. Knows no HTTP and no Raft.
//!
//! `apply` takes a log index and a `Command` and returns what the proposer is told, plus the watch keys
//! it touched. Reads are plain methods returning `(index, value)`, as Consul's state store does; the
//! index is what `X-Consul-Index` carries and what blocking queries compare against.

pub mod acl;
pub mod archive;
mod catalog;
pub mod command;
mod kv;
mod session;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

pub use command::{Command, CommandResult, KvSetMode};
pub use kv::KvEntry;
pub use watch::{Table, Watch, WatchHub, WatchKey};

use crate::api::{HealthCheck, Node, NodeService, SessionEntry};

/// Highest index that touched each table; never goes backwards (deletes move it too).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableIndexes {
    pub kvs: u64,
    pub nodes: u64,
    pub services: u64,
    pub checks: u64,
    pub sessions: u64,
    #[serde(default)]
    pub acl: u64,
    #[serde(default)]
    pub coordinates: u64,
    #[serde(default)]
    pub queries: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Datacenter written into nodes registered without one.
    pub datacenter: String,
    kv: BTreeMap<String, KvEntry>,
    /// Key -> unix ms before which the key cannot be acquired (a session holding it was invalidated).
    lock_delays: BTreeMap<String, u64>,
    sessions: BTreeMap<String, SessionEntry>,
    nodes: BTreeMap<String, Node>,
    /// node -> service ID -> instance
    services: BTreeMap<String, BTreeMap<String, NodeService>>,
    /// node -> check ID -> check
    checks: BTreeMap<String, BTreeMap<String, HealthCheck>>,
    indexes: TableIndexes,
    /// Service name -> last index that touched any instance of it (kept after the last one goes).
    service_indexes: BTreeMap<String, u64>,
    #[serde(default)]
    acl: acl::AclTables,
    /// Deleted KV key -> index of its deletion, until reaped (Consul's tombstones): prefix listings
    /// report deletions under them. Last, with a default, so older snapshots still load.
    #[serde(default)]
    kv_tombstones: BTreeMap<String, u64>,
    /// Autopilot's settings (`/v1/operator/autopilot/configuration`); Consul's defaults until set.
    #[serde(default)]
    autopilot: Option<crate::api::AutopilotConfiguration>,
    /// Network coordinates by node (segment "" only).
    #[serde(default)]
    coordinates: BTreeMap<String, crate::api::Coordinate>,
    /// The cluster's identity, made once by its first leader; Raft RPCs and joins carry it, so a
    /// server of another cluster is refused.
    #[serde(default)]
    cluster_id: Option<String>,
    /// Prepared queries by ID (`/v1/query`).
    #[serde(default)]
    prepared_queries: BTreeMap<String, crate::api::PreparedQuery>,
    /// Derived: service name -> (node, service ID). Rebuilt after a snapshot is loaded.
    #[serde(skip)]
    by_service_name: BTreeMap<String, BTreeSet<(String, String)>>,
    /// Derived: session -> keys it holds.
    #[serde(skip)]
    locks_by_session: HashMap<String, BTreeSet<String>>,
}

/// Collects the watch keys an apply touched.
#[derive(Default, Debug)]
pub struct Touched(pub Vec<WatchKey>);

impl Touched {
    fn push(&mut self, k: WatchKey) {
        self.0.push(k);
    }
}

impl State {
    pub fn new(datacenter: impl Into<String>) -> Self {
        State { datacenter: datacenter.into(), ..Default::default() }
    }

    /// Rebuilds the derived indexes (after deserializing a snapshot).
    pub fn rebuild_derived(&mut self) {
        self.acl.rebuild_derived();
        self.by_service_name.clear();
        for (node, svcs) in &self.services {
            for (id, svc) in svcs {
                self.by_service_name.entry(svc.service.clone()).or_default().insert((node.clone(), id.clone()));
            }
        }
        self.locks_by_session.clear();
        for (key, e) in &self.kv {
            if let Some(s) = &e.session {
                self.locks_by_session.entry(s.clone()).or_default().insert(key.clone());
            }
        }
    }

    pub fn indexes(&self) -> &TableIndexes {
        &self.indexes
    }

    /// Applies one command at log index `index`.
    pub fn apply(&mut self, index: u64, cmd: Command, touched: &mut Touched) -> CommandResult {
        match cmd {
            Command::KvSet { key, value, flags, mode, now_ms } => {
                self.kv_set(index, key, value, flags, mode, now_ms, touched)
            }
            Command::KvDelete { key, recurse, cas } => self.kv_delete(index, &key, recurse, cas, touched),
            Command::Txn { ops, now_ms } => self.txn(index, ops, now_ms, touched),
            Command::SessionCreate { session } => self.session_create(index, session, touched),
            Command::SessionDestroy { id, now_ms } => {
                if self.sessions.contains_key(&id) {
                    self.session_destroy(index, &id, now_ms, touched);
                }
                CommandResult::Bool(true)
            }
            Command::Register { request, now_ms } => self.register(index, request, now_ms, touched),
            Command::Deregister { request, now_ms } => self.deregister(index, request, now_ms, touched),
            Command::CheckStatus { node, check_id, status, output, now_ms } => {
                self.check_status(index, &node, &check_id, status, output, now_ms, touched)
            }
            Command::AclBootstrap { token } => self.acl_bootstrap(index, token, touched),
            Command::AclPolicySet { policy } => self.acl_policy_set(index, policy, touched),
            Command::AclPolicyDelete { id } => self.acl_policy_delete(index, &id, touched),
            Command::AclRoleSet { role } => self.acl_role_set(index, role, touched),
            Command::AclRoleDelete { id } => self.acl_role_delete(index, &id, touched),
            Command::QuerySet { query } => self.query_set(index, query, touched),
            Command::QueryDelete { id } => {
                if self.prepared_queries.remove(&id).is_some() {
                    self.indexes.queries = index;
                    touched.push(WatchKey::Table(Table::Queries));
                }
                CommandResult::None
            }
            Command::AclTokenSet { token } => self.acl_token_set(index, token, touched),
            Command::AclTokenDelete { accessor } => self.acl_token_delete(index, &accessor, touched),
            Command::AclAuthMethodSet { method } => self.acl_auth_method_set(index, method, touched),
            Command::AclAuthMethodDelete { name } => self.acl_auth_method_delete(index, &name, touched),
            Command::AclBindingRuleSet { rule } => self.acl_binding_rule_set(index, rule, touched),
            Command::AclBindingRuleDelete { id } => self.acl_binding_rule_delete(index, &id, touched),
            Command::AclTokensReapExpired { now } => self.acl_tokens_reap_expired(index, &now, touched),
            Command::AclReplicate { changes } => self.acl_replicate(index, changes, touched),
            Command::KvReapTombstones { up_to } => self.kv_reap_tombstones(up_to),
            Command::AutopilotSet { config, cas } => self.autopilot_set(index, config, cas),
            Command::Restore { archive } => self.restore(index, &archive, touched),
            Command::CoordinateUpdate { updates } => self.coordinate_update(index, updates, touched),
            Command::ClusterIdSet { id } => {
                // The first one applied stays: every member applies the same one.
                self.cluster_id.get_or_insert(id);
                CommandResult::None
            }
            Command::Batch(cmds) => {
                CommandResult::Batch(cmds.into_iter().map(|c| self.apply(index, c, touched)).collect())
            }
        }
    }
}

impl State {
    /// Every prepared query, by ID, with the index of the last change to any.
    pub fn prepared_queries(&self) -> (u64, Vec<&crate::api::PreparedQuery>) {
        (self.indexes.queries, self.prepared_queries.values().collect())
    }

    /// A query's name may be neither another query's name nor any query's ID (they resolve from
    /// one namespace); one catch-all template (empty name) at most.
    fn query_set(&mut self, index: u64, mut query: crate::api::PreparedQuery, touched: &mut Touched) -> CommandResult {
        for other in self.prepared_queries.values().filter(|o| o.id != query.id) {
            if other.name == query.name && (!query.name.is_empty() || !query.template.kind.is_empty()) {
                return CommandResult::Rejected(format!("Name {:?} aliases an existing query name", query.name));
            }
            if other.id == query.name {
                return CommandResult::Rejected(format!("Name {:?} aliases an existing query ID", query.name));
            }
        }
        if !query.session.is_empty() && !self.sessions.contains_key(&query.session) {
            return CommandResult::Rejected(format!("Invalid session {:?}", query.session));
        }
        query.create_index = self.prepared_queries.get(&query.id).map_or(index, |q| q.create_index);
        query.modify_index = index;
        self.prepared_queries.insert(query.id.clone(), query);
        self.indexes.queries = index;
        touched.push(WatchKey::Table(Table::Queries));
        CommandResult::None
    }

    /// The cluster's identity, once its first leader made one.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// The autopilot configuration; Consul's defaults (index 0) until one was written.
    pub fn autopilot(&self) -> crate::api::AutopilotConfiguration {
        self.autopilot.clone().unwrap_or_else(crate::api::AutopilotConfiguration::consul_defaults)
    }

    /// Stores nodes' coordinates; those of nodes not in the catalog are dropped (as Consul's are).
    fn coordinate_update(
        &mut self,
        index: u64,
        updates: Vec<crate::api::CoordinateEntry>,
        touched: &mut Touched,
    ) -> CommandResult {
        for u in updates.into_iter().filter(|u| self.nodes.contains_key(&u.node) && u.coord.is_valid()) {
            self.coordinates.insert(u.node, u.coord);
        }
        self.indexes.coordinates = index;
        touched.push(WatchKey::Table(Table::Coordinates));
        CommandResult::Bool(true)
    }

    /// One node's stored coordinate.
    pub fn coordinate_of(&self, node: &str) -> Option<&crate::api::Coordinate> {
        self.coordinates.get(node)
    }

    /// Every stored coordinate, by node, and the table's index.
    pub fn coordinates(&self) -> (u64, Vec<crate::api::CoordinateEntry>) {
        let list = self
            .coordinates
            .iter()
            .filter(|(node, _)| self.nodes.contains_key(*node))
            .map(|(node, coord)| crate::api::CoordinateEntry {
                node: node.clone(),
                segment: String::new(),
                coord: coord.clone(),
            })
            .collect();
        (self.indexes.coordinates, list)
    }

    /// Replaces the whole state with an archive's (`PUT /v1/snapshot`). The archive was checked
    /// before it was proposed; should it still not open, nothing changes. Every table index moves to
    /// this entry's index, so blocking queries wake and see the restore.
    fn restore(&mut self, index: u64, archive: &[u8], touched: &mut Touched) -> CommandResult {
        match archive::decode(archive) {
            Ok((_, mut restored)) => {
                restored.datacenter = std::mem::take(&mut self.datacenter);
                // A snapshot of another cluster brings its data, not its identity.
                restored.cluster_id = self.cluster_id.take();
                restored.indexes = TableIndexes {
                    kvs: index,
                    nodes: index,
                    services: index,
                    checks: index,
                    sessions: index,
                    acl: index,
                    coordinates: index,
                    queries: index,
                };
                *self = restored;
                touched.push(WatchKey::Any);
                CommandResult::Bool(true)
            }
            Err(e) => CommandResult::Rejected(e),
        }
    }

    /// Replaces the autopilot configuration; with `cas`, only if its ModifyIndex is still that
    /// (Consul answers `false`, and changes nothing, otherwise).
    fn autopilot_set(
        &mut self,
        index: u64,
        mut config: crate::api::AutopilotConfiguration,
        cas: Option<u64>,
    ) -> CommandResult {
        let current = self.autopilot.as_ref();
        if cas.is_some_and(|cas| cas != current.map_or(0, |c| c.modify_index)) {
            return CommandResult::Bool(false);
        }
        config.create_index = current.map_or(index, |c| c.create_index);
        config.modify_index = index;
        self.autopilot = Some(config);
        CommandResult::Bool(true)
    }
}

/// Consul never reports index 0: clients treat 0 as "no index" and would spin.
pub fn nonzero(index: u64) -> u64 {
    index.max(1)
}
#[cfg(test)]
mod tests;
