//! Anti-entropy with the servers, as Consul's agent does it: changes are pushed as they happen
//! (only what changed travels), and every `sync_interval` (with jitter) a full pass reads what the
//! servers hold for this node and repairs drift both ways. Failed pushes retry with backoff.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::agent::Agent;
use crate::api::{CatalogNode, DeregisterRequest, HealthCheck, RegisterRequest};
use crate::client::Client;

/// Where the agent's writes go: the servers' HTTP API from a sidecar, Raft from a server.
#[async_trait::async_trait]
pub trait Catalog: Send + Sync {
    async fn register(&self, r: &RegisterRequest) -> Result<(), String>;
    async fn deregister(&self, r: &DeregisterRequest) -> Result<(), String>;
    /// What the catalog holds for a node: the node with its services (None: unknown), its checks.
    async fn node(&self, name: &str) -> Result<(Option<CatalogNode>, Vec<HealthCheck>), String>;
}

#[async_trait::async_trait]
impl Catalog for Client {
    async fn register(&self, r: &RegisterRequest) -> Result<(), String> {
        self.catalog_register(r).await.map_err(|e| e.to_string())
    }

    async fn deregister(&self, r: &DeregisterRequest) -> Result<(), String> {
        self.catalog_deregister(r).await.map_err(|e| e.to_string())
    }

    async fn node(&self, name: &str) -> Result<(Option<CatalogNode>, Vec<HealthCheck>), String> {
        let remote = self.catalog_node(name).await.map_err(|e| e.to_string())?;
        let checks = match remote {
            Some(_) => self.health_node(name).await.map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        Ok((remote, checks))
    }
}

/// One full pass: read the servers' view of this node, mark the drift, push.
pub async fn full_sync(agent: &Agent, catalog: &dyn Catalog) -> Result<(), String> {
    let (remote, checks) = catalog.node(&agent.node().name).await?;
    agent.with_state(|s| s.compare(remote.as_ref(), &checks));
    push(agent, catalog).await
}

/// Pushes everything pending; stops at the first failure (the rest stays pending).
pub async fn push(agent: &Agent, client: &dyn Catalog) -> Result<(), String> {
    let pending = agent.with_state(|s| s.pending());
    if pending.is_empty() {
        return Ok(());
    }
    if let Some((_, r)) = &pending.node {
        client.register(r).await.map_err(|e| format!("registering the node: {e}"))?;
        agent.with_state(|s| s.node_synced());
        tracing::info!("Synced node info");
    }
    for (id, version, r) in &pending.services {
        client.register(r).await.map_err(|e| format!("registering service {id}: {e}"))?;
        agent.with_state(|s| s.service_synced(id, *version, r));
        tracing::info!(service = %id, "Synced service");
    }
    for (id, version, r) in &pending.checks {
        client.register(r).await.map_err(|e| format!("updating check {id}: {e}"))?;
        agent.with_state(|s| s.check_synced(id, *version));
        tracing::info!(check = %id, "Synced check");
    }
    for (id, r) in &pending.removed_services {
        client.deregister(r).await.map_err(|e| format!("deregistering service {id}: {e}"))?;
        agent.with_state(|s| s.service_removed(id));
        tracing::info!(service = %id, "Deregistered service");
    }
    for (id, r) in &pending.removed_checks {
        client.deregister(r).await.map_err(|e| format!("deregistering check {id}: {e}"))?;
        agent.with_state(|s| s.check_removed(id));
        tracing::info!(check = %id, "Deregistered check");
    }
    Ok(())
}

/// Runs until `shutdown` flips: a full pass at start and every interval, pushes on every change.
pub async fn sync_loop(
    agent: Arc<Agent>,
    client: Arc<dyn Catalog>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::ZERO;
    let mut next_full = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        let result = if now >= next_full {
            let r = full_sync(&agent, &*client).await;
            if r.is_ok() {
                // Up to 1/8 jitter so a fleet started together does not sync in lockstep.
                let jitter = interval.mul_f64(rand::random::<f64>() / 8.0);
                next_full = now + interval + jitter;
            }
            r
        } else {
            push(&agent, &*client).await
        };
        match result {
            Ok(()) => backoff = Duration::ZERO,
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(250), Duration::from_secs(15));
                tracing::warn!(error = %e, retry_in = ?backoff, "sync with the servers failed");
            }
        }
        let wait =
            if backoff.is_zero() { next_full.saturating_duration_since(tokio::time::Instant::now()) } else { backoff };
        tokio::select! {
            _ = agent.changed.notified(), if backoff.is_zero() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
