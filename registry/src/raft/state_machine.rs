//! The replicated state machine: applies committed commands to `state::State`, wakes blocking queries,
//! and builds, persists and installs snapshots.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError, StoredMembership};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{decode, encode, Entry, LogId, NodeId, ServerNode, StorageError, TypeConfig};
use crate::state::{CommandResult, State, Touched, WatchHub};

/// Everything a snapshot holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<NodeId, ServerNode>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, ServerNode>,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// Handle shared by the Raft core (as its state machine) and the HTTP layer (for reads).
#[derive(Clone)]
pub struct StateMachineStore {
    applied: Arc<RwLock<Applied>>,
    hub: WatchHub,
    applied_index: watch::Sender<u64>,
    snapshot_dir: Option<PathBuf>,
    current: Arc<RwLock<Option<CurrentSnapshot>>>,
}

/// The latest snapshot. On disk only its metadata stays in memory: the bytes are read back when a
/// follower needs them, so a large state is not held twice.
enum CurrentSnapshot {
    InMemory(SnapshotFile),
    OnDisk(SnapshotMeta<NodeId, ServerNode>),
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(ErrorSubject::StateMachine, verb, openraft::AnyError::error(e.to_string())),
    }
}

impl StateMachineStore {
    /// Opens the state machine, loading the latest snapshot from `snapshot_dir` if there is one.
    pub fn open(datacenter: &str, snapshot_dir: Option<PathBuf>, hub: WatchHub) -> Result<Self, StorageError> {
        let mut applied = Applied { state: State::new(datacenter), ..Default::default() };
        let mut current = None;
        if let Some(dir) = &snapshot_dir {
            std::fs::create_dir_all(dir).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let path = dir.join("snapshot.bin");
            if path.exists() {
                let bytes = std::fs::read(&path).map_err(|e| sm_err(ErrorVerb::Read, e))?;
                let file: SnapshotFile = decode(&bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?;
                applied = decode(&file.data).map_err(|e| sm_err(ErrorVerb::Read, e))?;
                applied.state.rebuild_derived();
                current = Some(CurrentSnapshot::OnDisk(file.meta));
            }
        }
        let index = applied.last_applied.map_or(0, |l| l.index);
        Ok(StateMachineStore {
            applied: Arc::new(RwLock::new(applied)),
            hub,
            applied_index: watch::channel(index).0,
            snapshot_dir,
            current: Arc::new(RwLock::new(current)),
        })
    }

    /// Runs `f` on the current state (a read lock held for the call only).
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let guard = self.applied.read().unwrap_or_else(|p| p.into_inner());
        f(&guard.state)
    }

    pub fn hub(&self) -> &WatchHub {
        &self.hub
    }

    /// Last applied log index (0 before anything is applied).
    pub fn applied_index(&self) -> u64 {
        *self.applied_index.borrow()
    }

    /// Waits until the log index `index` has been applied here.
    pub async fn wait_applied(&self, index: u64) {
        let mut rx = self.applied_index.subscribe();
        let _ = rx.wait_for(|i| *i >= index).await;
    }

    /// Writes the snapshot to disk (when there is a data dir) and makes it the current one.
    fn make_current(&self, file: SnapshotFile) -> Result<(), StorageError> {
        let current = match self.snapshot_dir {
            Some(_) => {
                self.persist(&file)?;
                CurrentSnapshot::OnDisk(file.meta)
            }
            None => CurrentSnapshot::InMemory(file),
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(current);
        Ok(())
    }

    fn persist(&self, file: &SnapshotFile) -> Result<(), StorageError> {
        let Some(dir) = &self.snapshot_dir else { return Ok(()) };
        let bytes = encode(file).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let tmp = dir.join("snapshot.bin.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join("snapshot.bin"))?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| sm_err(ErrorVerb::Write, e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, last_applied, membership) = {
            let guard = self.applied.read().unwrap_or_else(|p| p.into_inner());
            let data = encode(&*guard).map_err(|e| sm_err(ErrorVerb::Read, e))?;
            (data, guard.last_applied, guard.membership.clone())
        };
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, rand::random::<u32>()),
            None => format!("empty-{}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        let snapshot = Box::new(Cursor::new(data.clone()));
        self.make_current(SnapshotFile { meta: meta.clone(), data })?;
        Ok(Snapshot { meta, snapshot })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership<NodeId, ServerNode>), StorageError> {
        let guard = self.applied.read().unwrap_or_else(|p| p.into_inner());
        Ok((guard.last_applied, guard.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut touched = Touched::default();
        let mut results = Vec::new();
        let last = {
            let mut guard = self.applied.write().unwrap_or_else(|p| p.into_inner());
            for entry in entries {
                guard.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => CommandResult::None,
                    EntryPayload::Normal(cmd) => guard.state.apply(entry.log_id.index, cmd, &mut touched),
                    EntryPayload::Membership(m) => {
                        guard.membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResult::None
                    }
                };
                results.push(result);
            }
            guard.last_applied
        };
        self.hub.notify(&touched.0);
        if let Some(l) = last {
            self.applied_index.send_replace(l.index);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ServerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let mut applied: Applied = decode(&data).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        applied.state.rebuild_derived();
        // The snapshot's own metadata is authoritative for what it covers.
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        self.make_current(SnapshotFile { meta: meta.clone(), data })?;
        {
            let mut guard = self.applied.write().unwrap_or_else(|p| p.into_inner());
            *guard = applied;
        }
        // Everything may have changed: wake every watcher.
        self.hub.notify_all();
        if let Some(l) = meta.last_log_id {
            self.applied_index.send_replace(l.index);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = match &*self.current.read().unwrap_or_else(|p| p.into_inner()) {
            None => return Ok(None),
            Some(CurrentSnapshot::InMemory(f)) => {
                return Ok(Some(Snapshot { meta: f.meta.clone(), snapshot: Box::new(Cursor::new(f.data.clone())) }))
            }
            Some(CurrentSnapshot::OnDisk(meta)) => meta.clone(),
        };
        let Some(dir) = &self.snapshot_dir else { return Ok(None) };
        let bytes = std::fs::read(dir.join("snapshot.bin")).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let file: SnapshotFile = decode(&bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        // A newer snapshot may have replaced the file since: serve what the file holds.
        let meta = if file.meta.snapshot_id == current.snapshot_id { current } else { file.meta };
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(file.data)) }))
    }
}
