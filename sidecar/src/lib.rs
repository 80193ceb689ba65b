//! Roster's sidecar (issue 4, in progress): gossip membership so far.
//!
//! Still to come: pod registration, health checks, anti-entropy with the servers and the localhost
//! agent API. See the open issue.

pub mod membership;
