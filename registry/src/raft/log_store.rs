//! The durable Raft log and vote, in redb, with group commit.
//!
//! Appends are handed to one writer thread. It drains everything queued, writes it in one redb
//! transaction (one fsync), and only then tells openraft the entries are on disk. Under load many
//! client writes share one fsync; a lone write pays one. The log since the last purge is also kept in
//! memory, so reads (replication, apply) never touch the disk and never race the writer.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{decode, encode, Entry, LogId, NodeId, StorageError, TypeConfig};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

/// In-memory view of the log, shared by the store and its readers.
#[derive(Default)]
struct LogCache {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId>,
}

enum WriteOp {
    Append(Vec<(u64, Vec<u8>)>, LogFlushed<TypeConfig>),
    Meta(&'static str, Vec<u8>, Option<tokio::sync::oneshot::Sender<Result<(), String>>>),
    /// Delete logs with index >= the value.
    Truncate(u64),
    /// Delete logs with index <= the value.
    Purge(u64),
}

#[derive(Clone)]
pub struct LogStore {
    cache: Arc<Mutex<LogCache>>,
    writer: Arc<Writer>,
}

/// The writer thread's handle. When the last `LogStore` clone goes, the queue closes and the thread
/// is joined, so the database file is closed before anyone can reopen it.
struct Writer {
    tx: Option<mpsc::Sender<WriteOp>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn send(&self, op: WriteOp) -> Result<(), StorageError> {
        self.tx.as_ref().ok_or_else(writer_gone)?.send(op).map_err(|_| writer_gone())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn io_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageError::IO { source: StorageIOError::new(ErrorSubject::Logs, verb, openraft::AnyError::new(&e)) }
}

fn lock_err() -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(
            ErrorSubject::Logs,
            ErrorVerb::Read,
            openraft::AnyError::error("log cache lock poisoned"),
        ),
    }
}

/// The id of the log's last entry, read from the store's cache without keeping its writer alive
/// (the election watchdog and `/raft/info` ask it).
#[derive(Clone)]
pub struct LastLogView(Arc<Mutex<LogCache>>);

impl LastLogView {
    pub fn get(&self) -> Option<LogId> {
        let cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cache.entries.values().next_back().map(|e| e.log_id).or(cache.last_purged)
    }
}

impl LogStore {
    pub fn last_log_view(&self) -> LastLogView {
        LastLogView(self.cache.clone())
    }

    /// Opens (or creates) the log at `path`, loading what is on disk.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let db = Database::create(path).map_err(|e| io_err(ErrorVerb::Read, e))?;
        Self::from_db(db)
    }

    /// A log that lives in memory only (dev mode without a data dir, and tests).
    pub fn in_memory() -> Result<Self, StorageError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| io_err(ErrorVerb::Read, e))?;
        Self::from_db(db)
    }

    fn from_db(db: Database) -> Result<Self, StorageError> {
        {
            let tx = db.begin_write().map_err(|e| io_err(ErrorVerb::Write, e))?;
            tx.open_table(LOGS).map_err(|e| io_err(ErrorVerb::Write, e))?;
            tx.open_table(META).map_err(|e| io_err(ErrorVerb::Write, e))?;
            tx.commit().map_err(|e| io_err(ErrorVerb::Write, e))?;
        }
        let mut cache = LogCache::default();
        {
            let tx = db.begin_read().map_err(|e| io_err(ErrorVerb::Read, e))?;
            let meta = tx.open_table(META).map_err(|e| io_err(ErrorVerb::Read, e))?;
            let get = |k: &str| -> Result<Option<Vec<u8>>, StorageError> {
                Ok(meta.get(k).map_err(|e| io_err(ErrorVerb::Read, e))?.map(|v| v.value().to_vec()))
            };
            let dec_err = |e: rmp_serde::decode::Error| io_err(ErrorVerb::Read, e);
            if let Some(v) = get(KEY_VOTE)? {
                cache.vote = Some(decode(&v).map_err(dec_err)?);
            }
            if let Some(v) = get(KEY_COMMITTED)? {
                cache.committed = decode(&v).map_err(dec_err)?;
            }
            if let Some(v) = get(KEY_PURGED)? {
                cache.last_purged = decode(&v).map_err(dec_err)?;
            }
            let logs = tx.open_table(LOGS).map_err(|e| io_err(ErrorVerb::Read, e))?;
            for row in logs.iter().map_err(|e| io_err(ErrorVerb::Read, e))? {
                let (k, v) = row.map_err(|e| io_err(ErrorVerb::Read, e))?;
                let entry: Entry = decode(v.value()).map_err(dec_err)?;
                cache.entries.insert(k.value(), entry);
            }
        }
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(db, rx))
            .map_err(|e| io_err(ErrorVerb::Write, e))?;
        let writer = Writer { tx: Some(tx), thread: Some(thread) };
        Ok(LogStore { cache: Arc::new(Mutex::new(cache)), writer: Arc::new(writer) })
    }

    async fn write_meta(&self, key: &'static str, bytes: Vec<u8>) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.send(WriteOp::Meta(key, bytes, Some(tx)))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(StorageError::IO {
                source: StorageIOError::new(ErrorSubject::Vote, ErrorVerb::Write, openraft::AnyError::error(msg)),
            }),
            Err(_) => Err(writer_gone()),
        }
    }
}

