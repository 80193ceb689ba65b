//! Catalog: nodes, service instances and health checks.

use std::collections::{BTreeMap, BTreeSet};

use super::{CommandResult, State, Table, Touched, WatchKey};
use crate::api::{
    CatalogNode, CatalogService, DeregisterRequest, HealthCheck, HealthStatus, Node, NodeService, RegisterRequest,
    ServiceEntry, ServiceEntryRef, ServiceSummary,
};

impl State {
    fn touch_service(&mut self, index: u64, name: &str, touched: &mut Touched) {
        self.service_indexes.insert(name.to_string(), index);
        touched.push(WatchKey::Service(name.to_string()));
    }

    /// Everything that reads a node's services changes when the node does.
    fn touch_node(&mut self, index: u64, node: &str, touched: &mut Touched) {
        touched.push(WatchKey::Node(node.to_string()));
        let names: Vec<String> =
            self.services.get(node).map(|s| s.values().map(|v| v.service.clone()).collect()).unwrap_or_default();
        for name in names {
            self.touch_service(index, &name, touched);
        }
    }

    pub(super) fn register(
        &mut self,
        index: u64,
        req: RegisterRequest,
        now_ms: u64,
        touched: &mut Touched,
    ) -> CommandResult {
        let node_name = match req.node.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => return CommandResult::Rejected("Must provide node".into()),
        };
        let address = req.address.clone().unwrap_or_default();
        if address.is_empty() && !(req.skip_node_update && self.nodes.contains_key(&node_name)) {
            return CommandResult::Rejected("Must provide address".into());
        }
        let mut checks: Vec<_> = req.check.iter().chain(req.checks.iter().flatten()).cloned().collect();
        // Validate everything before the first write: a rejected registration writes nothing.
        let svc_id = req.service.as_ref().map(|s| s.id.clone().filter(|i| !i.is_empty()).unwrap_or(s.service.clone()));
        if let Some(s) = &req.service {
            if s.service.is_empty() {
                return CommandResult::Rejected("Must provide service name".into());
            }
        }
        for c in checks.iter_mut() {
            if c.check_id.as_deref().unwrap_or("").is_empty() {
                c.check_id = c.name.clone();
            }
            if c.check_id.as_deref().unwrap_or("").is_empty() {
                return CommandResult::Rejected("Must provide CheckID or Name for each check".into());
            }
            if let Some(n) = c.node.as_deref() {
                if !n.is_empty() && n != node_name {
                    return CommandResult::Rejected(format!("Check node {n:?} does not match {node_name:?}"));
                }
            }
            if let Some(sid) = c.service_id.as_deref().filter(|s| !s.is_empty()) {
                let known = svc_id.as_deref() == Some(sid)
                    || self.services.get(&node_name).is_some_and(|s| s.contains_key(sid));
                if !known {
                    return CommandResult::Rejected(format!("Missing service registration for {sid:?}"));
                }
            }
        }

        // Node.
        if !(req.skip_node_update && self.nodes.contains_key(&node_name)) {
            let existing = self.nodes.get(&node_name);
            let mut node = Node {
                id: req.id.clone().unwrap_or_default(),
                node: node_name.clone(),
                address,
                datacenter: req.datacenter.clone().filter(|d| !d.is_empty()).unwrap_or(self.datacenter.clone()),
                tagged_addresses: req.tagged_addresses.clone(),
                meta: req.node_meta.clone(),
                create_index: existing.map_or(index, |n| n.create_index),
                modify_index: existing.map_or(index, |n| n.modify_index),
            };
            if existing != Some(&node) {
                node.modify_index = index;
                self.nodes.insert(node_name.clone(), node);
                self.indexes.nodes = index;
                touched.push(WatchKey::Table(Table::Nodes));
                self.touch_node(index, &node_name, touched);
            }
        }

