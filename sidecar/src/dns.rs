//! The sidecar's side of the DNS interface: it answers its pod's resolver on the pod's loopback,
//! asking the servers (as a Consul client agent asks its servers), with the agent's default token
//! else its own, so answers hold what that token may read.

use std::sync::Arc;

use registry::agent::Agent;
use registry::api::{CatalogNode, ServiceEntry};
use registry::client::Client;
use registry::dns::answer::{self, Want};
use registry::dns::plain;

pub struct ServersCatalog {
    pub client: Client,
    pub agent: Arc<Agent>,
    pub datacenter: String,
}

impl ServersCatalog {
    fn client(&self) -> Client {
        match self.agent.token("default") {
            Some(t) => self.client.clone().with_token(Some(t)),
            None => self.client.clone(),
        }
    }
}

#[async_trait::async_trait]
impl registry::dns::Catalog for ServersCatalog {
    fn datacenter(&self) -> String {
        self.datacenter.clone()
    }

    async fn service(&self, name: &str, want: &Want<'_>) -> Result<(Vec<ServiceEntry>, bool), String> {
        if !plain(name) {
            return Ok((Vec::new(), false));
        }
        let all = self
            .client()
            .health_service_in(name, false, want.datacenter)
            .await
            .map(|i| i.value)
            .map_err(|e| e.to_string())?;
        Ok(answer::pick(answer::healthy(all, want), want.limit))
    }

    async fn query(&self, name: &str, want: &Want<'_>) -> Result<Option<(Vec<ServiceEntry>, bool)>, String> {
        if !plain(name) {
            return Ok(None);
        }
        let found = self.client().query_execute(name, want.datacenter).await.map_err(|e| e.to_string())?;
        Ok(found.map(|r| answer::pick(answer::healthy(r.nodes, want), want.limit)))
    }

    async fn node(&self, name: &str, dc: Option<&str>) -> Result<Option<CatalogNode>, String> {
        if !plain(name) {
            return Ok(None);
        }
        self.client().catalog_node_in(name, dc).await.map_err(|e| e.to_string())
    }
}
