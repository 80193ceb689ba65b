//! The two systems behind one small trait, so every workload drives both with the same code:
//! Roster over Consul's `/v1` HTTP API, etcd over its v3 JSON gateway.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;

use crate::cluster::{self, b64, EtcdCluster, RosterCluster};

/// Every key the benchmark writes lives under this prefix, so a reset removes exactly those.
pub const PREFIX: &str = "bench/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Roster's default read (answered by the leader) vs etcd's default (linearizable, ReadIndex).
    Default,
    /// Roster `?stale` (any server, local state) vs etcd `"serializable": true`.
    Stale,
    /// Roster `?consistent` (leader confirms leadership first); etcd has no third mode: its default.
    Consistent,
}

/// Where a client sends its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Leader,
    /// Client `w` talks to server `w % 3`.
    Spread,
}

/// One watcher's answer: when the change reached it, and how many answers before that were not it
/// (timeouts or spurious wake-ups that a client must re-issue).
#[derive(Debug, Clone, Copy)]
pub struct WatchAnswer {
    pub at: Instant,
    pub reissued: u32,
}

pub trait Target: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Client API addresses of the three servers.
    fn addrs(&self) -> &[String];
    fn leader(&self) -> usize;
    fn pids(&self) -> &[u32];

    fn addr(&self, route: Route, worker: usize) -> &str {
        let addrs = self.addrs();
        match route {
            Route::Leader => &addrs[self.leader()],
            Route::Spread => &addrs[worker % addrs.len()],
        }
    }

    /// Finds the current leader again (before each workload: elections can happen under load).
    fn refresh_leader(&self) -> impl Future<Output = Result<()>> + Send;
    fn put(
        &self,
        http: &reqwest::Client,
        addr: &str,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Reads an existing key; a missing key is an error (it would make the read look cheap).
    fn get(&self, http: &reqwest::Client, addr: &str, key: &str, read: Read)
        -> impl Future<Output = Result<()>> + Send;
    /// The position watchers of `key` start from (Roster: the read's index; etcd: unused).
    fn watch_from(&self, key: &str) -> impl Future<Output = Result<u64>> + Send;
    /// Watches `key` from `from` until it changes. Where the server confirms a watch (etcd), bumps
    /// `confirmed` when it does.
    fn watch(
        &self,
        http: &reqwest::Client,
        addr: &str,
        key: &str,
        from: u64,
        confirmed: &AtomicUsize,
    ) -> impl Future<Output = Result<WatchAnswer>> + Send;
    /// How many watchers the servers hold now.
    fn watchers(&self, confirmed: &AtomicUsize) -> impl Future<Output = Result<usize>> + Send;
    /// Removes everything under [`PREFIX`] (etcd also compacts and defragments, so history from one
    /// workload does not weigh on the next).
    fn reset(&self) -> impl Future<Output = Result<()>> + Send;

    /// RSS in KiB: the sum over the three servers, and the leader's.
    fn rss_kib(&self) -> Result<(u64, u64)> {
        let mut sum = 0;
        for pid in self.pids() {
            sum += cluster::rss_kib(*pid)?;
        }
        Ok((sum, cluster::rss_kib(self.pids()[self.leader()])?))
    }
}

