//! The log store and state machine pass openraft's storage test suite, on disk (redb + snapshot files).

use openraft::testing::{StoreBuilder, Suite};
use registry::raft::log_store::LogStore;
use registry::raft::state_machine::StateMachineStore;
use registry::raft::{StorageError, TypeConfig};
use registry::state::WatchHub;
use tempfile::TempDir;

struct OnDisk;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for OnDisk {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("raft.redb"))?;
        let sm = StateMachineStore::open("dc1", Some(dir.path().join("snapshots")), WatchHub::new())?;
        Ok((dir, log, sm))
    }
}

struct InMemory;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, ()> for InMemory {
    async fn build(&self) -> Result<((), LogStore, StateMachineStore), StorageError> {
        Ok(((), LogStore::in_memory()?, StateMachineStore::open("dc1", None, WatchHub::new())?))
    }
}

#[test]
fn on_disk_store_passes_openraft_suite() {
    Suite::test_all(OnDisk).expect("openraft storage suite");
}

#[test]
fn in_memory_store_passes_openraft_suite() {
    Suite::test_all(InMemory).expect("openraft storage suite");
}

/// What was appended (and reported flushed) is there after reopening: the log is durable.
#[test]
fn log_and_vote_survive_reopen() {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("raft.redb");
    rt.block_on(async {
        let mut log = LogStore::open(&path).expect("open");
        log.save_vote(&Vote::new(3, 7)).await.expect("vote");
        let entries: Vec<Entry<TypeConfig>> = (1..=5)
            .map(|i| Entry { log_id: LogId::new(CommittedLeaderId::new(3, 7), i), payload: EntryPayload::Blank })
            .collect();
        // Returns once the writer thread reports the entries on disk.
        log.blocking_append(entries).await.expect("append");
        log.purge(LogId::new(CommittedLeaderId::new(3, 7), 2)).await.expect("purge");
        log.truncate(LogId::new(CommittedLeaderId::new(3, 7), 5)).await.expect("truncate");
        // Let the writer thread finish the queued purge/truncate (vote writes wait for it).
        log.save_vote(&Vote::new(3, 7)).await.expect("vote again");
    });
    rt.block_on(async {
        let mut log = LogStore::open(&path).expect("reopen");
        assert_eq!(log.read_vote().await.expect("read vote"), Some(Vote::new(3, 7)));
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(4));
        let got = log.try_get_log_entries(0..10).await.expect("read");
        assert_eq!(got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![3, 4]);
    });
}
