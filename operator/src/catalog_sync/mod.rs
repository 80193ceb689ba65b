//! Catalog sync, Kubernetes to registry: Services (annotated `roster.dev/sync: "true"`, or every
//! Service of the namespaces a RegistryCluster names) appear in the catalog with their endpoints
//! from EndpointSlices as instances whose check follows the endpoint's readiness. Everything sync
//! writes lives on one catalog node (`k8s-sync`) and carries `external-source: kubernetes`, so
//! nothing else is ever touched. The state the watches derive is a pure index (`SyncIndex`); what
//! the catalog should hold (`desired`) and the changes to get there (`plan`) are pure functions.

pub mod controller;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use registry::api::{
    CatalogNode, CheckRegistration, DeregisterRequest, HealthCheck, HealthStatus, RegisterRequest, ServiceRegistration,
};

/// The catalog node every synced instance is registered on.
pub const SYNC_NODE: &str = "k8s-sync";
/// On a Service: "true" syncs it wherever it is, "false" keeps it out of a synced namespace.
pub const SYNC_ANNOTATION: &str = "roster.dev/sync";
/// Optional on a Service: the catalog name (default: the Service's name).
pub const SERVICE_NAME: &str = "roster.dev/service-name";
/// Optional on a Service: which of its ports (name or number; default: its first).
pub const SERVICE_PORT: &str = "roster.dev/service-port";
/// Optional on a Service: extra tags, comma-separated (every instance is tagged `k8s`).
pub const SERVICE_TAGS: &str = "roster.dev/service-tags";
pub const EXTERNAL_SOURCE: &str = "external-source";
pub const KUBERNETES: &str = "kubernetes";
const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// What sync needs of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceInfo {
    annotations: BTreeMap<String, String>,
    /// (name, port, targetPort as a name or number) of each port.
    ports: Vec<(Option<String>, i32)>,
}

/// What sync needs of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SliceInfo {
    service: String,
    ports: Vec<(Option<String>, i32)>,
    /// (address, ready) of endpoints that are not terminating.
    endpoints: Vec<(String, bool)>,
}

/// Services and EndpointSlices as the watches last saw them, by (namespace, name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncIndex {
    services: BTreeMap<(String, String), ServiceInfo>,
    slices: BTreeMap<(String, String), SliceInfo>,
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<(String, String)> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

impl SyncIndex {
    pub fn apply_service(&mut self, s: &Service) {
        let Some(k) = key(&s.metadata) else { return };
        let ports = s.spec.iter().flat_map(|sp| sp.ports.iter().flatten()).map(|p| (p.name.clone(), p.port)).collect();
        self.services.insert(k, ServiceInfo { annotations: s.metadata.annotations.clone().unwrap_or_default(), ports });
    }

    pub fn delete_service(&mut self, s: &Service) {
        if let Some(k) = key(&s.metadata) {
            self.services.remove(&k);
        }
    }

    pub fn apply_slice(&mut self, e: &EndpointSlice) {
        let Some(k) = key(&e.metadata) else { return };
        let Some(service) = e.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_LABEL)).cloned() else { return };
        let ports = e.ports.iter().flatten().filter_map(|p| Some((p.name.clone(), p.port?))).collect();
        let endpoints = e
            .endpoints
            .iter()
            .filter_map(|ep| {
                let c = ep.conditions.clone().unwrap_or_default();
                // A terminating endpoint is on its way out: its instance goes now.
                if c.terminating == Some(true) {
                    return None;
                }
                // Readiness unknown counts as ready (the API's own reading).
                Some((ep.addresses.first()?.clone(), c.ready.unwrap_or(true)))
            })
            .collect();
        self.slices.insert(k, SliceInfo { service, ports, endpoints });
    }

    pub fn delete_slice(&mut self, e: &EndpointSlice) {
        if let Some(k) = key(&e.metadata) {
            self.slices.remove(&k);
        }
    }

    pub fn reset_services(&mut self, list: &[Service]) {
        self.services.clear();
        list.iter().for_each(|s| self.apply_service(s));
    }

    pub fn reset_slices(&mut self, list: &[EndpointSlice]) {
        self.slices.clear();
        list.iter().for_each(|e| self.apply_slice(e));
    }
}

/// The instance IDs sync gives: one per Service endpoint, stable across restarts.
fn instance_id(namespace: &str, service: &str, address: &str, port: i32) -> String {
    format!("k8s-{namespace}-{service}-{}-{port}", address.replace([':', '.'], "-"))
}

/// Whether a Service is synced: its annotation decides, else whether its namespace is synced.
fn synced(namespace: &str, info: &ServiceInfo, namespaces: &[String]) -> bool {
    match info.annotations.get(SYNC_ANNOTATION).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("true") => true,
        Some("false") => false,
        _ => namespaces.iter().any(|n| n == namespace),
    }
}