async fn ok_body(resp: reqwest::Response, what: &str) -> Result<bytes::Bytes> {
    let status = resp.status();
    let body = resp.bytes().await.with_context(|| format!("{what}: reading the body"))?;
    if !status.is_success() {
        bail!("{what}: {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]));
    }
    Ok(body)
}

fn index_of(resp: &reqwest::Response) -> Result<u64> {
    resp.headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .context("answer without a valid X-Consul-Index")
}

pub struct Roster {
    addrs: Vec<String>,
    rpc: Vec<String>,
    leader: AtomicUsize,
    pids: Vec<u32>,
    ctl: reqwest::Client,
}

impl Roster {
    pub async fn new(c: &RosterCluster) -> Result<Roster> {
        let r = Roster {
            addrs: c.members.iter().map(|m| m.http.to_string()).collect(),
            rpc: c.members.iter().map(|m| m.peer.to_string()).collect(),
            leader: AtomicUsize::new(0),
            pids: c.pids(),
            ctl: cluster::control_client()?,
        };
        r.refresh_leader().await?;
        Ok(r)
    }

    pub fn ctl(&self) -> &reqwest::Client {
        &self.ctl
    }

    /// Blocking query on `path` (which already has its query string), re-issued when the answer's
    /// index has not moved past `from`, as Consul clients do. At most 5 rounds.
    pub async fn blocking_get(http: &reqwest::Client, addr: &str, path: &str, from: u64) -> Result<WatchAnswer> {
        let url = format!("http://{addr}{path}&index={from}&wait=60s");
        for reissued in 0..5 {
            let resp = http.get(&url).send().await.context("blocking query")?;
            let at = Instant::now();
            let index = index_of(&resp)?;
            ok_body(resp, "blocking query").await?;
            if index > from {
                return Ok(WatchAnswer { at, reissued });
            }
        }
        bail!("blocking query on {path} answered 5 times without a change")
    }

    /// `X-Consul-Index` of a default read of `path` on the leader.
    pub async fn index(&self, path: &str) -> Result<u64> {
        let resp = self.ctl.get(format!("http://{}{path}", self.addrs[self.leader()])).send().await?;
        index_of(&resp)
    }
}

impl Target for Roster {
    fn name(&self) -> &'static str {
        "Roster"
    }
    fn addrs(&self) -> &[String] {
        &self.addrs
    }
    fn leader(&self) -> usize {
        self.leader.load(Ordering::Relaxed)
    }
    fn pids(&self) -> &[u32] {
        &self.pids
    }

    async fn refresh_leader(&self) -> Result<()> {
        // The answer is the leader's RPC address; map it back to the HTTP address we started it with.
        let rpc = cluster::roster_leader_of(&self.ctl, &self.addrs[0]).await?;
        let i = self.rpc.iter().position(|r| *r == rpc).with_context(|| format!("unknown Roster leader {rpc:?}"))?;
        self.leader.store(i, Ordering::Relaxed);
        Ok(())
    }

    async fn put(&self, http: &reqwest::Client, addr: &str, key: &str, value: &[u8]) -> Result<()> {
        let resp = http.put(format!("http://{addr}/v1/kv/{key}")).body(value.to_vec()).send().await?;
        let body = ok_body(resp, "PUT /v1/kv").await?;
        ensure!(&body[..] == b"true", "PUT /v1/kv answered {:?}", String::from_utf8_lossy(&body));
        Ok(())
    }

    async fn get(&self, http: &reqwest::Client, addr: &str, key: &str, read: Read) -> Result<()> {
        let q = match read {
            Read::Default => "",
            Read::Stale => "?stale",
            Read::Consistent => "?consistent",
        };
        let resp = http.get(format!("http://{addr}/v1/kv/{key}{q}")).send().await?;
        ok_body(resp, "GET /v1/kv").await?;
        Ok(())
    }

    async fn watch_from(&self, key: &str) -> Result<u64> {
        self.index(&format!("/v1/kv/{key}")).await
    }

    async fn watch(
        &self,
        http: &reqwest::Client,
        addr: &str,
        key: &str,
        from: u64,
        _confirmed: &AtomicUsize,
    ) -> Result<WatchAnswer> {
        // ?stale: the query blocks on the server it reached instead of being forwarded to the leader.
        Self::blocking_get(http, addr, &format!("/v1/kv/{key}?stale"), from).await
    }

    async fn watchers(&self, _confirmed: &AtomicUsize) -> Result<usize> {
        // Roster does not acknowledge a blocking query before answering it; its metrics count them.
        let mut sum = 0;
        for a in &self.addrs {
            let text =
                self.ctl.get(format!("http://{a}/v1/agent/metrics?format=prometheus")).send().await?.text().await?;
            let n = text
                .lines()
                .find_map(|l| l.strip_prefix("roster_blocking_query_watchers "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .context("no roster_blocking_query_watchers in /v1/agent/metrics")?;
            sum += n as usize;
        }
        Ok(sum)
    }

    async fn reset(&self) -> Result<()> {
        let url = format!("http://{}/v1/kv/{PREFIX}?recurse", self.addrs[self.leader()]);
        ok_body(self.ctl.delete(url).send().await?, "DELETE /v1/kv?recurse").await?;
        Ok(())
    }
}

pub struct Etcd {
    addrs: Vec<String>,
    leader: AtomicUsize,
    pids: Vec<u32>,
    ctl: reqwest::Client,
}

impl Etcd {
    pub async fn new(c: &EtcdCluster) -> Result<Etcd> {
        let e = Etcd {
            addrs: c.members.iter().map(|m| m.http.to_string()).collect(),
            leader: AtomicUsize::new(0),
            pids: c.pids(),
            ctl: cluster::control_client()?,
        };
        e.refresh_leader().await?;
        Ok(e)
    }

    async fn post(&self, addr: &str, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let resp = self.ctl.post(format!("http://{addr}{path}")).json(&body).send().await?;
        let body = ok_body(resp, path).await?;
        serde_json::from_slice(&body).with_context(|| format!("decoding {path}"))
    }
}

/// The first key after every key that starts with `prefix` (etcd's range_end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

impl Target for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }
    fn addrs(&self) -> &[String] {
        &self.addrs
    }
    fn leader(&self) -> usize {
        self.leader.load(Ordering::Relaxed)
    }
    fn pids(&self) -> &[u32] {
        &self.pids
    }

    async fn refresh_leader(&self) -> Result<()> {
        self.leader.store(cluster::etcd_leader(&self.ctl, &self.addrs).await?, Ordering::Relaxed);
        Ok(())
    }

    async fn put(&self, http: &reqwest::Client, addr: &str, key: &str, value: &[u8]) -> Result<()> {
        let body = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        let resp = http.post(format!("http://{addr}/v3/kv/put")).json(&body).send().await?;
        ok_body(resp, "/v3/kv/put").await?;
        Ok(())
    }

    async fn get(&self, http: &reqwest::Client, addr: &str, key: &str, read: Read) -> Result<()> {
        let body = match read {
            Read::Stale => json!({ "key": b64(key.as_bytes()), "serializable": true }),
            Read::Default | Read::Consistent => json!({ "key": b64(key.as_bytes()) }),
        };
        let resp = http.post(format!("http://{addr}/v3/kv/range")).json(&body).send().await?;
        let body = ok_body(resp, "/v3/kv/range").await?;
        // The gateway omits "kvs" when nothing matched.
        ensure!(body.windows(5).any(|w| w == b"\"kvs\""), "/v3/kv/range found no key {key}");
        Ok(())
    }

    async fn watch_from(&self, _key: &str) -> Result<u64> {
        Ok(0)
    }

    async fn watch(
        &self,
        http: &reqwest::Client,
        addr: &str,
        key: &str,
        _from: u64,
        confirmed: &AtomicUsize,
    ) -> Result<WatchAnswer> {
        let body = json!({ "create_request": { "key": b64(key.as_bytes()) } });
        let mut resp = http.post(format!("http://{addr}/v3/watch")).json(&body).send().await?.error_for_status()?;
        // A stream of newline-delimited JSON messages: first the creation, then one per batch of events.
        let mut buf = Vec::new();
        let mut created = false;
        while let Some(chunk) = resp.chunk().await.context("reading the watch stream")? {
            let at = Instant::now();
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let msg: serde_json::Value = serde_json::from_slice(&line).context("decoding a watch message")?;
                if let Some(err) = msg.get("error") {
                    bail!("watch stream error: {err}");
                }
                let result = msg.get("result").context("watch message without result")?;
                if !created && result.get("created").and_then(|c| c.as_bool()) == Some(true) {
                    created = true;
                    confirmed.fetch_add(1, Ordering::Relaxed);
                }
                if result.get("events").and_then(|e| e.as_array()).is_some_and(|e| !e.is_empty()) {
                    return Ok(WatchAnswer { at, reissued: 0 });
                }
            }
        }
        bail!("watch stream ended without an event")
    }

    async fn watchers(&self, confirmed: &AtomicUsize) -> Result<usize> {
        Ok(confirmed.load(Ordering::Relaxed))
    }

    async fn reset(&self) -> Result<()> {
        let leader = &self.addrs[self.leader()];
        let del = json!({ "key": b64(PREFIX.as_bytes()), "range_end": b64(&prefix_end(PREFIX)) });
        let v = self.post(leader, "/v3/kv/deleterange", del).await?;
        // Revisions travel as strings in the gateway's JSON (uint64).
        let rev = v.pointer("/header/revision").and_then(|r| r.as_str()).context("deleterange without revision")?;
        self.post(leader, "/v3/kv/compaction", json!({ "revision": rev, "physical": true })).await?;
        for a in &self.addrs {
            self.post(a, "/v3/maintenance/defragment", json!({})).await?;
        }
        Ok(())
    }
}
