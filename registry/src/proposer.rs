//! Leader-side batching of client writes into Raft entries.
//!
//! openraft 0.9 appends (and fsyncs) each `client_write` on its own before it replicates it, so one
//! entry per request would cost one leader fsync and one replication round per write. Instead, every
//! write is queued here; a loop takes everything queued (bounded in count and bytes) and proposes it
//! as one `Command::Batch`. Up to `MAX_IN_FLIGHT` batches are in flight, so the next batch fills while
//! the previous one is on disk and on the wire. Under load one fsync serves hundreds of writes; a lone
//! write pays what it would pay anyway.

use std::sync::{Arc, Mutex};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::app::ProposeError;
use crate::raft::Raft;
use crate::state::{Command, CommandResult};

const MAX_BATCH_COMMANDS: usize = 1024;
const MAX_BATCH_BYTES: usize = 4 << 20;
const MAX_IN_FLIGHT: usize = 2;

type Reply = oneshot::Sender<Result<(u64, CommandResult), ProposeError>>;

struct Pending {
    cmd: Command,
    reply: Reply,
}

#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    pub fn start(raft: Raft) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        Proposer { tx }
    }

    /// Proposes on this server's Raft; `ProposeError::NotLeader` if it does not lead.
    pub async fn propose(&self, cmd: Command) -> Result<(u64, CommandResult), ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Pending { cmd, reply }).map_err(|_| ProposeError::Raft("proposer stopped".into()))?;
        rx.await.map_err(|_| ProposeError::Raft("proposer stopped".into()))?
    }
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Waiting for a slot lets more writes queue up: they join this batch.
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let mut bytes = first.cmd.approx_size();
        let mut rule = BatchRule::default();
        rule.admit(&first.cmd);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS {
            let Ok(p) = rx.try_recv() else { break };
            let size = p.cmd.approx_size();
            if bytes + size > MAX_BATCH_BYTES || !rule.admit(&p.cmd) {
                carry = Some(p);
                break;
            }
            bytes += size;
            batch.push(p);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            write(&raft, batch).await;
            drop(permit);
        });
    }
}

/// Which commands may join a batch. Every command of a batch is applied at the batch's one log
/// index, so two writes of a key in one batch leave it the same ModifyIndex. A transaction's results
/// show the keys it touched as they are when it is applied, with that index: followed in the batch by
/// another write of one of them, it would hand out a version that the ModifyIndex no longer names,
/// and a CAS by that index would then succeed against the later version (a lost update; found by the
/// fault harness: faults/tests/fixtures/txn-cas-by-index-within-a-batch.json). So once a batch holds
/// a transaction, a command joins it only if the keys it may change are known and none of them is one
/// the transactions touched (a session's end or a check's may release keys: those wait).
#[derive(Debug, Default)]
struct BatchRule {
    /// The keys (or prefixes) the batch's transactions read or wrote.
    txn_keys: Vec<KeyRange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyRange {
    Key(String),
    Prefix(String),
}

impl KeyRange {
    fn overlaps(&self, other: &KeyRange) -> bool {
        match (self, other) {
            (KeyRange::Key(a), KeyRange::Key(b)) => a == b,
            (KeyRange::Prefix(p), KeyRange::Key(k)) | (KeyRange::Key(k), KeyRange::Prefix(p)) => {
                k.starts_with(p.as_str())
            }
            (KeyRange::Prefix(a), KeyRange::Prefix(b)) => a.starts_with(b.as_str()) || b.starts_with(a.as_str()),
        }
    }
}

/// The keys a command may read or change, if they are known from the command alone.
fn footprint(cmd: &Command) -> Option<Vec<KeyRange>> {
    match cmd {
        Command::KvSet { key, .. } | Command::KvDelete { key, recurse: false, .. } => {
            Some(vec![KeyRange::Key(key.clone())])
        }
        Command::KvDelete { key, recurse: true, .. } => Some(vec![KeyRange::Prefix(key.clone())]),
        Command::Txn { ops, .. } => Some(
            ops.iter()
                .map(|op| match op.verb.as_str() {
                    "get-tree" | "delete-tree" => KeyRange::Prefix(op.key.clone()),
                    _ => KeyRange::Key(op.key.clone()),
                })
                .collect(),
        ),
        _ => None,
    }
}

impl BatchRule {
    /// Whether `cmd` may join the batch; if so, it is counted in.
    fn admit(&mut self, cmd: &Command) -> bool {
        let keys = footprint(cmd);
        if !self.txn_keys.is_empty() {
            let Some(keys) = &keys else { return false };
            if keys.iter().any(|k| self.txn_keys.iter().any(|t| t.overlaps(k))) {
                return false;
            }
        }
        if let (Command::Txn { .. }, Some(keys)) = (cmd, keys) {
            self.txn_keys.extend(keys);
        }
        true
    }
}

async fn write(raft: &Raft, batch: Vec<Pending>) {
    let (cmds, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let single = cmds.len() == 1;
    let cmd = if single { cmds.into_iter().next().unwrap_or(Command::Batch(Vec::new())) } else { Command::Batch(cmds) };
    match raft.client_write(cmd).await {
        Ok(resp) => {
            let index = resp.log_id.index;
            match resp.data {
                CommandResult::Batch(results) if !single => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok((index, result)));
                    }
                }
                result => {
                    for reply in replies {
                        let _ = reply.send(Ok((index, result.clone())));
                    }
                }
            }
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            for reply in replies {
                let _ = reply.send(Err(ProposeError::NotLeader));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(ProposeError::Raft(msg.clone())));
            }
        }
    }
}

