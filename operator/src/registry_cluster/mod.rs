//! Reconciling a `RegistryCluster`, as a pipeline: `validate` -> `build` -> apply -> update status.
//! validate, build and status are pure and tested from YAML fixtures (`operator/tests/fixtures`);
//! `rollout` plans Raft-aware scale-downs and rolling updates (pure); `controller` observes, applies
//! (server-side apply), takes the planned step and writes the status.

pub mod build;
pub mod controller;
pub mod federation;
pub mod kubernetes_auth;
pub mod rollout;
pub mod status;
pub mod tls;
pub mod validate;

pub use build::{build, Desired};
pub use validate::{validate, ValidCluster};

/// The server image used when a cluster names none: this operator's own version.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/roster-dev/roster:", env!("CARGO_PKG_VERSION"));
