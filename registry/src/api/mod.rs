//! Consul's wire types: field names, nesting and null-versus-empty as Consul's `/v1` API has them.
//!
//! No tokio, no warp, no openraft here: the sidecar and the operator use these through the `client` feature.
//! The state machine stores the catalog types as they are, so a read is a clone, not a conversion.

mod acl;
mod agent;
mod catalog;
mod duration;
pub mod json;
mod kv;
mod session;

pub use acl::*;
pub use agent::*;
pub use catalog::*;
pub use duration::{format_go_duration, parse_go_duration};
pub use kv::*;
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