        // Service.
        if let (Some(s), Some(id)) = (req.service, svc_id) {
            let existing = self.services.get(&node_name).and_then(|m| m.get(&id));
            let mut svc = NodeService {
                id: id.clone(),
                service: s.service.clone(),
                tags: s.tags.unwrap_or_default(),
                address: s.address.unwrap_or_default(),
                tagged_addresses: s.tagged_addresses,
                meta: s.meta,
                port: s.port.unwrap_or(0),
                weights: s.weights.unwrap_or_default(),
                enable_tag_override: s.enable_tag_override.unwrap_or(false),
                proxy: s.proxy.unwrap_or_default(),
                kind: s.kind.unwrap_or_default(),
                connect: Default::default(),
                create_index: existing.map_or(index, |e| e.create_index),
                modify_index: existing.map_or(index, |e| e.modify_index),
            };
            if existing != Some(&svc) {
                svc.modify_index = index;
                if let Some(old) = existing {
                    if old.service != svc.service {
                        let old_name = old.service.clone();
                        self.unindex_service(&node_name, &id, &old_name);
                        self.touch_service(index, &old_name, touched);
                    }
                }
                self.by_service_name.entry(svc.service.clone()).or_default().insert((node_name.clone(), id.clone()));
                let name = svc.service.clone();
                self.services.entry(node_name.clone()).or_default().insert(id, svc);
                self.indexes.services = index;
                touched.push(WatchKey::Table(Table::Services));
                touched.push(WatchKey::Node(node_name.clone()));
                self.touch_service(index, &name, touched);
            }
        }

