//! The RegistryCluster controller against kube's mock API service, scenario by scenario: each test
//! plays the API server (checking every request the reconciler makes: method, path, field manager,
//! body) and the servers (a fake autopilot that records the Raft operations asked of it).
//! Scenarios: create, scale up, scale down (Raft removal before the StatefulSet shrinks, leader
//! handed off first), rolling update (followers first, leader last, waiting for readiness), bad spec.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use registry::api::{AclAuthMethod, AclBindingRule, AutopilotHealth, ServerHealth};
use roster_operator::crd::RegistryCluster;
use roster_operator::registry_cluster::controller::{reconcile, Context, ServerAdmin, Target};
use serde_json::{json, Value};
use tower_test::mock;

mod common;

use common::{echo, is, next_request, not_found, serve, serve_pending, ApiHandle, Pending};

fn fixture(name: &str) -> RegistryCluster {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registry_cluster").join(name);
    serde_yaml::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("parses")
}

/// The servers as the controller sees them: autopilot health from `servers`, operations recorded.
#[derive(Default)]
struct FakeServers {
    /// (name, leader, healthy); empty: unreachable.
    servers: Mutex<Vec<(String, bool, bool)>>,
    calls: Mutex<Vec<String>>,
    /// What `/v1/catalog/datacenters` answers; None: the servers cannot be asked.
    datacenters: Mutex<Option<Vec<String>>>,
}

impl FakeServers {
    fn with(servers: &[(&str, bool, bool)]) -> Arc<Self> {
        let s = FakeServers::default();
        *s.servers.lock().expect("lock") = servers.iter().map(|(n, l, h)| (n.to_string(), *l, *h)).collect();
        Arc::new(s)
    }

    /// The Raft and ACL operations asked for (health reads left out).
    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").iter().filter(|c| !c.starts_with("health")).cloned().collect()
    }

    /// The token the last health read was made with.
    fn health_token(&self) -> Option<String> {
        self.calls.lock().expect("lock").iter().find(|c| c.starts_with("health")).cloned()
    }
}

impl ServerAdmin for FakeServers {
    fn health<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<AutopilotHealth, String>> {
        let servers = self.servers.lock().expect("lock").clone();
        self.calls.lock().expect("lock").retain(|c| !c.starts_with("health"));
        self.calls.lock().expect("lock").push(format!("health with {:?}", target.token));
        Box::pin(async move {
            if servers.is_empty() {
                return Err("connection refused".into());
            }
            let servers: Vec<ServerHealth> = servers
                .iter()
                .enumerate()
                .map(|(i, (name, leader, healthy))| ServerHealth {
                    id: i.to_string(),
                    name: name.clone(),
                    address: format!("{name}.registry-server.shop.svc:8300"),
                    serf_status: "alive".into(),
                    version: "0.1.0".into(),
                    leader: *leader,
                    last_contact: "0s".into(),
                    last_term: 2,
                    last_index: 120,
                    healthy: *healthy,
                    voter: true,
                    stable_since: "2026-11-25T10:00:00Z".into(),
                })
                .collect();
            Ok(AutopilotHealth { healthy: servers.iter().all(|s| s.healthy), failure_tolerance: 1, servers })
        })
    }

    fn datacenters<'a>(&'a self, _target: &'a Target) -> BoxFuture<'a, Result<Vec<String>, String>> {
        let answer = self.datacenters.lock().expect("lock").clone().ok_or_else(|| "connection refused".to_string());
        Box::pin(async move { answer })
    }

    fn remove_peer<'a>(&'a self, _target: &'a Target, server: &'a str) -> BoxFuture<'a, Result<(), String>> {
        self.calls.lock().expect("lock").push(format!("remove {server}"));
        Box::pin(async { Ok(()) })
    }

    fn transfer_leadership<'a>(&'a self, _target: &'a Target, to: &'a str) -> BoxFuture<'a, Result<(), String>> {
        self.calls.lock().expect("lock").push(format!("transfer to {to}"));
        Box::pin(async { Ok(()) })
    }

    fn bootstrap_acl<'a>(&'a self, _target: &'a Target) -> BoxFuture<'a, Result<Option<String>, String>> {
        self.calls.lock().expect("lock").push("bootstrap".into());
        Box::pin(async { Ok(Some("minted-management-token".to_string())) })
    }

    /// Records what the servers were asked to keep (nothing when the cluster wants no method).
    fn sync_auth_method<'a>(
        &'a self,
        _target: &'a Target,
        owner: &'a str,
        desired: Option<&'a (AclAuthMethod, Vec<AclBindingRule>)>,
    ) -> BoxFuture<'a, Result<Vec<String>, String>> {
        let changed = desired.map(|(m, rules)| {
            let config = m.config.clone().unwrap_or_default();
            let binds: Vec<String> = rules.iter().map(|r| format!("{}={}", r.bind_type, r.bind_name)).collect();
            let call = format!(
                "auth method {} at {} reviewing as {} ({owner}): {}",
                m.name,
                config["Host"].as_str().unwrap_or_default(),
                config["ServiceAccountJWT"].as_str().unwrap_or_default(),
                binds.join(", ")
            );
            self.calls.lock().expect("lock").push(call);
            vec![format!("auth method {} created", m.name)]
        });
        Box::pin(async move { Ok(changed.unwrap_or_default()) })
    }
}

fn context(servers: Arc<FakeServers>) -> (Arc<Context>, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Arc::new(Context::new(Client::new(service, "default"), servers)), handle)
}

