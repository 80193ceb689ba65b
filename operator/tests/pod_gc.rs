//! No ghost registrations, against a real registry (`roster dev`): nodes registered for pods that
//! are gone, and that gossip no longer sees alive, leave the catalog; everything else stays.

mod common;

use k8s_openapi::api::core::v1::Pod;
use roster_operator::pod_gc::{controller::deregister_ghosts, PodIndex};
use serde_json::json;

const REGISTRY: &str = "127.0.0.1:19741";

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"namespace": "shop", "name": name}, "status": {"phase": "Running"}}))
        .expect("pod")
}

async fn register(client: &registry::client::Client, node: &str, pod_ns: Option<&str>, serf: &str) {
    let meta = pod_ns.map(|ns| json!({ registry::api::POD_NAMESPACE_META: ns }));
    let body = json!({
        "Node": node, "Address": "10.0.0.9", "NodeMeta": meta,
        "Service": {"Service": "web", "ID": format!("web-{node}"), "Port": 80},
        "Check": {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": serf},
    });
    let request = serde_json::from_value(body).expect("registration");
    client.catalog_register(&request).await.expect("register");
}

#[tokio::test]
async fn nodes_of_gone_pods_leave_the_catalog() {
    let _registry = common::start_registry(REGISTRY, "127.0.0.1:19742").await;
    let client = registry::client::Client::new(vec![REGISTRY.into()]).expect("client");
    register(&client, "web-1", Some("shop"), "passing").await; // its pod runs
    register(&client, "web-2", Some("shop"), "critical").await; // pod deleted, sidecar never deregistered
    register(&client, "web-3", Some("shop"), "passing").await; // new pod the watch has not shown yet
    register(&client, "db", None, "critical").await; // not a pod's node

    let mut pods = PodIndex::default();
    pods.reset(&[pod("web-1")]);
    let gone = deregister_ghosts(&client, &pods).await.expect("sweep");
    assert_eq!(gone, vec!["web-2"]);
    let nodes: Vec<String> = client.catalog_nodes().await.expect("nodes").into_iter().map(|n| n.node).collect();
    for kept in ["web-1", "web-3", "db"] {
        assert!(nodes.iter().any(|n| n == kept), "{kept} must stay: {nodes:?}");
    }
    assert!(!nodes.iter().any(|n| n == "web-2"));
    assert!(client.health_service("web", false).await.expect("health").value.iter().all(|e| e.node.node != "web-2"));
    // A second sweep finds nothing more.
    assert!(deregister_ghosts(&client, &pods).await.expect("sweep").is_empty());
}
