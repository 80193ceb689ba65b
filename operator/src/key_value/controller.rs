//! The KeyValue controller: with a finalizer, apply = carry out the CAS plan and report sync and
//! drift; cleanup = delete the keys still as we wrote them (unless `retainOnDelete`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;

use super::{deletions, desired, plan, Current, FINALIZER};
use crate::crd::KeyValue;
use crate::registry_api::{condition, error_policy, patch_status, reconcile_with_finalizer, Context, Error};

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

async fn apply(kv: Arc<KeyValue>, ctx: &Context, api: Api<KeyValue>) -> Result<Action, Error> {
    let name = kv.name_any();
    let generation = kv.metadata.generation;
    let previous = kv.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let source = read_source(&kv, ctx).await?;
    let want = match desired(&kv, source.as_ref()) {
        Ok(w) => w,
        Err(errors) => {
            let message = errors.join("; ");
            let status = serde_json::json!({
                "synced": false,
                "observedGeneration": generation,
                "conditions": [condition(&previous, "Synced", false, "InvalidSpec", message.clone(), generation)],
            });
            patch_status(&api, &name, status).await?;
            ctx.event_on_change(kv.as_ref(), &previous, "Synced", false, "InvalidSpec", message).await;
            return Ok(Action::await_change());
        }
    };
    let ns = kv.namespace().unwrap_or_else(|| "default".into());
    let registry = ctx.registry(&ns, kv.spec.cluster.as_deref()).await?;
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
            condition(&previous, "Synced", synced, if synced { "AsSpecified" } else { "Drifted" }, message.clone(), generation),
            condition(&previous, "Drifted", !synced, if synced { "NoDrift" } else { "ChangedElsewhere" }, message.clone(), generation),
        ],
    });
    patch_status(&api, &name, status).await?;
    let reason = if synced { "Synced" } else { "Drifted" };
    ctx.event_on_change(kv.as_ref(), &previous, "Synced", synced, reason, message).await;
    // Changes by others reach us through `registry_changes` (a blocking query); a safety net.
    Ok(Action::requeue(Duration::from_secs(600)))
}

async fn cleanup(kv: Arc<KeyValue>, ctx: &Context) -> Result<Action, Error> {
    if kv.spec.retain_on_delete {
        return Ok(Action::await_change());
    }
    let ns = kv.namespace().unwrap_or_else(|| "default".into());
    let registry = ctx.registry(&ns, kv.spec.cluster.as_deref()).await?;
    let ours = kv.status.as_ref().map(|s| s.written_indexes.clone()).unwrap_or_default();
    let now = current(&registry, ours.keys()).await?;
    let gone = deletions(&ours, &now);
    for (key, index) in &gone {
        registry.kv_delete(key, Some(*index)).await?;
    }
    let note = format!("{} key(s) deleted from the registry; others were changed elsewhere or retained", gone.len());
    ctx.event(kv.as_ref(), true, "Deleted", note).await;
    Ok(Action::await_change())
}

pub async fn reconcile(kv: Arc<KeyValue>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_with_finalizer(kv, &ctx, FINALIZER, |kv, api| apply(kv, &ctx, api), |kv| cleanup(kv, &ctx)).await
}

/// Runs the controller until SIGTERM or Ctrl-C, with the context the registry controllers share.
pub async fn run(ctx: Arc<Context>, metrics: Arc<crate::telemetry::Metrics>) {
    let client = ctx.client.clone();
    // Any KV write in a registry reconciles at once, so drift shows within a second, no polling
    // (the top level of the whole tree: its index is the KV table's, its answer small).
    let changes = crate::registry_api::registry_changes(ctx.clone(), "/v1/kv/?keys&separator=/");
    let controller =
        Controller::new(Api::<KeyValue>::all(client.clone()), watcher::Config::default()).reconcile_all_on(changes);
    crate::telemetry::drive(controller, "key-value", reconcile, error_policy, ctx, metrics).await;
}
