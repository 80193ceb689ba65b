//! The KeyValue controller: with a finalizer, apply = carry out the CAS plan and report sync and
//! drift; cleanup = delete the keys still as we wrote them (unless `retainOnDelete`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{finalizer, Event};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use super::{deletions, desired, plan, Current, FINALIZER};
use crate::crd::KeyValue;
use crate::registry_api::{condition, patch_status, registry_for};

pub struct Context {
    pub client: Client,
    /// The registry's HTTP address; None: the cluster's client Service (`<cluster>.<ns>.svc:8500`).
    pub registry_addr: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("registry: {0}")]
    Registry(#[from] registry::client::ClientError),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

/// The ConfigMap's or Secret's data, when the resource takes its values from one.
async fn read_source(kv: &KeyValue, ctx: &Context) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
    let Some(from) = &kv.spec.value_from else { return Ok(None) };
    let ns = kv.namespace().unwrap_or_else(|| "default".into());
    if let Some(name) = &from.config_map {
        let Some(cm) = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns).get_opt(name).await? else {
            return Ok(None);
        };
        let mut data: BTreeMap<String, Vec<u8>> =
            cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        data.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
        return Ok(Some(data));
    }
    if let Some(name) = &from.secret {
        let Some(secret) = Api::<Secret>::namespaced(ctx.client.clone(), &ns).get_opt(name).await? else {
            return Ok(None);
        };
        return Ok(Some(secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()));
    }
    Ok(None)
}

async fn current(
    registry: &registry::client::Client,
    keys: impl Iterator<Item = &String>,
) -> Result<BTreeMap<String, Current>, Error> {
    let mut out = BTreeMap::new();
    for key in keys {
        if let Some(pair) = registry.kv_get(key).await?.value {
            out.insert(key.clone(), Current { value: pair.value.unwrap_or_default(), modify_index: pair.modify_index });
        }
    }
    Ok(out)
}

async fn apply(kv: Arc<KeyValue>, ctx: &Context, api: &Api<KeyValue>) -> Result<Action, Error> {
    let name = kv.name_any();
    let generation = kv.metadata.generation;
    let source = read_source(&kv, ctx).await?;
    let want = match desired(&kv, source.as_ref()) {
        Ok(w) => w,
        Err(errors) => {
            let status = serde_json::json!({
                "synced": false,
                "observedGeneration": generation,
                "conditions": [condition("Synced", false, "InvalidSpec", errors.join("; "), generation)],
            });
            patch_status(api, &name, status).await?;
            return Ok(Action::await_change());
        }
    };
    let ns = kv.namespace().unwrap_or_else(|| "default".into());
    let registry = registry_for(&ns, kv.spec.cluster.as_deref(), ctx.registry_addr.as_deref())?;
    let ours = kv.status.as_ref().map(|s| s.written_indexes.clone()).unwrap_or_default();
    let now = current(&registry, want.keys()).await?;
    let p = plan(&want, &now, &ours);
    let mut written = p.in_sync.clone();
    let mut drifted = p.drifted.clone();
    for w in &p.writes {
        if registry.kv_put(&w.key, w.value.clone(), Some(w.cas)).await? {
            if let Some(pair) = registry.kv_get(&w.key).await?.value {
                written.insert(w.key.clone(), pair.modify_index);
            }
        } else {
            // Lost the CAS: someone wrote it between our read and our write.
            drifted.push(w.key.clone());
        }
    }
    drifted.sort();
    let synced = drifted.is_empty();
    let message = if synced {
        format!("{} key(s) as specified", want.len())
    } else {
        format!("changed in the registry by someone else, left alone: {}", drifted.join(", "))
    };
    let status = serde_json::json!({
        "synced": synced,
        "driftedKeys": drifted,
        "writtenIndexes": written,
        "observedGeneration": generation,
        "conditions": [
            condition("Synced", synced, if synced { "AsSpecified" } else { "Drifted" }, message.clone(), generation),
            condition("Drifted", !synced, if synced { "NoDrift" } else { "ChangedElsewhere" }, message, generation),
        ],
    });
    patch_status(api, &name, status).await?;
    // Drift happens in the registry, which is not watched: look again now and then.
    Ok(Action::requeue(Duration::from_secs(60)))
}

async fn cleanup(kv: Arc<KeyValue>, ctx: &Context) -> Result<Action, Error> {
    if kv.spec.retain_on_delete {
        return Ok(Action::await_change());
    }
    let ns = kv.namespace().unwrap_or_else(|| "default".into());
    let registry = registry_for(&ns, kv.spec.cluster.as_deref(), ctx.registry_addr.as_deref())?;
    let ours = kv.status.as_ref().map(|s| s.written_indexes.clone()).unwrap_or_default();
    let now = current(&registry, ours.keys()).await?;
    for (key, index) in deletions(&ours, &now) {
        registry.kv_delete(&key, Some(index)).await?;
    }
    Ok(Action::await_change())
}

pub async fn reconcile(kv: Arc<KeyValue>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = kv.namespace().unwrap_or_else(|| "default".into());
    let api: Api<KeyValue> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, kv, |event| async {
        match event {
            Event::Apply(kv) => apply(kv, &ctx, &api).await,
            Event::Cleanup(kv) => cleanup(kv, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub fn error_policy(kv: Arc<KeyValue>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(keyvalue = %kv.name_any(), %error, "reconcile failed; retrying in 15 s");
    Action::requeue(Duration::from_secs(15))
}

pub async fn run(client: Client, registry_addr: Option<String>) {
    let ctx = Arc::new(Context { client: client.clone(), registry_addr });
    Controller::new(Api::<KeyValue>::all(client), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "key/value reconcile error");
            }
        })
        .await;
}
