//! Catalog sync against a real registry (`roster dev`): Kubernetes Services and their endpoints
//! appear as catalog instances whose health follows readiness (`?passing` answers only ready
//! ones), change when an endpoint does, and leave with their Service; an instance registered by
//! someone else on the same node is left alone.

mod common;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use roster_operator::catalog_sync::{controller::sync_registry, SyncIndex, SYNC_NODE};
use serde_json::json;

const REGISTRY: &str = "127.0.0.1:19770";

fn service() -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "api", "namespace": "shop", "annotations": {"roster.dev/sync": "true"}},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }))
    .expect("service")
}

fn slice(ready: &[(&str, bool)]) -> EndpointSlice {
    let endpoints: Vec<_> =
        ready.iter().map(|(ip, r)| json!({"addresses": [ip], "conditions": {"ready": r}})).collect();
    serde_json::from_value(json!({
        "metadata": {"name": "api-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "api"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints,
    }))
    .expect("slice")
}

async fn addresses(client: &registry::client::Client, passing: bool) -> Vec<String> {
    let mut out: Vec<String> = client
        .health_service("api", passing)
        .await
        .expect("health")
        .value
        .into_iter()
        .map(|e| format!("{}:{}", e.service.address, e.service.port))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn services_and_endpoints_follow_kubernetes() {
    let _registry = common::start_registry(REGISTRY, "127.0.0.1:19771").await;
    let client = registry::client::Client::new(vec![REGISTRY.into()]).expect("client");
    let by_hand =
        json!({"Node": SYNC_NODE, "Address": "127.0.0.1", "Service": {"Service": "manual", "ID": "manual", "Port": 1}});
    client.catalog_register(&serde_json::from_value(by_hand).expect("registration")).await.expect("register");

    let mut index = SyncIndex::default();
    index.reset_services(&[service()]);
    index.reset_slices(&[slice(&[("10.1.0.5", true), ("10.1.0.6", false)])]);
    let p = sync_registry(&client, &index, &[]).await.expect("sync");
    assert_eq!(p.register.len(), 2);
    assert_eq!(addresses(&client, false).await, ["10.1.0.5:8080", "10.1.0.6:8080"]);
    assert_eq!(addresses(&client, true).await, ["10.1.0.5:8080"], "an endpoint not ready is not passing");
    // A second pass with nothing changed writes nothing.
    assert_eq!(sync_registry(&client, &index, &[]).await.expect("sync"), Default::default());

    // The second endpoint becomes ready, the first goes away.
    index.apply_slice(&slice(&[("10.1.0.6", true)]));
    sync_registry(&client, &index, &[]).await.expect("sync");
    assert_eq!(addresses(&client, true).await, ["10.1.0.6:8080"]);
    assert_eq!(addresses(&client, false).await, ["10.1.0.6:8080"]);

    // The Service is deleted: its instances leave; the hand-made one stays.
    index.delete_service(&service());
    sync_registry(&client, &index, &[]).await.expect("sync");
    assert!(addresses(&client, false).await.is_empty());
    let node = client.catalog_node(SYNC_NODE).await.expect("node").expect("the node stays");
    assert_eq!(node.services.keys().collect::<Vec<_>>(), ["manual"]);
}
