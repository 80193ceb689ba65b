//! The ServiceRegistration controller: with a finalizer, apply = register in the catalog and report
//! registered + health; cleanup = deregister, then let the resource go.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{finalizer, Event};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use super::{aggregate_health, build, deregistration, placement, FINALIZER};
use crate::crd::{ServiceRegistration, ServiceRegistrationStatus};
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
    Registry(String),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

async fn apply(sr: Arc<ServiceRegistration>, ctx: &Context, api: &Api<ServiceRegistration>) -> Result<Action, Error> {
    let name = sr.name_any();
    let generation = sr.metadata.generation;
    let request = match build(&sr) {
        Ok(r) => r,
        Err(errors) => {
            let message = errors.join("; ");
            let status = serde_json::json!({
                "registered": false,
                "observedGeneration": generation,
                "conditions": [condition("Registered", false, "InvalidSpec", message, generation)],
            });
            patch_status(api, &name, status).await?;
            return Ok(Action::await_change());
        }
    };
    let ns = sr.namespace().unwrap_or_else(|| "default".into());
    let registry = registry_for(&ns, sr.spec.cluster.as_deref(), ctx.registry_addr.as_deref())
        .map_err(|e| Error::Registry(e.to_string()))?;
    registry.catalog_register(&request).await.map_err(|e| Error::Registry(e.to_string()))?;
    let p = placement(&sr);
    let checks = registry.health_node(&p.node).await.map_err(|e| Error::Registry(e.to_string()))?;
    let health = aggregate_health(&checks, &p.service_id);
    let status = ServiceRegistrationStatus {
        registered: true,
        health: Some(health.as_str().to_string()),
        observed_generation: generation,
        conditions: Vec::new(),
    };
    let mut value = serde_json::to_value(&status).map_err(|e| Error::Registry(e.to_string()))?;
    value["conditions"] = serde_json::json!([
        condition("Registered", true, "InCatalog", format!("{} on node {}", p.service_id, p.node), generation),
        condition(
            "Healthy",
            health == registry::api::HealthStatus::Passing,
            health.as_str(),
            format!("checks: {health}", health = health.as_str()),
            generation
        ),
    ]);
    patch_status(api, &name, value).await?;
    // Health changes in the registry are not watched yet: look again now and then.
    Ok(Action::requeue(Duration::from_secs(60)))
}

async fn cleanup(sr: Arc<ServiceRegistration>, ctx: &Context) -> Result<Action, Error> {
    let ns = sr.namespace().unwrap_or_else(|| "default".into());
    let registry = registry_for(&ns, sr.spec.cluster.as_deref(), ctx.registry_addr.as_deref())
        .map_err(|e| Error::Registry(e.to_string()))?;
    registry.catalog_deregister(&deregistration(&sr)).await.map_err(|e| Error::Registry(e.to_string()))?;
    Ok(Action::await_change())
}

pub async fn reconcile(sr: Arc<ServiceRegistration>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = sr.namespace().unwrap_or_else(|| "default".into());
    let api: Api<ServiceRegistration> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, sr, |event| async {
        match event {
            Event::Apply(sr) => apply(sr, &ctx, &api).await,
            Event::Cleanup(sr) => cleanup(sr, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub fn error_policy(sr: Arc<ServiceRegistration>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(registration = %sr.name_any(), %error, "reconcile failed; retrying in 15 s");
    Action::requeue(Duration::from_secs(15))
}

pub async fn run(client: Client, registry_addr: Option<String>) {
    let ctx = Arc::new(Context { client: client.clone(), registry_addr });
    Controller::new(Api::<ServiceRegistration>::all(client), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "service registration reconcile error");
            }
        })
        .await;
}