/// The next request must publish an Event: created (POST), or a repeat folded into its series
/// (merge PATCH), as kube's Recorder does. Returns the event.
async fn expect_event(handle: &mut ApiHandle) -> Value {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("an event")
        .expect("a request");
    let uri = request.uri().to_string();
    assert!(uri.starts_with(EVENTS), "expected an event, got {} {uri}", request.method());
    assert!(request.method() == Method::POST || request.method() == Method::PATCH, "{uri}");
    let bytes = request.into_body().collect_bytes().await.expect("body");
    let event: Value = serde_json::from_slice(&bytes).expect("json");
    send.send_response(Response::builder().body(Body::from(bytes)).expect("response"));
    event
}

/// The API server's answer to a status apply: the whole resource, carrying the new status.
fn with_status(body: &Value) -> (u16, Value) {
    let mut whole = serde_json::to_value(fixture("three-servers.yaml")).expect("json");
    whole["status"] = body["status"].clone();
    (200, whole)
}

/// A StatefulSet as the API server would return it.
fn stateful_set(replicas: i32, update_revision: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "registry", "namespace": "shop"},
        "spec": {"replicas": replicas, "serviceName": "registry-server", "selector": {}, "template": {}},
        "status": {"replicas": replicas, "updateRevision": update_revision, "currentRevision": "old"}
    })
}

/// Server pods `registry-<i>`: (ordinal, revision, ready).
fn pods(list: &[(i32, &str, bool)]) -> Value {
    let items: Vec<Value> = list
        .iter()
        .map(|(i, rev, ready)| {
            json!({
                "metadata": {
                    "name": format!("registry-{i}"), "namespace": "shop",
                    "labels": {"controller-revision-hash": rev, "app.kubernetes.io/instance": "registry"}
                },
                "status": {"conditions": [{"type": "Ready", "status": if *ready { "True" } else { "False" }}]}
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
}

/// A cluster that was already available (so no QuorumReady event is due).
fn running(replicas: i32) -> RegistryCluster {
    let mut rc = fixture("three-servers.yaml");
    rc.spec.replicas = replicas;
    rc.metadata.generation = Some(2);
    rc.status = Some(
        serde_json::from_value(json!({
            "phase": "Running", "readyServers": 3,
            "conditions": [{"type": "Available", "status": "True", "reason": "QuorumReady", "message": "",
                            "lastTransitionTime": "2026-11-25T10:00:00Z"}]
        }))
        .expect("status"),
    );
    rc
}

const STS: &str = "/apis/apps/v1/namespaces/shop/statefulsets/registry";
const PODS: &str = "/api/v1/namespaces/shop/pods?";
const STATUS: &str = "/apis/roster.dev/v1alpha1/namespaces/shop/registryclusters/registry/status?";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

/// The applies every valid pass makes; returns the StatefulSet that was applied.
async fn expect_applies(handle: &mut ApiHandle) -> Value {
    let cm = serve(handle, Method::PATCH, "/api/v1/namespaces/shop/configmaps/registry-config?", echo).await;
    assert!(cm["data"]["bootstrap-expect"].is_string());
    let headless = serve(handle, Method::PATCH, "/api/v1/namespaces/shop/services/registry-server?", echo).await;
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let client = serve(handle, Method::PATCH, "/api/v1/namespaces/shop/services/registry?", echo).await;
    assert_eq!(client["spec"]["ports"][0]["port"], 8500);
    let sts = serve(handle, Method::PATCH, &format!("{STS}?"), echo).await;
    assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "RegistryCluster");
    serve(handle, Method::PATCH, "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/registry?", echo).await;
    sts
}

/// Observation of an existing StatefulSet and its pods.
async fn expect_observe(handle: &mut ApiHandle, sts: Value, pod_list: Value) {
    serve(handle, Method::GET, STS, move |_| (200, sts)).await;
    serve(handle, Method::GET, PODS, move |_| (200, pod_list)).await;
    // ACLs are on in the fixture: the servers are asked with the token the operator keeps.
    serve(handle, Method::GET, TOKEN_SECRET, |_| {
        let token = base64::engine::general_purpose::STANDARD.encode("kept-token");
        (200, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "registry-acl-bootstrap-token"}, "data": {"token": token}}))
    })
    .await;
}

const TOKEN_SECRET: &str = "/api/v1/namespaces/shop/secrets/registry-acl-bootstrap-token";

