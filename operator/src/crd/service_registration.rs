//! `ServiceRegistration`: an external (non-pod) service registered in the catalog.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A service outside the pods (a database, a SaaS endpoint) registered in the registry, with checks
/// given as statuses. Deleting it deregisters the service (finalizer).
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "roster.dev",
    version = "v1alpha1",
    kind = "ServiceRegistration",
    doc = "A service outside the pods registered in the registry; deleting it deregisters the service.",
    namespaced,
    status = "ServiceRegistrationStatus",
    shortname = "svcreg",
    category = "roster",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.name"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Port","type":"integer","jsonPath":".spec.port"}"#,
    printcolumn = r#"{"name":"Health","type":"string","jsonPath":".status.health"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRegistrationSpec {
    /// Service name in the catalog.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Instance ID; defaults to the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub id: Option<String>,
    /// Catalog node the service is registered on; defaults to `external-<namespace>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub node: Option<String>,
    /// Address clients connect to (IP or DNS name).
    #[schemars(length(min = 1, max = 253))]
    pub address: String,
    /// Port clients connect to.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Tags, as Consul's service tags.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(max = 255)))]
    pub tags: Vec<String>,
    /// Free-form key/value metadata (Consul allows 64 pairs).
    #[serde(default)]
    #[schemars(extend("maxProperties" = 64))]
    pub meta: BTreeMap<String, String>,
    /// Health checks of the service.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub checks: Vec<CheckSpec>,
    /// The RegistryCluster to register in; the only one in the namespace when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// A check of an external service, with the status the registry reports for it. Nothing probes
/// external services yet: the status is set here (or by whoever updates the check through the API).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckSpec {
    /// Check name; also its ID on the service.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Status to report: `passing`, `warning` or `critical`.
    #[serde(default = "default_status")]
    #[schemars(extend("enum" = ["passing", "warning", "critical"]))]
    pub status: String,
    /// Shown with the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub notes: Option<String>,
}

fn default_status() -> String {
    "passing".into()
}

/// Whether the service is in the catalog, and how healthy it is there.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRegistrationStatus {
    /// True once the registry holds the service as specified.
    #[serde(default)]
    pub registered: bool,
    /// Aggregated health of its checks in the registry: `passing`, `warning` or `critical`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Registered` and `Healthy`, with reasons and messages.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
