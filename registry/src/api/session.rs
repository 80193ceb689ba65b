//! Sessions: the body of `PUT /v1/session/create` and the entries session endpoints return.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    #[default]
    Release,
    Delete,
}

/// `PUT /v1/session/create` body. Every field is optional, as in Consul.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SessionRequest {
    pub name: Option<String>,
    pub node: Option<String>,
    /// Go duration ("15s") or nanoseconds, as Consul accepts both.
    pub lock_delay: Option<serde_json::Value>,
    pub behavior: Option<SessionBehavior>,
    #[serde(rename = "TTL")]
    pub ttl: Option<String>,
    pub node_checks: Option<Vec<String>>,
    /// Consul 1.7+ name of the same list; merged with `NodeChecks`.
    pub checks: Option<Vec<String>>,
    pub service_checks: Option<Vec<ServiceCheckRef>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceCheckRef {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub namespace: String,
}

/// A session as the session endpoints return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionEntry {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub node: String,
    /// Nanoseconds, as Consul writes it.
    pub lock_delay: u64,
    pub behavior: SessionBehavior,
    #[serde(rename = "TTL")]
    pub ttl: String,
    pub node_checks: Option<Vec<String>>,
    pub service_checks: Option<Vec<ServiceCheckRef>>,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCreated {
    #[serde(rename = "ID")]
    pub id: String,
}
