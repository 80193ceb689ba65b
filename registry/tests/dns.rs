//! Consul's DNS interface against a real `roster dev`: every name form, A/AAAA/SRV/TXT, only
//! healthy instances (a check going critical takes its instance out of the next answer), UDP
//! answers limited and marked truncated then complete over TCP, NXDOMAIN with the SOA for
//! unknown names, REFUSED outside the domain (or the recursors' answer), a malformed packet that
//! breaks nothing, and the default address (the HTTP address's IP, port 8600).
//! Queries are raw DNS messages (hickory's types), over UDP and TCP.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use registry::dns::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use registry::dns::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HTTP: &str = "127.0.0.1:19850";
const DNS: &str = "127.0.0.1:19853";

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn question(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    m.to_vec().expect("encode")
}

async fn udp(name: &str, rtype: RecordType) -> Message {
    udp_at(DNS, name, rtype).await
}

async fn udp_at(server: &str, name: &str, rtype: RecordType) -> Message {
    udp_raw_at(server, &question(name, rtype)).await.expect("an answer over UDP")
}

async fn udp_raw(packet: &[u8]) -> Option<Message> {
    udp_raw_at(DNS, packet).await
}

async fn udp_raw_at(server: &str, packet: &[u8]) -> Option<Message> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.send_to(packet, server).await.expect("send");
    let mut buf = vec![0u8; 65_535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await.ok()?.ok()?;
    Message::from_vec(&buf[..n]).ok()
}

async fn tcp(name: &str, rtype: RecordType) -> Message {
    let packet = question(name, rtype);
    let mut stream = tokio::net::TcpStream::connect(DNS).await.expect("connect");
    stream.write_all(&(packet.len() as u16).to_be_bytes()).await.expect("length");
    stream.write_all(&packet).await.expect("send");
    let len = stream.read_u16().await.expect("length") as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.expect("answer");
    Message::from_vec(&buf).expect("decode")
}

fn ips(m: &Message) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// A `roster dev` with DNS on `dns`, once it answers HTTP; killed when the first value drops.
async fn start_dev(http_addr: &str, rpc_addr: &str, dns: &str) -> (Dev, reqwest::Client) {
    start_dev_with(http_addr, rpc_addr, &["--dns-addr", dns]).await
}

