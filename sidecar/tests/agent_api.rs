//! The sidecar's agent API is the servers' (one implementation, `registry::agent`): the calls an app
//! makes to its local agent answer the same through a sidecar as through a server. Against a real
//! `roster dev` process with gossip, and a sidecar started in this process.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use roster_sidecar::{Config, Sidecar};
use serde_json::Value;

/// Dev server: HTTP 127.0.0.1:19801, RPC :19802, gossip :19803. Sidecar: agent :19811, gossip :19813.
const DEV_HTTP: &str = "127.0.0.1:19801";
const DEV_GOSSIP: &str = "127.0.0.1:19803";

struct Dev(Child);

impl Drop for Dev {
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

/// `roster dev` with `args` after `dev`.
fn spawn_dev(args: &[&str]) -> Dev {
    let child = Command::new(roster_bin())
        .arg("dev")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn roster dev");
    Dev(child)
}

fn start_dev() -> Dev {
    spawn_dev(&["--http-addr", DEV_HTTP, "--rpc-addr", "127.0.0.1:19802", "--gossip-addr", DEV_GOSSIP])
}

/// A dev server with ACLs on, default deny, `management` its management token; gossip off.
fn start_dev_with_acls(http: &str, rpc: &str, management: &str) -> Dev {
    spawn_dev(&[
        "--http-addr",
        http,
        "--rpc-addr",
        rpc,
        "--gossip-addr",
        "off",
        "--acl-enabled",
        "--acl-default-policy",
        "deny",
        "--acl-initial-management",
        management,
    ])
}

fn sidecar_config() -> Config {
    Config {
        node_name: "pod-a".into(),
        address: "127.0.0.1".into(),
        http_addr: "127.0.0.1:19811".parse().expect("addr"),
        servers: vec![DEV_HTTP.into()],
        gossip_addr: Some("127.0.0.1:19813".parse().expect("addr")),
        gossip_seeds: vec![DEV_GOSSIP.into()],
        gossip_interval_ms: 100,
        dns_addr: Some(SIDECAR_DNS.parse().expect("addr")),
        ..Config::default()
    }
}

const SIDECAR_DNS: &str = "127.0.0.1:19815";

/// One DNS question over UDP to the sidecar; the addresses answered.
async fn dns_a(name: &str) -> Vec<std::net::IpAddr> {
    use registry::dns::proto::op::{Message, MessageType, OpCode, Query};
    use registry::dns::proto::rr::{Name, RData, RecordType};
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), RecordType::A));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.send_to(&m.to_vec().expect("encode"), SIDECAR_DNS).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let (n, _) =
        tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await.expect("answer").expect("recv");
    let answer = Message::from_vec(&buf[..n]).expect("decode");
    answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

async fn until<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        // Status 0: no answer (a server still starting refuses connections).
        let r = match req.send().await {
            Ok(r) => r,
            Err(e) => return (0, Value::String(e.to_string())),
        };
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn put(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, body).await
    }
}

