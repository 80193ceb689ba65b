//! The RegistryCluster controller: one `Context`, `reconcile` as a free function running the
//! pipeline validate -> observe (StatefulSet, pods, the servers' autopilot health) -> plan (pure,
//! `rollout`) -> build -> apply (server-side apply under one field manager) -> one Raft-aware step
//! -> status. It watches the clusters, the objects they own and their server pods, so a deleted or
//! edited StatefulSet is put back and a restarted server moves a rolling update on.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use registry::api::{AclAuthMethod, AclBindingRule, AutopilotHealth};
use serde::Serialize;

use super::rollout::{self, PodView, RaftView, Step};
use super::status::{self, Observed, TlsObserved};
use super::tls::{self, Decision};
use super::{build, kubernetes_auth, validate, Desired, ValidCluster, DEFAULT_IMAGE};
use crate::crd::{RegistryCluster, RegistryClusterStatus, TlsStatus};
use crate::MANAGER;

/// Which cluster's servers to ask, and with which ACL token.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub namespace: String,
    pub cluster: String,
    pub token: Option<String>,
}

/// What the controller needs from a cluster's servers (Raft operations and the ACL bootstrap);
/// injected, so the mock API server tests can play the servers too.
pub trait ServerAdmin: Send + Sync {
    /// Autopilot health as the leader reports it.
    fn health<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<AutopilotHealth, String>>;
    /// Removes `server` (a node name) from the Raft configuration.
    fn remove_peer<'a>(&'a self, target: &'a Target, server: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Hands leadership from the current leader to voter `to` (a node name).
    fn transfer_leadership<'a>(&'a self, target: &'a Target, to: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Bootstraps the ACL system: the management token's secret, or None if it was done already.
    fn bootstrap_acl<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Option<String>, String>>;
    /// Keeps the cluster's operator-made auth method (marked by `owner`, its description) as
    /// `desired`, with its binding rules, or removes it when None; says what it changed.
    fn sync_auth_method<'a>(
        &'a self,
        target: &'a Target,
        owner: &'a str,
        desired: Option<&'a (AclAuthMethod, Vec<AclBindingRule>)>,
    ) -> BoxFuture<'a, Result<Vec<String>, String>>;
    /// Whether the operator was given a token of its own (then it bootstraps nothing).
    fn has_given_token(&self) -> bool {
        false
    }
    /// The datacenters the servers' WAN pool knows (`/v1/catalog/datacenters`), this one first.
    fn datacenters<'a>(&'a self, _target: &'a Target) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async { Err("this ServerAdmin cannot list datacenters".to_string()) })
    }
}

/// The real thing: the cluster's client Service (or a fixed address); a token given to the
/// operator (`--registry-token`) wins over the cluster's own.
pub struct RegistryAdmin {
    pub addr: Option<String>,
    pub token: Option<String>,
}

impl RegistryAdmin {
    fn client(&self, t: &Target) -> Result<registry::client::Client, String> {
        let token = self.token.clone().or_else(|| t.token.clone());
        crate::registry_api::registry_for(&t.namespace, Some(&t.cluster), self.addr.as_deref())
            .map(|c| c.with_token(token))
            .map_err(|e| e.to_string())
    }
}

impl ServerAdmin for RegistryAdmin {
    fn health<'a>(&'a self, t: &'a Target) -> BoxFuture<'a, Result<AutopilotHealth, String>> {
        Box::pin(async move { self.client(t)?.autopilot_health().await.map_err(|e| e.to_string()) })
    }

