//! Distributed behaviour with real server processes on 127.0.0.x: bootstrap, writes through every
//! server, leader failover under write load, restart and catch-up (through a snapshot when far behind),
//! removing and adding servers. Every test stops what it starts (processes are killed on drop).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

struct Server {
    name: String,
    http: String,
    rpc: String,
    dir: PathBuf,
    /// Extra flags (ACL settings).
    extra: Vec<String>,
    child: Option<Child>,
}

impl Server {
    fn start(&mut self, join: &[String], expect: usize, snapshot_threshold: u64) {
        let log = std::fs::File::create(self.dir.with_extension("log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_roster"))
            .args(["server", "--node-name", &self.name])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--http-addr", &self.http, "--rpc-addr", &self.rpc])
            .args(["--bootstrap-expect", &expect.to_string()])
            .args(["--retry-join", &join.join(",")])
            .args(["--snapshot-threshold", &snapshot_threshold.to_string()])
            .args(&self.extra)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn roster");
        self.child = Some(child);
    }

    /// SIGKILL: no graceful anything.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    _tmp: TempDir,
    servers: Vec<Server>,
    http: reqwest::Client,
    join: Vec<String>,
}

impl Cluster {
    /// `n` servers on 127.0.0.1..n, HTTP on `port`, RPC on `port + 1`.
    fn new(n: usize, port: u16, snapshot_threshold: u64) -> Cluster {
        Self::with_flags(n, port, snapshot_threshold, &[])
    }

    fn with_flags(n: usize, port: u16, snapshot_threshold: u64, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().expect("temp dir");
        let servers: Vec<Server> = (1..=n)
            .map(|i| Server {
                name: format!("server-{i}"),
                http: format!("127.0.0.{i}:{port}"),
                rpc: format!("127.0.0.{i}:{}", port + 1),
                dir: tmp.path().join(format!("s{i}")),
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
            })
            .collect();
        let join: Vec<String> = servers.iter().map(|s| s.rpc.clone()).collect();
        let mut c = Cluster {
            _tmp: tmp,
            servers,
            http: registry::client::http_builder().timeout(Duration::from_secs(10)).build().expect("client"),
            join,
        };
        for s in c.servers.iter_mut() {
            s.start(&c.join, n, snapshot_threshold);
        }
        c
    }

    fn dump_logs(&self) {
        for s in &self.servers {
            eprintln!("----- {} -----\n{}", s.name, s.log());
        }
    }

    async fn leader_of(&self, i: usize) -> Option<String> {
        let r = self.http.get(format!("http://{}/v1/status/leader", self.servers[i].http)).send().await.ok()?;
        let leader: String = r.json().await.ok()?;
        (!leader.is_empty()).then_some(leader)
    }

    /// Waits until all running servers agree on one leader; returns its index in `servers`.
    async fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::new();
            for (i, s) in self.servers.iter().enumerate() {
                if s.child.is_some() {
                    seen.push(self.leader_of(i).await);
                }
            }
            if let Some(Some(first)) = seen.first() {
                if seen.iter().all(|l| l.as_ref() == Some(first)) {
                    if let Some(i) = self.servers.iter().position(|s| &s.rpc == first && s.child.is_some()) {
                        return i;
                    }
                }
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("no agreed leader within {timeout:?}: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn put(&self, i: usize, key: &str, value: &str) -> Result<bool, String> {
        let r = self
            .http
            .put(format!("http://{}/v1/kv/{key}", self.servers[i].http))
            .body(value.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("{}: {}", r.status(), r.text().await.unwrap_or_default()));
        }
        Ok(r.text().await.map_err(|e| e.to_string())? == "true")
    }

    /// Reads a key's raw value through server `i` (`stale` reads answer from that server's own state).
    async fn get(&self, i: usize, key: &str, stale: bool) -> Option<String> {
        let q = if stale { "?raw&stale" } else { "?raw" };
        let r = self.http.get(format!("http://{}/v1/kv/{key}{q}", self.servers[i].http)).send().await.ok()?;
        if r.status() != reqwest::StatusCode::OK {
            return None;
        }
        r.text().await.ok()
    }

