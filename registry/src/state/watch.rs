//! Which blocking queries to wake when the state changes.
//!
//! A blocking query registers one waiter per key it reads (a KV key, a KV prefix, a service name, a node,
//! or a whole table) and sleeps on it; applying a command names the keys it touched and wakes only their
//! waiters. There is no task or poll loop per watcher: an idle watcher is one map entry and one oneshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Nodes,
    Services,
    Checks,
    Sessions,
    Acl,
    Coordinates,
    Queries,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatchKey {
    /// A KV key changed: wakes watchers of that key and of every prefix of it.
    Kv(String),
    /// Watch every key under a prefix (only for waiting; changes are reported as `Kv`).
    KvPrefix(String),
    Service(String),
    Node(String),
    Table(Table),
    /// Anything at all: waiters of endpoints that read several tables; when touched (a restore),
    /// every waiter wakes.
    Any,
}

type WaiterId = u64;

#[derive(Default)]
struct Waiters {
    exact: HashMap<WatchKey, HashMap<WaiterId, Arc<Slot>>>,
    prefixes: BTreeMap<String, HashMap<WaiterId, Arc<Slot>>>,
    any: HashMap<WaiterId, Arc<Slot>>,
}

struct Slot(Mutex<Option<oneshot::Sender<()>>>);

impl Slot {
    fn fire(&self) {
        if let Ok(mut s) = self.0.lock() {
            if let Some(tx) = s.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// The registry of sleeping blocking queries.
#[derive(Default, Clone)]
pub struct WatchHub {
    inner: Arc<Mutex<Waiters>>,
    next_id: Arc<AtomicU64>,
    count: Arc<AtomicU64>,
}

/// A registered wait. Dropping it (answered, timed out or client gone) removes it from the hub.
pub struct Watch {
    hub: WatchHub,
    id: WaiterId,
    keys: Vec<WatchKey>,
    rx: Option<oneshot::Receiver<()>>,
}

impl Watch {
    /// Resolves when any of the keys changes.
    pub async fn changed(&mut self) {
        if let Some(rx) = self.rx.as_mut() {
            let _ = rx.await;
            self.rx = None;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.hub.unregister(self.id, &self.keys);
    }
}

impl WatchHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of blocking queries currently waiting.
    pub fn watchers(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn register(&self, keys: Vec<WatchKey>) -> Watch {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let slot = Arc::new(Slot(Mutex::new(Some(tx))));
        if let Ok(mut w) = self.inner.lock() {
            for key in &keys {
                match key {
                    WatchKey::KvPrefix(p) => {
                        w.prefixes.entry(p.clone()).or_default().insert(id, slot.clone());
                    }
                    WatchKey::Any => {
                        w.any.insert(id, slot.clone());
                    }
                    k => {
                        w.exact.entry(k.clone()).or_default().insert(id, slot.clone());
                    }
                }
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        Watch { hub: self.clone(), id, keys, rx: Some(rx) }
    }

    fn unregister(&self, id: WaiterId, keys: &[WatchKey]) {
        if let Ok(mut w) = self.inner.lock() {
            for key in keys {
                match key {
                    WatchKey::KvPrefix(p) => w.prefixes.remove_waiter(p, id),
                    WatchKey::Any => {
                        w.any.remove(&id);
                    }
                    k => w.exact.remove_waiter(k, id),
                }
            }
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
    }

    /// Wakes every waiter (after a snapshot replaced the whole state).
    pub fn notify_all(&self) {
        let Ok(w) = self.inner.lock() else { return };
        w.any.values().for_each(|s| s.fire());
        w.exact.values().flat_map(|m| m.values()).for_each(|s| s.fire());
        w.prefixes.values().flat_map(|m| m.values()).for_each(|s| s.fire());
    }

    /// Wakes the waiters of every touched key. `Kv(key)` also wakes the watchers of each prefix of `key`.
    pub fn notify(&self, touched: &[WatchKey]) {
        if touched.is_empty() {
            return;
        }
        if touched.contains(&WatchKey::Any) {
            return self.notify_all();
        }
        let Ok(w) = self.inner.lock() else { return };
        for slot in w.any.values() {
            slot.fire();
        }
        for key in touched {
            if let Some(ws) = w.exact.get(key) {
                ws.values().for_each(|s| s.fire());
            }
            if let WatchKey::Kv(k) = key {
                // Every prefix of k, including "" and k itself: one map look-up per character boundary.
                for end in (0..=k.len()).filter(|&i| k.is_char_boundary(i)) {
                    if let Some(ws) = w.prefixes.get(&k[..end]) {
                        ws.values().for_each(|s| s.fire());
                    }
                }
            }
        }
    }
}

trait MapLike<K> {
    fn remove_waiter(&mut self, key: &K, id: WaiterId);
}

impl<K: Ord> MapLike<K> for BTreeMap<K, HashMap<WaiterId, Arc<Slot>>> {
    fn remove_waiter(&mut self, key: &K, id: WaiterId) {
        if let Some(ws) = self.get_mut(key) {
            ws.remove(&id);
            if ws.is_empty() {
                self.remove(key);
            }
        }
    }
}

impl<K: std::hash::Hash + Eq> MapLike<K> for HashMap<K, HashMap<WaiterId, Arc<Slot>>> {
    fn remove_waiter(&mut self, key: &K, id: WaiterId) {
        if let Some(ws) = self.get_mut(key) {
            ws.remove(&id);
            if ws.is_empty() {
                self.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_only_touched_keys_and_prefixes() {
        let hub = WatchHub::new();
        let mut exact = hub.register(vec![WatchKey::Kv("app/a".into())]);
        let mut prefix = hub.register(vec![WatchKey::KvPrefix("app/".into())]);
        let mut other = hub.register(vec![WatchKey::Kv("other".into())]);
        assert_eq!(hub.watchers(), 3);
        hub.notify(&[WatchKey::Kv("app/a".into())]);
        tokio::time::timeout(Duration::from_secs(1), exact.changed()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), prefix.changed()).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(50), other.changed()).await.is_err());
        drop((exact, prefix, other));
        assert_eq!(hub.watchers(), 0);
        assert!(hub.inner.lock().unwrap().exact.is_empty());
        assert!(hub.inner.lock().unwrap().prefixes.is_empty());
    }
}
