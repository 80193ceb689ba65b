//! ACL objects as Consul's `/v1/acl/*` endpoints read and write them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The built-in policy that grants everything.
pub const GLOBAL_MANAGEMENT_POLICY_ID: &str = "00000000-0000-0000-0000-000000000001";
pub const GLOBAL_MANAGEMENT_POLICY_NAME: &str = "global-management";
/// The token used by requests that carry none.
pub const ANONYMOUS_TOKEN_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";
pub const ANONYMOUS_TOKEN_SECRET: &str = "anonymous";

/// A reference to a policy or role, by ID or by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclLink {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
}

/// A service identity: the token or role may act as that service (Consul's synthesized policy:
/// write on it and its sidecar proxy, read on all services and nodes), in the listed datacenters
/// (all when none are listed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclServiceIdentity {
    pub service_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
}

/// A node identity: the token or role may act as that node (write on it, read on all services),
/// in one datacenter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclNodeIdentity {
    pub node_name: String,
    pub datacenter: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclPolicy {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub description: String,
    pub rules: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclRole {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub description: String,
    pub policies: Vec<AclLink>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_identities: Vec<AclServiceIdentity>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_identities: Vec<AclNodeIdentity>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A token. Its secret is redacted from `Debug` so it can never end up in a log line.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclToken {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    #[serde(rename = "SecretID")]
    pub secret_id: String,
    pub description: String,
    pub policies: Vec<AclLink>,
    pub roles: Vec<AclLink>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_identities: Vec<AclServiceIdentity>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_identities: Vec<AclNodeIdentity>,
    pub local: bool,
    /// RFC 3339; absent for tokens that do not expire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<String>,
    /// Only on create: a Go duration after which the token expires.
    #[serde(rename = "ExpirationTTL", skip_serializing_if = "Option::is_none")]
    pub expiration_ttl: Option<String>,
    pub create_time: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl fmt::Debug for AclToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclToken")
            .field("accessor_id", &self.accessor_id)
            .field("secret_id", &"<redacted>")
            .field("description", &self.description)
            .field("policies", &self.policies)
            .field("roles", &self.roles)
            .finish()
    }
}
