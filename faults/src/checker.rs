//! Linearizability of single-key registers (read, write, compare-and-set), checked as Porcupine does:
//! the Wing–Gong search with Lowe's memoization of (linearized set, model state), run per key
//! (P-compositionality: a history of independent registers is linearizable iff each key's is).
//!
//! Model. A register holds `Option<Value>` (None: absent). Every write in a run writes a distinct
//! value, so a value observed names its write; a CAS by ModifyIndex N (the index the client read
//! together with value v) succeeds exactly when the register still holds v, because a key's
//! ModifyIndex changes on every write and the workload never deletes. So CAS is modelled against
//! the value the client observed, which is what the workload can check.
//!
//! Unknown outcomes. An operation with no completion time may have taken effect at any point after
//! its invocation, or never. Its completion is +infinity; taking effect "never" is the same as taking
//! effect after every other operation (nothing observes it then), so the search needs no extra branch.
//! An unknown CAS takes effect iff the register holds its expected value when it is linearized.
//!
//! Also here: the lost-write check (an acknowledged write must not be followed by a final state that
//! predates it) and the per-client monotonicity of `?stale` reads.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{Operation, ReadMode, RegOp, Value};

/// Register state: the value, or absent.
pub type State = Option<Value>;

/// Applies `op` to `state`: None if `op`'s recorded outcome is impossible in `state`, else the next state.
pub fn step(state: State, op: &RegOp) -> Option<State> {
    match *op {
        RegOp::Read { value, .. } => (state == value).then_some(state),
        RegOp::Write { value } => Some(Some(value)),
        RegOp::Cas { expected, value, ok: Some(true) } => (state == expected).then_some(Some(value)),
        RegOp::Cas { expected, ok: Some(false), .. } => (state != expected).then_some(state),
        RegOp::Cas { expected, value, ok: None } => Some(if state == expected { Some(value) } else { state }),
    }
}

/// Which operations the linearizability check takes.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Include default-mode reads. The scenarios do: Roster's leader answers them from its own
    /// state only under its lease (`registry/src/raft/lease.rs`), so they must be linearizable like
    /// `?consistent` ones. Left out only to tell which reads made a history fail (and in fixtures
    /// from before the lease, when a deposed leader could serve a stale default read).
    pub default_reads: bool,
    /// Give up on one key after this many search steps (the answer is then `Unknown`).
    pub max_steps: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { default_reads: true, max_steps: 50_000_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Linearizable,
    /// No linearization exists. `stuck_at`: the operations (indexes into the key's operations as
    /// given) that no extension of the longest linearized prefix found could take next.
    Violation {
        longest_prefix: usize,
        stuck_at: Vec<usize>,
    },
    /// The search ran out of steps.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct KeyReport {
    pub key: String,
    pub ops: usize,
    pub outcome: Outcome,
    pub steps: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub keys: Vec<KeyReport>,
}

impl Report {
    pub fn violations(&self) -> impl Iterator<Item = &KeyReport> {
        self.keys.iter().filter(|k| matches!(k.outcome, Outcome::Violation { .. }))
    }
    pub fn unknown(&self) -> impl Iterator<Item = &KeyReport> {
        self.keys.iter().filter(|k| k.outcome == Outcome::Unknown)
    }
    pub fn ok(&self) -> bool {
        self.keys.iter().all(|k| k.outcome == Outcome::Linearizable)
    }
}

fn included(op: &Operation, opts: &Options) -> bool {
    match &op.op {
        // A read with no answer says nothing.
        RegOp::Read { .. } if op.ret.is_none() => false,
        RegOp::Read { mode: ReadMode::Stale, .. } => false,
        RegOp::Read { mode: ReadMode::Default, .. } => opts.default_reads,
        _ => true,
    }
}

/// Checks every key's history on its own (P-compositionality).
pub fn check(ops: &[Operation], opts: &Options) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in ops.iter().filter(|o| included(o, opts)) {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let keys = by_key
        .into_iter()
        .map(|(key, ops)| {
            let (outcome, steps) = check_register(&ops, opts.max_steps);
            KeyReport { key: key.to_string(), ops: ops.len(), outcome, steps }
        })
        .collect();
    Report { keys }
}

