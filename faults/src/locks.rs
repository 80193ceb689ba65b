//! Lock workload: clients with sessions contend for one key with `?acquire=` / `?release=`, while the
//! harness destroys the holder's session now and then and kills or pauses the leader. The history
//! goes to [`crate::lock::check`].
//!
//! Sessions are created with an explicit empty check list, so that only the harness's destroys
//! invalidate them: the checker then knows the earliest moment of every invalidation (the destroy's
//! invocation), which the lock-delay check needs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;
use crate::lock::{self, LockEvent, LockHistory, LockViolation};

pub const LOCK_DELAY: Duration = Duration::from_secs(5);

struct Shared {
    servers: Vec<String>,
    base: Instant,
    key: String,
    stop: AtomicBool,
    /// Acquire attempts recorded.
    done: AtomicUsize,
    events: Mutex<Vec<LockEvent>>,
    /// The session each client uses now (None while it makes a new one).
    sessions: Mutex<Vec<Option<String>>>,
}

impl Shared {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
    fn record(&self, e: LockEvent) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }
}

#[derive(Debug, Default)]
pub struct LockSummary {
    pub attempts: usize,
    pub acquired: usize,
    pub unknown: usize,
    pub invalidations: usize,
    pub faults: Vec<String>,
    pub violations: Vec<LockViolation>,
    pub elapsed: Duration,
}

async fn put(http: &reqwest::Client, url: String, body: String) -> Option<Option<bool>> {
    // Some(Some(b)): answered true/false; Some(None): unknown outcome; None: never sent.
    match http.put(url).body(body).send().await {
        Err(e) if e.is_connect() => None,
        Err(_) => Some(None),
        Ok(r) if r.status().is_success() => match r.text().await {
            Ok(t) if t.trim() == "true" => Some(Some(true)),
            Ok(t) if t.trim() == "false" => Some(Some(false)),
            _ => Some(None),
        },
        Ok(_) => Some(None),
    }
}

