//! Real `roster server` processes on loopback (127.0.13.i), or each in a network namespace of its own
//! (10.213.X.i, [`crate::netns`]), and the faults done to them: SIGKILL, restart with the data
//! directory kept or wiped, SIGSTOP/SIGCONT, and (namespaces) partitions. Everything started here is
//! killed on drop, and the namespaces deleted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use registry::api::RaftConfiguration;
use tempfile::TempDir;

use crate::disk::Tmpfs;
use crate::netns::Net;

/// The `roster` binary: `ROSTER_BIN`, else the workspace's `target/debug/roster`.
pub fn roster_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ROSTER_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    target.join("debug").join("roster")
}

pub struct Server {
    pub name: String,
    pub http: String,
    pub rpc: String,
    pub gossip: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Server {
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
    pub fn paused(&self) -> bool {
        self.paused
    }
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

pub struct Cluster {
    tmp: TempDir,
    bin: PathBuf,
    pub servers: Vec<Server>,
    /// Bumped on every (re)start of a server: `?stale` reads are monotonic within one incarnation.
    pub incarnations: Arc<Vec<AtomicU32>>,
    pub http: reqwest::Client,
    join: Vec<String>,
    gossip_seeds: Vec<String>,
    log_from: Vec<u64>,
    /// The servers' namespaces, if they run in namespaces. Dropped after the servers are killed.
    net: Option<Net>,
    /// Server i's data directory is on `disks[i]`, if the cluster was started with small disks.
    /// Unmounted after the servers are killed.
    disks: Vec<Tmpfs>,
}

impl Cluster {
    /// `n` servers on 127.0.13.1..n: HTTP on `port`, RPC on `port + 1`, gossip on `port + 2`.
    pub fn start(n: usize, port: u16) -> Cluster {
        Cluster::start_on(n, port, None, None)
    }

    /// As [`Cluster::start`], each server's data directory on a tmpfs of its own of `mb` MB
    /// ([`Cluster::fill_disk`]).
    pub fn start_with_small_disks(n: usize, port: u16, mb: u64) -> Cluster {
        Cluster::start_on(n, port, None, Some(mb))
    }

    /// `n` servers, each in one of `net`'s namespaces, on 10.213.X.1..n (ports as [`Cluster::start`]).
    pub fn start_in_namespaces(n: usize, port: u16, net: Net) -> Cluster {
        Cluster::start_on(n, port, Some(net), None)
    }

    fn start_on(n: usize, port: u16, net: Option<Net>, disk_mb: Option<u64>) -> Cluster {
        let tmp = tempfile::Builder::new().prefix("roster-faults").tempdir().expect("temp dir");
        let src = roster_bin();
        assert!(
            src.exists(),
            "{} is missing: build it first with `cargo build -p roster-registry --bin roster` (or set ROSTER_BIN)",
            src.display()
        );
        // A private link (or copy): a rebuild of target/debug/roster during the run must not change
        // the binary restarted servers run.
        let bin = tmp.path().join("roster");
        if std::fs::hard_link(&src, &bin).is_err() {
            std::fs::copy(&src, &bin).expect("copy roster binary");
        }
        let disks: Vec<Tmpfs> = match disk_mb {
            Some(mb) => (1..=n)
                .map(|i| Tmpfs::mount(tmp.path(), &format!("s{i}"), mb).unwrap_or_else(|e| panic!("tmpfs: {e}")))
                .collect(),
            None => Vec::new(),
        };
        let host = |i: usize| net.as_ref().map_or_else(|| format!("127.0.13.{i}"), |net| net.addr(i - 1));
        let servers: Vec<Server> = (1..=n)
            .map(|i| Server {
                name: format!("server-{i}"),
                http: format!("{}:{port}", host(i)),
                rpc: format!("{}:{}", host(i), port + 1),
                gossip: format!("{}:{}", host(i), port + 2),
                dir: disks.get(i - 1).map_or_else(|| tmp.path().join(format!("s{i}")), |d| d.path().join("data")),
                log: tmp.path().join(format!("s{i}.log")),
                child: None,
                paused: false,
            })
            .collect();
        let join = servers.iter().map(|s| s.rpc.clone()).collect();
        let gossip_seeds = servers.iter().map(|s| s.gossip.clone()).collect();
        let incarnations = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
        let http = registry::client::http_builder()
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("http client");
        let mut c =
            Cluster { tmp, bin, servers, incarnations, http, join, gossip_seeds, log_from: vec![0; n], net, disks };
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn spawn(&mut self, i: usize) {
        let s = &self.servers[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&s.log).expect("log file");
        let seeds: Vec<&str> = self.gossip_seeds.iter().filter(|g| **g != s.gossip).map(String::as_str).collect();
        // `ip netns exec` execs the command in place: the child's PID is the server's.
        let mut cmd = match &self.net {
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", net.namespace(i)]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let child = cmd
            .args(["server", "--node-name", &s.name])
            .arg("--data-dir")
            .arg(&s.dir)
            .args(["--http-addr", &s.http, "--rpc-addr", &s.rpc])
            .args(["--gossip-addr", &s.gossip, "--gossip-seeds", &seeds.join(",")])
            .args(["--dns-addr", "off"])
            .args(["--bootstrap-expect", &self.servers.len().to_string()])
            .args(["--retry-join", &self.join.join(",")])
            .env("RUST_LOG", std::env::var("ROSTER_FAULTS_RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn roster");
        self.incarnations[i].fetch_add(1, Ordering::SeqCst);
        let s = &mut self.servers[i];
        s.child = Some(child);
        s.paused = false;
    }

    /// SIGKILL.
    pub fn kill(&mut self, i: usize) {
        let s = &mut self.servers[i];
        if let Some(mut c) = s.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        s.paused = false;
    }

    /// Starts a stopped server again with its data directory as it is.
    pub fn restart(&mut self, i: usize) {
        if !self.servers[i].running() {
            self.spawn(i);
        }
    }

    /// Deletes a stopped server's data directory: it comes back as a new member.
    pub fn wipe(&mut self, i: usize) {
        assert!(!self.servers[i].running(), "wipe a running server");
        let _ = std::fs::remove_dir_all(&self.servers[i].dir);
    }

    /// Fills server `i`'s disk (see [`Cluster::start_with_small_disks`]); returns the bytes written.
    pub fn fill_disk(&self, i: usize) -> Result<u64, String> {
        self.disks.get(i).ok_or("no small disk for this server")?.fill()
    }

    /// Frees server `i`'s disk again.
    pub fn free_disk(&self, i: usize) {
        if let Some(d) = self.disks.get(i) {
            d.free();
        }
    }

    /// If server `i` exited without the harness stopping it: its exit status (it is marked stopped).
    pub fn exited(&mut self, i: usize) -> Option<String> {
        let s = &mut self.servers[i];
        if let Some(Ok(Some(status))) = s.child.as_mut().map(Child::try_wait) {
            s.child = None;
            s.paused = false;
            return Some(status.to_string());
        }
        None
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(pid) = self.servers[i].pid() {
            match Command::new("kill").args([sig, &pid.to_string()]).status() {
                Ok(st) if st.success() => {}
                other => eprintln!("kill {sig} {pid}: {other:?}"),
            }
        }
    }

    /// SIGSTOP.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.servers[i].paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) {
        if self.servers[i].paused {
            self.signal(i, "-CONT");
            self.servers[i].paused = false;
        }
    }

    fn net(&mut self) -> &mut Net {
        self.net.as_mut().expect("partitions need a cluster in network namespaces")
    }

    /// Splits the servers into `groups` that do not hear each other (see [`Net::partition`]).
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        if let Err(e) = self.net().partition(groups) {
            panic!("partition {groups:?}: {e}");
        }
    }

    /// Cuts the link between `a` and `b` only.
    pub fn cut(&mut self, a: usize, b: usize) {
        if let Err(e) = self.net().cut(a, b) {
            panic!("cut server-{} | server-{}: {e}", a + 1, b + 1);
        }
    }

    /// Ends every partition.
    pub fn heal_network(&mut self) {
        if let Some(net) = self.net.as_mut() {
            if let Err(e) = net.heal() {
                panic!("heal the network: {e}");
            }
        }
    }

    /// Ends every partition, restarts every stopped server and resumes every paused one.
    pub fn heal_all(&mut self) {
        self.heal_network();
        for i in 0..self.servers.len() {
            self.resume(i);
            self.restart(i);
        }
    }

    /// Servers that exited though the harness did not stop them (crashed, or signalled by someone
    /// else), with their exit status; they are marked stopped.
    pub fn unexpected_exits(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &mut self.servers {
            if let Some(Ok(Some(status))) = s.child.as_mut().map(Child::try_wait) {
                out.push(format!("{} exited: {status}", s.name));
                s.child = None;
                s.paused = false;
            }
        }
        out
    }

    /// Servers that are running and not paused.
    pub fn live(&self) -> Vec<usize> {
        (0..self.servers.len()).filter(|&i| self.servers[i].running() && !self.servers[i].paused).collect()
    }

    async fn leader_seen_by(&self, i: usize) -> Option<usize> {
        let url = format!("http://{}/v1/status/leader", self.servers[i].http);
        let r = self.http.get(url).timeout(Duration::from_secs(1)).send().await.ok()?;
        let leader: String = r.json().await.ok()?;
        self.servers.iter().position(|s| s.rpc == leader)
    }

    /// The leader as a majority of the live servers see it.
    pub async fn leader(&self) -> Option<usize> {
        let live = self.live();
        let mut votes = vec![0usize; self.servers.len()];
        for &i in &live {
            if let Some(l) = self.leader_seen_by(i).await {
                votes[l] += 1;
            }
        }
        let (best, count) = votes.iter().enumerate().max_by_key(|(_, c)| **c)?;
        (*count * 2 > self.servers.len() && self.servers[best].running()).then_some(best)
    }

    pub async fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader().await {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Probes with writes through the live servers until one is acknowledged; returns how long that
    /// took, or None after `timeout`. Every 50 ms a probe starts through the next live server that
    /// has none in flight (a server that refused one is asked again 50 ms later at the soonest), so one hanging for its 1 s timeout (a follower forwarding to a leader that
    /// is cut off or deposed) does not hide the cluster becoming writable through another: the
    /// figure is within about 50 ms of the first write the cluster could acknowledge.
    pub async fn wait_writable(&self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut probes = tokio::task::JoinSet::new();
        let mut in_flight = vec![false; self.servers.len()];
        let mut n = 0usize;
        // With ROSTER_FAULTS_VERBOSE, every failed probe (server, start, how long, why) is printed
        // when the wait took over 3 s: what the time went on.
        let mut failed = Vec::new();
        let result = loop {
            if start.elapsed() >= timeout {
                break None;
            }
            let live = self.live();
            if live.is_empty() {
                break None;
            }
            if let Some(i) = (0..live.len()).map(|k| live[(n + k) % live.len()]).find(|&i| !in_flight[i]) {
                n += 1;
                in_flight[i] = true;
                let (http, url) = (self.http.clone(), format!("http://{}/v1/kv/faults-probe", self.servers[i].http));
                let sent = start.elapsed();
                probes.spawn(async move {
                    let outcome = probe_write(&http, url, n).await;
                    let took = start.elapsed() - sent;
                    if outcome.is_err() {
                        // A quick refusal (no leader yet, connection refused) is not retried at once.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    (i, sent, took, outcome)
                });
            }
            match tokio::time::timeout(Duration::from_millis(50), probes.join_next()).await {
                Ok(Some(Ok((_, sent, took, Ok(()))))) => break Some(sent + took),
                Ok(Some(Ok((i, sent, took, Err(why))))) => {
                    in_flight[i] = false;
                    failed.push((i, sent, took, why));
                }
                _ => {}
            }
        };
        if verbose() && result.is_none_or(|d| d > Duration::from_secs(3)) {
            eprintln!("  probes until writable ({result:?}), failed ones:");
            for (i, at, took, why) in failed {
                eprintln!("    server-{} at {} ms: {why} after {} ms", i + 1, at.as_millis(), took.as_millis());
            }
        }
        result
    }

    /// Like [`Cluster::wait_writable`], but until a probe write through every live server has been
    /// acknowledged (after a partition heals: the cut-off servers follow the leader again).
    pub async fn wait_writable_everywhere(&self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut n = 0usize;
        for i in self.live() {
            let url = format!("http://{}/v1/kv/faults-probe", self.servers[i].http);
            loop {
                n += 1;
                let ok = match self.http.put(&url).body(n.to_string()).timeout(Duration::from_secs(1)).send().await {
                    Ok(r) if r.status().is_success() => r.text().await.is_ok_and(|t| t.trim() == "true"),
                    _ => false,
                };
                if ok {
                    break;
                }
                if start.elapsed() > timeout {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Some(start.elapsed())
    }

    /// The ModifyIndex of `faults-probe` as server `i` reads it (`?stale`: from its own state, or
    /// `?consistent`).
    async fn probe_index(&self, i: usize, mode: &str) -> Option<u64> {
        let url = format!("http://{}/v1/kv/faults-probe?{mode}", self.servers[i].http);
        let r = self.http.get(url).timeout(Duration::from_secs(1)).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        let v: serde_json::Value = r.json().await.ok()?;
        v.as_array()?.first()?.get("ModifyIndex")?.as_u64()
    }

    /// After a fault on server `i`: writes a probe through the cluster, then waits until server `i`'s
    /// own state (a `?stale` read through it) has that write. How long that took, or None after
    /// `timeout` (the server did not catch up).
    pub async fn wait_caught_up(&self, i: usize, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        self.wait_writable(timeout).await?;
        let mut target = None;
        while start.elapsed() < timeout {
            if target.is_none() {
                for j in self.live() {
                    if let Some(x) = self.probe_index(j, "consistent").await {
                        target = Some(x);
                        break;
                    }
                }
            }
            if let Some(t) = target {
                if self.probe_index(i, "stale").await.is_some_and(|x| x >= t) {
                    return Some(start.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The Raft configuration as the leader reports it.
    pub async fn raft_configuration(&self) -> Option<RaftConfiguration> {
        for i in self.live() {
            let url = format!("http://{}/v1/operator/raft/configuration", self.servers[i].http);
            if let Ok(r) = self.http.get(url).send().await {
                if r.status().is_success() {
                    if let Ok(c) = r.json::<RaftConfiguration>().await {
                        return Some(c);
                    }
                }
            }
        }
        None
    }

    /// The node ID a server keeps in its data directory (a wiped server gets a new one).
    pub fn node_id(&self, i: usize) -> Option<String> {
        std::fs::read_to_string(self.servers[i].dir.join("node-id")).ok().map(|s| s.trim().to_string())
    }

    /// Waits until the Raft configuration is exactly the servers' current node IDs, all voters (a
    /// wiped server has rejoined under its new ID and been promoted, its old member is gone).
    pub async fn wait_members_settled(&self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            let want: Option<Vec<String>> = (0..self.servers.len()).map(|i| self.node_id(i)).collect();
            if let (Some(mut want), Some(c)) = (want, self.raft_configuration().await) {
                want.sort();
                let mut voters: Vec<String> = c.servers.iter().filter(|s| s.voter).map(|s| s.id.clone()).collect();
                voters.sort();
                if voters == want && c.servers.len() == want.len() {
                    return Ok(start.elapsed());
                }
                last = format!(
                    "configuration {:?}, servers' IDs {want:?}",
                    c.servers.iter().map(|s| (&s.node, &s.id, s.voter)).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(format!("membership not settled after {timeout:?}: {last}"))
    }

    /// The servers' logs since the last call (for a failing run's report).
    pub fn logs(&mut self) -> String {
        let mut out = String::new();
        for (i, s) in self.servers.iter().enumerate() {
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            let from = (self.log_from[i] as usize).min(text.len());
            out.push_str(&format!("----- {} -----\n{}\n", s.name, &text[from..]));
            self.log_from[i] = text.len() as u64;
        }
        out
    }

    /// Keeps the servers' logs and data under `dest` (for a failing run).
    pub fn keep_logs(&self, dest: &Path) {
        let _ = std::fs::create_dir_all(dest);
        for s in &self.servers {
            let _ = std::fs::copy(&s.log, dest.join(format!("{}.log", s.name)));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.resume(i);
            self.kill(i);
        }
        // Unmounted before the temp dir they are in is deleted.
        self.disks.clear();
    }
}

/// One probe write (1 s timeout): Ok if acknowledged (`200 true`), else why not.
async fn probe_write(http: &reqwest::Client, url: String, n: usize) -> Result<(), String> {
    match http.put(url).body(n.to_string()).timeout(Duration::from_secs(1)).send().await {
        Ok(r) if r.status().is_success() => match r.text().await {
            Ok(t) if t.trim() == "true" => Ok(()),
            Ok(t) => Err(format!("200 {t}")),
            Err(e) => Err(format!("body: {e}")),
        },
        Ok(r) => {
            let status = r.status();
            Err(format!("{status} {}", r.text().await.unwrap_or_default().trim()))
        }
        Err(e) if e.is_timeout() => Err("timeout".to_string()),
        Err(e) if e.is_connect() => Err("connect".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn verbose() -> bool {
    std::env::var_os("ROSTER_FAULTS_VERBOSE").is_some()
}
