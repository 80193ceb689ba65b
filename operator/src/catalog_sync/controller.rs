//! The thin side of catalog sync: two watch tasks keep the `SyncIndex` (Services, EndpointSlices),
//! and a pass per RegistryCluster with `spec.catalogSync.toRegistry` writes the plan, on every
//! change (debounced by a second) and every 30 s.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::ResourceExt;
use tokio::sync::Notify;

use super::{desired, plan, SyncIndex, SyncPlan, SYNC_NODE};
use crate::crd::RegistryCluster;
use crate::registry_api::{Context, Error};

const PASS_INTERVAL: Duration = Duration::from_secs(30);

/// Both halves of the index, each None until its first full list arrived.
#[derive(Default)]
struct Shared {
    index: SyncIndex,
    services_listed: bool,
    slices_listed: bool,
}

type SharedIndex = Arc<Mutex<Shared>>;

/// Feeds one kind into the index: `apply`/`delete` per event, `reset` after a full (re)list.
async fn watch<K, A, D, R>(api: Api<K>, index: SharedIndex, wake: Arc<Notify>, apply: A, delete: D, reset: R)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    A: Fn(&mut Shared, &K),
    D: Fn(&mut Shared, &K),
    R: Fn(&mut Shared, &[K]),
{
    let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
    let mut listing: Vec<K> = Vec::new();
    while let Some(event) = stream.next().await {
        let mut shared = index.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(o)) => listing.push(o),
            Ok(Event::InitDone) => reset(&mut shared, &std::mem::take(&mut listing)),
            Ok(Event::Apply(o)) => apply(&mut shared, &o),
            Ok(Event::Delete(o)) => delete(&mut shared, &o),
            Err(e) => {
                tracing::warn!(error = %e, "catalog sync watch");
                continue;
            }
        }
        wake.notify_one();
    }
}

/// Writes one cluster's plan; returns it.
pub async fn sync_registry(
    registry: &registry::client::Client,
    index: &SyncIndex,
    namespaces: &[String],
) -> Result<SyncPlan, Error> {
    let node = registry.catalog_node(SYNC_NODE).await?;
    let checks = if node.is_some() { registry.health_node(SYNC_NODE).await? } else { Vec::new() };
    let wanted = desired(index, namespaces);
    let p = plan(&wanted, node.as_ref(), &checks);
    for r in &p.register {
        registry.catalog_register(r).await?;
    }
    for d in &p.deregister {
        registry.catalog_deregister(d).await?;
    }
    if !p.register.is_empty() || !p.deregister.is_empty() {
        tracing::info!(registered = p.register.len(), deregistered = p.deregister.len(), "catalog sync");
    }
    Ok(p)
}

/// Runs until the process stops.
pub async fn run(ctx: Arc<Context>) {
    let index: SharedIndex = Arc::default();
    let wake = Arc::new(Notify::new());
    tokio::spawn(watch(
        Api::<Service>::all(ctx.client.clone()),
        index.clone(),
        wake.clone(),
        |s: &mut Shared, o: &Service| s.index.apply_service(o),
        |s: &mut Shared, o: &Service| s.index.delete_service(o),
        |s: &mut Shared, l: &[Service]| {
            s.index.reset_services(l);
            s.services_listed = true;
        },
    ));
    tokio::spawn(watch(
        Api::<EndpointSlice>::all(ctx.client.clone()),
        index.clone(),
        wake.clone(),
        |s: &mut Shared, o: &EndpointSlice| s.index.apply_slice(o),
        |s: &mut Shared, o: &EndpointSlice| s.index.delete_slice(o),
        |s: &mut Shared, l: &[EndpointSlice]| {
            s.index.reset_slices(l);
            s.slices_listed = true;
        },
    ));
    let clusters = Api::<RegistryCluster>::all(ctx.client.clone());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PASS_INTERVAL) => {}
            // A burst of endpoint changes (a rollout) makes one pass.
            _ = wake.notified() => tokio::time::sleep(Duration::from_secs(1)).await,
        }
        let snapshot = {
            let s = index.lock().unwrap_or_else(|p| p.into_inner());
            // Half a picture would deregister what the other half still backs.
            (s.services_listed && s.slices_listed).then(|| s.index.clone())
        };
        let Some(snapshot) = snapshot else { continue };
        let list = match clusters.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing RegistryClusters for catalog sync");
                continue;
            }
        };
        for cluster in &list.items {
            let Some(sync) = cluster.spec.catalog_sync.as_ref().filter(|s| s.to_registry) else { continue };
            let ns = cluster.namespace().unwrap_or_else(|| "default".into());
            let result = async {
                let registry = ctx.registry(&ns, Some(&cluster.name_any())).await?;
                sync_registry(&registry, &snapshot, &sync.namespaces).await
            };
            if let Err(e) = result.await {
                tracing::warn!(cluster = %cluster.name_any(), error = %e, "catalog sync");
            }
        }
    }
}
