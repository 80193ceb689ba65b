//! `validate` and `build` of a RegistryCluster, driven by the YAML fixtures next to this file.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use roster_operator::crd::RegistryCluster;
use roster_operator::registry_cluster::{build, validate, DEFAULT_IMAGE};

fn fixture(name: &str) -> RegistryCluster {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registry_cluster").join(name);
    let text = std::fs::read_to_string(&path).expect("fixture");
    serde_yaml::from_str(&text).expect("fixture parses as a RegistryCluster")
}

fn env_of(d: &roster_operator::registry_cluster::Desired, name: &str) -> Option<String> {
    let pod = d.stateful_set.spec.as_ref()?.template.spec.as_ref()?;
    pod.containers[0].env.as_ref()?.iter().find(|e| e.name == name)?.value.clone()
}

/// `ROSTER_BOOTSTRAP_EXPECT` as the pod will see it: from the ConfigMap the env var points to.
fn bootstrap_expect(d: &roster_operator::registry_cluster::Desired) -> Option<String> {
    let pod = d.stateful_set.spec.as_ref()?.template.spec.as_ref()?;
    let var = pod.containers[0].env.as_ref()?.iter().find(|e| e.name == "ROSTER_BOOTSTRAP_EXPECT")?;
    let key = var.value_from.as_ref()?.config_map_key_ref.as_ref()?;
    assert_eq!(Some(key.name.as_str()), d.config_map.metadata.name.as_deref());
    d.config_map.data.as_ref()?.get(&key.key).cloned()
}

#[test]
fn scaling_changes_no_pod_template() {
    let three = fixture("three-servers.yaml");
    let mut five = three.clone();
    five.spec.replicas = 5;
    let build_of =
        |rc: &roster_operator::crd::RegistryCluster| build(&validate(rc, DEFAULT_IMAGE).expect("valid"), None);
    let (a, b) = (build_of(&three), build_of(&five));
    let template =
        |d: &roster_operator::registry_cluster::Desired| d.stateful_set.spec.as_ref().map(|s| s.template.clone());
    assert_eq!(template(&a), template(&b), "a changed template would restart every server");
    assert_eq!(bootstrap_expect(&b).as_deref(), Some("5"));
}