async fn start_dev_with(http_addr: &str, rpc_addr: &str, extra: &[&str]) -> (Dev, reqwest::Client) {
    let child = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["dev", "--http-addr", http_addr, "--rpc-addr", rpc_addr, "--gossip-addr", "off"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("roster dev");
    let dev = Dev(child);
    let http = registry::client::http_builder().timeout(Duration::from_secs(5)).build().expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("http://{http_addr}/v1/status/leader")).send().await.is_err() {
        assert!(Instant::now() < deadline, "roster dev did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (dev, http)
}

async fn register(http: &reqwest::Client, http_addr: &str, body: serde_json::Value) {
    let r = http.put(format!("http://{http_addr}/v1/catalog/register")).json(&body).send().await.expect("register");
    assert!(r.status().is_success(), "{:?}", r.text().await);
}

fn instance(node: &str, addr: &str, tags: &[&str], port: u16, status: &str) -> serde_json::Value {
    serde_json::json!({
        "Node": node, "Address": addr, "NodeMeta": {"rack": format!("r-{node}")},
        "Service": {"Service": "web", "Tags": tags, "Port": port},
        "Check": {"CheckID": "web-check", "Name": "web", "ServiceID": "web", "Status": status},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dns_interface_answers_as_consuls_does() {
    let (_dev, http) = start_dev(HTTP, "127.0.0.1:19851", DNS).await;
    register(&http, HTTP, instance("a", "10.0.0.1", &["v1"], 8080, "passing")).await;
    register(&http, HTTP, instance("b", "10.0.0.2", &["v2"], 8081, "warning")).await;
    register(&http, HTTP, instance("c", "10.0.0.3", &["v1"], 8082, "critical")).await;
    register(&http, HTTP, instance("d", "10.0.0.4", &[], 8083, "passing")).await;
    register(&http, HTTP, instance("e", "fd00::5", &[], 8084, "passing")).await;

    // A: the healthy IPv4 instances (warning counts as healthy, critical does not).
    let a = tcp("web.service.consul.", RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.metadata.authoritative);
    let want: Vec<IpAddr> = ["10.0.0.1", "10.0.0.2", "10.0.0.4"].iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(ips(&a), want);
    let aaaa = udp("web.service.dc1.consul.", RecordType::AAAA).await;
    assert_eq!(ips(&aaaa), vec!["fd00::5".parse::<IpAddr>().unwrap()]);

    // SRV: 4 healthy instances; over UDP at most 3 and marked truncated, complete over TCP with
    // each target's address as an additional record.
    let srv_udp = udp("web.service.consul.", RecordType::SRV).await;
    assert_eq!(srv_udp.answers.len(), 3);
    assert!(srv_udp.metadata.truncation, "UDP answers are limited and say so");
    let srv = tcp("web.service.consul.", RecordType::SRV).await;
    assert!(!srv.metadata.truncation);
    let mut ports: Vec<u16> = srv
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.port),
            _ => None,
        })
        .collect();
    ports.sort();
    assert_eq!(ports, [8080, 8081, 8083, 8084]);
    let target_of_a = srv.answers.iter().find_map(|r| match &r.data {
        RData::SRV(s) if s.port == 8080 => Some(s.target.to_ascii()),
        _ => None,
    });
    assert_eq!(target_of_a.as_deref(), Some("a.node.dc1.consul."));
    assert!(srv.additionals.iter().any(|r| r.name.to_ascii() == "a.node.dc1.consul."
        && matches!(&r.data, RData::A(ip) if ip.0 == std::net::Ipv4Addr::new(10, 0, 0, 1))));

    // Tags, RFC 2782 and nodes.
    assert_eq!(ips(&udp("v1.web.service.consul.", RecordType::A).await), vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    let rfc = udp("_web._v1.service.consul.", RecordType::SRV).await;
    assert_eq!(rfc.answers.len(), 1);
    assert_eq!(udp("_web._tcp.service.consul.", RecordType::SRV).await.answers.len(), 3);
    assert_eq!(ips(&udp("b.node.consul.", RecordType::A).await), vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
    let txt = udp("b.node.consul.", RecordType::TXT).await;
    assert!(
        txt.answers.iter().any(|r| matches!(&r.data, RData::TXT(t) if t.to_string().contains("rack=r-b"))),
        "{txt:?}"
    );

    // Unknown names: NXDOMAIN with the SOA; outside the domain: refused.
    let none = udp("nope.service.consul.", RecordType::A).await;
    assert_eq!(none.metadata.response_code, ResponseCode::NXDomain);
    assert!(none.authorities.iter().any(|r| matches!(r.data, RData::SOA(_))), "{none:?}");
    assert_eq!(udp("c.web.service.consul.", RecordType::A).await.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(udp("example.com.", RecordType::A).await.metadata.response_code, ResponseCode::Refused);

    // A check going critical takes the instance out of the next answer.
    register(&http, HTTP, instance("a", "10.0.0.1", &["v1"], 8080, "critical")).await;
    assert_eq!(udp("v1.web.service.consul.", RecordType::A).await.metadata.response_code, ResponseCode::NXDomain);

    // Garbage is answered with FORMERR or dropped, and the server keeps answering.
    let garbage = udp_raw(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff\xff").await;
    assert!(garbage.as_ref().is_none_or(|m| m.metadata.response_code == ResponseCode::FormErr), "{garbage:?}");
    assert_eq!(udp_raw(b"x").await.map(|m| m.metadata.response_code), None, "too short to answer");
    assert_eq!(ips(&udp("d.node.consul.", RecordType::A).await), vec!["10.0.0.4".parse::<IpAddr>().unwrap()]);
}

/// The answers as `dig` (Debian's dnsutils, which scripts/test.sh installs) reads them, over UDP
/// and TCP: what a user checking the interface by hand sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_reads_the_answers() {
    const DIG_HTTP: &str = "127.0.0.1:19855";
    const DIG_DNS_PORT: &str = "19858";
    let dig_found = Command::new("dig").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(dig_found, "dig is missing: apt-get install dnsutils (scripts/test.sh installs it)");
    let (_dev, http) = start_dev(DIG_HTTP, "127.0.0.1:19856", &format!("127.0.0.1:{DIG_DNS_PORT}")).await;
    let reg = serde_json::json!({"Node": "db-1", "Address": "10.1.2.3", "Service": {"Service": "db", "Port": 5432}});
    register(&http, DIG_HTTP, reg).await;
    let dig = |args: &[&str]| {
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", DIG_DNS_PORT, "+short", "+time=2", "+tries=1"])
            .args(args)
            .output()
            .expect("dig runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(dig(&["db.service.consul", "A"]), "10.1.2.3");
    assert_eq!(dig(&["+tcp", "db.service.consul", "SRV"]), "1 1 5432 db-1.node.dc1.consul.");
    assert_eq!(dig(&["db-1.node.consul", "A"]), "10.1.2.3");
    let nx = Command::new("dig")
        .args(["@127.0.0.1", "-p", DIG_DNS_PORT, "+time=2", "+tries=1", "nope.service.consul"])
        .output()
        .expect("dig runs");
    let text = String::from_utf8_lossy(&nx.stdout);
    assert!(text.contains("status: NXDOMAIN") && text.contains("SOA"), "{text}");
}

/// Names outside the domain go to the recursors in order (a dead one is skipped), and with none
/// answering the client gets SERVFAIL. The recursor here is another `roster dev` serving the
/// domain `example.` on its default DNS address: its HTTP address's IP, port 8600. A second dev
/// server on that IP starts without DNS; one that asks for the taken address explicitly fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursors_and_the_default_address() {
    const OTHER_HTTP: &str = "127.0.0.86:19860";
    const OTHER_DNS: &str = "127.0.0.86:8600";
    const DEAD: &str = "127.0.0.1:19869";
    let (_other, http) = start_dev_with(OTHER_HTTP, "127.0.0.86:19861", &["--domain", "example"]).await;
    let reg = serde_json::json!({"Node": "far", "Address": "10.9.9.9", "Service": {"Service": "api", "Port": 80}});
    register(&http, OTHER_HTTP, reg).await;
    assert_eq!(
        ips(&udp_at(OTHER_DNS, "api.service.example.", RecordType::A).await),
        vec!["10.9.9.9".parse::<IpAddr>().unwrap()],
        "DNS serves on the HTTP address's IP, port 8600, by default"
    );

    let (_dev, _) = start_dev_with(
        "127.0.0.1:19862",
        "127.0.0.1:19863",
        &["--dns-addr", "127.0.0.1:19864", "--recursor", DEAD, "--recursor", OTHER_DNS],
    )
    .await;
    let far = udp_at("127.0.0.1:19864", "api.service.example.", RecordType::A).await;
    assert_eq!(far.metadata.response_code, ResponseCode::NoError);
    assert!(far.metadata.recursion_available);
    assert_eq!(ips(&far), vec!["10.9.9.9".parse::<IpAddr>().unwrap()]);
    let unknown = udp_at("127.0.0.1:19864", "nope.service.example.", RecordType::A).await;
    assert_eq!(unknown.metadata.response_code, ResponseCode::NXDomain, "the recursor's answer, as it gave it");
    // Its own domain is still its own.
    let own = udp_at("127.0.0.1:19864", "nope.service.consul.", RecordType::A).await;
    assert_eq!(own.metadata.response_code, ResponseCode::NXDomain);
    assert!(own.metadata.authoritative);

    let (_lonely, _) =
        start_dev_with("127.0.0.1:19865", "127.0.0.1:19866", &["--dns-addr", "127.0.0.1:19867", "--recursor", DEAD])
            .await;
    let failed = udp_at("127.0.0.1:19867", "api.service.example.", RecordType::A).await;
    assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);

    // Another dev server on the same IP: the default DNS address is taken, so it serves without.
    let (_second, second_http) = start_dev_with("127.0.0.86:19870", "127.0.0.86:19871", &[]).await;
    let leader = second_http.get("http://127.0.0.86:19870/v1/status/leader").send().await.expect("second dev");
    assert!(leader.status().is_success());
    // Asking for the taken address explicitly is an error at start that names it.
    let out = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["dev", "--http-addr", "127.0.0.86:19872", "--rpc-addr", "127.0.0.86:19873", "--gossip-addr", "off"])
        .args(["--dns-addr", OTHER_DNS])
        .output()
        .expect("roster dev");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(OTHER_DNS), "{}", String::from_utf8_lossy(&out.stderr));
}

/// What applications see through a stub resolver: hickory's, pointed at the dev server. A service
/// wider than a UDP answer comes back whole (the resolver retries over TCP on the truncated answer),
/// and an unknown name is an error, not an empty success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hickorys_resolver_reads_the_answers() {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    const RES_HTTP: &str = "127.0.0.1:19875";
    let (_dev, http) = start_dev(RES_HTTP, "127.0.0.1:19876", "127.0.0.1:19877").await;
    for i in 1..=5 {
        let reg = serde_json::json!({"Node": format!("w{i}"), "Address": format!("10.2.0.{i}"),
                                     "Service": {"Service": "wide", "Port": 9000 + i}});
        register(&http, RES_HTTP, reg).await;
    }
    let connection = |mut c: ConnectionConfig| {
        c.port = 19877;
        c
    };
    let server = NameServerConfig::new(
        "127.0.0.1".parse().unwrap(),
        true,
        vec![connection(ConnectionConfig::udp()), connection(ConnectionConfig::tcp())],
    );
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    let resolver = hickory_resolver::Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![server]),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .expect("resolver");

    let srv = resolver.srv_lookup("wide.service.consul.").await.expect("SRV");
    let mut ports: Vec<u16> = srv
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            hickory_resolver::proto::rr::RData::SRV(s) => Some(s.port),
            _ => None,
        })
        .collect();
    ports.sort();
    assert_eq!(ports, [9001, 9002, 9003, 9004, 9005], "all 5, past the UDP limit of 3");
    let ips = resolver.lookup_ip("w2.node.consul.").await.expect("A");
    assert_eq!(ips.iter().collect::<Vec<_>>(), vec!["10.2.0.2".parse::<IpAddr>().unwrap()]);
    assert!(resolver.lookup_ip("nope.service.consul.").await.is_err(), "NXDOMAIN is an error");
}