/// One leadership confirmation: a heartbeat round to a quorum, then this server's state machine
/// applied up to the read index.
///
/// openraft's read index is the larger of its commit index and the first entry of the leader's term.
/// A leader killed and restarted before anyone else was elected comes back as leader of the same term
/// (openraft restores leadership) with the commit index it last persisted, which may be behind: its
/// read index can then be below writes already acknowledged, and a `?consistent` read would miss
/// them (found by the fault harness: faults/tests/fixtures/consistent-read-after-leader-restart.json).
/// So in each term a read also waits until everything in this server's log when it first confirmed
/// a read in that term is applied: entries committed before a restart are all in the log.
/// `floor` is (term, index) for the current term.
async fn confirm(raft: &Raft, floor: &Mutex<Option<(u64, u64)>>) -> bool {
    if raft.ensure_linearizable().await.is_err() {
        return false;
    }
    let (term, last_log) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.current_term, m.last_log_index.unwrap_or(0))
    };
    let index = {
        let mut floor = floor.lock().unwrap_or_else(|e| e.into_inner());
        match *floor {
            Some((t, i)) if t == term => i,
            _ => {
                *floor = Some((term, last_log));
                last_log
            }
        }
    };
    raft.wait(Some(std::time::Duration::from_secs(5))).applied_index_at_least(Some(index), "read floor").await.is_ok()
}

/// Whether `floor` ((term, index), set by a confirmation) is of `term` and `applied` has reached it.
fn floor_reached(floor: Option<(u64, u64)>, term: u64, applied: Option<u64>) -> bool {
    matches!((floor, applied), (Some((t, i)), Some(a)) if t == term && a >= i)
}

/// Shares one leadership confirmation among concurrent `?consistent` reads.
///
/// A read may only use a confirmation round that started after it arrived. Reads queue here; a loop
/// takes everything queued, runs one `ensure_linearizable` (a heartbeat round to a quorum, then
/// waiting for the read index to be applied) and releases them all. Reads that arrive meanwhile wait
/// for the next round. One round per batch instead of one per read.
#[derive(Clone)]
pub struct ReadBarrier {
    tx: mpsc::UnboundedSender<oneshot::Sender<bool>>,
    /// (term, index): the read floor of the term of the last confirmation (see [`confirm`]).
    floor: Arc<Mutex<Option<(u64, u64)>>>,
}

