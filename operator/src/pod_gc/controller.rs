//! The thin side of `pod_gc`: a watch task keeps the `PodIndex`, and a sweep deregisters the ghosts
//! of every RegistryCluster when a pod goes and every 15 s (a pod whose sidecar was cut off goes
//! critical in gossip within seconds, after the pod event).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::ResourceExt;
use tokio::sync::Notify;

use super::{ghosts, PodIndex};
use crate::crd::RegistryCluster;
use crate::registry_api::{Context, Error};

const SWEEP_INTERVAL: Duration = Duration::from_secs(15);

/// The pod index once the first full list arrived (None before: an empty index proves nothing).
type SharedIndex = Arc<Mutex<Option<PodIndex>>>;

async fn watch_pods(client: kube::Client, index: SharedIndex, wake: Arc<Notify>) {
    let mut stream = watcher::watcher(Api::<Pod>::all(client), watcher::Config::default()).boxed();
    let mut listing: Vec<Pod> = Vec::new();
    while let Some(event) = stream.next().await {
        let mut idx = index.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(pod)) => listing.push(pod),
            Ok(Event::InitDone) => {
                idx.get_or_insert_with(PodIndex::default).reset(&std::mem::take(&mut listing));
                wake.notify_one();
            }
            Ok(Event::Apply(pod)) => {
                if let Some(i) = idx.as_mut() {
                    i.apply(&pod);
                }
                if pod.metadata.deletion_timestamp.is_some() {
                    wake.notify_one();
                }
            }
            Ok(Event::Delete(pod)) => {
                if let Some(i) = idx.as_mut() {
                    i.delete(&pod);
                }
                wake.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "watching pods"),
        }
    }
}

/// Deregisters the ghosts of one registry's catalog; returns their names.
pub async fn deregister_ghosts(registry: &registry::client::Client, pods: &PodIndex) -> Result<Vec<String>, Error> {
    let nodes = registry.catalog_nodes().await?;
    let passing = registry.health_state("passing").await?;
    let gone = ghosts(&nodes, &passing, pods);
    for node in &gone {
        let request = registry::api::DeregisterRequest { node: Some(node.clone()), ..Default::default() };
        registry.catalog_deregister(&request).await?;
        tracing::info!(%node, "deregistered a node whose pod is gone");
    }
    Ok(gone)
}

async fn sweep_cluster(ctx: &Context, cluster: &RegistryCluster, pods: &PodIndex) -> Result<usize, Error> {
    let ns = cluster.namespace().unwrap_or_else(|| "default".into());
    let registry = ctx.registry(&ns, Some(&cluster.name_any())).await?;
    Ok(deregister_ghosts(&registry, pods).await?.len())
}

/// Runs until the process stops: a pod watch and the sweeps.
pub async fn run(ctx: Arc<Context>) {
    let index: SharedIndex = Arc::new(Mutex::new(None));
    let wake = Arc::new(Notify::new());
    tokio::spawn(watch_pods(ctx.client.clone(), index.clone(), wake.clone()));
    let clusters = Api::<RegistryCluster>::all(ctx.client.clone());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            _ = wake.notified() => {}
        }
        let Some(pods) = index.lock().unwrap_or_else(|p| p.into_inner()).clone() else { continue };
        let list = match clusters.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing RegistryClusters for the ghost sweep");
                continue;
            }
        };
        for cluster in &list.items {
            if let Err(e) = sweep_cluster(&ctx, cluster, &pods).await {
                tracing::warn!(cluster = %cluster.name_any(), error = %e, "ghost sweep");
            }
        }
    }
}
