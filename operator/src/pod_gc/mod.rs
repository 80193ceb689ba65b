//! No ghost registrations: a pod's node (registered by its sidecar) leaves the catalog once the pod
//! is gone, even when the sidecar never got to deregister (the pod was evicted, its node lost, the
//! sidecar killed). The watch-derived state is a pure index of pods fed by a thin watch task
//! (`controller.rs`); which catalog nodes are ghosts is a pure function of the index and the catalog.

pub mod controller;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use registry::api::{HealthCheck, HealthStatus, Node, POD_NAMESPACE_META};

/// The pods that still stand for a catalog node: not finished (Succeeded/Failed) and not being
/// deleted, by namespace and name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodIndex {
    live: BTreeSet<(String, String)>,
}

impl PodIndex {
    /// Records a pod as the API server now has it.
    pub fn apply(&mut self, pod: &Pod) {
        let (Some(ns), Some(name)) = (pod.metadata.namespace.clone(), pod.metadata.name.clone()) else { return };
        let finished =
            pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
        let deleting = pod.metadata.deletion_timestamp.is_some();
        if finished || deleting {
            self.live.remove(&(ns, name));
        } else {
            self.live.insert((ns, name));
        }
    }

    pub fn delete(&mut self, pod: &Pod) {
        if let (Some(ns), Some(name)) = (pod.metadata.namespace.clone(), pod.metadata.name.clone()) {
            self.live.remove(&(ns, name));
        }
    }

    /// Starts over from a full list (a watch re-list).
    pub fn reset(&mut self, pods: &[Pod]) {
        self.live.clear();
        pods.iter().for_each(|p| self.apply(p));
    }

    pub fn is_live(&self, namespace: &str, name: &str) -> bool {
        self.live.contains(&(namespace.to_string(), name.to_string()))
    }
}

/// The catalog nodes to deregister: marked as a pod's (`k8s-namespace` meta), whose pod is not live,
/// and whose gossip health (`serfHealth`) is not passing. The last condition makes a lagging pod
/// cache harmless: a new pod's sidecar is alive in gossip before the operator may have seen the pod,
/// and is never taken for a ghost.
pub fn ghosts(nodes: &[Node], checks: &[HealthCheck], pods: &PodIndex) -> Vec<String> {
    let serf: BTreeMap<&str, HealthStatus> =
        checks.iter().filter(|c| c.check_id == "serfHealth").map(|c| (c.node.as_str(), c.status)).collect();
    nodes
        .iter()
        .filter_map(|n| {
            let ns = n.meta.as_ref()?.get(POD_NAMESPACE_META)?;
            let alive_in_gossip = serf.get(n.node.as_str()) == Some(&HealthStatus::Passing);
            (!pods.is_live(ns, &n.node) && !alive_in_gossip).then(|| n.node.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "status": {"phase": phase},
        }))
        .expect("pod")
    }

    fn node(name: &str, ns: Option<&str>) -> Node {
        let meta = ns.map(|ns| serde_json::json!({ POD_NAMESPACE_META: ns }));
        serde_json::from_value(serde_json::json!({"Node": name, "Address": "10.0.0.1", "Meta": meta})).expect("node")
    }

    fn serf(node: &str, status: HealthStatus) -> HealthCheck {
        HealthCheck { node: node.into(), check_id: "serfHealth".into(), status, ..Default::default() }
    }

    #[test]
    fn the_index_keeps_running_pods_only() {
        let mut idx = PodIndex::default();
        idx.apply(&pod("shop", "web-1", "Running"));
        idx.apply(&pod("shop", "job-1", "Succeeded"));
        assert!(idx.is_live("shop", "web-1"));
        assert!(!idx.is_live("shop", "job-1"));
        assert!(!idx.is_live("other", "web-1"), "namespaces are apart");
        idx.apply(&pod("shop", "web-1", "Failed"));
        assert!(!idx.is_live("shop", "web-1"));
        idx.reset(&[pod("shop", "web-2", "Pending")]);
        assert!(idx.is_live("shop", "web-2"));
        idx.delete(&pod("shop", "web-2", "Pending"));
        assert_eq!(idx, PodIndex::default());
    }

    #[test]
    fn only_pod_nodes_whose_pod_is_gone_and_gossip_agrees_are_ghosts() {
        let mut pods = PodIndex::default();
        pods.apply(&pod("shop", "web-1", "Running"));
        let nodes = [
            node("web-1", Some("shop")), // its pod runs
            node("web-2", Some("shop")), // pod gone, serfHealth critical: a ghost
            node("web-3", Some("shop")), // pod not seen yet, but alive in gossip: not a ghost
            node("web-4", Some("shop")), // pod gone, no serfHealth at all: a ghost
            node("db", None),            // not a pod's node: never touched
            node("server-1", None),
        ];
        use HealthStatus::{Critical, Passing};
        let checks = [serf("web-1", Passing), serf("web-2", Critical), serf("web-3", Passing), serf("db", Critical)];
        assert_eq!(ghosts(&nodes, &checks, &pods), vec!["web-2", "web-4"]);
    }
}
