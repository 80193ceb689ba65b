//! A scenario: a cluster, the workload, a fault schedule run beside it, then the checks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use crate::checker::{self, Options};
use crate::cluster::Cluster;
use crate::history::{History, Operation};
use crate::workload::{self, Shared, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the leader, restart it (data kept) after a while.
    LeaderKill,
    /// SIGKILL a random server, restart it (data kept).
    RandomKill,
    /// SIGSTOP the leader for longer than the election timeout, then SIGCONT.
    LeaderPause,
    /// SIGKILL a server (the leader every other time), wipe its data directory, start it again:
    /// it must rejoin as a new member.
    WipeRestart,
    /// SIGKILL the leader and start it again at once (0.2-0.6 s), before the others elect a new one:
    /// it comes back as leader of the same term.
    LeaderQuickRestart,
    /// Each round one of the above at random.
    Mixed,
    /// Partition (servers in network namespaces): the leader hears nobody and nobody hears it.
    LeaderIsolated,
    /// Partition: the leader and the fewest others that make a minority (5 servers: 2 | 3) apart from
    /// the majority.
    LeaderInMinority,
    /// Partial partition: one follower (the bridge) hears everyone; the leader's side and the other
    /// side do not hear each other (3 servers: leader | other, both with the bridge).
    BridgeNode,
    /// Each server's data directory on a small tmpfs: fill one server's (the leader every other
    /// round, else a follower) until writes fail with ENOSPC, keep it full 3-5 s, free it; restart
    /// the server if it exited; it must catch up.
    DiskFull,
    /// A partition (one of the three above at random) and, while it holds, a process fault on a
    /// random server: SIGKILL (restarted at the heal, data kept), SIGSTOP (SIGCONT at the heal) or
    /// SIGKILL and restart at once; the heal ends the two in a random order.
    Combined,
}