/// Answers are filtered by the agent's default token, and what the token may read is in the next
/// answer after it changes: a policy edited, another default token set (answers are kept between
/// questions, so these must reach them as catalog changes do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_the_default_tokens_rights() {
    const ACL_HTTP: &str = "127.0.0.1:19880";
    const ACL_DNS: &str = "127.0.0.1:19883";
    const ROOT: &str = "9b0c6a4e-3c2d-4f8e-a1b2-c3d4e5f60718";
    let flags = ["--dns-addr", ACL_DNS, "--acl-enabled", "--acl-default-policy", "deny"];
    let (_dev, http) =
        start_dev_with(ACL_HTTP, "127.0.0.1:19881", &[&flags[..], &["--acl-initial-management", ROOT]].concat()).await;
    let put = |path: &str, body: serde_json::Value| {
        let req = http.put(format!("http://{ACL_HTTP}{path}")).header("X-Consul-Token", ROOT).json(&body);
        let path = path.to_string();
        async move {
            let r = req.send().await.expect(&path);
            let ok = r.status().is_success();
            let text = r.text().await.unwrap_or_default();
            assert!(ok, "{path}: {text}");
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default()
        }
    };
    // The leader creates the management token a moment after it answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    let root_works = || http.get(format!("http://{ACL_HTTP}/v1/acl/token/self")).header("X-Consul-Token", ROOT).send();
    while !root_works().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "the management token never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (node, svc, addr) in [("a", "web", "10.0.0.1"), ("b", "db", "10.0.0.2")] {
        let body = serde_json::json!({"Node": node, "Address": addr, "Service": {"Service": svc, "Port": 80}});
        put("/v1/catalog/register", body).await;
    }
    let srv = |name: &'static str| async move { udp_at(ACL_DNS, name, RecordType::SRV).await };
    let rules = |services: &[&str]| {
        let mut r = String::from("node_prefix \"\" { policy = \"read\" }\n");
        for s in services {
            r.push_str(&format!("service \"{s}\" {{ policy = \"read\" }}\n"));
        }
        r
    };
    let policy = put("/v1/acl/policy", serde_json::json!({"Name": "dns", "Rules": rules(&["web"])})).await;
    let token = put("/v1/acl/token", serde_json::json!({"Policies": [{"Name": "dns"}]})).await;
    let secret = token["SecretID"].as_str().expect("a secret").to_string();

    // No default token: anonymous, denied everything.
    assert_eq!(srv("web.service.consul.").await.metadata.response_code, ResponseCode::NXDomain);
    put("/v1/agent/token/default", serde_json::json!({"Token": secret})).await;
    assert_eq!(srv("web.service.consul.").await.answers.len(), 1, "web is readable with the default token");
    assert_eq!(srv("db.service.consul.").await.metadata.response_code, ResponseCode::NXDomain);

    let id = policy["ID"].as_str().expect("a policy ID");
    put(&format!("/v1/acl/policy/{id}"), serde_json::json!({"Name": "dns", "Rules": rules(&["web", "db"])})).await;
    assert_eq!(srv("db.service.consul.").await.answers.len(), 1, "the edited policy reads db");

    let other = put("/v1/acl/policy", serde_json::json!({"Name": "web-only", "Rules": rules(&["web"])})).await;
    let other = put("/v1/acl/token", serde_json::json!({"Policies": [{"ID": other["ID"]}]})).await;
    put("/v1/agent/token/default", serde_json::json!({"Token": other["SecretID"]})).await;
    assert_eq!(srv("db.service.consul.").await.metadata.response_code, ResponseCode::NXDomain, "another token");
    assert_eq!(srv("web.service.consul.").await.answers.len(), 1);
}
