//! Clients for dialling other servers: their RPC ports (Raft, joins, forwarded writes; this
//! datacenter) and their HTTP APIs (forwarding to the leader or to another datacenter), over TLS as
//! Consul's `verify_outgoing` and `verify_server_hostname` say.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{server_name, Expect, Material};

/// TLS for outgoing connections to servers.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub material: Arc<Material>,
    /// Dial RPC ports over TLS (Consul's `verify_outgoing`).
    pub verify_outgoing: bool,
    /// Servers' certificates must name `server.<dc>.<domain>`.
    pub verify_server_hostname: bool,
    pub domain: String,
}

pub struct Dialer {
    tls: Option<Outgoing>,
    datacenter: String,
    rpc: reqwest::Client,
    api: Mutex<HashMap<String, reqwest::Client>>,
}

impl Dialer {
    pub fn new(tls: Option<Outgoing>, datacenter: &str) -> Result<Self, String> {
        let rpc_tls = tls.as_ref().filter(|t| t.verify_outgoing);
        let rpc = client(rpc_tls, datacenter)?
            .pool_max_idle_per_host(8)
            .connect_timeout(Duration::from_millis(500))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Dialer { tls, datacenter: datacenter.to_string(), rpc, api: Mutex::new(HashMap::new()) })
    }

    /// The client for this datacenter's servers' RPC ports, and the URL of `path` on one.
    pub fn rpc(&self) -> &reqwest::Client {
        &self.rpc
    }

    pub fn rpc_url(&self, rpc_addr: &str, path: &str) -> String {
        let scheme = if self.tls.as_ref().is_some_and(|t| t.verify_outgoing) { "https" } else { "http" };
        format!("{scheme}://{rpc_addr}{path}")
    }

    /// The client for the HTTP APIs of `datacenter`'s servers (each announces `https://...` when it
    /// serves HTTPS; plain addresses are dialled as they are).
    pub fn api(&self, datacenter: &str) -> Result<reqwest::Client, String> {
        let mut clients = self.api.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(datacenter) {
            return Ok(c.clone());
        }
        let c = client(self.tls.as_ref(), datacenter)?.build().map_err(|e| e.to_string())?;
        clients.insert(datacenter.to_string(), c.clone());
        Ok(c)
    }

    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }
}

/// A server's HTTP API address as announced: `host:port` (plain) or `https://host:port`.
pub fn api_url(announced: &str, path_and_query: &str) -> String {
    if announced.starts_with("https://") || announced.starts_with("http://") {
        format!("{announced}{path_and_query}")
    } else {
        format!("http://{announced}{path_and_query}")
    }
}

fn client(tls: Option<&Outgoing>, datacenter: &str) -> Result<reqwest::ClientBuilder, String> {
    let builder = crate::client::http_builder();
    let Some(t) = tls else { return Ok(builder) };
    let expect =
        if t.verify_server_hostname { Expect::Name(server_name(datacenter, &t.domain)) } else { Expect::Chain };
    Ok(builder.use_preconfigured_tls(t.material.client_config(expect)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_api_addresses_keep_their_scheme() {
        assert_eq!(api_url("10.0.0.1:8500", "/v1/kv/a"), "http://10.0.0.1:8500/v1/kv/a");
        assert_eq!(api_url("https://10.0.0.1:8501", "/v1/kv/a"), "https://10.0.0.1:8501/v1/kv/a");
    }
}
