//! Health checks an agent runs (a server's agent and the sidecar alike): one file per kind behind
//! one trait, the flap damping (`success_before_passing`, `failures_before_critical`) shared by all
//! of them, and `plan`: a definition validated and turned into a runner. TTL checks have no runner:
//! the app pushes their status.

mod exec;
mod grpc;
mod http;
pub mod plan;
pub mod scheduler;
mod tcp;

pub use exec::ExecCheck;
pub use grpc::GrpcCheck;
pub use http::HttpCheck;
pub use tcp::TcpCheck;

use crate::api::HealthStatus;

pub use crate::api::{cap_check_output as cap_output, MAX_CHECK_OUTPUT as MAX_OUTPUT};

/// One probe's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub status: HealthStatus,
    pub output: String,
}

impl Probe {
    pub fn new(status: HealthStatus, output: impl Into<String>) -> Self {
        Probe { status, output: cap_output(output.into()) }
    }
}

/// A check kind that can be probed once (the scheduler calls it every interval).
pub trait Check: Send + Sync {
    fn probe(&self) -> impl std::future::Future<Output = Probe> + Send;
}

/// Turns raw probe results into the status reported, so one blip does not flap the check:
/// it goes passing only after `success_before_passing` consecutive passes, critical only after
/// `failures_before_critical` consecutive failures (Consul's semantics; both default to 0/1).
#[derive(Debug, Clone)]
pub struct Damper {
    success_before_passing: u32,
    failures_before_critical: u32,
    successes: u32,
    failures: u32,
    reported: HealthStatus,
}

impl Damper {
    pub fn new(success_before_passing: u32, failures_before_critical: u32, initial: HealthStatus) -> Self {
        Damper { success_before_passing, failures_before_critical, successes: 0, failures: 0, reported: initial }
    }

    /// Feeds one probe; returns the status to report now.
    pub fn observe(&mut self, probe: HealthStatus) -> HealthStatus {
        match probe {
            HealthStatus::Passing => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if self.successes >= self.success_before_passing {
                    self.reported = HealthStatus::Passing;
                }
            }
            HealthStatus::Critical => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.failures_before_critical {
                    self.reported = HealthStatus::Critical;
                }
            }
            other => {
                // Warning (and maintenance) are reported as they come, and reset both streaks.
                self.successes = 0;
                self.failures = 0;
                self.reported = other;
            }
        }
        self.reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthStatus::*;

    #[test]
    fn damper_needs_streaks_before_changing() {
        let mut d = Damper::new(2, 3, Critical);
        assert_eq!(d.observe(Passing), Critical);
        assert_eq!(d.observe(Passing), Passing);
        assert_eq!(d.observe(Critical), Passing);
        assert_eq!(d.observe(Critical), Passing);
        assert_eq!(d.observe(Passing), Passing, "a pass resets the failure streak");
        assert_eq!(d.observe(Critical), Passing);
        assert_eq!(d.observe(Critical), Passing);
        assert_eq!(d.observe(Critical), Critical);
        assert_eq!(d.observe(Warning), Warning);
    }

    #[test]
    fn without_thresholds_every_probe_counts() {
        let mut d = Damper::new(0, 0, Critical);
        assert_eq!(d.observe(Passing), Passing);
        assert_eq!(d.observe(Critical), Critical);
    }

    #[test]
    fn output_is_capped_on_a_char_boundary() {
        let long = "é".repeat(5000);
        let capped = cap_output(long);
        assert!(capped.len() <= MAX_OUTPUT + 20);
        assert!(capped.ends_with("(truncated)"));
    }
}
