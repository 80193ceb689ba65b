//! What the controllers that talk to a registry share: finding its address, writing a status with
//! server-side apply, conditions as Kubernetes API conventions shape them, and Events when they flip.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use registry::client::{Client as RegistryClient, ClientError};

/// The registry a resource in `namespace` talks to: `addr` when given (out-of-cluster runs, tests),
/// else the client Service of `cluster` (default `roster`: install the chart as release `roster`, or
/// name the cluster in the resource's `spec.cluster`).
pub fn registry_for(namespace: &str, cluster: Option<&str>, addr: Option<&str>) -> Result<RegistryClient, ClientError> {
    let addr = match addr {
        Some(a) => a.to_string(),
        None => {
            format!("{}.{namespace}.svc:{}", cluster.unwrap_or("roster"), crate::registry_cluster::build::HTTP_PORT)
        }
    };
    RegistryClient::new(vec![addr])
}

/// The Secret (key `token`) where the operator keeps the management token it got by bootstrapping
/// the ACL system of `cluster`, and uses for that cluster's registry.
pub fn bootstrap_token_secret(cluster: &str) -> String {
    format!("{cluster}-acl-bootstrap-token")
}

/// The token the operator keeps for `cluster`, if it has one.
pub async fn cluster_token(
    client: &kube::Client,
    namespace: &str,
    cluster: &str,
) -> Result<Option<String>, kube::Error> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
    let Some(secret) = secrets.get_opt(&bootstrap_token_secret(cluster)).await? else { return Ok(None) };
    Ok(secret.data.and_then(|d| d.get("token").map(|t| String::from_utf8_lossy(&t.0).into_owned())))
}

/// One condition, as JSON (the controllers build their statuses as JSON documents). Its
/// `lastTransitionTime` is kept from `previous` while the status holds, as the API conventions ask.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> serde_json::Value {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.0.to_string())
        .unwrap_or_else(|| k8s_openapi::jiff::Timestamp::now().to_string());
    serde_json::json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    })
}

/// Whether condition `type_` is true in `conditions` (None: not there).
pub fn condition_is(conditions: &[Condition], type_: &str) -> Option<bool> {
    conditions.iter().find(|c| c.type_ == type_).map(|c| c.status == "True")
}

/// Writes `status` into the resource's status subresource (server-side apply, our field manager).
pub async fn patch_status<K>(api: &Api<K>, name: &str, status: serde_json::Value) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(crate::MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(())
}

/// The error of the controllers that talk to a registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("registry: {0}")]
    Registry(#[from] ClientError),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

/// What those controllers share: the Kubernetes client, how to reach the registry, Events.
pub struct Context {
    pub client: kube::Client,
    /// The registry's HTTP address; None: each cluster's client Service.
    pub registry_addr: Option<String>,
    /// ACL token for the registry, when ACLs are on.
    pub registry_token: Option<String>,
    pub recorder: Recorder,
}

impl Context {
    pub fn new(client: kube::Client, registry_addr: Option<String>, registry_token: Option<String>) -> Self {
        let reporter = Reporter { controller: crate::MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Context { recorder: Recorder::new(client.clone(), reporter), client, registry_addr, registry_token }
    }

    /// Publishes an Event about `obj` (Normal, or Warning when `!ok`); failures are logged only.
    pub async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, ok: bool, reason: &str, note: String) {
        let ev = Event {
            type_: if ok { EventType::Normal } else { EventType::Warning },
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish an event");
        }
    }

    /// An Event when condition `type_` becomes `ok` (it was the other way, or not there).
    pub async fn event_on_change<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        previous: &[Condition],
        type_: &str,
        ok: bool,
        reason: &str,
        note: String,
    ) {
        if condition_is(previous, type_) != Some(ok) {
            self.event(obj, ok, reason, note).await;
        }
    }

    /// A registry client for a resource in `namespace` naming `cluster`, with the operator's token:
    /// the one it was given, else the one it keeps for that cluster (see `bootstrap_token_secret`).
    pub async fn registry(&self, namespace: &str, cluster: Option<&str>) -> Result<RegistryClient, Error> {
        let token = match &self.registry_token {
            Some(t) => Some(t.clone()),
            None => cluster_token(&self.client, namespace, cluster.unwrap_or("roster")).await?,
        };
        Ok(registry_for(namespace, cluster, self.registry_addr.as_deref())?.with_token(token))
    }
}

