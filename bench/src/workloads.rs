//! The workloads. Each runs Roster first, then etcd, with the same load-generator code, and returns
//! one report section. Every loop is bounded by a count and a time.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use crate::load::{self, Hist, LoadSpec, LoadStats};
use crate::report::{Better, Section};
use crate::target::{Etcd, Read, Roster, Route, Target, PREFIX};

/// Counts and durations of one run (full or `--smoke`).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub smoke: bool,
    pub key_size: usize,
    pub value_size: usize,
    #[serde(serialize_with = "secs")]
    pub put1_duration: Duration,
    pub put_clients: usize,
    #[serde(serialize_with = "secs")]
    pub put_duration: Duration,
    /// Puts cycle over this many distinct keys (bounded state; see the README).
    pub put_keys: u64,
    pub get_keys: u64,
    pub get_clients: usize,
    #[serde(serialize_with = "secs")]
    pub get_duration: Duration,
    pub catalog_instances: u64,
    pub catalog_clients: usize,
    pub catalog_read_clients: usize,
    /// Clients of the 100-instance read over HTTP and DNS (resolvers are many: enough in flight to
    /// load the server rather than wait on round trips).
    pub dns_clients: usize,
    #[serde(serialize_with = "secs")]
    pub catalog_read_duration: Duration,
    pub watchers: Vec<usize>,
    pub service_watchers: usize,
    pub mem_keys: u64,
    pub mem_clients: usize,
    /// Pause before reading RSS, so allocations in flight settle.
    #[serde(serialize_with = "secs")]
    pub settle: Duration,
}

/// Durations in results.json as plain seconds.
fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// "1 client", "20 clients".
pub fn clients(n: usize) -> String {
    format!("{n} client{}", if n == 1 { "" } else { "s" })
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            smoke: false,
            key_size: 256,
            value_size: 1024,
            put1_duration: Duration::from_secs(10),
            put_clients: 500,
            put_duration: Duration::from_secs(60),
            put_keys: 10_000,
            get_keys: 1_000,
            get_clients: 256,
            get_duration: Duration::from_secs(10),
            catalog_instances: 10_000,
            catalog_clients: 64,
            catalog_read_clients: 16,
            dns_clients: 64,
            catalog_read_duration: Duration::from_secs(10),
            watchers: vec![1_000, 10_000],
            service_watchers: 1_000,
            mem_keys: 100_000,
            mem_clients: 64,
            settle: Duration::from_secs(2),
        }
    }

    pub fn smoke() -> Plan {
        Plan {
            smoke: true,
            put1_duration: Duration::from_secs(1),
            put_clients: 20,
            put_duration: Duration::from_secs(1),
            put_keys: 500,
            get_keys: 100,
            get_clients: 20,
            get_duration: Duration::from_secs(1),
            catalog_instances: 200,
            catalog_clients: 16,
            catalog_read_clients: 4,
            dns_clients: 4,
            catalog_read_duration: Duration::from_secs(1),
            watchers: vec![50],
            service_watchers: 50,
            mem_keys: 500,
            mem_clients: 16,
            settle: Duration::from_millis(300),
            ..Plan::full()
        }
    }
}

/// The systems under test; etcd is absent only in `--smoke --allow-no-etcd`.
pub struct Systems {
    pub roster: Arc<Roster>,
    pub etcd: Option<Arc<Etcd>>,
}

/// Fixed-size, URL-safe key: `bench/<kind>/<i>` padded to `size` bytes.
fn key_name(kind: &str, i: u64, size: usize) -> String {
    let mut k = format!("{PREFIX}{kind}/{i:010}");
    while k.len() < size {
        k.push('_');
    }
    k
}

/// A generous bound for count-bounded loads (preloading, registration): they end by count, not by time.
const LOAD_TIME_BOUND: Duration = Duration::from_secs(600);

/// Puts `plan.value_size`-byte values to keys cycling over `plan.put_keys` distinct keys, then cleans up.
async fn kv_put<T: Target>(t: &Arc<T>, plan: &Plan, spec: LoadSpec, route: Route, kind: &str) -> Result<LoadStats> {
    t.refresh_leader().await?;
    let value = Arc::new(vec![b'v'; plan.value_size]);
    let (keys, key_size, kind, target) = (plan.put_keys, plan.key_size, kind.to_string(), t.clone());
    let stats = load::run(spec, move |http, worker, seq| {
        let (t, value, key) = (target.clone(), value.clone(), key_name(&kind, seq % keys, key_size));
        async move { t.put(&http, t.addr(route, worker), &key, &value).await }
    })
    .await?;
    t.reset().await.with_context(|| format!("cleaning {} up", t.name()))?;
    Ok(stats)
}

