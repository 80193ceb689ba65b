//! Roster's sidecar (issue 4, in progress): gossip membership and the check runners so far.
//!
//! Still to come: pod registration, health checks, anti-entropy with the servers and the localhost
//! agent API. See the open issue.

pub mod checks;
pub mod membership;