/// Runs `apply` (or, once the resource is being deleted, `cleanup`) under `finalizer_name`, so a
/// deleted resource stays until the registry side is cleaned up.
pub async fn reconcile_with_finalizer<K, A, AF, C, CF>(
    obj: std::sync::Arc<K>,
    ctx: &Context,
    finalizer_name: &str,
    apply: A,
    cleanup: C,
) -> Result<kube::runtime::controller::Action, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    A: FnOnce(std::sync::Arc<K>, Api<K>) -> AF,
    AF: std::future::Future<Output = Result<kube::runtime::controller::Action, Error>>,
    C: FnOnce(std::sync::Arc<K>) -> CF,
    CF: std::future::Future<Output = Result<kube::runtime::controller::Action, Error>>,
{
    use kube::runtime::finalizer::{finalizer, Event};
    let ns = obj.meta().namespace.clone().unwrap_or_else(|| "default".into());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, finalizer_name, obj, |event| async {
        match event {
            Event::Apply(obj) => apply(obj, api.clone()).await,
            Event::Cleanup(obj) => cleanup(obj).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Retry a failed reconcile in 15 s.
pub fn error_policy<K: kube::ResourceExt + Resource<DynamicType = ()>>(
    obj: std::sync::Arc<K>,
    error: &Error,
    _ctx: std::sync::Arc<Context>,
) -> kube::runtime::controller::Action {
    tracing::warn!(kind = %K::kind(&()), name = %obj.name_any(), %error, "reconcile failed; retrying in 15 s");
    kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(15))
}

/// How long one blocking read of a registry waits before it is asked again.
const CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Emits `()` whenever `path` (a blocking read such as `/v1/health/state/critical`, whose index is
/// the whole checks table's) changes in the
/// registry of any RegistryCluster, so a controller reconciles at once (`reconcile_all_on`) instead
/// of polling.
pub fn registry_changes(ctx: std::sync::Arc<Context>, path: &'static str) -> impl futures::Stream<Item = ()> + Send {
    let clusters = Api::<crate::crd::RegistryCluster>::all(ctx.client.clone());
    changes_of(
        move || {
            let (ctx, clusters) = (ctx.clone(), clusters.clone());
            async move {
                let mut out = Vec::new();
                for c in clusters.list(&Default::default()).await.map(|l| l.items).unwrap_or_default() {
                    let ns = c.namespace().unwrap_or_else(|| "default".into());
                    if let Ok(r) = ctx.registry(&ns, Some(&c.name_any())).await {
                        out.push((format!("{ns}/{}", c.name_any()), r));
                    }
                }
                out
            }
        },
        path,
    )
}

/// The mechanism of `registry_changes`, over any source of registries (named): each round holds one
/// blocking query per registry; the first to answer with a new index triggers, and the round starts
/// again with the registries the source gives then.
pub fn changes_of<F, Fut>(mut registries: F, path: &'static str) -> impl futures::Stream<Item = ()> + Send
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Vec<(String, RegistryClient)>> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let mut seen: std::collections::HashMap<String, u64> = Default::default();
        loop {
            let list = registries().await;
            if list.is_empty() {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                continue;
            }
            let waits = list.into_iter().map(|(name, registry)| {
                let from = seen.get(&name).copied().unwrap_or(0);
                Box::pin(async move { (name, from, registry.wait_index(path, from, CHANGE_WAIT).await) })
            });
            let ((name, from, answer), _, _) = futures::future::select_all(waits).await;
            match answer {
                Ok(index) => {
                    seen.insert(name, index);
                    // The first read of a registry only learns where it stands.
                    if from != 0 && index != from && tx.send(()).await.is_err() {
                        return;
                    }
                }
                // An unreachable registry: do not spin on it.
                Err(_) => tokio::time::sleep(std::time::Duration::from_secs(2)).await,
            }
        }
    });
    // poll_fn, not unfold: a `next()` cancelled by a timeout must not lose the receiver.
    let mut rx = rx;
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let earlier: Condition = serde_json::from_value(serde_json::json!({
            "type": "Synced", "status": "True", "reason": "AsSpecified", "message": "",
            "lastTransitionTime": "2026-11-25T10:00:00Z"
        }))
        .expect("condition");
        let held = condition(std::slice::from_ref(&earlier), "Synced", true, "AsSpecified", "2 keys".into(), Some(3));
        assert_eq!(held["lastTransitionTime"], "2026-11-25T10:00:00Z");
        assert_eq!(held["observedGeneration"], 3);
        let flipped =
            condition(std::slice::from_ref(&earlier), "Synced", false, "Drifted", "app/level".into(), Some(3));
        assert_ne!(flipped["lastTransitionTime"], "2026-11-25T10:00:00Z");
        assert_eq!(condition_is(&[earlier], "Synced"), Some(true));
        assert_eq!(condition_is(&[], "Synced"), None);
    }
}