#[tokio::test]
async fn a_sidecar_answers_the_agent_api_as_a_server_does() {
    let _dev = start_dev();
    let http = registry::client::http_builder().timeout(Duration::from_secs(20)).build().expect("client");
    let dev = Api { http: http.clone(), base: format!("http://{DEV_HTTP}/v1") };
    until("a leader", Duration::from_secs(20), async || {
        let (s, v) = dev.get("/status/leader").await;
        (s == 200 && v.as_str().is_some_and(|l| !l.is_empty())).then_some(())
    })
    .await;
    let sidecar = Sidecar::start(sidecar_config()).await.expect("sidecar starts");
    let side = Api { http, base: format!("http://{}/v1", sidecar.http_addr) };

    // Ready means ready: the first answer already finds this node alive in the catalog, and no
    // member still joining is reported as failed.
    let (_, checks) = side.get("/health/node/pod-a").await;
    let serf = checks.as_array().and_then(|c| c.iter().find(|c| c["CheckID"] == "serfHealth")).cloned();
    assert_eq!(serf.map(|c| c["Status"].clone()), Some(Value::from("passing")), "{checks}");

    // The pod's resolver asks the sidecar: its own node, and a service registered through it.
    let localhost: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
    assert_eq!(dns_a("pod-a.node.consul.").await, vec![localhost]);
    let db = serde_json::json!({"Name": "db", "Port": 5432});
    assert_eq!(side.put("/agent/service/register", Some(db)).await.0, 200);
    assert_eq!(dns_a("db.service.consul.").await, vec![localhost]);
    let (_, members) = side.get("/agent/members").await;
    assert!(members.as_array().is_some_and(|m| m.iter().all(|m| m["Status"] == 1)), "{members}");

    // A service with a sidecar proxy: both registered, the proxy with Consul's defaults; the
    // catalog has them at once (the agent writes through before it answers).
    let reg = serde_json::json!({"name": "web", "port": 8080, "connect": {"sidecar_service": {}}});
    assert_eq!(side.put("/agent/service/register", Some(reg)).await.0, 200);
    let (_, services) = side.get("/agent/services").await;
    let proxy = &services["web-sidecar-proxy"];
    assert_eq!(proxy["Kind"], "connect-proxy", "{services}");
    assert_eq!(proxy["Port"], 21000);
    assert_eq!(proxy["Proxy"]["DestinationServiceName"], "web");
    assert_eq!(proxy["Proxy"]["LocalServicePort"], 8080);
    assert!(services["web"].get("Kind").is_none(), "a typical service has no Kind: {services}");
    let (_, catalog) = dev.get("/catalog/service/web-sidecar-proxy").await;
    assert_eq!(catalog[0]["ServiceKind"], "connect-proxy", "{catalog}");
    // Agent health shows how the agent runs each check (Consul's `Definition`); the catalog does not.
    let (_, health) = side.get("/agent/health/service/id/web-sidecar-proxy").await;
    let check = &health["Checks"][0];
    assert_eq!(check["Definition"]["TCP"], "127.0.0.1:21000", "{health}");
    assert_eq!((&check["Definition"]["Interval"], &check["Type"]), (&Value::from("10s"), &Value::from("")));
    assert!(check.get("Interval").is_none(), "{check}");
    let (_, checks) = dev.get("/health/checks/web-sidecar-proxy").await;
    assert_eq!(checks[0]["Definition"], serde_json::json!({}), "{checks}");

    // Maintenance: a critical check of its own, gone again when disabled.
    assert_eq!(side.put("/agent/service/maintenance/web?enable=true&reason=deploy", None).await.0, 200);
    let (_, checks) = side.get("/agent/checks").await;
    assert_eq!(checks["_service_maintenance:web"]["Status"], "critical", "{checks}");
    assert_eq!(checks["_service_maintenance:web"]["Notes"], "deploy");
    let (_, passing) = dev.get("/health/service/web?passing").await;
    assert_eq!(passing, Value::Array(vec![]), "a service in maintenance is not passing");
    assert_eq!(side.put("/agent/service/maintenance/web?enable=false", None).await.0, 200);
    let (_, checks) = side.get("/agent/checks").await;
    assert!(checks.get("_service_maintenance:web").is_none(), "{checks}");
    assert_eq!(side.put("/agent/service/maintenance/web", None).await.0, 400, "enable is required");
    assert_eq!(side.put("/agent/maintenance?enable=true", None).await.0, 200);
    let (_, checks) = side.get("/agent/checks").await;
    assert_eq!(checks["_node_maintenance"]["Status"], "critical");

    // Re-registering a service unchanged keeps its checks' status.
    let ttl = serde_json::json!({"name": "db", "check": {"ttl": "30s"}});
    assert_eq!(side.put("/agent/service/register", Some(ttl.clone())).await.0, 200);
    assert_eq!(side.put("/agent/check/pass/service:db", None).await.0, 200);
    assert_eq!(side.put("/agent/service/register", Some(ttl)).await.0, 200);
    let (_, checks) = side.get("/agent/checks").await;
    assert_eq!(checks["service:db"]["Status"], "passing", "{checks}");

    // Filters, self, a bad log level, and the ACL-disabled token answer, as a server gives them.
    let (_, filtered) = side.get("/agent/services?filter=Service%20%3D%3D%20%22db%22").await;
    assert_eq!(filtered.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()), Some(vec!["db".to_string()]));
    let (_, me) = side.get("/agent/self").await;
    for key in ["Config", "DebugConfig", "Member", "Stats", "Meta", "Coord"] {
        assert!(me.get(key).is_some(), "agent/self lacks {key}: {me}");
    }
    assert_eq!(side.get("/agent/monitor?loglevel=verbose").await.0, 400);
    assert_eq!(side.put("/agent/token/default", Some(serde_json::json!({"Token": "x"}))).await.0, 401);

    // Deregistering the service takes its sidecar proxy along.
    assert_eq!(side.put("/agent/service/deregister/web", None).await.0, 200);
    let (_, services) = side.get("/agent/services").await;
    assert!(services.get("web-sidecar-proxy").is_none(), "{services}");
    let (_, catalog) = dev.get("/catalog/service/web-sidecar-proxy").await;
    assert_eq!(catalog, Value::Array(vec![]));

    // Leave: the sidecar asks its process to stop.
    let leave = sidecar.leave.clone();
    assert_eq!(side.put("/agent/leave", None).await.0, 200);
    tokio::time::timeout(Duration::from_secs(5), leave.notified()).await.expect("leave is signalled");
    sidecar.stop().await;
}

