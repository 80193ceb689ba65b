//! `patch_for` from pod fixtures (`operator/tests/fixtures/inject/`): the patch is applied as the
//! API server applies it, and the resulting pod is checked.

use super::*;
use serde_json::json;

fn fixture(name: &str) -> Pod {
    let path = format!("{}/tests/fixtures/inject/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn settings(native: bool) -> InjectSettings {
    InjectSettings {
        image: "ghcr.io/roster-dev/roster-sidecar:0.1.0".into(),
        env: BTreeMap::from([
            ("ROSTER_SERVERS".to_string(), "roster.roster.svc:8500".to_string()),
            ("ROSTER_DATACENTER".to_string(), "dc1".to_string()),
        ]),
        gossip_key_secret: Some("roster-gossip".into()),
        tls_secret: None,
        login_token: true,
        native_sidecars: native,
    }
}

/// The pod after the patch, as the API server would store it.
fn patched(pod: &Pod, patch: Value) -> Pod {
    let mut doc = serde_json::to_value(pod).unwrap();
    let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
    json_patch::patch(&mut doc, &patch).expect("the patch applies");
    serde_json::from_value(doc).unwrap()
}

fn env(c: &Container, name: &str) -> Option<EnvVar> {
    c.env.iter().flatten().find(|e| e.name == name).cloned()
}

#[test]
fn an_annotated_pod_gets_a_native_sidecar_with_its_service() {
    let pod = fixture("annotated.yaml");
    let patch = patch_for(&pod, false, &settings(true)).unwrap().expect("a patch");
    let out = patched(&pod, patch);
    let spec = out.spec.as_ref().unwrap();
    let inits = spec.init_containers.as_ref().unwrap();
    assert_eq!(inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), [CONTAINER_NAME, "migrate"]);
    let sidecar = &inits[0];
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"), "a native sidecar");
    assert_eq!(spec.containers.len(), 1, "the app's containers are untouched");
    let services: Value = serde_json::from_str(&env(sidecar, "ROSTER_SERVICES").unwrap().value.unwrap()).unwrap();
    assert_eq!(
        services,
        json!([{
            "Name": "web", "Port": 8080, "Tags": ["v2", "canary"], "Meta": {"team": "payments"},
            "Check": {"HTTP": "http://127.0.0.1:8080/healthz", "Interval": "5s"},
        }]),
        "named after the ServiceAccount, the port by its name"
    );
    let from = |n: &str| env(sidecar, n).and_then(|e| e.value_from).and_then(|f| f.field_ref).map(|f| f.field_path);
    assert_eq!(from("ROSTER_NODE_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(from("POD_IP").as_deref(), Some("status.podIP"));
    assert_eq!(from("POD_NAMESPACE").as_deref(), Some("metadata.namespace"));
    let key = env(sidecar, "ROSTER_GOSSIP_KEY").and_then(|e| e.value_from).and_then(|f| f.secret_key_ref).unwrap();
    assert_eq!((key.name.as_str(), key.key.as_str()), ("roster-gossip", "key"));
    assert_eq!(
        env(sidecar, "ROSTER_SERVERS").unwrap().value.as_deref(),
        Some("roster.roster.svc:8500"),
        "the ConfigMap's settings"
    );
    assert_eq!(
        env(sidecar, "ROSTER_BEARER_TOKEN_FILE").unwrap().value.as_deref(),
        Some("/var/run/secrets/roster/token")
    );
    let volumes = spec.volumes.as_ref().unwrap();
    assert_eq!(volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["config", "roster-token"]);
    let projected = volumes[1].projected.as_ref().unwrap().sources.as_ref().unwrap()[0].service_account_token.clone();
    assert_eq!(projected.unwrap().path, "token");
    assert_eq!(out.metadata.annotations.as_ref().unwrap().get(INJECTED).map(String::as_str), Some("true"));
    // Admission can run twice (reinvocation): the second time changes nothing.
    assert_eq!(patch_for(&out, false, &settings(true)), Ok(None));
}

/// With the servers on TLS, the sidecar mounts the client certificate's Secret (a volume the
/// kubelet refreshes on renewal) and is told where its files are; a pod without volumes gets the
/// list made, a pod with some gets them appended.
#[test]
fn with_tls_the_sidecar_mounts_the_client_certificate_and_checks_the_servers_name() {
    let s = InjectSettings { tls_secret: Some("registry-client-tls".into()), ..settings(true) };
    let pod = fixture("annotated.yaml");
    let out = patched(&pod, patch_for(&pod, false, &s).unwrap().expect("a patch"));
    let spec = out.spec.as_ref().unwrap();
    let sidecar = &spec.init_containers.as_ref().unwrap()[0];
    let value = |n: &str| env(sidecar, n).and_then(|e| e.value);
    assert_eq!(value("ROSTER_TLS_CA_FILE").as_deref(), Some("/etc/roster/tls/ca.crt"));
    assert_eq!(value("ROSTER_TLS_CERT_FILE").as_deref(), Some("/etc/roster/tls/tls.crt"));
    assert_eq!(value("ROSTER_TLS_KEY_FILE").as_deref(), Some("/etc/roster/tls/tls.key"));
    assert_eq!(value("ROSTER_TLS_VERIFY_SERVER_HOSTNAME").as_deref(), Some("true"));
    let mount = sidecar.volume_mounts.iter().flatten().find(|m| m.name == "roster-tls").expect("mounted");
    assert_eq!((mount.mount_path.as_str(), mount.read_only), ("/etc/roster/tls", Some(true)));
    assert!(mount.sub_path.is_none(), "a subPath mount would never see a renewal");
    let volumes = spec.volumes.as_ref().unwrap();
    assert_eq!(volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["config", "roster-token", "roster-tls"]);
    assert_eq!(volumes[2].secret.as_ref().unwrap().secret_name.as_deref(), Some("registry-client-tls"));

    let plain = fixture("plain.yaml");
    let s = InjectSettings { login_token: false, ..s };
    let out = patched(&plain, patch_for(&plain, true, &s).unwrap().expect("labelled namespace"));
    let volumes = out.spec.unwrap().volumes.unwrap();
    assert_eq!(volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["roster-tls"]);
    // Without TLS, none of it.
    let out = patched(&pod, patch_for(&pod, false, &settings(true)).unwrap().unwrap());
    let sidecar = &out.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert!(env(sidecar, "ROSTER_TLS_CA_FILE").is_none());
}

#[test]
fn without_native_sidecars_it_is_a_regular_container() {
    let pod = fixture("annotated.yaml");
    let out = patched(&pod, patch_for(&pod, false, &settings(false)).unwrap().unwrap());
    let spec = out.spec.unwrap();
    assert_eq!(spec.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["app", CONTAINER_NAME]);
    assert_eq!(spec.containers[1].restart_policy, None);
    assert_eq!(spec.init_containers.unwrap().len(), 1);
}

#[test]
fn a_labelled_namespace_injects_every_pod_that_does_not_refuse() {
    let plain = fixture("plain.yaml");
    assert_eq!(patch_for(&plain, false, &settings(true)), Ok(None), "not asked, namespace not labelled");
    let s = InjectSettings { gossip_key_secret: None, login_token: false, ..settings(true) };
    let out = patched(&plain, patch_for(&plain, true, &s).unwrap().expect("labelled namespace"));
    let spec = out.spec.unwrap();
    let sidecar = &spec.init_containers.as_ref().unwrap()[0];
    let services: Value = serde_json::from_str(&env(sidecar, "ROSTER_SERVICES").unwrap().value.unwrap()).unwrap();
    assert_eq!(services, json!([{"Name": "cart", "Port": 7000}]), "the app label, the first port");
    assert!(env(sidecar, "ROSTER_GOSSIP_KEY").is_none() && env(sidecar, "ROSTER_BEARER_TOKEN_FILE").is_none());
    assert!(spec.volumes.is_none(), "no token volume without login");
    assert_eq!(out.metadata.annotations.unwrap().get(INJECTED).map(String::as_str), Some("true"));
    assert_eq!(patch_for(&fixture("opted-out.yaml"), true, &settings(true)), Ok(None));
}

#[test]
fn unreadable_annotations_refuse_the_pod_and_name_the_problem() {
    let err = patch_for(&fixture("bad-port.yaml"), false, &settings(true)).unwrap_err();
    assert!(err.contains(SERVICE_PORT) && err.contains("grpc"), "{err}");
    let mut pod = fixture("annotated.yaml");
    let annotations = pod.metadata.annotations.as_mut().unwrap();
    annotations.insert(SERVICE_CHECK_INTERVAL.into(), "soon".into());
    assert!(patch_for(&pod, false, &settings(true)).unwrap_err().contains(SERVICE_CHECK_INTERVAL));
    let annotations = pod.metadata.annotations.as_mut().unwrap();
    annotations.insert(SERVICE_CHECK_INTERVAL.into(), "5s".into());
    annotations.insert(SERVICE_CHECK_HTTP.into(), "healthz".into());
    assert!(patch_for(&pod, false, &settings(true)).unwrap_err().contains(SERVICE_CHECK_HTTP));
    let annotations = pod.metadata.annotations.as_mut().unwrap();
    annotations.remove(SERVICE_CHECK_HTTP);
    annotations.insert(SERVICE_NAME.into(), "web service!".into());
    assert!(patch_for(&pod, false, &settings(true)).unwrap_err().contains(SERVICE_NAME));
}

#[test]
fn admission_reviews_are_answered_with_the_patch_or_a_denial() {
    let review = |pod: &Pod| {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop", "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod, "dryRun": false,
            }
        }))
        .unwrap()
    };
    let pod = fixture("annotated.yaml");
    let answer = serde_json::to_value(webhook::review(&review(&pod), false, &settings(true)).unwrap()).unwrap();
    let response = &answer["response"];
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    // kube writes the bytes as a JSON array, which the API server's decoder takes as []byte.
    let bytes: Vec<u8> = serde_json::from_value(response["patch"].clone()).unwrap();
    let patch: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(patch, patch_for(&pod, false, &settings(true)).unwrap().unwrap());

    let plain = fixture("plain.yaml");
    let answer = serde_json::to_value(webhook::review(&review(&plain), false, &settings(true)).unwrap()).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none(), "{answer}");

    let bad = fixture("bad-port.yaml");
    let answer = serde_json::to_value(webhook::review(&review(&bad), false, &settings(true)).unwrap()).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap_or_else(|| panic!("{answer}"));
    assert!(message.contains("roster.dev/service-port"), "{message}");

    assert!(webhook::review(b"{\"kind\": 3}", false, &settings(true)).is_err());
}

