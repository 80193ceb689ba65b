//! The sidecar in a real pool: 3 server processes and 5 sidecar processes on 127.0.0.x, each sidecar
//! with a small HTTP app (served by this test) to check. Covers registration seen through every
//! server, an app failing and recovering, a killed sidecar detected and reaped, a sidecar cut off
//! (SIGSTOP: it neither gossips nor answers) detected and healed, and all servers losing their
//! state, repaired by anti-entropy. Every process is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use warp::Filter;

const SERVERS: usize = 3;
const SIDECARS: usize = 5;
/// Server i: HTTP 127.0.0.i:19601, RPC :19602, gossip :19603. Sidecar i: 127.0.0.(10+i), agent API
/// :19611, gossip :19613.
const BASE: u16 = 19600;
const REAP_AFTER_SECS: u64 = 6;
const SYNC_INTERVAL_SECS: u64 = 2;

/// A child process killed (SIGKILL) on drop, its stderr in a log file.
struct Proc {
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(name: &str, dir: &Path, mut cmd: Command) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::options().create(true).append(true).open(&log).expect("log file");
        let child =
            cmd.env("RUST_LOG", "info,openraft=warn").stdout(Stdio::null()).stderr(file).spawn().expect("spawn");
        Proc { name: name.into(), log, child: Some(child) }
    }

    fn pid(&self) -> String {
        self.child.as_ref().map(|c| c.id().to_string()).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([sig, &self.pid()]).status().expect("kill");
        assert!(status.success(), "kill {sig} {}", self.name);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process must be continued to die cleanly.
        if self.child.is_some() {
            let _ = Command::new("kill").args(["-CONT", &self.pid()]).status();
        }
        self.kill();
    }
}

/// The pool's gossip key: every server and sidecar here seals its gossip with it. After a rotation
/// the test configures the new one, as an operator updates the Secret.
fn pool_key() -> String {
    pool_key_cell().lock().expect("key").clone()
}

fn pool_key_cell() -> &'static std::sync::Mutex<String> {
    static KEY: std::sync::OnceLock<std::sync::Mutex<String>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| std::sync::Mutex::new(registry::gossip::GossipKey::generate()))
}

fn roster_bin() -> PathBuf {
    let sidecar = PathBuf::from(env!("CARGO_BIN_EXE_roster-sidecar"));
    let roster = sidecar.with_file_name("roster");
    assert!(roster.exists(), "{} is missing: build it first (cargo build -p roster-registry)", roster.display());
    roster
}

fn server_http(i: usize) -> String {
    format!("127.0.0.{i}:{}", BASE + 1)
}

fn start_server(i: usize, dir: &Path) -> Proc {
    let data = dir.join(format!("server-{i}"));
    let join: Vec<String> = (1..=SERVERS).map(|j| format!("127.0.0.{j}:{}", BASE + 2)).collect();
    let seeds: Vec<String> = (1..=SERVERS).filter(|j| *j != i).map(|j| format!("127.0.0.{j}:{}", BASE + 3)).collect();
    let mut cmd = Command::new(roster_bin());
    cmd.args(["server", "--node-name", &format!("server-{i}")])
        .arg("--data-dir")
        .arg(&data)
        .args(["--http-addr", &server_http(i), "--rpc-addr", &format!("127.0.0.{i}:{}", BASE + 2)])
        .args(["--gossip-addr", &format!("127.0.0.{i}:{}", BASE + 3)])
        .args(["--gossip-seeds", &seeds.join(",")])
        .args(["--bootstrap-expect", &SERVERS.to_string(), "--retry-join", &join.join(",")])
        .args(["--reap-after-secs", &REAP_AFTER_SECS.to_string()])
        .env("ROSTER_GOSSIP_KEY", pool_key());
    Proc::spawn(&format!("server-{i}"), dir, cmd)
}

fn sidecar_api(i: usize) -> String {
    format!("127.0.0.{}:{}", 10 + i, BASE + 11)
}

fn start_sidecar(i: usize, dir: &Path, app_port: u16) -> Proc {
    start_sidecar_with_key(i, dir, app_port, &pool_key())
}

