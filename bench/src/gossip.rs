//! `roster-gossip-bench`: gossip convergence and failure detection of Roster's membership layer
//! (chitchat, as servers and sidecars configure it), in process over a simulated UDP network with
//! injected packet loss, for 100 and 1,000 members. Compared with memberlist/Serf's published
//! defaults (not run here: they are figures from their documentation, quoted in docs/benchmarks.md).
//!
//! Per pool size it measures: join convergence (every member sees every other), propagation of one
//! key update to 100% of members, failure detection of a stopped member (first observer, median,
//! all), and false positives (a live member declared dead by anyone) over a quiet window under loss.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::ChitchatMessage;
use clap::Parser;
use registry::gossip::{Member, Membership, MembershipConfig, Role};
use serde::Serialize;
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(name = "roster-gossip-bench", about = "Gossip convergence and failure detection, in process")]
struct Args {
    /// Pool sizes.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    sizes: Vec<usize>,
    /// Packet loss of each run, in percent.
    #[arg(long, value_delimiter = ',', default_value = "0,10")]
    losses: Vec<f64>,
    /// Gossip round interval in ms (the servers' and sidecars' default).
    #[arg(long, default_value_t = registry::gossip::DEFAULT_INTERVAL_MS)]
    interval_ms: u64,
    #[arg(long, default_value_t = registry::gossip::DEFAULT_PHI_THRESHOLD)]
    phi: f64,
    /// Quiet window watched for false positives, in seconds.
    #[arg(long, default_value_t = 30)]
    quiet_secs: u64,
    /// Where to write results (JSON).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Measure a real sidecar process instead: start-up to registered, then RSS and CPU while idle
    /// in a pool of `--footprint-pool` members (one dev server, the rest simulated in this process
    /// over UDP on 127.0.0.1).
    #[arg(long)]
    footprint: bool,
    #[arg(long, default_value_t = 100)]
    footprint_pool: usize,
    /// With --footprint: the whole pool (server, sidecar, simulated members) gossips encrypted.
    #[arg(long)]
    encrypted: bool,
    #[arg(long, default_value = "target/release/roster")]
    roster_bin: std::path::PathBuf,
    #[arg(long, default_value = "target/release/roster-sidecar")]
    sidecar_bin: std::path::PathBuf,
    /// Idle window over which CPU is measured, in seconds.
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
}

/// An in-process network with UDP's manners: each socket has a bounded receive queue (a full
/// queue drops, as a full socket buffer does) and every datagram is lost with probability `loss`.
/// (chitchat's own channel transport queues without bound, so one process simulating 1,000
/// members that falls behind grows without limit instead of dropping.)
/// A datagram: who sent it, and what.
type Datagram = (SocketAddr, ChitchatMessage);

#[derive(Clone)]
struct SimNet {
    sockets: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Datagram>>>>,
    loss: f64,
}

/// Datagrams a socket holds before dropping (a few times Linux's default buffer for this traffic).
const SOCKET_QUEUE: usize = 16;

impl SimNet {
    fn new(loss: f64) -> Self {
        SimNet { sockets: Arc::new(Mutex::new(HashMap::new())), loss }
    }
}

struct SimSocket {
    addr: SocketAddr,
    net: SimNet,
    rx: mpsc::Receiver<Datagram>,
}

#[async_trait]
impl Transport for SimNet {
    async fn open(&self, listen_addr: SocketAddr) -> Result<Box<dyn Socket>> {
        let (tx, rx) = mpsc::channel(SOCKET_QUEUE);
        self.sockets.lock().unwrap_or_else(|p| p.into_inner()).insert(listen_addr, tx);
        Ok(Box::new(SimSocket { addr: listen_addr, net: self.clone(), rx }))
    }
}

#[async_trait]
impl Socket for SimSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> Result<()> {
        if rand::random::<f64>() >= self.net.loss {
            let tx = self.net.sockets.lock().unwrap_or_else(|p| p.into_inner()).get(&to).cloned();
            if let Some(tx) = tx {
                let _ = tx.try_send((self.addr, message));
            }
        }
        Ok(())
    }

    async fn recv(&mut self) -> Result<(SocketAddr, ChitchatMessage)> {
        self.rx.recv().await.ok_or_else(|| anyhow::anyhow!("socket closed"))
    }
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        self.net.sockets.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.addr);
    }
}

