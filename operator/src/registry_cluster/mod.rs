//! Reconciling a `RegistryCluster`, as a pipeline: `validate` -> `build` -> apply -> update status.
//! validate, build and status are pure and tested from YAML fixtures (`operator/tests/fixtures`);
//! `controller` applies (server-side apply) and writes the status. Raft-aware scaling and upgrades
//! are still to come.

pub mod build;
pub mod controller;
pub mod status;
pub mod validate;

pub use build::{build, Desired};
pub use validate::{validate, ValidCluster};

/// The server image used when a cluster names none: this operator's own version.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/roster-dev/roster:", env!("CARGO_PKG_VERSION"));
