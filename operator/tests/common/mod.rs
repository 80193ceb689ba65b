//! Shared by the controller tests: a real registry (`roster dev` on a given port, killed on drop)
//! and the mock API server's side of one request.
#![allow(dead_code)] // each test binary uses its own subset

use std::process::{Child, Command, Stdio};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tower_test::mock::Handle;

pub struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `roster dev` (the binary next to the test's operator binary) with HTTP on `http` and RPC on
/// `rpc`, and waits until it answers.
#[allow(dead_code)] // each test binary uses its own subset
pub async fn start_registry(http: &str, rpc: &str) -> Registry {
    start_registry_with(http, rpc, &[]).await
}

/// The same with extra flags (ACL settings).
pub async fn start_registry_with(http: &str, rpc: &str, extra: &[&str]) -> Registry {
    registry::client::ensure_crypto_provider();
    let roster = std::path::PathBuf::from(env!("CARGO_BIN_EXE_roster-operator")).with_file_name("roster");
    assert!(roster.exists(), "{} is missing: cargo build -p roster-registry", roster.display());
    let child = Command::new(roster)
        .args(["dev", "--http-addr", http, "--rpc-addr", rpc, "--gossip-addr", "off"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("roster dev");
    let registry = Registry(child);
    let client = registry::client::Client::new(vec![http.into()]).expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    // Any answer will do (with ACLs on, a 403 is an answer).
    while client
        .raw(reqwest::Method::GET, "/v1/status/leader", Default::default(), Default::default(), false)
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "roster dev did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    registry
}

#[allow(dead_code)]
/// Plays the API server for the next request, which must be `method` to a URI starting with `path`:
/// answers with `whole`, carrying the status the request wrote if it wrote one (`null`: echoes the
/// request body, as a server-side apply of a new object answers). Returns the body.
pub async fn answer(
    handle: &mut Handle<Request<Body>, Response<Body>>,
    method: Method,
    path: &str,
    whole: impl serde::Serialize,
) -> Value {
    let (request, send) = handle.next_request().await.expect("a request");
    assert_eq!(request.method(), method);
    let uri = request.uri().to_string();
    assert!(uri.starts_with(path), "expected {path}, got {uri}");
    let body: Value = serde_json::from_slice(&request.into_body().collect_bytes().await.expect("body")).expect("json");
    let mut reply = serde_json::to_value(whole).expect("json");
    if reply.is_null() {
        reply = body.clone();
    } else if body.get("status").is_some() {
        reply["status"] = body["status"].clone();
    }
    send.send_response(
        Response::builder().body(Body::from(serde_json::to_vec(&reply).expect("json"))).expect("response"),
    );
    body
}

/// The mock API server's handle, as the tests drive it.
#[allow(dead_code)]
pub type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// A controller context whose Kubernetes client is the mock API service, talking to the registry at
/// `registry` with `token`.
#[allow(dead_code)]
pub fn context(
    registry: &str,
    token: Option<&str>,
) -> (std::sync::Arc<roster_operator::registry_api::Context>, ApiHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = roster_operator::registry_api::Context::new(
        kube::Client::new(service, "default"),
        Some(registry.into()),
        token.map(str::to_string),
    );
    (std::sync::Arc::new(ctx), handle)
}

/// Plays the API server for an Event publication (a create, or a merge patch of a repeat's series):
/// checks its reason and type, and answers with it. Returns the event.
#[allow(dead_code)]
pub async fn answer_event(handle: &mut ApiHandle, reason: &str, type_: &str) -> Value {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no {reason} event came"))
        .expect("a request");
    let uri = request.uri().to_string();
    assert!(uri.contains("/apis/events.k8s.io/v1/namespaces/"), "expected the {reason} event, got {uri}");
    assert!(request.method() == Method::POST || request.method() == Method::PATCH, "{uri}");
    let bytes = request.into_body().collect_bytes().await.expect("body");
    let event: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!((event["reason"].as_str(), event["type"].as_str()), (Some(reason), Some(type_)), "{event}");
    send.send_response(Response::builder().body(Body::from(bytes)).expect("response"));
    event
}

/// Plays the API server for the operator's look for the token it keeps for cluster `roster` in
/// namespace `shop`: there is none (no ACL bootstrap was done by the operator).
#[allow(dead_code)]
pub async fn answer_no_kept_token(handle: &mut ApiHandle) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("the token lookup")
        .expect("a request");
    let uri = request.uri().to_string();
    assert_eq!(request.method(), Method::GET, "{uri}");
    assert!(uri.starts_with("/api/v1/namespaces/shop/secrets/roster-acl-bootstrap-token"), "{uri}");
    let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
    send.send_response(
        Response::builder().status(404).body(Body::from(serde_json::to_vec(&body).expect("json"))).expect("response"),
    );
}

/// A request the mock API server received and has not answered yet.
pub type Pending = (Request<Body>, tower_test::mock::SendResponse<Response<Body>>);

/// The next request to the mock API server, unanswered.
pub async fn next_request(handle: &mut ApiHandle, expected: &str) -> Pending {
    tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {expected}"))
        .expect("a request")
}

/// Whether `pending` is `method` on a URI starting with `path`.
pub fn is(pending: &Pending, method: Method, path: &str) -> bool {
    pending.0.method() == method && pending.0.uri().to_string().starts_with(path)
}

/// Plays the API server for the next request, which must be `method` on a URI starting with
/// `path`: answers `reply(request body)` as (status, JSON). Returns the request body (null if none).
pub async fn serve(
    handle: &mut ApiHandle,
    method: Method,
    path: &str,
    reply: impl FnOnce(&Value) -> (u16, Value),
) -> Value {
    let pending = next_request(handle, &format!("{method} {path}")).await;
    serve_pending(pending, method, path, reply).await
}

/// `serve` for a request already taken.
pub async fn serve_pending(
    pending: Pending,
    method: Method,
    path: &str,
    reply: impl FnOnce(&Value) -> (u16, Value),
) -> Value {
    let (request, send) = pending;
    let uri = request.uri().to_string();
    assert_eq!(request.method(), method, "{uri}");
    assert!(uri.starts_with(path), "expected {method} {path}, got {uri}");
    if method == Method::PATCH && !path.contains("/events") {
        assert!(uri.contains("fieldManager=roster-operator") && uri.contains("force=true"), "{uri}");
        assert_eq!(
            request.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/apply-patch+yaml"),
            "server-side apply"
        );
    }
    let bytes = request.into_body().collect_bytes().await.expect("body");
    let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("json") };
    let (status, answer) = reply(&body);
    send.send_response(
        Response::builder()
            .status(StatusCode::from_u16(status).expect("status"))
            .body(Body::from(serde_json::to_vec(&answer).expect("json")))
            .expect("response"),
    );
    body
}

/// The API server's answer to an apply: the object as sent.
pub fn echo(body: &Value) -> (u16, Value) {
    (200, body.clone())
}

pub fn not_found(_: &Value) -> (u16, Value) {
    (404, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}))
}