#[derive(Debug, Serialize, Default)]
struct Run {
    members: usize,
    loss_percent: f64,
    interval_ms: u64,
    phi_threshold: f64,
    /// Every member sees every other as live.
    join_convergence_s: Option<f64>,
    /// One key update seen by 99% and by 100% of members.
    update_99_s: Option<f64>,
    update_100_s: Option<f64>,
    /// After a member stops: first observer, half, and all observers see it dead.
    detect_first_s: Option<f64>,
    detect_median_s: Option<f64>,
    detect_all_s: Option<f64>,
    /// Live members missing from some member's live set, summed over samples of the quiet window.
    false_positives: usize,
    quiet_window_s: u64,
    /// Wall-clock time the whole run took (the process simulates every member on this machine).
    elapsed_s: f64,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i / 65_000) as u8, 0, 0], 1 + (i % 65_000) as u16))
}

async fn start_pool(n: usize, transport: &dyn Transport, args: &Args) -> Result<Vec<Membership>> {
    let interval = Duration::from_millis(args.interval_ms);
    let seeds: Vec<String> = (0..3.min(n)).map(|i| addr(i).to_string()).collect();
    let mut pool = Vec::with_capacity(n);
    for i in 0..n {
        let config = MembershipConfig {
            me: Member {
                name: format!("pod-{i:04}"),
                address: format!("10.1.{}.{}", i / 250, i % 250),
                datacenter: "dc1".into(),
                role: if i < 3 { Role::Server } else { Role::Client },
                version: env!("CARGO_PKG_VERSION").into(),
                gossip_addr: addr(i),
            },
            gossip_addr: addr(i),
            advertise_addr: None,
            seeds: seeds.clone(),
            cluster_id: registry::gossip::cluster_id("dc1"),
            gossip_interval: interval,
            failure_detector: registry::gossip::failure_detector(interval, args.phi),
        };
        pool.push(Membership::start(config, transport).await?);
        check_overload()?;
    }
    Ok(pool)
}

/// This process's RSS in MiB: one process simulates the whole pool, and if it cannot keep up, queued
/// messages pile up; past `MAX_RSS_MIB` the run stops rather than take the machine down.
fn own_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .map(|kib: u64| kib / 1024)
        .unwrap_or(0)
}

const MAX_RSS_MIB: u64 = 6 * 1024;

fn check_overload() -> Result<()> {
    let rss = own_rss_mib();
    if rss > MAX_RSS_MIB {
        anyhow::bail!("overloaded: {rss} MiB resident, the simulation cannot keep up with this pool on this machine");
    }
    Ok(())
}

/// How many live members each running member sees (itself included).
async fn live_counts(pool: &[Option<Membership>]) -> Vec<Option<usize>> {
    let mut out = Vec::with_capacity(pool.len());
    for m in pool {
        match m {
            Some(m) => out.push(Some(m.chitchat().lock().await.live_nodes().count())),
            None => out.push(None),
        }
    }
    out
}

fn quantile_time(times: &mut [f64], q: f64) -> Option<f64> {
    if times.is_empty() {
        return None;
    }
    times.sort_by(f64::total_cmp);
    let i = ((times.len() as f64 - 1.0) * q).round() as usize;
    Some(times[i])
}