#[test]
fn certificates_are_renewed_before_they_end() {
    let names = certs::service_names("roster-webhook", "roster");
    let now = 1_800_000_000;
    assert_eq!(certs::renewal(None, &names, now), certs::Renewal::CaAndLeaf);
    let first = certs::issue(None, certs::Renewal::CaAndLeaf, &names, now).unwrap();
    assert_eq!(certs::renewal(Some(&first), &names, now), certs::Renewal::Keep);
    assert_eq!(first.tls_not_after, now + certs::LEAF_VALIDITY_SECS);
    // Near the serving certificate's end: a new one from the same CA.
    let later = first.tls_not_after - certs::RENEW_BEFORE_SECS + 1;
    assert_eq!(certs::renewal(Some(&first), &names, later), certs::Renewal::Leaf);
    let second = certs::issue(Some(&first), certs::Renewal::Leaf, &names, later).unwrap();
    assert_eq!(
        (second.ca_pem.as_str(), second.ca_key_pem.as_str()),
        (first.ca_pem.as_str(), first.ca_key_pem.as_str())
    );
    assert_ne!(second.tls_pem, first.tls_pem);
    // Other names: a new serving certificate at once.
    assert_eq!(certs::renewal(Some(&second), &names[..2], later), certs::Renewal::Leaf);
    // Near the CA's end: a new CA, the old one still in the bundle.
    let late = first.ca_not_after - certs::LEAF_VALIDITY_SECS;
    assert_eq!(certs::renewal(Some(&second), &names, late), certs::Renewal::CaAndLeaf);
    let third = certs::issue(Some(&second), certs::Renewal::CaAndLeaf, &names, late).unwrap();
    assert_eq!(third.ca_pem.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(third.ca_pem.contains(second.ca_pem.trim()));
    // What the Secret holds reads back the same.
    let secret = certs::to_secret("roster-webhook-cert", "roster", &third, None);
    assert_eq!(certs::from_secret(&secret), Some(third.clone()));
    let store = certs::CertStore::default();
    store.set(&third.tls_pem, &third.tls_key_pem).expect("rustls takes it");
    assert!(store.is_set());
}

#[test]
fn native_sidecars_from_the_server_version() {
    assert!(!native_sidecars_supported("1", "28"));
    assert!(native_sidecars_supported("1", "29"));
    assert!(native_sidecars_supported("1", "33+"));
    assert!(!native_sidecars_supported("", ""));
}
