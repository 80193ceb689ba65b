//! The admission webhook's HTTPS endpoint. The API server posts an AdmissionReview for each pod
//! created in a namespace the webhook configuration selects: `/inject` for namespaces that are not
//! labelled for injection (a pod must ask with `roster.dev/inject: "true"`), `/inject-namespace` for
//! labelled ones (every pod, unless it says "false"). `review` is pure; `serve` is TLS and HTTP,
//! and before answering reads the sidecar settings (the chart's ConfigMap) and makes the pod's
//! namespace hold current copies of the Secrets the sidecar mounts, the gossip key's and the
//! client certificate's (not on dry runs: the webhook's sideEffects are NoneOnDryRun).

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::Api;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;

use super::certs::CertStore;
use super::{patch_for, wants_sidecar, InjectSettings};

/// Largest AdmissionReview read (a pod spec is far smaller; the API server caps objects at 3 MiB).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// The request of an AdmissionReview of a pod; Err (answered 400) when the body is none.
pub fn parse(body: &[u8]) -> Result<AdmissionRequest<Pod>, String> {
    let review: AdmissionReview<Pod> =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview of a pod: {e}"))?;
    review.try_into().map_err(|_| "the AdmissionReview holds no request".to_string())
}

/// The AdmissionReview answering `body`: the pod's patch, or a denial naming the annotation that
/// cannot be read; Err when the body is no AdmissionReview of a pod (answered 400).
pub fn review(
    body: &[u8],
    in_labelled_namespace: bool,
    settings: &InjectSettings,
) -> Result<AdmissionReview<DynamicObject>, String> {
    answer(&parse(body)?, in_labelled_namespace, settings)
}

/// The answer to one admission request.
pub fn answer(
    request: &AdmissionRequest<Pod>,
    in_labelled_namespace: bool,
    settings: &InjectSettings,
) -> Result<AdmissionReview<DynamicObject>, String> {
    let response = AdmissionResponse::from(request);
    let Some(pod) = &request.object else {
        return Ok(response.into_review());
    };
    let response = match patch_for(pod, in_labelled_namespace, settings) {
        Ok(None) => response,
        Ok(Some(ops)) => {
            let patch: json_patch::Patch = serde_json::from_value(ops).map_err(|e| e.to_string())?;
            response.with_patch(patch).map_err(|e| e.to_string())?
        }
        Err(reason) => {
            let pod_name = pod.metadata.name.as_deref().or(pod.metadata.generate_name.as_deref()).unwrap_or("");
            tracing::info!(namespace = %request.namespace.as_deref().unwrap_or(""), pod = %pod_name, %reason, "refused a pod");
            response.deny(format!("roster sidecar injection: {reason}"))
        }
    };
    Ok(response.into_review())
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

/// Where the webhook reads what sidecars get: the operator's namespace.
#[derive(Clone)]
pub struct Source {
    pub client: kube::Client,
    pub namespace: String,
    pub config_map: String,
}

impl Source {
    /// The settings for this admission: the ConfigMap's data now (a helm upgrade changes it).
    async fn settings(&self, base: &InjectSettings) -> Result<InjectSettings, String> {
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let map = maps.get(&self.config_map).await.map_err(|e| format!("ConfigMap {}: {e}", self.config_map))?;
        Ok(InjectSettings { env: map.data.unwrap_or_default(), ..base.clone() })
    }
}

async fn handle(
    req: Request<Incoming>,
    base: Arc<InjectSettings>,
    source: Source,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let labelled = match (req.method(), req.uri().path()) {
        (&Method::POST, "/inject") => false,
        (&Method::POST, "/inject-namespace") => true,
        (_, "/healthz") => return Ok(reply(StatusCode::OK, b"{}".to_vec())),
        _ => return Ok(reply(StatusCode::NOT_FOUND, br#"{"error":"POST /inject or /inject-namespace"}"#.to_vec())),
    };
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({"error": e.to_string()}).to_string().into_bytes(),
            ))
        }
    };
    let request = match parse(&body) {
        Ok(r) => r,
        Err(e) => return Ok(reply(StatusCode::BAD_REQUEST, serde_json::json!({"error": e}).to_string().into_bytes())),
    };
    // Most pods get no sidecar: only those that do cost a read of the settings.
    let wanted = request.object.as_ref().is_some_and(|p| wants_sidecar(p, labelled));
    let settings = if wanted {
        match source.settings(&base).await {
            Ok(s) => s,
            // The API server then applies the webhook's failurePolicy.
            Err(e) => {
                return Ok(reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"error": e}).to_string().into_bytes(),
                ))
            }
        }
    } else {
        (*base).clone()
    };
    let reviewed = answer(&request, labelled, &settings);
    let patched = reviewed.as_ref().is_ok_and(|a| a.response.as_ref().is_some_and(|r| r.allowed && r.patch.is_some()));
    let namespace = request.namespace.as_deref().filter(|_| !request.dry_run);
    if let (true, Some(namespace)) = (patched, namespace) {
        for secret in settings.gossip_key_secret.iter().chain(&settings.tls_secret) {
            if let Err(e) = super::copies::ensure(&source.client, &source.namespace, secret, namespace).await {
                // With failurePolicy Ignore the pod then starts without a sidecar: say why.
                tracing::warn!(%namespace, %secret, error = %e, "cannot give the pod's namespace the Secret its sidecar mounts");
                return Ok(reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"error": e}).to_string().into_bytes(),
                ));
            }
        }
    }
    Ok(match reviewed {
        Ok(answer) => reply(StatusCode::OK, serde_json::to_vec(&answer).unwrap_or_default()),
        Err(e) => reply(StatusCode::BAD_REQUEST, serde_json::json!({"error": e}).to_string().into_bytes()),
    })
}

/// Serves the webhook on `listener` with the certificate `certs` currently holds (a rotated one
/// is used from the next connection on), until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, certs: CertStore, settings: InjectSettings, source: Source) {
    let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(Arc::new(certs));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let settings = Arc::new(settings);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "webhook: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, settings, source) = (acceptor.clone(), settings.clone(), source.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "webhook: TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "webhook: TLS handshake timed out"),
            };
            let service = hyper::service::service_fn(move |req| handle(req, settings.clone(), source.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "webhook: connection ended");
            }
        });
    }
}