/// Awaits `$body` with `$t` bound to the Roster target, then to the etcd one when there is one: the
/// same generic code drives both, in that order.
macro_rules! both {
    ($sys:expr, |$t:ident| $body:expr) => {{
        let r = {
            let $t = &$sys.roster;
            $body.await?
        };
        let e = match &$sys.etcd {
            Some($t) => Some($body.await?),
            None => None,
        };
        (r, e)
    }};
}

pub async fn put1(plan: &Plan, sys: &Systems) -> Result<Section> {
    let d = plan.put1_duration;
    let mut s = Section::new(
        "put1",
        format!("1. KV put, 1 client, sequential, {} B keys, {} B values, {d:?}", plan.key_size, plan.value_size),
    );
    let spec = LoadSpec { clients: 1, duration: d, max_ops: 10_000_000, warmup: true };
    let (r, e) = both!(sys, |t| kv_put(t, plan, spec, Route::Leader, "put1"));
    s.load("leader", "to the leader", Some(&r), e.as_ref(), Some("put\n1 client"));
    Ok(s)
}

pub async fn put_many(plan: &Plan, sys: &Systems) -> Result<Section> {
    let (c, d) = (plan.put_clients, plan.put_duration);
    let mut s = Section::new(
        "put500",
        format!("2. KV put, {c} clients, {} B keys, {} B values, {d:?}", plan.key_size, plan.value_size),
    );
    let spec = LoadSpec { clients: c, duration: d, max_ops: u64::MAX, warmup: true };
    let (r, e) = both!(sys, |t| kv_put(t, plan, spec, Route::Leader, "putn"));
    s.load("leader", "to the leader", Some(&r), e.as_ref(), Some(&format!("put\n{}", clients(c))));
    let (r, e) = both!(sys, |t| kv_put(t, plan, spec, Route::Spread, "putn"));
    s.load("spread", "spread over 3 servers", Some(&r), e.as_ref(), Some(&format!("put {}\nspread", clients(c))));
    s.note(format!("keys cycle over {} distinct keys; followers forward writes to the leader", plan.put_keys));
    Ok(s)
}

/// Writes `count` keys `bench/<kind>/<i>` with `clients` clients (count-bounded).
async fn preload<T: Target>(
    t: &Arc<T>,
    kind: &str,
    count: u64,
    key_size: usize,
    value_size: usize,
    clients: usize,
) -> Result<LoadStats> {
    t.refresh_leader().await?;
    let value = Arc::new(vec![b'v'; value_size]);
    let (kind, target) = (kind.to_string(), t.clone());
    let spec = LoadSpec { clients, duration: LOAD_TIME_BOUND, max_ops: count, warmup: false };
    let stats = load::run(spec, move |http, _, seq| {
        let (t, value, key) = (target.clone(), value.clone(), key_name(&kind, seq, key_size));
        async move { t.put(&http, t.addr(Route::Leader, 0), &key, &value).await }
    })
    .await?;
    ensure!(stats.errors == 0, "{}: preloading had {} errors: {:?}", t.name(), stats.errors, stats.first_error);
    Ok(stats)
}

async fn kv_get<T: Target>(t: &Arc<T>, plan: &Plan, clients: usize, read: Read) -> Result<LoadStats> {
    t.refresh_leader().await?;
    let route = if read == Read::Stale { Route::Spread } else { Route::Leader };
    let (keys, key_size, target) = (plan.get_keys, plan.key_size, t.clone());
    let spec = LoadSpec { clients, duration: plan.get_duration, max_ops: u64::MAX, warmup: true };
    load::run(spec, move |http, worker, seq| {
        let (t, key) = (target.clone(), key_name("get", seq % keys, key_size));
        async move { t.get(&http, t.addr(route, worker), &key, read).await }
    })
    .await
}

