//! Reconciling a `RegistryCluster`, as a pipeline: `validate` -> `build` -> apply -> update status.
//! The first two are pure and tested from YAML fixtures (`operator/tests/fixtures`); apply and
//! status (server-side apply, Raft-aware scaling and upgrades) are the controller's, still to come.

pub mod build;
pub mod status;
pub mod validate;

pub use build::{build, Desired};
pub use validate::{validate, ValidCluster};

/// The server image used when a cluster names none: this operator's own version.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/roster-dev/roster:", env!("CARGO_PKG_VERSION"));
