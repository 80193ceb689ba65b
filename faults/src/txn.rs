//! A transaction workload on `/v1/txn`: pairs of keys `<p>/a` and `<p>/b` always written together in
//! one transaction, with the same value.
//!
//! - write: `set a=v, set b=v`;
//! - CAS: `cas a=v if a's ModifyIndex is N, set b=v` (rolled back, 409, if `a` changed since N);
//! - read: `get-tree <p>/`, which answers both keys (or none) in one transaction.
//!
//! As every write of a pair writes both keys with one value, a pair is one register whose value is
//! `a`'s: a write is a register write, the CAS a CAS on the value read with ModifyIndex N (every
//! write of the pair changes `a`'s ModifyIndex), a read a read of `a`. These are recorded as
//! [`Operation`]s on key `<p>/a` and checked by the usual linearizability and lost-write checkers.
//! Atomicity is checked on every read: `a` and `b` present with different values, or one without
//! the other, is a torn read. Every transaction, read-only ones included, goes through the Raft log.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use registry::api::{TxnKvOp, TxnOp, TxnResponse};

use crate::history::{Operation, ReadMode, RegOp, Value};
use crate::workload::{Shared, Workload};

fn now(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

fn kv(verb: &str, key: &str, value: Option<Value>, index: u64) -> TxnOp {
    TxnOp {
        kv: Some(TxnKvOp {
            verb: verb.to_string(),
            key: key.to_string(),
            value: value.map(|v| v.to_string().into_bytes()),
            flags: 0,
            index,
            session: None,
        }),
    }
}

/// What one transaction came to.
enum Answer {
    /// Never reached a server: it did not happen.
    NotSent,
    /// Sent, no usable answer: unknown outcome.
    Unknown,
    /// 200 (committed) or 409 (rolled back), with the body.
    Done(u16, TxnResponse),
}

async fn send(http: &reqwest::Client, server: &str, ops: &[TxnOp]) -> Answer {
    match http.put(format!("http://{server}/v1/txn")).json(ops).send().await {
        Err(e) if e.is_connect() => Answer::NotSent,
        Err(_) => Answer::Unknown,
        Ok(r) => {
            let status = r.status().as_u16();
            if status != 200 && status != 409 {
                return Answer::Unknown;
            }
            match r.json::<TxnResponse>().await {
                Ok(t) => Answer::Done(status, t),
                Err(_) => Answer::Unknown,
            }
        }
    }
}

/// A pair as a `get-tree` read found it: (value, `a`'s ModifyIndex), None if absent, or Err(torn).
fn pair_read(prefix: &str, t: &TxnResponse) -> Result<Option<(Value, u64)>, String> {
    let mut a = None;
    let mut b = None;
    for r in t.results.iter().flatten() {
        let v = r.kv.value.as_deref().and_then(|v| std::str::from_utf8(v).ok()).and_then(|s| s.parse::<Value>().ok());
        let v = v.unwrap_or(Value::MAX);
        match r.kv.key.strip_prefix(prefix) {
            Some("a") => a = Some((v, r.kv.modify_index)),
            Some("b") => b = Some(v),
            _ => return Err(format!("unexpected key {} under {prefix}", r.kv.key)),
        }
    }
    match (a, b) {
        (None, None) => Ok(None),
        (Some((va, i)), Some(vb)) if va == vb => Ok(Some((va, i))),
        (a, b) => Err(format!("torn read of {prefix}: a {a:?} (value, ModifyIndex), b {b:?}")),
    }
}

/// Runs the transaction clients until `total` operations are recorded (or `stop`); returns the
/// history (register operations on each pair's `a` key) and the torn reads seen.
pub async fn run(w: Workload, shared: Arc<Shared>) -> (Vec<Operation>, Vec<String>) {
    let mut tasks = Vec::new();
    for c in 0..w.clients {
        let w = w.clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move { client(c as u32, w, shared).await }));
    }
    let (mut ops, mut torn) = (Vec::new(), Vec::new());
    for t in tasks {
        if let Ok((mut o, mut x)) = t.await {
            ops.append(&mut o);
            torn.append(&mut x);
        }
    }
    (ops, torn)
}