    async fn eventually_stale(&self, i: usize, key: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.get(i, key, true).await.as_deref() != Some(want) {
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("{} never saw {key}={want}", self.servers[i].name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn raft_servers(&self, i: usize) -> Vec<serde_json::Value> {
        let r = self
            .http
            .get(format!("http://{}/v1/operator/raft/configuration", self.servers[i].http))
            .send()
            .await
            .expect("configuration");
        let v: serde_json::Value = r.json().await.expect("json");
        v["Servers"].as_array().cloned().unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_every_server_survive_leader_failover_and_restart() {
    let mut c = Cluster::new(3, 19100, 10_000);
    let leader = c.wait_leader(Duration::from_secs(20)).await;

    // Any server accepts writes (followers forward them) and every server can read them.
    for i in 0..3 {
        assert_eq!(c.put(i, &format!("via/{i}"), &format!("v{i}")).await, Ok(true));
    }
    for i in 0..3 {
        for j in 0..3 {
            // Default reads go to the leader: read-your-writes from any server.
            assert_eq!(c.get(i, &format!("via/{j}"), false).await.as_deref(), Some(format!("v{j}").as_str()));
        }
    }

    // Write load through a follower while the leader is killed.
    let follower = (leader + 1) % 3;
    let writer = {
        let http = c.http.clone();
        let addr = c.servers[follower].http.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let started = Instant::now();
            let mut n = 0u32;
            while started.elapsed() < Duration::from_secs(8) {
                n += 1;
                let key = format!("load/{n:05}");
                let ok = http
                    .put(format!("http://{addr}/v1/kv/{key}"))
                    .body(format!("value-{n}"))
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success());
                if let Some(r) = ok {
                    if r.text().await.ok().as_deref() == Some("true") {
                        acked.push((key, format!("value-{n}"), started.elapsed()));
                    }
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    c.servers[leader].kill();
    let new_leader = c.wait_leader(Duration::from_secs(15)).await;
    let failover = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    let acked = writer.await.expect("writer");
    eprintln!("failover: new leader agreed after {failover:?}; {} writes acknowledged", acked.len());
    assert!(failover < Duration::from_secs(10), "failover took {failover:?}");
    assert!(acked.len() > 20, "too few writes acknowledged: {}", acked.len());
    // Writes resumed after the kill.
    let last_ack = acked.last().map(|a| a.2).unwrap_or_default();
    assert!(last_ack > Duration::from_secs(4), "no write acknowledged after the failover");

    // Every acknowledged write is readable from the new leader.
    for (key, value, _) in &acked {
        assert_eq!(c.get(new_leader, key, false).await.as_deref(), Some(value.as_str()), "lost acknowledged {key}");
    }

    // The killed server restarts from its data dir and catches up.
    let join = c.join.clone();
    c.servers[leader].start(&join, 3, 10_000);
    assert_eq!(c.put(new_leader, "after/restart", "yes").await, Ok(true));
    c.eventually_stale(leader, "after/restart", "yes", Duration::from_secs(20)).await;
    let (last_key, last_value, _) = acked.last().expect("acked");
    assert_eq!(c.get(leader, last_key, true).await.as_deref(), Some(last_value.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_far_behind_catches_up_through_a_snapshot() {
    // Snapshot every 50 entries: a server down for 300 writes can only come back through a snapshot.
    let mut c = Cluster::new(3, 19200, 50);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let lagger = (leader + 1) % 3;
    c.servers[lagger].kill();
    for n in 0..300 {
        assert_eq!(c.put(leader, &format!("bulk/{n:04}"), &format!("{n}")).await, Ok(true));
    }
    let join = c.join.clone();
    c.servers[lagger].start(&join, 3, 50);
    c.eventually_stale(lagger, "bulk/0299", "299", Duration::from_secs(30)).await;
    assert_eq!(c.get(lagger, "bulk/0000", true).await.as_deref(), Some("0"));
    // Its state is complete, not just the tail.
    let r = c.http.get(format!("http://{}/v1/kv/bulk/?keys&stale", c.servers[lagger].http)).send().await.expect("keys");
    let keys: Vec<String> = r.json().await.expect("json");
    assert_eq!(keys.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_and_adding_servers_keeps_the_cluster_writable() {
    let mut c = Cluster::new(3, 19300, 10_000);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    assert_eq!(c.put(leader, "k", "1").await, Ok(true));

    // Remove a follower from the Raft configuration, then stop it.
    let gone = (leader + 1) % 3;
    let gone_addr = c.servers[gone].rpc.clone();
    let r = c
        .http
        .delete(format!("http://{}/v1/operator/raft/peer?address={gone_addr}", c.servers[leader].http))
        .send()
        .await
        .expect("remove peer");
    assert!(r.status().is_success(), "remove: {}", r.text().await.unwrap_or_default());
    c.servers[gone].kill();
    let servers = c.raft_servers(leader).await;
    assert_eq!(servers.len(), 2, "{servers:?}");
    assert_eq!(c.put(leader, "k", "2").await, Ok(true));

    // A new server joins the running cluster: learner first, then voter.
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut newcomer = Server {
        name: "server-4".into(),
        http: "127.0.0.4:19300".into(),
        rpc: "127.0.0.4:19301".into(),
        dir: tmp.path().join("s4"),
        extra: Vec::new(),
        child: None,
    };
    newcomer.start(&c.join, 3, 10_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let servers = c.raft_servers(leader).await;
        let joined = servers.iter().any(|s| s["Node"] == "server-4" && s["Voter"] == true);
        if joined && servers.len() == 3 {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("{}", newcomer.log());
            panic!("server-4 did not become a voter: {servers:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.put(leader, "k", "3").await, Ok(true));
    // The newcomer has the data, including what was written before it joined.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.http.get(format!("http://{}/v1/kv/k?raw&stale", newcomer.http)).send().await;
        if let Ok(r) = r {
            if r.text().await.ok().as_deref() == Some("3") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "newcomer never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Leadership moves to the newcomer on request, and the cluster stays writable.
    let r = c
        .http
        .post(format!("http://{}/v1/operator/raft/transfer-leader?id=server-4", c.servers[leader].http))
        .send()
        .await
        .expect("transfer");
    assert!(r.status().is_success(), "transfer: {}", r.text().await.unwrap_or_default());
    let servers = c.raft_servers(leader).await;
    let new_leader = servers.iter().find(|s| s["Leader"] == true).map(|s| s["Node"].clone());
    assert_eq!(new_leader, Some(serde_json::json!("server-4")), "{servers:?}");
    assert_eq!(c.put(leader, "k", "4").await, Ok(true));
}

async fn serf_health(c: &Cluster, via: usize, node: &str) -> Option<String> {
    let r = c.http.get(format!("http://{}/v1/health/node/{node}", c.servers[via].http)).send().await.ok()?;
    let checks: Vec<serde_json::Value> = r.json().await.ok()?;
    checks.iter().find(|ch| ch["CheckID"] == "serfHealth").and_then(|ch| ch["Status"].as_str().map(str::to_string))
}

async fn eventually_health(c: &Cluster, via: usize, node: &str, want: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    while serf_health(c, via, node).await.as_deref() != Some(want) {
        if started.elapsed() > timeout {
            c.dump_logs();
            panic!("{node} serfHealth never became {want}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

/// `/v1/operator/autopilot/health` through server `via` (a follower forwards it to the leader).
async fn autopilot(c: &Cluster, via: usize) -> (u16, serde_json::Value) {
    let r = c.http.get(format!("http://{}/v1/operator/autopilot/health", c.servers[via].http)).send().await;
    let Ok(r) = r else { return (0, serde_json::Value::Null) };
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// Waits until autopilot reports `healthy` with `tolerance`; returns the last report.
async fn eventually_autopilot(c: &Cluster, via: usize, healthy: bool, tolerance: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = autopilot(c, via).await;
        let want_status = if healthy { 200 } else { 429 };
        if status == want_status && body["Healthy"] == healthy && body["FailureTolerance"] == tolerance {
            return body;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("autopilot never reported healthy={healthy} tolerance={tolerance}: {status} {body}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn readyz(c: &Cluster, i: usize) -> u16 {
    let r = c.http.get(format!("http://{}/readyz", c.servers[i].http)).send().await;
    r.map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_servers_go_critical_and_a_stopping_leader_hands_off() {
    let mut c = Cluster::new(3, 19400, 10_000);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    for s in &c.servers {
        eventually_health(&c, leader, &s.name, "passing", Duration::from_secs(10)).await;
    }
    // Autopilot, asked through a follower: three healthy voters, one failure tolerated.
    let follower = (leader + 2) % 3;
    let report = eventually_autopilot(&c, follower, true, 1).await;
    let servers = report["Servers"].as_array().cloned().unwrap_or_default();
    assert_eq!(servers.len(), 3, "{report}");
    assert!(servers.iter().all(|s| s["Voter"] == true && s["SerfStatus"] == "alive"), "{report}");
    let leaders: Vec<_> = servers.iter().filter(|s| s["Leader"] == true).collect();
    assert_eq!(leaders.len(), 1);
    assert_eq!(leaders[0]["Name"], c.servers[leader].name.as_str());
    let top = servers.iter().filter_map(|s| s["LastIndex"].as_u64()).max().unwrap_or(0);
    assert!(top > 0 && servers.iter().all(|s| s["LastIndex"].as_u64() >= Some(top.saturating_sub(250))), "{report}");
    for i in 0..3 {
        assert_eq!(readyz(&c, i).await, 200, "server {i} should be ready");
    }

    // A killed follower is detected by the leader's probes; its sessions would be invalidated.
    let victim = (leader + 1) % 3;
    let name = c.servers[victim].name.clone();
    c.servers[victim].kill();
    let took = eventually_health(&c, leader, &name, "critical", Duration::from_secs(15)).await;
    eprintln!("dead server marked critical after {took:?}");
    // Autopilot sees it too: unhealthy (429), no failure left to tolerate.
    let report = eventually_autopilot(&c, leader, false, 0).await;
    let dead = report["Servers"].as_array().and_then(|s| s.iter().find(|s| s["Name"] == name.as_str()).cloned());
    assert_eq!(dead.as_ref().map(|d| d["SerfStatus"].clone()), Some(serde_json::json!("failed")), "{report}");
    assert_eq!(readyz(&c, leader).await, 200, "the leader stays ready");
    let join = c.join.clone();
    c.servers[victim].start(&join, 3, 10_000);
    eventually_health(&c, leader, &name, "passing", Duration::from_secs(15)).await;
    eventually_autopilot(&c, leader, true, 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(&c, victim).await != 200 {
        assert!(Instant::now() < deadline, "restarted server never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM on the leader: it hands leadership off and exits cleanly.
    let pid = c.servers[leader].child.as_ref().map(|ch| ch.id()).expect("pid");
    let stopped_at = Instant::now();
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
    let mut stopping = c.servers[leader].child.take().expect("child");
    let new_leader = c.wait_leader(Duration::from_secs(15)).await;
    eprintln!("graceful stop: new leader agreed {:?} after SIGTERM", stopped_at.elapsed());
    assert_ne!(new_leader, leader);
    let exit = tokio::task::spawn_blocking(move || stopping.wait()).await.expect("join").expect("wait");
    assert!(exit.success(), "graceful stop exited with {exit:?}");
    assert_eq!(c.put(new_leader, "after/handoff", "ok").await, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acl_changes_replicate_survive_restarts_and_apply_at_once() {
    const ROOT: &str = "root-secret-for-the-cluster-test";
    let flags = ["--acl-enabled", "true", "--acl-default-policy", "deny", "--acl-initial-management", ROOT];
    let mut c = Cluster::with_flags(3, 19500, 10_000, &flags);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let (http, addrs): (reqwest::Client, Vec<String>) =
        (c.http.clone(), c.servers.iter().map(|s| s.http.clone()).collect());
    let call = |i: usize, method: reqwest::Method, path: String, token: String, body: Option<serde_json::Value>| {
        let mut r = http.request(method, format!("http://{}{path}", addrs[i])).header("X-Consul-Token", token);
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        async move { r.send().await.expect("request") }
    };
    // The initial management token appears once the leader has written it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while call(leader, reqwest::Method::GET, "/v1/acl/token/self".into(), ROOT.into(), None).await.status() != 200 {
        assert!(Instant::now() < deadline, "initial management token never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Policy and token created through one follower...
    let f1 = (leader + 1) % 3;
    let f2 = (leader + 2) % 3;
    let r = call(
        f1,
        reqwest::Method::PUT,
        "/v1/acl/policy".into(),
        ROOT.into(),
        Some(serde_json::json!({"Name": "cfg", "Rules": "key_prefix \"cfg/\" { policy = \"write\" }"})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = call(
        f1,
        reqwest::Method::PUT,
        "/v1/acl/token".into(),
        ROOT.into(),
        Some(serde_json::json!({"Policies": [{"Name": "cfg"}]})),
    )
    .await;
    let token: serde_json::Value = r.json().await.expect("token");
    let secret = token["SecretID"].as_str().expect("secret").to_string();
    let accessor = token["AccessorID"].as_str().expect("accessor").to_string();
    // ...work at once through the other follower, and deny what the policy does not grant.
    let r = call(f2, reqwest::Method::PUT, "/v1/kv/cfg/a".into(), secret.clone(), Some(serde_json::json!("1"))).await;
    assert_eq!(r.status(), 200);
    let r = call(f2, reqwest::Method::PUT, "/v1/kv/other".into(), secret.clone(), Some(serde_json::json!("1"))).await;
    assert_eq!(r.status(), 403);

    // Every server restarts: tokens and policies come back from disk.
    for s in c.servers.iter_mut() {
        s.kill();
    }
    let join = c.join.clone();
    for s in c.servers.iter_mut() {
        s.start(&join, 3, 10_000);
    }
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let r = call(
        (leader + 1) % 3,
        reqwest::Method::PUT,
        "/v1/kv/cfg/b".into(),
        secret.clone(),
        Some(serde_json::json!("2")),
    )
    .await;
    assert_eq!(r.status(), 200, "token lost in the restart");

    // Deleting the token denies its very next request, on any server.
    let r = call(leader, reqwest::Method::DELETE, format!("/v1/acl/token/{accessor}"), ROOT.into(), None).await;
    assert_eq!(r.status(), 200);
    for i in 0..3 {
        let r =
            call(i, reqwest::Method::PUT, "/v1/kv/cfg/c".into(), secret.clone(), Some(serde_json::json!("3"))).await;
        assert_eq!(r.status(), 403, "server {i} still accepted a deleted token");
    }
}

/// Autopilot with gossip: a joining server is a learner until it has been healthy for
/// ServerStabilizationTime; a server dead for three stabilization periods is removed
/// (CleanupDeadServers) and added back when it returns; one removed on purpose while it runs stays
/// out until it has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn autopilot_cleans_up_dead_servers_and_adds_returning_ones_back() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let port = 19460;
    let gossip = |i: usize| format!("127.0.0.{i}:{}", port + 2);
    let mut servers: Vec<Server> = (1..=3)
        .map(|i| Server {
            name: format!("server-{i}"),
            http: format!("127.0.0.{i}:{port}"),
            rpc: format!("127.0.0.{i}:{}", port + 1),
            dir: tmp.path().join(format!("s{i}")),
            extra: vec![
                "--gossip-addr".into(),
                gossip(i),
                "--gossip-seeds".into(),
                (1..=3).filter(|j| *j != i).map(gossip).collect::<Vec<_>>().join(","),
            ],
            child: None,
        })
        .collect();
    let join: Vec<String> = servers.iter().map(|s| s.rpc.clone()).collect();
    for s in servers.iter_mut() {
        s.start(&join, 3, 10_000);
    }
    let c = Cluster {
        _tmp: tmp,
        servers,
        http: registry::client::http_builder().timeout(Duration::from_secs(10)).build().expect("client"),
        join,
    };
    let mut c = c;
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let config = r#"{"CleanupDeadServers": true, "LastContactThreshold": "200ms", "MaxTrailingLogs": 250,
        "ServerStabilizationTime": "1s"}"#;
    let r = c
        .http
        .put(format!("http://{}/v1/operator/autopilot/configuration", c.servers[leader].http))
        .body(config)
        .send()
        .await
        .expect("autopilot config");
    assert!(r.status().is_success());
    let victim = (leader + 1) % 3;
    let victim_name = c.servers[victim].name.clone();
    // Dead for more than 5 s (three stabilization periods, at least 5 s): removed.
    c.servers[victim].kill();
    let v = victim_name.clone();
    eventually_members(&c, leader, "the dead server removed", Duration::from_secs(20), move |m| {
        m.len() == 2 && !m.iter().any(|(n, _)| *n == v)
    })
    .await;
    assert_eq!(c.put(leader, "k", "1").await, Ok(true));

    // It comes back with its data: added as a learner, a voter once stable.
    c.servers[victim].start(&c.join.clone(), 3, 10_000);
    let v = victim_name.clone();
    eventually_members(&c, leader, "the returning server a voter again", Duration::from_secs(30), move |m| {
        m.len() == 3 && m.iter().all(|(_, voter)| *voter) && m.iter().any(|(n, _)| *n == v)
    })
    .await;

    // Removed on purpose while it runs: it stays out while it runs.
    let r = c
        .http
        .delete(format!("http://{}/v1/operator/raft/peer?id={victim_name}", c.servers[leader].http))
        .send()
        .await
        .expect("remove");
    assert!(r.status().is_success(), "{:?}", r.text().await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = members(&c, leader).await;
    assert!(now.len() == 2 && !now.iter().any(|(n, _)| *n == victim_name), "{now:?}");
    c.servers[victim].kill();
}

/// The Raft configuration as one server reports it: (node, voter), sorted.
async fn members(c: &Cluster, via: usize) -> Vec<(String, bool)> {
    let mut names: Vec<(String, bool)> = c
        .raft_servers(via)
        .await
        .iter()
        .map(|s| (s["Node"].as_str().unwrap_or_default().to_string(), s["Voter"].as_bool().unwrap_or(false)))
        .collect();
    names.sort();
    names
}

async fn eventually_members(
    c: &Cluster,
    via: usize,
    what: &str,
    timeout: Duration,
    want: impl Fn(&[(String, bool)]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = members(c, via).await;
        if want(&now) {
            return;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("{what}: {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The cluster's identity (`/raft/info`), once its first leader made it.
async fn cluster_id(c: &Cluster, i: usize) -> Option<String> {
    let r = c.http.get(format!("http://{}/raft/info", c.servers[i].rpc)).send().await.ok()?;
    let info: registry::cluster::ServerInfo = registry::raft::decode(&r.bytes().await.ok()?).ok()?;
    info.cluster_id
}

async fn eventually_cluster_id(c: &Cluster, i: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(id) = cluster_id(c, i).await {
            return id;
        }
        assert!(Instant::now() < deadline, "no cluster identity within 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every cluster makes its own identity and keeps it across restarts; Raft RPCs and joins that
/// carry another cluster's are refused with a message naming both, while its own pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_of_another_cluster_are_refused() {
    let mut a = Cluster::new(1, 19700, 10_000);
    let b = Cluster::new(1, 19710, 10_000);
    a.wait_leader(Duration::from_secs(20)).await;
    b.wait_leader(Duration::from_secs(20)).await;
    let (ours, theirs) = (eventually_cluster_id(&a, 0).await, eventually_cluster_id(&b, 0).await);
    assert_ne!(ours, theirs, "two clusters, two identities");

    let rpc = |call: &str| format!("http://{}/raft/{call}", a.servers[0].rpc);
    let vote = a.http.post(rpc("vote")).header("x-roster-cluster", &theirs).body("x").send().await.expect("rpc");
    assert_eq!(vote.status(), 403);
    let text = vote.text().await.expect("body");
    assert!(text.contains(&ours) && text.contains(&theirs), "{text}");
    // Its own identity passes the check (the body is then read, and this one is no vote).
    let own = a.http.post(rpc("vote")).header("x-roster-cluster", &ours).body("x").send().await.expect("rpc");
    assert_eq!(own.status(), 400);

    let join = registry::cluster::JoinRequest {
        id: 42,
        node: registry::raft::ServerNode {
            name: "intruder".into(),
            rpc_addr: b.servers[0].rpc.clone(),
            http_addr: b.servers[0].http.clone(),
        },
        cluster_id: Some(theirs.clone()),
    };
    let body = registry::raft::encode(&join).expect("encode");
    let reply = a.http.post(rpc("join")).body(body).send().await.expect("join");
    let reply: Result<(), String> = registry::raft::decode(&reply.bytes().await.expect("body")).expect("decode");
    let refused = reply.expect_err("a server of another cluster must not join");
    assert!(refused.contains(&theirs), "{refused}");
    assert_eq!(a.raft_servers(0).await.len(), 1, "the intruder is not a member");
    assert!(a.servers[0].log().contains("refused"), "the refusal is logged");

    // The identity is kept with the data.
    a.servers[0].kill();
    a.servers[0].start(&a.join, 1, 10_000);
    a.wait_leader(Duration::from_secs(20)).await;
    assert_eq!(eventually_cluster_id(&a, 0).await, ours);
}

/// One raw HTTP/1.1 request on `stream`; the status line of the answer (the connection stays open).
async fn raw_get(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"GET /v1/status/leader HTTP/1.1\r\nHost: roster\r\n\r\n").await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n =
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("an answer").expect("read");
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// A connection from 127.0.0.2: a client of its own, apart from the harness's pooled connections.
async fn connect_from_elsewhere(addr: &str) -> tokio::net::TcpStream {
    connect_from("127.0.0.2", addr).await
}

async fn connect_from(ip: &str, addr: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{ip}:0").parse().expect("addr")).expect("bind");
    socket.connect(addr.parse().expect("addr")).await.expect("connect")
}

/// Consul's `http_max_conns_per_client`: a client holding the limit gets 429 on its next connection
/// until one of its own closes; and a client that trickles its headers is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_over_its_connection_limit_gets_429_and_a_slow_one_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let flags = ["--http-max-conns-per-client", "3", "--http-read-header-timeout-ms", "1000"];
    let c = Cluster::with_flags(1, 19720, 10_000, &flags);
    c.wait_leader(Duration::from_secs(20)).await;
    let addr = c.servers[0].http.clone();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from_elsewhere(&addr).await;
        let answer = raw_get(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(s);
    }
    let mut fourth = connect_from_elsewhere(&addr).await;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), fourth.read_to_string(&mut answer))
        .await
        .expect("closed")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("too many concurrent connections"), "{answer}");
    // One of its connections closes: the next one is served.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect_from_elsewhere(&addr).await;
        if raw_get(&mut s).await.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "a freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    // Slowloris: headers started, never finished; the server hangs up after the timeout. (From
    // another client: the server may not have counted 127.0.0.2's closed connections out yet.)
    let mut slow = connect_from("127.0.0.3", &addr).await;
    slow.write_all(b"GET /v1/status/leader HTTP/1.1\r\nHost: roster\r\n").await.expect("write");
    let started = Instant::now();
    let mut buf = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf)).await.expect("the server hangs up");
    assert!(matches!(read, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "cut off after the timeout, not before");
}

/// `http_max_blocking_queries`: past the cap a new blocking query gets 429 at once, a plain read is
/// still served, and a closed blocking query frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocking_queries_past_the_cap_get_429_and_places_are_freed() {
    let c = Cluster::with_flags(1, 19728, 10_000, &["--http-max-blocking-queries", "2"]);
    c.wait_leader(Duration::from_secs(20)).await;
    assert!(c.put(0, "k", "v").await.expect("put"));
    let url = |q: &str| format!("http://{}/v1/kv/k{q}", c.servers[0].http);
    let index = c.http.get(url("")).send().await.expect("read").headers()["x-consul-index"]
        .to_str()
        .expect("index")
        .to_string();
    // Two blocking queries park, one after the other (a client that gives up frees its place
    // at once, so the third must be refused, not time out).
    let mut blocked = Vec::new();
    for _ in 0..2 {
        let (http, u) = (c.http.clone(), url(&format!("?index={index}&wait=30s")));
        blocked.push(tokio::spawn(async move { http.get(u).send().await.map(|r| r.status().as_u16()) }));
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let started = Instant::now();
    let r = c.http.get(url(&format!("?index={index}&wait=30s"))).send().await.expect("an answer");
    assert_eq!(r.status(), 429);
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not blocked");
    let refused = r.text().await.unwrap_or_default();
    assert!(refused.contains("http_max_blocking_queries"), "{refused}");
    assert_eq!(c.http.get(url("")).send().await.expect("plain read").status(), 200, "plain reads are not capped");
    // A write wakes both; their places are free again.
    assert!(c.put(0, "k", "w").await.expect("put"));
    for b in blocked {
        assert_eq!(b.await.expect("task").expect("answer"), 200);
    }
    let r = c.http.get(url(&format!("?index={index}&wait=1s"))).send().await.expect("read");
    assert_eq!(r.status(), 200, "a freed place is taken");
}

fn signal(s: &Server, sig: &str) {
    let pid = s.child.as_ref().expect("running").id();
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill").success();
    assert!(ok, "kill {sig} {pid}");
}

/// A leader whose followers stop answering (paused here; a partition is the same to it) must stop
/// answering default-mode reads from its own state once its lease runs out: the majority could
/// elect a new leader and accept writes it never sees. Consul's leader steps down after its lease;
/// Roster's answers "No cluster leader" until a quorum acknowledges it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_quorum_stops_answering_default_reads() {
    let c = Cluster::new(3, 19730, 10_000);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    assert_eq!(c.put(leader, "lease/k", "v1").await, Ok(true));
    assert_eq!(c.get(leader, "lease/k", false).await.as_deref(), Some("v1"));

    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &f in &followers {
        signal(&c.servers[f], "-STOP");
    }
    // Past the lease (election timeout 1 s): default reads are refused, stale ones still answered.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let url = format!("http://{}/v1/kv/lease/k?raw", c.servers[leader].http);
    let refused = c.http.get(&url).send().await;
    let stale = c.get(leader, "lease/k", true).await;
    for &f in &followers {
        signal(&c.servers[f], "-CONT");
    }
    let refused = refused.expect("an answer, not a hang");
    let status = refused.status();
    let body = refused.text().await.unwrap_or_default();
    assert_eq!(status, reqwest::StatusCode::INTERNAL_SERVER_ERROR, "a cut-off leader answered a default read: {body}");
    assert!(body.contains("No cluster leader"), "{body}");
    assert_eq!(stale.as_deref(), Some("v1"), "?stale reads are this server's own state, answered");

    // Once the followers answer again, default reads work through every server.
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    assert_eq!(c.put(leader, "lease/k", "v2").await, Ok(true));
    for i in 0..3 {
        assert_eq!(c.get(i, "lease/k", false).await.as_deref(), Some("v2"));
    }
}

/// A leader paused (SIGSTOP) while the others elect a new one and accept a write must not answer a
/// default read from its old state when it resumes: its lease ran out during the pause, whatever its
/// Raft task has yet to notice (the fault harness's `default-read-from-paused-leader.json`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_and_resumed_leader_does_not_answer_default_reads_from_its_old_state() {
    let c = Cluster::new(3, 19740, 10_000);
    let old = c.wait_leader(Duration::from_secs(20)).await;
    assert_eq!(c.put(old, "paused/k", "before").await, Ok(true));
    signal(&c.servers[old], "-STOP");
    let other = (old + 1) % 3;
    // The other two elect a leader (1-1.5 s election timeout) and take a newer write.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.put(other, "paused/k", "after").await != Ok(true) {
        if Instant::now() > deadline {
            signal(&c.servers[old], "-CONT");
            c.dump_logs();
            panic!("the two others never took a write");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several reads at once right after the resume, racing the old leader's Raft task.
    signal(&c.servers[old], "-CONT");
    let reads: Vec<_> = (0..8)
        .map(|_| {
            let http = c.http.clone();
            let url = format!("http://{}/v1/kv/paused/k?raw", c.servers[old].http);
            tokio::spawn(async move {
                let r = http.get(url).send().await.ok()?;
                let ok = r.status().is_success();
                let body = r.text().await.ok()?;
                ok.then_some(body)
            })
        })
        .collect();
    for r in reads {
        let got = r.await.expect("read task");
        assert_ne!(got.as_deref(), Some("before"), "the resumed leader answered from its old state");
    }
}

/// Prepared queries are executed as Consul executes them: on the leader unless `?stale`. A follower
/// that missed writes (paused while they were made) forwards the execution, token and all, instead
/// of answering from its own state: neither the instance gone passing nor the new token is lost
/// (the WAN test saw a follower fail over to another datacenter that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_forwards_prepared_query_execution_to_the_leader() {
    const ROOT: &str = "root-secret-for-the-query-test";
    let flags = ["--acl-enabled", "true", "--acl-default-policy", "deny", "--acl-initial-management", ROOT];
    let c = Cluster::with_flags(3, 19780, 10_000, &flags);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let call = |i: usize, method: reqwest::Method, path: &str, token: &str, body: Option<serde_json::Value>| {
        let url = format!("http://{}{path}", c.servers[i].http);
        let mut req = c.http.request(method, url).header("X-Consul-Token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.expect("an answer");
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let (get, put, post) = (reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::POST);
    let deadline = Instant::now() + Duration::from_secs(20);
    while call(leader, get.clone(), "/v1/acl/token/self", ROOT, None).await.0 != 200 {
        assert!(Instant::now() < deadline, "initial management token never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let db = |status: &str| {
        serde_json::json!({"Node": "db-host", "Address": "10.0.0.5",
            "Service": {"ID": "db", "Service": "db", "Port": 5432},
            "Check": {"CheckID": "db-alive", "Name": "db", "ServiceID": "db", "Status": status}})
    };
    assert_eq!(call(leader, put.clone(), "/v1/catalog/register", ROOT, Some(db("critical"))).await.0, 200);
    let query = serde_json::json!({"Name": "db-q", "Service": {"Service": "db"}});
    assert_eq!(call(leader, post.clone(), "/v1/query", ROOT, Some(query)).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(follower, get.clone(), "/v1/query/db-q/explain?stale", ROOT, None).await.0 != 200 {
        assert!(Instant::now() < deadline, "the follower never got the query");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The follower misses the instance going passing and a new token, then is asked at once.
    signal(&c.servers[follower], "-STOP");
    assert_eq!(call(leader, put.clone(), "/v1/catalog/register", ROOT, Some(db("passing"))).await.0, 200);
    let rules = "query_prefix \"\" { policy = \"read\" }\nservice_prefix \"\" { policy = \"read\" }\n\
                 node_prefix \"\" { policy = \"read\" }";
    let policy = serde_json::json!({"Name": "db-reader", "Rules": rules});
    assert_eq!(call(leader, put.clone(), "/v1/acl/policy", ROOT, Some(policy)).await.0, 200);
    let token = serde_json::json!({"Policies": [{"Name": "db-reader"}]});
    let (status, token) = call(leader, put, "/v1/acl/token", ROOT, Some(token)).await;
    assert_eq!(status, 200, "{token}");
    let reader = token["SecretID"].as_str().expect("a secret").to_string();
    signal(&c.servers[follower], "-CONT");
    let (status, answer) = call(follower, get.clone(), "/v1/query/db-q/execute", &reader, None).await;
    assert_eq!(status, 200, "the new token, checked where the query runs: {answer}");
    assert_eq!(answer["Nodes"].as_array().map(Vec::len), Some(1), "the leader's state: {answer}");
    assert_eq!(answer["Nodes"][0]["Checks"][0]["Status"], "passing", "{answer}");
    let (status, explained) = call(follower, get, "/v1/query/db-q/explain", &reader, None).await;
    assert_eq!((status, &explained["Query"]["Service"]["Service"]), (200, &serde_json::json!("db")), "{explained}");
}
