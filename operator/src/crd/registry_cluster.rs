//! `RegistryCluster`: a Roster server cluster the operator runs as a StatefulSet.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A Roster registry cluster: 1, 3 or 5 servers replicating one state machine with Raft.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "roster.dev",
    version = "v1alpha1",
    kind = "RegistryCluster",
    doc = "A Roster registry cluster: servers, storage and settings; the operator runs it as a StatefulSet.",
    namespaced,
    status = "RegistryClusterStatus",
    shortname = "rcl",
    category = "roster",
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyServers"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Leader","type":"string","jsonPath":".status.leader"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Federated","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Federated\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RegistryClusterSpec {
    /// Number of servers: 1 (no fault tolerance), 3 (survives one failure) or 5 (survives two).
    #[serde(default = "default_replicas")]
    #[schemars(extend("enum" = [1, 3, 5]))]
    pub replicas: i32,
    /// Server image; defaults to the operator's own version of the Roster image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory requests and limits of each server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The persistent volume each server keeps its Raft log and snapshots on.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Datacenter name the servers report (Consul's `datacenter`): a DNS label.
    #[serde(default = "default_datacenter")]
    #[schemars(length(min = 1, max = 63), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub datacenter: String,
    /// ACL enforcement.
    #[serde(default)]
    pub acl: AclSettings,
    /// Name of a Secret holding the pool's gossip encryption key under `key` (32 bytes, base64, as
    /// `roster keygen` prints). Servers seal their gossip with it; every sidecar of the pool needs it
    /// too (`ROSTER_GOSSIP_KEY`). Empty: plaintext gossip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip_key_secret: Option<String>,
    /// Kubernetes Services in this cluster's catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_sync: Option<CatalogSync>,
    /// TLS for the servers: the HTTPS API on 8501 and mutual TLS between servers, with a certificate
    /// the operator issues from a CA it keeps (or cert-manager issues) and renews without restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Joins other datacenters' servers in the WAN pool (Consul's WAN federation): requests for
    /// another datacenter are forwarded there, and a secondary replicates the primary's ACLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<FederationSpec>,
}

/// WAN federation of this cluster (its `datacenter`) with others.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FederationSpec {
    /// The datacenter owning ACL policies, roles and global tokens; default this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = "^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$"))]
    pub primary_datacenter: Option<String>,
    /// WAN addresses of other datacenters' servers: `host:port`, or a Service's name (`name` in
    /// this namespace, or `name.namespace`; port 8302), such as the other cluster's `<name>-wan`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub retry_join_wan: Vec<String>,
    /// The Secret key holding the token a secondary's leader replicates the primary's ACLs with
    /// (needs `acl.enabled`; the token needs `acl = "write"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_token_secret: Option<SecretKeyRef>,
    /// Type of the `<name>-wan` Service (UDP 8302) other datacenters join through: `ClusterIP`
    /// (default), `NodePort` or `LoadBalancer`. Servers advertise their pod IP in the pool, so pod
    /// IPs must be routable between the datacenters.
    #[serde(default)]
    pub wan_service_type: WanServiceType,
}

/// A key of a Secret in the cluster's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The WAN Service's type.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WanServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// The servers' TLS. The plain HTTP API on 8500 stays (probes and the operator use it).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Serve HTTPS on 8501 and dial other servers over TLS.
    #[serde(default)]
    pub enabled: bool,
    /// HTTPS clients and servers dialling the RPC port must present a certificate of the CA
    /// (Consul's `verify_incoming`). Turning TLS on in a running cluster: first with this false,
    /// then true, so servers not yet restarted can still reach the restarted ones.
    #[serde(default = "default_true")]
    pub verify_incoming: bool,
    /// How long a server certificate the operator issues is valid (a Go duration, at least 1h;
    /// default 2160h, 90 days). It is renewed after two thirds of that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = "^([0-9]+(ns|us|ms|s|m|h))+$"))]
    pub certificate_validity: Option<String>,
    /// Have cert-manager issue the server certificate (a `Certificate` the operator keeps) instead
    /// of the operator's own CA. The issuer must put `ca.crt` in the Secret (CA, Vault issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerSpec>,
}