async fn client(id: u32, w: Workload, shared: Arc<Shared>) -> (Vec<Operation>, Vec<String>) {
    let http = registry::client::http_builder()
        .timeout(w.timeout)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("http client");
    let mut rng = StdRng::seed_from_u64(w.seed.wrapping_mul(1_000_033).wrapping_add(u64::from(id)));
    let mut seq: u64 = 0;
    // The last (value, `a`'s ModifyIndex) this client read per pair: what its CAS expects.
    let mut seen: HashMap<String, (Value, u64)> = HashMap::new();
    let (mut out, mut torn) = (Vec::new(), Vec::new());
    loop {
        let done = shared.done.load(Ordering::SeqCst);
        if done >= w.total || shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let generation = done / w.ops_per_generation.max(1);
        let prefix = format!("{}/g{generation}/p{}/", w.prefix, rng.random_range(0..w.keys));
        let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
        let si = rng.random_range(0..shared.servers.len());
        let server = &shared.servers[si];
        let incarnation = shared.incarnations[si].load(Ordering::SeqCst);
        let roll = rng.random_range(0..100);
        seq += 1;
        let value: Value = (u64::from(id) + 1) * 1_000_000_000 + seq;
        let call = now(shared.base);
        let op = if roll < 30 {
            match send(&http, server, &[kv("set", &a, Some(value), 0), kv("set", &b, Some(value), 0)]).await {
                Answer::NotSent => None,
                Answer::Done(200, _) => Some((Some(now(shared.base)), RegOp::Write { value })),
                _ => Some((None, RegOp::Write { value })),
            }
        } else if roll < 50 {
            let (expected, index) = match seen.get(&prefix) {
                Some(&(v, i)) => (Some(v), i),
                None => (None, 0),
            };
            let ops = [kv("cas", &a, Some(value), index), kv("set", &b, Some(value), 0)];
            match send(&http, server, &ops).await {
                Answer::NotSent => None,
                Answer::Done(status, _) => {
                    Some((Some(now(shared.base)), RegOp::Cas { expected, value, ok: Some(status == 200) }))
                }
                Answer::Unknown => Some((None, RegOp::Cas { expected, value, ok: None })),
            }
        } else {
            match send(&http, server, &[kv("get-tree", &prefix, None, 0)]).await {
                Answer::Done(200, t) => match pair_read(&prefix, &t) {
                    Ok(pair) => {
                        match pair {
                            Some((v, i)) if v != Value::MAX => {
                                seen.insert(prefix.clone(), (v, i));
                            }
                            None => {
                                seen.remove(&prefix);
                            }
                            _ => {}
                        }
                        let (value, index) = (pair.map(|p| p.0), pair.map(|p| p.1));
                        Some((Some(now(shared.base)), RegOp::Read { mode: ReadMode::Consistent, value, index }))
                    }
                    Err(e) => {
                        torn.push(format!("client {id} via server-{}: {e}", si + 1));
                        None
                    }
                },
                _ => None,
            }
        };
        match op {
            Some((ret, op)) => {
                let unknown = ret.is_none();
                shared.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(a.clone());
                out.push(Operation { client: id, key: a, call, ret, op, server: Some((si, incarnation)) });
                shared.done.fetch_add(1, Ordering::SeqCst);
                if unknown {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(300..700))).await;
                }
            }
            None => tokio::time::sleep(Duration::from_millis(rng.random_range(50..150))).await,
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..6))).await;
    }
    (out, torn)
}

/// After healing: one `get-tree` transaction per pair (`keys` are the pairs' `a` keys), through any
/// server that answers; returns the torn pairs.
pub async fn final_atomicity(
    servers: &[String],
    keys: &BTreeSet<String>,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let http = registry::client::http_builder().timeout(Duration::from_secs(3)).build().expect("http client");
    let deadline = Instant::now() + timeout;
    let mut torn = Vec::new();
    for key in keys {
        let Some(prefix) = key.strip_suffix('a') else { continue };
        let mut n = 0usize;
        loop {
            n += 1;
            if let Answer::Done(200, t) =
                send(&http, &servers[n % servers.len()], &[kv("get-tree", prefix, None, 0)]).await
            {
                if let Err(e) = pair_read(prefix, &t) {
                    torn.push(format!("final read: {e}"));
                }
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("no final read of {prefix} within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(torn)
}

#[cfg(test)]
mod tests {
    use super::pair_read;
    use registry::api::{KvPair, TxnResponse, TxnResult};

    fn resp(entries: &[(&str, &str, u64)]) -> TxnResponse {
        TxnResponse {
            results: Some(
                entries
                    .iter()
                    .map(|(k, v, i)| TxnResult {
                        kv: KvPair {
                            lock_index: 0,
                            key: k.to_string(),
                            flags: 0,
                            value: Some(v.as_bytes().to_vec()),
                            session: None,
                            create_index: *i,
                            modify_index: *i,
                        },
                    })
                    .collect(),
            ),
            errors: None,
        }
    }

    #[test]
    fn a_pair_is_read_whole_or_flagged_torn() {
        assert_eq!(pair_read("p/", &resp(&[])), Ok(None));
        assert_eq!(pair_read("p/", &resp(&[("p/a", "7", 10), ("p/b", "7", 10)])), Ok(Some((7, 10))));
        assert!(pair_read("p/", &resp(&[("p/a", "7", 10), ("p/b", "8", 11)])).is_err());
        assert!(pair_read("p/", &resp(&[("p/a", "7", 10)])).is_err());
        assert!(pair_read("p/", &resp(&[("p/b", "7", 10)])).is_err());
        assert!(pair_read("p/", &TxnResponse { results: None, errors: None }).is_ok());
    }
}