#[test]
fn three_servers_find_each_other_by_stable_names() {
    let rc = fixture("three-servers.yaml");
    let valid = validate(&rc, DEFAULT_IMAGE).expect("valid");
    let d = build(&valid, rc.controller_owner_ref(&()));

    let sts = d.stateful_set.spec.as_ref().expect("spec");
    assert_eq!(sts.replicas, Some(3));
    assert_eq!(sts.service_name.as_deref(), Some("registry-server"));
    assert_eq!(sts.pod_management_policy.as_deref(), Some("Parallel"), "all start together for bootstrap_expect");
    assert_eq!(sts.update_strategy.as_ref().and_then(|u| u.type_.as_deref()), Some("OnDelete"));
    let pod = sts.template.spec.as_ref().expect("pod");
    assert_eq!(pod.containers[0].image.as_deref(), Some("example.org/roster:1.2.3"));
    assert!(pod.affinity.as_ref().and_then(|a| a.pod_anti_affinity.as_ref()).is_some(), "servers spread over nodes");
    assert_eq!(pod.security_context.as_ref().and_then(|s| s.fs_group), Some(65532), "the nonroot user owns /data");

    assert_eq!(bootstrap_expect(&d).as_deref(), Some("3"));
    assert_eq!(
        env_of(&d, "ROSTER_RETRY_JOIN").as_deref(),
        Some("registry-server.shop.svc:8300"),
        "the headless Service's name stands for every server, however many"
    );
    let probe = pod.containers[0].readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("probe");
    assert_eq!(probe.path.as_deref(), Some("/readyz"), "ready means a Raft voter in touch with a leader");
    let retention = sts.persistent_volume_claim_retention_policy.as_ref().expect("retention");
    assert_eq!(retention.when_scaled.as_deref(), Some("Delete"), "a removed server's data must not come back");
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    assert_eq!(
        env_of(&d, "ROSTER_ADVERTISE_RPC").as_deref(),
        Some("$(ROSTER_NODE_NAME).registry-server.shop.svc:8300"),
        "advertised by name, so a new pod IP changes nothing"
    );
    assert_eq!(env_of(&d, "ROSTER_GOSSIP_SEEDS").as_deref(), Some("registry-server.shop.svc:8301"));
    assert_eq!(env_of(&d, "ROSTER_DATACENTER").as_deref(), Some("eu-west"));
    let key = pod.containers[0].env.as_ref().and_then(|e| e.iter().find(|v| v.name == "ROSTER_GOSSIP_KEY").cloned());
    let from = key.and_then(|k| k.value_from).and_then(|f| f.secret_key_ref).expect("gossip key from the Secret");
    assert_eq!((from.name.as_str(), from.key.as_str()), ("registry-gossip", "key"));
    assert_eq!(env_of(&d, "ROSTER_ACL_ENABLED").as_deref(), Some("true"));
    assert_eq!(env_of(&d, "ROSTER_ACL_DEFAULT_POLICY").as_deref(), Some("deny"));

    let claim = &sts.volume_claim_templates.as_ref().expect("claims")[0];
    let claim_spec = claim.spec.as_ref().expect("claim spec");
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
    let size = claim_spec.resources.as_ref().and_then(|r| r.requests.as_ref()).map(|r| r["storage"].0.clone());
    assert_eq!(size.as_deref(), Some("10Gi"));

    let headless = d.headless_service.spec.as_ref().expect("headless");
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert_eq!(headless.publish_not_ready_addresses, Some(true), "peers resolve before they are ready");
    let client = d.client_service.spec.as_ref().expect("client");
    assert_eq!(client.ports.as_ref().map(|p| p[0].port), Some(8500));
    assert_eq!(client.publish_not_ready_addresses, None, "clients only reach ready servers");

    let pdb = d.pdb.spec.as_ref().expect("pdb");
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)), "one server at a time: quorum kept");

    // Every object is owned by the cluster, so deleting it deletes them.
    for owners in [
        &d.stateful_set.metadata.owner_references,
        &d.headless_service.metadata.owner_references,
        &d.client_service.metadata.owner_references,
        &d.pdb.metadata.owner_references,
    ] {
        let o = owners.as_ref().expect("owner");
        assert_eq!(o[0].kind, "RegistryCluster");
        assert_eq!(o[0].controller, Some(true));
    }
}

#[test]
fn defaults_fill_a_minimal_spec() {
    let rc = fixture("one-server-defaults.yaml");
    let valid = validate(&rc, DEFAULT_IMAGE).expect("valid");
    assert_eq!(valid.datacenter, "dc1");
    assert_eq!(valid.storage_size, "1Gi");
    assert!(!valid.acl_enabled);
    let d = build(&valid, None);
    let pod = d.stateful_set.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod");
    assert_eq!(pod.containers[0].image.as_deref(), Some(DEFAULT_IMAGE));
    assert_eq!(bootstrap_expect(&d).as_deref(), Some("1"));
    assert_eq!(
        d.pdb.spec.as_ref().and_then(|s| s.max_unavailable.clone()),
        Some(IntOrString::Int(0)),
        "a single server may not be disrupted voluntarily: that would lose the only copy of quorum"
    );
}

#[test]
fn a_bad_spec_is_refused_with_every_problem_named() {
    let rc = fixture("bad-spec.yaml");
    let errors = validate(&rc, DEFAULT_IMAGE).expect_err("invalid");
    let all = errors.join("\n");
    for field in ["metadata.name", "spec.replicas", "spec.storage.size", "spec.datacenter", "spec.gossipKeySecret"] {
        assert!(all.contains(field), "no error about {field} in:\n{all}");
    }
    assert_eq!(errors.len(), 5, "{all}");
}

/// Servers answer DNS on 8600, and the client Service carries it over UDP and TCP, for a CoreDNS
/// stub domain.
#[test]
fn servers_serve_dns_through_the_client_service() {
    let rc = fixture("three-servers.yaml");
    let d = build(&validate(&rc, DEFAULT_IMAGE).expect("valid"), None);
    assert_eq!(env_of(&d, "ROSTER_DNS_ADDR").as_deref(), Some("0.0.0.0:8600"));
    let ports = d.client_service.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
    let dns: Vec<(Option<String>, i32)> =
        ports.iter().filter(|p| p.port == 8600).map(|p| (p.protocol.clone(), p.port)).collect();
    assert_eq!(dns, vec![(Some("UDP".into()), 8600), (Some("TCP".into()), 8600)]);
}
