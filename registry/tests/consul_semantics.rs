//! Consul semantics real clients depend on, against a real `roster dev` process: which index a read
//! reports (so a blocking query on one key sleeps while other keys change) and "ready means ready"
//! (a server that reports a leader accepts sessions at once). Each dev server is killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Dev {
    child: Child,
    base: String,
}

impl Dev {
    fn start(port: u16) -> Dev {
        Dev::start_logging(port, "warn")
    }

    fn start_logging(port: u16, level: &str) -> Dev {
        let child = Command::new(env!("CARGO_BIN_EXE_roster"))
            .args(["dev", "--http-addr", &format!("127.0.0.1:{port}")])
            .args(["--rpc-addr", &format!("127.0.0.1:{}", port + 1), "--gossip-addr", "off"])
            .env("RUST_LOG", level)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn roster dev");
        Dev { child, base: format!("http://127.0.0.1:{port}/v1") }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    registry::client::http_builder().timeout(Duration::from_secs(30)).build().expect("client")
}

/// Polls `status/leader` as py-consul's and most clients' readiness checks do; returns once a leader
/// is reported.
async fn until_leader(http: &reqwest::Client, dev: &Dev) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{}/status/leader", dev.base)).send().await {
            if r.json::<String>().await.is_ok_and(|l| !l.is_empty()) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no leader reported within 20 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Wave 1: for about 60 ms after start the dev server reported a leader while its node had no
/// `serfHealth` check, and a session created then failed with "Missing check 'serfHealth' registration".
#[tokio::test]
async fn a_server_that_reports_a_leader_accepts_sessions_at_once() {
    let http = client();
    for round in 0..5 {
        let dev = Dev::start(19620 + round * 2);
        until_leader(&http, &dev).await;
        let r = http.put(format!("{}/session/create", dev.base)).body("{}").send().await.expect("session/create");
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(status, 200, "round {round}: session right after the leader was reported: {body}");
    }
}

async fn put(http: &reqwest::Client, dev: &Dev, key: &str, value: &str) {
    let r = http.put(format!("{}/kv/{key}", dev.base)).body(value.to_string()).send().await.expect("put");
    assert_eq!(r.status(), 200, "PUT {key}");
}

/// GET with `index` and `wait`; returns the answer's `X-Consul-Index`.
async fn blocking_get(http: &reqwest::Client, dev: &Dev, path: &str, index: u64, wait: &str) -> u64 {
    let r = http
        .get(format!("{}/{path}{}index={index}&wait={wait}", dev.base, if path.contains('?') { "&" } else { "?" }))
        .send()
        .await
        .expect("blocking get");
    r.headers()["x-consul-index"].to_str().expect("header").parse().expect("index")
}

/// Wave 1: single-key reads reported the KV table's index, so a leader-election client passing its
/// key's ModifyIndex back woke at once on every call while other keys changed, and spun.
#[tokio::test]
async fn a_blocking_read_of_one_key_sleeps_while_other_keys_change() {
    let http = client();
    let dev = Dev::start(19640);
    until_leader(&http, &dev).await;
    put(&http, &dev, "service/leader", "a").await;
    let r = http.get(format!("{}/kv/service/leader", dev.base)).send().await.expect("get");
    let entries: serde_json::Value = r.json().await.expect("json");
    let modify = entries[0]["ModifyIndex"].as_u64().expect("ModifyIndex");

    // Other keys change throughout the wait.
    let churn = {
        let (http, base) = (http.clone(), dev.base.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                let _ = http.put(format!("{base}/kv/other/{}", i % 20)).body(i.to_string()).send().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let started = Instant::now();
    let index = blocking_get(&http, &dev, "kv/service/leader", modify, "1500ms").await;
    let waited = started.elapsed();
    churn.abort();
    assert_eq!(index, modify, "the key did not change, so neither does the index its read reports");
    assert!(waited >= Duration::from_millis(1400), "woke after {waited:?} although the key never changed");

    // A prefix listing sleeps too while only keys outside it change, and a deletion under it wakes it.
    let r = http.get(format!("{}/kv/service/?recurse", dev.base)).send().await.expect("list");
    let listed: u64 = r.headers()["x-consul-index"].to_str().expect("header").parse().expect("index");
    assert_eq!(listed, modify);
    put(&http, &dev, "other/x", "y").await;
    let deleter = {
        let (http, base) = (http.clone(), dev.base.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            http.delete(format!("{base}/kv/service/leader")).send().await.expect("delete");
        })
    };
    let started = Instant::now();
    let after_delete = blocking_get(&http, &dev, "kv/service/?recurse", listed, "10s").await;
    deleter.await.expect("deleter");
    assert!(after_delete > listed, "the deletion under the prefix moves its index");
    assert!(started.elapsed() < Duration::from_secs(5), "a deletion under the prefix wakes its watcher");

    // And the key's own change wakes the key's watcher at once.
    put(&http, &dev, "service/leader", "b").await;
    let writer = {
        let (http, base) = (http.clone(), dev.base.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            http.put(format!("{base}/kv/service/leader")).body("c").send().await.expect("put");
        })
    };
    let r = http.get(format!("{}/kv/service/leader", dev.base)).send().await.expect("get");
    let current: u64 = r.headers()["x-consul-index"].to_str().expect("header").parse().expect("index");
    let started = Instant::now();
    let woke = blocking_get(&http, &dev, "kv/service/leader", current, "10s").await;
    writer.await.expect("writer");
    assert!(woke > current);
    assert!(started.elapsed() < Duration::from_secs(5), "the key's own change wakes its watcher");
}

async fn call(http: &reqwest::Client, method: &str, url: String, body: &str) -> (u16, serde_json::Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let r = http.request(method, url).body(body.to_string()).send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// Maintenance mode takes a service (or the node) out of `?passing` answers through a critical
/// `maintenance` check, and back; the agent's `Stats` name the leader as `status/leader` does;
/// autopilot's configuration is replicated state with CAS; a write for another datacenter is refused.
#[tokio::test]
async fn maintenance_agent_stats_autopilot_and_foreign_datacenters() {
    let http = client();
    let dev = Dev::start(19660);
    until_leader(&http, &dev).await;
    let b = &dev.base;
    let (s, _) = call(&http, "PUT", format!("{b}/agent/service/register"), r#"{"Name":"web","Port":80}"#).await;
    assert_eq!(s, 200);
    let passing = |http: reqwest::Client, b: String| async move {
        call(&http, "GET", format!("{b}/health/service/web?passing"), "").await.1.as_array().map_or(0, Vec::len)
    };
    assert_eq!(passing(http.clone(), b.clone()).await, 1);

    let (s, body) = call(&http, "PUT", format!("{b}/agent/service/maintenance/web"), "").await;
    assert_eq!((s, body.as_str()), (400, Some("Missing value for enable")));
    let (s, _) = call(&http, "PUT", format!("{b}/agent/service/maintenance/nope?enable=true"), "").await;
    assert_eq!(s, 404);
    let (s, _) = call(&http, "PUT", format!("{b}/agent/service/maintenance/web?enable=true&reason=deploy"), "").await;
    assert_eq!(s, 200);
    let checks = call(&http, "GET", format!("{b}/agent/checks"), "").await.1;
    let maint = &checks["_service_maintenance:web"];
    assert_eq!((maint["Status"].as_str(), maint["Notes"].as_str()), (Some("critical"), Some("deploy")));
    assert_eq!(maint["Type"], "maintenance");
    assert_eq!(passing(http.clone(), b.clone()).await, 0, "a service in maintenance is not passing");
    call(&http, "PUT", format!("{b}/agent/service/maintenance/web?enable=false"), "").await;
    assert_eq!(passing(http.clone(), b.clone()).await, 1);
    call(&http, "PUT", format!("{b}/agent/maintenance?enable=true"), "").await;
    assert_eq!(passing(http.clone(), b.clone()).await, 0, "a node in maintenance serves nothing passing");
    call(&http, "PUT", format!("{b}/agent/maintenance?enable=false"), "").await;
    assert_eq!(passing(http.clone(), b.clone()).await, 1);

    let leader = call(&http, "GET", format!("{b}/status/leader"), "").await.1;
    let me = call(&http, "GET", format!("{b}/agent/self"), "").await.1;
    assert_eq!(me["Stats"]["consul"]["leader_addr"], leader);
    let peers = call(&http, "GET", format!("{b}/status/peers"), "").await.1;
    assert!(peers.as_array().is_some_and(|p| p.contains(&leader)));

    let config = call(&http, "GET", format!("{b}/operator/autopilot/configuration"), "").await.1;
    assert_eq!((config["CleanupDeadServers"].as_bool(), config["MaxTrailingLogs"].as_u64()), (Some(true), Some(250)));
    let url = format!("{b}/operator/autopilot/configuration");
    let stale = config["ModifyIndex"].as_u64().unwrap_or(0) + 1000;
    let (_, done) = call(&http, "PUT", format!("{url}?cas={stale}"), r#"{"CleanupDeadServers":false}"#).await;
    assert_eq!(done, false, "a stale cas changes nothing");
    assert_eq!(call(&http, "GET", url.clone(), "").await.1["CleanupDeadServers"], true);
    let (_, done) = call(&http, "PUT", url.clone(), r#"{"CleanupDeadServers":false}"#).await;
    assert_eq!(done, true);
    let now = call(&http, "GET", url.clone(), "").await.1;
    assert_eq!((now["CleanupDeadServers"].as_bool(), now["MaxTrailingLogs"].as_u64()), (Some(false), Some(0)));
    let (s, _) = call(&http, "PUT", url.clone(), r#"{"LastContactThreshold":"soon"}"#).await;
    assert_eq!(s, 400, "a bad duration is the client's mistake");

    let (s, body) = call(&http, "PUT", format!("{b}/catalog/deregister"), r#"{"Node":"n","Datacenter":"dc2"}"#).await;
    // A server in no WAN pool knows no other datacenter: the client's mistake, named.
    assert_eq!(s, 400);
    assert!(body.as_str().is_some_and(|b| b.starts_with("No path to datacenter \"dc2\"")), "{body}");
    let (s, _) = call(&http, "GET", format!("{b}/catalog/nodes?dc=dc2"), "").await;
    assert_eq!(s, 400);
}

/// A snapshot taken from one server restores everything onto a fresh one; a corrupt or truncated
/// archive is refused with a 400 and changes nothing.
#[tokio::test]
async fn a_snapshot_round_trips_onto_a_fresh_server_and_a_bad_one_changes_nothing() {
    let http = client();
    let (old, new) = (Dev::start(19680), Dev::start(19682));
    until_leader(&http, &old).await;
    until_leader(&http, &new).await;
    put(&http, &old, "config/a", "from-the-snapshot").await;
    let reg = r#"{"Node":"ext","Address":"10.0.0.9","Service":{"Service":"billing","Port":5432}}"#;
    assert_eq!(call(&http, "PUT", format!("{}/catalog/register", old.base), reg).await.0, 200);
    let r = http.get(format!("{}/snapshot", old.base)).send().await.expect("snapshot");
    assert_eq!(r.status(), 200);
    let archive = r.bytes().await.expect("archive").to_vec();
    assert_eq!(&archive[..2], &[0x1f, 0x8b]);

    put(&http, &new, "config/a", "before-restore").await;
    let truncated = archive[..archive.len() / 2].to_vec();
    let r = http.put(format!("{}/snapshot", new.base)).body(truncated).send().await.expect("restore");
    assert_eq!(r.status(), 400);
    let raw = http.get(format!("{}/kv/config/a?raw", new.base)).send().await.expect("get");
    assert_eq!(raw.text().await.expect("body"), "before-restore", "a refused archive changes nothing");

    let r = http.put(format!("{}/snapshot", new.base)).body(archive).send().await.expect("restore");
    assert_eq!(r.status(), 200);
    let raw = http.get(format!("{}/kv/config/a?raw", new.base)).send().await.expect("get");
    assert_eq!(raw.text().await.expect("body"), "from-the-snapshot");
    let billing = call(&http, "GET", format!("{}/catalog/service/billing", new.base), "").await.1;
    assert_eq!(billing[0]["ServicePort"], 5432);
    // The restored server still knows itself: sessions can be created on its node.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, _) = call(&http, "PUT", format!("{}/session/create", new.base), "{}").await;
        if s == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no session after the restore");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A tiny app whose `/health` answers 200 or 500 as the test says.
async fn app() -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let flag = healthy.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let ok = flag.load(std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let status = if ok { "200 OK" } else { "500 Internal Server Error" };
                let body = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi");
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    (port, healthy)
}

async fn check_status(http: &reqwest::Client, dev: &Dev, id: &str) -> Option<String> {
    let checks = call(http, "GET", format!("{}/agent/checks", dev.base), "").await.1;
    checks[id]["Status"].as_str().map(str::to_string)
}

async fn eventually_status(http: &reqwest::Client, dev: &Dev, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while check_status(http, dev, id).await.as_deref() != Some(want) {
        assert!(Instant::now() < deadline, "{id} never became {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applications register HTTP/TCP checks with whatever agent they talk to, often a server: the
/// server's agent runs them (the sidecar's runners), refuses script checks unless enabled, and a
/// service re-registered unchanged keeps its checks' status.
#[tokio::test]
async fn a_servers_agent_runs_http_and_tcp_checks() {
    let http = client();
    let dev = Dev::start(19700);
    until_leader(&http, &dev).await;
    let (port, healthy) = app().await;
    let reg = format!(
        r#"{{"Name":"web","Port":{port},"Checks":[{{"HTTP":"http://127.0.0.1:{port}/health","Interval":"1s"}},{{"TCP":"127.0.0.1:{port}","Interval":"1s"}}]}}"#
    );
    let url = format!("{}/agent/service/register", dev.base);
    assert_eq!(call(&http, "PUT", url.clone(), &reg).await.0, 200);
    eventually_status(&http, &dev, "service:web:1", "passing").await;
    eventually_status(&http, &dev, "service:web:2", "passing").await;
    let health = call(&http, "GET", format!("{}/health/checks/web", dev.base), "").await.1;
    assert!(health.as_array().is_some_and(|c| c.iter().any(|c| c["Type"] == "http")));

    // Re-registered unchanged: still passing at once, not back to critical.
    assert_eq!(call(&http, "PUT", url.clone(), &reg).await.0, 200);
    assert_eq!(check_status(&http, &dev, "service:web:1").await.as_deref(), Some("passing"));

    healthy.store(false, std::sync::atomic::Ordering::Relaxed);
    eventually_status(&http, &dev, "service:web:1", "critical").await;
    assert_eq!(check_status(&http, &dev, "service:web:2").await.as_deref(), Some("passing"), "TCP still answers");

    let script = r#"{"Name":"sh","Args":["true"],"Interval":"1s"}"#;
    let (s, body) = call(&http, "PUT", format!("{}/agent/check/register", dev.base), script).await;
    assert_eq!(s, 400);
    assert!(body.as_str().is_some_and(|b| b.contains("Scripts are disabled")), "{body}");
    assert_eq!(call(&http, "PUT", format!("{}/agent/service/deregister/web", dev.base), "").await.0, 200);
    assert_eq!(check_status(&http, &dev, "service:web:1").await, None);
}

/// Coordinates are stored through Raft and served as Consul serves them; bad updates are refused.
#[tokio::test]
async fn coordinates_are_stored_served_and_checked() {
    let http = client();
    let dev = Dev::start(19720);
    until_leader(&http, &dev).await;
    let b = &dev.base;
    let dcs = call(&http, "GET", format!("{b}/coordinate/datacenters"), "").await.1;
    let node = dcs[0]["Coordinates"][0]["Node"].as_str().expect("the server's node").to_string();
    assert_eq!(dcs[0]["AreaID"], "wan");
    assert_eq!(dcs[0]["Coordinates"][0]["Coord"]["Error"], 1.5, "Serf's starting coordinate");
    assert_eq!(call(&http, "GET", format!("{b}/coordinate/node/{node}"), "").await.0, 404);

    let coord = r#"{"Vec":[0.001,0,0,0,0,0,0,0],"Error":0.2,"Adjustment":0,"Height":0.0001}"#;
    let update = |n: &str, c: &str| format!(r#"{{"Node":"{n}","Segment":"","Coord":{c}}}"#);
    let url = format!("{b}/coordinate/update");
    assert_eq!(call(&http, "PUT", url.clone(), &update(&node, coord)).await.0, 200);
    let (s, entry) = call(&http, "GET", format!("{b}/coordinate/node/{node}"), "").await;
    assert_eq!((s, entry[0]["Coord"]["Vec"][0].as_f64()), (200, Some(0.001)));
    let nodes = call(&http, "GET", format!("{b}/coordinate/nodes"), "").await.1;
    assert_eq!(nodes.as_array().map(Vec::len), Some(1));
    let dcs = call(&http, "GET", format!("{b}/coordinate/datacenters"), "").await.1;
    assert_eq!(dcs[0]["Coordinates"][0]["Coord"]["Error"], 0.2, "the stored coordinate now");

    let (s, body) = call(&http, "PUT", url.clone(), &update("nobody", coord)).await;
    assert_eq!(s, 400, "{body}");
    let short = r#"{"Vec":[0,0],"Error":1.5,"Adjustment":0,"Height":0}"#;
    let (s, body) = call(&http, "PUT", url.clone(), &update(&node, short)).await;
    assert!(s == 400 && body.as_str().is_some_and(|b| b.contains("Invalid coordinate")), "{s} {body}");
}

/// `?near=` orders catalog and health answers by estimated round trip from a node's coordinate
/// (`_agent`: the answering agent's), nearest first; nodes without a coordinate go last, and a
/// source without one leaves the usual order.
#[tokio::test]
async fn near_orders_answers_by_round_trip() {
    let http = client();
    let dev = Dev::start(19722);
    until_leader(&http, &dev).await;
    let b = &dev.base;
    let me = call(&http, "GET", format!("{b}/agent/self"), "").await.1["Config"]["NodeName"]
        .as_str()
        .expect("node name")
        .to_string();
    // Nodes on a line: a at 0 ms, b at 10 ms, c at 30 ms, the agent's node at 25 ms; d has none.
    for (node, x) in [("a", Some(0.0)), ("b", Some(0.010)), ("c", Some(0.030)), ("d", None), (me.as_str(), Some(0.025))]
    {
        if node != me {
            let reg = format!(r#"{{"Node":"{node}","Address":"10.0.0.1","Service":{{"Service":"web","Port":80}}}}"#);
            assert_eq!(call(&http, "PUT", format!("{b}/catalog/register"), &reg).await.0, 200);
        }
        if let Some(x) = x {
            let c = format!(
                r#"{{"Node":"{node}","Coord":{{"Vec":[{x},0,0,0,0,0,0,0],"Error":0.2,"Adjustment":0,"Height":0.00001}}}}"#
            );
            assert_eq!(call(&http, "PUT", format!("{b}/coordinate/update"), &c).await.0, 200);
        }
    }
    let order = |path: String, field: &'static str| {
        let http = http.clone();
        async move {
            let list = call(&http, "GET", path, "").await.1;
            list.as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| e.pointer(field).and_then(|v| v.as_str()).unwrap_or_default().to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
    };
    assert_eq!(order(format!("{b}/catalog/service/web?near=b"), "/Node").await, ["b", "a", "c", "d"]);
    assert_eq!(order(format!("{b}/health/service/web?near=c"), "/Node/Node").await, ["c", "b", "a", "d"]);
    assert_eq!(order(format!("{b}/catalog/service/web?near=_agent"), "/Node").await, ["c", "b", "a", "d"]);
    let nodes = order(format!("{b}/catalog/nodes?near=_agent"), "/Node").await;
    assert_eq!(nodes[..3], [me.as_str(), "c", "b"], "{nodes:?}");
    assert_eq!(order(format!("{b}/catalog/service/web?near=d"), "/Node").await, ["a", "b", "c", "d"], "no source");
    assert_eq!(order(format!("{b}/catalog/service/web"), "/Node").await, ["a", "b", "c", "d"]);
}

/// Shapes from the reference recording: a service without tagged addresses has no
/// `TaggedAddresses` key; a rolled-back txn's body carries the query meta fields.
#[tokio::test]
async fn answers_have_consuls_shapes() {
    let http = client();
    let dev = Dev::start(19740);
    until_leader(&http, &dev).await;
    let b = &dev.base;
    let reg = r#"{"Node":"ext1","Address":"10.1.2.3","Service":{"ID":"db-1","Service":"db","Port":5432}}"#;
    assert_eq!(call(&http, "PUT", format!("{b}/catalog/register"), reg).await.0, 200);
    let node = call(&http, "GET", format!("{b}/catalog/node/ext1"), "").await.1;
    assert!(node["Services"]["db-1"].get("TaggedAddresses").is_none(), "{node}");
    let listing = call(&http, "GET", format!("{b}/catalog/service/db"), "").await.1;
    assert!(listing[0].get("ServiceTaggedAddresses").is_none(), "{listing}");

    let failing = r#"[{"KV":{"Verb":"check-index","Key":"ref/t1","Index":1}}]"#;
    let (s, body) = call(&http, "PUT", format!("{b}/txn"), failing).await;
    assert_eq!(s, 409);
    assert_eq!(body["Results"], serde_json::Value::Null);
    assert_eq!(body["Errors"][0]["OpIndex"], 0);
    assert_eq!((body["KnownLeader"].as_bool(), body["Index"].as_u64()), (Some(true), Some(0)));
}

/// `/v1/operator/usage` counts as Consul does: the `consul` service is an instance but not billable,
/// nor is a proxy, which is counted under its kind.
#[tokio::test]
async fn operator_usage_counts_services_instances_and_nodes() {
    let http = client();
    let dev = Dev::start(19692);
    until_leader(&http, &dev).await;
    let register = |body: serde_json::Value| {
        let (http, url) = (http.clone(), format!("{}/catalog/register", dev.base));
        async move { assert!(http.put(url).json(&body).send().await.expect("register").status().is_success()) }
    };
    register(serde_json::json!({"Node": "n1", "Address": "10.0.0.1", "Service": {"ID": "web-1", "Service": "web"}}))
        .await;
    register(serde_json::json!({"Node": "n1", "Address": "10.0.0.1", "Service": {"ID": "web-2", "Service": "web"}}))
        .await;
    register(serde_json::json!({"Node": "n1", "Address": "10.0.0.1", "Service": {"ID": "web-proxy",
        "Service": "web-sidecar-proxy", "Kind": "connect-proxy", "Proxy": {"DestinationServiceName": "web"}}}))
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let r = http.get(format!("{}/operator/usage", dev.base)).send().await.expect("usage");
        assert!(r.headers().contains_key("x-consul-index"));
        let v: serde_json::Value = r.json().await.expect("json");
        // The dev server's own node and `consul` service appear once the leader registered them.
        if v["Usage"]["dc1"]["Nodes"] == 2 {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let dc = &usage["Usage"]["dc1"];
    assert_eq!(dc["Services"], 3, "{usage}");
    assert_eq!(dc["ServiceInstances"], 4, "{usage}");
    assert_eq!(dc["ConnectServiceInstances"]["connect-proxy"], 1, "{usage}");
    assert_eq!(dc["BillableServiceInstances"], 2, "{usage}");
    assert_eq!(usage["KnownLeader"], true);
}

/// `/v1/agent/monitor` streams the agent's log lines as they are written, at the asked level and
/// above; an unknown level is a 400 naming it.
#[tokio::test]
async fn monitor_streams_log_lines() {
    let http = client();
    let dev = Dev::start_logging(19724, "info");
    until_leader(&http, &dev).await;
    let b = &dev.base;
    let (status, body) = call(&http, "GET", format!("{b}/agent/monitor?loglevel=loud"), "").await;
    assert_eq!((status, body.as_str()), (400, Some("Bad request: Unknown log level: loud")), "Consul's text");
    let mut info = http.get(format!("{b}/agent/monitor?loglevel=info")).send().await.expect("monitor");
    assert_eq!(info.status(), 200);
    let mut json = http.get(format!("{b}/agent/monitor?loglevel=info&logjson")).send().await.expect("monitor");
    let check = r#"{"Name":"beat","TTL":"30s"}"#;
    assert_eq!(call(&http, "PUT", format!("{b}/agent/check/register"), check).await.0, 200);
    assert_eq!(call(&http, "PUT", format!("{b}/agent/check/pass/beat"), "").await.0, 200);
    // Consul's agent logs each change it syncs to the catalog.
    let text = read_until(&mut info, "Synced check").await.expect("a line within 10 s");
    assert!(text.contains("[INFO]") && text.contains("check=beat"), "{text}");
    let lines = read_until(&mut json, "Synced check").await.expect("a line within 10 s");
    let line = lines.lines().find(|l| l.contains("Synced check")).expect("the line");
    let parsed: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
    assert_eq!(parsed["@level"], "info");
}

/// Reads a streamed answer until `want` appears (10 s at most).
async fn read_until(resp: &mut reqwest::Response, want: &'static str) -> Result<String, tokio::time::error::Elapsed> {
    let fut = async move {
        let mut seen = String::new();
        while let Some(chunk) = resp.chunk().await.expect("chunk") {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains(want) {
                return seen;
            }
        }
        panic!("the stream ended without {want:?}: {seen}");
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await
}

/// `/v1/agent/service/:id` blocks on its content hash (`X-Consul-ContentHash`), as Consul's agent
/// does for sidecar proxies watching their registration: it answers when the definition changes,
/// or when the wait runs out with the same hash.
#[tokio::test]
async fn agent_service_reads_block_on_their_content_hash() {
    let http = client();
    let dev = Dev::start(19726);
    until_leader(&http, &dev).await;
    let b = dev.base.clone();
    let register = |tag: &str| format!(r#"{{"Name":"web","Port":80,"Tags":["{tag}"]}}"#);
    assert_eq!(call(&http, "PUT", format!("{b}/agent/service/register"), &register("v1")).await.0, 200);
    let read = |query: String| {
        let (http, b) = (http.clone(), b.clone());
        async move {
            let r = http.get(format!("{b}/agent/service/web{query}")).send().await.expect("read");
            let hash = r.headers().get("x-consul-contenthash").and_then(|v| v.to_str().ok()).map(str::to_string);
            (r.status().as_u16(), hash.unwrap_or_default(), r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let (status, hash, _) = read(String::new()).await;
    assert_eq!((status, hash.len()), (200, 16));
    let started = Instant::now();
    let blocked = tokio::spawn(read(format!("?hash={hash}&wait=10s")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!blocked.is_finished(), "an unchanged service keeps the read waiting");
    assert_eq!(call(&http, "PUT", format!("{b}/agent/service/register"), &register("v2")).await.0, 200);
    let (_, new_hash, svc) = blocked.await.expect("join");
    assert!(started.elapsed() < Duration::from_secs(5), "woken by the change");
    assert_ne!(new_hash, hash);
    assert_eq!(svc["Tags"][0], "v2");
    let started = Instant::now();
    let (_, same, _) = read(format!("?hash={new_hash}&wait=300ms")).await;
    assert_eq!(same, new_hash);
    assert!(started.elapsed() >= Duration::from_millis(250), "waited out the wait");
    assert_eq!(read("?hash=x&wait=soon".into()).await.0, 400);
}
