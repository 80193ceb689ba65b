//! Saved histories (tests/fixtures/*.json) fed to the checker: real runs, and real runs falsified.

use roster_faults::checker::{self, Options};
use roster_faults::history::{History, ReadMode, RegOp};

fn load(name: &str) -> History {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).expect("fixture");
    serde_json::from_slice(&bytes).expect("fixture JSON")
}

const STRICT: Options = Options { default_reads: false, max_steps: 5_000_000 };
const WITH_DEFAULT: Options = Options { default_reads: true, max_steps: 5_000_000 };

#[test]
fn default_mode_read_from_a_resumed_old_leader_is_not_linearizable() {
    let h = load("default-read-from-paused-leader.json");
    let with_default = checker::check(&h.ops, &WITH_DEFAULT);
    assert_eq!(with_default.violations().count(), 1, "{:?}", with_default.keys);
    // Writes, CAS and ?consistent reads alone are linearizable.
    let strict = checker::check(&h.ops, &STRICT);
    assert!(strict.ok(), "{:?}", strict.keys);
}

#[test]
fn many_unknown_outcomes_during_a_leader_kill_check_quickly() {
    let h = load("leader-kill-unknown-outcomes.json");
    assert!(h.ops.iter().filter(|o| o.ret.is_none()).count() > 80);
    let report = checker::check(&h.ops, &WITH_DEFAULT);
    assert!(report.ok(), "{:?}", report.keys);
    assert!(report.keys.iter().all(|k| k.steps < 100_000), "{:?}", report.keys);
}

#[test]
fn a_falsified_stale_read_in_a_real_history_is_caught() {
    let h = load("falsified-stale-read.json");
    let report = checker::check(&h.ops, &STRICT);
    assert_eq!(report.violations().count(), 1, "{:?}", report.keys);
}

#[test]
fn consistent_read_from_a_restarted_leader_with_a_stale_commit_index_is_caught() {
    let h = load("consistent-read-after-leader-restart.json");
    let report = checker::check(&h.ops, &STRICT);
    assert_eq!(report.violations().count(), 1, "{:?}", report.keys);
    // Without the two stale ?consistent reads (index 1992 after 1994 was seen), it is linearizable.
    let ops: Vec<_> = h
        .ops
        .iter()
        .filter(|o| {
            !matches!(o.op, RegOp::Read { mode: ReadMode::Consistent, index: Some(1992), value: Some(7000001101) }
                if o.call > h.ops.iter().filter_map(|w| w.ret.filter(|_| w.acknowledged_write() == Some(1000001058))).max().unwrap_or(0))
        })
        .cloned()
        .collect();
    assert_eq!(ops.len(), h.ops.len() - 2);
    assert!(checker::check(&ops, &STRICT).ok());
}

#[test]
fn default_reads_from_a_leader_whose_raft_core_stopped_on_a_full_disk_are_caught() {
    // Before the fix, server-1 (the leader) went on serving after its log write failed with ENOSPC
    // and its Raft core stopped: still believing it led, it answered default-mode reads from a state
    // frozen at the failure for the rest of the run, and never caught up once the disk had room.
    let h = load("default-read-from-leader-whose-log-write-failed.json");
    let with_default = checker::check(&h.ops, &WITH_DEFAULT);
    assert_eq!(with_default.violations().count(), 2, "{:?}", with_default.keys);
    assert!(checker::check(&h.ops, &STRICT).ok());
    // Without the default reads server-1 answered, it is linearizable.
    let ops: Vec<_> = h
        .ops
        .iter()
        .filter(|o| !(o.read_mode() == Some(ReadMode::Default) && o.server.map(|s| s.0) == Some(0)))
        .cloned()
        .collect();
    assert!(ops.len() < h.ops.len());
    assert!(checker::check(&ops, &WITH_DEFAULT).ok());
}

#[test]
fn txn_cas_by_an_index_that_two_versions_shared_in_one_batch_is_caught() {
    // Before the proposer fix a read-only transaction applied in the middle of a batched Raft entry
    // returned a version of `a` that a later write in the same entry replaced under the same
    // ModifyIndex; a CAS by that index then succeeded against the later version.
    let h = load("txn-cas-by-index-within-a-batch.json");
    let report = checker::check(&h.ops, &STRICT);
    assert_eq!(report.violations().count(), 2, "{:?}", report.keys);
    let conflicts = checker::index_conflicts(&h.ops);
    assert!(conflicts
        .iter()
        .any(|(k, i, v)| k.ends_with("g32/p1/a") && *i == 4443 && v.contains(&2000001328) && v.contains(&6000001300)));
    assert!(conflicts.iter().any(|(k, i, _)| k.ends_with("g19/p3/a") && *i == 2597));
}

#[test]
fn earlier_fixtures_have_no_index_conflicts() {
    for f in [
        "consistent-read-after-leader-restart.json",
        "default-read-from-paused-leader.json",
        "leader-kill-unknown-outcomes.json",
        "default-read-from-leader-whose-log-write-failed.json",
    ] {
        assert!(checker::index_conflicts(&load(f).ops).is_empty(), "{f}");
    }
}