impl Fault {
    /// Partitions need the servers in network namespaces.
    pub fn is_partition(self) -> bool {
        matches!(self, Fault::LeaderIsolated | Fault::LeaderInMinority | Fault::BridgeNode | Fault::Combined)
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub servers: usize,
    /// HTTP port; RPC and gossip use the next two.
    pub port: u16,
    pub fault: Fault,
    /// Operations to record (at least).
    pub ops: usize,
    /// Fault rounds to do (at least), even if the operations are done sooner.
    pub min_faults: usize,
    pub clients: usize,
    pub seed: u64,
    /// How long a partition is held, in ms (a random duration in this range each round).
    pub partition_ms: (u64, u64),
    /// The transaction workload ([`crate::txn`]) instead of single-key register operations.
    pub txn: bool,
}

impl Scenario {
    /// A scenario sized from the environment: `ROSTER_FAULTS_OPS` (default 1,500),
    /// `ROSTER_FAULTS_MIN_FAULTS` (default 2), `ROSTER_FAULTS_SEED` (default: from the clock),
    /// `ROSTER_FAULTS_PARTITION_MS` (`min-max`, default 3000-5000).
    pub fn from_env(name: &str, servers: usize, port: u16, fault: Fault) -> Scenario {
        let var = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        let clock =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Scenario {
            name: name.to_string(),
            servers,
            port,
            fault,
            ops: var("ROSTER_FAULTS_OPS", 1_500) as usize,
            min_faults: var("ROSTER_FAULTS_MIN_FAULTS", 2) as usize,
            clients: var("ROSTER_FAULTS_CLIENTS", 8) as usize,
            seed: var("ROSTER_FAULTS_SEED", clock % 1_000_000),
            partition_ms: std::env::var("ROSTER_FAULTS_PARTITION_MS")
                .ok()
                .and_then(|v| {
                    let (a, b) = v.split_once('-')?;
                    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                    (a < b).then_some((a, b))
                })
                .unwrap_or((3_000, 5_000)),
            txn: false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub name: String,
    pub seed: u64,
    pub ops: usize,
    pub reads: usize,
    pub acked_writes: usize,
    pub unknown_writes: usize,
    pub keys: usize,
    pub faults: Vec<String>,
    /// Linearizability violations (keys) with writes, CAS, `?consistent` and default-mode reads
    /// (default reads are served under the leader's lease, `registry/src/raft/lease.rs`, and must be
    /// linearizable too).
    pub violations: Vec<String>,
    /// Of those, the keys still not linearizable without the default-mode reads (checked only when
    /// there are violations: tells a default-read anomaly from a `?consistent` or write one).
    pub violations_without_default_reads: Vec<String>,
    /// Keys the search could not decide.
    pub undecided: Vec<String>,
    pub lost_writes: usize,
    pub stale_non_monotonic: usize,
    /// From each fault's injection to the first acknowledged write (None: not within the fault).
    pub fault_to_writable: Vec<Option<Duration>>,
    /// From each heal (restart, SIGCONT) to the first acknowledged write.
    pub heal_to_writable: Vec<Option<Duration>>,
    /// Partitions: from each heal to an acknowledged write through every server.
    pub heal_to_writable_everywhere: Vec<Option<Duration>>,
    /// Wipe scenario: from the restart to the configuration having every server as a voter once.
    pub rejoin: Vec<Result<Duration, String>>,
    /// Full disk: from the space being freed (and the server restarted if it exited) to the server's
    /// own state having a write made after that (None: not within 60 s).
    pub caught_up: Vec<Option<Duration>>,
    /// Transaction workload: reads that saw one key of a pair without the other's matching write.
    pub torn: Vec<String>,
    /// Reads of one key that returned one ModifyIndex with different values.
    pub index_conflicts: Vec<String>,
    pub elapsed: Duration,
    pub check_time: Duration,
    pub history_file: PathBuf,
}

impl Summary {
    pub fn max_heal_to_writable(&self) -> Option<Duration> {
        self.heal_to_writable.iter().flatten().max().copied()
    }

    pub fn line(&self) -> String {
        let ms = |v: &[Option<Duration>]| {
            v.iter().map(|d| d.map_or("-".to_string(), |d| d.as_millis().to_string())).collect::<Vec<_>>().join(",")
        };
        format!(
            "{}: seed {} ops {} (reads {}, acked writes {}, unknown writes {}) keys {} faults {} | violations {} \
             (without default reads {}) torn {} index conflicts {} undecided {} lost {} stale-non-monotonic {} | fault->writable ms [{}] \
             heal->writable ms [{}] heal->writable everywhere ms [{}] rejoin {:?} caught up ms [{}] | {:.1}s run, \
             {:.1}s check",
            self.name,
            self.seed,
            self.ops,
            self.reads,
            self.acked_writes,
            self.unknown_writes,
            self.keys,
            self.faults.len(),
            self.violations.len(),
            self.violations_without_default_reads.len(),
            self.torn.len(),
            self.index_conflicts.len(),
            self.undecided.len(),
            self.lost_writes,
            self.stale_non_monotonic,
            ms(&self.fault_to_writable),
            ms(&self.heal_to_writable),
            ms(&self.heal_to_writable_everywhere),
            self.rejoin.iter().map(|r| r.as_ref().map(|d| d.as_millis()).map_err(|e| e.clone())).collect::<Vec<_>>(),
            ms(&self.caught_up),
            self.elapsed.as_secs_f64(),
            self.check_time.as_secs_f64(),
        )
    }
}

/// Where histories go: `ROSTER_FAULTS_OUT`, else `target/faults/`.
pub fn out_dir() -> PathBuf {
    if let Ok(p) = std::env::var("ROSTER_FAULTS_OUT") {
        return PathBuf::from(p);
    }
    let bin = crate::cluster::roster_bin();
    bin.parent().and_then(|p| p.parent()).map(|t| t.join("faults")).unwrap_or_else(|| PathBuf::from("faults-out"))
}

fn verbose() -> bool {
    std::env::var_os("ROSTER_FAULTS_VERBOSE").is_some()
}

/// The time of day (UTC, `HH:MM:SS.mmm`) for verbose lines, to match the servers' logs.
fn utc_now() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}.{:03}", s / 3600 % 24, s / 60 % 60, s % 60, ms % 1000)
}

/// With ROSTER_FAULTS_VERBOSE: when a heal happened (to match the servers' logs).
fn note_heal() {
    if verbose() {
        eprintln!("{} healed", utc_now());
    }
}

struct FaultLog {
    faults: Vec<String>,
    fault_to_writable: Vec<Option<Duration>>,
    heal_to_writable: Vec<Option<Duration>>,
    heal_to_writable_everywhere: Vec<Option<Duration>>,
    rejoin: Vec<Result<Duration, String>>,
    caught_up: Vec<Option<Duration>>,
    /// Why the run stopped early: a server exited that the harness did not stop.
    aborted: Option<String>,
}

async fn fault_loop(
    cluster: Arc<tokio::sync::Mutex<Cluster>>,
    fault: Fault,
    seed: u64,
    partition_ms: (u64, u64),
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
) -> FaultLog {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut log = FaultLog {
        faults: Vec::new(),
        fault_to_writable: Vec::new(),
        heal_to_writable: Vec::new(),
        heal_to_writable_everywhere: Vec::new(),
        rejoin: Vec::new(),
        caught_up: Vec::new(),
        aborted: None,
    };
    let mut round = 0usize;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..2_500))).await;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let kind = match fault {
            Fault::Mixed => [
                Fault::LeaderKill,
                Fault::RandomKill,
                Fault::LeaderPause,
                Fault::WipeRestart,
                Fault::LeaderQuickRestart,
            ][rng.random_range(0..5)],
            Fault::Combined => {
                let n = cluster.lock().await.servers.len();
                // A minority of more than the leader alone needs 5 servers.
                let kinds: &[Fault] = if n >= 5 {
                    &[Fault::LeaderIsolated, Fault::LeaderInMinority, Fault::BridgeNode]
                } else {
                    &[Fault::LeaderIsolated, Fault::BridgeNode]
                };
                kinds[rng.random_range(0..kinds.len())]
            }
            f => f,
        };
        let mut c = cluster.lock().await;
        let exits = c.unexpected_exits();
        if !exits.is_empty() {
            // Nothing sensible can follow (the workload would wait for operations that never come).
            log.aborted = Some(format!("{exits:?}\n{}", c.logs()));
            stop.store(true, Ordering::SeqCst);
            break;
        }
        let Some(leader) = c.wait_leader(Duration::from_secs(20)).await else {
            log.faults.push("no leader before the fault".into());
            continue;
        };
        let n = c.servers.len();
        if kind.is_partition() {
            let groups = partition_groups(kind, leader, n, &mut rng);
            let down = Duration::from_millis(rng.random_range(partition_ms.0..partition_ms.1));
            let injected = Instant::now();
            let names = |g: &[usize]| g.iter().map(|i| format!("server-{}", i + 1)).collect::<Vec<_>>().join(",");
            let described = match &groups {
                Split::Bridge { left, bridge, right } => {
                    for &a in left {
                        for &b in right {
                            c.cut(a, b);
                        }
                    }
                    format!("[{}] <- server-{} -> [{}]", names(left), bridge + 1, names(right))
                }
                Split::Groups(g) => {
                    c.partition(g);
                    g.iter().map(|g| format!("[{}]", names(g))).collect::<Vec<_>>().join(" | ")
                }
            };
            let mut described = format!("{kind:?} {described} (leader was server-{}) for {down:?}", leader + 1);
            // Combined: a process fault while the partition holds. 0: SIGKILL until the heal; 1: SIGSTOP
            // until the heal; 2: SIGKILL and restart 0.2-0.6 s later.
            let mut process_fault = None;
            if fault == Fault::Combined {
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..1_500))).await;
                let target = rng.random_range(0..n);
                let what = rng.random_range(0..3u8);
                match what {
                    1 => c.pause(target),
                    _ => c.kill(target),
                }
                let at = injected.elapsed().as_millis();
                if what == 2 {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
                    c.restart(target);
                }
                let name = ["SIGKILL until the heal", "SIGSTOP until the heal", "SIGKILL and restart at once"];
                described.push_str(&format!("; at {at} ms server-{} {}", target + 1, name[usize::from(what)]));
                process_fault = Some(target);
            }
            let network_first = rng.random_bool(0.5);
            if process_fault.is_some() {
                described.push_str(if network_first { "; heal network first" } else { "; heal processes first" });
            }
            log.faults.push(described);
            if verbose() {
                eprintln!("{} fault: {}", utc_now(), log.faults.last().map_or("", String::as_str));
            }
            log.fault_to_writable.push(c.wait_writable(down.saturating_sub(injected.elapsed())).await);
            tokio::time::sleep(down.saturating_sub(injected.elapsed())).await;
            if let (Some(t), false) = (process_fault, network_first) {
                c.resume(t);
                c.restart(t);
            }
            c.heal_network();
            if let (Some(t), true) = (process_fault, network_first) {
                c.resume(t);
                c.restart(t);
            }
            note_heal();
            log.heal_to_writable.push(c.wait_writable(Duration::from_secs(30)).await);
            let everywhere = c.wait_writable_everywhere(Duration::from_secs(30)).await;
            log.heal_to_writable_everywhere.push(everywhere);
            drop(c);
            round += 1;
            rounds.store(round, Ordering::SeqCst);
            continue;
        }
        if kind == Fault::DiskFull {
            let target = if round.is_multiple_of(2) {
                leader
            } else {
                *(0..n).filter(|&i| i != leader).collect::<Vec<_>>().choose(&mut rng).unwrap_or(&leader)
            };
            let down = Duration::from_millis(rng.random_range(3_000..5_000));
            let injected = Instant::now();
            let filled = c.fill_disk(target);
            log.fault_to_writable.push(c.wait_writable(down).await);
            tokio::time::sleep(down.saturating_sub(injected.elapsed())).await;
            // The server fails only when its log needs a page the file does not have yet, which can
            // take seconds: the disk stays full until it exits, up to DISK_FULL_MAX.
            let mut exit = c.exited(target);
            while exit.is_none() && injected.elapsed() < DISK_FULL_MAX {
                tokio::time::sleep(Duration::from_millis(100)).await;
                exit = c.exited(target);
            }
            let held = injected.elapsed();
            c.free_disk(target);
            let healed = Instant::now();
            if exit.is_some() {
                c.restart(target);
            }
            log.heal_to_writable.push(c.wait_writable(Duration::from_secs(30)).await);
            log.caught_up.push(c.wait_caught_up(target, Duration::from_secs(60)).await.map(|_| healed.elapsed()));
            log.faults.push(format!(
                "{kind:?} server-{} (leader was server-{}) filled with {} for {held:.1?}: {}",
                target + 1,
                leader + 1,
                match filled {
                    Ok(b) => format!("{} kB", b / 1024),
                    Err(e) => format!("error {e}"),
                },
                match exit {
                    Some(status) => format!("it exited ({status}), restarted once freed"),
                    None => "it kept running".to_string(),
                }
            ));
            if verbose() {
                eprintln!("{} fault: {}", utc_now(), log.faults.last().map_or("", String::as_str));
            }
            drop(c);
            round += 1;
            rounds.store(round, Ordering::SeqCst);
            continue;
        }
        let (target, down) = match kind {
            Fault::LeaderKill | Fault::LeaderPause => (leader, Duration::from_millis(rng.random_range(2_500..4_000))),
            Fault::LeaderQuickRestart => (leader, Duration::from_millis(rng.random_range(200..600))),
            Fault::RandomKill => (rng.random_range(0..n), Duration::from_millis(rng.random_range(1_000..4_000))),
            _ => (if round.is_multiple_of(2) { leader } else { rng.random_range(0..n) }, Duration::from_millis(1_000)),
        };
        let injected = Instant::now();
        match kind {
            Fault::LeaderPause => c.pause(target),
            _ => c.kill(target),
        }
        if kind == Fault::WipeRestart {
            c.wipe(target);
        }
        log.faults.push(format!("{kind:?} server-{} (leader was server-{}) for {down:?}", target + 1, leader + 1));
        if verbose() {
            eprintln!("{} fault: {}", utc_now(), log.faults.last().map_or("", String::as_str));
        }
        let during = c.wait_writable(down).await;
        log.fault_to_writable.push(during);
        let left = down.saturating_sub(injected.elapsed());
        tokio::time::sleep(left).await;
        match kind {
            Fault::LeaderPause => c.resume(target),
            _ => c.restart(target),
        }
        note_heal();
        let healed = c.wait_writable(Duration::from_secs(30)).await;
        log.heal_to_writable.push(healed);
        if kind == Fault::WipeRestart {
            log.rejoin.push(c.wait_members_settled(Duration::from_secs(90)).await);
        }
        drop(c);
        round += 1;
        rounds.store(round, Ordering::SeqCst);
    }
    log
}