#[derive(Clone, Copy)]
struct Entry {
    /// The operation (index into `ops`).
    op: usize,
    is_call: bool,
    /// For a call: the index of its return entry.
    matching: usize,
    prev: usize,
    next: Option<usize>,
}

/// The Wing–Gong/Lowe search over one register's history (all operations on one key). Returns the
/// outcome and the number of steps taken.
pub fn check_register(ops: &[&Operation], max_steps: u64) -> (Outcome, u64) {
    let n = ops.len();
    if n == 0 {
        return (Outcome::Linearizable, 0);
    }
    // Symmetry reduction for operations of unknown outcome. A plain write (or a CAS) whose value no
    // read returns and no CAS expects can only ever put an unobservable value in the register: all
    // such writes have the same effect (and all such CAS with the same expected value), so they are
    // rewritten to write one sentinel, and the search tries only the earliest pending one of each
    // class at any point (any other pending one of the class was invoked no earlier, so the two can
    // trade places in any linearization). Without this, k pending unknown writes cost 2^k.
    let mut observed: HashSet<Value> = HashSet::new();
    for o in ops {
        match o.op {
            RegOp::Read { value: Some(v), .. } => {
                observed.insert(v);
            }
            RegOp::Cas { expected: Some(v), .. } => {
                observed.insert(v);
            }
            _ => {}
        }
    }
    let mut bodies: Vec<RegOp> = Vec::with_capacity(n);
    let mut class: Vec<Option<(bool, Option<Value>)>> = Vec::with_capacity(n);
    for o in ops {
        match o.op {
            RegOp::Write { value } if o.ret.is_none() && !observed.contains(&value) => {
                bodies.push(RegOp::Write { value: UNOBSERVED });
                class.push(Some((false, None)));
            }
            RegOp::Cas { expected, value, ok: None } if !observed.contains(&value) => {
                bodies.push(RegOp::Cas { expected, value: UNOBSERVED, ok: None });
                class.push(Some((true, expected)));
            }
            ref b => {
                bodies.push(b.clone());
                class.push(None);
            }
        }
    }
    // Events: (time, is_return, op). At equal times calls sort before returns (the operations then
    // count as concurrent, the permissive reading of a tie).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, false, i));
        events.push((o.ret.unwrap_or(u64::MAX).max(o.call), true, i));
    }
    events.sort();
    // Entry 0 is the head sentinel; event k is entry k + 1.
    let mut entries: Vec<Entry> = Vec::with_capacity(2 * n + 1);
    entries.push(Entry { op: usize::MAX, is_call: false, matching: 0, prev: 0, next: Some(1) });
    let mut ret_of = vec![0usize; n];
    for (k, &(_, is_ret, op)) in events.iter().enumerate() {
        let idx = k + 1;
        if is_ret {
            ret_of[op] = idx;
        }
        let next = if k + 1 < events.len() { Some(idx + 1) } else { None };
        entries.push(Entry { op, is_call: !is_ret, matching: 0, prev: idx - 1, next });
    }
    for e in entries.iter_mut().skip(1) {
        if e.is_call {
            e.matching = ret_of[e.op];
        }
    }

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut calls: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut entry = entries[0].next;
    let mut steps = 0u64;
    let mut longest = 0usize;
    let mut stuck_at: Vec<usize> = Vec::new();

    while entries[0].next.is_some() {
        steps += 1;
        if steps > max_steps {
            return (Outcome::Unknown, steps);
        }
        let Some(cur) = entry else {
            // Cannot happen: the list ends with a return entry, handled below.
            return (Outcome::Unknown, steps);
        };
        let ent = entries[cur];
        if ent.is_call {
            let op = ent.op;
            if class[op].is_some() && earlier_of_class(&entries, cur, &class) {
                entry = ent.next;
                continue;
            }
            if let Some(next_state) = step(state, &bodies[op]) {
                let mut set = linearized.clone();
                set[op / 64] |= 1 << (op % 64);
                if cache.insert((set.clone(), next_state)) {
                    calls.push((cur, state));
                    state = next_state;
                    linearized = set;
                    lift(&mut entries, cur);
                    if calls.len() > longest {
                        longest = calls.len();
                        stuck_at.clear();
                    }
                    entry = entries[0].next;
                    continue;
                }
            }
            entry = ent.next;
        } else {
            // A return entry whose operation is not linearized yet: backtrack.
            if calls.len() == longest && stuck_at.is_empty() {
                stuck_at = pending_calls(&entries);
            }
            let Some((call, prev_state)) = calls.pop() else {
                let mut stuck: Vec<usize> = stuck_at;
                stuck.sort_unstable();
                return (Outcome::Violation { longest_prefix: longest, stuck_at: stuck }, steps);
            };
            state = prev_state;
            let op = entries[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut entries, call);
            entry = entries[call].next;
        }
    }
    (Outcome::Linearizable, steps)
}

