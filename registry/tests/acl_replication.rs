//! ACL replication across two datacenters of server processes on 127.0.0.x, ACLs on with default
//! deny: dc1 (one server) is the primary, dc2 (two servers) replicates from it with a token that
//! has `acl = "write"`. A policy and token made in dc1 work in dc2; a local token of dc2 stays
//! there; a policy written in dc2 lands in dc1; `/v1/acl/replication` reports progress; with dc1
//! killed, dc2 still accepts the replicated token and reports the error. Every process is killed
//! on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const HTTP: u16 = 18640;
const RPC: u16 = 18641;
const WAN: u16 = 18642;
const ROOT: &str = "root-secret";
const REPLICATION: &str = "replication-secret";

struct Server {
    dc: &'static str,
    name: String,
    ip: String,
    dir: PathBuf,
    /// Flags of this server beyond the common ones.
    args: Vec<String>,
    child: Option<Child>,
}

impl Server {
    fn http(&self) -> String {
        format!("{}:{HTTP}", self.ip)
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
    /// The primary dc1 first, on 127.0.0.<first_ip>, the others on the next addresses.
    servers: Vec<Server>,
    http: reqwest::Client,
}

impl Federation {
    /// dc1 (one server) on 127.0.0.11, a replicating dc2 (two servers) on 127.0.0.12-13.
    fn new() -> Federation {
        let replicating = ["--acl-replication-token", REPLICATION].map(String::from).to_vec();
        Federation::of(11, &[("dc1", vec![]), ("dc2", replicating.clone()), ("dc2", replicating)])
    }

