//! Kubernetes login as the operator sets it up, against a real `roster dev` with ACLs on and a
//! stand-in API server answering TokenReviews: a pod's ServiceAccount token logs in and gets the
//! service named after its account and its pod's node; the operator's later passes change
//! nothing, put back what was changed, leave the user's own rules, and remove the method when the
//! cluster stops asking for it.

mod common;

use registry::api::{AclBindingRule, AclLoginRequest};
use roster_operator::crd::KubernetesAuth;
use roster_operator::registry_cluster::controller::{RegistryAdmin, ServerAdmin, Target};
use roster_operator::registry_cluster::kubernetes_auth::{self, Reviewer, Settings};
use serde_json::{json, Value};
use warp::Filter;

const HTTP: &str = "127.0.0.1:19760";
const RPC: &str = "127.0.0.1:19761";
const MANAGEMENT: &str = "6d0a8a5e-0000-4000-8000-management9";

/// Answers TokenReviews as a real API server would for a pod-bound token of shop/web (pod
/// web-7d9f) and for the `default` account's token; only the reviewer may ask.
async fn token_review_server() -> std::net::SocketAddr {
    let route = warp::post()
        .and(warp::path!("apis" / "authentication.k8s.io" / "v1" / "tokenreviews"))
        .and(warp::header::<String>("authorization"))
        .and(warp::body::json())
        .map(|auth: String, review: Value| {
            if auth != "Bearer reviewer-jwt" {
                return warp::reply::with_status(warp::reply::json(&json!({})), warp::http::StatusCode::FORBIDDEN);
            }
            let status = match review["spec"]["token"].as_str() {
                Some("web-pod-token") => json!({"authenticated": true, "user": {
                    "username": "system:serviceaccount:shop:web", "uid": "sa-1",
                    "extra": {"authentication.kubernetes.io/pod-name": ["web-7d9f"],
                              "authentication.kubernetes.io/pod-uid": ["pod-1"]}}}),
                Some("default-token") => json!({"authenticated": true, "user": {
                    "username": "system:serviceaccount:shop:default", "uid": "sa-2"}}),
                _ => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
            warp::reply::with_status(warp::reply::json(&json!({"status": status})), warp::http::StatusCode::CREATED)
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(route).incoming(listener).run());
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_log_in_through_the_method_the_operator_keeps() {
    let _registry = common::start_registry_with(
        HTTP,
        RPC,
        &["--acl-enabled", "--acl-default-policy", "deny", "--acl-initial-management", MANAGEMENT],
    )
    .await;
    let api_server = token_review_server().await;
    let admin = RegistryAdmin { addr: Some(HTTP.into()), token: None };
    let target = Target { namespace: "shop".into(), cluster: "registry".into(), token: Some(MANAGEMENT.into()) };
    let settings = Settings::from(&KubernetesAuth {
        host: Some(format!("http://{api_server}")),
        max_token_ttl: Some("1h".into()),
        ..Default::default()
    });
    let reviewer = Reviewer { jwt: "reviewer-jwt".into(), ca_cert: String::new() };
    let owner = kubernetes_auth::description("registry", "shop");
    let desired =
        (kubernetes_auth::method("registry", "shop", &settings, &reviewer), kubernetes_auth::binding_rules(&settings));

    // The servers may need a moment to elect themselves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let changed = loop {
        match admin.sync_auth_method(&target, &owner, Some(&desired)).await {
            Ok(changed) => break changed,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(changed, ["auth method kubernetes created", "2 binding rule(s) created, 0 removed"]);
    assert!(admin.sync_auth_method(&target, &owner, Some(&desired)).await.expect("again").is_empty(), "idempotent");

    // A pod's token: the service of its ServiceAccount and its pod's node, for an hour.
    let anonymous = registry::client::Client::new(vec![HTTP.into()]).expect("client");
    let login = |bearer: &str| {
        let request =
            AclLoginRequest { auth_method: "kubernetes".into(), bearer_token: bearer.into(), ..Default::default() };
        let client = anonymous.clone();
        async move { client.acl_login(&request).await }
    };
    let token = login("web-pod-token").await.expect("login");
    let token_json = serde_json::to_value(&token).expect("json");
    assert_eq!(token_json["ServiceIdentities"][0]["ServiceName"], "web", "{token_json}");
    assert_eq!(token_json["NodeIdentities"][0]["NodeName"], "web-7d9f", "{token_json}");
    assert_eq!(token_json["AuthMethod"], "kubernetes");
    assert!(token.expiration_time.is_some(), "MaxTokenTTL gives login tokens an expiry: {token_json}");
    // The `default` account binds nothing, so its login is refused; so is a forged token.
    let refused = login("default-token").await.expect_err("default account");
    assert!(refused.to_string().contains("403"), "{refused}");
    assert!(login("forged").await.is_err());

    // A rotated reviewer token reaches the servers; a rule of the operator's that someone deleted
    // comes back; the user's own rule stays.
    let user_rule = AclBindingRule {
        auth_method: "kubernetes".into(),
        description: "ops by hand".into(),
        selector: r#"serviceaccount.name == "ops""#.into(),
        bind_type: "policy".into(),
        bind_name: "global-management".into(),
        ..Default::default()
    };
    let managed = registry::client::Client::new(vec![HTTP.into()]).expect("client").with_token(Some(MANAGEMENT.into()));
    managed.acl_binding_rule_create(&user_rule).await.expect("user rule");
    let ours = managed.acl_binding_rules("kubernetes").await.expect("rules");
    let node_rule = ours.iter().find(|r| r.bind_type == "node").expect("node rule");
    managed.acl_binding_rule_delete(&node_rule.id).await.expect("delete");
    let rotated = Reviewer { jwt: "rotated-jwt".into(), ca_cert: String::new() };
    let desired_now =
        (kubernetes_auth::method("registry", "shop", &settings, &rotated), kubernetes_auth::binding_rules(&settings));
    let changed = admin.sync_auth_method(&target, &owner, Some(&desired_now)).await.expect("sync");
    assert_eq!(changed, ["auth method kubernetes updated", "1 binding rule(s) created, 0 removed"]);
    let method = managed.acl_auth_method("kubernetes").await.expect("read").expect("method");
    assert_eq!(method.config.unwrap_or_default()["ServiceAccountJWT"], "rotated-jwt");
    assert_eq!(managed.acl_binding_rules("kubernetes").await.expect("rules").len(), 3);

    // A method of the same name that the operator did not make is not taken over.
    let other_owner = kubernetes_auth::description("other", "shop");
    let taken = admin.sync_auth_method(&target, &other_owner, None).await.expect("nothing of other's");
    assert!(taken.is_empty(), "{taken:?}");

    // The cluster no longer asks: the method goes, with its rules and login tokens.
    let changed = admin.sync_auth_method(&target, &owner, None).await.expect("remove");
    assert_eq!(changed, ["auth method kubernetes removed"]);
    assert!(managed.acl_auth_method("kubernetes").await.expect("read").is_none());
    assert!(managed.acl_token_read(&token.accessor_id).await.expect("read").is_none(), "login tokens go too");
}
