//! Catalog and health types: nodes, service instances, checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::HealthStatus;

pub type Meta = BTreeMap<String, String>;

/// A node as `/v1/catalog/nodes` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "ID", default)]
    pub id: String,
    pub node: String,
    pub address: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default)]
    pub tagged_addresses: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub meta: Option<Meta>,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceAddress {
    pub address: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    pub passing: i32,
    pub warning: i32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights { passing: 1, warning: 1 }
    }
}

/// Empty mesh settings, written so clients that read them find the shape they expect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceProxy {
    /// A `connect-proxy`'s service, its instance, and where the proxy reaches it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination_service_name: String,
    #[serde(rename = "DestinationServiceID", default, skip_serializing_if = "String::is_empty")]
    pub destination_service_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_service_address: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub local_service_port: u16,
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub mesh_gateway: BTreeMap<String, String>,
    #[serde(default)]
    pub expose: BTreeMap<String, String>,
}

/// Node meta naming the Kubernetes namespace of the pod a catalog node stands for (the node's name
/// is the pod's). Sidecars set it from `POD_NAMESPACE`; the operator removes such a node once its
/// pod is gone.
pub const POD_NAMESPACE_META: &str = "k8s-namespace";

fn is_zero(p: &u16) -> bool {
    *p == 0
}

/// Consul omits a service's `TaggedAddresses` when it has none (`omitempty`).
fn no_addresses(a: &Option<BTreeMap<String, ServiceAddress>>) -> bool {
    a.as_ref().is_none_or(BTreeMap::is_empty)
}

/// A service instance on a node (`Service` in health answers, `Services` of `/v1/catalog/node/:node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NodeService {
    /// Empty for a typical service; `connect-proxy`, `mesh-gateway`... otherwise (left out when empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub address: String,
    /// Left out when there are none, as Consul leaves it out.
    #[serde(default, skip_serializing_if = "no_addresses")]
    pub tagged_addresses: Option<BTreeMap<String, ServiceAddress>>,
    pub meta: Option<Meta>,
    pub port: u16,
    pub weights: Weights,
    pub enable_tag_override: bool,
    #[serde(default)]
    pub proxy: ServiceProxy,
    #[serde(default)]
    pub connect: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A health check as `/v1/health/*` and `/v1/agent/checks` return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: HealthStatus,
    pub notes: String,
    pub output: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    #[serde(rename = "Type")]
    pub check_type: String,
    pub interval: String,
    pub timeout: String,
    pub exposed_port: u16,
    /// Empty in catalog and `/v1/agent/checks` answers, as in Consul's (see `AgentHealthCheck`).
    pub definition: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// One entry of `/v1/catalog/service/:name`: node and service fields flattened, as Consul does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogService {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: Option<BTreeMap<String, String>>,
    pub node_meta: Option<Meta>,
    pub service_kind: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    pub service_address: String,
    #[serde(default, skip_serializing_if = "no_addresses")]
    pub service_tagged_addresses: Option<BTreeMap<String, ServiceAddress>>,
    pub service_weights: Weights,
    pub service_meta: Option<Meta>,
    pub service_port: u16,
    pub service_socket_path: String,
    pub service_enable_tag_override: bool,
    pub service_proxy: ServiceProxy,
    pub service_connect: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl CatalogService {
    pub fn new(node: &Node, svc: &NodeService) -> Self {
        CatalogService {
            id: node.id.clone(),
            node: node.node.clone(),
            address: node.address.clone(),
            datacenter: node.datacenter.clone(),
            tagged_addresses: node.tagged_addresses.clone(),
            node_meta: node.meta.clone(),
            service_kind: svc.kind.clone(),
            service_id: svc.id.clone(),
            service_name: svc.service.clone(),
            service_tags: svc.tags.clone(),
            service_address: svc.address.clone(),
            service_tagged_addresses: svc.tagged_addresses.clone(),
            service_weights: svc.weights,
            service_meta: svc.meta.clone(),
            service_port: svc.port,
            service_socket_path: String::new(),
            service_enable_tag_override: svc.enable_tag_override,
            service_proxy: svc.proxy.clone(),
            service_connect: svc.connect.clone(),
            create_index: svc.create_index,
            modify_index: svc.modify_index,
        }
    }
}

/// One entry of `/v1/health/service/:name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    pub node: Node,
    pub service: NodeService,
    pub checks: Vec<HealthCheck>,
}

/// `ServiceEntry` borrowing from the state, so a large answer is encoded without copying it first.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntryRef<'a> {
    pub node: &'a Node,
    pub service: &'a NodeService,
    pub checks: Vec<&'a HealthCheck>,
}

impl ServiceEntryRef<'_> {
    pub fn to_owned_entry(&self) -> ServiceEntry {
        ServiceEntry {
            node: self.node.clone(),
            service: self.service.clone(),
            checks: self.checks.iter().map(|c| (*c).clone()).collect(),
        }
    }
}

/// `/v1/catalog/node/:node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogNode {
    pub node: Node,
    pub services: BTreeMap<String, NodeService>,
}

/// The service part of `PUT /v1/catalog/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRegistration {
    #[serde(rename = "ID")]
    pub id: Option<String>,
    pub service: String,
    pub tags: Option<Vec<String>>,
    pub address: Option<String>,
    pub tagged_addresses: Option<BTreeMap<String, ServiceAddress>>,
    pub meta: Option<Meta>,
    pub port: Option<u16>,
    pub weights: Option<Weights>,
    pub enable_tag_override: Option<bool>,
    pub kind: Option<String>,
    pub proxy: Option<ServiceProxy>,
}

/// A check in a catalog registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct CheckRegistration {
    pub node: Option<String>,
    #[serde(rename = "CheckID")]
    pub check_id: Option<String>,
    pub name: Option<String>,
    pub status: Option<HealthStatus>,
    pub notes: Option<String>,
    pub output: Option<String>,
    #[serde(rename = "ServiceID")]
    pub service_id: Option<String>,
    #[serde(rename = "Type")]
    pub check_type: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
}

/// `PUT /v1/catalog/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct RegisterRequest {
    #[serde(rename = "ID")]
    pub id: Option<String>,
    pub node: Option<String>,
    pub address: Option<String>,
    pub datacenter: Option<String>,
    pub tagged_addresses: Option<BTreeMap<String, String>>,
    pub node_meta: Option<Meta>,
    pub service: Option<ServiceRegistration>,
    pub check: Option<CheckRegistration>,
    pub checks: Option<Vec<CheckRegistration>>,
    /// Keep the node's existing fields when only a service or check changes.
    pub skip_node_update: bool,
}

/// `PUT /v1/catalog/deregister`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeregisterRequest {
    pub node: Option<String>,
    pub datacenter: Option<String>,
    #[serde(rename = "ServiceID")]
    pub service_id: Option<String>,
    #[serde(rename = "CheckID")]
    pub check_id: Option<String>,
}

/// One line of `/v1/internal/ui/services`: a service with its instance and check counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSummary {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    pub name: String,
    pub datacenter: String,
    pub tags: Vec<String>,
    pub nodes: Vec<String>,
    pub external_sources: Vec<String>,
    pub instance_count: usize,
    pub checks_passing: usize,
    pub checks_warning: usize,
    pub checks_critical: usize,
}
