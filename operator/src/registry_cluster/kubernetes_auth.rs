//! The `kubernetes` auth method the operator keeps on a cluster's servers, so pods log in with
//! their ServiceAccount token instead of anyone pasting ACL secrets. Pure: what the method and its
//! binding rules should be, and what to change to get there. The servers call TokenReview with
//! the chart's token reviewer (a ServiceAccount bound to `system:auth-delegator`), whose token and
//! CA the operator reads from a Secret.

use k8s_openapi::api::core::v1::Secret;
use registry::api::{AclAuthMethod, AclBindingRule};

use crate::crd::KubernetesAuth;

/// Descriptions of what the operator made start with this; anything else on the method is the
/// user's and is left alone.
pub const MANAGED: &str = "roster-operator:";
pub const DEFAULT_METHOD: &str = "kubernetes";
pub const IN_CLUSTER_HOST: &str = "https://kubernetes.default.svc";

/// `spec.acl.kubernetesAuth` with its defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub method_name: String,
    pub host: String,
    pub namespaces: Vec<String>,
    pub max_token_ttl: String,
}

impl From<&KubernetesAuth> for Settings {
    fn from(k: &KubernetesAuth) -> Self {
        Settings {
            method_name: k.method_name.clone().unwrap_or_else(|| DEFAULT_METHOD.into()),
            host: k.host.clone().unwrap_or_else(|| IN_CLUSTER_HOST.into()),
            namespaces: k.namespaces.clone(),
            max_token_ttl: k.max_token_ttl.clone().unwrap_or_default(),
        }
    }
}

/// Who the servers ask TokenReview as: a ServiceAccount token and the API server's CA.
#[derive(Clone, PartialEq)]
pub struct Reviewer {
    pub jwt: String,
    pub ca_cert: String,
}

impl std::fmt::Debug for Reviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reviewer").field("jwt", &"<redacted>").finish_non_exhaustive()
    }
}

impl Reviewer {
    /// From a `kubernetes.io/service-account-token` Secret (keys `token` and `ca.crt`), once the
    /// token controller has filled it.
    pub fn from_secret(secret: &Secret) -> Result<Reviewer, String> {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let get = |key: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| format!("Secret {name} has no {key:?} yet (is it a service-account-token Secret?)"))
        };
        Ok(Reviewer { jwt: get("token")?, ca_cert: get("ca.crt")? })
    }
}

/// How the operator marks the method it keeps for one cluster (and finds it again to remove it).
pub fn description(cluster: &str, namespace: &str) -> String {
    format!("{MANAGED} ServiceAccount login for RegistryCluster {namespace}/{cluster}")
}

/// The auth method as it should be.
pub fn method(cluster: &str, namespace: &str, s: &Settings, r: &Reviewer) -> AclAuthMethod {
    let mut config = serde_json::Map::new();
    config.insert("Host".into(), s.host.clone().into());
    if !r.ca_cert.is_empty() {
        config.insert("CACert".into(), r.ca_cert.clone().into());
    }
    config.insert("ServiceAccountJWT".into(), r.jwt.clone().into());
    AclAuthMethod {
        name: s.method_name.clone(),
        method_type: "kubernetes".into(),
        display_name: String::new(),
        description: description(cluster, namespace),
        max_token_ttl: s.max_token_ttl.clone(),
        token_locality: String::new(),
        config: Some(config),
        create_index: 0,
        modify_index: 0,
    }
}

/// Whether the method on the servers must be rewritten to become `desired`.
pub fn method_differs(current: &AclAuthMethod, desired: &AclAuthMethod) -> bool {
    current.method_type != desired.method_type
        || current.description != desired.description
        || current.max_token_ttl != desired.max_token_ttl
        || current.config != desired.config
}

