//! The custom resources of group `roster.dev`, version `v1alpha1`. These Rust types are the single
//! source of the CRDs: `roster-operator crd` prints them, `scripts/gen-crds.sh` writes them into
//! `crds/`, and a test fails when the committed YAML drifts from the types.

mod acl_policy;
mod key_value;
mod registry_cluster;
mod service_registration;

pub use acl_policy::{AclPolicy, AclPolicySpec, AclPolicyStatus, TokenSpec};
pub use key_value::{KeyValue, KeyValueSpec, KeyValueStatus, ValueFrom};
pub use registry_cluster::{
    AclSettings, CertManagerSpec, DefaultPolicy, FederationSpec, IssuerRef, KubernetesAuth, RegistryCluster,
    RegistryClusterSpec, RegistryClusterStatus, SecretKeyRef, StorageSpec, TlsSpec, TlsStatus, WanServiceType,
};
pub use service_registration::{CheckSpec, ServiceRegistration, ServiceRegistrationSpec, ServiceRegistrationStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::CustomResourceExt;

pub const GROUP: &str = "roster.dev";

/// Every CRD, with the file name it is committed under in `crds/`.
pub fn all() -> Vec<(String, CustomResourceDefinition)> {
    [RegistryCluster::crd(), ServiceRegistration::crd(), KeyValue::crd(), AclPolicy::crd()]
        .into_iter()
        .map(|crd| (format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default()), crd))
        .collect()
}

/// The YAML of one CRD, as committed.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "# Generated from operator/src/crd by scripts/gen-crds.sh: do not edit.\n{}",
        serde_yaml::to_string(crd)?
    ))
}

/// Why a real API server could refuse a CRD's CEL rules on cost: each string, list or map a rule can
/// reach (the node the rule is on and everything under it) needs a `maxLength`, `maxItems` or
/// `maxProperties` (or an `enum`), and each list or map the rule sits inside needs a bound too, since
/// the rule runs once per element. Without them the API server assumes the whole request body (3 MB)
/// and refuses the rule ("estimated rule cost exceeds budget"). Mock API servers do not estimate cost,
/// so this check stands in for one. Empty when every rule is bounded.
pub fn unbounded_under_cel_rules(schema: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    walk(schema, "", false, &mut Vec::new(), &mut problems);
    problems
}

fn walk(
    node: &serde_json::Value,
    path: &str,
    under_rule: bool,
    enclosing: &mut Vec<String>,
    problems: &mut Vec<String>,
) {
    let has_rule = node.get("x-kubernetes-validations").and_then(|v| v.as_array()).is_some_and(|r| !r.is_empty());
    if has_rule {
        problems.extend(enclosing.iter().map(|c| format!("{path}: a CEL rule inside the unbounded collection {c}")));
    }
    let reached = under_rule || has_rule;
    let bounded = |key: &str| node.get(key).is_some() || node.get("enum").is_some();
    let ty = node.get("type").and_then(|t| t.as_str()).unwrap_or("");
    let additional = node.get("additionalProperties").filter(|a| a.is_object());
    if reached {
        let missing = match ty {
            "string" if !bounded("maxLength") => Some("maxLength"),
            "array" if !bounded("maxItems") => Some("maxItems"),
            "object" if additional.is_some() && !bounded("maxProperties") => Some("maxProperties"),
            _ => None,
        };
        if let Some(bound) = missing {
            problems.push(format!("{path}: reached by a CEL rule without {bound}"));
        }
    }
    let mut descend = |child: &serde_json::Value, child_path: String, collection: Option<&str>| {
        let unbounded = collection.filter(|bound| node.get(*bound).is_none());
        if let Some(bound) = unbounded {
            enclosing.push(format!("{path} (no {bound})"));
        }
        walk(child, &child_path, reached, enclosing, problems);
        if unbounded.is_some() {
            enclosing.pop();
        }
    };
    if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in props {
            descend(child, format!("{path}.{name}"), None);
        }
    }
    if let Some(items) = node.get("items") {
        descend(items, format!("{path}[]"), Some("maxItems"));
    }
    if let Some(values) = additional {
        descend(values, format!("{path}{{}}"), Some("maxProperties"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real API server estimates each CEL rule's cost and refuses CRDs over budget (wave 1:
    /// `helm install` failed on a rule inside the unbounded `checks` list).
    #[test]
    fn every_cel_rule_has_bounded_inputs() {
        for (file, crd) in all() {
            for version in &crd.spec.versions {
                let schema = serde_json::to_value(&version.schema).expect("schema");
                let problems = unbounded_under_cel_rules(&schema["openAPIV3Schema"]);
                assert!(problems.is_empty(), "{file}: {problems:#?}");
            }
        }
    }

    /// The check finds the wave-1 shape: a rule on a string inside a list without bounds.
    #[test]
    fn the_cel_bound_check_finds_unbounded_rules() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "checks": {"type": "array", "items": {"type": "object", "properties": {
                    "status": {"type": "string", "x-kubernetes-validations": [{"rule": "self in ['a']"}]}
                }}},
                "meta": {"type": "object", "additionalProperties": {"type": "string"},
                         "x-kubernetes-validations": [{"rule": "self.size() < 3"}]},
                "ok": {"type": "string", "maxLength": 8, "x-kubernetes-validations": [{"rule": "self != 'x'"}]}
            }
        });
        let problems = unbounded_under_cel_rules(&schema);
        assert_eq!(
            problems,
            vec![
                ".checks[].status: a CEL rule inside the unbounded collection .checks (no maxItems)",
                ".checks[].status: reached by a CEL rule without maxLength",
                ".meta: reached by a CEL rule without maxProperties",
                ".meta{}: reached by a CEL rule without maxLength",
            ]
        );
    }

    /// CI fails when the committed YAML is not what the types generate.
    #[test]
    fn committed_crds_match_the_types() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for dir in ["crds", "charts/roster/crds"] {
            for (file, crd) in all() {
                let want = to_yaml(&crd).expect("yaml");
                let have = std::fs::read_to_string(root.join(dir).join(&file)).unwrap_or_default();
                assert!(
                    have == want,
                    "{dir}/{file} is stale or missing: run scripts/gen-crds.sh and commit the result"
                );
            }
        }
    }

    #[test]
    fn every_crd_has_short_names_printer_columns_and_descriptions() {
        for (file, crd) in all() {
            let names = &crd.spec.names;
            assert!(names.short_names.as_ref().is_some_and(|s| !s.is_empty()), "{file}: short names");
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, "v1alpha1");
            assert!(version.additional_printer_columns.as_ref().is_some_and(|c| c.len() >= 2), "{file}: columns");
            assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{file}: status");
            let schema = serde_json::to_string(&version.schema).expect("schema");
            assert!(schema.contains("\"description\""), "{file}: field descriptions for kubectl explain");
        }
    }
}
