//! Agent API types: local service and check registration, members, aggregated health.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{HealthCheck, HealthStatus, Meta, ServiceAddress, ServiceProxy, Weights};

/// A service as `/v1/agent/services` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    /// Left out for a typical service, as Consul leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub meta: Meta,
    pub port: u16,
    pub address: String,
    pub socket_path: String,
    pub tagged_addresses: Option<BTreeMap<String, ServiceAddress>>,
    pub weights: Weights,
    pub enable_tag_override: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ServiceProxy>,
    pub datacenter: String,
}

/// A check definition in `PUT /v1/agent/check/register` or inside a service registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentCheckRegistration {
    #[serde(rename = "ID")]
    pub id: Option<String>,
    #[serde(rename = "CheckID")]
    pub check_id: Option<String>,
    pub name: Option<String>,
    pub notes: Option<String>,
    #[serde(rename = "ServiceID")]
    pub service_id: Option<String>,
    pub status: Option<HealthStatus>,
    #[serde(rename = "TTL")]
    pub ttl: Option<String>,
    #[serde(rename = "HTTP")]
    pub http: Option<String>,
    #[serde(rename = "TCP")]
    pub tcp: Option<String>,
    #[serde(rename = "GRPC")]
    pub grpc: Option<String>,
    pub args: Option<Vec<String>>,
    /// HTTP method of an HTTP check (GET by default).
    pub method: Option<String>,
    /// gRPC over TLS; the sidecar speaks plaintext gRPC only and refuses this.
    #[serde(rename = "GRPCUseTLS")]
    pub grpc_use_tls: Option<bool>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub success_before_passing: Option<u32>,
    pub failures_before_critical: Option<u32>,
    pub deregister_critical_service_after: Option<String>,
}

impl AgentCheckRegistration {
    /// Consul accepts the check's ID as either `ID` or `CheckID`.
    pub fn effective_id(&self) -> Option<&str> {
        self.id.as_deref().or(self.check_id.as_deref()).filter(|s| !s.is_empty())
    }

    /// The ID a check registered on its own gets: its ID, else its name (`None`: neither is given).
    pub fn id_or_name(&self) -> Option<String> {
        self.effective_id().or(self.name.as_deref().filter(|n| !n.is_empty())).map(str::to_string)
    }
}

/// `PUT /v1/agent/service/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentServiceRegistration {
    #[serde(rename = "ID")]
    pub id: Option<String>,
    pub name: String,
    pub tags: Option<Vec<String>>,
    pub address: Option<String>,
    pub tagged_addresses: Option<BTreeMap<String, ServiceAddress>>,
    pub port: Option<u16>,
    pub meta: Option<Meta>,
    pub enable_tag_override: Option<bool>,
    pub weights: Option<Weights>,
    pub check: Option<AgentCheckRegistration>,
    pub checks: Option<Vec<AgentCheckRegistration>>,
    pub kind: Option<String>,
    pub proxy: Option<ServiceProxy>,
    pub connect: Option<AgentServiceConnect>,
}

/// `Connect` of a service registration: `SidecarService` asks the agent to register the service's
/// sidecar proxy too (`<id>-sidecar-proxy`), with defaults filled in as Consul fills them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentServiceConnect {
    pub native: bool,
    pub sidecar_service: Option<Box<AgentServiceRegistration>>,
}

/// One member of `/v1/agent/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentMember {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub tags: BTreeMap<String, String>,
    /// Serf's member status: 1 alive, 2 leaving, 3 left, 4 failed.
    pub status: u8,
    pub protocol_min: u8,
    pub protocol_max: u8,
    pub protocol_cur: u8,
    pub delegate_min: u8,
    pub delegate_max: u8,
    pub delegate_cur: u8,
}

impl AgentMember {
    /// A member with the Serf protocol versions Consul 1.x reports. Status: 1 alive, 3 left, 4 failed.
    pub fn new(name: String, addr: String, port: u16, tags: BTreeMap<String, String>, status: u8) -> Self {
        AgentMember {
            name,
            addr,
            port,
            tags,
            status,
            protocol_min: 1,
            protocol_max: 5,
            protocol_cur: 2,
            delegate_min: 2,
            delegate_max: 5,
            delegate_cur: 4,
        }
    }
}

/// One entry of `/v1/agent/health/service/name/:name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentServiceHealth {
    pub aggregated_status: HealthStatus,
    pub service: AgentService,
    pub checks: Vec<AgentHealthCheck>,
}

/// A check in an agent health answer, shaped as Consul's: its `Definition` (how the agent runs it)
/// filled, `Type` empty, and no `Interval`, `Timeout` or `ExposedPort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentHealthCheck {
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
    pub definition: serde_json::Map<String, serde_json::Value>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl AgentHealthCheck {
    pub fn new(c: &HealthCheck, definition: serde_json::Map<String, serde_json::Value>) -> Self {
        AgentHealthCheck {
            node: c.node.clone(),
            check_id: c.check_id.clone(),
            name: c.name.clone(),
            status: c.status,
            notes: c.notes.clone(),
            output: c.output.clone(),
            service_id: c.service_id.clone(),
            service_name: c.service_name.clone(),
            service_tags: c.service_tags.clone(),
            check_type: String::new(),
            definition,
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// Body of `PUT /v1/agent/check/update/:id`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CheckUpdate {
    pub status: Option<String>,
    pub output: Option<String>,
}

/// The worst of some statuses (passing when there are none), as Consul aggregates a service's checks.
pub fn worst_status(statuses: impl IntoIterator<Item = HealthStatus>) -> HealthStatus {
    statuses.into_iter().max_by_key(|s| s.severity()).unwrap_or(HealthStatus::Passing)
}

/// HTTP status of `/v1/agent/health/service/*`: 200 passing, 429 warning, 503 otherwise.
pub fn agent_health_http_status(s: HealthStatus) -> u16 {
    match s {
        HealthStatus::Passing => 200,
        HealthStatus::Warning => 429,
        _ => 503,
    }
}