/// Every registration the catalog should hold for the synced Services, by instance ID.
pub fn desired(index: &SyncIndex, namespaces: &[String]) -> BTreeMap<String, RegisterRequest> {
    let mut out = BTreeMap::new();
    for ((ns, name), info) in &index.services {
        if !synced(ns, info, namespaces) {
            continue;
        }
        let catalog_name = info.annotations.get(SERVICE_NAME).cloned().unwrap_or_else(|| name.clone());
        // The Service port asked for (by name or number), else its first; its endpoint port is the
        // slice port of the same name.
        let wanted = info.annotations.get(SERVICE_PORT);
        let service_port = match wanted {
            Some(w) => info.ports.iter().find(|(n, p)| n.as_deref() == Some(w.as_str()) || p.to_string() == *w),
            None => info.ports.first(),
        };
        let port_name = service_port.and_then(|(n, _)| n.clone());
        let mut tags = vec!["k8s".to_string()];
        if let Some(extra) = info.annotations.get(SERVICE_TAGS) {
            tags.extend(extra.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string));
        }
        let meta = BTreeMap::from([
            (EXTERNAL_SOURCE.to_string(), KUBERNETES.to_string()),
            ("k8s-namespace".to_string(), ns.clone()),
            ("k8s-service-name".to_string(), name.clone()),
        ]);
        for slice in index.slices.iter().filter(|((sns, _), s)| sns == ns && &s.service == name).map(|(_, s)| s) {
            let port = slice
                .ports
                .iter()
                .find(|(n, _)| port_name.is_some() && *n == port_name)
                .or(slice.ports.first())
                .map_or(0, |(_, p)| *p);
            for (address, ready) in &slice.endpoints {
                let id = instance_id(ns, name, address, port);
                let (status, output) = if *ready {
                    (HealthStatus::Passing, "endpoint ready")
                } else {
                    (HealthStatus::Critical, "endpoint not ready")
                };
                let request = RegisterRequest {
                    node: Some(SYNC_NODE.into()),
                    address: Some("127.0.0.1".into()),
                    node_meta: Some(BTreeMap::from([(EXTERNAL_SOURCE.to_string(), KUBERNETES.to_string())])),
                    service: Some(ServiceRegistration {
                        id: Some(id.clone()),
                        service: catalog_name.clone(),
                        tags: Some(tags.clone()),
                        address: Some(address.clone()),
                        meta: Some(meta.clone()),
                        port: u16::try_from(port).ok(),
                        ..Default::default()
                    }),
                    check: Some(CheckRegistration {
                        node: Some(SYNC_NODE.into()),
                        check_id: Some(format!("{id}:k8s-readiness")),
                        name: Some("Kubernetes readiness".into()),
                        status: Some(status),
                        output: Some(output.into()),
                        service_id: Some(id.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                out.insert(id, request);
            }
        }
    }
    out
}

/// What to write so the catalog's `k8s-sync` node holds `desired`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SyncPlan {
    pub register: Vec<RegisterRequest>,
    pub deregister: Vec<DeregisterRequest>,
}

/// Registers what is missing or differs (address, port, tags, meta, check status) and deregisters
/// synced instances no longer wanted; instances without the `external-source: kubernetes` mark are
/// never touched.
pub fn plan(
    desired: &BTreeMap<String, RegisterRequest>,
    node: Option<&CatalogNode>,
    checks: &[HealthCheck],
) -> SyncPlan {
    let services = node.map(|n| &n.services);
    let status: BTreeMap<&str, HealthStatus> = checks.iter().map(|c| (c.check_id.as_str(), c.status)).collect();
    let mut out = SyncPlan::default();
    for (id, want) in desired {
        let Some(svc) = want.service.as_ref() else { continue };
        let have = services.and_then(|s| s.get(id));
        let same = have.is_some_and(|h| {
            Some(&h.address) == svc.address.as_ref()
                && Some(h.port) == svc.port
                && Some(&h.tags) == svc.tags.as_ref()
                && h.meta.as_ref() == svc.meta.as_ref()
                && h.service == svc.service
        });
        let check = want.check.as_ref();
        let check_same =
            check.is_some_and(|c| c.check_id.as_deref().and_then(|id| status.get(id)).copied() == c.status);
        if !(same && check_same) {
            out.register.push(want.clone());
        }
    }
    let wanted: BTreeSet<&str> = desired.keys().map(String::as_str).collect();
    for (id, svc) in services.into_iter().flatten() {
        let ours = svc.meta.as_ref().and_then(|m| m.get(EXTERNAL_SOURCE)).map(String::as_str) == Some(KUBERNETES);
        if ours && !wanted.contains(id.as_str()) {
            out.deregister.push(DeregisterRequest {
                node: Some(SYNC_NODE.into()),
                service_id: Some(id.clone()),
                ..Default::default()
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