    fn remove_peer<'a>(&'a self, t: &'a Target, server: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.client(t)?.raft_remove_peer(server).await.map_err(|e| e.to_string()) })
    }

    fn transfer_leadership<'a>(&'a self, t: &'a Target, to: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.client(t)?.raft_transfer_leader(Some(to)).await.map_err(|e| e.to_string()) })
    }

    fn has_given_token(&self) -> bool {
        self.token.is_some()
    }

    fn datacenters<'a>(&'a self, t: &'a Target) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            let response = self
                .client(t)?
                .raw(reqwest::Method::GET, "/v1/catalog/datacenters", Default::default(), Default::default(), true)
                .await
                .map_err(|e| e.to_string())?;
            if !response.status.is_success() {
                return Err(format!("/v1/catalog/datacenters answered {}", response.status));
            }
            serde_json::from_slice(&response.body).map_err(|e| format!("/v1/catalog/datacenters: {e}"))
        })
    }

    fn bootstrap_acl<'a>(&'a self, t: &'a Target) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            let token = self.client(t)?.acl_bootstrap().await.map_err(|e| e.to_string())?;
            Ok(token.map(|t| t.secret_id))
        })
    }

    fn sync_auth_method<'a>(
        &'a self,
        t: &'a Target,
        owner: &'a str,
        desired: Option<&'a (AclAuthMethod, Vec<AclBindingRule>)>,
    ) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            let c = self.client(t)?;
            let e = |e: registry::client::ClientError| e.to_string();
            let mut changed = Vec::new();
            let keep = desired.map(|(m, _)| m.name.as_str());
            for old in c.acl_auth_methods().await.map_err(e)? {
                if old.description == owner && Some(old.name.as_str()) != keep {
                    c.acl_auth_method_delete(&old.name).await.map_err(e)?;
                    changed.push(format!("auth method {} removed", old.name));
                }
            }
            let Some((method, rules)) = desired else { return Ok(changed) };
            match c.acl_auth_method(&method.name).await.map_err(e)? {
                None => {
                    c.acl_auth_method_write(method, false).await.map_err(e)?;
                    changed.push(format!("auth method {} created", method.name));
                }
                Some(current) if !current.description.starts_with(kubernetes_auth::MANAGED) => {
                    return Err(format!(
                        "an auth method named {} exists and was not made by the operator: choose another \
                         spec.acl.kubernetesAuth.methodName",
                        method.name
                    ));
                }
                Some(current) if kubernetes_auth::method_differs(&current, method) => {
                    c.acl_auth_method_write(method, true).await.map_err(e)?;
                    changed.push(format!("auth method {} updated", method.name));
                }
                Some(_) => {}
            }
            let plan = kubernetes_auth::rule_changes(&c.acl_binding_rules(&method.name).await.map_err(e)?, rules);
            for id in &plan.delete {
                c.acl_binding_rule_delete(id).await.map_err(e)?;
            }
            for rule in &plan.create {
                c.acl_binding_rule_create(rule).await.map_err(e)?;
            }
            if !plan.is_empty() {
                changed.push(format!("{} binding rule(s) created, {} removed", plan.create.len(), plan.delete.len()));
            }
            Ok(changed)
        })
    }
}

pub struct Context {
    pub client: Client,
    pub servers: Arc<dyn ServerAdmin>,
    pub recorder: Recorder,
    /// The Secret (namespace, name) holding the token reviewer's ServiceAccount token, for the
    /// clusters that ask for Kubernetes login.
    pub token_reviewer: Option<(String, String)>,
}

impl Context {
    pub fn new(client: Client, servers: Arc<dyn ServerAdmin>) -> Self {
        let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Context { recorder: Recorder::new(client.clone(), reporter), client, servers, token_reviewer: None }
    }

    pub fn with_token_reviewer(self, secret: Option<(String, String)>) -> Self {
        Context { token_reviewer: secret, ..self }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("registry servers: {0}")]
    Servers(String),
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
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
    apply(client, ns, &d.config_map).await?;
    apply(client, ns, &d.headless_service).await?;
    apply(client, ns, &d.client_service).await?;
    let sts = apply(client, ns, &d.stateful_set).await?;
    apply(client, ns, &d.pdb).await?;
    if let Some(wan) = &d.wan_service {
        apply(client, ns, wan).await?;
    }
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

/// Publishes an Event on the cluster; a failure to publish is logged, never fatal.
async fn event(ctx: &Context, rc: &RegistryCluster, type_: EventType, reason: &str, action: &str, note: String) {
    let ev = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&ev, &rc.object_ref(&())).await {
        tracing::warn!(cluster = %rc.name_any(), error = %e, "could not publish an event");
    }
}

