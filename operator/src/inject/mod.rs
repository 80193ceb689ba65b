//! Sidecar injection: a mutating admission webhook gives annotated pods (or every pod of a
//! namespace labelled for it) a `roster-sidecar` container. `patch_for` is pure (pod and settings
//! in, JSON patch out) and tested from fixtures; `webhook` serves it over HTTPS; `certs` keeps the
//! serving certificate and the webhook's `caBundle`.

pub mod certs;
pub mod copies;
pub mod webhook;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, ProjectedVolumeSource, ResourceRequirements,
    SecretKeySelector, SecretVolumeSource, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{json, Value};

/// The annotation that asks for a sidecar ("true"), or refuses one in a namespace labelled for
/// injection ("false").
pub const INJECT: &str = "roster.dev/inject";
/// Set on pods that got a sidecar.
pub const INJECTED: &str = "roster.dev/injected";
pub const SERVICE_NAME: &str = "roster.dev/service-name";
/// A number, or the name of one of the pod's container ports.
pub const SERVICE_PORT: &str = "roster.dev/service-port";
/// Comma-separated.
pub const SERVICE_TAGS: &str = "roster.dev/service-tags";
/// A path on the service's port (`/health`) or a whole URL.
pub const SERVICE_CHECK_HTTP: &str = "roster.dev/service-check-http";
/// A Go duration (default `10s`).
pub const SERVICE_CHECK_INTERVAL: &str = "roster.dev/service-check-interval";
/// `roster.dev/service-meta-<key>: <value>` becomes the service's `Meta[<key>]`.
pub const SERVICE_META_PREFIX: &str = "roster.dev/service-meta-";
/// The namespace label that turns injection on for every pod there (value `enabled`).
pub const NAMESPACE_LABEL: &str = "roster.dev/inject";
pub const CONTAINER_NAME: &str = "roster-sidecar";
/// Where the projected ServiceAccount token the sidecar logs in with is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/roster";
const TOKEN_VOLUME: &str = "roster-token";
/// Where the sidecar finds its client certificate, its key and the CA (the Secret's keys).
pub const TLS_DIR: &str = "/etc/roster/tls";
const TLS_VOLUME: &str = "roster-tls";

/// What every injected sidecar gets, from the operator's settings (the chart's values).
#[derive(Debug, Clone, PartialEq)]
pub struct InjectSettings {
    pub image: String,
    /// The settings of the chart's sidecar ConfigMap (servers, gossip seeds, datacenter...), read
    /// when a pod is admitted: set as values, since a pod cannot load another namespace's ConfigMap.
    pub env: BTreeMap<String, String>,
    /// The Secret holding the gossip key under `key`, when gossip is encrypted (the operator copies
    /// it into the pod's namespace).
    pub gossip_key_secret: Option<String>,
    /// The `kubernetes.io/tls` Secret with the sidecars' client certificate and the CA (`ca.crt`),
    /// when the servers serve TLS: mounted into the sidecar, which then dials its servers over
    /// HTTPS with it (the operator copies it into the pod's namespace and keeps the copy current).
    pub tls_secret: Option<String>,
    /// Mount a projected ServiceAccount token for ACL login (the Kubernetes auth method).
    pub login_token: bool,
    /// The cluster runs native sidecars (an init container with `restartPolicy: Always`; 1.29+).
    pub native_sidecars: bool,
}

/// What the pod's annotations and spec say about its service, or why they cannot be read.
pub fn service_definition(pod: &Pod) -> Result<Value, String> {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    let account = spec.service_account_name.as_deref().filter(|a| !a.is_empty() && *a != "default");
    let name = annotations
        .get(SERVICE_NAME)
        .map(String::as_str)
        .or(account)
        .or(labels.get("app.kubernetes.io/name").map(String::as_str))
        .or(labels.get("app").map(String::as_str))
        .or(spec.containers.first().map(|c| c.name.as_str()))
        .ok_or("the pod names no service: set roster.dev/service-name")?;
    if !valid_service_name(name) {
        return Err(format!("{SERVICE_NAME} {name:?} is not a valid service name (letters, digits and '-')"));
    }
    let ports: Vec<(Option<String>, i32)> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| (p.name.clone(), p.container_port))
        .collect();
    let port =
        match annotations.get(SERVICE_PORT) {
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => i32::from(n),
                _ => ports.iter().find(|(name, _)| name.as_deref() == Some(p.as_str())).map(|(_, n)| *n).ok_or_else(
                    || format!("{SERVICE_PORT} {p:?} is neither a port number nor a container port's name"),
                )?,
            },
            None => ports.first().map_or(0, |(_, n)| *n),
        };
    let mut service = json!({"Name": name});
    if port > 0 {
        service["Port"] = port.into();
    }
    if let Some(tags) = annotations.get(SERVICE_TAGS) {
        let tags: Vec<&str> = tags.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
        service["Tags"] = json!(tags);
    }
    let meta: BTreeMap<&str, &str> =
        annotations.iter().filter_map(|(k, v)| k.strip_prefix(SERVICE_META_PREFIX).map(|k| (k, v.as_str()))).collect();
    if !meta.is_empty() {
        service["Meta"] = json!(meta);
    }
    if let Some(http) = annotations.get(SERVICE_CHECK_HTTP) {
        let url = if http.starts_with("http://") || http.starts_with("https://") {
            http.clone()
        } else if http.starts_with('/') && port > 0 {
            format!("http://127.0.0.1:{port}{http}")
        } else {
            return Err(format!("{SERVICE_CHECK_HTTP} {http:?} needs a URL, or a path and a service port"));
        };
        let interval = annotations.get(SERVICE_CHECK_INTERVAL).map_or("10s", String::as_str);
        if humantime::parse_duration(interval).is_err() {
            return Err(format!("{SERVICE_CHECK_INTERVAL} {interval:?} is not a duration such as 10s"));
        }
        service["Check"] = json!({"HTTP": url, "Interval": interval});
    }
    Ok(service)
}

fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Whether this pod gets a sidecar: asked for by annotation, or by its namespace (`in_labelled_namespace`)
/// unless the pod says `roster.dev/inject: "false"`; never twice.
pub fn wants_sidecar(pod: &Pod, in_labelled_namespace: bool) -> bool {
    let annotations = pod.metadata.annotations.as_ref();
    let asked = annotations.and_then(|a| a.get(INJECT)).map(|v| v.trim().to_ascii_lowercase());
    let already = annotations.is_some_and(|a| a.contains_key(INJECTED))
        || pod.spec.as_ref().is_some_and(|s| {
            s.containers.iter().chain(s.init_containers.iter().flatten()).any(|c| c.name == CONTAINER_NAME)
        });
    let wanted = match asked.as_deref() {
        Some("true") => true,
        Some("false") => false,
        _ => in_labelled_namespace,
    };
    wanted && !already
}

fn field(path: &str) -> Option<EnvVarSource> {
    Some(EnvVarSource {
        field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
        ..Default::default()
    })
}

/// The sidecar container for a pod whose service is `service`.
pub fn sidecar_container(settings: &InjectSettings, service: &Value) -> Container {
    let value = |name: &str, v: String| EnvVar { name: name.into(), value: Some(v), ..Default::default() };
    let from = |name: &str, path: &str| EnvVar { name: name.into(), value_from: field(path), ..Default::default() };
    let mut env: Vec<EnvVar> = settings.env.iter().map(|(k, v)| value(k, v.clone())).collect();
    env.extend([
        from("ROSTER_NODE_NAME", "metadata.name"),
        from("POD_IP", "status.podIP"),
        from("POD_NAMESPACE", "metadata.namespace"),
        value("ROSTER_SERVICES", json!([service]).to_string()),
    ]);
    if let Some(secret) = &settings.gossip_key_secret {
        env.push(EnvVar {
            name: "ROSTER_GOSSIP_KEY".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector { name: secret.clone(), key: "key".into(), optional: None }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let mut mounts = Vec::new();
    if settings.login_token {
        env.push(value("ROSTER_BEARER_TOKEN_FILE", format!("{TOKEN_DIR}/token")));
        mounts.push(VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if settings.tls_secret.is_some() {
        use crate::registry_cluster::tls::{CA_CRT, TLS_CRT, TLS_KEY};
        env.extend([
            value("ROSTER_TLS_CA_FILE", format!("{TLS_DIR}/{CA_CRT}")),
            value("ROSTER_TLS_CERT_FILE", format!("{TLS_DIR}/{TLS_CRT}")),
            value("ROSTER_TLS_KEY_FILE", format!("{TLS_DIR}/{TLS_KEY}")),
            value("ROSTER_TLS_VERIFY_SERVER_HOSTNAME", "true".into()),
        ]);
        mounts.push(VolumeMount {
            name: TLS_VOLUME.into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let requests =
        BTreeMap::from([("cpu".to_string(), Quantity("20m".into())), ("memory".to_string(), Quantity("32Mi".into()))]);
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(settings.image.clone()),
        env: Some(env),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        resources: Some(ResourceRequirements { requests: Some(requests), ..Default::default() }),
        restart_policy: settings.native_sidecars.then(|| "Always".to_string()),
        ..Default::default()
    }
}

/// Escapes a key for a JSON pointer (RFC 6901).
fn pointer_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The JSON patch (RFC 6902) that injects the sidecar, or None when the pod does not want one;
/// an error names the annotation that cannot be read (the pod is then refused with it).
pub fn patch_for(pod: &Pod, in_labelled_namespace: bool, settings: &InjectSettings) -> Result<Option<Value>, String> {
    if !wants_sidecar(pod, in_labelled_namespace) {
        return Ok(None);
    }
    let service = service_definition(pod)?;
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    let container = serde_json::to_value(sidecar_container(settings, &service)).map_err(|e| e.to_string())?;
    let mut ops = Vec::new();
    // Native sidecars go first among the init containers, so they run before the others do.
    let (list, present) = if settings.native_sidecars {
        ("initContainers", spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()))
    } else {
        ("containers", true)
    };
    match (list, present) {
        ("initContainers", true) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": container}))
        }
        ("initContainers", false) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [container]}))
        }
        _ => ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": container})),
    }
    let mut volumes = Vec::new();
    if settings.login_token {
        volumes.push(Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(3600),
                        audience: None,
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(secret) = &settings.tls_secret {
        // A Secret volume (not subPath mounts): the kubelet updates its files when the operator
        // renews the certificate, and the sidecar re-reads them.
        volumes.push(Volume {
            name: TLS_VOLUME.into(),
            secret: Some(SecretVolumeSource { secret_name: Some(secret.clone()), ..Default::default() }),
            ..Default::default()
        });
    }
    let mut has_volumes = spec.volumes.as_ref().is_some_and(|v| !v.is_empty());
    for volume in volumes {
        let volume = serde_json::to_value(volume).map_err(|e| e.to_string())?;
        if has_volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]}));
            has_volumes = true;
        }
    }
    if pod.metadata.annotations.is_some() {
        ops.push(
            json!({"op": "add", "path": format!("/metadata/annotations/{}", pointer_key(INJECTED)), "value": "true"}),
        );
    } else {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {INJECTED: "true"}}));
    }
    Ok(Some(Value::Array(ops)))
}

