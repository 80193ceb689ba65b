//! WAN federation, pure: the servers' WAN settings, the `<cluster>-wan` Service other datacenters
//! join through, and whether the servers' WAN pool shows the cluster federated.
//!
//! Servers gossip on UDP 8302 and advertise their pod IP there (the server takes an address, not a
//! name), so pod IPs must be routable between the datacenters (one Kubernetes cluster, or a flat
//! network); the Service only gives other datacenters a stable address to join through.

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::build::{meta, selector_labels};
use super::validate::ValidCluster;
use crate::crd::{FederationSpec, WanServiceType};

/// Consul's serf_wan port, the server's too.
pub const WAN_PORT: i32 = 8302;

/// A valid `spec.federation`, with join addresses resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Set only when it names another datacenter than the cluster's own.
    pub primary_datacenter: Option<String>,
    /// `host:port` each.
    pub retry_join_wan: Vec<String>,
    /// (Secret name, key) of the ACL replication token.
    pub replication_token: Option<(String, String)>,
    pub service_type: WanServiceType,
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A join entry as the server dials it: `host:port` stays; a Service name (`name` in `namespace`,
/// or `name.namespace`) becomes its cluster DNS name on the WAN port.
pub fn join_address(entry: &str, namespace: &str) -> Result<String, String> {
    let entry = entry.trim();
    if let Some((host, port)) = entry.rsplit_once(':') {
        return match port.parse::<u16>() {
            Ok(p) if p > 0 && !host.is_empty() && !host.contains(char::is_whitespace) => Ok(entry.to_string()),
            _ => Err(format!("{entry:?} is not host:port")),
        };
    }
    match entry.split('.').collect::<Vec<_>>().as_slice() {
        [name] if is_label(name) => Ok(format!("{name}.{namespace}.svc:{WAN_PORT}")),
        [name, ns] if is_label(name) && is_label(ns) => Ok(format!("{name}.{ns}.svc:{WAN_PORT}")),
        _ => Err(format!("{entry:?} is neither host:port nor a Service name (name or name.namespace)")),
    }
}

/// Checks `spec.federation`; problems go to `errors`, each naming its field.
pub fn settings(
    spec: &FederationSpec,
    datacenter: &str,
    namespace: &str,
    acl_enabled: bool,
    errors: &mut Vec<String>,
) -> Settings {
    let mut retry_join_wan = Vec::new();
    for (i, entry) in spec.retry_join_wan.iter().enumerate() {
        match join_address(entry, namespace) {
            Ok(a) => retry_join_wan.push(a),
            Err(e) => errors.push(format!("spec.federation.retryJoinWan[{i}]: {e}")),
        }
    }
    let primary_datacenter = spec.primary_datacenter.clone().filter(|p| !p.is_empty() && p != datacenter);
    let replication_token = spec.replication_token_secret.as_ref().map(|s| (s.name.clone(), s.key.clone()));
    if replication_token.is_some() && !acl_enabled {
        errors.push(
            "spec.federation.replicationTokenSecret: needs spec.acl.enabled (ACLs are what is replicated)".into(),
        );
    }
    if replication_token.is_some() && primary_datacenter.is_none() {
        errors.push(
            "spec.federation.replicationTokenSecret: only a secondary replicates; set primaryDatacenter to another \
             datacenter"
                .into(),
        );
    }
    Settings { primary_datacenter, retry_join_wan, replication_token, service_type: spec.wan_service_type }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

/// The servers' WAN settings (see `roster server --help`).
pub fn server_env(f: &Settings) -> Vec<EnvVar> {
    let mut vars = vec![
        env("ROSTER_WAN_ADDR", format!("0.0.0.0:{WAN_PORT}")),
        // The pod's own address: other datacenters' servers gossip with each server directly.
        env("ROSTER_WAN_ADVERTISE", format!("$(POD_IP):{WAN_PORT}")),
    ];
    if let Some(primary) = &f.primary_datacenter {
        vars.push(env("ROSTER_PRIMARY_DATACENTER", primary));
    }
    if !f.retry_join_wan.is_empty() {
        vars.push(env("ROSTER_RETRY_JOIN_WAN", f.retry_join_wan.join(",")));
    }
    if let Some((name, key)) = &f.replication_token {
        // From the Secret: never in the pod spec itself.
        vars.push(EnvVar {
            name: "ROSTER_ACL_REPLICATION_TOKEN".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector { name: name.clone(), key: key.clone(), optional: Some(false) }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    vars
}

pub fn wan_service_name(c: &ValidCluster) -> String {
    format!("{}-wan", c.name)
}

/// The Service other datacenters join through: every server, UDP 8302, of the type asked for.
pub fn wan_service(c: &ValidCluster, f: &Settings, owner: &Option<OwnerReference>) -> Service {
    let type_ = match f.service_type {
        WanServiceType::ClusterIP => "ClusterIP",
        WanServiceType::NodePort => "NodePort",
        WanServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata: meta(c, wan_service_name(c), owner),
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(selector_labels(c)),
            ports: Some(vec![ServicePort {
                name: Some("wan".into()),
                port: WAN_PORT,
                target_port: Some(IntOrString::Int(WAN_PORT)),
                protocol: Some("UDP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What the `Federated` condition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub federated: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Federated when the WAN pool (`/v1/catalog/datacenters` as the servers answer it) holds another
/// datacenter, and the primary when this is a secondary.
pub fn verdict(own: &str, f: &Settings, seen: &Result<Vec<String>, String>) -> Verdict {
    match seen {
        Err(e) => Verdict { federated: false, reason: "Unknown", message: format!("cannot ask the servers: {e}") },
        Ok(dcs) if !dcs.iter().any(|d| d != own) => Verdict {
            federated: false,
            reason: "NoOtherDatacenter",
            message: if f.retry_join_wan.is_empty() {
                format!("the WAN pool holds only {own}; waiting for other datacenters to join it")
            } else {
                format!("the WAN pool holds only {own}; joining {}", f.retry_join_wan.join(", "))
            },
        },
        Ok(dcs) => match &f.primary_datacenter {
            Some(primary) if !dcs.contains(primary) => Verdict {
                federated: false,
                reason: "PrimaryUnknown",
                message: format!("the WAN pool holds {} but not the primary {primary}", dcs.join(", ")),
            },
            _ => Verdict { federated: true, reason: "Federated", message: format!("datacenters: {}", dcs.join(", ")) },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_of(primary: Option<&str>, join: &[&str]) -> Settings {
        Settings {
            primary_datacenter: primary.map(str::to_string),
            retry_join_wan: join.iter().map(|s| s.to_string()).collect(),
            replication_token: None,
            service_type: WanServiceType::ClusterIP,
        }
    }

    #[test]
    fn join_entries_are_addresses_or_service_names() {
        assert_eq!(join_address("10.1.2.3:8302", "shop").as_deref(), Ok("10.1.2.3:8302"));
        assert_eq!(join_address("wan.dc1.example.com:9302", "shop").as_deref(), Ok("wan.dc1.example.com:9302"));
        assert_eq!(join_address("dc1-wan", "shop").as_deref(), Ok("dc1-wan.shop.svc:8302"));
        assert_eq!(join_address("dc1-wan.other", "shop").as_deref(), Ok("dc1-wan.other.svc:8302"));
        for bad in ["", "host:", "host:port", ":8302", "a.b.c", "Upper", "host:0"] {
            assert!(join_address(bad, "shop").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_replication_token_needs_acls_and_a_primary_elsewhere() {
        let spec: FederationSpec = serde_json::from_value(serde_json::json!({
            "primaryDatacenter": "dc2",
            "replicationTokenSecret": {"name": "repl", "key": "token"}
        }))
        .expect("spec");
        let mut errors = Vec::new();
        settings(&spec, "dc2", "shop", false, &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
        let mut errors = Vec::new();
        let s = settings(&spec, "dc1", "shop", true, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.primary_datacenter.as_deref(), Some("dc2"));
        let token = server_env(&s).into_iter().find(|e| e.name == "ROSTER_ACL_REPLICATION_TOKEN").expect("token");
        let from = token.value_from.and_then(|v| v.secret_key_ref).expect("from the Secret");
        assert_eq!((from.name.as_str(), from.key.as_str()), ("repl", "token"));
        assert_eq!(token.value, None, "never in the pod spec");
    }

    #[test]
    fn federated_means_another_datacenter_and_the_primary_in_the_pool() {
        let secondary = settings_of(Some("dc1"), &["dc1-wan.other.svc:8302"]);
        let v = verdict("dc2", &secondary, &Err("connection refused".into()));
        assert_eq!((v.federated, v.reason), (false, "Unknown"));
        let v = verdict("dc2", &secondary, &Ok(vec!["dc2".into()]));
        assert_eq!((v.federated, v.reason), (false, "NoOtherDatacenter"));
        assert!(v.message.contains("dc1-wan.other.svc:8302"), "{}", v.message);
        let v = verdict("dc2", &secondary, &Ok(vec!["dc2".into(), "dc3".into()]));
        assert_eq!((v.federated, v.reason), (false, "PrimaryUnknown"));
        let v = verdict("dc2", &secondary, &Ok(vec!["dc2".into(), "dc1".into()]));
        assert_eq!((v.federated, v.reason, v.message.as_str()), (true, "Federated", "datacenters: dc2, dc1"));
        // The primary itself: any other datacenter will do.
        let primary = settings_of(None, &[]);
        assert!(verdict("dc1", &primary, &Ok(vec!["dc1".into(), "dc2".into()])).federated);
        assert!(!verdict("dc1", &primary, &Ok(vec!["dc1".into()])).federated);
    }
}
