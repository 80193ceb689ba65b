//! The objects a valid `RegistryCluster` should have: pure, so every choice here is unit-tested.
//!
//! Servers find each other through the headless Service's per-pod DNS names (stable across pod IP
//! changes), published before the pods are ready so a new cluster can bootstrap. The client Service
//! selects ready servers only (readiness is the server's own `/readyz`: a Raft voter in touch with a
//! leader). Nothing in the pod template depends on the replica count (that lives in the ConfigMap),
//! so scaling never restarts the servers that stay. The PodDisruptionBudget allows one voluntary disruption at a time
//! for 3 or 5 servers (never a lost quorum) and none for a single server.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, ConfigMapKeySelector, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SecretKeySelector, SecretVolumeSource, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;

use super::tls::{self, HTTPS_PORT};
use super::validate::ValidCluster;

pub const HTTP_PORT: i32 = 8500;
pub const RPC_PORT: i32 = 8300;
pub const GOSSIP_PORT: i32 = 8301;
/// Consul's DNS port (UDP and TCP), on the client Service for a CoreDNS stub domain.
pub const DNS_PORT: i32 = 8600;
pub const DATA_DIR: &str = "/data";
const TLS_VOLUME: &str = "tls";

/// Everything the operator applies for one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Settings that may change without restarting servers (`bootstrap-expect`).
    pub config_map: ConfigMap,
    pub headless_service: Service,
    pub client_service: Service,
    pub stateful_set: StatefulSet,
    pub pdb: PodDisruptionBudget,
    /// cert-manager's Certificates for the server and the client Secrets, when cert-manager issues
    /// them; empty otherwise.
    pub certificates: Vec<DynamicObject>,
    /// The Service other datacenters join the WAN pool through, with federation.
    pub wan_service: Option<Service>,
}

pub fn headless_name(c: &ValidCluster) -> String {
    format!("{}-server", c.name)
}

/// DNS name of server `i` through the headless Service.
pub fn pod_dns(c: &ValidCluster, i: i32) -> String {
    format!("{}-{i}.{}.{}.svc", c.name, headless_name(c), c.namespace)
}

pub fn config_map_name(c: &ValidCluster) -> String {
    format!("{}-config", c.name)
}

pub fn selector_labels(c: &ValidCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "roster".to_string()),
        ("app.kubernetes.io/instance".to_string(), c.name.clone()),
        ("app.kubernetes.io/component".to_string(), "server".to_string()),
    ])
}

fn labels(c: &ValidCluster) -> BTreeMap<String, String> {
    let mut l = selector_labels(c);
    l.insert("app.kubernetes.io/managed-by".into(), "roster-operator".into());
    l
}

pub(crate) fn meta(c: &ValidCluster, name: String, owner: &Option<OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(c.namespace.clone()),
        labels: Some(labels(c)),
        owner_references: owner.clone().map(|o| vec![o]),
        ..Default::default()
    }
}

