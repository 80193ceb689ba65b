//! Sidecar injection through the mock API server and a real TLS connection: the operator issues
//! the webhook's certificate into a Secret, sets the webhook configuration's caBundle and keeps
//! both on later passes; the webhook, served over HTTPS with that certificate, answers an
//! AdmissionReview with the patch, taking the sidecar settings from the chart's ConfigMap and
//! copying the gossip key's Secret into the pod's namespace.

mod common;

use common::{echo, not_found, serve, ApiHandle};
use http::{Method, Request, Response};
use kube::client::Body;
use roster_operator::inject::{certs, webhook, InjectSettings};
use serde_json::{json, Value};
use tower_test::mock;

fn client() -> (kube::Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "roster"), handle)
}

fn webhook_config(ca_bundle: Option<&str>) -> Value {
    let hook = |name: &str| {
        let mut h = json!({
            "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "NoneOnDryRun",
            "clientConfig": {"service": {"name": "roster-webhook", "namespace": "roster", "path": "/inject"}},
        });
        if let Some(ca) = ca_bundle {
            h["clientConfig"]["caBundle"] = ca.into();
        }
        h
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "roster-sidecar-injector", "resourceVersion": "7"},
        "webhooks": [hook("inject.roster.dev"), hook("inject-namespace.roster.dev")],
    })
}

const SECRETS: &str = "/api/v1/namespaces/roster/secrets";
const CONFIGS: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";

#[tokio::test]
async fn the_certificate_is_issued_once_and_the_ca_bundle_kept() {
    registry::client::ensure_crypto_provider();
    let (client, mut api) = client();
    let target = certs::CertTarget {
        namespace: "roster".into(),
        secret: "roster-webhook-cert".into(),
        webhook_config: "roster-sidecar-injector".into(),
        names: certs::service_names("roster-webhook", "roster"),
    };
    let store = certs::CertStore::default();
    let now = 1_800_000_000;
    let pass = {
        let (client, target, store) = (client.clone(), target.clone(), store.clone());
        tokio::spawn(async move { certs::ensure(&client, &target, &store, now).await })
    };
    serve(&mut api, Method::GET, &format!("{SECRETS}/roster-webhook-cert"), not_found).await;
    let secret = serve(&mut api, Method::POST, SECRETS, |b| (201, b.clone())).await;
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["name"], "roster-webhook-cert");
    let ca = secret["data"]["ca.crt"].as_str().expect("ca.crt").to_string();
    serve(&mut api, Method::GET, &format!("{CONFIGS}/roster-sidecar-injector"), |_| (200, webhook_config(None))).await;
    let config =
        serve(&mut api, Method::PUT, &format!("{CONFIGS}/roster-sidecar-injector"), |b| (200, b.clone())).await;
    for hook in config["webhooks"].as_array().expect("webhooks") {
        assert_eq!(hook["clientConfig"]["caBundle"], ca.as_str(), "every webhook trusts the CA");
    }
    assert_eq!(config["metadata"]["resourceVersion"], "7", "replaced at the version read");
    assert_eq!(pass.await.expect("join"), Ok(certs::Renewal::CaAndLeaf));
    assert!(store.is_set(), "the webhook serves the certificate");

    // The next pass finds everything in place: no writes.
    let mut stored = secret.clone();
    stored["metadata"]["resourceVersion"] = "12".into();
    let pass = {
        let (client, target, store) = (client.clone(), target.clone(), store.clone());
        tokio::spawn(async move { certs::ensure(&client, &target, &store, now + 86_400).await })
    };
    serve(&mut api, Method::GET, &format!("{SECRETS}/roster-webhook-cert"), move |_| (200, stored)).await;
    let with_bundle = webhook_config(Some(&ca));
    serve(&mut api, Method::GET, &format!("{CONFIGS}/roster-sidecar-injector"), move |_| (200, with_bundle)).await;
    assert_eq!(pass.await.expect("join"), Ok(certs::Renewal::Keep));

    // Near the end of the serving certificate: a new one from the same CA, replacing the Secret
    // at the version read; the bundle is unchanged, so the configuration is left alone.
    let mut stored = secret.clone();
    stored["metadata"]["resourceVersion"] = "12".into();
    let late = now + certs::LEAF_VALIDITY_SECS - certs::RENEW_BEFORE_SECS + 60;
    let pass = tokio::spawn(async move { certs::ensure(&client, &target, &store, late).await });
    serve(&mut api, Method::GET, &format!("{SECRETS}/roster-webhook-cert"), move |_| (200, stored)).await;
    let renewed = serve(&mut api, Method::PUT, &format!("{SECRETS}/roster-webhook-cert"), |b| (200, b.clone())).await;
    assert_eq!(renewed["metadata"]["resourceVersion"], "12");
    assert_eq!(renewed["data"]["ca.crt"], secret["data"]["ca.crt"]);
    assert_ne!(renewed["data"]["tls.crt"], secret["data"]["tls.crt"]);
    let with_bundle = webhook_config(Some(&ca));
    serve(&mut api, Method::GET, &format!("{CONFIGS}/roster-sidecar-injector"), move |_| (200, with_bundle)).await;
    assert_eq!(pass.await.expect("join"), Ok(certs::Renewal::Leaf));
}

