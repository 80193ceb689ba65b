//! The ServiceRegistration controller: with a finalizer, apply = register in the catalog and report
//! registered + health; cleanup = deregister, then let the resource go.

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;

use super::{aggregate_health, build, deregistration, placement, FINALIZER};
use crate::crd::{ServiceRegistration, ServiceRegistrationStatus};
use crate::registry_api::{condition, error_policy, patch_status, reconcile_with_finalizer, Context, Error};

async fn apply(sr: Arc<ServiceRegistration>, ctx: &Context, api: Api<ServiceRegistration>) -> Result<Action, Error> {
    let name = sr.name_any();
    let generation = sr.metadata.generation;
    let previous = sr.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let request = match build(&sr) {
        Ok(r) => r,
        Err(errors) => {
            let message = errors.join("; ");
            let status = serde_json::json!({
                "registered": false,
                "observedGeneration": generation,
                "conditions": [condition(&previous, "Registered", false, "InvalidSpec", message.clone(), generation)],
            });
            patch_status(&api, &name, status).await?;
            ctx.event_on_change(sr.as_ref(), &previous, "Registered", false, "InvalidSpec", message).await;
            return Ok(Action::await_change());
        }
    };
    let ns = sr.namespace().unwrap_or_else(|| "default".into());
    let registry = ctx.registry(&ns, sr.spec.cluster.as_deref()).await?;
    registry.catalog_register(&request).await?;
    let p = placement(&sr);
    let checks = registry.health_node(&p.node).await?;
    let health = aggregate_health(&checks, &p.service_id);
    let status = ServiceRegistrationStatus {
        registered: true,
        health: Some(health.as_str().to_string()),
        observed_generation: generation,
        conditions: Vec::new(),
    };
    let mut value = serde_json::to_value(&status).unwrap_or_default();
    let healthy = health == registry::api::HealthStatus::Passing;
    let placed = format!("{} on node {}", p.service_id, p.node);
    let checks = format!("checks: {}", health.as_str());
    value["conditions"] = serde_json::json!([
        condition(&previous, "Registered", true, "InCatalog", placed.clone(), generation),
        condition(&previous, "Healthy", healthy, health.as_str(), checks.clone(), generation),
    ]);
    patch_status(&api, &name, value).await?;
    ctx.event_on_change(sr.as_ref(), &previous, "Registered", true, "Registered", placed).await;
    let reason = if healthy { "Healthy" } else { "Unhealthy" };
    ctx.event_on_change(sr.as_ref(), &previous, "Healthy", healthy, reason, checks).await;
    // Health changes reach us through `registry_changes` (a blocking query); this is a safety net.
    Ok(Action::requeue(Duration::from_secs(600)))
}

async fn cleanup(sr: Arc<ServiceRegistration>, ctx: &Context) -> Result<Action, Error> {
    let ns = sr.namespace().unwrap_or_else(|| "default".into());
    let registry = ctx.registry(&ns, sr.spec.cluster.as_deref()).await?;
    registry.catalog_deregister(&deregistration(&sr)).await?;
    ctx.event(sr.as_ref(), true, "Deregistered", format!("{} removed from the catalog", placement(&sr).service_id))
        .await;
    Ok(Action::await_change())
}

pub async fn reconcile(sr: Arc<ServiceRegistration>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_with_finalizer(sr, &ctx, FINALIZER, |sr, api| apply(sr, &ctx, api), |sr| cleanup(sr, &ctx)).await
}

/// Runs the controller until SIGTERM or Ctrl-C, with the context the registry controllers share.
pub async fn run(ctx: Arc<Context>, metrics: Arc<crate::telemetry::Metrics>) {
    let client = ctx.client.clone();
    // Any check changing state in a registry reconciles at once: status within a second, no polling.
    let changes = crate::registry_api::registry_changes(ctx.clone(), "/v1/health/state/critical");
    let controller = Controller::new(Api::<ServiceRegistration>::all(client.clone()), watcher::Config::default())
        .reconcile_all_on(changes);
    crate::telemetry::drive(controller, "service-registration", reconcile, error_policy, ctx, metrics).await;
}