pub async fn get(plan: &Plan, sys: &Systems) -> Result<Section> {
    let (n, d) = (plan.get_clients, plan.get_duration);
    let mut s = Section::new(
        "get",
        format!("3. KV get, 1 and {n} clients, {} preloaded keys of {} B, {d:?}", plan.get_keys, plan.value_size),
    );
    let (kb, vb, k) = (plan.key_size, plan.value_size, plan.get_keys);
    both!(sys, |t| preload(t, "get", k, kb, vb, 16));
    let mut etcd_default = Vec::new();
    for (read, id, label) in [(Read::Default, "default", "linearizable"), (Read::Stale, "stale", "stale")] {
        for clients in [1, n] {
            let (r, e) = both!(sys, |t| kv_get(t, plan, clients, read));
            let chart = format!("get {label}\n{}", self::clients(clients));
            s.load(&format!("{id}.{clients}c"), &format!("{label}, {clients}c"), Some(&r), e.as_ref(), Some(&chart));
            if read == Read::Default {
                etcd_default.push(e);
            }
        }
    }
    // Roster's default read skips the leadership check (as Consul's does); ?consistent does it, which
    // is what etcd's default linearizable read (ReadIndex) pays for. Compared with etcd's default run.
    for (clients, e) in [1, n].into_iter().zip(etcd_default) {
        let r = kv_get(&sys.roster, plan, clients, Read::Consistent).await?;
        let label = format!("?consistent vs linearizable, {clients}c");
        let chart = format!("get ?consistent\nvs linearizable\n{}", self::clients(clients));
        s.load(&format!("consistent.{clients}c"), &label, Some(&r), e.as_ref(), Some(&chart));
    }
    sys.roster.reset().await?;
    if let Some(e) = &sys.etcd {
        e.reset().await?;
    }
    s.note("linearizable = Roster's default read (leader, no quorum check, as Consul) vs etcd's default (ReadIndex)");
    s.note("?consistent = Roster confirms leadership per read, compared with the same etcd linearizable run");
    s.note("stale = Roster ?stale vs etcd serializable, spread over the 3 servers; the others go to the leader");
    Ok(s)
}

fn register_body(i: u64) -> serde_json::Value {
    serde_json::json!({
        "Node": format!("n{i}"),
        "Address": format!("10.0.{}.{}", i / 256, i % 256),
        "Service": { "Service": "bench", "ID": format!("bench-{i}"), "Port": 8080 },
        "Check": { "CheckID": format!("c{i}"), "Name": "c", "Status": "passing", "ServiceID": format!("bench-{i}") },
    })
}

async fn catalog_register(http: &reqwest::Client, addr: &str, body: &serde_json::Value) -> Result<()> {
    let resp = http.put(format!("http://{addr}/v1/catalog/register")).json(body).send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    ensure!(status.is_success() && text.trim() == "true", "catalog register: {status}: {text}");
    Ok(())
}

/// Number of entries in `GET /v1/health/service/<name>?passing`.
async fn passing_count(http: &reqwest::Client, addr: &str, name: &str) -> Result<usize> {
    let resp = http.get(format!("http://{addr}/v1/health/service/{name}?passing")).send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    ensure!(status.is_success(), "health service: {status}");
    let list: Vec<serde::de::IgnoredAny> = serde_json::from_slice(&body).context("decoding health service")?;
    Ok(list.len())
}