        // Checks.
        for c in checks {
            let check_id = c.check_id.clone().unwrap_or_default();
            let service_id = c.service_id.clone().unwrap_or_default();
            let (service_name, service_tags) = self
                .services
                .get(&node_name)
                .and_then(|m| m.get(&service_id))
                .map(|s| (s.service.clone(), s.tags.clone()))
                .unwrap_or_default();
            let check = HealthCheck {
                node: node_name.clone(),
                check_id,
                name: c.name.unwrap_or_default(),
                status: c.status.unwrap_or(HealthStatus::Critical),
                notes: c.notes.unwrap_or_default(),
                output: c.output.unwrap_or_default(),
                service_id,
                service_name,
                service_tags,
                check_type: c.check_type.unwrap_or_default(),
                interval: c.interval.unwrap_or_default(),
                timeout: c.timeout.unwrap_or_default(),
                ..Default::default()
            };
            self.upsert_check(index, check, now_ms, touched);
        }
        CommandResult::Bool(true)
    }

    fn upsert_check(&mut self, index: u64, mut check: HealthCheck, now_ms: u64, touched: &mut Touched) {
        let existing = self.checks.get(&check.node).and_then(|m| m.get(&check.check_id));
        check.create_index = existing.map_or(index, |e| e.create_index);
        check.modify_index = existing.map_or(index, |e| e.modify_index);
        if existing == Some(&check) {
            return;
        }
        check.modify_index = index;
        let (node, id, status, svc) =
            (check.node.clone(), check.check_id.clone(), check.status, check.service_name.clone());
        self.checks.entry(node.clone()).or_default().insert(id.clone(), check);
        self.indexes.checks = index;
        touched.push(WatchKey::Table(Table::Checks));
        touched.push(WatchKey::Node(node.clone()));
        if svc.is_empty() {
            // A node-level check changes the health of every service on the node.
            self.touch_node(index, &node, touched);
        } else {
            self.touch_service(index, &svc, touched);
        }
        if status == HealthStatus::Critical {
            self.invalidate_sessions_for_check(index, &node, &id, now_ms, touched);
        }
    }

    pub(super) fn check_status(
        &mut self,
        index: u64,
        node: &str,
        check_id: &str,
        status: HealthStatus,
        output: String,
        now_ms: u64,
        touched: &mut Touched,
    ) -> CommandResult {
        let Some(existing) = self.checks.get(node).and_then(|m| m.get(check_id)) else {
            return CommandResult::Rejected(format!("CheckID {check_id:?} is not registered on node {node:?}"));
        };
        let mut check = existing.clone();
        check.status = status;
        check.output = output;
        self.upsert_check(index, check, now_ms, touched);
        CommandResult::Bool(true)
    }

    fn unindex_service(&mut self, node: &str, id: &str, name: &str) {
        if let Some(set) = self.by_service_name.get_mut(name) {
            set.remove(&(node.to_string(), id.to_string()));
            if set.is_empty() {
                self.by_service_name.remove(name);
            }
        }
    }

    fn remove_check(&mut self, index: u64, node: &str, check_id: &str, now_ms: u64, touched: &mut Touched) {
        let Some(c) = self.checks.get_mut(node).and_then(|m| m.remove(check_id)) else { return };
        self.indexes.checks = index;
        touched.push(WatchKey::Table(Table::Checks));
        touched.push(WatchKey::Node(node.to_string()));
        if c.service_name.is_empty() {
            self.touch_node(index, node, touched);
        } else {
            self.touch_service(index, &c.service_name, touched);
        }
        self.invalidate_sessions_for_check(index, node, check_id, now_ms, touched);
    }

    fn remove_service(&mut self, index: u64, node: &str, id: &str, now_ms: u64, touched: &mut Touched) {
        let Some(svc) = self.services.get_mut(node).and_then(|m| m.remove(id)) else { return };
        self.unindex_service(node, id, &svc.service);
        self.indexes.services = index;
        touched.push(WatchKey::Table(Table::Services));
        touched.push(WatchKey::Node(node.to_string()));
        self.touch_service(index, &svc.service, touched);
        let check_ids: Vec<String> = self
            .checks
            .get(node)
            .map(|m| m.values().filter(|c| c.service_id == id).map(|c| c.check_id.clone()).collect())
            .unwrap_or_default();
        for c in check_ids {
            self.remove_check(index, node, &c, now_ms, touched);
        }
    }

    pub(super) fn deregister(
        &mut self,
        index: u64,
        req: DeregisterRequest,
        now_ms: u64,
        touched: &mut Touched,
    ) -> CommandResult {
        let node = match req.node.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => return CommandResult::Rejected("Must provide node".into()),
        };
        match (req.service_id.as_deref(), req.check_id.as_deref()) {
            (Some(s), _) if !s.is_empty() => self.remove_service(index, &node, s, now_ms, touched),
            (_, Some(c)) if !c.is_empty() => self.remove_check(index, &node, c, now_ms, touched),
            _ => {
                let ids: Vec<String> =
                    self.services.get(&node).map(|m| m.keys().cloned().collect()).unwrap_or_default();
                for id in ids {
                    self.remove_service(index, &node, &id, now_ms, touched);
                }
                let checks: Vec<String> =
                    self.checks.get(&node).map(|m| m.keys().cloned().collect()).unwrap_or_default();
                for c in checks {
                    self.remove_check(index, &node, &c, now_ms, touched);
                }
                self.services.remove(&node);
                self.checks.remove(&node);
                if self.nodes.remove(&node).is_some() {
                    self.indexes.nodes = index;
                    touched.push(WatchKey::Table(Table::Nodes));
                    touched.push(WatchKey::Node(node.clone()));
                }
                self.invalidate_sessions_for_node(index, &node, now_ms, touched);
            }
        }
        CommandResult::Bool(true)
    }

    // ---- reads ----

    fn catalog_index(&self) -> u64 {
        let i = &self.indexes;
        i.nodes.max(i.services).max(i.checks)
    }

    /// Index for reads of one service: the last change to any instance, its checks or its nodes.
    pub fn service_index(&self, name: &str) -> u64 {
        self.service_indexes.get(name).copied().unwrap_or(self.indexes.services)
    }

    /// `/v1/operator/usage` for this datacenter, as Consul counts: services and instances (the
    /// `consul` service included), instances by Connect kind, and billable ones (neither `consul`
    /// nor a proxy or gateway).
    pub fn usage(&self) -> (u64, serde_json::Value) {
        let all = self.services.values().flat_map(|m| m.values());
        let (mut instances, mut billable) = (0u64, 0u64);
        let mut kinds: BTreeMap<&str, u64> = [
            "api-gateway",
            "connect-native",
            "connect-proxy",
            "ingress-gateway",
            "mesh-gateway",
            "terminating-gateway",
        ]
        .into_iter()
        .map(|k| (k, 0))
        .collect();
        for s in all {
            instances += 1;
            match kinds.get_mut(s.kind.as_str()) {
                Some(n) => *n += 1,
                None if s.service != "consul" => billable += 1,
                None => {}
            }
        }
        let usage = serde_json::json!({
            "Services": self.by_service_name.len(),
            "ServiceInstances": instances,
            "ConnectServiceInstances": kinds,
            "BillableServiceInstances": billable,
            "Nodes": self.nodes.len(),
        });
        (self.indexes.services.max(self.indexes.nodes), usage)
    }

    pub fn catalog_nodes(&self) -> (u64, Vec<Node>) {
        (self.indexes.nodes, self.nodes.values().cloned().collect())
    }

    /// Service name -> union of its instances' tags.
    pub fn catalog_services(&self) -> (u64, BTreeMap<String, Vec<String>>) {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, instances) in &self.by_service_name {
            let tags = out.entry(name.clone()).or_default();
            for (node, id) in instances {
                if let Some(s) = self.services.get(node).and_then(|m| m.get(id)) {
                    for t in &s.tags {
                        if !tags.contains(t) {
                            tags.push(t.clone());
                        }
                    }
                }
            }
        }
        (self.indexes.services, out)
    }

    fn instances<'a>(&'a self, name: &str) -> impl Iterator<Item = (&'a Node, &'a NodeService)> + 'a {
        self.by_service_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(move |(node, id)| Some((self.nodes.get(node)?, self.services.get(node)?.get(id)?)))
    }

    pub fn catalog_service(&self, name: &str) -> (u64, Vec<CatalogService>) {
        (self.service_index(name), self.instances(name).map(|(n, s)| CatalogService::new(n, s)).collect())
    }

    pub fn catalog_node(&self, node: &str) -> (u64, Option<CatalogNode>) {
        let entry = self
            .nodes
            .get(node)
            .map(|n| CatalogNode { node: n.clone(), services: self.services.get(node).cloned().unwrap_or_default() });
        (self.catalog_index(), entry)
    }

    pub fn node_services(&self, node: &str) -> Vec<NodeService> {
        self.services.get(node).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    pub fn node_checks(&self, node: &str) -> (u64, Vec<HealthCheck>) {
        (self.catalog_index(), self.checks.get(node).map(|m| m.values().cloned().collect()).unwrap_or_default())
    }

    pub fn check(&self, node: &str, check_id: &str) -> Option<&HealthCheck> {
        self.checks.get(node).and_then(|m| m.get(check_id))
    }

    pub fn service_checks(&self, name: &str) -> (u64, Vec<HealthCheck>) {
        let mut out = Vec::new();
        for (node, svc) in self.instances(name) {
            if let Some(m) = self.checks.get(&node.node) {
                out.extend(m.values().filter(|c| c.service_id == svc.id).cloned());
            }
        }
        (self.service_index(name), out)
    }

    /// `/v1/health/service/:name`: each instance with its node-level and service-level checks.
    pub fn health_service(&self, name: &str) -> (u64, Vec<ServiceEntry>) {
        let (index, refs) = self.health_service_refs(name);
        (index, refs.iter().map(ServiceEntryRef::to_owned_entry).collect())
    }

    /// The same, borrowing from the state (encode it while the read lock is held).
    pub fn health_service_refs(&self, name: &str) -> (u64, Vec<ServiceEntryRef<'_>>) {
        let entries = self
            .instances(name)
            .map(|(node, svc)| ServiceEntryRef {
                node,
                service: svc,
                checks: self
                    .checks
                    .get(&node.node)
                    .map(|m| m.values().filter(|c| c.service_id.is_empty() || c.service_id == svc.id).collect())
                    .unwrap_or_default(),
            })
            .collect();
        (self.service_index(name), entries)
    }

    /// `/v1/health/state/:state`; `any` lists every check.
    /// Every service's summary, by name. A check is counted once per service even when several of the
    /// service's instances share it (a node-level check of a node running two instances), as Consul counts.
    pub fn service_summaries(&self, datacenter: &str) -> Vec<ServiceSummary> {
        let (_, names) = self.catalog_services();
        names
            .into_keys()
            .map(|name| {
                let (_, instances) = self.health_service_refs(&name);
                let mut tags = BTreeSet::new();
                let mut nodes = BTreeSet::new();
                let mut sources = BTreeSet::new();
                let mut checks: BTreeMap<(&str, &str), HealthStatus> = BTreeMap::new();
                let mut kind = String::new();
                for e in &instances {
                    tags.extend(e.service.tags.iter().cloned());
                    nodes.insert(e.node.node.clone());
                    if let Some(src) = e.service.meta.as_ref().and_then(|m| m.get("external-source")) {
                        sources.insert(src.clone());
                    }
                    kind.clone_from(&e.service.kind);
                    for c in &e.checks {
                        checks.insert((c.node.as_str(), c.check_id.as_str()), c.status);
                    }
                }
                let count = |want: &[HealthStatus]| checks.values().filter(|s| want.contains(s)).count();
                ServiceSummary {
                    kind,
                    name,
                    datacenter: datacenter.to_string(),
                    tags: tags.into_iter().collect(),
                    nodes: nodes.into_iter().collect(),
                    external_sources: sources.into_iter().collect(),
                    instance_count: instances.len(),
                    checks_passing: count(&[HealthStatus::Passing]),
                    checks_warning: count(&[HealthStatus::Warning]),
                    // Maintenance is critical to every reader of health.
                    checks_critical: count(&[HealthStatus::Critical, HealthStatus::Maintenance]),
                }
            })
            .collect()
    }

    pub fn checks_in_state(&self, state: Option<HealthStatus>) -> (u64, Vec<HealthCheck>) {
        let list = self
            .checks
            .values()
            .flat_map(|m| m.values())
            .filter(|c| state.is_none_or(|s| c.status == s))
            .cloned()
            .collect();
        (self.indexes.checks, list)
    }
}
