//! A sidecar reaches its servers over TLS: a `roster server` with HTTPS only and `verify_incoming`,
//! certificates made by `roster tls`; the sidecar (in this process) presents its client certificate,
//! checks the server's name, registers its pod's service and forwards the app's calls. A sidecar
//! without a certificate is refused by the server and says so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use roster_sidecar::{Config, Sidecar};
use serde_json::Value;

/// Server: HTTPS 127.0.0.1:19851, RPC :19852. Sidecars' agent APIs: :19853 and :19854.
const SERVER_HTTPS: &str = "127.0.0.1:19851";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn roster_bin() -> PathBuf {
    let sidecar = PathBuf::from(env!("CARGO_BIN_EXE_roster-sidecar"));
    let roster = sidecar.with_file_name("roster");
    assert!(roster.exists(), "{} is missing: build it first (cargo build -p roster-registry)", roster.display());
    roster
}

fn roster_tls(dir: &Path, args: &[&str]) {
    let out = Command::new(roster_bin()).arg("tls").args(args).current_dir(dir).output().expect("roster tls");
    assert!(out.status.success(), "roster tls {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn sidecar_config(dir: &Path, agent: &str, with_certificate: bool) -> Config {
    let mut c = Config {
        node_name: format!("pod-{agent}"),
        address: "127.0.0.1".into(),
        http_addr: agent.parse().expect("address"),
        servers: vec![format!("https://{SERVER_HTTPS}")],
        services: vec![serde_json::json!({"name": "web", "port": 8080})],
        ..Config::default()
    };
    c.tls.ca_file = Some(dir.join("consul-agent-ca.pem"));
    c.tls.verify_server_hostname = true;
    if with_certificate {
        c.tls.cert_file = Some(dir.join("dc1-client-consul-0.pem"));
        c.tls.key_file = Some(dir.join("dc1-client-consul-0-key.pem"));
    }
    c
}

async fn get(http: &reqwest::Client, agent: &str, path: &str) -> (u16, Value) {
    match http.get(format!("http://{agent}{path}")).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_registers_and_forwards_over_tls_with_its_client_certificate() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    roster_tls(dir, &["ca", "create"]);
    roster_tls(dir, &["cert", "create", "--server"]);
    roster_tls(dir, &["cert", "create", "--client"]);
    let log = dir.join("server.log");
    let _server = Proc(
        Command::new(roster_bin())
            .args(["server", "--node-name", "tls-server", "--http-enabled", "false", "--dns-addr", "off"])
            .args(["--https-addr", SERVER_HTTPS, "--rpc-addr", "127.0.0.1:19852"])
            .arg("--tls-ca-file")
            .arg(dir.join("consul-agent-ca.pem"))
            .arg("--tls-cert-file")
            .arg(dir.join("dc1-server-consul-0.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("dc1-server-consul-0-key.pem"))
            .args(["--tls-verify-incoming", "true"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn roster server"),
    );
    let http = registry::client::http_builder().timeout(Duration::from_secs(5)).build().expect("client");
    let agent = "127.0.0.1:19853";
    let sidecar = Sidecar::start(sidecar_config(dir, agent, true)).await.expect("sidecar starts");

    // The pod's service reaches the catalog through TLS, and the app's catalog read comes back the same way.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get(&http, agent, "/v1/catalog/service/web").await;
        if status == 200 && body.as_array().is_some_and(|a| a.iter().any(|e| e["Node"] == "pod-127.0.0.1:19853")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web never reached the catalog over TLS: {status} {body}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let put = http.put(format!("http://{agent}/v1/kv/over-tls")).body("yes").send().await.expect("put");
    assert_eq!(put.status(), 200);
    let (_, leader) = get(&http, agent, "/v1/status/leader").await;
    assert_eq!(leader, Value::String("127.0.0.1:19852".into()));

    // Without its certificate the server refuses it (verify_incoming): the forwarded call fails
    // with the reason instead of an answer.
    let bare_agent = "127.0.0.1:19854";
    let bare = Sidecar::start(sidecar_config(dir, bare_agent, false)).await.expect("sidecar starts");
    let (status, body) = get(&http, bare_agent, "/v1/status/leader").await;
    assert!(status >= 500, "a sidecar without a certificate got through: {status} {body}");
    bare.stop().await;
    sidecar.stop().await;
}