/// The server pods as the plan needs them (`<cluster>-<ordinal>`; anything else is ignored).
fn pod_views(cluster: &str, pods: &[Pod]) -> Vec<PodView> {
    let prefix = format!("{cluster}-");
    pods.iter()
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            let ordinal = name.strip_prefix(&prefix)?.parse().ok()?;
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Some(PodView {
                name,
                ordinal,
                ready,
                revision: p.labels().get("controller-revision-hash").cloned(),
                terminating: p.metadata.deletion_timestamp.is_some(),
            })
        })
        .collect()
}

/// Bootstraps the ACL system of a cluster that has none yet and keeps the management token in a
/// Secret (`<cluster>-acl-bootstrap-token`, not owned by the cluster: like the volumes, it outlives
/// a deleted RegistryCluster, whose data still holds the token). If someone else bootstrapped it,
/// says so: the operator then needs a token (`operator.registryTokenSecret` in the chart).
async fn bootstrap_acl(ctx: &Context, rc: &RegistryCluster, target: &Target) -> Result<Option<String>, Error> {
    match ctx.servers.bootstrap_acl(target).await {
        Ok(Some(secret_id)) => {
            let name = crate::registry_api::bootstrap_token_secret(&target.cluster);
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(target.namespace.clone()),
                    labels: Some(std::collections::BTreeMap::from([
                        ("app.kubernetes.io/managed-by".to_string(), MANAGER.to_string()),
                        ("app.kubernetes.io/instance".to_string(), target.cluster.clone()),
                    ])),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(std::collections::BTreeMap::from([(
                    "token".to_string(),
                    k8s_openapi::ByteString(secret_id.clone().into_bytes()),
                )])),
                ..Default::default()
            };
            apply(&ctx.client, &target.namespace, &secret).await?;
            let note = format!("ACL system bootstrapped; the management token is in Secret {name}");
            event(ctx, rc, EventType::Normal, "AclBootstrapped", "Bootstrap", note).await;
            Ok(Some(secret_id))
        }
        Ok(None) => {
            let note = "ACLs were bootstrapped by someone else: give the operator a token (--registry-token)";
            tracing::warn!(cluster = %target.cluster, "{note}");
            event(ctx, rc, EventType::Warning, "AclBootstrapElsewhere", "Bootstrap", note.to_string()).await;
            Ok(None)
        }
        Err(e) => {
            tracing::info!(cluster = %target.cluster, error = %e, "cannot bootstrap ACLs yet");
            Ok(None)
        }
    }
}

/// Keeps the cluster's `kubernetes` auth method as its spec asks (or removes the one the operator
/// made when it no longer asks). Problems are reported as events and never stop the reconcile.
async fn keep_kubernetes_auth(ctx: &Context, rc: &RegistryCluster, valid: &ValidCluster, target: &Target) {
    let owner = kubernetes_auth::description(&valid.name, &valid.namespace);
    let desired = match &valid.kubernetes_auth {
        None => None,
        Some(settings) => match token_reviewer(ctx).await {
            Ok(reviewer) => Some((
                kubernetes_auth::method(&valid.name, &valid.namespace, settings, &reviewer),
                kubernetes_auth::binding_rules(settings),
            )),
            Err(why) => {
                tracing::warn!(cluster = %valid.name, "Kubernetes login not set up: {why}");
                event(ctx, rc, EventType::Warning, "TokenReviewerMissing", "KubernetesAuth", why).await;
                return;
            }
        },
    };
    match ctx.servers.sync_auth_method(target, &owner, desired.as_ref()).await {
        Ok(changed) if !changed.is_empty() => {
            event(ctx, rc, EventType::Normal, "KubernetesAuthConfigured", "KubernetesAuth", changed.join("; ")).await;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(cluster = %valid.name, error = %e, "cannot set up Kubernetes login");
            event(ctx, rc, EventType::Warning, "KubernetesAuthFailed", "KubernetesAuth", e).await;
        }
    }
}

