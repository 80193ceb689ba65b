//! Concurrent clients doing register operations on Consul's KV API, recording every operation.
//!
//! Keys come in generations: every `ops_per_generation` operations the clients move to a fresh set
//! of `keys` keys, so each key's history stays short enough to check exhaustively (Jepsen's
//! "independent keys"), and an operation of unknown outcome weighs on one generation only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{Operation, ReadMode, RegOp, Value};

/// The client id of the final reads done after healing.
pub const FINAL_CLIENT: u32 = 999;

#[derive(Debug, Clone)]
pub struct Workload {
    pub clients: usize,
    /// Keys per generation.
    pub keys: usize,
    pub ops_per_generation: usize,
    /// Recorded operations to do in all.
    pub total: usize,
    /// Per-request timeout; past it a write's outcome is unknown.
    pub timeout: Duration,
    /// Key prefix (the scenario's name).
    pub prefix: String,
    pub seed: u64,
}

/// What one request came to.
enum Answer {
    /// Never reached a server (connection refused): the operation did not happen.
    NotSent,
    /// Sent, no usable answer: unknown outcome for a write, nothing for a read.
    Unknown,
    Ok(u16, Option<u64>, bytes::Bytes),
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    match req.send().await {
        Err(e) if e.is_connect() => Answer::NotSent,
        Err(_) => Answer::Unknown,
        Ok(r) => {
            let status = r.status().as_u16();
            let index = r.headers().get("x-consul-index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            match r.bytes().await {
                Ok(b) => Answer::Ok(status, index, b),
                Err(_) => Answer::Unknown,
            }
        }
    }
}

/// Parses `GET /v1/kv/<key>`'s answer into (value, ModifyIndex). A value that is not one of ours
/// parses as `Value::MAX`, which no write wrote, so the checker flags it.
fn parse_read(status: u16, index: Option<u64>, body: &[u8]) -> Option<(Option<Value>, Option<u64>)> {
    match status {
        404 => Some((None, index)),
        200 => {
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            let entry = v.as_array()?.first()?;
            let modify = entry.get("ModifyIndex").and_then(serde_json::Value::as_u64);
            let value = entry
                .get("Value")
                .and_then(serde_json::Value::as_str)
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.parse::<Value>().ok())
                .unwrap_or(Value::MAX);
            Some((Some(value), modify))
        }
        _ => None,
    }
}

fn now(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

pub struct Shared {
    pub servers: Vec<String>,
    pub incarnations: Arc<Vec<AtomicU32>>,
    pub base: Instant,
    /// Recorded operations so far.
    pub done: AtomicUsize,
    pub stop: AtomicBool,
    /// Every key used.
    pub keys: std::sync::Mutex<BTreeSet<String>>,
}

/// Runs the clients until `total` operations are recorded (or `stop`); returns the history.
pub async fn run(w: Workload, shared: Arc<Shared>) -> Vec<Operation> {
    let mut tasks = Vec::new();
    for c in 0..w.clients {
        let w = w.clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move { client(c as u32, w, shared).await }));
    }
    let mut ops = Vec::new();
    for t in tasks {
        if let Ok(mut o) = t.await {
            ops.append(&mut o);
        }
    }
    ops
}

