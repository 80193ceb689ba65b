//! User events carried by the gossip pool, as Consul's are by Serf: the agent that fires one puts it
//! in its own gossip state, every member sees it there within a few rounds and keeps it if the
//! event's node, service and tag filters match it, in a buffer of the last 256 (Consul's size).
//! Delivery is best effort and unordered across members, as in Consul. Shared by servers and
//! sidecars; the buffer and the filters are pure.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Mutex;

use chitchat::{ChitchatId, NodeState};
use tokio::sync::watch;

use crate::api::{event_index, UserEvent};

/// Gossip keys of a member's events: `event:<sequence>`, the value the event as JSON.
pub const KEY_EVENT_PREFIX: &str = "event:";
/// Serf's (and so Consul's) limit on a user event's name and payload together, before encoding.
pub const EVENT_SIZE_LIMIT: usize = 512;
/// Events each member keeps in its gossip state: older ones are deleted as new ones are fired.
pub const EVENTS_GOSSIPED_PER_MEMBER: usize = 16;
/// Events an agent remembers for `/v1/event/list` (Consul's ring buffer).
pub const EVENT_BUFFER_SIZE: usize = 256;

/// What a `fire` request asked for, checked as Consul checks it.
pub fn validate(name: &str, payload: &[u8], node: &str, service: &str, tag: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Missing name".into());
    }
    if name.len() + payload.len() > EVENT_SIZE_LIMIT {
        return Err(format!("user event exceeds configured limit of {EVENT_SIZE_LIMIT} bytes before encoding"));
    }
    for (what, re) in [("node", node), ("service", service), ("tag", tag)] {
        if !re.is_empty() {
            regex::Regex::new(re).map_err(|e| format!("Invalid {what} filter: {e}"))?;
        }
    }
    if !tag.is_empty() && service.is_empty() {
        return Err("cannot provide tag filter without service filter".into());
    }
    Ok(())
}

/// Why a fire request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FireError {
    /// Name and payload over Serf's limit (a 413).
    TooLarge(String),
    /// A missing name or a filter that does not compile (a 400).
    Invalid(String),
}

/// A new event as `PUT /v1/event/fire/:name?node=&service=&tag=` asks for it, checked first.
pub fn new_event(name: &str, payload: &[u8], node: &str, service: &str, tag: &str) -> Result<UserEvent, FireError> {
    validate(name, payload, node, service, tag).map_err(|e| {
        if e.contains("exceeds") {
            FireError::TooLarge(e)
        } else {
            FireError::Invalid(e)
        }
    })?;
    Ok(UserEvent {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_string(),
        payload: Some(payload.to_vec()).filter(|p| !p.is_empty()),
        node_filter: node.to_string(),
        service_filter: service.to_string(),
        tag_filter: tag.to_string(),
        version: 1,
        ltime: 0,
    })
}

/// The services of the agent receiving an event: name and tags of each.
pub type LocalServices = Vec<(String, Vec<String>)>;

/// Whether an event is for this agent: its node filter matches the node name, and its service
/// filter a local service (whose tags the tag filter must then match).
pub fn delivers_to(event: &UserEvent, node: &str, services: &LocalServices) -> bool {
    let matches = |re: &str, s: &str| re.is_empty() || regex::Regex::new(re).is_ok_and(|r| r.is_match(s));
    if !matches(&event.node_filter, node) {
        return false;
    }
    if event.service_filter.is_empty() {
        return true;
    }
    services.iter().any(|(name, tags)| {
        matches(&event.service_filter, name)
            && (event.tag_filter.is_empty() || tags.iter().any(|t| matches(&event.tag_filter, t)))
    })
}

/// Every event the live members gossip, in key order per member.
pub fn events_in(states: &BTreeMap<ChitchatId, NodeState>) -> Vec<UserEvent> {
    states
        .values()
        .flat_map(|state| state.iter_prefix(KEY_EVENT_PREFIX))
        .filter_map(|(_, v)| serde_json::from_str(&v.value).ok())
        .collect()
}

/// The gossip key of a member's `seq`-th event: zero-padded so keys sort in firing order.
pub fn event_key(seq: u64) -> String {
    format!("{KEY_EVENT_PREFIX}{seq:020}")
}

#[derive(Default)]
struct Received {
    events: VecDeque<UserEvent>,
    /// IDs already taken (a gossiped event is seen on every round until it is deleted).
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    ltime: u64,
}

/// The events this agent received, newest last, with a watch that moves on every new one.
pub struct EventBuffer {
    received: Mutex<Received>,
    changed: watch::Sender<u64>,
}

impl Default for EventBuffer {
    fn default() -> Self {
        EventBuffer { received: Mutex::new(Received::default()), changed: watch::channel(0).0 }
    }
}

impl EventBuffer {
    /// Takes an event once (later copies of the same ID are ignored); returns whether it was new.
    pub fn ingest(&self, event: UserEvent) -> bool {
        self.offer(event, |_| true)
    }