#[cfg(test)]
mod tests;

/// Native sidecars (init containers with `restartPolicy: Always`) are on by default from
/// Kubernetes 1.29; `minor` may carry a suffix (`29+`).
pub fn native_sidecars_supported(major: &str, minor: &str) -> bool {
    let digits = |s: &str| s.trim_end_matches(|c: char| !c.is_ascii_digit()).parse::<u32>().ok();
    match (digits(major), digits(minor)) {
        (Some(1), Some(m)) => m >= 29,
        (Some(v), _) => v > 1,
        _ => false,
    }
}

/// How often the copies of the operator's Secrets in injected namespaces are compared with their
/// sources.
const COPY_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// How the operator runs the webhook (its flags).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub addr: std::net::SocketAddr,
    pub namespace: String,
    pub service: String,
    pub webhook_config: String,
    pub cert_secret: String,
    /// The chart's sidecar ConfigMap in the operator's namespace (its data becomes `inject.env`).
    pub config_map: String,
    /// "auto" (ask the API server's version), "true" or "false".
    pub native_sidecars: String,
    pub inject: InjectSettings,
}

/// Binds the webhook, then keeps its certificate and serves it (every replica: the API server may
/// call any of them) until the returned task is aborted.
pub async fn start(client: kube::Client, mut s: WebhookSettings) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener = tokio::net::TcpListener::bind(s.addr).await.map_err(|e| format!("webhook on {}: {e}", s.addr))?;
    s.inject.native_sidecars = match s.native_sidecars.as_str() {
        "true" => true,
        "false" => false,
        _ => match client.apiserver_version().await {
            Ok(v) => native_sidecars_supported(&v.major, &v.minor),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the API server's version: regular sidecar containers");
                false
            }
        },
    };
    tracing::info!(addr = %s.addr, native = s.inject.native_sidecars, "serving the sidecar injection webhook");
    let target = certs::CertTarget {
        names: certs::service_names(&s.service, &s.namespace),
        namespace: s.namespace,
        secret: s.cert_secret,
        webhook_config: s.webhook_config,
    };
    let store = certs::CertStore::default();
    Ok(tokio::spawn(async move {
        let source =
            webhook::Source { client: client.clone(), namespace: target.namespace.clone(), config_map: s.config_map };
        // Renewed certificates reach running sidecars' copies within a minute (they are renewed a
        // third of their life before they end).
        let copied = s.inject.gossip_key_secret.iter().chain(&s.inject.tls_secret).cloned().collect();
        let copies = copies::keep_current(client.clone(), target.namespace.clone(), copied, COPY_REFRESH);
        tokio::join!(
            certs::keep(client, target, store.clone()),
            webhook::serve(listener, store, s.inject, source),
            copies
        );
    }))
}
