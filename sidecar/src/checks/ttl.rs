//! TTL checks: the app pushes pass/warn/fail; silence longer than the TTL is critical.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use registry::api::HealthStatus;

use super::{Check, Probe};

pub struct TtlCheck {
    ttl: Duration,
    last: Mutex<(Instant, Probe)>,
}

impl TtlCheck {
    /// Starts critical until the first update, as Consul's TTL checks do.
    pub fn new(ttl: Duration) -> Self {
        TtlCheck { ttl, last: Mutex::new((Instant::now(), Probe::new(HealthStatus::Critical, ""))) }
    }

    /// The app's update (`/v1/agent/check/pass|warn|fail/:id`).
    pub fn update(&self, status: HealthStatus, note: impl Into<String>) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = (Instant::now(), Probe::new(status, note));
    }
}

impl Check for TtlCheck {
    async fn probe(&self) -> Probe {
        let (at, probe) = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if at.elapsed() > self.ttl {
            return Probe::new(
                HealthStatus::Critical,
                format!("TTL expired (last update {:?} ago, TTL {:?})", at.elapsed(), self.ttl),
            );
        }
        probe
    }
}
