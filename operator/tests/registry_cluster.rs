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

fn container(d: &roster_operator::registry_cluster::Desired) -> k8s_openapi::api::core::v1::Container {
    d.stateful_set.spec.as_ref().and_then(|s| s.template.spec.as_ref()).map(|p| p.containers[0].clone()).expect("pod")
}

fn port_names(ports: Option<&Vec<k8s_openapi::api::core::v1::ServicePort>>) -> Vec<(String, i32)> {
    ports.into_iter().flatten().map(|p| (p.name.clone().unwrap_or_default(), p.port)).collect()
}

/// TLS from the operator's CA: the server Secret mounted whole (so renewals reach the files), the
/// server told where the files are, HTTPS on 8501 on both Services, plain HTTP kept; no Certificate.
#[test]
fn tls_mounts_the_server_secret_and_serves_https_beside_http() {
    let rc = fixture("tls.yaml");
    let valid = validate(&rc, DEFAULT_IMAGE).expect("valid");
    let tls = valid.tls.clone().expect("tls on");
    assert_eq!(tls.validity_secs, 720 * 3600);
    assert!(tls.verify_incoming, "verifyIncoming defaults to true");
    assert_eq!(tls.cert_manager, None);
    let d = build(&valid, rc.controller_owner_ref(&()));
    assert!(d.certificates.is_empty(), "the operator issues; no cert-manager Certificate");
    for (name, value) in [
        ("ROSTER_HTTPS_ADDR", "0.0.0.0:8501"),
        ("ROSTER_ADVERTISE_HTTPS", "$(ROSTER_NODE_NAME).registry-server.shop.svc:8501"),
        ("ROSTER_TLS_CA_FILE", "/etc/roster/tls/ca.crt"),
        ("ROSTER_TLS_CERT_FILE", "/etc/roster/tls/tls.crt"),
        ("ROSTER_TLS_KEY_FILE", "/etc/roster/tls/tls.key"),
        ("ROSTER_TLS_VERIFY_INCOMING", "true"),
        ("ROSTER_TLS_VERIFY_OUTGOING", "true"),
        ("ROSTER_TLS_VERIFY_SERVER_HOSTNAME", "true"),
        ("ROSTER_HTTP_ADDR", "0.0.0.0:8500"),
    ] {
        assert_eq!(env_of(&d, name).as_deref(), Some(value), "{name}");
    }
    let pod = d.stateful_set.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod");
    let volume = pod.volumes.as_ref().and_then(|v| v.iter().find(|v| v.name == "tls")).expect("tls volume");
    let secret = volume.secret.as_ref().expect("from a Secret");
    assert_eq!(secret.secret_name.as_deref(), Some("registry-server-tls"));
    let c = container(&d);
    let mount = c.volume_mounts.as_ref().and_then(|m| m.iter().find(|m| m.name == "tls")).expect("mounted");
    assert_eq!(mount.mount_path, "/etc/roster/tls");
    assert_eq!(mount.sub_path, None, "a subPath mount never sees a renewed Secret");
    assert_eq!(mount.read_only, Some(true));
    assert!(c.ports.iter().flatten().any(|p| p.container_port == 8501));
    assert_eq!(
        c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).map(|h| h.port.clone()),
        Some(IntOrString::Int(8500)),
        "probes stay on plain HTTP (the kubelet has no client certificate)"
    );
    assert_eq!(
        port_names(d.client_service.spec.as_ref().and_then(|s| s.ports.as_ref())),
        [("http".to_string(), 8500), ("dns".into(), 8600), ("dns-tcp".into(), 8600), ("https".into(), 8501)]
    );
    assert!(
        port_names(d.headless_service.spec.as_ref().and_then(|s| s.ports.as_ref())).contains(&("https".into(), 8501))
    );

    // Without TLS none of it.
    let plain = build(&validate(&fixture("three-servers.yaml"), DEFAULT_IMAGE).expect("valid"), None);
    assert_eq!(env_of(&plain, "ROSTER_HTTPS_ADDR"), None);
    assert!(!port_names(plain.client_service.spec.as_ref().and_then(|s| s.ports.as_ref())).iter().any(|p| p.1 == 8501));
    let plain_pod = plain.stateful_set.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod");
    assert_eq!(plain_pod.volumes, None);
}

