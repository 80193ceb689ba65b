//! Starting and stopping the two 3-server clusters on loopback. Child processes are killed when their
//! [`Proc`] is dropped (normal end, error, panic unwinding, Ctrl-C), and data directories are removed
//! after the processes are gone.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;

/// A child process that is killed (and reaped) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with output to `log`. Variables starting with `env_prefix` are removed: both
    /// servers read them as flags (ROSTER_*, ETCD_*), and the benchmark must run the flags it shows.
    fn spawn(name: &str, cmd: &mut Command, env_prefix: &str, log: PathBuf) -> Result<Proc> {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with(env_prefix) {
                cmd.env_remove(k);
            }
        }
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Proc { name: name.to_string(), child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process already exited: a server that died must not be silently benchmarked.
    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); last log lines:\n{}", self.name, tail(&self.log, 15));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGKILL: a clean Raft hand-off on SIGTERM would only slow the teardown down.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Resident memory of a process in KiB (`VmRSS` in /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("reading {pid}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS for pid {pid}"))
}

/// CPU time (user + system) a process has used, in milliseconds. /proc reports clock ticks; Linux's
/// USER_HZ is 100 on every mainstream architecture, and reading it properly would need libc.
pub fn cpu_ms(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading {pid}"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/<pid>/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).context("malformed /proc/<pid>/stat");
    Ok((ticks(11)? + ticks(12)?) * 10)
}

/// Fails early and clearly when another process already holds one of our ports.
fn ensure_free(addrs: &[SocketAddr]) -> Result<()> {
    for a in addrs {
        TcpListener::bind(a).with_context(|| format!("{a} is in use; pick other ports with --base-port"))?;
    }
    Ok(())
}

/// Addresses of one server (or member): the client API and the peer (Raft) port.
#[derive(Debug, Clone)]
pub struct Member {
    pub http: SocketAddr,
    pub peer: SocketAddr,
}

/// A Roster server's DNS interface: its HTTP address's host, port + 3.
pub fn dns_addr(m: &Member) -> SocketAddr {
    SocketAddr::new(m.http.ip(), m.http.port() + 3)
}

fn members(base_port: u16, client_off: u16, peer_off: u16) -> Vec<Member> {
    (1..=3u8)
        .map(|n| Member {
            http: SocketAddr::from(([127, 0, 0, n], base_port + client_off)),
            peer: SocketAddr::from(([127, 0, 0, n], base_port + peer_off)),
        })
        .collect()
}