    /// One server per `(datacenter, flags)`; dc1 is the primary and holds the management token.
    fn of(first_ip: u8, specs: &[(&'static str, Vec<String>)]) -> Federation {
        let tmp = tempfile::tempdir().expect("temp dir");
        let servers = specs
            .iter()
            .enumerate()
            .map(|(i, (dc, args))| Server {
                dc,
                name: format!("server-{}", i + 1),
                ip: format!("127.0.0.{}", first_ip as usize + i),
                dir: tmp.path().join(format!("s{}", i + 1)),
                args: args.clone(),
                child: None,
            })
            .collect();
        Federation {
            _tmp: tmp,
            servers,
            http: registry::client::http_builder().timeout(Duration::from_secs(20)).build().expect("client"),
        }
    }

    fn start(&mut self, i: usize) {
        let dc = self.servers[i].dc;
        let lan: Vec<String> = self.servers.iter().filter(|s| s.dc == dc).map(|s| format!("{}:{RPC}", s.ip)).collect();
        let primary_wan = format!("{}:{WAN}", self.servers[0].ip);
        let s = &self.servers[i];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roster"));
        cmd.args(["server", "--node-name", &s.name, "--datacenter", dc])
            .arg("--data-dir")
            .arg(&s.dir)
            .args(["--http-addr", &s.http(), "--rpc-addr", &format!("{}:{RPC}", s.ip)])
            .args(["--wan-addr", &format!("{}:{WAN}", s.ip)])
            .args(["--bootstrap-expect", &lan.len().to_string(), "--retry-join", &lan.join(",")])
            .args(["--acl-enabled", "true", "--acl-default-policy", "deny", "--primary-datacenter", "dc1"])
            .args(&s.args);
        if !s.args.iter().any(|a| a == "--dns-addr") {
            cmd.args(["--dns-addr", "off"]);
        }
        if dc == "dc1" {
            cmd.args(["--acl-initial-management", ROOT]);
        } else {
            cmd.args(["--retry-join-wan", &primary_wan]);
        }
        let log = std::fs::File::create(s.dir.with_extension("log")).expect("log file");
        let child =
            cmd.env("RUST_LOG", "info,openraft=warn").stdout(Stdio::null()).stderr(log).spawn().expect("spawn roster");
        self.servers[i].child = Some(child);
    }

    fn dump_logs(&self) {
        for s in &self.servers {
            let log = std::fs::read_to_string(s.dir.with_extension("log")).unwrap_or_default();
            eprintln!("----- {} ({}) -----\n{log}", s.name, s.dc);
        }
    }

    async fn call(&self, i: usize, method: reqwest::Method, path: &str, token: &str, body: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.servers[i].http());
        let req = self.http.request(method, url).header("X-Consul-Token", token).body(body.to_string());
        match req.send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    async fn get(&self, i: usize, path: &str, token: &str) -> (u16, String) {
        self.call(i, reqwest::Method::GET, path, token, "").await
    }

    async fn put(&self, i: usize, path: &str, token: &str, body: &str) -> (u16, String) {
        self.call(i, reqwest::Method::PUT, path, token, body).await
    }

    async fn eventually(&self, what: &str, timeout: Duration, mut ok: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !ok().await {
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secondary_replicates_the_primarys_acls_and_keeps_them_while_it_is_down() {
    let mut f = Federation::new();
    f.start(0);
    f.eventually("dc1 writable", Duration::from_secs(30), async || {
        f.put(0, "/v1/kv/ready", ROOT, "1").await == (200, "true".into())
    })
    .await;
    // The replication token: acl = "write", as Consul asks of one that replicates tokens.
    let (status, body) = f.put(0, "/v1/acl/policy", ROOT, r#"{"Name":"replication","Rules":"acl = \"write\""}"#).await;
    assert_eq!(status, 200, "{body}");
    let token = format!(r#"{{"SecretID":"{REPLICATION}","Policies":[{{"Name":"replication"}}]}}"#);
    assert_eq!(f.put(0, "/v1/acl/token", ROOT, &token).await.0, 200);
    // A reader made in the primary.
    let rules = r#"{"Name":"kv-read","Rules":"key_prefix \"\" { policy = \"read\" }"}"#;
    assert_eq!(f.put(0, "/v1/acl/policy", ROOT, rules).await.0, 200);
    let (status, body) = f.put(0, "/v1/acl/token", ROOT, r#"{"Policies":[{"Name":"kv-read"}]}"#).await;
    assert_eq!(status, 200, "{body}");
    let reader = json(&body)["SecretID"].as_str().expect("a secret").to_string();

    f.start(1);
    f.start(2);
    // The reader works in dc2 (asked of dc1 until the first replication round, then from the copy):
    // a missing key is a 404, not "ACL not found".
    f.eventually("the reader replicated to dc2", Duration::from_secs(30), async || {
        let replicated = json(&f.get(1, "/v1/acl/replication", "").await.1)["ReplicatedTokenIndex"].as_u64();
        replicated > Some(0) && f.get(2, "/v1/kv/anything", &reader).await.0 == 404
    })
    .await;
    assert_eq!(f.put(1, "/v1/kv/anything", &reader, "x").await.0, 403, "read-only, as in dc1");
    assert_eq!(f.put(1, "/v1/kv/from-dc2", ROOT, "x").await, (200, "true".into()), "the management token too");
    assert_eq!(f.get(1, "/v1/kv/anything", "no-such-secret").await.0, 403, "default deny holds");

    // A local token of dc2 lives in dc2 only.
    let (status, body) = f.put(1, "/v1/acl/token", ROOT, r#"{"Local":true,"Policies":[{"Name":"kv-read"}]}"#).await;
    assert_eq!(status, 200, "{body}");
    let local = json(&body);
    let accessor = local["AccessorID"].as_str().expect("an accessor").to_string();
    let secret = local["SecretID"].as_str().expect("a secret").to_string();
    assert_eq!(f.get(2, "/v1/kv/anything", &secret).await.0, 404, "it works in dc2");
    assert_eq!(f.get(0, &format!("/v1/acl/token/{accessor}"), ROOT).await.0, 403, "dc1 does not know it");
    assert_eq!(f.get(0, "/v1/kv/anything", &secret).await.0, 403);

    // A policy written in dc2 is written in dc1, the owner, and comes back by replication.
    let (status, body) = f.put(2, "/v1/acl/policy", ROOT, r#"{"Name":"from-dc2","Rules":""}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(f.get(0, "/v1/acl/policy/name/from-dc2", ROOT).await.0, 200, "it is in dc1");
    f.eventually("the policy replicated back to dc2", Duration::from_secs(20), async || {
        f.get(1, "/v1/acl/policy/name/from-dc2", ROOT).await.0 == 200
    })
    .await;
    // A global token made through dc2 too.
    let (status, body) = f.put(1, "/v1/acl/token", ROOT, r#"{"Policies":[{"Name":"from-dc2"}]}"#).await;
    assert_eq!(status, 200, "{body}");
    let global = json(&body)["AccessorID"].as_str().expect("an accessor").to_string();
    assert_eq!(f.get(0, &format!("/v1/acl/token/{global}"), ROOT).await.0, 200, "a global token lives in dc1");

    // A write the primary itself sent here would only bounce back: two datacenters that disagree
    // on the primary get a 400 naming the setting, not a loop.
    let (status, body) = match f
        .http
        .put(format!("http://{}/v1/acl/policy", f.servers[1].http()))
        .header("X-Consul-Token", ROOT)
        .header("X-Roster-From-Datacenter", "dc1")
        .body(r#"{"Name":"bounced","Rules":""}"#)
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    };
    assert!(status == 400 && body.contains("primary_datacenter"), "{status} {body}");

    // The status reports progress up to dc1's ACL index; any token may read it. dc1 replicates nothing.
    let index = f
        .http
        .get(format!("http://{}/v1/acl/policies", f.servers[0].http()))
        .header("X-Consul-Token", ROOT)
        .send()
        .await
        .expect("dc1 answers")
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .expect("an index");
    f.eventually("the status to reach dc1's ACL index", Duration::from_secs(20), async || {
        let s = json(&f.get(2, "/v1/acl/replication", "").await.1);
        s["ReplicatedIndex"].as_u64() >= Some(index) && s["ReplicatedTokenIndex"].as_u64() >= Some(index)
    })
    .await;
    let s = json(&f.get(1, "/v1/acl/replication", "").await.1);
    assert_eq!(
        (&s["Enabled"], &s["Running"], &s["SourceDatacenter"], &s["ReplicationType"]),
        (&Value::Bool(true), &Value::Bool(true), &Value::from("dc1"), &Value::from("tokens")),
        "{s}"
    );
    assert_ne!(s["LastSuccess"], "0001-01-01T00:00:00Z", "{s}");
    let agent = json(&f.get(1, "/v1/agent/self", ROOT).await.1);
    assert_eq!(agent["Config"]["PrimaryDatacenter"], "dc1", "{agent}");
    let primary = json(&f.get(0, "/v1/acl/replication", "").await.1);
    assert_eq!((&primary["Enabled"], &primary["Running"]), (&Value::Bool(false), &Value::Bool(false)), "{primary}");

    // dc1 gone: dc2 still accepts the replicated token, and says replication fails.
    f.servers[0].kill();
    f.eventually("the status to show the error", Duration::from_secs(20), async || {
        let s = json(&f.get(1, "/v1/acl/replication", "").await.1);
        s["LastErrorMessage"].as_str().is_some_and(|m| m.contains("dc1")) && s["LastError"] != "0001-01-01T00:00:00Z"
    })
    .await;
    assert_eq!(f.get(1, "/v1/kv/anything", &reader).await.0, 404);
    assert_eq!(f.get(2, "/v1/kv/from-dc2?raw", &reader).await, (200, "x".into()));
    assert_eq!(f.put(2, "/v1/kv/anything", &reader, "x").await.0, 403);
    assert_eq!(f.put(2, "/v1/kv/still", ROOT, "fine").await, (200, "true".into()));
    // A policy write has nowhere to go: a 5xx that names the primary.
    let (status, body) = f.put(1, "/v1/acl/policy", ROOT, r#"{"Name":"while-down","Rules":""}"#).await;
    assert!(status >= 500 && body.contains("dc1"), "{status} {body}");
}

/// Secondaries without ACL replication hold no copy of the primary's tokens: they ask the primary
/// (`/v1/internal/acl/rules` with the token) and cache the answer for `acl_token_ttl`, for HTTP
/// requests and for DNS, which filters by the agent's default token; with the
/// primary down, each down policy decides as Consul's: extend-cache and async-cache keep a token
/// resolved before (a token never resolved gets the default policy, deny here), deny refuses
/// everything, allow allows everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secondaries_without_replication_ask_the_primary_and_apply_their_down_policy_when_it_is_down() {
    let secondary = |policy: &str| ["--acl-token-ttl", "1s", "--acl-down-policy", policy].map(String::from).to_vec();
    let with_dns = [secondary("extend-cache"), vec!["--dns-addr".into(), DC2_DNS.into()]].concat();
    let mut f = Federation::of(
        21,
        &[
            ("dc1", vec![]),
            ("dc2", with_dns),
            ("dc3", secondary("async-cache")),
            ("dc4", secondary("deny")),
            ("dc5", secondary("allow")),
        ],
    );
    let (extend, asynch, deny, allow) = (1, 2, 3, 4);
    f.start(0);
    f.eventually("dc1 writable", Duration::from_secs(30), async || {
        f.put(0, "/v1/kv/ready", ROOT, "1").await == (200, "true".into())
    })
    .await;
    let rules = r#"{"Name":"kv-read","Rules":"key_prefix \"\" { policy = \"read\" }"}"#;
    assert_eq!(f.put(0, "/v1/acl/policy", ROOT, rules).await.0, 200);
    let reader = secret(&f, r#"{"Policies":[{"Name":"kv-read"}]}"#).await;
    let unused = secret(&f, r#"{"Policies":[{"Name":"kv-read"}]}"#).await;
    let local = secret(&f, r#"{"Local":true,"Policies":[{"Name":"kv-read"}]}"#).await;
    for i in 1..f.servers.len() {
        f.start(i);
    }
    for i in 1..f.servers.len() {
        let dc = f.servers[i].dc;
        // A missing key is a 404 once the primary was asked: not "ACL not found".
        f.eventually(&format!("{dc} to resolve the reader through dc1"), Duration::from_secs(30), async || {
            f.get(i, "/v1/kv/anything", &reader).await.0 == 404
        })
        .await;
        assert_eq!(f.put(i, "/v1/kv/anything", &reader, "x").await.0, 403, "{dc}: read-only, as in dc1");
        assert_eq!(f.put(i, &format!("/v1/kv/{dc}"), ROOT, "x").await, (200, "true".into()), "{dc}: management");
        let (status, body) = f.get(i, "/v1/kv/anything", "no-such-secret").await;
        assert_eq!((status, body.as_str()), (403, "ACL not found"), "{dc}");
        assert_eq!(f.get(i, "/v1/kv/anything", &local).await.0, 403, "{dc}: a token local to dc1 stays there");
        // Token reads go to the primary, which holds the tokens.
        let (status, body) = f.get(i, "/v1/acl/token/self", &reader).await;
        assert_eq!((status, json(&body)["SecretID"].as_str()), (200, Some(reader.as_str())), "{dc}: {body}");
    }
    // Only the primary bootstraps, as in Consul.
    assert_eq!(f.put(extend, "/v1/acl/bootstrap", "", "").await, (401, "ACL support disabled".into()));
    // Asked again once the TTL passed: a token deleted in dc1 stops working in dc2.
    let doomed = secret(&f, r#"{"Policies":[{"Name":"kv-read"}]}"#).await;
    assert_eq!(f.get(extend, "/v1/kv/anything", &doomed).await.0, 404);
    let accessor = json(&f.get(0, "/v1/acl/token/self", &doomed).await.1)["AccessorID"].as_str().map(String::from);
    let path = format!("/v1/acl/token/{}", accessor.expect("an accessor"));
    assert_eq!(f.call(0, reqwest::Method::DELETE, &path, ROOT, "").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(f.get(extend, "/v1/kv/anything", &doomed).await.0, 403, "deleted in dc1");

    // DNS filters by the agent's default token, asked of dc1 too: nothing for the anonymous token
    // (default deny), the instance once the default token may read services and nodes.
    let rules = r#"{"Name":"dns-read","Rules":"service_prefix \"\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }"}"#;
    assert_eq!(f.put(0, "/v1/acl/policy", ROOT, rules).await.0, 200);
    let dns_reader = secret(&f, r#"{"Policies":[{"Name":"dns-read"}]}"#).await;
    let web = r#"{"Node":"n1","Address":"10.0.0.9","Service":{"Service":"web","Port":80}}"#;
    assert_eq!(f.put(extend, "/v1/catalog/register", ROOT, web).await, (200, "true".into()));
    assert_eq!(dns_a(DC2_DNS, "web.service.consul.").await, Vec::<String>::new(), "anonymous: denied");
    let default = format!(r#"{{"Token":"{dns_reader}"}}"#);
    assert_eq!(f.put(extend, "/v1/agent/token/default", ROOT, &default).await.0, 200);
    assert_eq!(dns_a(DC2_DNS, "web.service.consul.").await, ["10.0.0.9"], "the default token, as dc1 says");
    // Kept answers follow dc1 too: the token deleted there, DNS in dc2 stops answering once its
    // TTL (1 s) is over.
    let accessor = json(&f.get(0, "/v1/acl/token/self", &dns_reader).await.1)["AccessorID"].as_str().map(String::from);
    let path = format!("/v1/acl/token/{}", accessor.expect("an accessor"));
    assert_eq!(f.call(0, reqwest::Method::DELETE, &path, ROOT, "").await.0, 200);
    f.eventually("dc2's DNS to drop what the deleted default token could read", Duration::from_secs(5), async || {
        dns_a(DC2_DNS, "web.service.consul.").await.is_empty()
    })
    .await;

    f.servers[0].kill();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for i in [extend, asynch] {
        let dc = f.servers[i].dc;
        assert_eq!(f.get(i, "/v1/kv/anything", &reader).await.0, 404, "{dc}: the reader's cached rules hold");
        assert_eq!(f.put(i, "/v1/kv/anything", &reader, "x").await.0, 403, "{dc}: and still read-only");
        assert_eq!(f.get(i, "/v1/kv/anything", &unused).await.0, 403, "{dc}: never resolved: default deny");
    }
    assert_eq!(f.get(deny, "/v1/kv/anything", &reader).await.0, 403, "deny: the reader is refused");
    assert_eq!(f.get(deny, "/v1/kv/dc4", ROOT).await.0, 403, "deny: management too");
    assert_eq!(f.put(allow, "/v1/kv/written-while-down", &reader, "x").await, (200, "true".into()), "allow");
    assert_eq!(f.put(allow, "/v1/kv/by-a-stranger", "no-such-secret", "x").await.0, 200, "allow: anyone");
}

/// dc2's DNS interface in the down-policy test.
const DC2_DNS: &str = "127.0.0.22:18643";

/// The A records a DNS server answers for `name` (none when it answers with an error).
async fn dns_a(server: &str, name: &str) -> Vec<String> {
    use registry::dns::proto::op::{Message, MessageType, OpCode, Query};
    use registry::dns::proto::rr::{Name, RData, RecordType};
    let mut question = Message::new(7, MessageType::Query, OpCode::Query);
    question.add_query(Query::query(Name::from_ascii(name).expect("name"), RecordType::A));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.send_to(&question.to_vec().expect("encode"), server).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("a DNS answer in time")
        .expect("receive");
    let answer = Message::from_vec(&buf[..n]).expect("decode");
    answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// A token made in the primary: its secret.
async fn secret(f: &Federation, body: &str) -> String {
    let (status, text) = f.put(0, "/v1/acl/token", ROOT, body).await;
    assert_eq!(status, 200, "{text}");
    json(&text)["SecretID"].as_str().expect("a secret").to_string()
}
