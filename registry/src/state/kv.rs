//! KV: set/CAS/acquire/release, deletes, transactions and reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{CommandResult, KvSetMode, State, Touched, WatchKey};
use crate::api::{KvPair, TxnError, TxnKvOp, TxnResponse, TxnResult};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub flags: u64,
    pub lock_index: u64,
    pub session: Option<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl KvEntry {
    pub fn to_pair(&self, key: &str, with_value: bool) -> KvPair {
        KvPair {
            lock_index: self.lock_index,
            key: key.to_string(),
            flags: self.flags,
            value: if with_value && !self.value.is_empty() { Some(self.value.clone()) } else { None },
            session: self.session.clone(),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

/// Why a single KV write did not happen.
enum KvRefusal {
    /// CAS or lock conflict: Consul answers `false`.
    Conflict(String),
    /// Bad request (unknown session): Consul answers an error.
    Invalid(String),
}

/// Undo log so a failing transaction leaves no trace.
type Undo = Vec<(String, Option<KvEntry>)>;

impl State {
    fn kv_put_entry(&mut self, key: &str, entry: Option<KvEntry>, undo: &mut Undo, touched: &mut Touched) {
        let old = match entry {
            Some(e) => {
                if let Some(s) = &e.session {
                    self.locks_by_session.entry(s.clone()).or_default().insert(key.to_string());
                }
                self.kv.insert(key.to_string(), e)
            }
            None => self.kv.remove(key),
        };
        if let Some(old_session) = old.as_ref().and_then(|o| o.session.as_ref()) {
            let still_held = self.kv.get(key).and_then(|e| e.session.as_ref()) == Some(old_session);
            if !still_held {
                if let Some(keys) = self.locks_by_session.get_mut(old_session) {
                    keys.remove(key);
                }
            }
        }
        undo.push((key.to_string(), old));
        touched.push(WatchKey::Kv(key.to_string()));
    }

    /// Marks the keys a committed write deleted with a tombstone at `index`, so that a prefix listing
    /// still reports the deletion's index (Consul's graveyard) after the key is gone.
    fn bury_deleted(&mut self, index: u64, undo: &Undo) {
        for (key, old) in undo {
            if old.is_some() && !self.kv.contains_key(key) {
                self.kv_tombstones.insert(key.clone(), index);
            }
        }
    }

    /// Forgets tombstones at or below `index` (the leader proposes this once they are old enough).
    pub(super) fn kv_reap_tombstones(&mut self, index: u64) -> CommandResult {
        self.kv_tombstones.retain(|_, at| *at > index);
        CommandResult::None
    }

    fn rollback(&mut self, undo: Undo) {
        let mut scratch = Touched::default();
        for (key, old) in undo.into_iter().rev() {
            self.kv_put_entry(&key, old, &mut Vec::new(), &mut scratch);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn kv_write(
        &mut self,
        index: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        mode: &KvSetMode,
        now_ms: u64,
        undo: &mut Undo,
        touched: &mut Touched,
    ) -> Result<(), KvRefusal> {
        let existing = self.kv.get(key);
        let mut entry = KvEntry {
            value,
            flags,
            lock_index: existing.map_or(0, |e| e.lock_index),
            session: existing.and_then(|e| e.session.clone()),
            create_index: existing.map_or(index, |e| e.create_index),
            modify_index: index,
        };
        match mode {
            KvSetMode::Plain => {}
            KvSetMode::Cas(cas) => {
                let current = existing.map(|e| e.modify_index);
                let ok = match current {
                    None => *cas == 0,
                    Some(m) => *cas != 0 && m == *cas,
                };
                if !ok {
                    return Err(KvRefusal::Conflict(format!("failed to set key {key:?}, index is stale")));
                }
            }
            KvSetMode::Acquire(session) => {
                if !self.sessions.contains_key(session) {
                    return Err(KvRefusal::Invalid(format!("invalid session {session:?}")));
                }
                if let Some(until) = self.lock_delays.get(key) {
                    if now_ms < *until {
                        return Err(KvRefusal::Conflict(format!("failed to lock key {key:?}, lock delay in effect")));
                    }
                }
                match existing.and_then(|e| e.session.as_ref()) {
                    Some(holder) if holder == session => {}
                    Some(_) => {
                        return Err(KvRefusal::Conflict(format!("failed to lock key {key:?}, lock is already held")))
                    }
                    None => {
                        entry.lock_index += 1;
                        entry.session = Some(session.clone());
                    }
                }
            }
            KvSetMode::Release(session) => match existing.and_then(|e| e.session.as_ref()) {
                Some(holder) if holder == session => entry.session = None,
                _ => {
                    return Err(KvRefusal::Conflict(format!(
                        "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                    )))
                }
            },
        }
        self.kv_put_entry(key, Some(entry), undo, touched);
        Ok(())
    }

    pub(super) fn kv_set(
        &mut self,
        index: u64,
        key: String,
        value: Vec<u8>,
        flags: u64,
        mode: KvSetMode,
        now_ms: u64,
        touched: &mut Touched,
    ) -> CommandResult {
        let mut undo = Vec::new();
        match self.kv_write(index, &key, value, flags, &mode, now_ms, &mut undo, touched) {
            Ok(()) => {
                self.indexes.kvs = index;
                CommandResult::Bool(true)
            }
            Err(KvRefusal::Conflict(_)) => CommandResult::Bool(false),
            Err(KvRefusal::Invalid(msg)) => CommandResult::Rejected(msg),
        }
    }

    fn kv_delete_keys(&mut self, key: &str, recurse: bool, undo: &mut Undo, touched: &mut Touched) {
        let keys: Vec<String> = if recurse {
            self.kv.range(key.to_string()..).take_while(|(k, _)| k.starts_with(key)).map(|(k, _)| k.clone()).collect()
        } else if self.kv.contains_key(key) {
            vec![key.to_string()]
        } else {
            vec![]
        };
        for k in keys {
            self.kv_put_entry(&k, None, undo, touched);
        }
    }

    pub(super) fn kv_delete(
        &mut self,
        index: u64,
        key: &str,
        recurse: bool,
        cas: Option<u64>,
        touched: &mut Touched,
    ) -> CommandResult {
        if let Some(cas) = cas {
            match self.kv.get(key) {
                None => return CommandResult::Bool(true),
                Some(e) if e.modify_index != cas => return CommandResult::Bool(false),
                Some(_) => {}
            }
        }
        let mut undo = Vec::new();
        self.kv_delete_keys(key, recurse, &mut undo, touched);
        self.bury_deleted(index, &undo);
        // Deletes move the table index so blocking list queries see them.
        self.indexes.kvs = index;
        CommandResult::Bool(true)
    }

    /// All-or-nothing KV transaction, as `/v1/txn` does it.
    pub(super) fn txn(&mut self, index: u64, ops: Vec<TxnKvOp>, now_ms: u64, touched: &mut Touched) -> CommandResult {
        let mut undo: Undo = Vec::new();
        let mut results = Vec::new();
        let mut local = Touched::default();
        for (i, op) in ops.into_iter().enumerate() {
            if let Err(what) = self.txn_op(index, op, now_ms, &mut undo, &mut results, &mut local) {
                self.rollback(undo);
                return CommandResult::Txn(TxnResponse {
                    results: None,
                    errors: Some(vec![TxnError { op_index: i, what }]),
                });
            }
        }
        if !undo.is_empty() {
            self.bury_deleted(index, &undo);
            self.indexes.kvs = index;
        }
        touched.0.extend(local.0);
        CommandResult::Txn(TxnResponse { results: Some(results), errors: None })
    }

    fn txn_op(
        &mut self,
        index: u64,
        op: TxnKvOp,
        now_ms: u64,
        undo: &mut Undo,
        results: &mut Vec<TxnResult>,
        touched: &mut Touched,
    ) -> Result<(), String> {
        let key = op.key.as_str();
        let value = op.value.clone().unwrap_or_default();
        let session = || op.session.clone().unwrap_or_default();
        let write = |st: &mut State, mode: KvSetMode, undo: &mut Undo, touched: &mut Touched| {
            st.kv_write(index, key, value.clone(), op.flags, &mode, now_ms, undo, touched).map_err(|r| match r {
                KvRefusal::Conflict(m) | KvRefusal::Invalid(m) => m,
            })
        };
        let result_of =
            |st: &State, with_value: bool| st.kv.get(key).map(|e| TxnResult { kv: e.to_pair(key, with_value) });
        match op.verb.as_str() {
            "set" => write(self, KvSetMode::Plain, undo, touched)?,
            "cas" => write(self, KvSetMode::Cas(op.index), undo, touched)?,
            "lock" => write(self, KvSetMode::Acquire(session()), undo, touched)?,
            "unlock" => write(self, KvSetMode::Release(session()), undo, touched)?,
            "get" => {
                let r = result_of(self, true).ok_or_else(|| format!("key {key:?} doesn't exist"))?;
                results.push(r);
                return Ok(());
            }
            "get-tree" => {
                for (k, e) in self.kv.range(key.to_string()..).take_while(|(k, _)| k.starts_with(key)) {
                    results.push(TxnResult { kv: e.to_pair(k, true) });
                }
                return Ok(());
            }
            "check-index" => {
                let e = self.kv.get(key).ok_or_else(|| format!("key {key:?} doesn't exist"))?;
                if e.modify_index != op.index {
                    return Err(format!(
                        "failed index check for key {key:?}, current modify index {} != {}",
                        e.modify_index, op.index
                    ));
                }
            }
            "check-session" => {
                let e = self.kv.get(key).ok_or_else(|| format!("key {key:?} doesn't exist"))?;
                let want = session();
                if e.session.as_deref().unwrap_or("") != want {
                    return Err(format!(
                        "failed session check for key {key:?}, current session {:?} != {want:?}",
                        e.session.as_deref().unwrap_or("")
                    ));
                }
            }
            "check-not-exists" => {
                if self.kv.contains_key(key) {
                    return Err(format!("key {key:?} exists"));
                }
                return Ok(());
            }
            "delete" => {
                self.kv_delete_keys(key, false, undo, touched);
                return Ok(());
            }
            "delete-tree" => {
                self.kv_delete_keys(key, true, undo, touched);
                return Ok(());
            }
            "delete-cas" => {
                match self.kv.get(key) {
                    // As Consul's kvsDeleteCASTxn (and `kv_delete` above): a missing key is not a conflict.
                    None => return Ok(()),
                    Some(e) if e.modify_index == op.index => {}
                    Some(_) => return Err(format!("failed to delete key {key:?}, index is stale")),
                }
                self.kv_delete_keys(key, false, undo, touched);
                return Ok(());
            }
            other => return Err(format!("unknown KV verb {other:?}")),
        }
        // Writes and checks answer the entry without its value, as Consul does.
        if let Some(r) = result_of(self, false) {
            results.push(r);
        }
        Ok(())
    }

    /// Releases or deletes the keys a session holds and starts their lock delay.
    pub(super) fn release_session_locks(
        &mut self,
        index: u64,
        session: &str,
        delete: bool,
        lock_delay_ms: u64,
        now_ms: u64,
        touched: &mut Touched,
    ) {
        let keys = self.locks_by_session.remove(session).unwrap_or_default();
        let mut undo = Vec::new();
        for key in keys {
            let Some(e) = self.kv.get(&key) else { continue };
            if e.session.as_deref() != Some(session) {
                continue;
            }
            if lock_delay_ms > 0 {
                self.lock_delays.insert(key.clone(), now_ms + lock_delay_ms);
            }
            if delete {
                self.kv_put_entry(&key, None, &mut undo, touched);
            } else {
                let mut e = e.clone();
                e.session = None;
                e.modify_index = index;
                self.kv_put_entry(&key, Some(e), &mut undo, touched);
            }
            self.indexes.kvs = index;
        }
        self.bury_deleted(index, &undo);
        // Expired delays are of no further use.
        self.lock_delays.retain(|_, until| *until > now_ms);
    }

    // ---- reads ----
    //
    // Which index a read reports is what a blocking query compares with, so it follows Consul's
    // state store exactly: an existing key reports its own ModifyIndex; a prefix, the highest
    // ModifyIndex under it, deletions (tombstones) included; a missing key, an empty prefix's
    // listing and the whole table's listing report the table's index. A watcher of one key is then
    // not woken by changes to others.

    pub fn kv_get(&self, key: &str) -> (u64, Option<KvPair>) {
        let (index, entry) = self.kv_value(key);
        (index, entry.map(|e| e.to_pair(key, true)))
    }

    pub fn kv_value(&self, key: &str) -> (u64, Option<&KvEntry>) {
        match self.kv.get(key) {
            Some(e) => (e.modify_index, Some(e)),
            None => (self.indexes.kvs, None),
        }
    }

    fn under<'a, V>(map: &'a BTreeMap<String, V>, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
        map.range(prefix.to_string()..).take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// The index a listing of `prefix` reports.
    fn kv_prefix_index(&self, prefix: &str) -> u64 {
        if prefix.is_empty() {
            return self.indexes.kvs;
        }
        let live = Self::under(&self.kv, prefix).map(|(_, e)| e.modify_index).max().unwrap_or(0);
        let buried = Self::under(&self.kv_tombstones, prefix).map(|(_, at)| *at).max().unwrap_or(0);
        match live.max(buried) {
            0 => self.indexes.kvs,
            i => i,
        }
    }

    pub fn kv_list(&self, prefix: &str) -> (u64, Vec<KvPair>) {
        let list = Self::under(&self.kv, prefix).map(|(k, e)| e.to_pair(k, true)).collect();
        (self.kv_prefix_index(prefix), list)
    }

    /// Keys under `prefix`; with a separator, keys are rolled up to the first separator after the prefix.
    pub fn kv_keys(&self, prefix: &str, separator: Option<&str>) -> (u64, Vec<String>) {
        let mut out: Vec<String> = Vec::new();
        for (k, _) in Self::under(&self.kv, prefix) {
            let key = match separator.filter(|s| !s.is_empty()) {
                Some(sep) => match k[prefix.len()..].find(sep) {
                    Some(pos) => &k[..prefix.len() + pos + sep.len()],
                    None => k.as_str(),
                },
                None => k.as_str(),
            };
            if out.last().map(String::as_str) != Some(key) {
                out.push(key.to_string());
            }
        }
        (self.kv_prefix_index(prefix), out)
    }

    /// How many deleted keys are remembered (for the leader's reaping).
    pub fn kv_tombstone_count(&self) -> usize {
        self.kv_tombstones.len()
    }
}
