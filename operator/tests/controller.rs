//! The controller against kube's mock API service: each scenario plays the API server, checks every
//! request the reconciler makes (method, path, field manager, body) and answers as a server would.

use std::sync::Arc;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use roster_operator::crd::RegistryCluster;
use roster_operator::registry_cluster::controller::{reconcile, Context};
use serde_json::Value;
use tower_test::mock::{self, Handle};

fn fixture(name: &str) -> RegistryCluster {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registry_cluster").join(name);
    serde_yaml::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("parses")
}

fn context() -> (Arc<Context>, Handle<Request<Body>, Response<Body>>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Context {
        client: Client::new(service, "default"),
        query_registry: false,
        http: registry::client::http_builder().build().expect("http"),
    };
    (Arc::new(ctx), handle)
}

/// Takes the next request; checks it is a server-side apply to `path`; answers with `answer(body)`.
async fn expect_apply(
    handle: &mut Handle<Request<Body>, Response<Body>>,
    path: &str,
    answer: impl FnOnce(Value) -> Value,
) -> Value {
    let (request, send) = handle.next_request().await.expect("a request");
    assert_eq!(request.method(), Method::PATCH, "{}", request.uri());
    let uri = request.uri().to_string();
    assert!(uri.starts_with(path), "expected {path}, got {uri}");
    assert!(uri.contains("fieldManager=roster-operator") && uri.contains("force=true"), "{uri}");
    assert_eq!(
        request.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/apply-patch+yaml"),
        "server-side apply"
    );
    let body: Value = serde_json::from_slice(&request.into_body().collect_bytes().await.expect("body")).expect("json");
    let reply = answer(body.clone());
    send.send_response(
        Response::builder().body(Body::from(serde_json::to_vec(&reply).expect("json"))).expect("response"),
    );
    body
}

/// The API server's answer to a status apply: the whole resource with the new status.
fn with_status(rc: &RegistryCluster) -> impl FnOnce(Value) -> Value {
    let mut whole = serde_json::to_value(rc).expect("json");
    move |patch| {
        whole["status"] = patch["status"].clone();
        whole
    }
}

#[tokio::test]
async fn a_new_cluster_gets_its_objects_and_a_status() {
    let rc = fixture("three-servers.yaml");
    let (ctx, mut handle) = context();
    let reconciler = tokio::spawn(reconcile(Arc::new(rc.clone()), ctx));

    let headless = expect_apply(&mut handle, "/api/v1/namespaces/shop/services/registry-server?", |b| b).await;
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let client = expect_apply(&mut handle, "/api/v1/namespaces/shop/services/registry?", |b| b).await;
    assert_eq!(client["spec"]["ports"][0]["port"], 8500);
    let sts = expect_apply(&mut handle, "/apis/apps/v1/namespaces/shop/statefulsets/registry?", |mut b| {
        // The API server answers with the object as it stands: two of three servers ready.
        b["status"] = serde_json::json!({"replicas": 3, "readyReplicas": 2});
        b
    })
    .await;
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "RegistryCluster");
    let pdb = expect_apply(&mut handle, "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/registry?", |b| b).await;
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    let status = expect_apply(
        &mut handle,
        "/apis/roster.dev/v1alpha1/namespaces/shop/registryclusters/registry/status?",
        with_status(&rc),
    )
    .await;
    assert_eq!(status["status"]["readyServers"], 2);
    assert_eq!(status["status"]["phase"], "Degraded");
    let available = status["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Available")
        .cloned();
    assert_eq!(available.as_ref().map(|c| c["status"].clone()), Some(Value::from("True")), "2 of 3 is a quorum");

    let action = reconciler.await.expect("join").expect("reconciled");
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(30)));
}

#[tokio::test]
async fn a_bad_spec_builds_nothing_and_says_why() {
    let rc = fixture("bad-spec.yaml");
    let name = rc.metadata.name.clone().expect("name");
    let (ctx, mut handle) = context();
    let reconciler = tokio::spawn(reconcile(Arc::new(rc.clone()), ctx));
    let status = expect_apply(
        &mut handle,
        &format!("/apis/roster.dev/v1alpha1/namespaces/shop/registryclusters/{name}/status?"),
        with_status(&rc),
    )
    .await;
    assert_eq!(status["status"]["phase"], "Failed");
    let degraded = status["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Degraded")
        .cloned()
        .expect("Degraded");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(degraded["message"].as_str().is_some_and(|m| m.contains("spec.replicas")), "{degraded}");
    let action = reconciler.await.expect("join").expect("reconciled");
    assert_eq!(action, Action::await_change(), "nothing to retry until the spec changes");
    // And nothing else was asked of the API server (the client is gone: the channel ends empty).
    let next = tokio::time::timeout(std::time::Duration::from_millis(100), handle.next_request()).await;
    assert!(!matches!(next, Ok(Some(_))), "an unexpected request after a refused spec");
}
