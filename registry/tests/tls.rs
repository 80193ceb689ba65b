//! TLS with real certificates (made by `roster tls`, as an operator would) between real server
//! processes on 127.0.0.1-4: three servers with HTTPS only, mutual TLS on the RPC port and server
//! hostnames verified form a cluster and forward writes to their leader; a client without a
//! certificate, plain HTTP on either port, and a server whose certificate another CA signed are all
//! refused; a rotated certificate is served without a restart. Every process is killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use registry::tls::{Expect, Material, TlsFiles};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

const HTTPS: u16 = 18950;
const RPC: u16 = 18951;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `roster tls ...` in `dir`, as a person would.
fn roster_tls(dir: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_roster"))
        .arg("tls")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run roster tls");
    assert!(out.status.success(), "roster tls {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts server `i` (127.0.0.i) with `cert` and the CA in `ca_dir`.
fn start_server(i: usize, ca: &Path, cert: &Path, key: &Path, log: &Path) -> Proc {
    let ip = format!("127.0.0.{i}");
    let join: Vec<String> = (1..=3).map(|j| format!("127.0.0.{j}:{RPC}")).collect();
    let child = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["server", "--node-name", &format!("tls-{i}"), "--http-enabled", "false"])
        .args(["--https-addr", &format!("{ip}:{HTTPS}"), "--rpc-addr", &format!("{ip}:{RPC}"), "--dns-addr", "off"])
        .args(["--bootstrap-expect", "3", "--retry-join", &join.join(",")])
        .arg("--tls-ca-file")
        .arg(ca)
        .arg("--tls-cert-file")
        .arg(cert)
        .arg("--tls-key-file")
        .arg(key)
        .args(["--tls-verify-incoming", "true", "--tls-verify-server-hostname", "true"])
        .env("RUST_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn roster server");
    Proc(child)
}

/// An HTTPS client that checks servers as `server.dc1.consul` and presents `own` (cert, key) if given.
fn https_client(ca: &Path, own: Option<(&Path, &Path)>) -> reqwest::Client {
    let material = Material::load(TlsFiles {
        ca_file: ca.to_path_buf(),
        cert_file: own.map(|o| o.0.to_path_buf()),
        key_file: own.map(|o| o.1.to_path_buf()),
    })
    .expect("client TLS files");
    let config = material.client_config(Expect::Name("server.dc1.consul".into())).expect("client config");
    registry::client::http_builder()
        .use_preconfigured_tls(config)
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn logs(dir: &Path) -> String {
    (1..=4)
        .map(|i| {
            format!(
                "----- server {i} -----\n{}",
                std::fs::read_to_string(dir.join(format!("s{i}.log"))).unwrap_or_default()
            )
        })
        .collect()
}

async fn wait_for<F, Fut>(what: &str, dir: &Path, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out: {what}\n{}", logs(dir));
}

fn der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("a certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_speak_mutual_tls_refuse_strangers_and_pick_up_rotated_certificates() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    roster_tls(dir, &["ca", "create"]);
    for _ in 0..4 {
        roster_tls(dir, &["cert", "create", "--server"]);
    }
    roster_tls(dir, &["cert", "create", "--cli"]);
    // Another cluster's CA and a server certificate it signed, with the right name.
    let foreign = dir.join("foreign");
    std::fs::create_dir(&foreign).expect("dir");
    roster_tls(&foreign, &["ca", "create"]);
    roster_tls(&foreign, &["cert", "create", "--server"]);

    let ca = dir.join("consul-agent-ca.pem");
    let cert = |n: usize| dir.join(format!("dc1-server-consul-{n}.pem"));
    let key = |n: usize| dir.join(format!("dc1-server-consul-{n}-key.pem"));
    // Server 1 reads its certificate from files the test replaces later.
    let (s1_cert, s1_key) = (dir.join("s1.pem"), dir.join("s1-key.pem"));
    std::fs::copy(cert(0), &s1_cert).expect("copy");
    std::fs::copy(key(0), &s1_key).expect("copy");
    let mut servers = vec![start_server(1, &ca, &s1_cert, &s1_key, &dir.join("s1.log"))];
    for i in 2..=3 {
        servers.push(start_server(i, &ca, &cert(i - 1), &key(i - 1), &dir.join(format!("s{i}.log"))));
    }
    let cli = (dir.join("dc1-cli-consul-0.pem"), dir.join("dc1-cli-consul-0-key.pem"));
    let client = https_client(&ca, Some((&cli.0, &cli.1)));
    let url = |i: usize, path: &str| format!("https://127.0.0.{i}:{HTTPS}{path}");

    // The cluster forms over mutual TLS: every server knows the leader and the three peers.
    wait_for("a leader over mutual TLS", dir, Duration::from_secs(30), || async {
        let mut all = true;
        for i in 1..=3 {
            let peers = match client.get(url(i, "/v1/status/peers")).send().await {
                Ok(r) => r.json::<Vec<String>>().await.unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            all &= peers.len() == 3;
        }
        all
    })
    .await;

    // Writes through every server reach the leader (forwarded over HTTPS to its HTTPS API) and
    // are read back fresh from another.
    for i in 1..=3 {
        let put = client.put(url(i, "/v1/kv/tls/key")).body(format!("v{i}")).send().await.expect("put");
        assert_eq!(put.status(), 200, "put through server {i}: {}", put.text().await.unwrap_or_default());
        let j = i % 3 + 1;
        let got = client.get(url(j, "/v1/kv/tls/key?raw&consistent")).send().await.expect("get");
        assert_eq!(got.text().await.expect("body"), format!("v{i}"), "read from server {j}");
    }

    // No client certificate: verify_incoming refuses the handshake.
    let anonymous = https_client(&ca, None);
    let refused = anonymous.get(url(1, "/v1/kv/tls/key")).send().await;
    assert!(refused.is_err(), "a client without a certificate was served: {refused:?}");
    // Plain HTTP on the HTTPS port, and on the RPC port (verify_incoming: TLS only there too).
    let plain = registry::client::http_builder().timeout(Duration::from_secs(5)).build().expect("client");
    for u in [format!("http://127.0.0.1:{HTTPS}/v1/status/leader"), format!("http://127.0.0.1:{RPC}/raft/info")] {
        let r = plain.get(&u).send().await;
        assert!(r.as_ref().map_or(true, |r| !r.status().is_success()), "{u} answered in plain HTTP: {r:?}");
    }
    // A client whose certificate another CA signed is refused on the RPC port.
    let stranger = {
        let material = Material::load(TlsFiles {
            ca_file: ca.clone(),
            cert_file: Some(foreign.join("dc1-server-consul-0.pem")),
            key_file: Some(foreign.join("dc1-server-consul-0-key.pem")),
        })
        .expect("stranger's files");
        let config = material.client_config(Expect::Name("server.dc1.consul".into())).expect("config");
        registry::client::http_builder()
            .use_preconfigured_tls(config)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
    };
    let r = stranger.get(format!("https://127.0.0.1:{RPC}/raft/info")).send().await;
    assert!(r.is_err(), "a certificate of another CA was accepted on the RPC port: {r:?}");

    // A server of another CA (right name, wrong signer) tries to join: it never becomes a member.
    let intruder = {
        let join: Vec<String> = (1..=3).map(|j| format!("127.0.0.{j}:{RPC}")).collect();
        let child = Command::new(env!("CARGO_BIN_EXE_roster"))
            .args(["server", "--node-name", "intruder", "--http-enabled", "false"])
            .args(["--https-addr", &format!("127.0.0.4:{HTTPS}"), "--rpc-addr", &format!("127.0.0.4:{RPC}")])
            .args(["--dns-addr", "off", "--retry-join", &join.join(",")])
            .arg("--tls-ca-file")
            .arg(foreign.join("consul-agent-ca.pem"))
            .arg("--tls-cert-file")
            .arg(foreign.join("dc1-server-consul-0.pem"))
            .arg("--tls-key-file")
            .arg(foreign.join("dc1-server-consul-0-key.pem"))
            .args(["--tls-verify-incoming", "true", "--tls-verify-server-hostname", "true"])
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("s4.log")).expect("log"))
            .spawn()
            .expect("spawn intruder");
        Proc(child)
    };
    // Long enough for several join attempts (one a second).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let peers: Vec<String> =
        client.get(url(1, "/v1/status/peers")).send().await.expect("peers").json().await.expect("json");
    assert_eq!(peers.len(), 3, "the intruder got in: {peers:?}\n{}", logs(dir));
    let refusals = (1..=3)
        .filter(|i| {
            std::fs::read_to_string(dir.join(format!("s{i}.log"))).unwrap_or_default().contains("TLS handshake refused")
        })
        .count();
    assert!(refusals > 0, "no server logged why it refused\n{}", logs(dir));
    drop(intruder);

    // Rotation: server 1's files are replaced by a new certificate; new connections get it within
    // seconds, without a restart, and the cluster keeps working through server 1.
    let served = |resp: &reqwest::Response| {
        resp.extensions().get::<reqwest::tls::TlsInfo>().and_then(|t| t.peer_certificate().map(|c| c.to_vec()))
    };
    let first = client.get(url(1, "/v1/status/leader")).send().await.expect("leader");
    assert_eq!(served(&first), Some(der(&s1_cert).to_vec()), "server 1 serves its first certificate");
    let rotated = (cert(3), key(3));
    std::fs::copy(&rotated.1, &s1_key).expect("replace key");
    std::fs::copy(&rotated.0, &s1_cert).expect("replace cert");
    let new_der = der(&rotated.0).to_vec();
    wait_for("server 1 to serve the rotated certificate", dir, Duration::from_secs(10), || {
        // A new client each time: a pooled connection keeps the certificate it was opened with.
        let fresh = https_client(&ca, Some((&cli.0, &cli.1)));
        let (u, want) = (url(1, "/v1/status/leader"), new_der.clone());
        async move {
            match fresh.get(u).send().await {
                Ok(r) => served(&r) == Some(want),
                Err(_) => false,
            }
        }
    })
    .await;
    let put = client.put(url(1, "/v1/kv/tls/after-rotation")).body("yes").send().await.expect("put");
    assert_eq!(put.status(), 200);
    let fresh = https_client(&ca, Some((&cli.0, &cli.1)));
    let got = fresh.get(url(2, "/v1/kv/tls/after-rotation?raw&consistent")).send().await.expect("get");
    assert_eq!(got.text().await.expect("body"), "yes");
    drop(servers);
}