/// How a partition splits the servers.
enum Split {
    /// Groups that do not hear each other.
    Groups(Vec<Vec<usize>>),
    /// `left` and `right` do not hear each other; `bridge` hears both.
    Bridge { left: Vec<usize>, bridge: usize, right: Vec<usize> },
}

/// The split of a partition round: the leader always on the side that loses (alone, in the
/// minority, or cut from the far side of a bridge).
fn partition_groups(kind: Fault, leader: usize, n: usize, rng: &mut StdRng) -> Split {
    let mut others: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
    // A random order of the followers: which of them join the leader's side or bridge is random.
    others.shuffle(rng);
    match kind {
        Fault::LeaderIsolated => Split::Groups(vec![vec![leader], others]),
        Fault::LeaderInMinority => {
            let minority = (n - 1) / 2;
            let mut small = vec![leader];
            small.extend(others.drain(..minority - 1));
            small.sort_unstable();
            others.sort_unstable();
            Split::Groups(vec![small, others])
        }
        _ => {
            let bridge = others.remove(0);
            // The rest split as evenly as possible, the leader's side no bigger than the other.
            let mut left = vec![leader];
            let take = others.len() / 2;
            left.extend(others.drain(..take));
            left.sort_unstable();
            others.sort_unstable();
            Split::Bridge { left, bridge, right: others }
        }
    }
}

