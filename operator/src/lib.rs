//! Roster's Kubernetes operator (issue 5, in progress).
//!
//! - [`crd`]: the custom resource types of `roster.dev/v1alpha1`, the single source of `crds/`.
//! - [`registry_cluster`]: validate and build (pure) of a `RegistryCluster`'s objects.

pub mod crd;
pub mod registry_cluster;