/// A stand-in API server whose TokenReview vouches for "pod-sa-token" as shop/web's ServiceAccount.
async fn token_review_server() -> std::net::SocketAddr {
    use warp::Filter;
    let route = warp::post()
        .and(warp::path!("apis" / "authentication.k8s.io" / "v1" / "tokenreviews"))
        .and(warp::body::json())
        .map(|review: Value| {
            let status = if review["spec"]["token"] == "pod-sa-token" {
                serde_json::json!({"authenticated": true, "user": {"username": "system:serviceaccount:shop:web"}})
            } else {
                serde_json::json!({"authenticated": false})
            };
            warp::reply::json(&serde_json::json!({"status": status}))
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(route).incoming(listener).run());
    addr
}

/// With `auth_method` set, the sidecar logs in with its pod's ServiceAccount token at start, acts
/// with the token it got, and logs out at stop: nobody pastes a secret into the pod.
#[tokio::test]
async fn a_sidecar_logs_in_with_its_service_account_and_out_when_it_stops() {
    const MANAGEMENT: &str = "6d0a8a5e-0000-4000-8000-management2";
    const HTTP: &str = "127.0.0.1:19821";
    let _dev = start_dev_with_acls(HTTP, "127.0.0.1:19822", MANAGEMENT);
    let http = registry::client::http_builder().timeout(Duration::from_secs(20)).build().expect("client");
    let admin = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = http.request(method, format!("http://{HTTP}/v1{path}")).header("X-Consul-Token", MANAGEMENT);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.ok()?;
            let ok = r.status().is_success();
            let v: Value = r.json().await.ok()?;
            ok.then_some(v)
        }
    };
    until("the management token", Duration::from_secs(20), async || {
        admin(reqwest::Method::GET, "/acl/token/self", None).await
    })
    .await;
    let api_server = token_review_server().await;
    let method = serde_json::json!({"Name": "k8s", "Type": "kubernetes",
        "Config": {"Host": format!("http://{api_server}"), "ServiceAccountJWT": "reviewer"}});
    admin(reqwest::Method::PUT, "/acl/auth-method", Some(method)).await.expect("auth method");
    let rule = serde_json::json!({"AuthMethod": "k8s", "BindType": "service", "BindName": "${serviceaccount.name}"});
    admin(reqwest::Method::PUT, "/acl/binding-rule", Some(rule)).await.expect("binding rule");
    // The login token may write its service; the node needs node:write too, as for Consul agents.
    let node_rule = serde_json::json!({"AuthMethod": "k8s", "BindType": "node", "BindName": "pod-b"});
    admin(reqwest::Method::PUT, "/acl/binding-rule", Some(node_rule)).await.expect("node rule");

    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "pod-sa-token\n").expect("write token");
    let config = Config {
        node_name: "pod-b".into(),
        address: "127.0.0.1".into(),
        http_addr: "127.0.0.1:19823".parse().expect("addr"),
        servers: vec![HTTP.into()],
        auth_method: Some("k8s".into()),
        bearer_token_file: token_file.clone(),
        services: vec![serde_json::json!({"name": "web", "port": 8080})],
        ..Config::default()
    };
    let sidecar = Sidecar::start(config.clone()).await.expect("sidecar logs in and starts");
    let logins = admin(reqwest::Method::GET, "/acl/tokens?authmethod=k8s", None).await.expect("tokens");
    assert_eq!(logins.as_array().map(Vec::len), Some(1), "{logins}");
    assert_eq!(logins[0]["ServiceIdentities"][0]["ServiceName"], "web");
    // It registers its service with the token it got.
    until("web in the catalog", Duration::from_secs(10), async || {
        let list = admin(reqwest::Method::GET, "/catalog/service/web", None).await?;
        (list.as_array()?.len() == 1).then_some(())
    })
    .await;
    // The sidecar's agent API enforces ACLs as the servers would: the request's token, else its own.
    let put = |path: &str, token: Option<&str>, body: Value| {
        let mut req = http.put(format!("http://{}/v1{path}", sidecar.http_addr)).json(&body);
        if let Some(t) = token {
            req = req.header("X-Consul-Token", t);
        }
        async move { req.send().await.expect("request").status().as_u16() }
    };
    let register = "/agent/service/register";
    assert_eq!(put(register, None, serde_json::json!({"name": "web", "port": 8081})).await, 200);
    assert_eq!(put(register, None, serde_json::json!({"name": "db"})).await, 403, "its own token writes web only");
    assert_eq!(put(register, Some(MANAGEMENT), serde_json::json!({"name": "db"})).await, 200);
    assert_eq!(
        put(register, Some("00000000-0000-0000-0000-00000000dead"), serde_json::json!({"name": "x"})).await,
        403
    );
    sidecar.stop().await;
    let logins = admin(reqwest::Method::GET, "/acl/tokens?authmethod=k8s", None).await.expect("tokens");
    assert_eq!(logins, Value::Array(vec![]), "logged out at stop");

    // A token the API server does not vouch for: the sidecar refuses to start, saying why.
    std::fs::write(&token_file, "someone-elses").expect("write token");
    let err = Sidecar::start(config).await.err().expect("refused");
    assert!(format!("{err:#}").contains("refused"), "{err:#}");
}