/// cert-manager issues: the operator asks for the same Secret, names and uses with a Certificate.
#[test]
fn cert_manager_gets_a_certificate_for_the_same_secret() {
    let rc = fixture("tls-cert-manager.yaml");
    let valid = validate(&rc, DEFAULT_IMAGE).expect("valid");
    let d = build(&valid, rc.controller_owner_ref(&()));
    assert_eq!(env_of(&d, "ROSTER_TLS_VERIFY_INCOMING").as_deref(), Some("false"));
    assert_eq!(d.certificates.len(), 2, "one for the servers, one for the sidecars");
    let cert = serde_json::to_value(&d.certificates[0]).expect("json");
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    assert_eq!(cert["kind"], "Certificate");
    assert_eq!(cert["metadata"]["name"], "registry-server-tls");
    assert_eq!(cert["metadata"]["namespace"], "shop");
    assert_eq!(cert["metadata"]["ownerReferences"][0]["kind"], "RegistryCluster");
    let spec = &cert["spec"];
    assert_eq!(spec["secretName"], "registry-server-tls", "the Secret the pods mount");
    assert_eq!(
        spec["issuerRef"],
        serde_json::json!({"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    assert_eq!(spec["dnsNames"][0], "server.eu-west.consul");
    assert!(spec["dnsNames"].as_array().expect("names").contains(&"*.registry-server.shop.svc".into()));
    assert_eq!(spec["ipAddresses"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(spec["duration"], "2160h");
    let usages = spec["usages"].as_array().expect("usages");
    assert!(usages.contains(&"server auth".into()) && usages.contains(&"client auth".into()));
    // The sidecars' client certificate: Consul's client name, in the Secret the injector copies.
    let client = serde_json::to_value(&d.certificates[1]).expect("json");
    assert_eq!(client["spec"]["secretName"], "registry-client-tls");
    assert_eq!(client["spec"]["dnsNames"], serde_json::json!(["client.eu-west.consul"]));
    assert_eq!(client["spec"]["issuerRef"], spec["issuerRef"]);
    // The pods are built the same either way.
    let own = build(&validate(&fixture("tls.yaml"), DEFAULT_IMAGE).expect("valid"), None);
    let volumes = |d: &roster_operator::registry_cluster::Desired| {
        d.stateful_set.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|p| p.volumes.clone())
    };
    assert_eq!(volumes(&own), volumes(&d));
}

#[test]
fn tls_settings_that_cannot_work_are_refused() {
    let errors = validate(&fixture("tls-bad.yaml"), DEFAULT_IMAGE).expect_err("invalid");
    let all = errors.join("\n");
    assert!(all.contains("spec.tls.certificateValidity") && all.contains("shorter than 1h"), "{all}");
    assert!(all.contains("spec.tls.certManager.issuerRef.name"), "{all}");
    let mut off = fixture("tls-bad.yaml");
    off.spec.tls.as_mut().expect("tls").enabled = false;
    assert!(validate(&off, DEFAULT_IMAGE).expect("TLS off: its settings do not matter").tls.is_none());
}

/// A secondary datacenter: the servers get the WAN settings (join entries resolved, the replication
/// token from its Secret), a WAN port, and a Service of the asked type for other datacenters.
#[test]
fn federation_gives_the_servers_wan_settings_and_a_wan_service() {
    let rc = fixture("federation.yaml");
    let valid = validate(&rc, DEFAULT_IMAGE).expect("valid");
    let d = build(&valid, rc.controller_owner_ref(&()));
    for (name, value) in [
        ("ROSTER_DATACENTER", "dc2"),
        ("ROSTER_PRIMARY_DATACENTER", "dc1"),
        ("ROSTER_WAN_ADDR", "0.0.0.0:8302"),
        ("ROSTER_WAN_ADVERTISE", "$(POD_IP):8302"),
        ("ROSTER_RETRY_JOIN_WAN", "registry-wan.roster-dc1.svc:8302,10.20.0.7:8302"),
    ] {
        assert_eq!(env_of(&d, name).as_deref(), Some(value), "{name}");
    }
    let c = container(&d);
    let token = c.env.iter().flatten().find(|e| e.name == "ROSTER_ACL_REPLICATION_TOKEN").expect("token");
    let from = token.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()).expect("from the Secret");
    assert_eq!((from.name.as_str(), from.key.as_str()), ("acl-replication", "token"));
    assert!(c.ports.iter().flatten().any(|p| p.container_port == 8302 && p.protocol.as_deref() == Some("UDP")));
    let wan = d.wan_service.as_ref().expect("a WAN Service");
    assert_eq!(wan.metadata.name.as_deref(), Some("registry-wan"));
    let spec = wan.spec.as_ref().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(port_names(spec.ports.as_ref()), [("wan".to_string(), 8302)]);
    assert_eq!(spec.ports.as_ref().and_then(|p| p[0].protocol.clone()).as_deref(), Some("UDP"));
    assert_eq!(spec.selector.as_ref(), d.stateful_set.spec.as_ref().and_then(|s| s.selector.match_labels.as_ref()));

    // Without federation: no WAN at all.
    let plain = build(&validate(&fixture("three-servers.yaml"), DEFAULT_IMAGE).expect("valid"), None);
    assert!(plain.wan_service.is_none());
    assert_eq!(env_of(&plain, "ROSTER_WAN_ADDR"), None);
}

#[test]
fn federation_settings_that_cannot_work_are_refused() {
    let mut rc = fixture("federation.yaml");
    rc.spec.acl.enabled = false;
    let f = rc.spec.federation.as_mut().expect("federation");
    f.retry_join_wan.push("not a name".into());
    let all = validate(&rc, DEFAULT_IMAGE).expect_err("invalid").join("\n");
    assert!(all.contains("spec.federation.retryJoinWan[2]"), "{all}");
    assert!(all.contains("spec.federation.replicationTokenSecret: needs spec.acl.enabled"), "{all}");
}