pub async fn catalog(plan: &Plan, sys: &Systems) -> Result<Section> {
    let n = plan.catalog_instances;
    let mut s = Section::new("catalog", format!("4. Catalog (Roster only): {n} instances of one service"));
    let roster = sys.roster.clone();
    roster.refresh_leader().await?;
    let leader = roster.addr(Route::Leader, 0).to_string();
    let started = Instant::now();
    let spec = LoadSpec { clients: plan.catalog_clients, duration: LOAD_TIME_BOUND, max_ops: n, warmup: false };
    let addr = leader.clone();
    let reg = load::run(spec, move |http, _, i| {
        let addr = addr.clone();
        async move { catalog_register(&http, &addr, &register_body(i)).await }
    })
    .await?;
    let registered = started.elapsed();
    // Bounded wait until every instance shows up as passing.
    let ctl = roster.ctl().clone();
    let mut seen = 0;
    while started.elapsed() < registered + Duration::from_secs(60) {
        seen = passing_count(&ctl, &leader, "bench").await?;
        if seen as u64 >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let visible = started.elapsed();
    if (seen as u64) < n {
        s.note(format!("only {seen} of {n} instances visible after waiting 60 s"));
    }
    s.load("register", &format!("register, {}c", plan.catalog_clients), Some(&reg), None, None);
    s.row("visible_s", "all instances visible (passing)", "s", Better::Lower, Some(visible.as_secs_f64()), None);
    for clients in [1, plan.catalog_read_clients] {
        let spec = LoadSpec { clients, duration: plan.catalog_read_duration, max_ops: u64::MAX, warmup: true };
        let (addr, expect) = (leader.clone(), seen);
        let r = load::run(spec, move |http, _, _| {
            let addr = addr.clone();
            async move {
                let got = passing_count(&http, &addr, "bench").await?;
                ensure!(got == expect, "health service answered {got} instances, expected {expect}");
                Ok(())
            }
        })
        .await?;
        let label = format!("health/service?passing, {clients}c");
        s.load(&format!("health.{clients}c"), &label, Some(&r), None, None);
    }
    dns_vs_http(plan, &ctl, &leader, &mut s).await?;
    Ok(s)
}

/// A 100-instance service read as a resolver reads it (SRV over UDP: at most udp_answer_limit
/// records, marked truncated; over TCP: every instance) beside the HTTP `?passing` read of it.
async fn dns_vs_http(plan: &Plan, ctl: &reqwest::Client, leader: &str, s: &mut Section) -> Result<()> {
    const INSTANCES: usize = 100;
    for i in 0..INSTANCES as u64 {
        let mut body = register_body(i);
        body["Node"] = format!("dns-{i}").into();
        body["Service"]["Service"] = "dns".into();
        catalog_register(ctl, leader, &body).await?;
    }
    ensure!(passing_count(ctl, leader, "dns").await? == INSTANCES, "the 100 DNS instances are not all passing");
    let dns = {
        let http: SocketAddr = leader.parse().context("the leader's HTTP address")?;
        crate::cluster::dns_addr(&crate::cluster::Member { http, peer: http })
    };
    let clients = plan.dns_clients;
    let spec = || LoadSpec { clients, duration: plan.catalog_read_duration, max_ops: u64::MAX, warmup: true };
    let addr = leader.to_string();
    let r = load::run(spec(), move |http, _, _| {
        let addr = addr.clone();
        async move {
            let got = passing_count(&http, &addr, "dns").await?;
            ensure!(got == INSTANCES, "health service answered {got} instances, expected {INSTANCES}");
            Ok(())
        }
    })
    .await?;
    s.load(&format!("dns.http.{clients}c"), &format!("100 instances: HTTP ?passing, {clients}c"), Some(&r), None, None);
    // One UDP socket per client, as a resolver keeps one: the clients measure the server, not
    // their own socket set-up.
    let mut sockets = Vec::with_capacity(clients);
    for _ in 0..clients {
        let socket = tokio::net::UdpSocket::bind(SocketAddr::new(dns.ip(), 0)).await?;
        socket.connect(dns).await?;
        sockets.push(socket);
    }
    let sockets = std::sync::Arc::new(sockets);
    // Encoded once: per question only its ID changes (the harness shares the cores it measures).
    let query = std::sync::Arc::new(srv_query("dns.service.consul.")?);
    for tcp in [false, true] {
        let want = if tcp { INSTANCES } else { 3 };
        let (sockets, query) = (sockets.clone(), query.clone());
        let r = load::run(spec(), move |_, worker, seq| {
            let (sockets, query) = (sockets.clone(), query.clone());
            async move {
                let socket = if tcp { None } else { sockets.get(worker) };
                let got = dns_srv(dns, socket, &query, seq as u16).await?;
                ensure!(got == want, "DNS answered {got} SRV records, expected {want}");
                Ok(())
            }
        })
        .await?;
        let proto = if tcp { "tcp" } else { "udp" };
        s.load(
            &format!("dns.{proto}.{clients}c"),
            &format!("100 instances: DNS SRV/{proto}, {clients}c"),
            Some(&r),
            None,
            None,
        );
    }
    // The same number of questions in flight, over 4 sockets batching their system calls as a load
    // tool or a forwarding resolver does: the server's rate rather than the harness's.
    let sockets = clients.clamp(1, 4);
    let r =
        crate::dns_load::udp_in_flight(dns, &query, sockets, clients / sockets, plan.catalog_read_duration, 3).await?;
    s.load(
        &format!("dns.udp.batched.{clients}"),
        &format!("100 instances: DNS SRV/udp, {clients} in flight on {sockets} sockets"),
        Some(&r),
        None,
        None,
    );
    Ok(())
}

/// An SRV question for `name`, encoded (ID 0).
fn srv_query(name: &str) -> Result<Vec<u8>> {
    use registry::dns::proto::op::{Message, MessageType, OpCode, Query};
    use registry::dns::proto::rr::{Name, RecordType};
    let mut m = Message::new(0, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name)?, RecordType::SRV));
    Ok(m.to_vec()?)
}