fn condition(status: &Value, type_: &str) -> Value {
    status["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_new_cluster_gets_its_objects_and_a_status() {
    let rc = fixture("three-servers.yaml");
    let servers = FakeServers::with(&[]);
    let (ctx, mut handle) = context(servers.clone());
    let reconciler = tokio::spawn(reconcile(Arc::new(rc.clone()), ctx));

    serve(&mut handle, Method::GET, STS, not_found).await;
    let sts = expect_applies(&mut handle).await;
    assert_eq!(sts["spec"]["replicas"], 3);
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    assert_eq!(status["status"]["phase"], "Pending");
    assert_eq!(condition(&status, "Available")["status"], "False");
    assert_eq!(reconciler.await.expect("join").expect("reconciled"), Action::requeue(Duration::from_secs(30)));
    assert!(servers.calls().is_empty());
}

#[tokio::test]
async fn scaling_up_grows_the_stateful_set_and_leaves_joining_to_the_servers() {
    let servers =
        FakeServers::with(&[("registry-0", true, true), ("registry-1", false, true), ("registry-2", false, true)]);
    let (ctx, mut handle) = context(servers.clone());
    let reconciler = tokio::spawn(reconcile(Arc::new(running(5)), ctx));

    expect_observe(&mut handle, stateful_set(3, "a"), pods(&[(0, "a", true), (1, "a", true), (2, "a", true)])).await;
    let sts = expect_applies(&mut handle).await;
    assert_eq!(sts["spec"]["replicas"], 5);
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    assert_eq!(status["status"]["leader"], "registry-0");
    assert_eq!(status["status"]["lastRaftIndex"], 120);
    assert_eq!(status["status"]["phase"], "Degraded", "3 of 5 ready while the new servers start");
    assert_eq!(condition(&status, "Progressing")["reason"], "ServersStarting");
    reconciler.await.expect("join").expect("reconciled");
    assert!(servers.calls().is_empty(), "nothing asked of Raft: {:?}", servers.calls());
    assert_eq!(servers.health_token().as_deref(), Some(r#"health with Some("kept-token")"#));
}

#[tokio::test]
async fn scaling_down_removes_servers_from_raft_before_the_stateful_set_shrinks() {
    let five = [(0, "a", true), (1, "a", true), (2, "a", true), (3, "a", true), (4, "a", true)];
    let members = |n: usize, leader: usize| -> Vec<(String, bool, bool)> {
        (0..n).map(|i| (format!("registry-{i}"), i == leader, true)).collect()
    };

    // Pass 1: the leader is registry-4, which is leaving: hand off first; the StatefulSet stays at 5.
    let servers = FakeServers::with(&[]);
    *servers.servers.lock().expect("lock") = members(5, 4);
    let (ctx, mut handle) = context(servers.clone());
    let reconciler = tokio::spawn(reconcile(Arc::new(running(3)), ctx.clone()));
    expect_observe(&mut handle, stateful_set(5, "a"), pods(&five)).await;
    assert_eq!(expect_applies(&mut handle).await["spec"]["replicas"], 5);
    let event = expect_event(&mut handle).await;
    assert_eq!(event["reason"], "LeadershipTransferred");
    assert_eq!(event["regarding"]["kind"], "RegistryCluster");
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    assert_eq!(status["status"]["phase"], "Updating");
    assert_eq!(condition(&status, "Progressing")["reason"], "ScalingDown");
    assert_eq!(reconciler.await.expect("join").expect("ok"), Action::requeue(Duration::from_secs(5)));
    assert_eq!(servers.calls(), ["transfer to registry-0"]);

    // Pass 2: registry-0 leads now; registry-4 is removed from Raft, the StatefulSet still at 5.
    *servers.servers.lock().expect("lock") = members(5, 0);
    let reconciler = tokio::spawn(reconcile(Arc::new(running(3)), ctx.clone()));
    expect_observe(&mut handle, stateful_set(5, "a"), pods(&five)).await;
    assert_eq!(expect_applies(&mut handle).await["spec"]["replicas"], 5);
    let event = expect_event(&mut handle).await;
    assert_eq!(event["reason"], "ServerRemoved");
    assert!(event["note"].as_str().is_some_and(|n| n.contains("registry-4")), "{event}");
    serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    reconciler.await.expect("join").expect("ok");
    assert_eq!(servers.calls(), ["transfer to registry-0", "remove registry-4"]);

    // Pass 3: registry-4 is out; registry-3 next.
    *servers.servers.lock().expect("lock") = members(4, 0);
    let reconciler = tokio::spawn(reconcile(Arc::new(running(3)), ctx.clone()));
    expect_observe(&mut handle, stateful_set(5, "a"), pods(&five)).await;
    assert_eq!(expect_applies(&mut handle).await["spec"]["replicas"], 5);
    expect_event(&mut handle).await;
    serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    reconciler.await.expect("join").expect("ok");
    assert_eq!(servers.calls(), ["transfer to registry-0", "remove registry-4", "remove registry-3"]);

    // Pass 4: both out of Raft: only now does the StatefulSet shrink.
    *servers.servers.lock().expect("lock") = members(3, 0);
    let reconciler = tokio::spawn(reconcile(Arc::new(running(3)), ctx.clone()));
    expect_observe(&mut handle, stateful_set(5, "a"), pods(&five)).await;
    assert_eq!(expect_applies(&mut handle).await["spec"]["replicas"], 3);
    serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    reconciler.await.expect("join").expect("ok");
    assert_eq!(servers.calls().len(), 3, "nothing more asked of Raft");
}

#[tokio::test]
async fn a_scale_down_waits_while_the_servers_cannot_be_asked() {
    let servers = FakeServers::with(&[]);
    let (ctx, mut handle) = context(servers.clone());
    let reconciler = tokio::spawn(reconcile(Arc::new(running(3)), ctx));
    expect_observe(
        &mut handle,
        stateful_set(5, "a"),
        pods(&[(0, "a", true), (1, "a", true), (2, "a", true), (3, "a", true), (4, "a", true)]),
    )
    .await;
    assert_eq!(expect_applies(&mut handle).await["spec"]["replicas"], 5, "never shrink without Raft's consent");
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    let progressing = condition(&status, "Progressing");
    assert_eq!(progressing["reason"], "ScalingDown");
    assert!(progressing["message"].as_str().is_some_and(|m| m.contains("cannot ask the servers")), "{progressing}");
    reconciler.await.expect("join").expect("ok");
}

#[tokio::test]
async fn a_rolling_update_restarts_followers_first_and_the_leader_last() {
    let servers =
        FakeServers::with(&[("registry-0", true, true), ("registry-1", false, true), ("registry-2", false, true)]);
    let (ctx, mut handle) = context(servers.clone());

    // All three on the old template: the highest follower restarts first.
    let reconciler = tokio::spawn(reconcile(Arc::new(running(3)), ctx.clone()));
    expect_observe(&mut handle, stateful_set(3, "new"), pods(&[(0, "old", true), (1, "old", true), (2, "old", true)]))
        .await;
    expect_applies(&mut handle).await;
    serve(&mut handle, Method::DELETE, "/api/v1/namespaces/shop/pods/registry-2", |_| {
        (200, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "registry-2", "namespace": "shop"}}))
    })
    .await;
    let event = expect_event(&mut handle).await;
    assert_eq!(event["reason"], "ServerRestarted");
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    assert_eq!(condition(&status, "Progressing")["reason"], "RollingUpdate");
    reconciler.await.expect("join").expect("ok");

    // registry-2 is back but not ready yet: nothing else is restarted.
    let reconciler = tokio::spawn(reconcile(Arc::new(running(3)), ctx.clone()));
    expect_observe(&mut handle, stateful_set(3, "new"), pods(&[(0, "old", true), (1, "old", true), (2, "new", false)]))
        .await;
    expect_applies(&mut handle).await;
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    let message = condition(&status, "Progressing")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.starts_with("waiting for registry-2 to be ready"), "{message}");
    reconciler.await.expect("join").expect("ok");

    // Ready, but autopilot says it has not caught up: still waiting.
    servers.servers.lock().expect("lock")[2].2 = false;
    let reconciler = tokio::spawn(reconcile(Arc::new(running(3)), ctx.clone()));
    expect_observe(&mut handle, stateful_set(3, "new"), pods(&[(0, "old", true), (1, "old", true), (2, "new", true)]))
        .await;
    expect_applies(&mut handle).await;
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    let message = condition(&status, "Progressing")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.starts_with("waiting for registry-2 to catch up"), "{message}");
    reconciler.await.expect("join").expect("ok");

    // Followers done; the leader's turn: leadership is handed off, not the pod deleted.
    servers.servers.lock().expect("lock")[2].2 = true;
    let reconciler = tokio::spawn(reconcile(Arc::new(running(3)), ctx.clone()));
    expect_observe(&mut handle, stateful_set(3, "new"), pods(&[(0, "old", true), (1, "new", true), (2, "new", true)]))
        .await;
    expect_applies(&mut handle).await;
    assert_eq!(expect_event(&mut handle).await["reason"], "LeadershipTransferred");
    serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    reconciler.await.expect("join").expect("ok");
    assert_eq!(servers.calls(), ["transfer to registry-1"]);

    // registry-1 leads now: the old leader restarts last.
    *servers.servers.lock().expect("lock") =
        vec![("registry-0".into(), false, true), ("registry-1".into(), true, true), ("registry-2".into(), false, true)];
    let reconciler = tokio::spawn(reconcile(Arc::new(running(3)), ctx.clone()));
    expect_observe(&mut handle, stateful_set(3, "new"), pods(&[(0, "old", true), (1, "new", true), (2, "new", true)]))
        .await;
    expect_applies(&mut handle).await;
    serve(&mut handle, Method::DELETE, "/api/v1/namespaces/shop/pods/registry-0", |_| {
        (200, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "registry-0", "namespace": "shop"}}))
    })
    .await;
    expect_event(&mut handle).await;
    serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    reconciler.await.expect("join").expect("ok");

    // All current: steady, Running, nothing deleted.
    let reconciler = tokio::spawn(reconcile(Arc::new(running(3)), ctx.clone()));
    expect_observe(&mut handle, stateful_set(3, "new"), pods(&[(0, "new", true), (1, "new", true), (2, "new", true)]))
        .await;
    expect_applies(&mut handle).await;
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    assert_eq!(status["status"]["phase"], "Running");
    assert_eq!(condition(&status, "Progressing")["status"], "False");
    assert_eq!(reconciler.await.expect("join").expect("ok"), Action::requeue(Duration::from_secs(30)));
}