/// The value standing for every unobserved value of an unknown-outcome write (never read, never
/// expected, and not a value the workload writes or parses).
const UNOBSERVED: Value = u64::MAX - 1;

/// Whether an entry of the same symmetry class as `cur` is still in the list before it.
fn earlier_of_class(entries: &[Entry], cur: usize, class: &[Option<(bool, Option<Value>)>]) -> bool {
    let c = class[entries[cur].op];
    let mut e = entries[0].next;
    while let Some(i) = e {
        if i == cur {
            return false;
        }
        if entries[i].is_call && class[entries[i].op] == c {
            return true;
        }
        e = entries[i].next;
    }
    false
}

/// The calls still in the list before the first return entry: the candidates for the next step.
fn pending_calls(entries: &[Entry]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut cur = entries[0].next;
    while let Some(c) = cur {
        if !entries[c].is_call {
            break;
        }
        out.push(entries[c].op);
        cur = entries[c].next;
    }
    out
}

fn lift(entries: &mut [Entry], call: usize) {
    let e = entries[call];
    entries[e.prev].next = e.next;
    if let Some(n) = e.next {
        entries[n].prev = e.prev;
    }
    let m = entries[e.matching];
    entries[m.prev].next = m.next;
    if let Some(n) = m.next {
        entries[n].prev = m.prev;
    }
}

fn unlift(entries: &mut [Entry], call: usize) {
    let e = entries[call];
    let ret = e.matching;
    let m = entries[ret];
    entries[m.prev].next = Some(ret);
    if let Some(n) = m.next {
        entries[n].prev = ret;
    }
    entries[e.prev].next = Some(call);
    if let Some(n) = e.next {
        entries[n].prev = call;
    }
}

/// An acknowledged write that the final state of its key contradicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostWrite {
    pub key: String,
    pub client: u32,
    pub value: Value,
    /// What the final read returned.
    pub final_value: Option<Value>,
}

/// Checks acknowledged writes against each key's final value (read with `?consistent` after the
/// cluster healed): a write is lost if the key ended absent, or holding a value no operation wrote,
/// or holding a value whose write completed before the acknowledged write was even invoked (so
/// nothing later overwrote it).
pub fn lost_writes(ops: &[Operation], finals: &BTreeMap<String, Option<Value>>) -> Vec<LostWrite> {
    let mut writer: HashMap<(&str, Value), &Operation> = HashMap::new();
    for o in ops {
        if let Some(v) = o.written_value() {
            writer.insert((o.key.as_str(), v), o);
        }
    }
    let mut lost = Vec::new();
    for o in ops {
        let Some(v) = o.acknowledged_write() else { continue };
        let Some(final_value) = finals.get(&o.key) else { continue };
        let is_lost = match final_value {
            None => true,
            Some(f) if *f == v => false,
            Some(f) => match writer.get(&(o.key.as_str(), *f)) {
                None => true,
                Some(w) => w.ret.is_some_and(|r| r < o.call),
            },
        };
        if is_lost {
            lost.push(LostWrite { key: o.key.clone(), client: o.client, value: v, final_value: *final_value });
        }
    }
    lost
}

/// A `?stale` read that went back in time for one client on one server incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonMonotonic {
    pub client: u32,
    pub key: String,
    pub before: (Option<u64>, Option<Value>),
    pub after: (Option<u64>, Option<Value>),
}