fn writer_gone() -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(
            ErrorSubject::Logs,
            ErrorVerb::Write,
            openraft::AnyError::error("log writer thread stopped"),
        ),
    }
}

/// The writer thread: one redb transaction (one fsync) per batch of queued operations.
fn writer_loop(db: Database, rx: mpsc::Receiver<WriteOp>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let result = write_batch(&db, &batch);
        let err_text = result.as_ref().err().map(|e| e.to_string());
        for op in batch {
            match op {
                WriteOp::Append(_, cb) => cb.log_io_completed(match &err_text {
                    None => Ok(()),
                    Some(e) => Err(std::io::Error::other(e.clone())),
                }),
                WriteOp::Meta(_, _, Some(reply)) => {
                    let _ = reply.send(match &err_text {
                        None => Ok(()),
                        Some(e) => Err(e.clone()),
                    });
                }
                _ => {}
            }
        }
        if let Some(e) = err_text {
            tracing::error!(error = %e, "raft log write failed");
        }
    }
}

fn write_batch(db: &Database, batch: &[WriteOp]) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    // The committed index and purges need no fsync of their own (openraft tolerates both being
    // behind after a crash); they become durable with the next append or vote.
    let needs_fsync =
        batch.iter().any(|op| !matches!(op, WriteOp::Meta(KEY_COMMITTED | KEY_PURGED, _, None) | WriteOp::Purge(_)));
    if !needs_fsync {
        tx.set_durability(redb::Durability::None)?;
    }
    {
        let mut logs = tx.open_table(LOGS)?;
        let mut meta = tx.open_table(META)?;
        for op in batch {
            match op {
                WriteOp::Append(entries, _) => {
                    for (index, bytes) in entries {
                        logs.insert(*index, bytes.as_slice())?;
                    }
                }
                WriteOp::Meta(key, bytes, _) => {
                    meta.insert(*key, bytes.as_slice())?;
                }
                WriteOp::Truncate(from) => {
                    logs.retain_in(*from.., |_, _| false)?;
                }
                WriteOp::Purge(upto) => {
                    logs.retain_in(..=*upto, |_, _| false)?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let cache = self.cache.lock().map_err(|_| lock_err())?;
        Ok(cache.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let cache = self.cache.lock().map_err(|_| lock_err())?;
        let last = cache.entries.values().next_back().map(|e| e.log_id).or(cache.last_purged);
        Ok(LogState { last_purged_log_id: cache.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let bytes = encode(vote).map_err(|e| io_err(ErrorVerb::Write, e))?;
        self.write_meta(KEY_VOTE, bytes).await?;
        self.cache.lock().map_err(|_| lock_err())?.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.cache.lock().map_err(|_| lock_err())?.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: it rides with the next batch; openraft tolerates a stale value.
        let bytes = encode(&committed).map_err(|e| io_err(ErrorVerb::Write, e))?;
        self.cache.lock().map_err(|_| lock_err())?.committed = committed;
        self.writer.send(WriteOp::Meta(KEY_COMMITTED, bytes, None))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.cache.lock().map_err(|_| lock_err())?.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        {
            let mut cache = self.cache.lock().map_err(|_| lock_err())?;
            for entry in entries {
                let bytes = encode(&entry).map_err(|e| io_err(ErrorVerb::Write, e))?;
                rows.push((entry.log_id.index, bytes));
                cache.entries.insert(entry.log_id.index, entry);
            }
        }
        self.writer.send(WriteOp::Append(rows, callback))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.cache.lock().map_err(|_| lock_err())?.entries.split_off(&log_id.index);
        self.writer.send(WriteOp::Truncate(log_id.index))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = encode(&Some(log_id)).map_err(|e| io_err(ErrorVerb::Write, e))?;
        {
            let mut cache = self.cache.lock().map_err(|_| lock_err())?;
            cache.last_purged = Some(log_id);
            let keep = cache.entries.split_off(&(log_id.index + 1));
            cache.entries = keep;
        }
        self.writer.send(WriteOp::Meta(KEY_PURGED, bytes, None))?;
        self.writer.send(WriteOp::Purge(log_id.index))
    }
}