#[tokio::test]
async fn losing_quorum_is_a_warning_event() {
    let servers = FakeServers::with(&[]);
    let (ctx, mut handle) = context(servers);
    let reconciler = tokio::spawn(reconcile(Arc::new(running(3)), ctx));
    expect_observe(&mut handle, stateful_set(3, "a"), pods(&[(0, "a", true), (1, "a", false), (2, "a", false)])).await;
    expect_applies(&mut handle).await;
    let event = expect_event(&mut handle).await;
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("QuorumLost")));
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    assert_eq!(condition(&status, "Available")["reason"], "NoQuorum");
    reconciler.await.expect("join").expect("ok");
}

#[tokio::test]
async fn a_bad_spec_builds_nothing_and_says_why() {
    let rc = fixture("bad-spec.yaml");
    let name = rc.metadata.name.clone().expect("name");
    let (ctx, mut handle) = context(FakeServers::with(&[]));
    let reconciler = tokio::spawn(reconcile(Arc::new(rc.clone()), ctx));
    let event = expect_event(&mut handle).await;
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("InvalidSpec")));
    let status = serve(
        &mut handle,
        Method::PATCH,
        &format!("/apis/roster.dev/v1alpha1/namespaces/shop/registryclusters/{name}/status?"),
        with_status,
    )
    .await;
    assert_eq!(status["status"]["phase"], "Failed");
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(degraded["message"].as_str().is_some_and(|m| m.contains("spec.replicas")), "{degraded}");
    let action = reconciler.await.expect("join").expect("reconciled");
    assert_eq!(action, Action::await_change(), "nothing to retry until the spec changes");
    // And nothing else was asked of the API server (the client is gone: the channel ends empty).
    let next = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
    assert!(!matches!(next, Ok(Some(_))), "an unexpected request after a refused spec");
}