/// Per client, server and server incarnation, in the client's order (its operations are sequential),
/// the index a key's `?stale` reads return never decreases, and at one index the value is the same.
/// (Across servers, or across a restart of one, stale reads may legitimately go back.)
pub fn stale_monotonicity(ops: &[Operation]) -> Vec<NonMonotonic> {
    // (client, key, (server, incarnation)) -> (index, value) of the last stale read.
    type Seen<'a> = HashMap<(u32, &'a str, (usize, u32)), (u64, Option<Value>)>;
    let mut last: Seen = HashMap::new();
    let mut sorted: Vec<&Operation> = ops
        .iter()
        .filter(|o| o.ret.is_some() && o.read_mode() == Some(ReadMode::Stale) && o.server.is_some())
        .collect();
    sorted.sort_by_key(|o| (o.client, o.call));
    let mut out = Vec::new();
    for o in sorted {
        let RegOp::Read { value, index: Some(index), .. } = o.op else { continue };
        let Some(server) = o.server else { continue };
        let k = (o.client, o.key.as_str(), server);
        if let Some(&(pi, pv)) = last.get(&k) {
            if index < pi || (index == pi && value != pv) {
                out.push(NonMonotonic {
                    client: o.client,
                    key: o.key.clone(),
                    before: (Some(pi), pv),
                    after: (Some(index), value),
                });
            }
        }
        last.insert(k, (index, value));
    }
    out
}