/// The token reviewer's credentials from the Secret the chart makes for them.
async fn token_reviewer(ctx: &Context) -> Result<kubernetes_auth::Reviewer, String> {
    let Some((namespace, name)) = &ctx.token_reviewer else {
        return Err("spec.acl.kubernetesAuth needs the operator's token reviewer: install the chart with \
                    cluster.acl.kubernetesAuth.enabled=true (or set ROSTER_TOKEN_REVIEWER_SECRET)"
            .into());
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match secrets.get_opt(name).await {
        Ok(Some(secret)) => kubernetes_auth::Reviewer::from_secret(&secret),
        Ok(None) => Err(format!("the token reviewer Secret {namespace}/{name} does not exist")),
        Err(e) => Err(format!("cannot read the token reviewer Secret {namespace}/{name}: {e}")),
    }
}

/// The servers' certificate as it stands after one TLS pass.
struct TlsPass {
    observed: TlsObserved,
    /// When the operator must renew the certificate (unix seconds); None when it has none or
    /// cert-manager renews it.
    renew_after: Option<u64>,
}

fn tls_pass(valid: &ValidCluster, ready: bool, reason: &str, message: String, cert: Option<&tls::CertInfo>) -> TlsPass {
    TlsPass {
        observed: TlsObserved {
            ready,
            reason: reason.into(),
            message,
            status: TlsStatus {
                server_secret: tls::server_secret_name(valid),
                ca_config_map: tls::ca_config_map_name(valid),
                not_after: cert.map(|c| rfc3339(c.not_after)),
                renew_after: cert.map(|c| rfc3339(c.renew_after())),
            },
        },
        renew_after: cert.map(tls::CertInfo::renew_after),
    }
}

/// Keeps the cluster's certificates: the CA Secret (created once, reused, never overwritten), the
/// server and the sidecars' client Secrets (issued again when `tls::decide` says so, into the same
/// Secrets, so no pod is restarted) and the CA ConfigMap for clients. With cert-manager, its
/// Certificates instead, and only the CA is published. Problems with the material are reported in `TLSReady`; API errors fail
/// the pass.
async fn keep_tls(
    ctx: &Context,
    rc: &RegistryCluster,
    valid: &ValidCluster,
    settings: &tls::Settings,
    desired: &Desired,
    now: u64,
) -> Result<TlsPass, Error> {
    let ns = &valid.namespace;
    let owner = rc.controller_owner_ref(&());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(issuer) = &settings.cert_manager {
        // cert-manager renews its certificates itself: no wake-up for that here.
        let pass = keep_cert_manager_tls(ctx, valid, issuer, &desired.certificates, &secrets, &owner, now).await?;
        return Ok(TlsPass { renew_after: None, ..pass });
    }

    let ca_name = tls::ca_secret_name(valid);
    let ca = match secrets.get_opt(&ca_name).await? {
        Some(secret) => match tls::ca_from_secret(&secret) {
            Some(ca) => ca,
            None => {
                let why = format!(
                    "Secret {ca_name} holds no usable ca.crt and ca.key; it is not overwritten (servers' \
                     certificates may depend on it): repair or delete it"
                );
                return Ok(tls_pass(valid, false, "CAUnreadable", why, None));
            }
        },
        None => {
            let ca = match tls::new_ca(valid, now) {
                Ok(ca) => ca,
                Err(e) => return Ok(tls_pass(valid, false, "IssueFailed", format!("making the CA: {e}"), None)),
            };
            // Create, never apply: a CA someone else wrote meanwhile must win, not be replaced.
            match secrets.create(&PostParams::default(), &tls::ca_secret(valid, &owner, &ca)).await {
                Ok(_) => {
                    let note = format!("CA created in Secret {ca_name}");
                    event(ctx, rc, EventType::Normal, "CACreated", "IssueCertificate", note).await;
                    ca
                }
                Err(e) if is_status(&e, 409) => {
                    match secrets.get_opt(&ca_name).await?.as_ref().and_then(tls::ca_from_secret) {
                        Some(theirs) => theirs,
                        None => {
                            return Ok(tls_pass(valid, false, "CAUnreadable", format!("Secret {ca_name}: {e}"), None))
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let validity = settings.validity_secs;
    let server = match keep_leaf(ctx, rc, valid, tls::Leaf::Server, &ca, validity, &secrets, now).await? {
        Ok(info) => info,
        Err(why) => return Ok(tls_pass(valid, false, "IssueFailed", why, None)),
    };
    let client = match keep_leaf(ctx, rc, valid, tls::Leaf::Client, &ca, validity, &secrets, now).await? {
        Ok(info) => info,
        Err(why) => return Ok(tls_pass(valid, false, "IssueFailed", why, None)),
    };
    apply(&ctx.client, ns, &tls::ca_config_map(valid, &owner, &ca.cert_pem)).await?;
    let message = format!(
        "server certificate valid until {}; renewed after {}; sidecars' client certificate in Secret {} valid \
         until {}",
        rfc3339(server.not_after),
        rfc3339(server.renew_after()),
        tls::client_secret_name(valid),
        rfc3339(client.not_after),
    );
    let pass = tls_pass(valid, true, "CertificateValid", message, Some(&server));
    Ok(TlsPass { renew_after: Some(server.renew_after().min(client.renew_after())), ..pass })
}

/// Keeps one certificate in its Secret, issued again from `ca` when `tls::decide` says so (into the
/// same Secret: mounted volumes follow). Ok(Err(why)): it could not be issued.
#[allow(clippy::too_many_arguments)]
async fn keep_leaf(
    ctx: &Context,
    rc: &RegistryCluster,
    valid: &ValidCluster,
    leaf: tls::Leaf,
    ca: &tls::Ca,
    validity_secs: u64,
    secrets: &Api<Secret>,
    now: u64,
) -> Result<Result<tls::CertInfo, String>, Error> {
    let name = leaf.secret_name(valid);
    let current = secrets.get_opt(&name).await?.map(|s| tls::Current::from_secret(&s));
    let reason = match tls::decide(current.as_ref(), &ca.cert_pem, &leaf.dns_names(valid), now) {
        Decision::Keep(info) => return Ok(Ok(info)),
        Decision::Issue(reason) => reason,
    };
    let issued = leaf.issue(valid, ca, validity_secs, now).and_then(|cert| Ok((tls::read_cert(&cert.cert_pem)?, cert)));
    let (info, cert) = match issued {
        Ok(issued) => issued,
        Err(e) => return Ok(Err(format!("issuing the {leaf} certificate: {e}"))),
    };
    let owner = rc.controller_owner_ref(&());
    apply(&ctx.client, &valid.namespace, &leaf.secret(valid, &owner, &ca.cert_pem, &cert)).await?;
    let note = format!(
        "the {leaf} certificate: {reason}; issued a new one into Secret {name}, valid until {}",
        rfc3339(info.not_after)
    );
    event(ctx, rc, EventType::Normal, leaf.issued_reason(), "IssueCertificate", note).await;
    Ok(Ok(info))
}

/// cert-manager issues and renews; the operator keeps the Certificate, publishes the CA cert-manager
/// wrote into the Secret, and reports the certificate's dates.
async fn keep_cert_manager_tls(
    ctx: &Context,
    valid: &ValidCluster,
    issuer: &tls::IssuerRef,
    certificates: &[DynamicObject],
    secrets: &Api<Secret>,
    owner: &Option<OwnerReference>,
    now: u64,
) -> Result<TlsPass, Error> {
    let ns = &valid.namespace;
    let server_secret = tls::server_secret_name(valid);
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &tls::certificate_resource());
    let params = PatchParams::apply(MANAGER).force();
    for certificate in certificates {
        match api.patch(&certificate.name_any(), &params, &Patch::Apply(certificate)).await {
            Ok(_) => {}
            // No Certificate kind: cert-manager is not installed. Say so rather than fail every pass.
            Err(e) if is_status(&e, 404) => {
                let why = "spec.tls.certManager is set but the API server has no certificates.cert-manager.io: \
                           install cert-manager";
                return Ok(tls_pass(valid, false, "CertManagerMissing", why.into(), None));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let waiting = format!("waiting for cert-manager ({} {}) to write Secret {server_secret}", issuer.kind, issuer.name);
    let Some(current) = secrets.get_opt(&server_secret).await?.map(|s| tls::Current::from_secret(&s)) else {
        return Ok(tls_pass(valid, false, "WaitingForCertManager", waiting, None));
    };
    let Some(cert_pem) = current.cert_pem.as_deref() else {
        return Ok(tls_pass(valid, false, "WaitingForCertManager", waiting, None));
    };
    let cert = match tls::read_cert(cert_pem) {
        Ok(cert) => cert,
        Err(e) => {
            let why = format!("Secret {server_secret}: tls.crt: {e}");
            return Ok(tls_pass(valid, false, "CertificateUnreadable", why, None));
        }
    };
    let Some(ca_pem) = current.ca_pem.filter(|c| !c.trim().is_empty()) else {
        let why = format!(
            "the issuer put no ca.crt in Secret {server_secret}; servers need it to verify each other \
             (use a CA or Vault issuer)"
        );
        return Ok(tls_pass(valid, false, "NoCA", why, Some(&cert)));
    };
    apply(&ctx.client, ns, &tls::ca_config_map(valid, owner, &ca_pem)).await?;
    if now >= cert.not_after {
        let why = format!("the certificate in Secret {server_secret} ended at {}", rfc3339(cert.not_after));
        return Ok(tls_pass(valid, false, "CertificateExpired", why, Some(&cert)));
    }
    // Sidecars mount the client certificate's Secret: injection waits for it as well.
    let client_secret = tls::client_secret_name(valid);
    let client = secrets.get_opt(&client_secret).await?.map(|s| tls::Current::from_secret(&s));
    if client.and_then(|c| c.cert_pem).is_none() {
        let why = format!(
            "waiting for cert-manager ({} {}) to write Secret {client_secret} (the sidecars' client certificate)",
            issuer.kind, issuer.name
        );
        return Ok(tls_pass(valid, false, "WaitingForCertManager", why, Some(&cert)));
    }
    let message =
        format!("server certificate from cert-manager valid until {}; cert-manager renews it", rfc3339(cert.not_after));
    Ok(tls_pass(valid, true, "CertificateValid", message, Some(&cert)))
}

fn available(status: Option<&RegistryClusterStatus>) -> Option<bool> {
    status?.conditions.iter().find(|c| c.type_ == "Available").map(|c| c.status == "True")
}

pub async fn reconcile(rc: Arc<RegistryCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = rc.namespace().unwrap_or_else(|| "default".into());
    let name = rc.name_any();
    let clusters: Api<RegistryCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let valid = match validate(&rc, DEFAULT_IMAGE) {
        Ok(v) => v,
        Err(errors) => {
            tracing::warn!(cluster = %name, namespace = %ns, ?errors, "invalid spec");
            let new_status = status::invalid(&rc, &errors, now());
            let already = rc.status.as_ref().and_then(|s| s.observed_generation) == rc.metadata.generation
                && rc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
            if !already {
                event(&ctx, &rc, EventType::Warning, "InvalidSpec", "Validate", errors.join("; ")).await;
            }
            patch_status(&clusters, &name, new_status).await?;
            return Ok(Action::await_change());
        }
    };

    // Observe: the StatefulSet as it stands, its pods, and (when some server is up) the servers.
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let current = sets.get_opt(&name).await?;
    let current_replicas = current.as_ref().and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas);
    let update_revision = current.as_ref().and_then(|s| s.status.as_ref()).and_then(|s| s.update_revision.clone());
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = build::selector_labels(&valid).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let pods = if current.is_some() {
        pod_views(&name, &pods_api.list(&ListParams::default().labels(&selector)).await?.items)
    } else {
        Vec::new()
    };
    let ready_servers = pods.iter().filter(|p| p.ready && !p.terminating).count() as i32;
    // With ACLs on, the servers are asked with the token the operator keeps for this cluster.
    let token = if valid.acl_enabled && ready_servers > 0 {
        crate::registry_api::cluster_token(&ctx.client, &ns, &name).await?
    } else {
        None
    };
    let mut target = Target { namespace: ns.clone(), cluster: name.clone(), token };
    let quorum_ready = ready_servers > valid.replicas / 2;
    if valid.acl_enabled && target.token.is_none() && !ctx.servers.has_given_token() && quorum_ready {
        target.token = bootstrap_acl(&ctx, &rc, &target).await?;
    }
    let health = if ready_servers > 0 {
        match ctx.servers.health(&target).await {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::info!(cluster = %name, error = %e, "cannot ask the servers for their health");
                None
            }
        }
    } else {
        None
    };
    // Federation health from the WAN pool as the servers see it.
    let federation = match &valid.federation {
        Some(f) => {
            let seen = if ready_servers > 0 {
                ctx.servers.datacenters(&target).await
            } else {
                Err("no server is ready".to_string())
            };
            let verdict = super::federation::verdict(&valid.datacenter, f, &seen);
            Some((verdict, seen.unwrap_or_default()))
        }
        None => None,
    };
    let raft = health.as_ref().map(RaftView::from);
    let plan = rollout::plan(&name, valid.replicas, current_replicas, update_revision.as_deref(), &pods, raft.as_ref());

    // Build and apply, with the replica count the plan allows (a scale-down waits for Raft).
    let mut desired = build(&valid, rc.controller_owner_ref(&()));
    if let Some(spec) = desired.stateful_set.spec.as_mut() {
        spec.replicas = Some(plan.replicas);
    }
    // Certificates before the StatefulSet, so new pods find their Secret to mount.
    let tls_state = match &valid.tls {
        Some(settings) => Some(keep_tls(&ctx, &rc, &valid, settings, &desired, unix_now()).await?),
        None => None,
    };
    apply_all(&ctx.client, &ns, &desired).await?;

    // At most one Raft-aware step per pass; the next pass sees its effect.
    match &plan.step {
        Step::Steady | Step::Wait(_) => {}
        Step::RemovePeer(server) => {
            ctx.servers.remove_peer(&target, server).await.map_err(Error::Servers)?;
            let note = format!("{server} removed from the Raft configuration before its pod goes");
            event(&ctx, &rc, EventType::Normal, "ServerRemoved", "ScaleDown", note).await;
        }
        Step::TransferLeadership { from, to } => {
            ctx.servers.transfer_leadership(&target, to).await.map_err(Error::Servers)?;
            let note = format!("Raft leadership moved from {from} to {to}");
            event(&ctx, &rc, EventType::Normal, "LeadershipTransferred", "HandOff", note).await;
        }
        Step::RestartPod(pod) => {
            pods_api.delete(pod, &DeleteParams::default()).await?;
            let note = format!("{pod} restarted with the new server template");
            event(&ctx, &rc, EventType::Normal, "ServerRestarted", "RollingUpdate", note).await;
        }
    }

    if valid.acl_enabled && quorum_ready && (target.token.is_some() || ctx.servers.has_given_token()) {
        keep_kubernetes_auth(&ctx, &rc, &valid, &target).await;
    }

    let leader = health.as_ref().and_then(|h| h.servers.iter().find(|s| s.leader));
    let seen = Observed {
        ready_servers,
        leader: leader.map(|l| l.name.clone()),
        last_raft_index: leader.map(|l| l.last_index),
        progress: plan.step.reason(plan.scaling_down).map(|r| (r.to_string(), plan.step.message())),
        tls: tls_state.as_ref().map(|t| t.observed.clone()),
        federation,
    };
    let new_status = status::observed(&rc, valid.replicas, &seen, now());
    match (available(rc.status.as_ref()), available(Some(&new_status))) {
        (Some(true), Some(false)) => {
            let note = format!("{ready_servers} of {} servers ready: no quorum", valid.replicas);
            event(&ctx, &rc, EventType::Warning, "QuorumLost", "Observe", note).await;
        }
        (before, Some(true)) if before != Some(true) => {
            let note = format!("{ready_servers} of {} servers ready", valid.replicas);
            event(&ctx, &rc, EventType::Normal, "QuorumReady", "Observe", note).await;
        }
        _ => {}
    }
    patch_status(&clusters, &name, new_status).await?;
    // Owned objects and server pods wake us on change; while something is under way, look again soon;
    // and no later than a certificate's renewal time.
    let every = match plan.step {
        Step::Steady => Duration::from_secs(30),
        _ => Duration::from_secs(5),
    };
    // At least 5 s: a renewal time in the past must not become a busy loop.
    let until_renewal =
        tls_state.and_then(|t| t.renew_after).map(|at| Duration::from_secs(at.saturating_sub(unix_now()).max(5)));
    Ok(Action::requeue(until_renewal.map_or(every, |u| u.min(every))))
}

pub fn error_policy(rc: Arc<RegistryCluster>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(cluster = %rc.name_any(), %error, "reconcile failed; retrying in 15 s");
    Action::requeue(Duration::from_secs(15))
}

/// Which cluster a server pod belongs to (its `app.kubernetes.io/instance` label).
fn cluster_of_pod(pod: Pod) -> Option<ObjectRef<RegistryCluster>> {
    let instance = pod.labels().get("app.kubernetes.io/instance")?.clone();
    Some(ObjectRef::new(&instance).within(&pod.namespace()?))
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(
    client: Client,
    registry_addr: Option<String>,
    registry_token: Option<String>,
    token_reviewer_secret: Option<(String, String)>,
    metrics: Arc<crate::telemetry::Metrics>,
) {
    let servers = Arc::new(RegistryAdmin { addr: registry_addr, token: registry_token });
    let ctx = Arc::new(Context::new(client.clone(), servers).with_token_reviewer(token_reviewer_secret));
    // Watch only what this operator made (by label), not every Service and ConfigMap in the cluster.
    let ours = || watcher::Config::default().labels("app.kubernetes.io/managed-by=roster-operator");
    let server_pods =
        watcher::Config::default().labels("app.kubernetes.io/name=roster,app.kubernetes.io/component=server");
    let controller = Controller::new(Api::<RegistryCluster>::all(client.clone()), watcher::Config::default())
        .owns(Api::<StatefulSet>::all(client.clone()), ours())
        .owns(Api::<Service>::all(client.clone()), ours())
        .owns(Api::<ConfigMap>::all(client.clone()), ours())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), ours())
        // The CA and server certificate Secrets: a deleted or edited one is put back at once.
        .owns(Api::<Secret>::all(client.clone()), ours())
        .watches(Api::<Pod>::all(client), server_pods, cluster_of_pod);
    crate::telemetry::drive(controller, "registry-cluster", reconcile, error_policy, ctx, metrics).await;
}