#[tokio::test]
async fn acls_are_bootstrapped_once_and_the_token_kept_in_a_secret() {
    let servers =
        FakeServers::with(&[("registry-0", true, true), ("registry-1", false, true), ("registry-2", false, true)]);
    let (ctx, mut handle) = context(servers.clone());
    let reconciler = tokio::spawn(reconcile(Arc::new(running(3)), ctx));
    serve(&mut handle, Method::GET, STS, |_| (200, stateful_set(3, "a"))).await;
    serve(&mut handle, Method::GET, PODS, |_| (200, pods(&[(0, "a", true), (1, "a", true), (2, "a", true)]))).await;
    serve(&mut handle, Method::GET, TOKEN_SECRET, not_found).await;
    let secret = serve(&mut handle, Method::PATCH, &format!("{TOKEN_SECRET}?"), echo).await;
    let token = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["token"].as_str().expect("token"))
        .expect("b64");
    assert_eq!(token, b"minted-management-token");
    assert!(secret["metadata"]["ownerReferences"].is_null(), "the token outlives the resource, like the data");
    assert_eq!(expect_event(&mut handle).await["reason"], "AclBootstrapped");
    expect_applies(&mut handle).await;
    serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    reconciler.await.expect("join").expect("ok");
    assert_eq!(servers.calls(), ["bootstrap"]);
    assert_eq!(servers.health_token().as_deref(), Some(r#"health with Some("minted-management-token")"#));
}

/// A cluster asking for Kubernetes login: the operator reads its token reviewer's Secret and has
/// the servers keep a `kubernetes` method reviewing with that token, binding the ServiceAccount's
/// service and the pod's node.
#[tokio::test]
async fn kubernetes_login_is_set_up_with_the_token_reviewer() {
    let servers =
        FakeServers::with(&[("registry-0", true, true), ("registry-1", false, true), ("registry-2", false, true)]);
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Context::new(Client::new(service, "default"), servers.clone())
        .with_token_reviewer(Some(("roster-system".into(), "roster-token-reviewer".into())));
    let mut rc = running(3);
    rc.spec.acl.kubernetes_auth = Some(serde_json::from_value(json!({"namespaces": ["shop"]})).expect("spec"));
    let reconciler = tokio::spawn(reconcile(Arc::new(rc), Arc::new(ctx)));
    expect_observe(&mut handle, stateful_set(3, "a"), pods(&[(0, "a", true), (1, "a", true), (2, "a", true)])).await;
    expect_applies(&mut handle).await;
    serve(&mut handle, Method::GET, "/api/v1/namespaces/roster-system/secrets/roster-token-reviewer", |_| {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        (
            200,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                   "metadata": {"name": "roster-token-reviewer"},
                   "data": {"token": b64("reviewer-jwt"), "ca.crt": b64("-----BEGIN CERTIFICATE-----")}}),
        )
    })
    .await;
    let event = expect_event(&mut handle).await;
    assert_eq!(event["reason"], "KubernetesAuthConfigured");
    serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    reconciler.await.expect("join").expect("ok");
    assert_eq!(
        servers.calls(),
        ["auth method kubernetes at https://kubernetes.default.svc reviewing as reviewer-jwt \
          (roster-operator: ServiceAccount login for RegistryCluster shop/registry): \
          service=${serviceaccount.name}, node=${pod.name}"]
    );
}

/// Without the chart's token reviewer the operator cannot set the method up, and says so in an
/// event instead of failing the whole reconcile.
#[tokio::test]
async fn kubernetes_login_without_a_token_reviewer_is_a_warning() {
    let servers =
        FakeServers::with(&[("registry-0", true, true), ("registry-1", false, true), ("registry-2", false, true)]);
    let (ctx, mut handle) = context(servers.clone());
    let mut rc = running(3);
    rc.spec.acl.kubernetes_auth = Some(Default::default());
    let reconciler = tokio::spawn(reconcile(Arc::new(rc), ctx));
    expect_observe(&mut handle, stateful_set(3, "a"), pods(&[(0, "a", true), (1, "a", true), (2, "a", true)])).await;
    expect_applies(&mut handle).await;
    let event = expect_event(&mut handle).await;
    assert_eq!(event["reason"], "TokenReviewerMissing");
    assert!(event["note"].as_str().unwrap_or_default().contains("cluster.acl.kubernetesAuth.enabled"), "{event}");
    serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    reconciler.await.expect("join").expect("ok");
    assert!(servers.calls().is_empty(), "{:?}", servers.calls());
}

// TLS: the CA Secret, the server certificate Secret, renewal without a rolling restart, cert-manager.

use roster_operator::registry_cluster::{tls, validate as validate_cluster, DEFAULT_IMAGE};

const CA_SECRET: &str = "/api/v1/namespaces/shop/secrets/registry-tls-ca";
const SERVER_SECRET: &str = "/api/v1/namespaces/shop/secrets/registry-server-tls";
const CLIENT_SECRET: &str = "/api/v1/namespaces/shop/secrets/registry-client-tls";
const CA_CONFIG_MAP: &str = "/api/v1/namespaces/shop/configmaps/registry-ca?";

fn b64_field(v: &Value, key: &str) -> String {
    let text = v["data"][key].as_str().unwrap_or_else(|| panic!("no {key} in {v}"));
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(text).expect("base64")).expect("utf-8")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

/// A Secret as JSON, as the API server returns it.
fn secret_json(secret: &k8s_openapi::api::core::v1::Secret) -> Value {
    let mut v = serde_json::to_value(secret).expect("json");
    v["apiVersion"] = "v1".into();
    v["kind"] = "Secret".into();
    v
}

fn template(sts: &Value) -> Value {
    sts["spec"]["template"].clone()
}

