//! Anti-entropy with the servers, as Consul's agent does it: changes are pushed as they happen
//! (only what changed travels), and every `sync_interval` (with jitter) a full pass reads what the
//! servers hold for this node and repairs drift both ways. Failed pushes retry with backoff.

use std::sync::Arc;
use std::time::Duration;

use registry::client::Client;
use tokio::sync::watch;

use crate::agent::Agent;

/// One full pass: read the servers' view of this node, mark the drift, push.
pub async fn full_sync(agent: &Agent, client: &Client) -> Result<(), String> {
    let node = agent.node().name;
    let remote = client.catalog_node(&node).await.map_err(|e| e.to_string())?;
    let checks =
        if remote.is_some() { client.health_node(&node).await.map_err(|e| e.to_string())? } else { Vec::new() };
    agent.with_state(|s| s.compare(remote.as_ref(), &checks));
    push(agent, client).await
}

/// Pushes everything pending; stops at the first failure (the rest stays pending).
pub async fn push(agent: &Agent, client: &Client) -> Result<(), String> {
    let pending = agent.with_state(|s| s.pending());
    if pending.is_empty() {
        return Ok(());
    }
    if let Some((_, r)) = &pending.node {
        client.catalog_register(r).await.map_err(|e| format!("registering the node: {e}"))?;
        agent.with_state(|s| s.node_synced());
    }
    for (id, version, r) in &pending.services {
        client.catalog_register(r).await.map_err(|e| format!("registering service {id}: {e}"))?;
        agent.with_state(|s| s.service_synced(id, *version, r));
    }
    for (id, version, r) in &pending.checks {
        client.catalog_register(r).await.map_err(|e| format!("updating check {id}: {e}"))?;
        agent.with_state(|s| s.check_synced(id, *version));
    }
    for (id, r) in &pending.removed_services {
        client.catalog_deregister(r).await.map_err(|e| format!("deregistering service {id}: {e}"))?;
        agent.with_state(|s| s.service_removed(id));
    }
    for (id, r) in &pending.removed_checks {
        client.catalog_deregister(r).await.map_err(|e| format!("deregistering check {id}: {e}"))?;
        agent.with_state(|s| s.check_removed(id));
    }
    Ok(())
}

/// Runs until `shutdown` flips: a full pass at start and every interval, pushes on every change.
pub async fn sync_loop(agent: Arc<Agent>, client: Client, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::ZERO;
    let mut next_full = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        let result = if now >= next_full {
            let r = full_sync(&agent, &client).await;
            if r.is_ok() {
                // Up to 1/8 jitter so a fleet started together does not sync in lockstep.
                let jitter = interval.mul_f64(rand::random::<f64>() / 8.0);
                next_full = now + interval + jitter;
            }
            r
        } else {
            push(&agent, &client).await
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