/// The size of each server's disk in the full-disk scenario.
pub const DISK_MB: u64 = 64;
/// How long a disk is kept full at most, waiting for its server to fail.
const DISK_FULL_MAX: Duration = Duration::from_secs(15);

/// Runs the scenario and checks its history. Panics only on harness failures (no cluster).
pub async fn run(s: &Scenario) -> Summary {
    let started = Instant::now();
    let mut cluster = if s.fault.is_partition() {
        let net = crate::netns::Net::create(s.servers).unwrap_or_else(|e| panic!("network namespaces: {e}"));
        Cluster::start_in_namespaces(s.servers, s.port, net)
    } else if s.fault == Fault::DiskFull {
        Cluster::start_with_small_disks(s.servers, s.port, DISK_MB)
    } else {
        Cluster::start(s.servers, s.port)
    };
    if cluster.wait_leader(Duration::from_secs(60)).await.is_none() {
        panic!("no leader at start:\n{}", cluster.logs());
    }
    cluster.wait_writable(Duration::from_secs(30)).await.expect("cluster writable at start");
    let servers: Vec<String> = cluster.servers.iter().map(|x| x.http.clone()).collect();
    let shared = Arc::new(Shared {
        servers: servers.clone(),
        incarnations: cluster.incarnations.clone(),
        base: Instant::now(),
        done: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        keys: Default::default(),
    });
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let stop_faults = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let faults =
        tokio::spawn(fault_loop(cluster.clone(), s.fault, s.seed, s.partition_ms, stop_faults.clone(), rounds.clone()));
    let w = Workload {
        clients: s.clients,
        keys: 4,
        ops_per_generation: 300,
        // Keep going past `ops` until the fault rounds are done: the workload stops on `stop`.
        total: usize::MAX,
        timeout: Duration::from_secs(3),
        prefix: format!("faults/{}", s.name),
        seed: s.seed,
    };
    let workload = if s.txn {
        tokio::spawn(crate::txn::run(w, shared.clone()))
    } else {
        let shared = shared.clone();
        tokio::spawn(async move { (workload::run(w, shared).await, Vec::new()) })
    };
    // Wait for enough operations and fault rounds.
    let limit = Instant::now() + Duration::from_secs(3_600);
    let mut last_report = Instant::now();
    while (shared.done.load(Ordering::SeqCst) < s.ops || rounds.load(Ordering::SeqCst) < s.min_faults)
        && Instant::now() < limit
        && !stop_faults.load(Ordering::SeqCst)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last_report.elapsed() > Duration::from_secs(15) {
            last_report = Instant::now();
            eprintln!(
                "[{}] {:.0}s: {} operations, {} fault rounds",
                s.name,
                started.elapsed().as_secs_f64(),
                shared.done.load(Ordering::SeqCst),
                rounds.load(Ordering::SeqCst)
            );
        }
    }
    stop_faults.store(true, Ordering::SeqCst);
    let fault_log = faults.await.expect("fault loop");
    shared.stop.store(true, Ordering::SeqCst);
    if let Some(why) = &fault_log.aborted {
        panic!("[{}] servers exited that the harness did not stop: {why}", s.name);
    }
    let (mut ops, mut torn): (Vec<Operation>, Vec<String>) = workload.await.expect("workload");

    // Heal everything and read every key's final value.
    let mut c = Arc::try_unwrap(cluster).ok().expect("cluster still shared").into_inner();
    c.heal_all();
    let healed_leader = c.wait_leader(Duration::from_secs(60)).await;
    let keys = shared.keys.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let finals = workload::final_reads(&servers, &keys, shared.base, Duration::from_secs(120)).await;
    let (final_ops, finals) = match finals {
        Ok(f) => f,
        Err(e) => panic!("{e} (leader {healed_leader:?})\n{}", c.logs()),
    };
    ops.extend(final_ops);
    if s.txn {
        match crate::txn::final_atomicity(&servers, &keys, Duration::from_secs(120)).await {
            Ok(t) => torn.extend(t),
            Err(e) => panic!("{e}\n{}", c.logs()),
        }
    }
    let elapsed = started.elapsed();

    // Saved before checking, so that a check that never ends still leaves the history behind.
    let dir = out_dir();
    let _ = std::fs::create_dir_all(&dir);
    let history_file = dir.join(format!("{}.json", s.name));
    let history = History {
        note: format!("scenario {} seed {}; faults: {:?}", s.name, s.seed, fault_log.faults),
        ops: ops.clone(),
    };
    if let Ok(json) = serde_json::to_vec(&history) {
        let _ = std::fs::write(&history_file, json);
    }
    if verbose() {
        eprintln!("[{}] history in {}; checking", s.name, history_file.display());
    }

    let check_started = Instant::now();
    // Default-mode reads are checked as strictly as `?consistent` ones: the leader only answers
    // them from its own state under its lease. Without them, only to say which reads were wrong.
    let strict = checker::check(&ops, &Options::default());
    let without_default =
        (!strict.ok()).then(|| checker::check(&ops, &Options { default_reads: false, ..Options::default() }));
    let lost = checker::lost_writes(&ops, &finals);
    let stale = checker::stale_monotonicity(&ops);
    let check_time = check_started.elapsed();

    let describe = |k: &checker::KeyReport| format!("{} ({} ops): {:?}", k.key, k.ops, k.outcome);
    let summary = Summary {
        name: s.name.clone(),
        seed: s.seed,
        ops: ops.len(),
        reads: ops.iter().filter(|o| o.is_read()).count(),
        acked_writes: ops.iter().filter(|o| o.acknowledged_write().is_some()).count(),
        unknown_writes: ops.iter().filter(|o| !o.is_read() && o.ret.is_none()).count(),
        keys: keys.len(),
        faults: fault_log.faults,
        violations: strict.violations().map(describe).collect(),
        violations_without_default_reads: without_default
            .as_ref()
            .map(|r| r.violations().map(describe).collect())
            .unwrap_or_default(),
        undecided: strict.unknown().map(describe).collect(),
        lost_writes: lost.len(),
        stale_non_monotonic: stale.len(),
        fault_to_writable: fault_log.fault_to_writable,
        heal_to_writable: fault_log.heal_to_writable,
        heal_to_writable_everywhere: fault_log.heal_to_writable_everywhere,
        rejoin: fault_log.rejoin,
        caught_up: fault_log.caught_up,
        torn,
        index_conflicts: checker::index_conflicts(&ops)
            .into_iter()
            .map(|(k, i, v)| format!("{k}: ModifyIndex {i} read with values {v:?}"))
            .collect(),
        elapsed,
        check_time,
        history_file,
    };
    if std::env::var_os("ROSTER_FAULTS_KEEP_LOGS").is_some()
        || !summary.violations.is_empty()
        || summary.lost_writes > 0
        || summary.stale_non_monotonic > 0
        || !summary.torn.is_empty()
        || !summary.index_conflicts.is_empty()
    {
        c.keep_logs(&dir.join(format!("{}-logs", s.name)));
        for l in lost.iter().take(20) {
            eprintln!("lost write: {l:?}");
        }
        for x in stale.iter().take(20) {
            eprintln!("stale read went back: {x:?}");
        }
        for x in summary.torn.iter().chain(&summary.index_conflicts).take(20) {
            eprintln!("{x}");
        }
    }
    summary
}