#[tokio::test]
async fn tls_a_new_cluster_gets_a_ca_and_a_server_certificate_signed_by_it() {
    let rc = fixture("tls.yaml");
    let (ctx, mut handle) = context(FakeServers::with(&[]));
    let reconciler = tokio::spawn(reconcile(Arc::new(rc), ctx));

    serve(&mut handle, Method::GET, STS, not_found).await;
    serve(&mut handle, Method::GET, CA_SECRET, not_found).await;
    let ca = serve(&mut handle, Method::POST, "/api/v1/namespaces/shop/secrets?", |b| (201, b.clone())).await;
    assert_eq!(ca["metadata"]["name"], "registry-tls-ca");
    assert_eq!(ca["metadata"]["ownerReferences"][0]["kind"], "RegistryCluster");
    assert!(b64_field(&ca, "ca.key").contains("PRIVATE KEY"));
    assert_eq!(expect_event(&mut handle).await["reason"], "CACreated");
    serve(&mut handle, Method::GET, SERVER_SECRET, not_found).await;
    let server = serve(&mut handle, Method::PATCH, &format!("{SERVER_SECRET}?"), echo).await;
    assert_eq!(server["type"], "kubernetes.io/tls");
    assert_eq!(b64_field(&server, "ca.crt"), b64_field(&ca, "ca.crt"), "signed by the CA just made");
    let info = tls::read_cert(&b64_field(&server, "tls.crt")).expect("a certificate");
    assert_eq!(info.dns_names[0], "server.eu-west.consul");
    assert_eq!(info.not_after - info.not_before, 720 * 3600 + 60, "spec.tls.certificateValidity");
    assert_eq!(expect_event(&mut handle).await["reason"], "ServerCertificateIssued");
    // The sidecars' client certificate, from the same CA, in its own Secret.
    serve(&mut handle, Method::GET, CLIENT_SECRET, not_found).await;
    let client = serve(&mut handle, Method::PATCH, &format!("{CLIENT_SECRET}?"), echo).await;
    assert_eq!(b64_field(&client, "ca.crt"), b64_field(&ca, "ca.crt"));
    assert_eq!(
        tls::read_cert(&b64_field(&client, "tls.crt")).expect("a certificate").dns_names,
        ["client.eu-west.consul"]
    );
    assert!(b64_field(&client, "tls.key").contains("PRIVATE KEY"));
    assert_eq!(expect_event(&mut handle).await["reason"], "ClientCertificateIssued");
    let bundle = serve(&mut handle, Method::PATCH, CA_CONFIG_MAP, echo).await;
    assert_eq!(bundle["data"]["ca.crt"].as_str(), Some(b64_field(&ca, "ca.crt").as_str()), "the CA, published");
    assert!(bundle["data"].get("ca.key").is_none(), "never the key");
    let sts = expect_applies(&mut handle).await;
    assert_eq!(template(&sts)["spec"]["volumes"][0]["secret"]["secretName"], "registry-server-tls");
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    let ready = condition(&status, "TLSReady");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("True"), Some("CertificateValid")));
    assert_eq!(status["status"]["tls"]["serverSecret"], "registry-server-tls");
    assert_eq!(status["status"]["tls"]["caConfigMap"], "registry-ca");
    assert!(status["status"]["tls"]["notAfter"].as_str().is_some_and(|t| t.ends_with('Z')), "{status}");
    assert_eq!(reconciler.await.expect("join").expect("ok"), Action::requeue(Duration::from_secs(30)));
}

/// If `pending` writes the certificate Secret at `path`, answers it and expects the Event:
/// Some(what was written) and the request after; otherwise None and `pending` as it is.
async fn take_write(handle: &mut ApiHandle, pending: Pending, path: &str, reason: &str) -> (Option<Value>, Pending) {
    if !is(&pending, Method::PATCH, &format!("{path}?")) {
        return (None, pending);
    }
    let written = serve_pending(pending, Method::PATCH, path, echo).await;
    assert_eq!(expect_event(handle).await["reason"], reason);
    (Some(written), next_request(handle, "what follows a certificate").await)
}

/// One pass of a running TLS cluster whose CA, server and client Secrets exist: returns the server
/// and client Secrets written (None: kept) and the StatefulSet applied.
async fn tls_pass(
    ctx: Arc<Context>,
    handle: &mut ApiHandle,
    ca_secret: Value,
    server_secret: Value,
    client_secret: Value,
) -> (Option<Value>, Option<Value>, Value) {
    let mut rc = fixture("tls.yaml");
    rc.metadata.generation = Some(2);
    rc.status = running(3).status;
    let reconciler = tokio::spawn(reconcile(Arc::new(rc), ctx));
    serve(handle, Method::GET, STS, |_| (200, stateful_set(3, "a"))).await;
    serve(handle, Method::GET, PODS, |_| (200, pods(&[(0, "a", true), (1, "a", true), (2, "a", true)]))).await;
    // The CA is read, never created or written: it exists.
    serve(handle, Method::GET, CA_SECRET, move |_| (200, ca_secret)).await;
    serve(handle, Method::GET, SERVER_SECRET, move |_| (200, server_secret)).await;
    let pending = next_request(handle, "the server certificate or the client's").await;
    let (server, pending) = take_write(handle, pending, SERVER_SECRET, "ServerCertificateIssued").await;
    serve_pending(pending, Method::GET, CLIENT_SECRET, move |_| (200, client_secret)).await;
    let pending = next_request(handle, "the client certificate or the CA ConfigMap").await;
    let (client, pending) = take_write(handle, pending, CLIENT_SECRET, "ClientCertificateIssued").await;
    serve_pending(pending, Method::PATCH, CA_CONFIG_MAP, echo).await;
    let sts = expect_applies(handle).await;
    let status = serve(handle, Method::PATCH, STATUS, with_status).await;
    assert_eq!(condition(&status, "TLSReady")["status"], "True", "{status}");
    reconciler.await.expect("join").expect("ok");
    (server, client, sts)
}

