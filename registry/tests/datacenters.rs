//! Two datacenters of three server processes each on 127.0.0.x, joined by the WAN pool: WAN
//! membership, `catalog/datacenters`, `?dc=` reads and writes in both directions (a blocking query
//! too), a catalog write naming another datacenter, an unknown datacenter, and a datacenter whose
//! servers are all down, then back. Every process is killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const HTTP: u16 = 17900;
const RPC: u16 = 17901;
const WAN: u16 = 17902;
const DNS: u16 = 17903;

struct Server {
    dc: &'static str,
    name: String,
    ip: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn http(&self) -> String {
        format!("{}:{HTTP}", self.ip)
    }

    fn start(&mut self, lan: &[String], wan: &[String]) {
        let log = std::fs::File::create(self.dir.with_extension("log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_roster"))
            .args(["server", "--node-name", &self.name, "--datacenter", self.dc])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--http-addr", &self.http(), "--rpc-addr", &format!("{}:{RPC}", self.ip)])
            .args(["--wan-addr", &format!("{}:{WAN}", self.ip), "--retry-join-wan", &wan.join(",")])
            .args([
                "--bootstrap-expect",
                "3",
                "--retry-join",
                &lan.join(","),
                "--dns-addr",
                &format!("{}:{DNS}", self.ip),
            ])
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn roster");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Federation {
    _tmp: tempfile::TempDir,
    /// dc1 on 127.0.0.1-3, dc2 on 127.0.0.4-6.
    servers: Vec<Server>,
    http: reqwest::Client,
}

impl Federation {
    fn start() -> Federation {
        let tmp = tempfile::tempdir().expect("temp dir");
        let servers: Vec<Server> = (1..=6)
            .map(|i| Server {
                dc: if i <= 3 { "dc1" } else { "dc2" },
                name: format!("server-{i}"),
                ip: format!("127.0.0.{i}"),
                dir: tmp.path().join(format!("s{i}")),
                child: None,
            })
            .collect();
        let mut f = Federation {
            _tmp: tmp,
            servers,
            http: registry::client::http_builder().timeout(Duration::from_secs(40)).build().expect("client"),
        };
        for i in 0..6 {
            f.start_server(i);
        }
        f
    }

    fn start_server(&mut self, i: usize) {
        let dc = self.servers[i].dc;
        let lan: Vec<String> = self.servers.iter().filter(|s| s.dc == dc).map(|s| format!("{}:{RPC}", s.ip)).collect();
        // Each server knows one server of the other datacenter: the pool spreads the rest.
        let other = if dc == "dc1" { "127.0.0.4" } else { "127.0.0.1" };
        self.servers[i].start(&lan, &[format!("{other}:{WAN}")]);
    }

    fn dump_logs(&self) {
        for s in &self.servers {
            eprintln!(
                "----- {} ({}) -----\n{}",
                s.name,
                s.dc,
                std::fs::read_to_string(s.dir.with_extension("log")).unwrap_or_default()
            );
        }
    }

