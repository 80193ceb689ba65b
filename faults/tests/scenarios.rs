//! Fault scenarios against real `roster server` processes (target/debug/roster, or ROSTER_BIN).
//! Short by default (ROSTER_FAULTS_OPS=1500 operations and at least 2 fault rounds per scenario);
//! the long run sets ROSTER_FAULTS_OPS=10000. One scenario at a time: they share the machine.
//! Each scenario uses its own ports on 127.0.13.1-5 (19900-19962); the partition scenarios run
//! their servers in network namespaces of their own (10.213.X.1-5, ports 19970-20002), and are
//! skipped with a SKIP line on stderr where namespaces cannot be made (not root, no `ip`), or fail
//! there if ROSTER_FAULTS_REQUIRE_NETNS is set.

use std::io::Write;

use roster_faults::locks::LockFaults;
use roster_faults::scenario::{self, Fault, Scenario};
use roster_faults::{disk, netns};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn namespaces_or_skip(test: &str) -> bool {
    netns::available_or_skip(test)
}

/// A partition scenario's operations in the short (CI) run, unless ROSTER_FAULTS_OPS says otherwise:
/// fewer than the others', for the four of them to take about a minute.
const PARTITION_SHORT_OPS: usize = 300;

/// Whether a tmpfs can be mounted here (root), else as [`namespaces_or_skip`] (failing instead with
/// ROSTER_FAULTS_REQUIRE_NETNS, which CI running as root sets).
fn tmpfs_or_skip(test: &str) -> bool {
    match disk::available() {
        Ok(()) => true,
        Err(why) if std::env::var_os("ROSTER_FAULTS_REQUIRE_NETNS").is_some() => {
            panic!("{test}: a tmpfs mount required (ROSTER_FAULTS_REQUIRE_NETNS) but unavailable: {why}")
        }
        Err(why) => {
            let _ = writeln!(std::io::stderr(), "SKIP {test}: cannot mount a tmpfs: {why}; full disk NOT tested");
            false
        }
    }
}

async fn run(name: &str, servers: usize, port: u16, fault: Fault) {
    run_with(name, servers, port, fault, false).await;
}