/// One SRV question (`query`, sent with ID `id`) to `server`, over the UDP socket given
/// (connected to it), else over TCP; the number of SRV records answered.
async fn dns_srv(server: SocketAddr, udp: Option<&tokio::net::UdpSocket>, query: &[u8], id: u16) -> Result<usize> {
    use registry::dns::proto::op::Message;
    use registry::dns::proto::rr::RData;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut packet = query.to_vec();
    packet[..2].copy_from_slice(&id.to_be_bytes());
    let msg = match udp {
        None => {
            let mut stream = tokio::net::TcpStream::connect(server).await?;
            stream.write_all(&(packet.len() as u16).to_be_bytes()).await?;
            stream.write_all(&packet).await?;
            let len = stream.read_u16().await? as usize;
            let mut buf = vec![0u8; len];
            stream.read_exact(&mut buf).await?;
            Message::from_vec(&buf)?
        }
        Some(socket) => {
            socket.send(&packet).await?;
            let mut buf = [0u8; 1500];
            // A late answer to an earlier, timed-out question is skipped.
            loop {
                let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await??;
                let m = Message::from_vec(&buf[..n])?;
                if m.metadata.id == id {
                    break m;
                }
            }
        }
    };
    ensure!(msg.metadata.id == id, "answer to another question");
    Ok(msg.answers.iter().filter(|r| matches!(r.data, RData::SRV(_))).count())
}

/// One round of watchers: how long after the write's acknowledgement each watcher heard of it.
#[derive(Debug, Clone, Serialize)]
pub struct WatchStats {
    pub watchers: usize,
    pub answered: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    /// Answers that arrived before the writer got its acknowledgement (counted as 0 ms).
    pub before_ack: usize,
    /// The last answer, measured from the moment the write was sent rather than acknowledged.
    pub max_from_send_ms: f64,
    /// Answers re-issued because the index had not moved (timeouts or spurious wake-ups).
    pub reissued: u64,
    pub register_s: f64,
    pub write_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub bytes_per_watcher: f64,
    /// CPU used from the write until the last answer (10 ms resolution): by this harness, which
    /// shares the cores, and by the three servers together.
    pub harness_cpu_ms: u64,
    pub servers_cpu_ms: u64,
}

/// Watchers are opened in batches, each batch confirmed registered before the next: thousands of
/// simultaneous connects would overflow the listen backlog and time SYN retries instead.
const WATCH_BATCH: usize = 200;