/// A key's ModifyIndex names one version of it: two reads of a key (any mode) that return the same
/// ModifyIndex with different values are a conflict, whatever the order. Returns (key, index, values).
pub fn index_conflicts(ops: &[Operation]) -> Vec<(String, u64, Vec<Value>)> {
    let mut seen: BTreeMap<(&str, u64), Vec<Value>> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.ret.is_some()) {
        if let RegOp::Read { value: Some(v), index: Some(i), .. } = o.op {
            let values = seen.entry((o.key.as_str(), i)).or_default();
            if !values.contains(&v) {
                values.push(v);
            }
        }
    }
    seen.into_iter().filter(|(_, v)| v.len() > 1).map(|((k, i), v)| (k.to_string(), i, v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ReadMode::*;

    fn op(client: u32, call: u64, ret: Option<u64>, op: RegOp) -> Operation {
        Operation { client, key: "k".into(), call, ret, op, server: None }
    }
    fn w(client: u32, call: u64, ret: u64, v: Value) -> Operation {
        op(client, call, Some(ret), RegOp::Write { value: v })
    }
    fn w_unknown(client: u32, call: u64, v: Value) -> Operation {
        op(client, call, None, RegOp::Write { value: v })
    }
    fn r(client: u32, call: u64, ret: u64, v: Option<Value>) -> Operation {
        op(client, call, Some(ret), RegOp::Read { mode: Consistent, value: v, index: None })
    }
    fn cas(client: u32, call: u64, ret: Option<u64>, expected: Option<Value>, v: Value, ok: Option<bool>) -> Operation {
        op(client, call, ret, RegOp::Cas { expected, value: v, ok })
    }
    fn linearizable(ops: &[Operation]) -> bool {
        let rep = check(ops, &Options::default());
        assert!(rep.unknown().next().is_none(), "search ran out of steps");
        rep.ok()
    }

    #[test]
    fn empty_and_sequential_histories_pass() {
        assert!(linearizable(&[]));
        assert!(linearizable(&[
            r(1, 0, 1, None),
            w(1, 2, 3, 1),
            r(2, 4, 5, Some(1)),
            w(2, 6, 7, 2),
            r(1, 8, 9, Some(2))
        ]));
    }

    #[test]
    fn stale_read_after_a_completed_write_is_a_violation() {
        // W(1) completes, W(2) completes, then a read (started after both) returns 1.
        let h = [w(1, 0, 10, 1), w(1, 20, 30, 2), r(2, 40, 50, Some(1))];
        assert!(!linearizable(&h));
        // The same read overlapping W(2) is fine.
        let h = [w(1, 0, 10, 1), w(1, 20, 45, 2), r(2, 40, 50, Some(1))];
        assert!(linearizable(&h));
    }

    #[test]
    fn a_read_of_an_absent_key_after_an_acknowledged_write_is_a_violation() {
        let h = [w(1, 0, 10, 7), r(2, 11, 20, None)];
        assert!(!linearizable(&h));
        let rep = check(&h, &Options::default());
        match &rep.keys[0].outcome {
            Outcome::Violation { longest_prefix, stuck_at } => {
                assert_eq!(*longest_prefix, 1);
                assert_eq!(stuck_at, &vec![1]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lost_write_is_rejected_and_reported() {
        // W(1) acknowledged, W(2) acknowledged later, final read sees 1: W(2) was lost.
        let h = [w(1, 0, 10, 1), w(2, 20, 30, 2), r(3, 100, 110, Some(1))];
        assert!(!linearizable(&h));
        let finals = BTreeMap::from([("k".to_string(), Some(1))]);
        let lost = lost_writes(&h, &finals);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].value, 2);
        // Overwritten by a later write: not lost.
        let h2 = [w(1, 0, 10, 1), w(2, 20, 30, 2), w(1, 40, 50, 3)];
        assert!(lost_writes(&h2, &BTreeMap::from([("k".to_string(), Some(3))])).is_empty());
        // Absent at the end: both lost.
        assert_eq!(lost_writes(&h2, &BTreeMap::from([("k".to_string(), None)])).len(), 3);
        // A value nobody wrote.
        assert_eq!(lost_writes(&h2, &BTreeMap::from([("k".to_string(), Some(99))])).len(), 3);
        // Final value from a write concurrent with the acknowledged one: may have been linearized after it.
        let h3 = [w(1, 0, 30, 1), w(2, 20, 40, 2)];
        assert!(lost_writes(&h3, &BTreeMap::from([("k".to_string(), Some(1))])).is_empty());
    }

    #[test]
    fn concurrent_overlapping_operations_may_linearize_in_any_order() {
        // Two writes overlap; readers during and after see them in an order consistent with one sequence.
        let h =
            [w(1, 0, 100, 1), w(2, 10, 90, 2), r(3, 20, 30, Some(2)), r(4, 40, 50, Some(1)), r(3, 110, 120, Some(1))];
        assert!(linearizable(&h));
        // But two readers may not see them in opposite orders once each read finished before the other began.
        let h = [
            w(1, 0, 100, 1),
            w(2, 10, 100, 2),
            r(3, 20, 30, Some(1)),
            r(3, 40, 50, Some(2)),
            r(4, 60, 70, Some(1)),
            r(4, 80, 90, Some(2)),
        ];
        assert!(!linearizable(&h));
    }

    #[test]
    fn new_then_old_inversion_is_rejected_though_each_read_alone_is_plausible() {
        // What a naive checker (each read returns some value written before it ended and not
        // overwritten before it began) accepts: R(2) then a later R(1) while W(2) is still running.
        let h = [w(1, 0, 10, 1), w(2, 20, 200, 2), r(3, 30, 40, Some(2)), r(4, 50, 60, Some(1))];
        assert!(!linearizable(&h));
    }

    #[test]
    fn a_read_may_see_a_write_invoked_after_it_when_they_overlap() {
        // A naive checker that orders operations by invocation time rejects this: the read is
        // invoked before the write but must be linearized after it.
        let h = [w(1, 0, 10, 1), r(2, 20, 60, Some(2)), w(3, 30, 50, 2), r(2, 70, 80, Some(2))];
        assert!(linearizable(&h));
        // And one that orders by completion time rejects this: the write completes after the read,
        // yet the read already sees it.
        let h = [r(2, 20, 40, Some(2)), w(3, 10, 60, 2)];
        assert!(linearizable(&h));
    }

    #[test]
    fn unknown_outcome_writes_are_fine_either_way() {
        // Took effect: a later read sees it.
        let h = [w(1, 0, 10, 1), w_unknown(2, 20, 2), r(3, 1_000, 1_010, Some(2))];
        assert!(linearizable(&h));
        // Never took effect.
        let h = [w(1, 0, 10, 1), w_unknown(2, 20, 2), r(3, 1_000, 1_010, Some(1))];
        assert!(linearizable(&h));
        // Took effect late: seen, then... not seen any more is a violation (it cannot be undone).
        let h = [w(1, 0, 10, 1), w_unknown(2, 20, 2), r(3, 100, 110, Some(2)), r(3, 200, 210, Some(1))];
        assert!(!linearizable(&h));
        // But it cannot take effect before it was invoked.
        let h = [w(1, 0, 10, 1), r(3, 11, 19, Some(2)), w_unknown(2, 20, 2)];
        assert!(!linearizable(&h));
    }

    #[test]
    fn cas_semantics() {
        // A successful CAS from the value it saw.
        let h = [
            w(1, 0, 10, 1),
            r(2, 20, 30, Some(1)),
            cas(2, 40, Some(50), Some(1), 2, Some(true)),
            r(1, 60, 70, Some(2)),
        ];
        assert!(linearizable(&h));
        // Two successful CAS from the same value, not overlapping: the second cannot succeed.
        let h = [
            w(1, 0, 10, 1),
            cas(2, 40, Some(50), Some(1), 2, Some(true)),
            cas(3, 60, Some(70), Some(1), 3, Some(true)),
        ];
        assert!(!linearizable(&h));
        // Overlapping, both successful from the same value: still impossible (the register holds 2 or 3 after either).
        let h = [
            w(1, 0, 10, 1),
            cas(2, 40, Some(80), Some(1), 2, Some(true)),
            cas(3, 50, Some(90), Some(1), 3, Some(true)),
        ];
        assert!(!linearizable(&h));
        // A failed CAS while the register held the expected value, with nothing concurrent: violation.
        let h = [w(1, 0, 10, 1), cas(2, 20, Some(30), Some(1), 2, Some(false))];
        assert!(!linearizable(&h));
        // A failed CAS concurrent with a write that changed the value: fine.
        let h = [w(1, 0, 10, 1), w(3, 15, 35, 5), cas(2, 20, Some(30), Some(1), 2, Some(false)), r(1, 40, 50, Some(5))];
        assert!(linearizable(&h));
        // cas=0 (only if absent).
        let h = [
            cas(1, 0, Some(10), None, 1, Some(true)),
            cas(2, 20, Some(30), None, 2, Some(false)),
            r(1, 40, 50, Some(1)),
        ];
        assert!(linearizable(&h));
        let h = [w(1, 0, 10, 1), cas(2, 20, Some(30), None, 2, Some(true))];
        assert!(!linearizable(&h));
        // Unknown-outcome CAS: applied or not.
        let h = [w(1, 0, 10, 1), cas(2, 20, None, Some(1), 2, None), r(1, 40, 50, Some(2))];
        assert!(linearizable(&h));
        let h = [w(1, 0, 10, 1), cas(2, 20, None, Some(1), 2, None), r(1, 40, 50, Some(1))];
        assert!(linearizable(&h));
        // ...but it cannot apply when the value it expected is gone for good.
        let h = [w(1, 0, 10, 1), w(1, 12, 15, 3), cas(2, 20, None, Some(1), 2, None), r(1, 40, 50, Some(2))];
        assert!(!linearizable(&h));
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut a = w(1, 0, 10, 1);
        a.key = "a".into();
        let mut b = r(2, 20, 30, Some(1));
        b.key = "b".into();
        // The read of "b" cannot see a value written to "a".
        let rep = check(&[a, b], &Options::default());
        assert_eq!(rep.keys.len(), 2);
        assert_eq!(rep.violations().count(), 1);
        assert_eq!(rep.violations().next().map(|k| k.key.as_str()), Some("b"));
    }

    #[test]
    fn default_reads_can_be_left_out_and_stale_reads_always_are() {
        let mut stale = r(2, 40, 50, Some(1));
        stale.op = RegOp::Read { mode: Stale, value: Some(1), index: Some(1) };
        let mut default = r(3, 40, 50, Some(1));
        default.op = RegOp::Read { mode: Default, value: Some(1), index: Some(1) };
        let h = [w(1, 0, 10, 1), w(1, 20, 30, 2), stale, default.clone()];
        assert!(check(&h, &Options { default_reads: false, ..Options::default() }).ok());
        assert!(!check(&h, &Options::default()).ok());
    }

    #[test]
    fn many_concurrent_clients_with_unknown_outcomes_stay_tractable() {
        // 8 clients, 2,000 operations, some unknown: a valid history built from a sequential run
        // with every operation's interval widened around its linearization point.
        let mut ops = Vec::new();
        let mut state: State = None;
        let mut t = 0u64;
        for i in 0..2_000u64 {
            let client = (i % 8) as u32;
            let point = t + 50;
            let (call, ret) = (point - (i * 7919) % 40, point + (i * 104_729) % 40);
            let kind = i % 5;
            let o = match kind {
                0 | 1 => {
                    state = Some(i);
                    if i % 97 == 0 {
                        op(client, call, None, RegOp::Write { value: i })
                    } else {
                        w(client, call, ret, i)
                    }
                }
                2 => {
                    let ok = state == Some(i - 1);
                    if ok {
                        state = Some(i);
                    }
                    cas(client, call, Some(ret), Some(i - 1), i, Some(ok))
                }
                _ => r(client, call, ret, state),
            };
            ops.push(o);
            t += 10;
        }
        assert!(linearizable(&ops));
        // Corrupt one late read to return an early acknowledged value, long overwritten: now it must
        // fail. (Not value 0: that write has an unknown outcome and may take effect at any time.)
        let last_read = ops.iter().rposition(|o| o.is_read()).expect("a read");
        ops[last_read].op = RegOp::Read { mode: Consistent, value: Some(1), index: None };
        assert!(!linearizable(&ops));
    }

    /// Brute force: every order of the operations that respects real time (an unknown-outcome
    /// operation may also be left out), stepped through the model.
    fn brute_force(ops: &[Operation]) -> bool {
        fn go(ops: &[Operation], used: &mut Vec<bool>, state: State) -> bool {
            let pending: Vec<usize> = (0..ops.len()).filter(|&i| !used[i]).collect();
            if pending.iter().all(|&i| ops[i].ret.is_none()) {
                return true; // the rest may never have happened
            }
            for &i in &pending {
                // i may go next only if no pending op completed before i was invoked.
                let blocked = pending.iter().any(|&j| j != i && ops[j].ret.is_some_and(|r| r < ops[i].call));
                if blocked {
                    continue;
                }
                if let Some(next) = step(state, &ops[i].op) {
                    used[i] = true;
                    let ok = go(ops, used, next);
                    used[i] = false;
                    if ok {
                        return true;
                    }
                }
            }
            false
        }
        go(ops, &mut vec![false; ops.len()], None)
    }

    #[test]
    fn search_agrees_with_brute_force_on_random_small_histories() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let (mut good, mut bad) = (0, 0);
        for _ in 0..3_000 {
            let n = rng.random_range(1..=7);
            let ops: Vec<Operation> = (0..n)
                .map(|i| {
                    let call = rng.random_range(0..100u64);
                    let ret = if rng.random_range(0..6) == 0 { None } else { Some(call + rng.random_range(0..40u64)) };
                    let v = |rng: &mut rand::rngs::StdRng| {
                        (rng.random_range(0..3u64) > 0).then(|| rng.random_range(1..4u64))
                    };
                    let body = match rng.random_range(0..4) {
                        0 => RegOp::Write { value: rng.random_range(1..4) },
                        1 => RegOp::Cas {
                            expected: v(&mut rng),
                            value: rng.random_range(1..4),
                            ok: ret.map(|_| rng.random_range(0..2) == 0),
                        },
                        _ => RegOp::Read { mode: Consistent, value: v(&mut rng), index: None },
                    };
                    op(i, call, ret, body)
                })
                .collect();
            let expected = brute_force(&ops);
            assert_eq!(linearizable(&ops), expected, "{ops:#?}");
            if expected {
                good += 1;
            } else {
                bad += 1;
            }
        }
        // Both kinds were exercised.
        assert!(good > 300 && bad > 300, "good {good} bad {bad}");
    }

    #[test]
    fn stale_reads_must_not_go_back_for_one_client_on_one_server() {
        let sr = |client: u32, call: u64, index: u64, v: Value, server: (usize, u32)| Operation {
            client,
            key: "k".into(),
            call,
            ret: Some(call + 1),
            op: RegOp::Read { mode: Stale, value: Some(v), index: Some(index) },
            server: Some(server),
        };
        let ok = [sr(1, 0, 5, 1, (0, 0)), sr(1, 10, 7, 2, (0, 0)), sr(1, 20, 3, 0, (1, 0)), sr(1, 30, 2, 9, (0, 1))];
        assert!(stale_monotonicity(&ok).is_empty());
        let bad = [sr(1, 0, 5, 1, (0, 0)), sr(1, 10, 7, 2, (0, 0)), sr(1, 20, 6, 1, (0, 0))];
        assert_eq!(stale_monotonicity(&bad).len(), 1);
        let bad = [sr(1, 0, 5, 1, (0, 0)), sr(1, 10, 5, 2, (0, 0))];
        assert_eq!(stale_monotonicity(&bad).len(), 1);
    }
}
