//! Prepared queries (`/v1/query`): the definition as Consul's API carries it, and what executing
//! one answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ServiceEntry;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PreparedQuery {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub session: String,
    pub token: String,
    pub template: QueryTemplate,
    pub service: ServiceQuery,
    #[serde(rename = "DNS")]
    pub dns: QueryDns,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct QueryTemplate {
    /// "" (not a template) or "name_prefix_match".
    #[serde(rename = "Type")]
    pub kind: String,
    pub regexp: String,
    pub remove_empty_tags: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceQuery {
    pub service: String,
    pub failover: QueryFailover,
    #[serde(rename = "IgnoreCheckIDs")]
    pub ignore_check_ids: Option<Vec<String>>,
    pub only_passing: bool,
    pub near: String,
    /// Tags an instance must have; `!tag`: must not have.
    pub tags: Option<Vec<String>>,
    pub node_meta: Option<BTreeMap<String, String>>,
    pub service_meta: Option<BTreeMap<String, String>>,
    pub connect: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct QueryFailover {
    /// How many of the nearest other datacenters to try, by round trip.
    pub nearest_n: i64,
    /// Datacenters to try after those, in order.
    pub datacenters: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct QueryDns {
    #[serde(rename = "TTL")]
    pub ttl: String,
}

/// `GET /v1/query/<id or name>/execute`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueryExecuteResponse {
    pub service: String,
    pub nodes: Vec<ServiceEntry>,
    #[serde(rename = "DNS")]
    pub dns: QueryDns,
    /// Where the answer came from (another datacenter after a failover).
    pub datacenter: String,
    /// How many other datacenters were asked.
    pub failovers: usize,
}

/// `GET /v1/query/<id or name>/explain`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueryExplainResponse {
    pub query: PreparedQuery,
}