    /// Looks at an event once: the first time, keeps it if `for_me` says it is for this agent.
    /// Later copies (gossip shows an event on every round until it is deleted) cost a set look-up.
    pub fn offer(&self, mut event: UserEvent, for_me: impl FnOnce(&UserEvent) -> bool) -> bool {
        let mut r = self.received.lock().unwrap_or_else(|p| p.into_inner());
        if r.seen.contains(&event.id) {
            return false;
        }
        r.seen.insert(event.id.clone());
        r.seen_order.push_back(event.id.clone());
        // Remember more IDs than events, so an event still gossiped is not taken twice.
        while r.seen_order.len() > EVENT_BUFFER_SIZE * 4 {
            if let Some(old) = r.seen_order.pop_front() {
                r.seen.remove(&old);
            }
        }
        if !for_me(&event) {
            return false;
        }
        r.ltime += 1;
        event.ltime = r.ltime;
        r.events.push_back(event);
        while r.events.len() > EVENT_BUFFER_SIZE {
            r.events.pop_front();
        }
        let count = r.ltime;
        drop(r);
        self.changed.send_replace(count);
        true
    }

    /// Events named `name` (all without), oldest first, and the index Consul reports for them.
    pub fn list(&self, name: Option<&str>) -> (u64, Vec<UserEvent>) {
        let r = self.received.lock().unwrap_or_else(|p| p.into_inner());
        let events: Vec<UserEvent> =
            r.events.iter().filter(|e| name.is_none_or(|n| n.is_empty() || e.name == n)).cloned().collect();
        let index = events.last().map_or(1, |e| event_index(&e.id));
        (index, events)
    }

    /// `/v1/event/list`: at once, or, given the index the client holds, once the list's index
    /// differs from it or `wait` runs out (Consul's blocking for events).
    pub async fn list_blocking(
        &self,
        name: Option<&str>,
        index: Option<u64>,
        wait: std::time::Duration,
    ) -> (u64, Vec<UserEvent>) {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (now, list) = self.list(name);
            if index != Some(now) || tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                return (now, list);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, name: &str) -> UserEvent {
        UserEvent { id: id.into(), name: name.into(), version: 1, ..Default::default() }
    }

    #[test]
    fn fire_requests_are_checked_as_consul_checks_them() {
        assert!(validate("deploy", b"v2", "", "", "").is_ok());
        assert!(validate("deploy", &[0; 600], "", "", "").unwrap_err().contains("exceeds configured limit of 512"));
        assert!(validate("deploy", b"", "(", "", "").unwrap_err().starts_with("Invalid node filter"));
        assert_eq!(
            validate("deploy", b"", "", "", "v1").unwrap_err(),
            "cannot provide tag filter without service filter"
        );
        assert_eq!(validate("", b"", "", "", "").unwrap_err(), "Missing name");
    }

    #[test]
    fn filters_select_the_agents_an_event_is_for() {
        let services: LocalServices = vec![("web".into(), vec!["v1".into()]), ("db".into(), vec![])];
        let mut e = event("1", "deploy");
        assert!(delivers_to(&e, "pod-1", &services));
        e.node_filter = "^pod-".into();
        assert!(delivers_to(&e, "pod-1", &services));
        assert!(!delivers_to(&e, "server-1", &services));
        e.service_filter = "^web$".into();
        assert!(delivers_to(&e, "pod-1", &services));
        e.tag_filter = "v2".into();
        assert!(!delivers_to(&e, "pod-1", &services), "no local web has tag v2");
        e.tag_filter = "v1".into();
        assert!(delivers_to(&e, "pod-1", &services));
        e.service_filter = "cache".into();
        assert!(!delivers_to(&e, "pod-1", &services));
    }

    #[test]
    fn the_buffer_takes_each_event_once_keeps_the_last_256_and_numbers_them() {
        let b = EventBuffer::default();
        assert_eq!(b.list(None), (1, vec![]));
        assert!(b.ingest(event("00000000-0000-0000-0000-000000000001", "a")));
        assert!(!b.ingest(event("00000000-0000-0000-0000-000000000001", "a")), "a copy is ignored");
        assert!(b.ingest(event("00000000-0000-0000-0000-000000000002", "b")));
        let (index, all) = b.list(None);
        assert_eq!(all.iter().map(|e| e.ltime).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(index, event_index("00000000-0000-0000-0000-000000000002"));
        let (index, named) = b.list(Some("a"));
        assert_eq!((named.len(), index), (1, event_index("00000000-0000-0000-0000-000000000001")));
        assert_eq!(b.list(Some("zzz")), (1, vec![]));
        for i in 0..300 {
            b.ingest(event(&format!("id-{i}"), "bulk"));
        }
        assert_eq!(b.list(None).1.len(), EVENT_BUFFER_SIZE);
    }
}