async fn run(n: usize, loss: f64, args: &Args) -> Result<Run> {
    let started = Instant::now();
    let transport = SimNet::new(loss);
    let pool: Vec<Option<Membership>> = start_pool(n, &transport, args).await?.into_iter().map(Some).collect();
    let mut pool = pool;
    let mut r = Run {
        members: n,
        loss_percent: loss * 100.0,
        interval_ms: args.interval_ms,
        phi_threshold: args.phi,
        quiet_window_s: args.quiet_secs,
        ..Default::default()
    };
    // Polling 1,000 members' views is itself work on this machine: poll at a quarter round.
    let poll = Duration::from_millis(args.interval_ms / 4).max(Duration::from_millis(50));
    let limit = Duration::from_secs(180);

    // Join convergence.
    let t0 = Instant::now();
    loop {
        if live_counts(&pool).await.iter().all(|c| *c == Some(n)) {
            r.join_convergence_s = Some(t0.elapsed().as_secs_f64());
            break;
        }
        if t0.elapsed() > limit {
            eprintln!("  {n} members: no full convergence within {limit:?}");
            break;
        }
        check_overload()?;
        tokio::time::sleep(poll).await;
    }
    eprintln!("  {n} members, loss {:.0}%: joined in {:?}", loss * 100.0, r.join_convergence_s);

    // One key update, to everyone.
    let writer = n - 1;
    let writer_id = pool[writer].as_ref().map(|m| m.id().clone()).expect("writer");
    if let Some(m) = &pool[writer] {
        m.chitchat().lock().await.self_node_state().set("probe", "1");
    }
    let t0 = Instant::now();
    let mut seen_at: BTreeMap<usize, f64> = BTreeMap::new();
    while seen_at.len() < n && t0.elapsed() < limit {
        check_overload()?;
        for (i, m) in pool.iter().enumerate() {
            if seen_at.contains_key(&i) {
                continue;
            }
            if let Some(m) = m {
                let has = m.chitchat().lock().await.node_state(&writer_id).and_then(|s| s.get("probe")).is_some();
                if has {
                    seen_at.insert(i, t0.elapsed().as_secs_f64());
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
    let mut times: Vec<f64> = seen_at.values().copied().collect();
    times.sort_by(f64::total_cmp);
    let need99 = (n as f64 * 0.99).ceil() as usize;
    r.update_99_s = times.get(need99.saturating_sub(1)).copied();
    r.update_100_s = (times.len() == n).then(|| times[n - 1]);

    // Quiet window under loss: nobody may be declared dead.
    let t0 = Instant::now();
    let mut false_positives = 0usize;
    while t0.elapsed() < Duration::from_secs(args.quiet_secs) {
        check_overload()?;
        for c in live_counts(&pool).await.into_iter().flatten() {
            false_positives += n - c.min(n);
        }
        tokio::time::sleep(poll.max(Duration::from_millis(250))).await;
    }
    r.false_positives = false_positives;

    // Failure detection: stop one non-seed member.
    let victim = n / 2;
    let victim_id = pool[victim].as_ref().map(|m| m.id().clone()).expect("victim");
    if let Some(m) = pool[victim].take() {
        m.shutdown().await?;
    }
    let t0 = Instant::now();
    let mut detected: BTreeMap<usize, f64> = BTreeMap::new();
    while detected.len() < n - 1 && t0.elapsed() < Duration::from_secs(60) {
        check_overload()?;
        for (i, m) in pool.iter().enumerate() {
            if detected.contains_key(&i) {
                continue;
            }
            if let Some(m) = m {
                let live = m.chitchat().lock().await.live_nodes().any(|id| *id == victim_id);
                if !live {
                    detected.insert(i, t0.elapsed().as_secs_f64());
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
    let mut times: Vec<f64> = detected.values().copied().collect();
    r.detect_first_s = quantile_time(&mut times, 0.0);
    r.detect_median_s = quantile_time(&mut times, 0.5);
    r.detect_all_s = (times.len() == n - 1).then(|| times[n - 2]);
    for m in pool.into_iter().flatten() {
        m.shutdown().await?;
    }
    r.elapsed_s = started.elapsed().as_secs_f64();
    Ok(r)
}

fn fmt(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "not reached".into())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.footprint {
        return footprint::run(&args).await;
    }
    let mut runs = Vec::new();
    for &n in &args.sizes {
        for loss in args.losses.iter().map(|l| l / 100.0) {
            let r = match run(n, loss, &args).await {
                Ok(r) => r,
                Err(e) => {
                    println!("{n:>5} members, loss {:>4.1}%: {e:#}", loss * 100.0);
                    continue;
                }
            };
            println!(
                "{:>5} members, loss {:>4.1}%: join {} | update 99% {} 100% {} | detect first {} median {} all {} | false positives {} in {} s | run {:.0} s",
                r.members,
                r.loss_percent,
                fmt(r.join_convergence_s),
                fmt(r.update_99_s),
                fmt(r.update_100_s),
                fmt(r.detect_first_s),
                fmt(r.detect_median_s),
                fmt(r.detect_all_s),
                r.false_positives,
                r.quiet_window_s,
                r.elapsed_s
            );
            runs.push(r);
        }
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&runs)?)?;
    }
    Ok(())
}

mod footprint {
    //! One real sidecar process in a pool: start-up to registered, RSS and CPU while idle.

    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context, Result};
    use registry::gossip::{Member, Membership, MembershipConfig, Role};
    use serde::Serialize;

    use super::Args;

    const SERVER_HTTP: &str = "127.0.0.1:18901";
    const SERVER_GOSSIP: &str = "127.0.0.1:18903";
    const SIDECAR_HTTP: &str = "127.0.0.1:18911";
    const SIDECAR_GOSSIP: &str = "127.0.0.1:18913";

    struct Killed(Child);

    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[derive(Serialize)]
    struct Footprint {
        pool_members: usize,
        encrypted: bool,
        startup_to_registered_ms: Vec<f64>,
        startup_median_ms: f64,
        rss_idle_kib: u64,
        rss_peak_kib: u64,
        cpu_idle_percent: f64,
        idle_window_s: u64,
    }

    /// (RSS, peak RSS) in KiB, and CPU ticks (user + system) of a process.
    fn proc_stats(pid: u32) -> Result<(u64, u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) start at ") ".
        let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok((field("VmRSS:"), field("VmHWM:"), ticks))
    }

    fn start_sidecar(args: &Args, dir: &std::path::Path, run: usize, key: Option<&str>) -> Result<Killed> {
        let services = serde_json::json!([{
            "name": "web",
            "port": 8080,
            "check": {"http": format!("http://{SERVER_HTTP}/v1/status/leader"), "interval": "10s"},
        }]);
        let log = std::fs::File::create(dir.join(format!("sidecar-{run}.log")))?;
        let child = Command::new(&args.sidecar_bin)
            .args(["--node-name", "pod-measured", "--address", "127.0.0.1"])
            .args(["--servers", SERVER_HTTP, "--http-addr", SIDECAR_HTTP])
            .args(["--gossip-addr", SIDECAR_GOSSIP, "--gossip-seeds", SERVER_GOSSIP])
            .args(["--services", &services.to_string()])
            .envs(key.map(|k| ("ROSTER_GOSSIP_KEY", k)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", args.sidecar_bin.display()))?;
        Ok(Killed(child))
    }

    async fn registered(http: &reqwest::Client) -> bool {
        let Ok(r) = http.get(format!("http://{SERVER_HTTP}/v1/catalog/service/web")).send().await else { return false };
        let list: serde_json::Value = r.json().await.unwrap_or_default();
        list.as_array().is_some_and(|a| a.iter().any(|e| e["Node"] == "pod-measured"))
    }

    pub async fn run(args: &Args) -> Result<()> {
        let dir = tempfile::tempdir()?;
        let key = args.encrypted.then(registry::gossip::GossipKey::generate);
        let server = Killed(
            Command::new(&args.roster_bin)
                .args([
                    "dev",
                    "--http-addr",
                    SERVER_HTTP,
                    "--rpc-addr",
                    "127.0.0.1:18902",
                    "--gossip-addr",
                    SERVER_GOSSIP,
                ])
                .envs(key.as_deref().map(|k| ("ROSTER_GOSSIP_KEY", k)))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("server.log"))?)
                .spawn()
                .with_context(|| format!("starting {}", args.roster_bin.display()))?,
        );
        let http = registry::client::http_builder().timeout(Duration::from_secs(5)).build()?;
        let t0 = Instant::now();
        while http.get(format!("http://{SERVER_HTTP}/v1/status/leader")).send().await.is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("the dev server did not come up");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The rest of the pool, simulated here over real UDP.
        let interval = Duration::from_millis(args.interval_ms);
        let simulated = args.footprint_pool.saturating_sub(2);
        let mut swarm = Vec::new();
        for i in 0..simulated {
            let addr: std::net::SocketAddr = ([127, 0, 0, 1], 19_000 + i as u16).into();
            let config = MembershipConfig {
                me: Member {
                    name: format!("sim-{i:03}"),
                    address: "127.0.0.1".into(),
                    datacenter: "dc1".into(),
                    role: Role::Client,
                    version: env!("CARGO_PKG_VERSION").into(),
                    gossip_addr: addr,
                },
                gossip_addr: addr,
                advertise_addr: None,
                seeds: vec![SERVER_GOSSIP.into()],
                cluster_id: registry::gossip::cluster_id("dc1"),
                gossip_interval: interval,
                failure_detector: registry::gossip::failure_detector(interval, args.phi),
            };
            let keyring = key.as_deref().map(registry::gossip::Keyring::new).transpose().map_err(anyhow::Error::msg)?;
            let me = std::sync::Arc::new(registry::gossip::vivaldi::Shared::new(&config.me.name));
            let member = Membership::start(config, &registry::gossip::GossipUdpTransport { keyring, me }).await?;
            swarm.push(member);
        }

        // Start-up to registered, five times (a clean stop in between).
        let mut startup = Vec::new();
        let mut sidecar = None;
        for run in 0..5 {
            let t0 = Instant::now();
            let child = start_sidecar(args, dir.path(), run, key.as_deref())?;
            while !registered(&http).await {
                if t0.elapsed() > Duration::from_secs(20) {
                    bail!("the sidecar did not register within 20 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            startup.push(t0.elapsed().as_secs_f64() * 1000.0);
            if run < 4 {
                let _ = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status();
                let mut child = child;
                let _ = child.0.wait();
                // Wait for the deregistration so the next run measures a fresh registration.
                let stopped = Instant::now();
                while registered(&http).await {
                    if stopped.elapsed() > Duration::from_secs(20) {
                        bail!("the sidecar stopped but its registration stayed for 20 s");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } else {
                sidecar = Some(child);
            }
        }
        let sidecar = sidecar.context("no sidecar")?;
        let pid = sidecar.0.id();

        // Idle in the full pool.
        let t0 = Instant::now();
        loop {
            let members: serde_json::Value =
                match http.get(format!("http://{SIDECAR_HTTP}/v1/agent/members")).send().await {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => serde_json::Value::Null,
                };
            let live = members.as_array().map(|a| a.iter().filter(|m| m["Status"] == 1).count()).unwrap_or(0);
            if live >= args.footprint_pool {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("the sidecar sees {live} of {} members after 60 s", args.footprint_pool);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (_, _, ticks0) = proc_stats(pid)?;
        tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
        let (rss, peak, ticks1) = proc_stats(pid)?;
        let ticks_per_s = 100.0; // USER_HZ on Linux
        let cpu = (ticks1 - ticks0) as f64 / ticks_per_s / args.idle_secs as f64 * 100.0;
        let mut sorted = startup.clone();
        sorted.sort_by(f64::total_cmp);
        let f = Footprint {
            pool_members: args.footprint_pool,
            encrypted: args.encrypted,
            startup_median_ms: sorted[sorted.len() / 2],
            startup_to_registered_ms: startup,
            rss_idle_kib: rss,
            rss_peak_kib: peak,
            cpu_idle_percent: cpu,
            idle_window_s: args.idle_secs,
        };
        println!(
            "sidecar in a pool of {}{}: start-up to registered median {:.0} ms (runs {:?}), RSS idle {:.1} MiB (peak {:.1} MiB), CPU idle {:.2}% of one core over {} s",
            f.pool_members,
            if f.encrypted { " (encrypted gossip)" } else { "" },
            f.startup_median_ms,
            f.startup_to_registered_ms.iter().map(|v| v.round()).collect::<Vec<_>>(),
            f.rss_idle_kib as f64 / 1024.0,
            f.rss_peak_kib as f64 / 1024.0,
            f.cpu_idle_percent,
            f.idle_window_s
        );
        if let Some(out) = &args.out {
            std::fs::write(out, serde_json::to_vec_pretty(&f)?)?;
        }
        for m in swarm {
            m.shutdown().await?;
        }
        drop(sidecar);
        drop(server);
        Ok(())
    }
}
