//! `AclPolicy`: the policy the registry should hold for a resource (pure, rules checked with the
//! servers' own parser before anything is sent), and the controller that keeps it there.

pub mod controller;

use registry::api::{AclLink, AclPolicy as RegistryPolicy, AclToken};

use crate::crd::AclPolicy;

/// Finalizer that holds a deleted resource until its policy and token are out of the registry.
pub const FINALIZER: &str = "roster.dev/delete-policy";

/// Registry policy names are global: one per namespace and resource.
pub fn policy_name(p: &AclPolicy) -> String {
    format!("k8s-{}-{}", p.metadata.namespace.as_deref().unwrap_or("default"), p.metadata.name.as_deref().unwrap_or(""))
}

/// The policy as the registry should hold it; `id` is the existing one's, if any.
pub fn build(p: &AclPolicy, id: Option<&str>) -> Result<RegistryPolicy, Vec<String>> {
    if let Err(e) = registry::acl::Rules::parse(&p.spec.rules) {
        return Err(vec![format!("spec.rules: {e}")]);
    }
    Ok(RegistryPolicy {
        id: id.unwrap_or_default().to_string(),
        name: policy_name(p),
        description: p.spec.description.clone().unwrap_or_else(|| "Managed by roster-operator".into()),
        rules: p.spec.rules.clone(),
        ..Default::default()
    })
}

/// Whether the registry's copy needs writing.
pub fn differs(have: &RegistryPolicy, want: &RegistryPolicy) -> bool {
    have.rules != want.rules || have.description != want.description || have.name != want.name
}

/// A token bound to the policy.
pub fn token_for(p: &AclPolicy, policy: &RegistryPolicy) -> AclToken {
    AclToken {
        description: format!("Token for {} (Kubernetes AclPolicy)", policy_name(p)),
        policies: vec![AclLink { id: policy.id.clone(), name: policy.name.clone() }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &str) -> AclPolicy {
        let mut v: serde_json::Value = serde_json::json!({
            "apiVersion": "roster.dev/v1alpha1", "kind": "ACLPolicy",
            "metadata": {"name": "app", "namespace": "shop"},
            "spec": {"rules": rules},
        });
        v["spec"]["token"] = serde_json::json!({"secretName": "app-token"});
        serde_json::from_value(v).expect("AclPolicy")
    }

    #[test]
    fn builds_a_named_policy_and_refuses_bad_rules_before_sending() {
        let p = policy(r#"key_prefix "app/" { policy = "write" }"#);
        let built = build(&p, Some("id-1")).expect("valid");
        assert_eq!((built.id.as_str(), built.name.as_str()), ("id-1", "k8s-shop-app"));
        assert!(!differs(&built, &built));
        let mut changed = built.clone();
        changed.rules = r#"key_prefix "app/" { policy = "read" }"#.into();
        assert!(differs(&changed, &built));
        let err = build(&policy(r#"key_prefix "app/" { policy = "sometimes" }"#), None).expect_err("bad rules");
        assert!(err[0].starts_with("spec.rules:"), "{err:?}");
        let token = token_for(&p, &built);
        assert_eq!(token.policies[0].id, "id-1");
    }
}