fn default_true() -> bool {
    true
}

/// cert-manager as the servers' certificate issuer.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerSpec {
    pub issuer_ref: IssuerRef,
}

/// A cert-manager issuer (cert-manager's `issuerRef`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the Issuer (in the cluster's namespace) or ClusterIssuer.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (default) or `ClusterIssuer`, or an external issuer's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub kind: Option<String>,
    /// The issuer's API group; default `cert-manager.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub group: Option<String>,
}

/// Catalog sync from Kubernetes: Services annotated `roster.dev/sync: "true"` (anywhere) and every
/// Service of `namespaces` (unless annotated "false") are registered with their endpoints on the
/// catalog node `k8s-sync`, each instance's check following its endpoint's readiness.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CatalogSync {
    /// Sync Kubernetes Services into the catalog.
    #[serde(default)]
    pub to_registry: bool,
    /// Namespaces whose every Service is synced (besides annotated ones anywhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub namespaces: Vec<String>,
}

fn default_replicas() -> i32 {
    3
}

fn default_datacenter() -> String {
    "dc1".into()
}

/// Per-server persistent storage.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size, as a Kubernetes quantity (for example `1Gi`).
    #[serde(default = "default_size")]
    pub size: String,
    /// StorageClass of the volumes; the cluster's default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec { size: default_size(), storage_class_name: None }
    }
}

fn default_size() -> String {
    "1Gi".into()
}

/// ACL settings of the servers (Consul's `acl` block).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AclSettings {
    /// Enforce ACL tokens on every request.
    #[serde(default)]
    pub enabled: bool,
    /// What a token may do where no rule says: `allow` or `deny`.
    #[serde(default)]
    pub default_policy: DefaultPolicy,
    /// Lets pods log in with their ServiceAccount token (`/v1/acl/login`): the operator keeps a
    /// `kubernetes` auth method and its binding rules on the servers. Needs `enabled` and the
    /// chart's token reviewer (`cluster.acl.kubernetesAuth.enabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_auth: Option<KubernetesAuth>,
}

/// The `kubernetes` auth method the operator keeps for a cluster. A login gets the service
/// identity named after its ServiceAccount (never `default`) and, for a pod-bound token, the node
/// identity of its pod (a sidecar's node), in this cluster's datacenter.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesAuth {
    /// Name of the auth method (what sidecars set as `ROSTER_AUTH_METHOD`); default `kubernetes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = "^[A-Za-z0-9_-]+$"))]
    pub method_name: Option<String>,
    /// Where the servers send TokenReviews; default the in-cluster API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = "^https?://"))]
    pub host: Option<String>,
    /// Only ServiceAccounts of these namespaces may log in; empty: every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub namespaces: Vec<String>,
    /// How long a login's token lives, as a Go duration (`30m`, `24h`); empty: until logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = "^([0-9]+(ns|us|ms|s|m|h))+$"))]
    pub max_token_ttl: Option<String>,
}

/// ACL default policy.
#[derive(schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    #[default]
    Allow,
    Deny,
}

/// What the operator last saw of the cluster.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RegistryClusterStatus {
    /// `Pending`, `Running`, `Updating` (scaling down or rolling), `Degraded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Servers that are Raft voters and answer their health endpoint.
    #[serde(default)]
    pub ready_servers: i32,
    /// Node name of the current Raft leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Last Raft index the leader reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_raft_index: Option<u64>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Available`, `Progressing` and `Degraded` (and `TLSReady` with TLS on), with reasons and messages.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The servers' certificate, with TLS on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
    /// With federation: the datacenters the servers' WAN pool knows (this one first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
}

/// Where the servers' certificate and its CA are, and when it ends.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// The Secret (`kubernetes.io/tls`: tls.crt, tls.key, ca.crt) mounted into the servers.
    pub server_secret: String,
    /// The ConfigMap whose `ca.crt` clients and sidecars verify the servers with.
    pub ca_config_map: String,
    /// When the current server certificate ends (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When it is renewed (RFC 3339): two thirds into its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_after: Option<String>,
}