fn start_sidecar_with_key(i: usize, dir: &Path, app_port: u16, key: &str) -> Proc {
    let servers: Vec<String> = (1..=SERVERS).map(server_http).collect();
    let seeds: Vec<String> = (1..=SERVERS).map(|j| format!("127.0.0.{j}:{}", BASE + 3)).collect();
    let ip = format!("127.0.0.{}", 10 + i);
    let services = serde_json::json!([{
        "name": "app",
        "id": format!("app-{i}"),
        "port": app_port,
        "tags": ["v1"],
        "check": {"http": format!("http://127.0.0.1:{app_port}/health"), "interval": "1s", "timeout": "1s"},
    }]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roster-sidecar"));
    cmd.args(["--node-name", &format!("pod-{i}"), "--address", &ip])
        .args(["--node-meta", "k8s-namespace=test"])
        .args(["--http-addr", &sidecar_api(i)])
        .args(["--servers", &servers.join(",")])
        .args(["--gossip-addr", &format!("{ip}:{}", BASE + 13)])
        .args(["--gossip-seeds", &seeds.join(",")])
        .args(["--sync-interval-secs", &SYNC_INTERVAL_SECS.to_string()])
        .args(["--services", &services.to_string()])
        .env("ROSTER_GOSSIP_KEY", key);
    Proc::spawn(&format!("pod-{i}"), dir, cmd)
}

/// A tiny app whose /health answers 200 or 500 as the test says.
async fn app() -> (u16, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let route = warp::path("health").map(move || {
        let code = if h.load(Ordering::Relaxed) {
            warp::http::StatusCode::OK
        } else {
            warp::http::StatusCode::INTERNAL_SERVER_ERROR
        };
        warp::reply::with_status("app", code)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (port, healthy)
}

struct Pool {
    dir: tempfile::TempDir,
    servers: Vec<Proc>,
    sidecars: Vec<Proc>,
    http: reqwest::Client,
}

impl Pool {
    fn dump_logs(&self) {
        for p in self.servers.iter().chain(&self.sidecars) {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("----- {} -----", p.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }

    async fn get(&self, addr: &str, path: &str) -> Option<Value> {
        let r = self.http.get(format!("http://{addr}{path}")).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// Node names of passing `app` instances, as server `i` answers (stale: its own state).
    async fn passing(&self, i: usize) -> Option<Vec<String>> {
        let list = self.get(&server_http(i), "/v1/health/service/app?passing&stale").await?;
        let mut nodes: Vec<String> =
            list.as_array()?.iter().filter_map(|e| e["Node"]["Node"].as_str().map(str::to_string)).collect();
        nodes.sort();
        Some(nodes)
    }

    async fn serf_health(&self, node: &str) -> Option<String> {
        let checks = self.get(&server_http(1), &format!("/v1/health/node/{node}")).await?;
        checks
            .as_array()?
            .iter()
            .find(|c| c["CheckID"] == "serfHealth")
            .and_then(|c| c["Status"].as_str())
            .map(str::to_string)
    }

    async fn eventually<F: std::future::Future<Output = bool>>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> F,
    ) -> Duration {
        let start = Instant::now();
        while !f().await {
            if start.elapsed() > timeout {
                self.dump_logs();
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = start.elapsed();
        eprintln!("{what}: {took:.2?}");
        took
    }

    async fn wait_servers_ready(&self) {
        self.eventually("a leader known to every server", Duration::from_secs(30), || async {
            for i in 1..=SERVERS {
                match self.get(&server_http(i), "/v1/status/leader").await {
                    Some(Value::String(l)) if !l.is_empty() => {}
                    _ => return false,
                }
            }
            true
        })
        .await;
    }
}

fn names(ids: &[usize]) -> Vec<String> {
    ids.iter().map(|i| format!("pod-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_register_check_fail_over_and_repair() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pool = Pool {
        servers: (1..=SERVERS).map(|i| start_server(i, dir.path())).collect(),
        sidecars: Vec::new(),
        dir,
        http: registry::client::http_builder().timeout(Duration::from_secs(5)).build().expect("client"),
    };
    pool.wait_servers_ready().await;

    let mut apps = Vec::new();
    for _ in 1..=SIDECARS {
        apps.push(app().await);
    }
    for (i, (port, _)) in apps.iter().enumerate() {
        pool.sidecars.push(start_sidecar(i + 1, pool.dir.path(), *port));
    }

    // Registration: every instance passing, seen through every server.
    let all = names(&[1, 2, 3, 4, 5]);
    for s in 1..=SERVERS {
        pool.eventually(&format!("5 passing instances through server-{s}"), Duration::from_secs(20), || async {
            pool.passing(s).await.as_ref() == Some(&all)
        })
        .await;
    }
    let node = pool.get(&server_http(2), "/v1/catalog/node/pod-1").await.expect("pod-1 in the catalog");
    assert_eq!(node["Node"]["Address"], "127.0.0.11");
    assert_eq!(node["Node"]["Meta"]["k8s-namespace"], "test");
    assert_eq!(node["Services"]["app-1"]["Tags"][0], "v1");
    // The app's localhost view: its own service, and catalog reads forwarded to the servers.
    let local = pool.get(&sidecar_api(1), "/v1/agent/health/service/name/app").await.expect("agent health");
    assert_eq!(local[0]["AggregatedStatus"], "passing");
    let forwarded = pool.get(&sidecar_api(1), "/v1/catalog/service/app").await.expect("forwarded read");
    assert_eq!(forwarded.as_array().map(Vec::len), Some(5));
    let members = pool.get(&sidecar_api(1), "/v1/agent/members").await.expect("members");
    pool.eventually("every sidecar to see 8 live members", Duration::from_secs(10), || async {
        let m = pool.get(&sidecar_api(5), "/v1/agent/members").await;
        m.and_then(|m| m.as_array().map(|a| a.iter().filter(|x| x["Status"] == 1).count())) == Some(8)
    })
    .await;
    assert!(members.as_array().is_some_and(|a| a.iter().any(|m| m["Tags"]["role"] == "consul")));

    // Network coordinates: every member measures round trips over the (sealed) gossip port, and
    // the leader stores what they publish. Measured means moved off Serf's origin (on loopback the
    // error estimate may sit at its 1.5 cap: round trips are tiny and noisy).
    let measured = |c: &Value| c["Vec"].as_array().is_some_and(|v| v.iter().any(|x| x.as_f64() != Some(0.0)));
    pool.eventually("a measured coordinate for each of the 8 nodes", Duration::from_secs(30), || async {
        let nodes = pool.get(&server_http(1), "/v1/coordinate/nodes").await;
        nodes.and_then(|n| n.as_array().map(|a| a.iter().filter(|e| measured(&e["Coord"])).count())) == Some(8)
    })
    .await;
    let me = pool.get(&sidecar_api(1), "/v1/agent/self").await.expect("self");
    assert!(measured(&me["Coord"]), "pod-1's own coordinate moved: {}", me["Coord"]);
    // `?near=` orders by estimated round trip from the source's stored coordinate (on loopback all
    // round trips are alike, so the order is checked against the coordinates, not guessed).
    let sorted_from = |source: &'static str, via: String, path: &'static str, node_at: &'static str| {
        let pool = &pool;
        async move {
            let coords =
                |list: Option<Value>| -> Option<std::collections::BTreeMap<String, registry::api::Coordinate>> {
                    list?
                        .as_array()?
                        .iter()
                        .map(|e| {
                            Some((e["Node"].as_str()?.to_string(), serde_json::from_value(e["Coord"].clone()).ok()?))
                        })
                        .collect()
                };
            let before = coords(pool.get(&server_http(1), "/v1/coordinate/nodes?consistent").await);
            let answer = pool.get(&via, path).await;
            let after = coords(pool.get(&server_http(1), "/v1/coordinate/nodes?consistent").await);
            let (Some(c), Some(answer)) = (before.filter(|b| Some(b) == after.as_ref()), answer) else { return false };
            let Some(from) = c.get(source) else { return false };
            let distances: Vec<f64> = answer
                .as_array()
                .map(|a| {
                    a.iter().filter_map(|e| e.pointer(node_at)?.as_str()).map(|n| from.distance_to(&c[n])).collect()
                })
                .unwrap_or_default();
            distances.len() > 1 && distances.windows(2).all(|w| w[0] <= w[1])
        }
    };
    pool.eventually("catalog/nodes?near=pod-3 sorted by round trip", Duration::from_secs(15), || {
        sorted_from("pod-3", server_http(2), "/v1/catalog/nodes?near=pod-3", "/Node")
    })
    .await;
    pool.eventually("a sidecar's near=_agent sorted from its own node", Duration::from_secs(15), || {
        sorted_from("pod-4", sidecar_api(4), "/v1/health/service/app?near=_agent", "/Node/Node")
    })
    .await;

    // Gossip is sealed with the pool's key: a sidecar with another key joins nobody and nobody sees it.
    let mut intruder = start_sidecar_with_key(9, pool.dir.path(), apps[0].0, &registry::gossip::GossipKey::generate());
    let live = |m: Option<serde_json::Value>| {
        m.and_then(|m| m.as_array().map(|a| a.iter().filter(|x| x["Status"] == 1).count()))
    };
    pool.eventually("the intruder's agent API up", Duration::from_secs(10), || async {
        pool.get(&sidecar_api(9), "/v1/agent/self").await.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(live(pool.get(&sidecar_api(9), "/v1/agent/members").await), Some(1), "it sees only itself");
    for s in [1, 5] {
        let members = pool.get(&sidecar_api(s), "/v1/agent/members").await;
        assert_eq!(live(members.clone()), Some(8), "pod-{s} sees the same 8: {members:?}");
        assert!(!members.is_some_and(|m| m.to_string().contains("pod-9")), "pod-9 is not in pod-{s}'s pool");
    }
    // It did register over HTTP (that is the ACLs' business, not gossip's); a clean stop takes it out.
    intruder.signal("-TERM");
    pool.eventually("the intruder gone from the catalog", Duration::from_secs(10), || async {
        pool.get(&server_http(1), "/v1/catalog/node/pod-9").await.is_none_or(|n| n.is_null())
    })
    .await;
    intruder.kill();

    // User events travel through the pool: fired on a server, filtered by node, listed by sidecars;
    // fired on a sidecar, listed by the servers.
    let fire = |addr: String, query: &'static str| {
        let http = pool.http.clone();
        async move {
            let r = http.put(format!("http://{addr}/v1/event/fire/{query}")).body("v2").send().await.expect("fire");
            assert_eq!(r.status(), 200, "fire {query}");
            r.json::<Value>().await.expect("event")["ID"].as_str().map(str::to_string).unwrap_or_default()
        }
    };
    let has_event = |addr: String, id: String| {
        let pool = &pool;
        async move {
            let list = pool.get(&addr, "/v1/event/list?name=deploy").await;
            list.is_some_and(|l| l.as_array().is_some_and(|a| a.iter().any(|e| e["ID"] == id.as_str())))
        }
    };
    let targeted = fire(server_http(1), "deploy?node=^pod-2$").await;
    let everyone = fire(server_http(1), "deploy").await;
    for s in 1..=SIDECARS {
        pool.eventually(&format!("pod-{s} to list the event for everyone"), Duration::from_secs(10), || {
            has_event(sidecar_api(s), everyone.clone())
        })
        .await;
    }
    pool.eventually("pod-2 to list the event for it", Duration::from_secs(10), || {
        has_event(sidecar_api(2), targeted.clone())
    })
    .await;
    assert!(!has_event(sidecar_api(1), targeted.clone()).await, "pod-1 kept an event for pod-2 only");
    assert!(!has_event(server_http(1), targeted.clone()).await, "server-1 kept an event for pod-2 only");
    let from_pod = fire(sidecar_api(3), "deploy?service=^app$&tag=v1").await;
    pool.eventually("pod-4 (an app v1) to list pod-3's event", Duration::from_secs(10), || {
        has_event(sidecar_api(4), from_pod.clone())
    })
    .await;
    let big = pool.http.put(format!("http://{}/v1/event/fire/deploy", sidecar_api(1))).body(vec![b'x'; 600]);
    assert_eq!(big.send().await.expect("fire").status(), 413, "Consul's 512-byte event limit");

    // Key rotation through the keyring API: install a new key everywhere, use it, remove the old
    // one; the pool never stops hearing itself, and a restarted server keeps the rotated keys.
    let (old_key, new_key) = (pool_key(), registry::gossip::GossipKey::generate());
    let keyring = |method: reqwest::Method, key: &str| {
        let req = pool.http.request(method, format!("http://{}/v1/operator/keyring", server_http(1)));
        req.json(&serde_json::json!({ "Key": key })).send()
    };
    let count = |list: &Value, field: &str, key: &str| list[0][field][key].as_u64();
    assert_eq!(keyring(reqwest::Method::POST, &new_key).await.expect("install").status(), 200);
    let list = pool.get(&server_http(2), "/v1/operator/keyring").await.expect("list");
    assert_eq!((count(&list, "Keys", &new_key), count(&list, "Keys", &old_key)), (Some(8), Some(8)), "{list}");
    assert_eq!(list[0]["NumNodes"], 8);
    let removing_primary = keyring(reqwest::Method::DELETE, &old_key).await.expect("remove");
    assert_eq!(removing_primary.status(), 400, "the primary key cannot go");
    assert_eq!(keyring(reqwest::Method::PUT, &new_key).await.expect("use").status(), 200);
    assert_eq!(keyring(reqwest::Method::DELETE, &old_key).await.expect("remove").status(), 200);
    let list = pool.get(&server_http(3), "/v1/operator/keyring").await.expect("list");
    assert_eq!(list[0]["Keys"], serde_json::json!({ &new_key: 8 }), "{list}");
    assert_eq!(list[0]["PrimaryKeys"], serde_json::json!({ &new_key: 8 }), "{list}");
    let bad = keyring(reqwest::Method::POST, "not-a-key").await.expect("bad key");
    assert_eq!(bad.status(), 400);
    // Server 2 restarts configured with the old key: its saved keyring (data dir) has the new one.
    pool.servers[1].kill();
    pool.servers[1] = start_server(2, pool.dir.path());
    pool.eventually("restarted server-2 back in the pool", Duration::from_secs(20), || async {
        live(pool.get(&server_http(2), "/v1/agent/members").await) == Some(8)
    })
    .await;
    *pool_key_cell().lock().expect("key") = new_key.clone();

    // An app that starts failing goes critical, and comes back.
    apps[1].1.store(false, Ordering::Relaxed);
    pool.eventually("app-2 out of ?passing", Duration::from_secs(10), || async {
        pool.passing(1).await == Some(names(&[1, 3, 4, 5]))
    })
    .await;
    apps[1].1.store(true, Ordering::Relaxed);
    pool.eventually("app-2 passing again", Duration::from_secs(10), || async {
        pool.passing(1).await.as_ref() == Some(&all)
    })
    .await;

    // A killed sidecar: detected by gossip, out of ?passing, then reaped.
    pool.sidecars[2].kill();
    let detect = pool
        .eventually("killed pod-3 out of ?passing", Duration::from_secs(15), || async {
            pool.passing(2).await == Some(names(&[1, 2, 4, 5]))
        })
        .await;
    assert_eq!(pool.serf_health("pod-3").await.as_deref(), Some("critical"));
    assert!(detect < Duration::from_secs(8), "detection took {detect:?}");
    pool.eventually("pod-3 reaped from the catalog", Duration::from_secs(REAP_AFTER_SECS + 10), || async {
        pool.get(&server_http(1), "/v1/catalog/node/pod-3").await == Some(Value::Null)
    })
    .await;

    // Cut off (stopped: no gossip, no answers), detected, then healed.
    pool.sidecars[3].signal("-STOP");
    pool.eventually("stopped pod-4 critical", Duration::from_secs(15), || async {
        pool.serf_health("pod-4").await.as_deref() == Some("critical")
    })
    .await;
    pool.sidecars[3].signal("-CONT");
    pool.eventually("pod-4 healed", Duration::from_secs(15), || async {
        pool.serf_health("pod-4").await.as_deref() == Some("passing")
            && pool.passing(1).await == Some(names(&[1, 2, 4, 5]))
    })
    .await;

    // A clean stop deregisters at once.
    let mut pod5 = pool.sidecars.remove(4);
    pod5.signal("-TERM");
    pool.eventually("pod-5 gone after a clean stop", Duration::from_secs(5), || async {
        pool.get(&server_http(1), "/v1/catalog/node/pod-5").await == Some(Value::Null)
    })
    .await;
    pod5.kill();

    // Every server loses its state: anti-entropy registers the survivors again.
    for s in pool.servers.iter_mut() {
        s.kill();
    }
    for i in 1..=SERVERS {
        std::fs::remove_dir_all(pool.dir.path().join(format!("server-{i}"))).expect("wipe");
    }
    pool.servers = (1..=SERVERS).map(|i| start_server(i, pool.dir.path())).collect();
    pool.wait_servers_ready().await;
    pool.eventually("survivors re-registered by anti-entropy", Duration::from_secs(30), || async {
        pool.passing(3).await == Some(names(&[1, 2, 4]))
    })
    .await;
    // The new leader learns who is alive from gossip (its view starts empty) and says so in serfHealth.
    pool.eventually("new leader marks the survivors alive", Duration::from_secs(15), || async {
        for pod in ["pod-1", "pod-2", "pod-4"] {
            if pool.serf_health(pod).await.as_deref() != Some("passing") {
                return false;
            }
        }
        true
    })
    .await;
}
