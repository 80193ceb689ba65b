//! Roster's Kubernetes operator (issue 5, in progress).
//!
//! - [`crd`]: the custom resource types of `roster.dev/v1alpha1`, the single source of `crds/`.
//! - [`registry_cluster`]: validate, build and status (pure) of a `RegistryCluster`, and its
//!   controller (server-side apply, status with conditions).
//! - [`service_registration`]: external services in the catalog, with a finalizer.
//! - [`key_value`]: KV entries written with CAS, drift reported, deleted with a finalizer.
//! - [`acl_policy`]: ACL policies, and tokens for them kept in Secrets.

pub mod acl_policy;
pub mod crd;
pub mod key_value;
pub mod registry_api;
pub mod registry_cluster;
pub mod service_registration;

/// The field manager of every server-side apply this operator makes.
pub const MANAGER: &str = "roster-operator";