/// `open(i)` starts watcher `i`; `registered()` counts watchers the servers hold; `write()` makes the
/// change. Generic over how a system watches, so Roster's KV and service rounds and etcd share it.
async fn watch_round<O, OF, R, RF, W, WF>(
    n: usize,
    pids: &[u32],
    open: O,
    registered: R,
    write: W,
) -> Result<WatchStats>
where
    O: Fn(usize) -> OF,
    OF: std::future::Future<Output = Result<crate::target::WatchAnswer>> + Send + 'static,
    R: Fn() -> RF,
    RF: std::future::Future<Output = Result<usize>>,
    W: FnOnce() -> WF,
    WF: std::future::Future<Output = Result<()>>,
{
    let rss = |pids: &[u32]| -> Result<u64> { pids.iter().map(|p| crate::cluster::rss_kib(*p)).sum() };
    let base = registered().await?;
    let rss_before = rss(pids)?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let (mut errors, mut first_error, mut early) = (0usize, None::<String>, 0usize);
    let deadline = started + Duration::from_secs(45);
    for batch_start in (0..n).step_by(WATCH_BATCH) {
        for i in batch_start..(batch_start + WATCH_BATCH).min(n) {
            tasks.spawn(open(i));
        }
        let want = (batch_start + WATCH_BATCH).min(n);
        loop {
            // A watcher that ends before the write is a failure (connection refused, error answer).
            while let Some(done) = tasks.try_join_next() {
                early += 1;
                let e = match done {
                    Ok(Ok(_)) => anyhow::anyhow!("a watcher answered before the write"),
                    Ok(Err(e)) => e,
                    Err(e) => e.into(),
                };
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            let held = registered().await?.saturating_sub(base);
            if held + early >= want {
                break;
            }
            if Instant::now() > deadline {
                bail!("only {held} of {want} watchers registered after 45 s (first error: {first_error:?})");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let register_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_after = rss(pids)?;
    let cpu = |pids: &[u32]| -> Result<u64> { pids.iter().map(|p| crate::cluster::cpu_ms(*p)).sum() };
    let me = [std::process::id()];
    let (harness_cpu, servers_cpu) = (cpu(&me)?, cpu(pids)?);
    let sent = Instant::now();
    write().await.context("the watched write")?;
    let acked = Instant::now();
    let (mut hist, mut answered, mut before_ack, mut reissued) = (Hist::new(), 0, 0, 0u64);
    let mut last = sent;
    let collect = async {
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(a)) => {
                    answered += 1;
                    reissued += u64::from(a.reissued);
                    if a.at < acked {
                        before_ack += 1;
                    }
                    last = last.max(a.at);
                    hist.record(a.at.saturating_duration_since(acked));
                }
                Ok(Err(e)) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), collect).await.is_err() {
        first_error.get_or_insert_with(|| "some watchers had no answer 30 s after the write".into());
    }
    let (harness_cpu, servers_cpu) = (cpu(&me)?.saturating_sub(harness_cpu), cpu(pids)?.saturating_sub(servers_cpu));
    tasks.abort_all();
    let missing = n.saturating_sub(answered + errors);
    Ok(WatchStats {
        watchers: n,
        answered,
        errors: errors + missing,
        first_error,
        before_ack,
        max_from_send_ms: last.duration_since(sent).as_secs_f64() * 1000.0,
        reissued,
        register_s,
        write_ms: acked.duration_since(sent).as_secs_f64() * 1000.0,
        p50_ms: hist.ms(50.0),
        p99_ms: hist.ms(99.0),
        max_ms: hist.max_ms(),
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        bytes_per_watcher: (rss_after as f64 - rss_before as f64) * 1024.0 / n.max(1) as f64,
        harness_cpu_ms: harness_cpu,
        servers_cpu_ms: servers_cpu,
    })
}

/// A client for watchers: one connection per in-flight request, all kept (HTTP/1.1).
fn watcher_client(n: usize) -> Result<reqwest::Client> {
    registry::client::http_builder()
        .http1_only()
        .pool_max_idle_per_host(n)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .build()
        .context("building the watchers' HTTP client")
}

async fn kv_watch<T: Target>(t: &Arc<T>, n: usize) -> Result<WatchStats> {
    t.refresh_leader().await?;
    let key = format!("{PREFIX}watch/{n}");
    let ctl = watcher_client(4)?;
    t.put(&ctl, t.addr(Route::Leader, 0), &key, b"0").await?;
    let from = t.watch_from(&key).await?;
    let http = watcher_client(n)?;
    let confirmed = Arc::new(AtomicUsize::new(0));
    let open = |i: usize| {
        let (t, http, key, confirmed) = (t.clone(), http.clone(), key.clone(), confirmed.clone());
        async move { t.watch(&http, t.addr(Route::Spread, i), &key, from, &confirmed).await }
    };
    let registered = || t.watchers(&confirmed);
    let write = || t.put(&ctl, t.addr(Route::Leader, 0), &key, b"1");
    let stats = watch_round(n, t.pids(), open, registered, write).await;
    t.reset().await?;
    stats
}

async fn service_watch(roster: &Arc<Roster>, n: usize) -> Result<WatchStats> {
    roster.refresh_leader().await?;
    let leader = roster.addr(Route::Leader, 0).to_string();
    let ctl = roster.ctl().clone();
    // A small service of its own: watchers of a 10,000-instance answer would time the JSON, not the wake-up.
    let instance = |i: u64| {
        let mut b = register_body(1_000_000 + i);
        b["Service"]["Service"] = "bench-watch".into();
        b
    };
    for i in 0..10 {
        catalog_register(&ctl, &leader, &instance(i)).await?;
    }
    let from = roster.index("/v1/health/service/bench-watch").await?;
    let http = watcher_client(n)?;
    let open = |i: usize| {
        let (r, http) = (roster.clone(), http.clone());
        async move {
            let path = "/v1/health/service/bench-watch?stale";
            Roster::blocking_get(&http, r.addr(Route::Spread, i), path, from).await
        }
    };
    let unused = AtomicUsize::new(0);
    let registered = || roster.watchers(&unused);
    let change = instance(10);
    let write = || catalog_register(&ctl, &leader, &change);
    watch_round(n, roster.pids(), open, registered, write).await
}

/// A leader-election client watching its one key while other keys change: how often it wakes.
#[derive(Debug, Clone, Serialize)]
pub struct QuietWatch {
    pub seconds: f64,
    pub other_keys_per_second: u64,
    /// Times the watch answered although the watched key never changed (each one costs the client
    /// a read and a new request; against Consul the count is 0).
    pub wakeups: u64,
    pub servers_cpu_ms: u64,
}

async fn quiet_watch<T: Target>(t: &Arc<T>, window: Duration, others: u64) -> Result<QuietWatch> {
    t.refresh_leader().await?;
    let key = format!("{PREFIX}quiet/leader");
    let ctl = watcher_client(4)?;
    let leader = t.addr(Route::Leader, 0).to_string();
    t.put(&ctl, &leader, &key, b"me").await?;
    let cpu = |pids: &[u32]| -> Result<u64> { pids.iter().map(|p| crate::cluster::cpu_ms(*p)).sum() };
    let cpu_before = cpu(t.pids())?;
    let until = Instant::now() + window;
    let churn = {
        let (t, ctl, leader) = (t.clone(), ctl.clone(), leader.clone());
        tokio::spawn(async move {
            let mut second = 0u64;
            while Instant::now() < until {
                for i in 0..others {
                    let _ = t.put(&ctl, &leader, &format!("{PREFIX}quiet/other/{i}"), &second.to_be_bytes()).await;
                }
                second += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    // As a leader-election client does: read the key's index, watch from it, and on every answer
    // read and watch again.
    let http = watcher_client(1)?;
    let unused = AtomicUsize::new(0);
    let mut wakeups = 0u64;
    while Instant::now() < until {
        let from = t.watch_from(&key).await?;
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, t.watch(&http, &leader, &key, from, &unused)).await {
            Ok(answer) => wakeups += 1 + u64::from(answer.map_or(0, |a| a.reissued)),
            Err(_) => break,
        }
    }
    churn.await?;
    let servers_cpu_ms = cpu(t.pids())?.saturating_sub(cpu_before);
    t.reset().await?;
    Ok(QuietWatch { seconds: window.as_secs_f64(), other_keys_per_second: others, wakeups, servers_cpu_ms })
}

pub async fn watch(plan: &Plan, sys: &Systems) -> Result<Section> {
    let mut s = Section::new("watch", "5. Blocking queries (Roster) / watches (etcd) on one key, then one write");
    let (window, others) = if plan.smoke { (Duration::from_secs(2), 10) } else { (Duration::from_secs(10), 100) };
    let (r, e) = both!(sys, |t| quiet_watch(t, window, others));
    let label = format!("1 client on a quiet key, {others} other keys written every second for {}s", window.as_secs());
    type Get = fn(&QuietWatch) -> f64;
    let figures: [(&str, &str, &str, Get); 2] = [
        ("wakeups", "wake-ups", "answers", |q| q.wakeups as f64),
        ("servers_cpu_ms", "servers' CPU", "ms", |q| q.servers_cpu_ms as f64),
    ];
    for (id, name, unit, get) in figures {
        s.row(
            &format!("quiet.{id}"),
            &format!("{label}: {name}"),
            unit,
            Better::Lower,
            Some(get(&r)),
            e.as_ref().map(get),
        );
    }
    s.raw("quiet", Some(&r), e.as_ref());
    for &n in &plan.watchers {
        let (r, e) = both!(sys, |t| kv_watch(t, n));
        watch_rows(&mut s, &format!("kv.{n}"), &format!("{n} on a KV key"), Some(&r), e.as_ref());
    }
    let n = plan.service_watchers;
    let r = service_watch(&sys.roster, n).await?;
    watch_rows(&mut s, &format!("service.{n}"), &format!("{n} on a service"), Some(&r), None);
    s.note(
        "latency = watcher's answer - write acknowledged (0 if before); Roster watchers use ?stale on all 3 servers",
    );
    s.note(
        "\"on a service\": Roster only, blocking GET /v1/health/service/bench-watch, the write registers an instance",
    );
    Ok(s)
}

fn watch_rows(s: &mut Section, id: &str, label: &str, r: Option<&WatchStats>, e: Option<&WatchStats>) {
    type Get = fn(&WatchStats) -> f64;
    let figures: [(&str, &str, &str, Better, Get); 8] = [
        ("p50_ms", "p50 ms", "ms", Better::Lower, |w| w.p50_ms),
        ("p99_ms", "p99 ms", "ms", Better::Lower, |w| w.p99_ms),
        ("max_ms", "last answer ms", "ms", Better::Lower, |w| w.max_ms),
        ("before_ack", "answered before ack", "watchers", Better::Info, |w| w.before_ack as f64),
        ("bytes_per_watcher", "RSS per watcher", "B", Better::Lower, |w| w.bytes_per_watcher),
        ("register_s", "time to register", "s", Better::Lower, |w| w.register_s),
        ("servers_cpu_ms", "servers' CPU, write to last", "ms", Better::Lower, |w| w.servers_cpu_ms as f64),
        ("harness_cpu_ms", "harness CPU, write to last", "ms", Better::Info, |w| w.harness_cpu_ms as f64),
    ];
    for (fid, name, unit, better, get) in figures {
        s.row(&format!("{id}.{fid}"), &format!("{label}: {name}"), unit, better, r.map(get), e.map(get));
    }
    for (name, w) in [("Roster", r), ("etcd", e)] {
        if let Some(w) = w {
            if w.errors > 0 {
                s.errors += w.errors as u64;
                s.note(format!(
                    "{label}: {name}: {} of {} watchers failed (first: {:?})",
                    w.errors, w.watchers, w.first_error
                ));
            }
            if w.reissued > 0 {
                s.note(format!("{label}: {name}: {} blocking queries re-issued (answer without a change)", w.reissued));
            }
        }
    }
    s.raw(id, r, e);
}

#[derive(Debug, Clone, Serialize)]
pub struct MemStats {
    pub keys: u64,
    pub idle_sum_kib: u64,
    pub idle_leader_kib: u64,
    pub loaded_sum_kib: u64,
    pub loaded_leader_kib: u64,
    pub load: LoadStats,
}

async fn memory_of<T: Target>(t: &Arc<T>, plan: &Plan) -> Result<MemStats> {
    t.refresh_leader().await?;
    let (idle_sum, idle_leader) = t.rss_kib()?;
    let load = preload(t, "mem", plan.mem_keys, 0, plan.value_size, plan.mem_clients).await?;
    tokio::time::sleep(plan.settle).await;
    let (loaded_sum, loaded_leader) = t.rss_kib()?;
    Ok(MemStats {
        keys: plan.mem_keys,
        idle_sum_kib: idle_sum,
        idle_leader_kib: idle_leader,
        loaded_sum_kib: loaded_sum,
        loaded_leader_kib: loaded_leader,
        load,
    })
}

pub async fn memory(plan: &Plan, sys: &Systems) -> Result<Section> {
    let k = plan.mem_keys;
    let mut s = Section::new(
        "memory",
        format!("6. Memory: RSS after loading {k} keys of {} B (fresh clusters)", plan.value_size),
    );
    let (r, e) = both!(sys, |t| memory_of(t, plan));
    let mib = |kib: u64| kib as f64 / 1024.0;
    let (r, e) = (Some(&r), e.as_ref());
    s.row(
        "idle.sum_mib",
        "idle, sum of 3 servers",
        "MiB",
        Better::Lower,
        r.map(|m| mib(m.idle_sum_kib)),
        e.map(|m| mib(m.idle_sum_kib)),
    );
    s.row(
        "loaded.sum_mib",
        "loaded, sum of 3 servers",
        "MiB",
        Better::Lower,
        r.map(|m| mib(m.loaded_sum_kib)),
        e.map(|m| mib(m.loaded_sum_kib)),
    );
    s.row(
        "loaded.leader_mib",
        "loaded, leader",
        "MiB",
        Better::Lower,
        r.map(|m| mib(m.loaded_leader_kib)),
        e.map(|m| mib(m.loaded_leader_kib)),
    );
    let per_key =
        |m: &MemStats| (m.loaded_leader_kib as f64 - m.idle_leader_kib as f64) * 1024.0 / m.keys.max(1) as f64;
    s.row("loaded.leader_bytes_per_key", "leader growth per key", "B", Better::Lower, r.map(per_key), e.map(per_key));
    let ops = |m: &MemStats| m.load.ops_per_s;
    s.row(
        "load.ops_per_s",
        &format!("loading, {} clients", plan.mem_clients),
        "ops/s",
        Better::Higher,
        r.map(ops),
        e.map(ops),
    );
    s.raw("memory", r, e);
    Ok(s)
}
