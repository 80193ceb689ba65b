//! The AclPolicy controller: with a finalizer, apply = create or update the policy, and when asked,
//! a token bound to it whose SecretID goes into a Kubernetes Secret (owned by the resource);
//! cleanup = delete the token and the policy from the registry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use super::{build, differs, policy_name, token_for, FINALIZER};
use crate::crd::AclPolicy;
use crate::registry_api::{condition, error_policy, patch_status, reconcile_with_finalizer, Context, Error};

async fn apply(p: Arc<AclPolicy>, ctx: &Context, api: Api<AclPolicy>) -> Result<Action, Error> {
    let name = p.name_any();
    let ns = p.namespace().unwrap_or_else(|| "default".into());
    let generation = p.metadata.generation;
    let previous = p.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let reg = ctx.registry(&p.namespace().unwrap_or_else(|| "default".into()), p.spec.cluster.as_deref()).await?;
    let existing = reg.acl_policy_by_name(&policy_name(&p)).await?;
    let want = match build(&p, existing.as_ref().map(|e| e.id.as_str())) {
        Ok(w) => w,
        Err(errors) => {
            let message = errors.join("; ");
            let status = serde_json::json!({
                "observedGeneration": generation,
                "conditions": [condition(&previous, "Ready", false, "InvalidSpec", message.clone(), generation)],
            });
            patch_status(&api, &name, status).await?;
            ctx.event_on_change(p.as_ref(), &previous, "Ready", false, "InvalidSpec", message).await;
            return Ok(Action::await_change());
        }
    };
    let policy = match existing {
        Some(have) if !differs(&have, &want) => have,
        _ => reg.acl_policy_write(&want).await?,
    };
    let mut accessor = p.status.as_ref().and_then(|s| s.token_accessor_id.clone());
    if let Some(spec) = &p.spec.token {
        let alive = match &accessor {
            Some(a) => reg.acl_token_read(a).await?.is_some(),
            None => false,
        };
        if !alive {
            let token = reg.acl_token_create(&token_for(&p, &policy)).await?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(spec.secret_name.clone()),
                    namespace: Some(ns.clone()),
                    owner_references: p.controller_owner_ref(&()).map(|o| vec![o]),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(BTreeMap::from([("token".to_string(), ByteString(token.secret_id.clone().into_bytes()))])),
                ..Default::default()
            };
            Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                .patch(&spec.secret_name, &PatchParams::apply(crate::MANAGER).force(), &Patch::Apply(&secret))
                .await?;
            ctx.event(
                p.as_ref(),
                true,
                "TokenCreated",
                format!("token for the policy stored in Secret {}", spec.secret_name),
            )
            .await;
            accessor = Some(token.accessor_id);
        }
    }
    let status = serde_json::json!({
        "policyId": policy.id,
        "tokenAccessorId": accessor,
        "observedGeneration": generation,
        "conditions": [condition(&previous, "Ready", true, "InRegistry", format!("policy {}", policy.name), generation)],
    });
    patch_status(&api, &name, status).await?;
    ctx.event_on_change(p.as_ref(), &previous, "Ready", true, "PolicyWritten", format!("policy {}", policy.name)).await;
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn cleanup(p: Arc<AclPolicy>, ctx: &Context) -> Result<Action, Error> {
    let reg = ctx.registry(&p.namespace().unwrap_or_else(|| "default".into()), p.spec.cluster.as_deref()).await?;
    if let Some(accessor) = p.status.as_ref().and_then(|s| s.token_accessor_id.as_deref()) {
        reg.acl_token_delete(accessor).await?;
    }
    if let Some(existing) = reg.acl_policy_by_name(&policy_name(&p)).await? {
        reg.acl_policy_delete(&existing.id).await?;
    }
    // The token Secret is owned by the resource: Kubernetes deletes it with it.
    ctx.event(p.as_ref(), true, "Deleted", "token and policy removed from the registry".to_string()).await;
    Ok(Action::await_change())
}

pub async fn reconcile(p: Arc<AclPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_with_finalizer(p, &ctx, FINALIZER, |p, api| apply(p, &ctx, api), |p| cleanup(p, &ctx)).await
}

/// Runs the controller until SIGTERM or Ctrl-C, with the context the registry controllers share.
pub async fn run(ctx: Arc<Context>, metrics: Arc<crate::telemetry::Metrics>) {
    let client = ctx.client.clone();
    let controller = Controller::new(Api::<AclPolicy>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Secret>::all(client), watcher::Config::default());
    crate::telemetry::drive(controller, "acl-policy", reconcile, error_policy, ctx, metrics).await;
}