/// The client certificate's Secret as the API server returns it: `tls.crt` is `crt` (base64).
fn client_tls_secret(namespace: &str, crt: &str, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": "registry-client-tls", "namespace": namespace, "labels": labels},
           "data": {"tls.crt": crt, "tls.key": "a2V5", "ca.crt": "Y2E="}})
}

/// A renewal reaches the copies of running pods: every stale copy (found by its label, in any
/// namespace) is rewritten from the source, even when another namespace refuses; current ones are
/// left alone.
#[tokio::test]
async fn renewed_certificates_reach_the_copies_in_every_namespace() {
    let (client, mut api) = client();
    let refresh = tokio::spawn(async move {
        roster_operator::inject::copies::refresh(&client, "roster", "registry-client-tls").await
    });
    serve(&mut api, Method::GET, "/api/v1/namespaces/roster/secrets/registry-client-tls", |_| {
        (200, client_tls_secret("roster", "bmV3", &[]))
    })
    .await;
    let ours = [("app.kubernetes.io/managed-by", "roster-operator"), ("roster.dev/copy-of", "registry-client-tls")];
    let list = serve(&mut api, Method::GET, "/api/v1/secrets?", |_| {
        (
            200,
            json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {},
                   "items": [client_tls_secret("locked", "b2xk", &ours), client_tls_secret("shop", "b2xk", &ours),
                             client_tls_secret("cart", "bmV3", &ours)]}),
        )
    })
    .await;
    assert_eq!(list, Value::Null);
    // One namespace refuses the write (a quota, a policy): the others are still brought up to date.
    serve(&mut api, Method::PATCH, "/api/v1/namespaces/locked/secrets/registry-client-tls?", |_| {
        (403, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403}))
    })
    .await;
    let updated = serve(&mut api, Method::PATCH, "/api/v1/namespaces/shop/secrets/registry-client-tls?", echo).await;
    assert_eq!(updated["data"]["tls.crt"], "bmV3");
    let outcome = refresh.await.expect("join").expect_err("the refused copy is reported");
    assert!(outcome.contains("1 of the stale copies failed (1 updated)") && outcome.contains("locked"), "{outcome}");
}

