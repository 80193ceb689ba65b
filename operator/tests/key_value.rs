//! The KeyValue controller with kube's mock API service and a real registry (`roster dev` on
//! 127.0.0.1:19730): keys written with CAS, a key changed by someone else reported as drift and left
//! alone, and on delete only the keys still as the operator wrote them removed.

use std::sync::Arc;

mod common;

use http::Method;
use roster_operator::crd::KeyValue;
use roster_operator::key_value::controller::reconcile;
use roster_operator::key_value::FINALIZER;
use serde_json::Value;

const REGISTRY: &str = "127.0.0.1:19730";

fn resource(mode: &str, status: Option<Value>, deleting: bool) -> KeyValue {
    let mut v: Value = serde_json::json!({
        "apiVersion": "roster.dev/v1alpha1",
        "kind": "KeyValue",
        "metadata": {"name": "app-settings", "namespace": "shop", "generation": 1, "finalizers": [FINALIZER]},
        "spec": {"key": "app/", "values": {"mode": mode, "level": "3"}},
    });
    if let Some(s) = status {
        v["status"] = s;
    }
    if deleting {
        v["metadata"]["deletionTimestamp"] = Value::from("2026-11-25T12:00:00Z");
    }
    serde_json::from_value(v).expect("KeyValue")
}

async fn value(client: &registry::client::Client, key: &str) -> Option<String> {
    let pair = client.kv_get(key).await.expect("get").value?;
    Some(String::from_utf8(pair.value.unwrap_or_default()).expect("utf8"))
}

#[tokio::test]
async fn writes_with_cas_reports_drift_and_deletes_only_its_own_keys() {
    let _registry = common::start_registry(REGISTRY, "127.0.0.1:19731").await;
    let kvs = registry::client::Client::new(vec![REGISTRY.into()]).expect("client");
    let path = "/apis/roster.dev/v1alpha1/namespaces/shop/keyvalues/app-settings";

    // 1. Both keys written; status remembers the indexes written.
    let (ctx, mut handle) = common::context(REGISTRY, None);
    let task = tokio::spawn(reconcile(Arc::new(resource("fast", None, false)), ctx));
    common::answer_no_kept_token(&mut handle).await;
    let first =
        common::answer(&mut handle, Method::PATCH, &format!("{path}/status?"), resource("fast", None, false)).await;
    common::answer_event(&mut handle, "Synced", "Normal").await;
    task.await.expect("join").expect("reconciled");
    assert_eq!(first["status"]["synced"], true, "{first}");
    assert_eq!(value(&kvs, "app/mode").await.as_deref(), Some("fast"));
    assert_eq!(value(&kvs, "app/level").await.as_deref(), Some("3"));
    assert!(first["status"]["writtenIndexes"]["app/level"].as_u64().is_some());

    // 2. Someone edits app/level in the registry; the spec changes app/mode.
    assert!(kvs.kv_put("app/level", b"9".to_vec(), None).await.expect("put"));
    let (ctx, mut handle) = common::context(REGISTRY, None);
    let status = Some(first["status"].clone());
    let task = tokio::spawn(reconcile(Arc::new(resource("slow", status.clone(), false)), ctx));
    common::answer_no_kept_token(&mut handle).await;
    let second =
        common::answer(&mut handle, Method::PATCH, &format!("{path}/status?"), resource("slow", status, false)).await;
    let drift = common::answer_event(&mut handle, "Drifted", "Warning").await;
    assert!(drift["note"].as_str().is_some_and(|n| n.contains("app/level")), "{drift}");
    task.await.expect("join").expect("reconciled");
    assert_eq!(value(&kvs, "app/mode").await.as_deref(), Some("slow"), "its own key is updated (CAS)");
    assert_eq!(value(&kvs, "app/level").await.as_deref(), Some("9"), "someone else's change is not overwritten");
    assert_eq!(second["status"]["synced"], false);
    assert_eq!(second["status"]["driftedKeys"], serde_json::json!(["app/level"]));

    // 3. Deleted: its own key goes, the edited one stays; then the finalizer goes.
    let (ctx, mut handle) = common::context(REGISTRY, None);
    let status = Some(second["status"].clone());
    let task = tokio::spawn(reconcile(Arc::new(resource("slow", status.clone(), true)), ctx));
    common::answer_no_kept_token(&mut handle).await;
    let mut gone = resource("slow", status, true);
    gone.metadata.finalizers = None;
    common::answer_event(&mut handle, "Deleted", "Normal").await;
    let patch = common::answer(&mut handle, Method::PATCH, path, gone).await;
    assert!(patch.to_string().contains("finalizers"), "{patch}");
    task.await.expect("join").expect("reconciled");
    assert_eq!(value(&kvs, "app/mode").await, None);
    assert_eq!(value(&kvs, "app/level").await.as_deref(), Some("9"));
}
