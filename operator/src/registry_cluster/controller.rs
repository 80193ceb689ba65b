//! The RegistryCluster controller: one `Context`, `reconcile` as a free function running the
//! pipeline validate -> build -> apply (server-side apply under one field manager) -> status.
//! It watches the clusters and the objects they own, so a deleted or edited StatefulSet is put back.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;

use super::status::{self, Observed};
use super::{build, validate, Desired, DEFAULT_IMAGE};
use crate::crd::{RegistryCluster, RegistryClusterStatus};
use crate::MANAGER;

pub struct Context {
    pub client: Client,
    /// Ask the servers themselves for leader and Raft index (off in tests: no servers there).
    pub query_registry: bool,
    pub http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serializing {0}: {1}")]
    Serialize(&'static str, serde_json::Error),
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    Ok(api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj)).await?)
}

async fn apply_all(client: &Client, ns: &str, d: &Desired) -> Result<StatefulSet, Error> {
    apply(client, ns, &d.headless_service).await?;
    apply(client, ns, &d.client_service).await?;
    let sts = apply(client, ns, &d.stateful_set).await?;
    apply(client, ns, &d.pdb).await?;
    Ok(sts)
}

async fn patch_status(api: &Api<RegistryCluster>, name: &str, status: RegistryClusterStatus) -> Result<(), Error> {
    let body = serde_json::json!({
        "apiVersion": "roster.dev/v1alpha1",
        "kind": "RegistryCluster",
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(())
}

/// Leader and last index as the servers report them through the client Service.
async fn ask_registry(ctx: &Context, name: &str, ns: &str) -> (Option<String>, Option<u64>) {
    let base = format!("http://{name}.{ns}.svc:{}", super::build::HTTP_PORT);
    let leader = async {
        let r = ctx.http.get(format!("{base}/v1/status/leader")).send().await.ok()?;
        let index = r.headers().get("x-consul-index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let addr: String = r.json().await.ok()?;
        // The leader is advertised as <pod>.<headless>.<ns>.svc:8300: the pod name is what users know.
        let pod = addr.split('.').next().map(str::to_string).filter(|p| !p.is_empty());
        Some((pod, index))
    };
    leader.await.unwrap_or((None, None))
}

pub async fn reconcile(rc: Arc<RegistryCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = rc.namespace().unwrap_or_else(|| "default".into());
    let name = rc.name_any();
    let clusters: Api<RegistryCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let valid = match validate(&rc, DEFAULT_IMAGE) {
        Ok(v) => v,
        Err(errors) => {
            tracing::warn!(cluster = %name, namespace = %ns, ?errors, "invalid spec");
            patch_status(&clusters, &name, status::invalid(&rc, &errors, now())).await?;
            return Ok(Action::await_change());
        }
    };
    let desired = build(&valid, rc.controller_owner_ref(&()));
    let sts = apply_all(&ctx.client, &ns, &desired).await?;
    let ready_servers = sts.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
    let (leader, last_raft_index) =
        if ctx.query_registry && ready_servers > 0 { ask_registry(&ctx, &name, &ns).await } else { (None, None) };
    let seen = Observed { ready_servers, leader, last_raft_index };
    patch_status(&clusters, &name, status::observed(&rc, valid.replicas, &seen, now())).await?;
    // Owned objects wake us on change; the periodic pass refreshes leader and index.
    Ok(Action::requeue(Duration::from_secs(30)))
}

pub fn error_policy(rc: Arc<RegistryCluster>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(cluster = %rc.name_any(), %error, "reconcile failed; retrying in 15 s");
    Action::requeue(Duration::from_secs(15))
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(client: Client) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        query_registry: true,
        http: registry::client::http_builder().timeout(Duration::from_secs(2)).build().unwrap_or_default(),
    });
    Controller::new(Api::<RegistryCluster>::all(client.clone()), watcher::Config::default())
        .owns(Api::<StatefulSet>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Service>::all(client.clone()), watcher::Config::default())
        .owns(Api::<PodDisruptionBudget>::all(client), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(cluster = %obj.name, "reconciled"),
                Err(e) => tracing::warn!(error = %e, "reconcile error"),
            }
        })
        .await;
}
