//! HTTP checks: 2xx is passing, 429 is warning, anything else (or no answer in time) is critical.

use std::time::Duration;

use crate::api::HealthStatus;

use super::{Check, Probe};

pub struct HttpCheck {
    client: reqwest::Client,
    url: String,
    method: reqwest::Method,
}

impl HttpCheck {
    pub fn new(url: impl Into<String>, method: reqwest::Method, timeout: Duration) -> anyhow::Result<Self> {
        let client = crate::client::http_builder().timeout(timeout).build()?;
        Ok(HttpCheck { client, url: url.into(), method })
    }
}

impl Check for HttpCheck {
    async fn probe(&self) -> Probe {
        match self.client.request(self.method.clone(), &self.url).send().await {
            Ok(resp) => {
                let code = resp.status();
                let body = resp.text().await.unwrap_or_default();
                let status = if code.is_success() {
                    HealthStatus::Passing
                } else if code == reqwest::StatusCode::TOO_MANY_REQUESTS {
                    HealthStatus::Warning
                } else {
                    HealthStatus::Critical
                };
                Probe::new(status, format!("HTTP {} {}: {} Output: {body}", self.method, self.url, code))
            }
            Err(e) => Probe::new(HealthStatus::Critical, format!("HTTP {} {}: {e}", self.method, self.url)),
        }
    }
}
