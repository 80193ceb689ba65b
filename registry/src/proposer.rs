//! Leader-side batching of client writes into Raft entries.
//!
//! openraft 0.9 appends (and fsyncs) each `client_write` on its own before it replicates it, so one
//! entry per request would cost one leader fsync and one replication round per write. Instead, every
//! write is queued here; a loop takes everything queued (bounded in count and bytes) and proposes it
//! as one `Command::Batch`. Up to `MAX_IN_FLIGHT` batches are in flight, so the next batch fills while
//! the previous one is on disk and on the wire. Under load one fsync serves hundreds of writes; a lone
//! write pays what it would pay anyway.

use std::sync::Arc;

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
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && !batch.last().is_some_and(|p| ends_batch(&p.cmd)) {
            let Ok(p) = rx.try_recv() else { break };
            let size = p.cmd.approx_size();
            if bytes + size > MAX_BATCH_BYTES {
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

/// Whether nothing may follow `cmd` in its batch. Every command of a batch is applied at the batch's
/// one log index, so two writes of a key in one batch leave it the same ModifyIndex. A transaction's
/// results show the keys as they are when it is applied, with that index: followed in the batch by
/// another write of one of its keys, it would hand out a version that the ModifyIndex no longer names,
/// and a CAS by that index would then succeed against the later version (a lost update; found by the
/// fault harness: faults/tests/fixtures/txn-cas-by-index-within-a-batch.json). Last in its batch, a
/// transaction sees the keys as the batch leaves them, which is what the index names.
fn ends_batch(cmd: &Command) -> bool {
    matches!(cmd, Command::Txn { .. })
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
async fn confirm(raft: &Raft, floor: &mut Option<(u64, u64)>) -> bool {
    if raft.ensure_linearizable().await.is_err() {
        return false;
    }
    let (term, last_log) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.current_term, m.last_log_index.unwrap_or(0))
    };
    let index = match *floor {
        Some((t, i)) if t == term => i,
        _ => {
            *floor = Some((term, last_log));
            last_log
        }
    };
    raft.wait(Some(std::time::Duration::from_secs(5))).applied_index_at_least(Some(index), "read floor").await.is_ok()
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
}

impl ReadBarrier {
    pub fn start(raft: Raft) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<bool>>();
        tokio::spawn(async move {
            let mut floor = None;
            while let Some(first) = rx.recv().await {
                let mut waiting = vec![first];
                while let Ok(more) = rx.try_recv() {
                    waiting.push(more);
                }
                let confirmed = confirm(&raft, &mut floor).await;
                for w in waiting {
                    let _ = w.send(confirmed);
                }
            }
        });
        ReadBarrier { tx }
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
