//! `KeyValue`: keys of the registry's KV store managed from Kubernetes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A key, or a prefix of keys, whose values come from this resource, a ConfigMap or a Secret. The
/// operator writes with CAS so it never overwrites a concurrent change blindly, reports drift, and
/// deletes the keys with the resource unless `retainOnDelete`.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "roster.dev",
    version = "v1alpha1",
    kind = "KeyValue",
    doc = "Keys of the registry KV store managed from Kubernetes.",
    namespaced,
    status = "KeyValueStatus",
    shortname = "rkv",
    category = "roster",
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".spec.key"}"#,
    printcolumn = r#"{"name":"Synced","type":"boolean","jsonPath":".status.synced"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.value), has(self.values), has(self.valueFrom)].filter(x, x).size() == 1").message("give exactly one of value, values or valueFrom"))]
pub struct KeyValueSpec {
    /// The key; with `values` or a ConfigMap/Secret source, the prefix the entries go under.
    #[schemars(length(max = 1024), regex(pattern = "^([^/]|$)"))]
    pub key: String,
    /// One value for `key` (at most 512 KiB, the registry's default `kv_max_value_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 524288))]
    pub value: Option<String>,
    /// Several keys under the `key` prefix: name -> value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 256, "additionalProperties" = {"type": "string", "maxLength": 524288}))]
    pub values: Option<BTreeMap<String, String>>,
    /// Values from a ConfigMap or a Secret: each data entry becomes a key under the prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFrom>,
    /// Keep the keys in the registry when this resource is deleted.
    #[serde(default)]
    pub retain_on_delete: bool,
    /// The RegistryCluster to write to; the only one in the namespace when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub cluster: Option<String>,
}

/// Where values come from.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMap) != has(self.secret)").message("give exactly one of configMap or secret"))]
pub struct ValueFrom {
    /// Name of a ConfigMap in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub config_map: Option<String>,
    /// Name of a Secret in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub secret: Option<String>,
}

/// Whether the registry holds what the spec says.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KeyValueStatus {
    /// True when every key holds the value the spec gives.
    #[serde(default)]
    pub synced: bool,
    /// Keys changed in the registry by someone else since the operator wrote them.
    #[serde(default)]
    pub drifted_keys: Vec<String>,
    /// ModifyIndex of the operator's last write of each key: a key still at that index is the
    /// operator's to update (CAS) or delete; any other index means someone else changed it.
    #[serde(default)]
    pub written_indexes: BTreeMap<String, u64>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Synced` and `Drifted`, with reasons and messages.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
