//! Sessions: creation against node health, destruction and invalidation.

use super::{CommandResult, State, Table, Touched, WatchKey};
use crate::api::{HealthStatus, SessionBehavior, SessionEntry};

impl State {
    pub(super) fn session_create(&mut self, index: u64, mut s: SessionEntry, touched: &mut Touched) -> CommandResult {
        if !self.nodes.contains_key(&s.node) {
            return CommandResult::Rejected(format!("Missing node registration for {:?}", s.node));
        }
        let node_checks = self.checks.get(&s.node);
        for check_id in s.node_checks.iter().flatten() {
            match node_checks.and_then(|c| c.get(check_id)) {
                None => return CommandResult::Rejected(format!("Missing check '{check_id}' registration")),
                Some(c) if c.status == HealthStatus::Critical => {
                    return CommandResult::Rejected(format!("Check '{check_id}' is in critical state"))
                }
                Some(_) => {}
            }
        }
        for sc in s.service_checks.iter().flatten() {
            match node_checks.and_then(|c| c.get(&sc.id)) {
                None => return CommandResult::Rejected(format!("Missing check '{}' registration", sc.id)),
                Some(c) if c.status == HealthStatus::Critical => {
                    return CommandResult::Rejected(format!("Check '{}' is in critical state", sc.id))
                }
                Some(_) => {}
            }
        }
        if self.sessions.contains_key(&s.id) {
            return CommandResult::Rejected(format!("Session {:?} already exists", s.id));
        }
        s.create_index = index;
        s.modify_index = index;
        self.sessions.insert(s.id.clone(), s);
        self.indexes.sessions = index;
        touched.push(WatchKey::Table(Table::Sessions));
        CommandResult::None
    }

    pub(super) fn session_destroy(&mut self, index: u64, id: &str, now_ms: u64, touched: &mut Touched) {
        let Some(s) = self.sessions.remove(id) else { return };
        let lock_delay_ms = s.lock_delay / 1_000_000;
        let delete = s.behavior == SessionBehavior::Delete;
        self.release_session_locks(index, id, delete, lock_delay_ms, now_ms, touched);
        self.indexes.sessions = index;
        touched.push(WatchKey::Table(Table::Sessions));
    }

    /// Destroys the sessions that depend on a check that just went critical (or was removed).
    pub(super) fn invalidate_sessions_for_check(
        &mut self,
        index: u64,
        node: &str,
        check_id: &str,
        now_ms: u64,
        touched: &mut Touched,
    ) {
        let doomed: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.node == node)
            .filter(|s| {
                s.node_checks.iter().flatten().any(|c| c == check_id)
                    || s.service_checks.iter().flatten().any(|c| c.id == check_id)
            })
            .map(|s| s.id.clone())
            .collect();
        for id in doomed {
            self.session_destroy(index, &id, now_ms, touched);
        }
    }

    pub(super) fn invalidate_sessions_for_node(&mut self, index: u64, node: &str, now_ms: u64, touched: &mut Touched) {
        let doomed: Vec<String> = self.sessions.values().filter(|s| s.node == node).map(|s| s.id.clone()).collect();
        for id in doomed {
            self.session_destroy(index, &id, now_ms, touched);
        }
    }

    // ---- reads ----

    pub fn session_get(&self, id: &str) -> (u64, Option<SessionEntry>) {
        (self.indexes.sessions, self.sessions.get(id).cloned())
    }

    pub fn session_list(&self) -> (u64, Vec<SessionEntry>) {
        (self.indexes.sessions, self.sessions.values().cloned().collect())
    }

    pub fn session_node(&self, node: &str) -> (u64, Vec<SessionEntry>) {
        (self.indexes.sessions, self.sessions.values().filter(|s| s.node == node).cloned().collect())
    }
}