impl ReadBarrier {
    pub fn start(raft: Raft) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<bool>>();
        let floor = Arc::new(Mutex::new(None));
        let shared = floor.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiting = vec![first];
                while let Ok(more) = rx.try_recv() {
                    waiting.push(more);
                }
                let confirmed = confirm(&raft, &shared).await;
                for w in waiting {
                    let _ = w.send(confirmed);
                }
            }
        });
        ReadBarrier { tx, floor }
    }

    /// Whether a confirmation in `term` has set the term's read floor and `applied` (this server's
    /// last applied index) has reached it: this server's state then holds every write acknowledged
    /// before its term began, by an earlier leader or by itself before a restart. Until then a
    /// leader's lease alone does not make its state current (a new leader may not have applied
    /// what its predecessor committed; one restarted in its own term restores a lazily persisted
    /// commit index), so default-mode reads go through [`ReadBarrier::confirm`].
    pub fn floor_applied(&self, term: u64, applied: Option<u64>) -> bool {
        floor_reached(*self.floor.lock().unwrap_or_else(|e| e.into_inner()), term, applied)
    }

    /// True once this server is confirmed leader and has applied everything committed before the call.
    pub async fn confirm(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(tx).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TxnKvOp;

    fn put(key: &str) -> Command {
        Command::KvSet {
            key: key.into(),
            value: b"v".to_vec(),
            flags: 0,
            mode: crate::state::KvSetMode::Plain,
            now_ms: 0,
        }
    }

    fn txn(ops: &[(&str, &str)]) -> Command {
        let ops = ops
            .iter()
            .map(|(verb, key)| TxnKvOp {
                verb: verb.to_string(),
                key: key.to_string(),
                value: None,
                flags: 0,
                index: 0,
                session: None,
            })
            .collect();
        Command::Txn { ops, now_ms: 0 }
    }

    fn admitted(cmds: &[Command]) -> Vec<bool> {
        let mut rule = BatchRule::default();
        cmds.iter().map(|c| rule.admit(c)).collect()
    }

    #[test]
    fn a_write_of_a_key_a_transaction_touched_waits_for_the_next_batch() {
        assert_eq!(admitted(&[txn(&[("set", "a")]), put("a")]), [true, false]);
        assert_eq!(admitted(&[txn(&[("get", "a")]), txn(&[("cas", "a")])]), [true, false]);
        assert_eq!(admitted(&[txn(&[("get-tree", "app/")]), put("app/x")]), [true, false]);
        let delete_tree = Command::KvDelete { key: "ap".into(), recurse: true, cas: None };
        assert_eq!(admitted(&[txn(&[("set", "app/x")]), delete_tree]), [true, false]);
    }

    #[test]
    fn writes_of_other_keys_share_the_batch() {
        assert_eq!(
            admitted(&[txn(&[("set", "a"), ("get", "b")]), put("c"), txn(&[("cas", "d")]), put("a2")]),
            [true, true, true, true]
        );
        // Before any transaction anything goes: the transaction sees what came before it.
        assert_eq!(admitted(&[put("a"), put("a"), txn(&[("set", "a")])]), [true, true, true]);
    }

    #[test]
    fn commands_that_may_release_unknown_keys_wait_after_a_transaction() {
        let destroy = Command::SessionDestroy { id: "s".into(), now_ms: 0 };
        assert_eq!(admitted(&[txn(&[("set", "a")]), destroy.clone()]), [true, false]);
        assert_eq!(admitted(&[destroy, txn(&[("set", "a")])]), [true, true]);
    }

    #[test]
    fn a_lease_read_needs_this_terms_floor_applied() {
        // No confirmation yet in this process (a new or restarted leader): no lease reads.
        assert!(!floor_reached(None, 7, Some(100)));
        // The floor of an earlier term says nothing about this one.
        assert!(!floor_reached(Some((6, 50)), 7, Some(100)));
        // This term's floor, not yet applied / applied.
        assert!(!floor_reached(Some((7, 120)), 7, Some(119)));
        assert!(!floor_reached(Some((7, 120)), 7, None));
        assert!(floor_reached(Some((7, 120)), 7, Some(120)));
        assert!(floor_reached(Some((7, 120)), 7, Some(500)));
    }
}
