//! Consul's wire types: field names, nesting and null-versus-empty as Consul's `/v1` API has them.
//!
//! No tokio, no warp, no openraft here: the sidecar and the operator use these through the `client` feature.
//! The state machine stores the catalog types as they are, so a read is a clone, not a conversion.

mod acl;
mod agent;
mod catalog;
mod coordinate;
mod duration;
mod event;
pub mod json;
mod kv;
mod query;
mod session;

pub use acl::*;
pub use agent::*;
pub use catalog::*;
pub use coordinate::*;
pub use duration::{format_go_duration, parse_go_duration};
pub use event::*;
pub use kv::*;
pub use query::*;
pub use session::*;

use serde::{Deserialize, Serialize};

/// Check and aggregated health states, as Consul spells them on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Passing,
    Warning,
    #[default]
    Critical,
    Maintenance,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
            HealthStatus::Maintenance => "maintenance",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "passing" => Some(HealthStatus::Passing),
            "warning" => Some(HealthStatus::Warning),
            "critical" => Some(HealthStatus::Critical),
            "maintenance" => Some(HealthStatus::Maintenance),
            _ => None,
        }
    }

    /// Severity order used to aggregate several checks: the worst one wins.
    pub fn severity(self) -> u8 {
        match self {
            HealthStatus::Passing => 0,
            HealthStatus::Warning => 1,
            HealthStatus::Critical => 2,
            HealthStatus::Maintenance => 3,
        }
    }
}

/// Consul keeps at most 4 KiB of a check's output.
pub const MAX_CHECK_OUTPUT: usize = 4096;

/// Truncates check output to `MAX_CHECK_OUTPUT` on a character boundary, saying so.
pub fn cap_check_output(mut output: String) -> String {
    if output.len() > MAX_CHECK_OUTPUT {
        let mut cut = MAX_CHECK_OUTPUT;
        while !output.is_char_boundary(cut) {
            cut -= 1;
        }
        output.truncate(cut);
        output.push_str(" ... (truncated)");
    }
    output
}

/// `/v1/operator/raft/configuration`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RaftConfiguration {
    pub servers: Vec<RaftServer>,
    pub index: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RaftServer {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub leader: bool,
    pub protocol_version: String,
    pub voter: bool,
}

/// `/v1/operator/autopilot/health`: the leader's view of every server (Consul's shape).
/// Answered with 200 when every server is healthy, 429 otherwise (the body is the same).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AutopilotHealth {
    pub healthy: bool,
    /// Healthy voters that could be lost without losing quorum.
    pub failure_tolerance: u32,
    pub servers: Vec<ServerHealth>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ServerHealth {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub address: String,
    /// `alive` when the leader reaches it, `failed` otherwise.
    pub serf_status: String,
    pub version: String,
    pub leader: bool,
    /// Since the leader last reached it, as a Go duration ("0s", "850ms").
    pub last_contact: String,
    pub last_term: u64,
    /// The last log index the leader knows it holds.
    pub last_index: u64,
    pub healthy: bool,
    pub voter: bool,
    /// When `healthy` last changed (RFC 3339).
    pub stable_since: String,
}

/// `/v1/operator/autopilot/configuration`, as Consul stores it. A PUT replaces the whole
/// configuration: fields it leaves out become their zero values, as with Consul.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AutopilotConfiguration {
    pub cleanup_dead_servers: bool,
    /// A Go duration ("200ms").
    pub last_contact_threshold: String,
    pub max_trailing_logs: u64,
    pub min_quorum: u32,
    /// A Go duration ("10s").
    pub server_stabilization_time: String,
    pub redundancy_zone_tag: String,
    pub disable_upgrade_migration: bool,
    pub upgrade_version_tag: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Default for AutopilotConfiguration {
    /// The zero configuration a PUT body is decoded into.
    fn default() -> Self {
        AutopilotConfiguration {
            cleanup_dead_servers: false,
            last_contact_threshold: "0s".into(),
            max_trailing_logs: 0,
            min_quorum: 0,
            server_stabilization_time: "0s".into(),
            redundancy_zone_tag: String::new(),
            disable_upgrade_migration: false,
            upgrade_version_tag: String::new(),
            create_index: 0,
            modify_index: 0,
        }
    }
}

impl AutopilotConfiguration {
    /// Consul's defaults, which a new cluster starts with.
    pub fn consul_defaults() -> Self {
        AutopilotConfiguration {
            cleanup_dead_servers: true,
            last_contact_threshold: "200ms".into(),
            max_trailing_logs: 250,
            server_stabilization_time: "10s".into(),
            ..Default::default()
        }
    }
}

/// Autopilot's rule for one server: reached recently, on the leader's term, and not trailing the
/// leader's log by more than `max_trailing_logs` entries (Consul's defaults: 250 entries; the
/// contact threshold here is wider than Consul's 200 ms because the leader probes once a second).
pub fn server_is_healthy(
    last_contact: Option<std::time::Duration>,
    contact_threshold: std::time::Duration,
    last_term: u64,
    leader_term: u64,
    last_index: u64,
    leader_last_index: u64,
    max_trailing_logs: u64,
) -> bool {
    last_contact.is_some_and(|c| c <= contact_threshold)
        && last_term == leader_term
        && leader_last_index.saturating_sub(last_index) <= max_trailing_logs
}

/// Healthy voters beyond a quorum of all voters: how many more could fail without an outage.
pub fn failure_tolerance(voters: usize, healthy_voters: usize) -> u32 {
    let quorum = voters / 2 + 1;
    healthy_voters.saturating_sub(quorum) as u32
}

#[cfg(test)]
mod autopilot_tests {
    use std::time::Duration;

    use super::{failure_tolerance, server_is_healthy};

    const THRESHOLD: Duration = Duration::from_secs(3);

    #[test]
    fn a_server_is_healthy_when_reached_on_the_leaders_term_and_close_behind() {
        let ok = |contact, term, index| server_is_healthy(contact, THRESHOLD, term, 5, index, 1000, 250);
        assert!(ok(Some(Duration::from_millis(400)), 5, 1000));
        assert!(ok(Some(Duration::ZERO), 5, 750), "250 entries behind is still healthy");
        assert!(!ok(Some(Duration::ZERO), 5, 749), "251 behind: still catching up");
        assert!(!ok(Some(Duration::ZERO), 4, 1000), "an old term: it has not heard from this leader");
        assert!(!ok(Some(Duration::from_secs(4)), 5, 1000), "not reached lately");
        assert!(!ok(None, 5, 1000), "never reached");
    }

    #[test]
    fn failure_tolerance_counts_healthy_voters_beyond_quorum() {
        assert_eq!(failure_tolerance(3, 3), 1);
        assert_eq!(failure_tolerance(3, 2), 0);
        assert_eq!(failure_tolerance(5, 5), 2);
        assert_eq!(failure_tolerance(5, 3), 0);
        assert_eq!(failure_tolerance(1, 1), 0);
        assert_eq!(failure_tolerance(3, 0), 0);
    }
}