#[tokio::test]
async fn the_webhook_answers_over_tls_with_the_issued_certificate() {
    registry::client::ensure_crypto_provider();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let issued = certs::issue(None, certs::Renewal::CaAndLeaf, &["localhost".to_string()], now).expect("issue");
    let store = certs::CertStore::default();
    store.set(&issued.tls_pem, &issued.tls_key_pem).expect("certificate");
    let (client, mut api) = client();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let settings = InjectSettings {
        image: "roster-sidecar:test".into(),
        env: Default::default(),
        gossip_key_secret: Some("roster-gossip".into()),
        tls_secret: Some("registry-client-tls".into()),
        login_token: false,
        native_sidecars: true,
    };
    let source = webhook::Source { client, namespace: "roster".into(), config_map: "roster-sidecar".into() };
    let server = tokio::spawn(webhook::serve(listener, store, settings, source));

    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "annotations": {"roster.dev/inject": "true"}},
        "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}]},
    });
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "alice"},
            "object": pod, "dryRun": false,
        }
    });
    // Only the issued CA is trusted: the handshake proves the chain and the name.
    let ca = reqwest::Certificate::from_pem(issued.ca_pem.as_bytes()).expect("ca");
    let https = reqwest::Client::builder().tls_certs_only([ca]).build().expect("client");
    let sent = review.clone();
    let call = tokio::spawn(async move {
        let r = https.post(format!("https://localhost:{port}/inject")).json(&sent).send().await.expect("https");
        (r.status().as_u16(), r.json::<Value>().await.expect("json"))
    });
    serve(&mut api, Method::GET, "/api/v1/namespaces/roster/configmaps/roster-sidecar", |_| {
        (
            200,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "roster-sidecar"},
                     "data": {"ROSTER_SERVERS": "roster.roster.svc:8500"}}),
        )
    })
    .await;
    serve(&mut api, Method::GET, "/api/v1/namespaces/roster/secrets/roster-gossip", |_| {
        (
            200,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "roster-gossip", "namespace": "roster"},
                     "data": {"key": "c2VjcmV0"}}),
        )
    })
    .await;
    serve(&mut api, Method::GET, "/api/v1/namespaces/shop/secrets/roster-gossip", not_found).await;
    let copy = serve(&mut api, Method::POST, "/api/v1/namespaces/shop/secrets", |b| (201, b.clone())).await;
    assert_eq!(copy["metadata"]["namespace"], "shop");
    assert_eq!(copy["data"]["key"], "c2VjcmV0");
    assert_eq!(copy["metadata"]["labels"]["roster.dev/copy-of"], "roster-gossip");
    // The client certificate's copy is there from an earlier pod, but the certificate was renewed
    // since: the copy is brought up to date before the pod starts.
    serve(&mut api, Method::GET, "/api/v1/namespaces/roster/secrets/registry-client-tls", |_| {
        (200, client_tls_secret("roster", "bmV3", &[]))
    })
    .await;
    serve(&mut api, Method::GET, "/api/v1/namespaces/shop/secrets/registry-client-tls", |_| {
        (200, client_tls_secret("shop", "b2xk", &[("app.kubernetes.io/managed-by", "roster-operator")]))
    })
    .await;
    let updated = serve(&mut api, Method::PATCH, "/api/v1/namespaces/shop/secrets/registry-client-tls?", echo).await;
    assert_eq!(updated["data"]["tls.crt"], "bmV3", "the renewed certificate");
    assert_eq!(updated["type"], "kubernetes.io/tls");
    let (status, answer) = call.await.expect("join");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response"]["allowed"], true);
    let patch: Vec<u8> = serde_json::from_value(answer["response"]["patch"].clone()).expect("patch bytes");
    let patch: Value = serde_json::from_slice(&patch).expect("json patch");
    let sidecar = &patch[0]["value"][0];
    assert_eq!(sidecar["name"], "roster-sidecar");
    assert!(sidecar["env"].as_array().unwrap().iter().any(|e| e["name"] == "ROSTER_TLS_CERT_FILE"));
    assert_eq!(patch[1]["value"][0]["secret"]["secretName"], "registry-client-tls", "{patch}");
    assert!(sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "ROSTER_SERVERS" && e["value"] == "roster.roster.svc:8500"));

    // Not a review: 400 naming the problem.
    let ca = reqwest::Certificate::from_pem(issued.ca_pem.as_bytes()).expect("ca");
    let https = reqwest::Client::builder().tls_certs_only([ca]).build().expect("client");
    let call = tokio::spawn(async move {
        let r = https.post(format!("https://localhost:{port}/inject")).body("{}").send().await.expect("https");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    });
    let (status, text) = call.await.expect("join");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("AdmissionReview"), "{text}");
    // A pod that wants no sidecar is let through without reading the settings.
    let plain = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db-0", "namespace": "shop"},
                       "spec": {"containers": [{"name": "db", "image": "db:1"}]}});
    let mut no_sidecar = review.clone();
    no_sidecar["request"]["object"] = plain;
    let ca = reqwest::Certificate::from_pem(issued.ca_pem.as_bytes()).expect("ca");
    let https = reqwest::Client::builder().tls_certs_only([ca]).build().expect("client");
    // Nobody answers the mock API server here: a settings read would time this out.
    let r = https
        .post(format!("https://localhost:{port}/inject"))
        .timeout(std::time::Duration::from_secs(5))
        .json(&no_sidecar)
        .send()
        .await
        .expect("answered without reading the settings");
    let answer: Value = r.json().await.expect("json");
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none(), "{answer}");
    server.abort();
}