async fn client(id: u32, w: Workload, shared: Arc<Shared>) -> Vec<Operation> {
    let http = registry::client::http_builder()
        .timeout(w.timeout)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("http client");
    let mut rng = StdRng::seed_from_u64(w.seed.wrapping_mul(1_000_003).wrapping_add(u64::from(id)));
    let mut seq: u64 = 0;
    // The last (value, ModifyIndex) this client read per key: what its CAS expects.
    let mut seen: HashMap<String, (Option<Value>, u64)> = HashMap::new();
    let mut out = Vec::new();
    loop {
        let done = shared.done.load(Ordering::SeqCst);
        if done >= w.total || shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let generation = done / w.ops_per_generation.max(1);
        let key = format!("{}/g{generation}/k{}", w.prefix, rng.random_range(0..w.keys));
        let si = rng.random_range(0..shared.servers.len());
        let server = &shared.servers[si];
        let incarnation = shared.incarnations[si].load(Ordering::SeqCst);
        let url = format!("http://{server}/v1/kv/{key}");
        let roll = rng.random_range(0..100);
        seq += 1;
        let value: Value = (u64::from(id) + 1) * 1_000_000_000 + seq;
        let call;
        let op = if roll < 25 {
            call = now(shared.base);
            match send(http.put(&url).body(value.to_string())).await {
                Answer::NotSent => None,
                Answer::Ok(200, _, b) if b.as_ref() == b"true" => {
                    Some((Some(now(shared.base)), RegOp::Write { value }))
                }
                _ => Some((None, RegOp::Write { value })),
            }
        } else if roll < 45 {
            let (expected, index) = seen.get(&key).copied().unwrap_or((None, 0));
            let expected = if index == 0 { None } else { expected };
            call = now(shared.base);
            match send(http.put(format!("{url}?cas={index}")).body(value.to_string())).await {
                Answer::NotSent => None,
                Answer::Ok(200, _, b) if b.as_ref() == b"true" || b.as_ref() == b"false" => {
                    let ok = b.as_ref() == b"true";
                    Some((Some(now(shared.base)), RegOp::Cas { expected, value, ok: Some(ok) }))
                }
                _ => Some((None, RegOp::Cas { expected, value, ok: None })),
            }
        } else {
            let (mode, query) = match roll {
                45..=69 => (ReadMode::Consistent, "?consistent"),
                70..=89 => (ReadMode::Default, ""),
                _ => (ReadMode::Stale, "?stale"),
            };
            call = now(shared.base);
            match send(http.get(format!("{url}{query}"))).await {
                Answer::Ok(status, index, body) => match parse_read(status, index, &body) {
                    Some((v, idx)) => {
                        if let (Some(i), false) = (idx, v == Some(Value::MAX)) {
                            seen.insert(key.clone(), (v, if v.is_some() { i } else { 0 }));
                        }
                        Some((Some(now(shared.base)), RegOp::Read { mode, value: v, index: idx }))
                    }
                    None => None,
                },
                _ => None,
            }
        };
        match op {
            Some((ret, op)) => {
                let unknown = ret.is_none();
                shared.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone());
                out.push(Operation { client: id, key, call, ret, op, server: Some((si, incarnation)) });
                shared.done.fetch_add(1, Ordering::SeqCst);
                if unknown {
                    // Back off as a real client would: an unknown outcome usually means no leader.
                    tokio::time::sleep(Duration::from_millis(rng.random_range(300..700))).await;
                }
            }
            // A failed read, or a request that never left: back off a little too.
            None => tokio::time::sleep(Duration::from_millis(rng.random_range(50..150))).await,
        }
        // A little think time: 2 cores run the servers too.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..6))).await;
    }
    out
}

/// After healing: one `?consistent` read of every key, through any server that answers, recorded
/// as operations of [`FINAL_CLIENT`]. Returns the operations and each key's final value.
pub async fn final_reads(
    servers: &[String],
    keys: &BTreeSet<String>,
    base: Instant,
    timeout: Duration,
) -> Result<(Vec<Operation>, BTreeMap<String, Option<Value>>), String> {
    let http = registry::client::http_builder().timeout(Duration::from_secs(3)).build().expect("http client");
    let mut ops = Vec::new();
    let mut finals = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    for key in keys {
        let mut n = 0usize;
        loop {
            let si = n % servers.len();
            n += 1;
            let call = now(base);
            if let Answer::Ok(status, index, body) =
                send(http.get(format!("http://{}/v1/kv/{key}?consistent", servers[si]))).await
            {
                if let Some((v, idx)) = parse_read(status, index, &body) {
                    ops.push(Operation {
                        client: FINAL_CLIENT,
                        key: key.clone(),
                        call,
                        ret: Some(now(base)),
                        op: RegOp::Read { mode: ReadMode::Consistent, value: v, index: idx },
                        server: Some((si, 0)),
                    });
                    finals.insert(key.clone(), v);
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no final read of {key} within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok((ops, finals))
}