/// Polls `check` every 100 ms until it answers true, a process dies, or `timeout` passes.
async fn wait_until<F, Fut>(what: &str, procs: &mut [Proc], timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    loop {
        for p in procs.iter_mut() {
            p.check_running()?;
        }
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("{what} not ready after {timeout:?} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three `roster server` processes forming one cluster.
pub struct RosterCluster {
    // Field order matters: processes are killed before their data directory is removed.
    pub procs: Vec<Proc>,
    pub members: Vec<Member>,
    pub dir: tempfile::TempDir,
}

impl RosterCluster {
    pub async fn start(bin: &Path, base_port: u16, keep: bool) -> Result<RosterCluster> {
        let members = members(base_port, 0, 1);
        ensure_free(&members.iter().flat_map(|m| [m.http, m.peer, dns_addr(m)]).collect::<Vec<_>>())?;
        let dir = tempdir("roster-bench-roster-", keep)?;
        let join = members.iter().map(|m| m.peer.to_string()).collect::<Vec<_>>().join(",");
        let mut procs = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let n = i + 1;
            let data = dir.path().join(format!("s{n}"));
            let mut cmd = Command::new(bin);
            cmd.arg("server")
                .args(["--node-name", &format!("bench-{n}")])
                .arg("--data-dir")
                .arg(&data)
                .args(["--http-addr", &m.http.to_string(), "--rpc-addr", &m.peer.to_string()])
                .args(["--bootstrap-expect", "3", "--retry-join", &join])
                .args(["--dns-addr", &dns_addr(m).to_string()])
                // The load generator is one client IP with up to 10,000 connections: no per-client cap.
                .args(["--http-max-conns-per-client", "0"])
                .env("RUST_LOG", "warn");
            let log = dir.path().join(format!("s{n}.log"));
            procs.push(Proc::spawn(&format!("roster server bench-{n}"), &mut cmd, "ROSTER_", log)?);
        }
        let mut cluster = RosterCluster { procs, members, dir };
        let http = control_client()?;
        let addrs: Vec<String> = cluster.members.iter().map(|m| m.http.to_string()).collect();
        wait_until("Roster cluster", &mut cluster.procs, Duration::from_secs(60), || {
            let (http, addrs) = (http.clone(), addrs.clone());
            async move {
                let mut leaders = Vec::new();
                for a in &addrs {
                    leaders.push(roster_leader_of(&http, a).await?);
                }
                Ok(!leaders[0].is_empty() && leaders.iter().all(|l| *l == leaders[0]))
            }
        })
        .await?;
        Ok(cluster)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }
}

/// The RPC address `/v1/status/leader` reports ("" while there is none).
pub async fn roster_leader_of(http: &reqwest::Client, addr: &str) -> Result<String> {
    let resp = http.get(format!("http://{addr}/v1/status/leader")).send().await?.error_for_status()?;
    let leader: String = resp.json().await.context("decoding /v1/status/leader")?;
    Ok(leader)
}

/// Three etcd members forming one cluster.
pub struct EtcdCluster {
    pub procs: Vec<Proc>,
    pub members: Vec<Member>,
    pub dir: tempfile::TempDir,
}

impl EtcdCluster {
    pub async fn start(bin: &Path, base_port: u16, keep: bool) -> Result<EtcdCluster> {
        let members = members(base_port, 10, 11);
        ensure_free(&members.iter().flat_map(|m| [m.http, m.peer, dns_addr(m)]).collect::<Vec<_>>())?;
        let dir = tempdir("roster-bench-etcd-", keep)?;
        let initial = members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("e{}=http://{}", i + 1, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut procs = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let n = i + 1;
            let (client_url, peer_url) = (format!("http://{}", m.http), format!("http://{}", m.peer));
            let mut cmd = Command::new(bin);
            cmd.args(["--name", &format!("e{n}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("e{n}")))
                .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "roster-bench"])
                // 8 GiB: the 500-client put run writes ~1 GB of history between compactions; the
                // default 2 GiB quota would turn into "database space exceeded" errors, not a figure.
                .args(["--quota-backend-bytes", "8589934592"])
                .args(["--logger", "zap", "--log-level", "warn"]);
            let log = dir.path().join(format!("e{n}.log"));
            procs.push(Proc::spawn(&format!("etcd e{n}"), &mut cmd, "ETCD_", log)?);
        }
        let mut cluster = EtcdCluster { procs, members, dir };
        let http = control_client()?;
        let addrs: Vec<String> = cluster.members.iter().map(|m| m.http.to_string()).collect();
        wait_until("etcd cluster", &mut cluster.procs, Duration::from_secs(60), || {
            let (http, addrs) = (http.clone(), addrs.clone());
            async move {
                for a in &addrs {
                    let v: serde_json::Value = http.get(format!("http://{a}/health")).send().await?.json().await?;
                    if v.get("health").and_then(|h| h.as_str()) != Some("true") {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        })
        .await?;
        Ok(cluster)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }
}

/// Index of the etcd leader among `addrs`: the member whose status header names itself as leader.
pub async fn etcd_leader(http: &reqwest::Client, addrs: &[String]) -> Result<usize> {
    for (i, a) in addrs.iter().enumerate() {
        let v: serde_json::Value = http
            .post(format!("http://{a}/v3/maintenance/status"))
            .json(&serde_json::json!({}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
            .context("decoding maintenance status")?;
        let me = v.pointer("/header/member_id").and_then(|x| x.as_str());
        let leader = v.get("leader").and_then(|x| x.as_str());
        if me.is_some() && me == leader {
            return Ok(i);
        }
    }
    bail!("no etcd member reports itself as leader")
}

/// etcd's JSON gateway carries keys and values as base64.
pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A short-timeout client for control calls (readiness, leader, cleanup).
pub fn control_client() -> Result<reqwest::Client> {
    registry::client::http_builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(120))
        .build()
        .context("building the control HTTP client")
}

fn tempdir(prefix: &str, keep: bool) -> Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    b.disable_cleanup(keep);
    b.tempdir().context("creating a temporary directory")
}

/// `etcd --version`'s first line, or why there is none.
pub fn version_of(bin: &Path, arg: &str) -> String {
    match Command::new(bin).arg(arg).output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}
