//! Roster's Kubernetes operator.
//!
//! - [`crd`]: the custom resource types of `roster.dev/v1alpha1`, the single source of `crds/`.
//! - [`registry_cluster`]: validate, build, rollout plan and status (pure) of a `RegistryCluster`,
//!   and its controller (server-side apply, Raft-aware scale-down and rolling updates, Events).
//! - [`service_registration`]: external services in the catalog, with a finalizer.
//! - [`key_value`]: KV entries written with CAS, drift reported, deleted with a finalizer.
//! - [`acl_policy`]: ACL policies, and tokens for them kept in Secrets.
//! - [`pod_gc`]: no ghost registrations: a pod's node leaves the catalog once the pod is gone.
//! - [`telemetry`]: the operator's metrics, health endpoints and the loop that drives a controller.

pub mod acl_policy;
pub mod catalog_sync;
pub mod crd;
pub mod inject;
pub mod key_value;
pub mod pod_gc;
pub mod registry_api;
pub mod registry_cluster;
pub mod service_registration;
pub mod telemetry;

/// The field manager of every server-side apply this operator makes.
pub const MANAGER: &str = "roster-operator";