async fn run_with(name: &str, servers: usize, port: u16, fault: Fault, txn: bool) {
    if fault.is_partition() && !namespaces_or_skip(name) {
        return;
    }
    if fault == Fault::DiskFull && !tmpfs_or_skip(name) {
        return;
    }
    let _guard = ONE_AT_A_TIME.lock().await;
    let mut s = Scenario::from_env(name, servers, port, fault);
    s.txn = txn;
    if (fault.is_partition() || fault == Fault::DiskFull || txn) && std::env::var_os("ROSTER_FAULTS_OPS").is_none() {
        s.ops = PARTITION_SHORT_OPS;
    }
    let summary = scenario::run(&s).await;
    println!("{}", summary.line());
    for f in &summary.faults {
        println!("  fault: {f}");
    }
    for v in &summary.violations {
        println!("  not linearizable: {v}");
    }
    for v in &summary.violations_without_default_reads {
        println!("  not linearizable even without default-mode reads: {v}");
    }
    let history = summary.history_file.display();
    assert!(summary.ops >= s.ops, "only {} operations recorded", summary.ops);
    assert!(summary.faults.len() >= s.min_faults, "only {} fault rounds", summary.faults.len());
    assert!(
        summary.index_conflicts.is_empty(),
        "one ModifyIndex, two values: {:?}; history in {history}",
        summary.index_conflicts
    );
    assert!(summary.torn.is_empty(), "transactions not atomic: {:?}; history in {history}", summary.torn);
    assert!(summary.violations.is_empty(), "linearizability violations {:?}; history in {history}", summary.violations);
    assert!(summary.undecided.is_empty(), "checker could not decide {:?}; history in {history}", summary.undecided);
    assert_eq!(summary.lost_writes, 0, "lost acknowledged writes; history in {history}");
    assert_eq!(summary.stale_non_monotonic, 0, "?stale reads went back; history in {history}");
    assert!(summary.heal_to_writable.iter().all(Option::is_some), "not writable within 30 s of a heal");
    assert!(
        summary.heal_to_writable_everywhere.iter().all(Option::is_some),
        "not writable through every server within 30 s of a partition's heal"
    );
    for r in &summary.rejoin {
        assert!(r.is_ok(), "wiped server did not rejoin: {r:?}");
    }
    assert!(
        summary.caught_up.iter().all(Option::is_some),
        "a server whose disk was full did not catch up within 60 s of the space being freed: {:?}",
        summary.faults
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_and_restart() {
    run("leader-kill", 3, 19900, Fault::LeaderKill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_server_kill_and_restart() {
    run("random-kill", 3, 19910, Fault::RandomKill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_paused_past_the_election_timeout() {
    run("leader-pause", 3, 19920, Fault::LeaderPause).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_restarted_with_its_data_wiped() {
    run("wipe-restart", 3, 19930, Fault::WipeRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_servers_mixed_faults() {
    run("mixed-5", 5, 19940, Fault::Mixed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_safety_with_session_destroys_and_leader_faults() {
    let _guard = ONE_AT_A_TIME.lock().await;
    let s = Scenario::from_env("locks", 3, 19950, Fault::Mixed);
    // Lock attempts are slower than register operations (each holder waits): a third of the count.
    let summary = roster_faults::locks::run(s.port, 4, s.ops / 3, s.min_faults, s.seed, LockFaults::KillOrPause).await;
    println!(
        "locks: seed {} attempts {} acquired {} unknown {} session invalidations {} faults {} | violations {} | {:.1}s",
        s.seed,
        summary.attempts,
        summary.acquired,
        summary.unknown,
        summary.invalidations,
        summary.faults.len(),
        summary.violations.len(),
        summary.elapsed.as_secs_f64()
    );
    assert!(summary.acquired > 0, "nobody ever held the lock");
    assert!(summary.invalidations > 0, "no session was invalidated");
    assert!(summary.violations.is_empty(), "lock safety violations: {:#?}", summary.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_and_restarted_at_once() {
    run("leader-quick-restart", 3, 19960, Fault::LeaderQuickRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_isolated_by_a_partition() {
    run("partition-leader-isolated", 3, 19970, Fault::LeaderIsolated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_servers_split_with_the_leader_in_the_minority() {
    run("partition-leader-in-minority-5", 5, 19980, Fault::LeaderInMinority).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partial_partition_through_a_bridge_node() {
    run("partition-bridge-node", 3, 19990, Fault::BridgeNode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_safety_with_session_destroys_and_partitions() {
    if !namespaces_or_skip("lock_safety_with_session_destroys_and_partitions") {
        return;
    }
    let _guard = ONE_AT_A_TIME.lock().await;
    let mut s = Scenario::from_env("locks-partitions", 3, 20000, Fault::LeaderIsolated);
    if std::env::var_os("ROSTER_FAULTS_OPS").is_none() {
        s.ops = PARTITION_SHORT_OPS;
    }
    let summary = roster_faults::locks::run(s.port, 4, s.ops / 3, s.min_faults, s.seed, LockFaults::Partitions).await;
    println!(
        "locks-partitions: seed {} attempts {} acquired {} unknown {} session invalidations {} faults {} | violations {} | {:.1}s",
        s.seed,
        summary.attempts,
        summary.acquired,
        summary.unknown,
        summary.invalidations,
        summary.faults.len(),
        summary.violations.len(),
        summary.elapsed.as_secs_f64()
    );
    for f in &summary.faults {
        println!("  fault: {f}");
    }
    assert!(summary.acquired > 0, "nobody ever held the lock");
    assert!(summary.invalidations > 0, "no session was invalidated");
    assert!(summary.violations.is_empty(), "lock safety violations: {:#?}", summary.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_with_a_full_disk() {
    run("disk-full", 3, 20010, Fault::DiskFull).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_on_key_pairs_with_mixed_faults() {
    run_with("txn-mixed", 3, 20020, Fault::Mixed, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_servers_partitions_combined_with_kills_and_pauses() {
    run("combined-5", 5, 20030, Fault::Combined).await;
}
