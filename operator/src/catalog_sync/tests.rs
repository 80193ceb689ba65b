//! `desired` and `plan` from a fixture of Services and EndpointSlices
//! (`operator/tests/fixtures/catalog_sync/`).

use super::*;
use registry::api::NodeService;
use serde::Deserialize;

fn index() -> SyncIndex {
    let path = format!("{}/tests/fixtures/catalog_sync/shop.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("Service") => services.push(serde_yaml::from_value::<Service>(v).unwrap()),
            Some("EndpointSlice") => slices.push(serde_yaml::from_value::<EndpointSlice>(v).unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut i = SyncIndex::default();
    i.reset_services(&services);
    i.reset_slices(&slices);
    i
}

fn summary(d: &BTreeMap<String, RegisterRequest>) -> Vec<(String, String, u16, HealthStatus)> {
    d.values()
        .map(|r| {
            let s = r.service.as_ref().unwrap();
            (s.service.clone(), s.address.clone().unwrap(), s.port.unwrap(), r.check.as_ref().unwrap().status.unwrap())
        })
        .collect()
}

#[test]
fn annotated_services_and_synced_namespaces_become_instances_that_follow_readiness() {
    let idx = index();
    let only_annotated = desired(&idx, &[]);
    assert_eq!(
        summary(&only_annotated),
        [
            ("api".to_string(), "10.1.0.5".to_string(), 8080, HealthStatus::Passing),
            ("api".to_string(), "10.1.0.6".to_string(), 8080, HealthStatus::Critical),
        ],
        "the endpoint port of the Service port named, readiness as the check, terminating left out"
    );
    let api = only_annotated.values().next().unwrap().service.clone().unwrap();
    assert_eq!(api.tags.unwrap(), ["k8s", "v2"]);
    assert_eq!(api.meta.unwrap().get(EXTERNAL_SOURCE).map(String::as_str), Some(KUBERNETES));
    let with_namespace = desired(&idx, &["shop".to_string()]);
    let names: BTreeSet<String> = summary(&with_namespace).into_iter().map(|s| s.0).collect();
    assert_eq!(names, BTreeSet::from(["api".to_string(), "cache".to_string()]), "internal refuses sync");
}

fn node_from(d: &BTreeMap<String, RegisterRequest>) -> (CatalogNode, Vec<HealthCheck>) {
    let mut node = CatalogNode { node: Default::default(), services: BTreeMap::new() };
    let mut checks = Vec::new();
    for (id, r) in d {
        let s = r.service.clone().unwrap();
        node.services.insert(
            id.clone(),
            NodeService {
                id: id.clone(),
                service: s.service,
                tags: s.tags.unwrap(),
                address: s.address.unwrap(),
                meta: s.meta,
                port: s.port.unwrap(),
                ..Default::default()
            },
        );
        let c = r.check.clone().unwrap();
        checks.push(HealthCheck { check_id: c.check_id.unwrap(), status: c.status.unwrap(), ..Default::default() });
    }
    (node, checks)
}

#[test]
fn the_plan_writes_only_what_changed_and_never_touches_other_instances() {
    let idx = index();
    let want = desired(&idx, &["shop".to_string()]);
    let first = plan(&want, None, &[]);
    assert_eq!(first.register.len(), 3);
    assert!(first.deregister.is_empty());

    // In place: nothing to do.
    let (mut node, mut checks) = node_from(&want);
    assert_eq!(plan(&want, Some(&node), &checks), SyncPlan::default());

    // An endpoint turned ready: only its instance is written again.
    checks.iter_mut().filter(|c| c.status == HealthStatus::Critical).for_each(|c| c.status = HealthStatus::Passing);
    let p = plan(&want, Some(&node), &checks);
    assert_eq!(p.register.len(), 1);
    assert_eq!(p.register[0].service.as_ref().unwrap().address.as_deref(), Some("10.1.0.6"));

    // A synced instance nobody backs any more goes; one registered by someone else stays.
    let (_, fresh_checks) = node_from(&want);
    node.services.insert(
        "k8s-shop-old-10-1-0-99-80".into(),
        NodeService {
            id: "k8s-shop-old-10-1-0-99-80".into(),
            service: "old".into(),
            meta: Some(BTreeMap::from([(EXTERNAL_SOURCE.to_string(), KUBERNETES.to_string())])),
            ..Default::default()
        },
    );
    node.services
        .insert("by-hand".into(), NodeService { id: "by-hand".into(), service: "x".into(), ..Default::default() });
    let p = plan(&want, Some(&node), &fresh_checks);
    assert!(p.register.is_empty());
    assert_eq!(
        p.deregister.iter().map(|d| d.service_id.clone().unwrap()).collect::<Vec<_>>(),
        ["k8s-shop-old-10-1-0-99-80"]
    );

    // The Service deleted: every instance it had goes.
    let mut gone = idx.clone();
    let api: Service =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "api", "namespace": "shop"}})).unwrap();
    gone.delete_service(&api);
    let (node, checks) = node_from(&want);
    let p = plan(&desired(&gone, &["shop".to_string()]), Some(&node), &checks);
    assert_eq!(p.deregister.len(), 2);
}
