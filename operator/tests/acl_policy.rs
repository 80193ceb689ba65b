//! The AclPolicy controller with kube's mock API service and a real registry with ACLs on and a
//! default-deny policy (`roster dev` on 127.0.0.1:19740): the policy is created, a token bound to it
//! lands in a Secret and can do what the rules allow and nothing else; deleting the resource removes
//! token and policy from the registry.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use http::Method;
use roster_operator::acl_policy::controller::reconcile;
use roster_operator::acl_policy::FINALIZER;
use roster_operator::crd::AclPolicy;
use serde_json::Value;

const REGISTRY: &str = "127.0.0.1:19740";
const MANAGEMENT: &str = "6f8e1c1a-0d57-4d3b-9a5e-3c2b7f1e9d10";

fn resource(status: Option<Value>, deleting: bool) -> AclPolicy {
    let mut v = serde_json::json!({
        "apiVersion": "roster.dev/v1alpha1",
        "kind": "ACLPolicy",
        "metadata": {"name": "app", "namespace": "shop", "uid": "4b1c0e4e-0000-4000-8000-000000000042", "generation": 1, "finalizers": [FINALIZER]},
        "spec": {"rules": "key_prefix \"app/\" { policy = \"write\" }", "token": {"secretName": "app-token"}},
    });
    if let Some(s) = status {
        v["status"] = s;
    }
    if deleting {
        v["metadata"]["deletionTimestamp"] = Value::from("2026-11-25T12:00:00Z");
    }
    serde_json::from_value(v).expect("AclPolicy")
}

#[tokio::test]
async fn policy_and_token_in_the_registry_and_a_secret_then_gone() {
    let _registry = common::start_registry_with(
        REGISTRY,
        "127.0.0.1:19741",
        &["--acl-enabled", "--acl-default-policy", "deny", "--acl-initial-management", MANAGEMENT],
    )
    .await;
    let admin =
        registry::client::Client::new(vec![REGISTRY.into()]).expect("client").with_token(Some(MANAGEMENT.into()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(admin.acl_policy_by_name("global-management").await, Ok(Some(_))) {
        assert!(Instant::now() < deadline, "ACLs not bootstrapped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let path = "/apis/roster.dev/v1alpha1/namespaces/shop/aclpolicies/app";

    // 1. Policy created, token in a Secret owned by the resource, status says which.
    let (ctx, mut handle) = common::context(REGISTRY, Some(MANAGEMENT));
    let task = tokio::spawn(reconcile(Arc::new(resource(None, false)), ctx));
    let secret =
        common::answer(&mut handle, Method::PATCH, "/api/v1/namespaces/shop/secrets/app-token?", Value::Null).await;
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "ACLPolicy");
    let secret_id = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["token"].as_str().expect("token in the Secret"))
        .expect("base64");
    let secret_id = String::from_utf8(secret_id).expect("utf8");
    common::answer_event(&mut handle, "TokenCreated", "Normal").await;
    let status = common::answer(&mut handle, Method::PATCH, &format!("{path}/status?"), resource(None, false)).await;
    common::answer_event(&mut handle, "PolicyWritten", "Normal").await;
    task.await.expect("join").expect("reconciled");
    let policy = admin.acl_policy_by_name("k8s-shop-app").await.expect("read").expect("policy created");
    assert_eq!(status["status"]["policyId"], policy.id.as_str());
    let accessor = status["status"]["tokenAccessorId"].as_str().expect("accessor").to_string();

    // The token does what the rules say, and nothing more (default deny).
    let app = registry::client::Client::new(vec![REGISTRY.into()]).expect("client").with_token(Some(secret_id));
    assert!(app.kv_put("app/mode", b"on".to_vec(), None).await.expect("allowed write"));
    assert!(app.kv_put("other/mode", b"on".to_vec(), None).await.is_err(), "outside its prefix: denied");

    // 2. Deleted: token and policy leave the registry, then the finalizer goes.
    let (ctx, mut handle) = common::context(REGISTRY, Some(MANAGEMENT));
    let task = tokio::spawn(reconcile(Arc::new(resource(Some(status["status"].clone()), true)), ctx));
    common::answer_event(&mut handle, "Deleted", "Normal").await;
    let patch = common::answer(&mut handle, Method::PATCH, path, resource(None, true)).await;
    assert!(patch.to_string().contains("finalizers"), "{patch}");
    task.await.expect("join").expect("reconciled");
    assert!(admin.acl_policy_by_name("k8s-shop-app").await.expect("read").is_none());
    assert!(admin.acl_token_read(&accessor).await.expect("read").is_none());
}

/// The operator's own token: against a fresh default-deny registry it cannot read the servers'
/// health, bootstraps the ACL system once (a second attempt is told it was done), and with the
/// token it got can do what the RegistryCluster controller needs.
#[tokio::test]
async fn the_operator_bootstraps_acls_once_and_works_with_that_token() {
    use roster_operator::registry_cluster::controller::{RegistryAdmin, ServerAdmin, Target};
    const FRESH: &str = "127.0.0.1:19745";
    let _registry =
        common::start_registry_with(FRESH, "127.0.0.1:19746", &["--acl-enabled", "--acl-default-policy", "deny"]).await;
    let admin = RegistryAdmin { addr: Some(FRESH.into()), token: None };
    let mut target = Target { namespace: "shop".into(), cluster: "roster".into(), token: None };
    let denied = admin.health(&target).await;
    assert!(denied.as_ref().is_err_and(|e| e.contains("403")), "no token, default deny: {denied:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let token = loop {
        match admin.bootstrap_acl(&target).await {
            Ok(Some(token)) => break token,
            other => assert!(Instant::now() < deadline, "bootstrap: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(admin.bootstrap_acl(&target).await, Ok(None), "only once");

    target.token = Some(token);
    let health = admin.health(&target).await.expect("health with the bootstrap token");
    assert_eq!(health.servers.len(), 1);
    assert!(health.servers[0].leader && health.servers[0].voter);
}