fn port(name: &str, port: i32, protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The server's configuration, as `ROSTER_*` environment (see `roster server --help`).
pub fn server_env(c: &ValidCluster) -> Vec<EnvVar> {
    let headless = headless_name(c);
    vec![
        env_field("ROSTER_NODE_NAME", "metadata.name"),
        env_field("POD_IP", "status.podIP"),
        env("ROSTER_DATACENTER", &c.datacenter),
        env("ROSTER_DATA_DIR", DATA_DIR),
        env("ROSTER_HTTP_ADDR", format!("0.0.0.0:{HTTP_PORT}")),
        env("ROSTER_RPC_ADDR", format!("0.0.0.0:{RPC_PORT}")),
        // Stable names, not pod IPs: a server whose IP changes is still found.
        env("ROSTER_ADVERTISE_RPC", format!("$(ROSTER_NODE_NAME).{headless}.{}.svc:{RPC_PORT}", c.namespace)),
        env("ROSTER_ADVERTISE_HTTP", format!("$(ROSTER_NODE_NAME).{headless}.{}.svc:{HTTP_PORT}", c.namespace)),
        // Only read while no server has data; from the ConfigMap so scaling changes no template.
        EnvVar {
            name: "ROSTER_BOOTSTRAP_EXPECT".into(),
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: config_map_name(c),
                    key: "bootstrap-expect".into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        // The headless Service's name resolves to every server (ready or not), however many there are.
        env("ROSTER_RETRY_JOIN", format!("{headless}.{}.svc:{RPC_PORT}", c.namespace)),
        env("ROSTER_GOSSIP_ADDR", format!("0.0.0.0:{GOSSIP_PORT}")),
        env("ROSTER_GOSSIP_ADVERTISE", format!("$(POD_IP):{GOSSIP_PORT}")),
        env("ROSTER_GOSSIP_SEEDS", format!("{headless}.{}.svc:{GOSSIP_PORT}", c.namespace)),
        env("ROSTER_ACL_ENABLED", c.acl_enabled.to_string()),
        env("ROSTER_ACL_DEFAULT_POLICY", if c.acl_default_deny { "deny" } else { "allow" }),
        env("ROSTER_LOG_FORMAT", "json"),
        env("ROSTER_DNS_ADDR", format!("0.0.0.0:{DNS_PORT}")),
    ]
    .into_iter()
    .chain(c.gossip_key_secret.as_ref().map(|secret| EnvVar {
        // The pool's gossip key, from the Secret (never in the pod spec itself).
        name: "ROSTER_GOSSIP_KEY".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.clone(), key: "key".into(), optional: Some(false) }),
            ..Default::default()
        }),
        ..Default::default()
    }))
    .chain(c.tls.as_ref().map(|t| tls_env(c, t)).into_iter().flatten())
    .chain(c.federation.as_ref().map(super::federation::server_env).into_iter().flatten())
    .collect()
}

/// HTTPS beside plain HTTP, and mutual TLS between servers, from the mounted server Secret. Paths
/// only: the certificate's bytes never reach the pod template, so renewing it restarts nothing.
fn tls_env(c: &ValidCluster, t: &tls::Settings) -> Vec<EnvVar> {
    let file = |key: &str| format!("{}/{key}", tls::MOUNT_PATH);
    vec![
        env("ROSTER_HTTPS_ADDR", format!("0.0.0.0:{HTTPS_PORT}")),
        // Servers forward to each other's HTTPS API: by the name the certificate carries.
        env(
            "ROSTER_ADVERTISE_HTTPS",
            format!("$(ROSTER_NODE_NAME).{}.{}.svc:{HTTPS_PORT}", headless_name(c), c.namespace),
        ),
        env("ROSTER_TLS_CA_FILE", file(tls::CA_CRT)),
        env("ROSTER_TLS_CERT_FILE", file(tls::TLS_CRT)),
        env("ROSTER_TLS_KEY_FILE", file(tls::TLS_KEY)),
        env("ROSTER_TLS_VERIFY_INCOMING", t.verify_incoming.to_string()),
        env("ROSTER_TLS_VERIFY_OUTGOING", "true"),
        env("ROSTER_TLS_VERIFY_SERVER_HOSTNAME", "true"),
    ]
}

