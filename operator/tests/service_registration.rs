//! The ServiceRegistration controller with kube's mock API service on one side and a real registry
//! (`roster dev`, started here on 127.0.0.1:19720) on the other: finalizer added first, then the
//! service registered with its status reported, then deregistered when the resource is deleted.

use std::sync::Arc;
use std::time::Duration;

mod common;

use http::Method;
use kube::runtime::controller::Action;
use roster_operator::crd::ServiceRegistration;
use roster_operator::service_registration::controller::reconcile;
use roster_operator::service_registration::FINALIZER;

const REGISTRY: &str = "127.0.0.1:19720";

fn resource(finalized: bool, deleting: bool) -> ServiceRegistration {
    let mut sr: ServiceRegistration = serde_yaml::from_str(
        r#"
apiVersion: roster.dev/v1alpha1
kind: ServiceRegistration
metadata: {name: billing-db, namespace: shop, generation: 2}
spec:
  name: postgres
  address: db.example.org
  port: 5432
  tags: [primary]
  checks: [{name: reachable, status: warning}]
"#,
    )
    .expect("yaml");
    if finalized {
        sr.metadata.finalizers = Some(vec![FINALIZER.into()]);
    }
    if deleting {
        sr.metadata.deletion_timestamp =
            Some(serde_json::from_value(serde_json::json!("2026-11-25T12:00:00Z")).expect("time"));
    }
    sr
}

async fn registered(client: &registry::client::Client) -> Vec<registry::api::ServiceEntry> {
    client.health_service("postgres", false).await.expect("health").value
}

#[tokio::test]
async fn finalizer_then_register_then_deregister() {
    let _registry = common::start_registry(REGISTRY, "127.0.0.1:19721").await;
    let catalog = registry::client::Client::new(vec![REGISTRY.into()]).expect("client");
    let path = "/apis/roster.dev/v1alpha1/namespaces/shop/serviceregistrations/billing-db";

    // 1. A new resource first gets the finalizer, and nothing is registered yet.
    let (ctx, mut handle) = common::context(REGISTRY, None);
    let task = tokio::spawn(reconcile(Arc::new(resource(false, false)), ctx));
    let patch = common::answer(&mut handle, Method::PATCH, path, resource(true, false)).await;
    assert!(patch.to_string().contains(FINALIZER), "{patch}");
    assert_eq!(task.await.expect("join").expect("reconciled"), Action::await_change());
    assert!(registered(&catalog).await.is_empty());

    // 2. With the finalizer: registered in the registry, status says so with the registry's health.
    let (ctx, mut handle) = common::context(REGISTRY, None);
    let task = tokio::spawn(reconcile(Arc::new(resource(true, false)), ctx));
    common::answer_no_kept_token(&mut handle).await;
    let status = common::answer(&mut handle, Method::PATCH, &format!("{path}/status?"), resource(true, false)).await;
    common::answer_event(&mut handle, "Registered", "Normal").await;
    common::answer_event(&mut handle, "Unhealthy", "Warning").await;
    assert_eq!(status["status"]["registered"], true);
    assert_eq!(status["status"]["health"], "warning");
    assert_eq!(status["status"]["observedGeneration"], 2);
    assert_eq!(task.await.expect("join").expect("reconciled"), Action::requeue(Duration::from_secs(600)));
    let entries = registered(&catalog).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].node.node, "external-shop");
    assert_eq!(entries[0].service.port, 5432);
    assert_eq!(entries[0].service.address, "db.example.org");

    // 3. Deleted: deregistered from the registry first, then the finalizer goes.
    let (ctx, mut handle) = common::context(REGISTRY, None);
    let task = tokio::spawn(reconcile(Arc::new(resource(true, true)), ctx));
    common::answer_no_kept_token(&mut handle).await;
    common::answer_event(&mut handle, "Deregistered", "Normal").await;
    let patch = common::answer(&mut handle, Method::PATCH, path, resource(false, true)).await;
    assert!(patch.to_string().contains("remove") || patch.to_string().contains("finalizers"), "{patch}");
    assert!(registered(&catalog).await.is_empty(), "deregistered before the finalizer was removed");
    assert_eq!(task.await.expect("join").expect("reconciled"), Action::await_change());
}
