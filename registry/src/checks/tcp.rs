//! TCP checks: passing when a connection opens within the timeout.

use std::time::Duration;

use crate::api::HealthStatus;

use super::{Check, Probe};

pub struct TcpCheck {
    addr: String,
    timeout: Duration,
}

impl TcpCheck {
    pub fn new(addr: impl Into<String>, timeout: Duration) -> Self {
        TcpCheck { addr: addr.into(), timeout }
    }
}

impl Check for TcpCheck {
    async fn probe(&self) -> Probe {
        match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(&self.addr)).await {
            Ok(Ok(_)) => Probe::new(HealthStatus::Passing, format!("TCP connect {}: Success", self.addr)),
            Ok(Err(e)) => Probe::new(HealthStatus::Critical, format!("dial tcp {}: {e}", self.addr)),
            Err(_) => Probe::new(HealthStatus::Critical, format!("dial tcp {}: i/o timeout", self.addr)),
        }
    }
}