pub fn build(c: &ValidCluster, owner: Option<OwnerReference>) -> Desired {
    let headless = headless_name(c);
    let selector = selector_labels(c);
    let https = c.tls.as_ref().map(|_| port("https", HTTPS_PORT, "TCP"));
    let config_map = ConfigMap {
        metadata: meta(c, config_map_name(c), &owner),
        data: Some(BTreeMap::from([("bootstrap-expect".to_string(), c.replicas.to_string())])),
        ..Default::default()
    };
    let headless_service = Service {
        metadata: meta(c, headless.clone(), &owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Servers must resolve each other before any is ready, or a new cluster never bootstraps.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector.clone()),
            ports: Some(
                [port("http", HTTP_PORT, "TCP"), port("rpc", RPC_PORT, "TCP"), port("gossip", GOSSIP_PORT, "UDP")]
                    .into_iter()
                    .chain(https.clone())
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let client_service = Service {
        metadata: meta(c, c.name.clone(), &owner),
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(
                [port("http", HTTP_PORT, "TCP"), port("dns", DNS_PORT, "UDP"), port("dns-tcp", DNS_PORT, "TCP")]
                    .into_iter()
                    .chain(https)
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let container = Container {
        name: "roster".into(),
        image: Some(c.image.clone()),
        args: Some(vec!["server".into()]),
        env: Some(server_env(c)),
        ports: Some(
            [
                ContainerPort { name: Some("http".into()), container_port: HTTP_PORT, ..Default::default() },
                ContainerPort { name: Some("rpc".into()), container_port: RPC_PORT, ..Default::default() },
                ContainerPort {
                    name: Some("gossip".into()),
                    container_port: GOSSIP_PORT,
                    protocol: Some("UDP".into()),
                    ..Default::default()
                },
                ContainerPort {
                    name: Some("dns".into()),
                    container_port: DNS_PORT,
                    protocol: Some("UDP".into()),
                    ..Default::default()
                },
                ContainerPort { name: Some("dns-tcp".into()), container_port: DNS_PORT, ..Default::default() },
            ]
            .into_iter()
            .chain(c.tls.as_ref().map(|_| ContainerPort {
                name: Some("https".into()),
                container_port: HTTPS_PORT,
                ..Default::default()
            }))
            .chain(c.federation.as_ref().map(|_| ContainerPort {
                name: Some("wan".into()),
                container_port: super::federation::WAN_PORT,
                protocol: Some("UDP".into()),
                ..Default::default()
            }))
            .collect(),
        ),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(HTTP_PORT),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        resources: c.resources.clone(),
        volume_mounts: Some(
            [VolumeMount { name: "data".into(), mount_path: DATA_DIR.into(), ..Default::default() }]
                .into_iter()
                .chain(c.tls.as_ref().map(|_| VolumeMount {
                    name: TLS_VOLUME.into(),
                    mount_path: tls::MOUNT_PATH.into(),
                    read_only: Some(true),
                    ..Default::default()
                }))
                .collect(),
        ),
        ..Default::default()
    };
    let pod_labels = labels(c);
    let stateful_set = StatefulSet {
        metadata: meta(c, c.name.clone(), &owner),
        spec: Some(StatefulSetSpec {
            replicas: Some(c.replicas),
            service_name: Some(headless),
            // All servers start together so `bootstrap_expect` can be met.
            pod_management_policy: Some("Parallel".into()),
            // The operator rolls servers itself: one at a time, leader last, each caught up first.
            update_strategy: Some(StatefulSetUpdateStrategy { type_: Some("OnDelete".into()), ..Default::default() }),
            // A server scaled away was removed from Raft first; its data must not come back with a
            // later scale-up (a stale member would not rejoin). Deleting the cluster keeps the data.
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_scaled: Some("Delete".into()),
                when_deleted: Some("Retain".into()),
            }),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // The whole Secret as a volume (no subPath): the kubelet swaps in renewed files,
                    // which the servers re-read. Group-readable for the nonroot user (fsGroup).
                    volumes: c.tls.as_ref().map(|_| {
                        vec![Volume {
                            name: TLS_VOLUME.into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(tls::server_secret_name(c)),
                                default_mode: Some(0o440),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]
                    }),
                    // SIGTERM makes a leader hand off leadership first; give it time.
                    termination_grace_period_seconds: Some(30),
                    // The image runs as distroless' nonroot user; the data volume must be its.
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        fs_group: Some(65532),
                        ..Default::default()
                    }),
                    affinity: Some(Affinity {
                        pod_anti_affinity: Some(PodAntiAffinity {
                            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                                weight: 100,
                                pod_affinity_term: PodAffinityTerm {
                                    label_selector: Some(LabelSelector {
                                        match_labels: Some(selector.clone()),
                                        ..Default::default()
                                    }),
                                    topology_key: "kubernetes.io/hostname".into(),
                                    ..Default::default()
                                },
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta { name: Some("data".into()), ..Default::default() },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: c.storage_class.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([("storage".to_string(), Quantity(c.storage_size.clone()))])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pdb = PodDisruptionBudget {
        metadata: meta(c, c.name.clone(), &owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(if c.replicas >= 3 { 1 } else { 0 })),
            selector: Some(LabelSelector { match_labels: Some(selector), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let certificates = match c.tls.as_ref().and_then(|t| Some((t.cert_manager.as_ref()?, t.validity_secs))) {
        Some((issuer, validity)) => {
            [tls::Leaf::Server, tls::Leaf::Client].map(|l| l.certificate(c, &owner, issuer, validity)).into()
        }
        None => Vec::new(),
    };
    let wan_service = c.federation.as_ref().map(|f| super::federation::wan_service(c, f, &owner));
    Desired { config_map, headless_service, client_service, stateful_set, pdb, certificates, wan_service }
}