    async fn call(&self, i: usize, method: reqwest::Method, path: &str, body: &str) -> (u16, String, Option<u64>) {
        let url = format!("http://{}{path}", self.servers[i].http());
        match self.http.request(method, url).body(body.to_string()).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let index = r.headers().get("x-consul-index").and_then(|v| v.to_str().ok()?.parse().ok());
                (status, r.text().await.unwrap_or_default(), index)
            }
            Err(e) => (0, e.to_string(), None),
        }
    }

    async fn get(&self, i: usize, path: &str) -> (u16, String, Option<u64>) {
        self.call(i, reqwest::Method::GET, path, "").await
    }

    async fn put(&self, i: usize, path: &str, body: &str) -> (u16, String) {
        let (s, b, _) = self.call(i, reqwest::Method::PUT, path, body).await;
        (s, b)
    }

    async fn eventually(&self, what: &str, timeout: Duration, mut ok: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !ok().await {
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `dig +short` against a server's DNS interface (Debian's dnsutils; scripts/test.sh installs it).
fn dig(server: &str, name: &str, rtype: &str) -> Vec<String> {
    let out = Command::new("dig")
        .args([&format!("@{server}"), "-p", &DNS.to_string(), "+short", "+time=3", "+tries=1", name, rtype])
        .output()
        .expect("dig runs (apt-get install dnsutils)");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_datacenters_see_each_other_and_serve_each_others_requests() {
    let mut f = Federation::start();
    // Both datacenters have a leader and write.
    for i in [0, 3] {
        f.eventually("a writable datacenter", Duration::from_secs(60), async || {
            f.put(i, "/v1/kv/ready", "1").await == (200, "true".into())
        })
        .await;
    }

    // WAN membership: every server of both datacenters, as node.dc, from either side.
    let wanted: Vec<String> = f.servers.iter().map(|s| format!("{}.{}", s.name, s.dc)).collect();
    for i in [1, 5] {
        f.eventually("six WAN members", Duration::from_secs(30), async || {
            let (_, body, _) = f.get(i, "/v1/agent/members?wan=1").await;
            let mut names: Vec<String> = json(&body)
                .as_array()
                .map(|a| {
                    a.iter().filter(|m| m["Status"] == 1).filter_map(|m| m["Name"].as_str().map(String::from)).collect()
                })
                .unwrap_or_default();
            names.sort();
            names == wanted
        })
        .await;
    }
    assert_eq!(json(&f.get(0, "/v1/catalog/datacenters").await.1), serde_json::json!(["dc1", "dc2"]));
    assert_eq!(json(&f.get(4, "/v1/catalog/datacenters").await.1), serde_json::json!(["dc2", "dc1"]));

    // KV through the other datacenter, both directions; each datacenter keeps its own store.
    assert_eq!(f.put(1, "/v1/kv/where?dc=dc2", "written-via-dc1").await, (200, "true".into()));
    assert_eq!(f.get(4, "/v1/kv/where?raw").await.1, "written-via-dc1");
    assert_eq!(f.get(0, "/v1/kv/where?raw").await.0, 404, "dc1's own store has no such key");
    assert_eq!(f.put(5, "/v1/kv/back?dc=dc1", "written-via-dc2").await, (200, "true".into()));
    assert_eq!(f.get(2, "/v1/kv/back?raw").await.1, "written-via-dc2");
    // A read for dc2 through dc1 answers with dc2's headers (its index, its leader).
    let (status, body, index) = f.get(2, "/v1/kv/where?dc=dc2").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)[0]["Key"], "where");
    let (_, _, local_index) = f.get(3, "/v1/kv/where").await;
    assert_eq!(index, local_index);

    // A catalog write naming dc2 in its body lands in dc2.
    let reg = r#"{"Datacenter":"dc2","Node":"db-host","Address":"10.2.0.1","Service":{"Service":"db","Port":5432}}"#;
    assert_eq!(f.put(0, "/v1/catalog/register", reg).await, (200, "true".into()));
    let (_, body, _) = f.get(0, "/v1/health/service/db?dc=dc2").await;
    assert_eq!(json(&body)[0]["Node"]["Node"], "db-host");
    assert_eq!(json(&f.get(0, "/v1/health/service/db").await.1), serde_json::json!([]));

    // A prepared query fails over: dc1's only db instance is critical, so dc2 answers, and says so.
    let local = r#"{"Node":"db-local","Address":"10.1.0.1","Service":{"Service":"db","Port":5432},
        "Check":{"CheckID":"db-alive","Name":"db alive","ServiceID":"db","Status":"critical"}}"#;
    assert_eq!(f.put(0, "/v1/catalog/register", local).await, (200, "true".into()));
    let (status, body, _) = f
        .call(
            1,
            reqwest::Method::POST,
            "/v1/query",
            r#"{"Name":"db-nearest","Service":{"Service":"db","Failover":{"NearestN":1}}}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let answer = json(&f.get(2, "/v1/query/db-nearest/execute").await.1);
    assert_eq!((answer["Datacenter"].as_str(), answer["Failovers"].as_u64()), (Some("dc2"), Some(1)), "{answer}");
    assert_eq!(answer["Nodes"][0]["Node"]["Node"], "db-host");
    // The same through DNS: the query's name, and the service in the other datacenter by name.
    assert_eq!(dig("127.0.0.1", "db-nearest.query.consul", "A"), ["10.2.0.1"]);
    assert_eq!(dig("127.0.0.2", "db.service.dc2.consul", "A"), ["10.2.0.1"]);
    assert_eq!(dig("127.0.0.2", "db.service.consul", "A"), Vec::<String>::new(), "dc1's db is critical");
    assert_eq!(dig("127.0.0.5", "db-nearest.query.dc1.consul", "A"), ["10.2.0.1"], "executed in dc1, failing over");
    // Nodes by name in another datacenter, and a name no datacenter has.
    assert_eq!(dig("127.0.0.1", "db-host.node.dc2.consul", "A"), ["10.2.0.1"]);
    assert_eq!(dig("127.0.0.4", "db-local.node.dc1.consul", "A"), ["10.1.0.1"]);
    assert_eq!(dig("127.0.0.1", "db-host.node.consul", "A"), Vec::<String>::new(), "db-host is dc2's");
    assert_eq!(dig("127.0.0.1", "db-host.node.dc9.consul", "A"), Vec::<String>::new(), "no dc9");
    // Passing again at home: dc1 answers.
    let passing = local.replace("critical", "passing");
    assert_eq!(f.put(0, "/v1/catalog/register", &passing).await, (200, "true".into()));
    let answer = json(&f.get(2, "/v1/query/db-nearest/execute").await.1);
    assert_eq!((answer["Datacenter"].as_str(), answer["Failovers"].as_u64()), (Some("dc1"), Some(0)), "{answer}");
    assert_eq!(answer["Nodes"][0]["Node"]["Node"], "db-local");

    // A blocking query across datacenters wakes on the remote write.
    let (_, _, index) = f.get(0, "/v1/kv/where?dc=dc2").await;
    let index = index.expect("an index");
    let started = Instant::now();
    let blocked = {
        let http = f.http.clone();
        let url = format!("http://{}/v1/kv/where?dc=dc2&raw&index={index}&wait=30s", f.servers[0].http());
        tokio::spawn(async move { http.get(url).send().await.ok()?.text().await.ok() })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(f.put(4, "/v1/kv/where", "changed-in-dc2").await, (200, "true".into()));
    let answer = tokio::time::timeout(Duration::from_secs(20), blocked).await.expect("woke").expect("task");
    assert_eq!(answer.as_deref(), Some("changed-in-dc2"));
    assert!(started.elapsed() >= Duration::from_millis(600), "it blocked until the write");

    // An unknown datacenter is the client's mistake, named.
    let (status, body, _) = f.get(0, "/v1/kv/where?dc=dc9").await;
    assert_eq!(status, 400);
    assert!(body.contains("dc9"), "{body}");

    // dc2 down: a 503 that names it; dc1 carries on.
    for i in 3..6 {
        f.servers[i].kill();
    }
    f.eventually("dc2 reported unreachable", Duration::from_secs(30), async || {
        let (status, body, _) = f.get(0, "/v1/kv/where?dc=dc2").await;
        status == 503 && body.contains("\"dc2\"")
    })
    .await;
    assert_eq!(f.put(0, "/v1/kv/still", "fine").await, (200, "true".into()));
    // ... and back, with its data.
    for i in 3..6 {
        f.start_server(i);
    }
    f.eventually("dc2 reachable again", Duration::from_secs(60), async || {
        f.get(1, "/v1/kv/where?dc=dc2&raw").await.1 == "changed-in-dc2"
    })
    .await;
}