/// The binding rules: a ServiceAccount's login may register the service of its name (never the
/// `default` account's), and a pod-bound token's login the node of its pod, where the sidecar
/// registers it.
pub fn binding_rules(s: &Settings) -> Vec<AclBindingRule> {
    let in_namespaces = if s.namespaces.is_empty() {
        String::new()
    } else {
        let any: Vec<String> = s.namespaces.iter().map(|n| format!("serviceaccount.namespace == {n:?}")).collect();
        format!(" and ({})", any.join(" or "))
    };
    let rule = |what: &str, selector: String, bind_type: &str, bind_name: &str| AclBindingRule {
        description: format!("{MANAGED} {what}"),
        auth_method: s.method_name.clone(),
        selector,
        bind_type: bind_type.into(),
        bind_name: bind_name.into(),
        ..Default::default()
    };
    vec![
        rule(
            "the service named after the ServiceAccount",
            format!(r#"serviceaccount.name != "default"{in_namespaces}"#),
            "service",
            "${serviceaccount.name}",
        ),
        rule("the node of the pod (its sidecar's)", format!(r#"pod.name != ""{in_namespaces}"#), "node", "${pod.name}"),
    ]
}

/// What to do to the method's binding rules: create the desired ones missing, delete the
/// operator's that are no longer desired; the user's own rules stay.
#[derive(Debug, Default, PartialEq)]
pub struct RuleChanges {
    pub create: Vec<AclBindingRule>,
    pub delete: Vec<String>,
}

impl RuleChanges {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.delete.is_empty()
    }
}

pub fn rule_changes(current: &[AclBindingRule], desired: &[AclBindingRule]) -> RuleChanges {
    let same = |a: &AclBindingRule, b: &AclBindingRule| {
        a.description == b.description
            && a.selector == b.selector
            && a.bind_type == b.bind_type
            && a.bind_name == b.bind_name
    };
    let ours = current.iter().filter(|r| r.description.starts_with(MANAGED));
    RuleChanges {
        create: desired.iter().filter(|d| !current.iter().any(|c| same(c, d))).cloned().collect(),
        delete: ours.filter(|c| !desired.iter().any(|d| same(c, d))).map(|c| c.id.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn settings(namespaces: &[&str]) -> Settings {
        Settings::from(&KubernetesAuth {
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn defaults_name_the_in_cluster_api_server() {
        let s = settings(&[]);
        assert_eq!((s.method_name.as_str(), s.host.as_str()), ("kubernetes", "https://kubernetes.default.svc"));
        let r = Reviewer { jwt: "jwt".into(), ca_cert: "pem".into() };
        let m = method("registry", "shop", &s, &r);
        assert_eq!(m.method_type, "kubernetes");
        let config = m.config.clone().unwrap_or_default();
        assert_eq!(config["Host"], "https://kubernetes.default.svc");
        assert_eq!(config["ServiceAccountJWT"], "jwt");
        assert!(!method_differs(&m, &m.clone()));
        let rotated = method("registry", "shop", &s, &Reviewer { jwt: "new".into(), ca_cert: "pem".into() });
        assert!(method_differs(&m, &rotated), "a rotated reviewer token is written to the servers");
        assert!(!format!("{r:?}").contains("jwt\""), "the reviewer token stays out of logs");
    }

    #[test]
    fn rules_bind_the_service_account_and_the_pod_within_the_namespaces() {
        let rules = binding_rules(&settings(&["shop", "web"]));
        assert_eq!(rules[0].bind_type, "service");
        assert_eq!(rules[0].bind_name, "${serviceaccount.name}");
        assert_eq!(
            rules[0].selector,
            r#"serviceaccount.name != "default" and (serviceaccount.namespace == "shop" or serviceaccount.namespace == "web")"#
        );
        assert_eq!((rules[1].bind_type.as_str(), rules[1].bind_name.as_str()), ("node", "${pod.name}"));
        assert_eq!(binding_rules(&settings(&[]))[1].selector, r#"pod.name != """#);
    }

    #[test]
    fn rule_changes_keep_the_users_rules() {
        let desired = binding_rules(&settings(&[]));
        let mut stale = binding_rules(&settings(&["old"]))[0].clone();
        stale.id = "stale".into();
        let mut kept = desired[1].clone();
        kept.id = "kept".into();
        let users = AclBindingRule {
            id: "users".into(),
            description: "made by hand".into(),
            bind_type: "role".into(),
            bind_name: "ops".into(),
            ..Default::default()
        };
        let changes = rule_changes(&[stale, kept, users], &desired);
        assert_eq!(changes.create, vec![desired[0].clone()]);
        assert_eq!(changes.delete, vec!["stale".to_string()]);
        let mut all = desired.clone();
        all.iter_mut().enumerate().for_each(|(i, r)| r.id = i.to_string());
        assert!(rule_changes(&all, &desired).is_empty(), "in step: nothing to do");
    }

    #[test]
    fn the_reviewer_comes_from_a_filled_service_account_token_secret() {
        let mut secret = Secret::default();
        secret.metadata.name = Some("roster-token-reviewer".into());
        assert!(Reviewer::from_secret(&secret).unwrap_err().contains("no \"token\" yet"));
        secret.data = Some(BTreeMap::from([
            ("token".to_string(), ByteString(b"jwt".to_vec())),
            ("ca.crt".to_string(), ByteString(b"pem".to_vec())),
        ]));
        assert_eq!(Reviewer::from_secret(&secret).unwrap(), Reviewer { jwt: "jwt".into(), ca_cert: "pem".into() });
    }
}
