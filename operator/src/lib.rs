//! Roster's Kubernetes operator (issue 5, in progress).
//!
//! - [`crd`]: the custom resource types of `roster.dev/v1alpha1`, the single source of `crds/`.
//! - [`registry_cluster`]: validate, build and status (pure) of a `RegistryCluster`.
//! - [`controller`]: the controller that applies them (server-side apply) and reports status.

pub mod controller;
pub mod crd;
pub mod registry_cluster;
