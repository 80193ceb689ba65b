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
    AclSettings, DefaultPolicy, RegistryCluster, RegistryClusterSpec, RegistryClusterStatus, StorageSpec,
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

#[cfg(test)]
mod tests {
    use super::*;

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