#[tokio::test]
async fn renewal_replaces_the_certificate_in_place_and_restarts_no_server() {
    let valid = validate_cluster(&fixture("tls.yaml"), DEFAULT_IMAGE).expect("valid");
    let validity = valid.tls.as_ref().expect("tls").validity_secs;
    let now = unix_now();
    let ca = tls::new_ca(&valid, now - validity).expect("ca");
    let ca_secret = secret_json(&tls::ca_secret(&valid, &None, &ca));
    // Issued at `at` (unix seconds), as its Secret.
    let issued = |leaf: tls::Leaf, at: u64| {
        let cert = leaf.issue(&valid, &ca, validity, at).expect("certificate");
        (secret_json(&leaf.secret(&valid, &None, &ca.cert_pem, &cert)), cert.cert_pem)
    };
    // Issued three quarters of their life ago: past the two-thirds mark.
    let (old_server, old_cert) = issued(tls::Leaf::Server, now - validity * 3 / 4);
    let (old_client, old_client_cert) = issued(tls::Leaf::Client, now - validity * 3 / 4);
    let (ctx, mut handle) = context(FakeServers::with(&[
        ("registry-0", true, true),
        ("registry-1", false, true),
        ("registry-2", false, true),
    ]));

    // Before they are due (a third of their life gone), the certificates stay.
    let (young_server, _) = issued(tls::Leaf::Server, now - validity / 3);
    let (young_client, _) = issued(tls::Leaf::Client, now - validity / 3);
    let (kept, kept_client, sts_before) =
        tls_pass(ctx.clone(), &mut handle, ca_secret.clone(), young_server, young_client.clone()).await;
    assert!(kept.is_none() && kept_client.is_none(), "not due yet");

    let (renewed, renewed_client, sts_renewing) =
        tls_pass(ctx.clone(), &mut handle, ca_secret.clone(), old_server, old_client).await;
    let renewed = renewed.expect("the due certificate is replaced");
    assert_eq!(renewed["metadata"]["name"], "registry-server-tls", "the same Secret the pods mount");
    assert_eq!(b64_field(&renewed, "ca.crt"), ca.cert_pem, "from the existing CA");
    let new_cert = b64_field(&renewed, "tls.crt");
    assert_ne!(new_cert, old_cert);
    let (old_info, new_info) = (tls::read_cert(&old_cert).expect("old"), tls::read_cert(&new_cert).expect("new"));
    assert!(new_info.not_after > old_info.not_after + validity / 2, "a fresh lifetime");
    // The sidecars' certificate too, in the Secret the injector copies.
    let renewed_client = renewed_client.expect("the due client certificate is replaced");
    assert_eq!(renewed_client["metadata"]["name"], "registry-client-tls");
    assert_ne!(b64_field(&renewed_client, "tls.crt"), old_client_cert);

    // Next pass: the new certificates are kept, and the pod template is exactly what it was.
    let (kept, kept_client, sts_steady) = tls_pass(ctx, &mut handle, ca_secret, renewed, renewed_client).await;
    assert!(kept.is_none() && kept_client.is_none(), "fresh certificates are not issued again");
    assert_eq!(template(&sts_before), template(&sts_renewing), "no rolling restart for a renewal");
    assert_eq!(template(&sts_renewing), template(&sts_steady));
    assert!(!template(&sts_steady).to_string().contains("BEGIN CERTIFICATE"), "no certificate bytes in the template");
}

#[tokio::test]
async fn an_unreadable_ca_secret_is_reported_and_never_overwritten() {
    let (ctx, mut handle) = context(FakeServers::with(&[]));
    let reconciler = tokio::spawn(reconcile(Arc::new(fixture("tls.yaml")), ctx));
    serve(&mut handle, Method::GET, STS, not_found).await;
    serve(&mut handle, Method::GET, CA_SECRET, |_| {
        (200, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "registry-tls-ca"}, "data": {"ca.crt": "AAAA"}}))
    })
    .await;
    // Straight on to the objects: no create, no write of any Secret.
    expect_applies(&mut handle).await;
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    let ready = condition(&status, "TLSReady");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("CAUnreadable")));
    assert!(ready["message"].as_str().is_some_and(|m| m.contains("not overwritten")), "{ready}");
    reconciler.await.expect("join").expect("ok");
}

