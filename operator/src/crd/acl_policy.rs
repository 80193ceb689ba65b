//! `ACLPolicy`: an ACL policy in the registry and, when asked, a token bound to it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Consul-style ACL rules kept in the registry as a policy; with `token`, a token bound to the
/// policy is created and its secret stored in a Kubernetes Secret for pods to mount.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "roster.dev",
    version = "v1alpha1",
    kind = "ACLPolicy",
    root = "AclPolicy",
    doc = "An ACL policy in the registry and, optionally, a token for it kept in a Secret.",
    plural = "aclpolicies",
    namespaced,
    status = "AclPolicyStatus",
    shortname = "aclp",
    category = "roster",
    printcolumn = r#"{"name":"Policy","type":"string","jsonPath":".status.policyId"}"#,
    printcolumn = r#"{"name":"Token Secret","type":"string","jsonPath":".spec.token.secretName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AclPolicySpec {
    /// Rules in Consul's HCL or JSON rule language (`key_prefix "app/" { policy = "write" }`).
    pub rules: String,
    /// Shown with the policy in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Create a token bound to this policy and keep its secret in a Kubernetes Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenSpec>,
    /// The RegistryCluster to write to; the only one in the namespace when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// A token for the policy.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenSpec {
    /// Name of the Secret (same namespace) the token's SecretID is stored in, under `token`.
    #[schemars(length(min = 1, max = 253), regex(pattern = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub secret_name: String,
}

/// The policy and token as the registry holds them.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AclPolicyStatus {
    /// The policy's ID in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    /// AccessorID of the token, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_accessor_id: Option<String>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, with reasons and messages.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