/// While no server answers, a sidecar's down policy decides what the tokens it resolved before may
/// do (Consul's `acl.down_policy`): extend-cache keeps their rules past the TTL and gives a token
/// never resolved the default (deny); deny refuses everything.
#[tokio::test]
async fn while_no_server_answers_the_down_policy_decides_about_tokens() {
    const MANAGEMENT: &str = "6d0a8a5e-0000-4000-8000-management3";
    const HTTP: &str = "127.0.0.1:19831";
    let mut dev = start_dev_with_acls(HTTP, "127.0.0.1:19832", MANAGEMENT);
    let http = registry::client::http_builder().timeout(Duration::from_secs(20)).build().expect("client");
    let admin_put = |path: &str, body: Value| {
        let req = http.put(format!("http://{HTTP}/v1{path}")).header("X-Consul-Token", MANAGEMENT).json(&body);
        async move {
            let r = req.send().await.ok()?;
            let ok = r.status().is_success();
            let v: Value = r.json().await.ok()?;
            ok.then_some(v)
        }
    };
    let policy = serde_json::json!({"Name": "web", "Rules": "service_prefix \"web\" { policy = \"write\" }"});
    until("the policy", Duration::from_secs(20), async || admin_put("/acl/policy", policy.clone()).await).await;
    let secret = async |_: &str| {
        let token = admin_put("/acl/token", serde_json::json!({"Policies": [{"Name": "web"}]})).await.expect("token");
        token["SecretID"].as_str().expect("secret").to_string()
    };
    let (writer, unused) = (secret("writer").await, secret("unused").await);

    let mut sidecars = Vec::new();
    for (port, policy) in [(19834, "extend-cache"), (19835, "deny")] {
        let config = Config {
            node_name: format!("pod-{policy}"),
            address: "127.0.0.1".into(),
            http_addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            servers: vec![HTTP.into()],
            token: Some(MANAGEMENT.into()),
            acl_down_policy: policy.into(),
            acl_token_ttl: "1s".into(),
            ..Config::default()
        };
        sidecars.push(Sidecar::start(config).await.expect("sidecar starts"));
    }
    let register = |i: usize, token: &str, port: u16| {
        let url = format!("http://{}/v1/agent/service/register", sidecars[i].http_addr);
        let req = http.put(url).header("X-Consul-Token", token).json(&serde_json::json!({"name": "web", "port": port}));
        async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    for i in 0..2 {
        assert_eq!(register(i, &writer, 8080).await, 200, "resolved through the server");
    }
    let _ = dev.0.kill();
    let _ = dev.0.wait();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(register(0, &writer, 8081).await, 200, "extend-cache: the writer's rules hold past the TTL");
    assert_eq!(register(0, &unused, 8082).await, 403, "extend-cache: never resolved, default deny");
    assert_eq!(register(1, &writer, 8083).await, 403, "deny: refused once the TTL passed");
    for s in sidecars {
        s.stop().await;
    }
}

/// The agent API has the servers' listener and limits: a client holding
/// `http_max_conns_per_client` connections gets 429 on its next one, as from a Consul agent.
#[tokio::test]
async fn a_client_over_its_connection_limit_gets_429_from_the_sidecar() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = Config {
        node_name: "pod-limits".into(),
        address: "127.0.0.1".into(),
        http_addr: "127.0.0.1:19841".parse().expect("addr"),
        // Nothing listens there: the agent API answers from the sidecar alone.
        servers: vec!["127.0.0.1:19849".into()],
        http_max_conns_per_client: 2,
        ..Config::default()
    };
    let sidecar = Sidecar::start(config).await.expect("sidecar starts");
    let addr = sidecar.http_addr;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /v1/agent/services HTTP/1.1\r\nHost: pod\r\n\r\n").await.expect("write");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("answer").expect("read");
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        held.push(s);
    }
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_string(&mut answer))
        .await
        .expect("closed")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 429") && answer.contains("too many concurrent connections"), "{answer}");
    drop(held);
    sidecar.stop().await;
}