#[tokio::test]
async fn with_cert_manager_the_operator_keeps_a_certificate_and_publishes_its_ca() {
    let rc = fixture("tls-cert-manager.yaml");
    let valid = validate_cluster(&rc, DEFAULT_IMAGE).expect("valid");
    let (ctx, mut handle) = context(FakeServers::with(&[]));
    const CERTIFICATE: &str = "/apis/cert-manager.io/v1/namespaces/shop/certificates/registry-server-tls?";
    const CLIENT_CERTIFICATE: &str = "/apis/cert-manager.io/v1/namespaces/shop/certificates/registry-client-tls?";

    // cert-manager has not issued yet.
    let reconciler = tokio::spawn(reconcile(Arc::new(rc.clone()), ctx.clone()));
    serve(&mut handle, Method::GET, STS, not_found).await;
    let certificate = serve(&mut handle, Method::PATCH, CERTIFICATE, echo).await;
    assert_eq!(certificate["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    let client = serve(&mut handle, Method::PATCH, CLIENT_CERTIFICATE, echo).await;
    assert_eq!(client["spec"]["secretName"], "registry-client-tls");
    serve(&mut handle, Method::GET, SERVER_SECRET, not_found).await;
    expect_applies(&mut handle).await;
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    let ready = condition(&status, "TLSReady");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("WaitingForCertManager")));
    reconciler.await.expect("join").expect("ok");

    // It has: the CA it wrote is published, its dates reported; the operator issues nothing.
    let now = unix_now();
    let issuer_ca = tls::new_ca(&valid, now).expect("ca");
    let cert = tls::Leaf::Server.issue(&valid, &issuer_ca, 86_400, now).expect("cert");
    let server = secret_json(&tls::Leaf::Server.secret(&valid, &None, &issuer_ca.cert_pem, &cert));
    let reconciler = tokio::spawn(reconcile(Arc::new(rc.clone()), ctx.clone()));
    serve(&mut handle, Method::GET, STS, not_found).await;
    serve(&mut handle, Method::PATCH, CERTIFICATE, echo).await;
    serve(&mut handle, Method::PATCH, CLIENT_CERTIFICATE, echo).await;
    let first = server.clone();
    serve(&mut handle, Method::GET, SERVER_SECRET, move |_| (200, first)).await;
    let bundle = serve(&mut handle, Method::PATCH, CA_CONFIG_MAP, echo).await;
    assert_eq!(bundle["data"]["ca.crt"].as_str(), Some(issuer_ca.cert_pem.as_str()));
    // Not the sidecars' certificate yet: not ready, and the status says which Secret it waits for.
    serve(&mut handle, Method::GET, CLIENT_SECRET, not_found).await;
    expect_applies(&mut handle).await;
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    let ready = condition(&status, "TLSReady");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("WaitingForCertManager")));
    assert!(ready["message"].as_str().is_some_and(|m| m.contains("registry-client-tls")), "{ready}");
    reconciler.await.expect("join").expect("ok");

    // Both written.
    let client = tls::Leaf::Client.issue(&valid, &issuer_ca, 86_400, now).expect("cert");
    let client = secret_json(&tls::Leaf::Client.secret(&valid, &None, &issuer_ca.cert_pem, &client));
    let reconciler = tokio::spawn(reconcile(Arc::new(rc), ctx));
    serve(&mut handle, Method::GET, STS, not_found).await;
    serve(&mut handle, Method::PATCH, CERTIFICATE, echo).await;
    serve(&mut handle, Method::PATCH, CLIENT_CERTIFICATE, echo).await;
    serve(&mut handle, Method::GET, SERVER_SECRET, move |_| (200, server)).await;
    serve(&mut handle, Method::PATCH, CA_CONFIG_MAP, echo).await;
    serve(&mut handle, Method::GET, CLIENT_SECRET, move |_| (200, client)).await;
    expect_applies(&mut handle).await;
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    assert_eq!(condition(&status, "TLSReady")["status"], "True", "{status}");
    assert!(status["status"]["tls"]["renewAfter"].is_string());
    reconciler.await.expect("join").expect("ok");
}

// Federation: the WAN Service applied, and the `Federated` condition from the servers' WAN pool.

#[tokio::test]
async fn federation_health_comes_from_the_servers_wan_pool() {
    let servers =
        FakeServers::with(&[("registry-0", true, true), ("registry-1", false, true), ("registry-2", false, true)]);
    let (ctx, mut handle) = context(servers.clone());
    let mut rc = fixture("federation.yaml");
    rc.metadata.generation = Some(2);
    rc.status = running(3).status;

    // The pool holds only dc2 so far: not federated, and the status says what it is joining.
    *servers.datacenters.lock().expect("lock") = Some(vec!["dc2".into()]);
    let reconciler = tokio::spawn(reconcile(Arc::new(rc.clone()), ctx.clone()));
    expect_observe(&mut handle, stateful_set(3, "a"), pods(&[(0, "a", true), (1, "a", true), (2, "a", true)])).await;
    expect_applies(&mut handle).await;
    let wan = serve(&mut handle, Method::PATCH, "/api/v1/namespaces/shop/services/registry-wan?", echo).await;
    assert_eq!(wan["spec"]["type"], "LoadBalancer");
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    let federated = condition(&status, "Federated");
    assert_eq!(
        (federated["status"].as_str(), federated["reason"].as_str()),
        (Some("False"), Some("NoOtherDatacenter"))
    );
    assert!(
        federated["message"].as_str().is_some_and(|m| m.contains("registry-wan.roster-dc1.svc:8302")),
        "{federated}"
    );
    reconciler.await.expect("join").expect("ok");

    // The primary joined.
    *servers.datacenters.lock().expect("lock") = Some(vec!["dc2".into(), "dc1".into()]);
    let reconciler = tokio::spawn(reconcile(Arc::new(rc), ctx));
    expect_observe(&mut handle, stateful_set(3, "a"), pods(&[(0, "a", true), (1, "a", true), (2, "a", true)])).await;
    expect_applies(&mut handle).await;
    serve(&mut handle, Method::PATCH, "/api/v1/namespaces/shop/services/registry-wan?", echo).await;
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    let federated = condition(&status, "Federated");
    assert_eq!((federated["status"].as_str(), federated["reason"].as_str()), (Some("True"), Some("Federated")));
    assert_eq!(status["status"]["datacenters"], json!(["dc2", "dc1"]));
    reconciler.await.expect("join").expect("ok");
}

/// Without cert-manager installed the Certificate kind is unknown (404): the cluster is still built
/// and the status says what is missing, instead of every pass failing.
#[tokio::test]
async fn cert_manager_missing_is_reported_not_fatal() {
    let (ctx, mut handle) = context(FakeServers::with(&[]));
    let reconciler = tokio::spawn(reconcile(Arc::new(fixture("tls-cert-manager.yaml")), ctx));
    serve(&mut handle, Method::GET, STS, not_found).await;
    serve(
        &mut handle,
        Method::PATCH,
        "/apis/cert-manager.io/v1/namespaces/shop/certificates/registry-server-tls?",
        not_found,
    )
    .await;
    expect_applies(&mut handle).await;
    let status = serve(&mut handle, Method::PATCH, STATUS, with_status).await;
    let ready = condition(&status, "TLSReady");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("CertManagerMissing")));
    assert_eq!(reconciler.await.expect("join").expect("ok"), Action::requeue(Duration::from_secs(30)));
}
