//! gRPC checks: the standard health protocol (`grpc.health.v1.Health/Check`); SERVING is passing,
//! anything else or no answer in time is critical. Target `host:port` or `host:port/service`, as in
//! Consul. Plaintext only.

use std::time::Duration;

use crate::api::HealthStatus;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::{Check, Probe};

pub struct GrpcCheck {
    target: String,
    service: String,
    channel: Channel,
}

impl GrpcCheck {
    pub fn new(target: &str, timeout: Duration) -> anyhow::Result<Self> {
        let (addr, service) = match target.split_once('/') {
            Some((a, s)) => (a, s),
            None => (target, ""),
        };
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| anyhow::anyhow!("bad gRPC target {target:?}: {e}"))?
            .connect_timeout(timeout)
            .timeout(timeout);
        // Connects on first use and reconnects after failures by itself.
        let channel = endpoint.connect_lazy();
        Ok(GrpcCheck { target: target.to_string(), service: service.to_string(), channel })
    }
}

impl Check for GrpcCheck {
    async fn probe(&self) -> Probe {
        let mut client = HealthClient::new(self.channel.clone());
        match client.check(HealthCheckRequest { service: self.service.clone() }).await {
            Ok(resp) => {
                let status = resp.into_inner().status();
                if status == ServingStatus::Serving {
                    Probe::new(HealthStatus::Passing, format!("gRPC check {}: success", self.target))
                } else {
                    Probe::new(
                        HealthStatus::Critical,
                        format!("gRPC check {}: failed with status {}", self.target, status.as_str_name()),
                    )
                }
            }
            Err(e) => Probe::new(HealthStatus::Critical, format!("gRPC check {}: {}", self.target, e.message())),
        }
    }
}