async fn create_session(http: &reqwest::Client, shared: &Shared, rng: &mut StdRng) -> String {
    let body = format!(r#"{{"Name":"faults-lock","LockDelay":"{}s","Checks":[]}}"#, LOCK_DELAY.as_secs());
    loop {
        let server = &shared.servers[rng.random_range(0..shared.servers.len())];
        if let Ok(r) = http.put(format!("http://{server}/v1/session/create")).body(body.clone()).send().await {
            if r.status().is_success() {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if let Some(id) = v.get("ID").and_then(serde_json::Value::as_str) {
                        return id.to_string();
                    }
                }
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            return String::new();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn client(id: u32, shared: Arc<Shared>, seed: u64) {
    let http = registry::client::http_builder().timeout(Duration::from_secs(3)).build().expect("http client");
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(u64::from(id) * 7_919));
    while !shared.stop.load(Ordering::SeqCst) {
        let current = shared.sessions.lock().unwrap_or_else(|p| p.into_inner())[id as usize].clone();
        let session = match current {
            Some(s) => s,
            None => {
                let s = create_session(&http, &shared, &mut rng).await;
                shared.sessions.lock().unwrap_or_else(|p| p.into_inner())[id as usize] = Some(s.clone());
                s
            }
        };
        let server = &shared.servers[rng.random_range(0..shared.servers.len())];
        let url = format!("http://{server}/v1/kv/{}", shared.key);
        let call = shared.now();
        let Some(ok) = put(&http, format!("{url}?acquire={session}"), id.to_string()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ret = ok.map(|_| shared.now());
        shared.record(LockEvent::Acquire { client: id, session: session.clone(), call, ret, ok });
        shared.done.fetch_add(1, Ordering::SeqCst);
        match ok {
            Some(true) => {
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
                // Release until answered (through any server): a holder does not walk away unsure.
                for _ in 0..20 {
                    let server = &shared.servers[rng.random_range(0..shared.servers.len())];
                    let url = format!("http://{server}/v1/kv/{}?release={session}", shared.key);
                    let call = shared.now();
                    match put(&http, url, id.to_string()).await {
                        None => {}
                        Some(answer) => {
                            let ret = answer.map(|_| shared.now());
                            shared.record(LockEvent::Release { client: id, session: session.clone(), call, ret });
                            if answer.is_some() {
                                break;
                            }
                        }
                    }
                    if shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(20..100))).await;
            }
            Some(false) => tokio::time::sleep(Duration::from_millis(rng.random_range(50..150))).await,
            None => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Destroys a random client's session until the destroy is acknowledged; records the invalidation
/// at the first destroy's invocation (the earliest it can have happened).
async fn invalidate_one(shared: &Shared, rng: &mut StdRng) -> Option<String> {
    let http = registry::client::http_builder().timeout(Duration::from_secs(3)).build().expect("http client");
    let n = shared.sessions.lock().unwrap_or_else(|p| p.into_inner()).len();
    let who = rng.random_range(0..n);
    let session = shared.sessions.lock().unwrap_or_else(|p| p.into_inner())[who].clone()?;
    let mut first: Option<u64> = None;
    let mut done: Option<u64> = None;
    for _ in 0..100 {
        let server = &shared.servers[rng.random_range(0..shared.servers.len())];
        let call = shared.now();
        match put(&http, format!("http://{server}/v1/session/destroy/{session}"), String::new()).await {
            None => {}
            Some(answer) => {
                first.get_or_insert(call);
                if answer == Some(true) {
                    done = Some(shared.now());
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let at = first?;
    shared.record(LockEvent::Invalidate { session: session.clone(), at, done });
    // The client makes a new session on its next round.
    shared.sessions.lock().unwrap_or_else(|p| p.into_inner())[who] = None;
    Some(session)
}

/// The faults of the lock scenario besides session destroys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockFaults {
    /// The leader killed (restarted with its data) or paused past the election timeout, in turns.
    KillOrPause,
    /// Servers in network namespaces; the leader isolated, or cut from one follower while the
    /// other hears both (a bridge), in turns.
    Partitions,
}

/// Runs the lock scenario: `clients` contenders, a session destroy every few seconds, and `faults`.
pub async fn run(
    port: u16,
    clients: usize,
    attempts: usize,
    min_faults: usize,
    seed: u64,
    faults: LockFaults,
) -> LockSummary {
    let started = Instant::now();
    let mut cluster = match faults {
        LockFaults::KillOrPause => Cluster::start(3, port),
        LockFaults::Partitions => {
            let net = crate::netns::Net::create(3).unwrap_or_else(|e| panic!("network namespaces: {e}"));
            Cluster::start_in_namespaces(3, port, net)
        }
    };
    if cluster.wait_leader(Duration::from_secs(60)).await.is_none() {
        panic!("no leader at start:\n{}", cluster.logs());
    }
    cluster.wait_writable(Duration::from_secs(30)).await.expect("writable at start");
    let shared = Arc::new(Shared {
        servers: cluster.servers.iter().map(|s| s.http.clone()).collect(),
        base: Instant::now(),
        key: "faults/lock".into(),
        stop: AtomicBool::new(false),
        done: AtomicUsize::new(0),
        events: Mutex::new(Vec::new()),
        sessions: Mutex::new(vec![None; clients]),
    });
    let tasks: Vec<_> = (0..clients).map(|i| tokio::spawn(client(i as u32, shared.clone(), seed))).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x10c);
    let mut summary = LockSummary::default();
    let mut round = 0usize;
    while (shared.done.load(Ordering::SeqCst) < attempts || round < min_faults)
        && started.elapsed() < Duration::from_secs(3_600)
    {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..2_000))).await;
        // Every other round on average: each invalidation blocks the lock for the lock-delay. Every
        // round until the first one succeeds: a short run of 2 rounds must have one (it failed CI a
        // quarter of the time, "no session was invalidated").
        let destroy = rng.random_range(0..2) == 0 || summary.invalidations == 0;
        if destroy && invalidate_one(&shared, &mut rng).await.is_some() {
            summary.invalidations += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1_500))).await;
        let Some(leader) = cluster.wait_leader(Duration::from_secs(20)).await else { continue };
        let down = Duration::from_millis(rng.random_range(2_500..3_500));
        if faults == LockFaults::Partitions {
            let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
            if round.is_multiple_of(2) {
                cluster.partition(&[vec![leader], others]);
                summary.faults.push(format!("LeaderIsolated server-{} for {down:?}", leader + 1));
            } else {
                let (bridge, far) =
                    if rng.random_range(0..2) == 0 { (others[0], others[1]) } else { (others[1], others[0]) };
                cluster.cut(leader, far);
                summary.faults.push(format!(
                    "BridgeNode server-{} | server-{}, bridge server-{} for {down:?}",
                    leader + 1,
                    far + 1,
                    bridge + 1
                ));
            }
            tokio::time::sleep(down).await;
            cluster.heal_network();
        } else if round.is_multiple_of(2) {
            cluster.kill(leader);
            summary.faults.push(format!("LeaderKill server-{} for {down:?}", leader + 1));
            tokio::time::sleep(down).await;
            cluster.restart(leader);
        } else {
            cluster.pause(leader);
            summary.faults.push(format!("LeaderPause server-{} for {down:?}", leader + 1));
            tokio::time::sleep(down).await;
            cluster.resume(leader);
        }
        round += 1;
    }
    shared.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let events = shared.events.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let history = LockHistory { key: shared.key.clone(), lock_delay_ns: LOCK_DELAY.as_nanos() as u64, events };
    let dir = crate::scenario::out_dir();
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(json) = serde_json::to_vec(&history) {
        let name = if faults == LockFaults::Partitions { "locks-partitions.json" } else { "locks.json" };
        let _ = std::fs::write(dir.join(name), json);
    }
    for e in &history.events {
        if let LockEvent::Acquire { ok, .. } = e {
            summary.attempts += 1;
            match ok {
                Some(true) => summary.acquired += 1,
                None => summary.unknown += 1,
                Some(false) => {}
            }
        }
    }
    summary.violations = lock::check(&history);
    summary.elapsed = started.elapsed();
    summary
}
