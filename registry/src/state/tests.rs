//! Unit tests for the pure state machine. Expected behaviour follows Consul 1.10 (see
//! `shared/consul-reference/consul-1.10.3-dev.json` for the recorded answers these mirror).

use std::time::Duration;

use super::*;
use crate::api::{
    CheckRegistration, DeregisterRequest, HealthStatus, RegisterRequest, ServiceRegistration, SessionBehavior, TxnKvOp,
    TxnResponse,
};

// ---------------------------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------------------------

/// A state machine plus a log index that grows by one for every applied command.
struct Harness {
    st: State,
    last: u64,
    /// Watch keys the last `apply` touched.
    touched: Vec<WatchKey>,
}

impl Harness {
    fn new() -> Self {
        // Start at a non-trivial index so that create/modify indexes are clearly log indexes, not counters.
        Harness { st: State::new("dc1"), last: 10, touched: Vec::new() }
    }

    /// Applies `cmd` at the next log index and returns the answer.
    fn apply(&mut self, cmd: Command) -> CommandResult {
        self.last += 1;
        let mut touched = Touched::default();
        let res = self.st.apply(self.last, cmd, &mut touched);
        self.touched = touched.0;
        res
    }

    /// Index the last command was applied at.
    fn idx(&self) -> u64 {
        self.last
    }

    fn set(&mut self, key: &str, value: &str) -> CommandResult {
        self.kv(key, value, KvSetMode::Plain, 0)
    }

    fn kv(&mut self, key: &str, value: &str, mode: KvSetMode, now_ms: u64) -> CommandResult {
        self.apply(Command::KvSet { key: key.into(), value: value.as_bytes().to_vec(), flags: 0, mode, now_ms })
    }

    fn acquire(&mut self, key: &str, session: &str, now_ms: u64) -> CommandResult {
        self.kv(key, "v", KvSetMode::Acquire(session.into()), now_ms)
    }

    fn release(&mut self, key: &str, session: &str) -> CommandResult {
        self.kv(key, "v", KvSetMode::Release(session.into()), 0)
    }

    fn delete(&mut self, key: &str, recurse: bool, cas: Option<u64>) -> CommandResult {
        self.apply(Command::KvDelete { key: key.into(), recurse, cas })
    }

    fn txn(&mut self, ops: Vec<TxnKvOp>) -> TxnResponse {
        match self.apply(Command::Txn { ops, now_ms: 0 }) {
            CommandResult::Txn(r) => r,
            other => panic!("txn answered {other:?}"),
        }
    }

    fn register(&mut self, request: RegisterRequest) -> CommandResult {
        self.apply(Command::Register { request, now_ms: 0 })
    }

    fn deregister(&mut self, request: DeregisterRequest, now_ms: u64) -> CommandResult {
        self.apply(Command::Deregister { request, now_ms })
    }

    /// Registers `node` at `addr` with a passing `serfHealth` check, as a Consul agent's node would be.
    fn node(&mut self, node: &str, addr: &str) {
        let r = self.register(node_req(node, addr, HealthStatus::Passing));
        assert_eq!(r, CommandResult::Bool(true));
    }

    fn create_session(&mut self, s: SessionEntry) -> CommandResult {
        self.apply(Command::SessionCreate { session: s })
    }

    /// Creates a session bound to `serfHealth` on `node`; panics if refused.
    fn session(&mut self, id: &str, node: &str, behavior: SessionBehavior, lock_delay_ns: u64) {
        let r = self.create_session(session(id, node, behavior, lock_delay_ns, &["serfHealth"]));
        assert_eq!(r, CommandResult::None, "session {id} should be created");
    }

    fn destroy_session(&mut self, id: &str, now_ms: u64) -> CommandResult {
        self.apply(Command::SessionDestroy { id: id.into(), now_ms })
    }

    fn check_status(&mut self, node: &str, check_id: &str, status: HealthStatus, now_ms: u64) -> CommandResult {
        self.apply(Command::CheckStatus {
            node: node.into(),
            check_id: check_id.into(),
            status,
            output: format!("now {}", status.as_str()),
            now_ms,
        })
    }

    fn entry(&self, key: &str) -> Option<KvEntry> {
        self.st.kv_value(key).1.cloned()
    }

    fn value(&self, key: &str) -> Option<String> {
        self.entry(key).map(|e| String::from_utf8(e.value).unwrap())
    }

    fn touched_kv(&self, key: &str) -> bool {
        self.touched.contains(&WatchKey::Kv(key.into()))
    }
}

fn session(id: &str, node: &str, behavior: SessionBehavior, lock_delay_ns: u64, checks: &[&str]) -> SessionEntry {
    SessionEntry {
        id: id.into(),
        name: format!("test-{id}"),
        node: node.into(),
        lock_delay: lock_delay_ns,
        behavior,
        ttl: String::new(),
        node_checks: Some(checks.iter().map(|c| c.to_string()).collect()),
        service_checks: None,
        create_index: 0,
        modify_index: 0,
    }
}

fn check(id: &str, status: HealthStatus, service_id: Option<&str>) -> CheckRegistration {
    CheckRegistration {
        check_id: Some(id.into()),
        name: Some(format!("check {id}")),
        status: Some(status),
        service_id: service_id.map(Into::into),
        ..Default::default()
    }
}

fn node_req(node: &str, addr: &str, serf: HealthStatus) -> RegisterRequest {
    RegisterRequest {
        node: Some(node.into()),
        address: Some(addr.into()),
        check: Some(check("serfHealth", serf, None)),
        ..Default::default()
    }
}

fn svc(id: &str, name: &str, tags: &[&str], port: u16) -> ServiceRegistration {
    ServiceRegistration {
        id: Some(id.into()),
        service: name.into(),
        tags: Some(tags.iter().map(|t| t.to_string()).collect()),
        port: Some(port),
        ..Default::default()
    }
}

/// Node + service + service check, as the reference recording's `PUT /v1/catalog/register` of `ext1`.
fn svc_req(node: &str, addr: &str, id: &str, name: &str, tags: &[&str], check_status: HealthStatus) -> RegisterRequest {
    RegisterRequest {
        node: Some(node.into()),
        address: Some(addr.into()),
        service: Some(svc(id, name, tags, 5432)),
        check: Some(check(&format!("{id}-alive"), check_status, Some(id))),
        ..Default::default()
    }
}

fn dereg(node: &str, service_id: Option<&str>, check_id: Option<&str>) -> DeregisterRequest {
    DeregisterRequest {
        node: Some(node.into()),
        service_id: service_id.map(Into::into),
        check_id: check_id.map(Into::into),
        ..Default::default()
    }
}

fn op(verb: &str, key: &str) -> TxnKvOp {
    TxnKvOp { verb: verb.into(), key: key.into(), value: None, flags: 0, index: 0, session: None }
}

fn op_set(key: &str, value: &str) -> TxnKvOp {
    TxnKvOp { value: Some(value.as_bytes().to_vec()), ..op("set", key) }
}

fn op_index(verb: &str, key: &str, index: u64) -> TxnKvOp {
    TxnKvOp { index, ..op(verb, key) }
}

fn op_session(verb: &str, key: &str, session: &str) -> TxnKvOp {
    TxnKvOp { session: Some(session.into()), value: Some(b"locked".to_vec()), ..op(verb, key) }
}

fn rejected(r: &CommandResult) -> &str {
    match r {
        CommandResult::Rejected(m) => m,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

fn names(checks: &[crate::api::HealthCheck]) -> Vec<String> {
    let mut v: Vec<String> = checks.iter().map(|c| c.check_id.clone()).collect();
    v.sort();
    v
}

const FIFTEEN_SECONDS_NS: u64 = 15_000_000_000;

// ---------------------------------------------------------------------------------------------------------------
// KV
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn kv_set_creates_with_create_and_modify_index_at_log_index() {
    let mut h = Harness::new();
    assert_eq!(h.set("ref/a", "hello"), CommandResult::Bool(true));
    let i = h.idx();
    let (index, pair) = h.st.kv_get("ref/a");
    let pair = pair.expect("key written");
    assert_eq!(index, i);
    assert_eq!(pair.key, "ref/a");
    assert_eq!(pair.value.as_deref(), Some(&b"hello"[..]));
    assert_eq!((pair.create_index, pair.modify_index), (i, i));
    assert_eq!(pair.lock_index, 0);
    assert_eq!(pair.session, None);
    assert_eq!(h.st.indexes().kvs, i);
}

#[test]
fn kv_update_keeps_create_index_and_moves_modify_index() {
    let mut h = Harness::new();
    h.set("k", "one");
    let created = h.idx();
    h.set("other", "x");
    assert_eq!(h.set("k", "two"), CommandResult::Bool(true));
    let e = h.entry("k").unwrap();
    assert_eq!(e.create_index, created);
    assert_eq!(e.modify_index, h.idx());
    assert!(e.modify_index > e.create_index);
    assert_eq!(h.value("k").as_deref(), Some("two"));
}

#[test]
fn kv_flags_are_stored_and_empty_value_reads_as_null() {
    let mut h = Harness::new();
    h.apply(Command::KvSet {
        key: "ref/b".into(),
        value: b"world".to_vec(),
        flags: 42,
        mode: KvSetMode::Plain,
        now_ms: 0,
    });
    h.set("ref/empty", "");
    assert_eq!(h.st.kv_get("ref/b").1.unwrap().flags, 42);
    let empty = h.st.kv_get("ref/empty").1.unwrap();
    assert_eq!(empty.value, None, "Consul answers Value: null for an empty value");
    assert_eq!(empty.flags, 0);
}

#[test]
fn kv_get_missing_key_is_none_with_table_index() {
    let mut h = Harness::new();
    h.set("a", "1");
    let (index, pair) = h.st.kv_get("missing");
    assert_eq!(pair, None);
    assert_eq!(index, h.idx());
}

#[test]
fn kv_cas_zero_only_creates() {
    let mut h = Harness::new();
    assert_eq!(h.kv("k", "first", KvSetMode::Cas(0), 0), CommandResult::Bool(true));
    let created = h.idx();
    assert_eq!(h.value("k").as_deref(), Some("first"));
    assert_eq!(h.kv("k", "second", KvSetMode::Cas(0), 0), CommandResult::Bool(false));
    assert_eq!(h.value("k").as_deref(), Some("first"));
    assert_eq!(h.entry("k").unwrap().modify_index, created);
    assert_eq!(h.st.indexes().kvs, created, "a refused CAS moves no index");
    assert!(h.touched.is_empty(), "a refused CAS wakes nobody");
}

#[test]
fn kv_cas_n_only_when_modify_index_matches() {
    let mut h = Harness::new();
    h.set("k", "hello");
    let m = h.idx();
    // A non-zero CAS on a missing key fails.
    assert_eq!(h.kv("missing", "x", KvSetMode::Cas(m), 0), CommandResult::Bool(false));
    assert!(h.entry("missing").is_none());
    // Stale index fails.
    assert_eq!(h.kv("k", "stale", KvSetMode::Cas(m - 1), 0), CommandResult::Bool(false));
    assert_eq!(h.kv("k", "future", KvSetMode::Cas(m + 100), 0), CommandResult::Bool(false));
    assert_eq!(h.value("k").as_deref(), Some("hello"));
    // The right index succeeds ...
    assert_eq!(h.kv("k", "hello2", KvSetMode::Cas(m), 0), CommandResult::Bool(true));
    let m2 = h.idx();
    assert_eq!(h.value("k").as_deref(), Some("hello2"));
    assert_eq!(h.entry("k").unwrap().modify_index, m2);
    assert_eq!(h.entry("k").unwrap().create_index, m);
    // ... and only once (recorded exchange: cas=14 true, then cas=14 again false).
    assert_eq!(h.kv("k", "hello3", KvSetMode::Cas(m), 0), CommandResult::Bool(false));
    assert_eq!(h.value("k").as_deref(), Some("hello2"));
}

#[test]
fn kv_acquire_with_unknown_session_is_rejected_and_writes_nothing() {
    let mut h = Harness::new();
    h.set("other", "x");
    let before = h.st.indexes().kvs;
    let r = h.acquire("ref/lock", "00000000-0000-0000-0000-000000000000", 0);
    let msg = rejected(&r);
    assert!(msg.contains("invalid session"), "message: {msg}");
    assert!(msg.contains("00000000-0000-0000-0000-000000000000"), "message: {msg}");
    assert!(h.entry("ref/lock").is_none());
    assert_eq!(h.st.indexes().kvs, before);
    assert!(h.touched.is_empty());
}

#[test]
fn kv_acquire_on_existing_key_with_unknown_session_keeps_old_value() {
    let mut h = Harness::new();
    h.set("k", "old");
    let m = h.idx();
    assert!(matches!(h.acquire("k", "nope", 0), CommandResult::Rejected(_)));
    let e = h.entry("k").unwrap();
    assert_eq!(String::from_utf8(e.value).unwrap(), "old");
    assert_eq!((e.modify_index, e.lock_index, e.session), (m, 0, None));
}

#[test]
fn kv_acquire_sets_session_and_increments_lock_index() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, 0);
    assert_eq!(h.kv("ref/lock", "owner", KvSetMode::Acquire("s1".into()), 0), CommandResult::Bool(true));
    let i = h.idx();
    let p = h.st.kv_get("ref/lock").1.unwrap();
    assert_eq!(p.lock_index, 1);
    assert_eq!(p.session.as_deref(), Some("s1"));
    assert_eq!(p.value.as_deref(), Some(&b"owner"[..]));
    assert_eq!((p.create_index, p.modify_index), (i, i));
}

#[test]
fn kv_acquire_by_second_session_fails() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, 0);
    h.session("s2", "n1", SessionBehavior::Release, 0);
    assert_eq!(h.acquire("k", "s1", 0), CommandResult::Bool(true));
    let m = h.idx();
    assert_eq!(h.kv("k", "stolen", KvSetMode::Acquire("s2".into()), 0), CommandResult::Bool(false));
    let e = h.entry("k").unwrap();
    assert_eq!(e.session.as_deref(), Some("s1"));
    assert_eq!(e.lock_index, 1);
    assert_eq!(e.modify_index, m);
    assert_eq!(String::from_utf8(e.value).unwrap(), "v");
}

#[test]
fn kv_reacquire_by_holder_keeps_lock_index_and_updates_value() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, 0);
    assert_eq!(h.acquire("k", "s1", 0), CommandResult::Bool(true));
    assert_eq!(h.kv("k", "again", KvSetMode::Acquire("s1".into()), 0), CommandResult::Bool(true));
    let e = h.entry("k").unwrap();
    assert_eq!(e.lock_index, 1);
    assert_eq!(e.session.as_deref(), Some("s1"));
    assert_eq!(e.modify_index, h.idx());
    assert_eq!(String::from_utf8(e.value).unwrap(), "again");
}

#[test]
fn kv_release_by_wrong_session_fails_and_by_holder_clears_session() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, 0);
    h.session("s2", "n1", SessionBehavior::Release, 0);
    // Releasing a key nobody holds fails.
    h.set("free", "x");
    assert_eq!(h.release("free", "s1"), CommandResult::Bool(false));
    // Releasing a missing key fails and does not create it.
    assert_eq!(h.release("missing", "s1"), CommandResult::Bool(false));
    assert!(h.entry("missing").is_none());

    assert_eq!(h.acquire("k", "s1", 0), CommandResult::Bool(true));
    assert_eq!(h.release("k", "s2"), CommandResult::Bool(false));
    assert_eq!(h.entry("k").unwrap().session.as_deref(), Some("s1"));

    assert_eq!(h.kv("k", "released", KvSetMode::Release("s1".into()), 0), CommandResult::Bool(true));
    let e = h.entry("k").unwrap();
    assert_eq!(e.session, None);
    assert_eq!(e.lock_index, 1, "release keeps LockIndex");
    assert_eq!(e.modify_index, h.idx());
    assert_eq!(String::from_utf8(e.value).unwrap(), "released");

    // A new acquisition after a release is a new lock: LockIndex goes up, and s2 may now take it.
    assert_eq!(h.acquire("k", "s2", 0), CommandResult::Bool(true));
    let e = h.entry("k").unwrap();
    assert_eq!(e.lock_index, 2);
    assert_eq!(e.session.as_deref(), Some("s2"));
}

#[test]
fn kv_plain_set_on_locked_key_keeps_the_lock() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, 0);
    h.acquire("k", "s1", 0);
    assert_eq!(h.set("k", "plain"), CommandResult::Bool(true));
    let e = h.entry("k").unwrap();
    assert_eq!(e.session.as_deref(), Some("s1"));
    // The session still holds it: destroying the session releases it.
    h.destroy_session("s1", 0);
    assert_eq!(h.entry("k").unwrap().session, None);
}

#[test]
fn kv_delete_single_key() {
    let mut h = Harness::new();
    h.set("a", "1");
    h.set("a/b", "2");
    assert_eq!(h.delete("a", false, None), CommandResult::Bool(true));
    assert!(h.entry("a").is_none());
    assert!(h.entry("a/b").is_some(), "a non-recursive delete is not a prefix delete");
    assert!(h.touched_kv("a"));
    // Deleting a missing key is fine.
    assert_eq!(h.delete("nope", false, None), CommandResult::Bool(true));
}

#[test]
fn kv_delete_recurse_only_under_prefix() {
    let mut h = Harness::new();
    for k in ["ref/a", "ref/b", "ref/sub/c", "ref", "ref2", "reg", "other/ref/x"] {
        h.set(k, "x");
    }
    assert_eq!(h.delete("ref/", true, None), CommandResult::Bool(true));
    let (_, left) = h.st.kv_keys("", None);
    assert_eq!(left, vec!["other/ref/x", "ref", "ref2", "reg"]);
    for k in ["ref/a", "ref/b", "ref/sub/c"] {
        assert!(h.touched_kv(k), "{k} should be touched");
    }
    assert!(!h.touched_kv("ref2"));

    // A recursive delete without a trailing slash is a plain string prefix, as in Consul.
    h.delete("re", true, None);
    assert_eq!(h.st.kv_keys("", None).1, vec!["other/ref/x"]);
}

#[test]
fn kv_delete_recurse_empty_prefix_deletes_everything() {
    let mut h = Harness::new();
    h.set("a", "1");
    h.set("b/c", "2");
    h.delete("", true, None);
    assert!(h.st.kv_list("").1.is_empty());
}

#[test]
fn kv_delete_with_cas() {
    let mut h = Harness::new();
    h.set("k", "v");
    let m = h.idx();
    assert_eq!(h.delete("k", false, Some(m + 1)), CommandResult::Bool(false));
    assert!(h.entry("k").is_some());
    assert_eq!(h.st.indexes().kvs, m, "a refused delete moves no index");
    assert!(h.touched.is_empty());
    assert_eq!(h.delete("k", false, Some(m)), CommandResult::Bool(true));
    assert!(h.entry("k").is_none());
    // Consul answers true for a CAS delete of a key that does not exist.
    assert_eq!(h.delete("k", false, Some(m)), CommandResult::Bool(true));
}

#[test]
fn kv_delete_of_locked_key_forgets_the_lock() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, FIFTEEN_SECONDS_NS);
    h.acquire("k", "s1", 0);
    h.delete("k", false, None);
    h.set("k", "recreated");
    let m = h.idx();
    // The recreated key is not held, so destroying s1 must leave it alone.
    h.destroy_session("s1", 1000);
    let e = h.entry("k").unwrap();
    assert_eq!((e.session, e.modify_index), (None, m));
    assert!(!h.touched_kv("k"));
}

#[test]
fn kv_keys_with_separator_rolls_up() {
    let mut h = Harness::new();
    for k in ["a/b/c", "a/d", "a/b/e", "b", "c/"] {
        h.set(k, "x");
    }
    let i = h.idx();
    assert_eq!(h.st.kv_keys("", Some("/")), (i, vec!["a/".to_string(), "b".to_string(), "c/".to_string()]));
    assert_eq!(h.st.kv_keys("a/", Some("/")).1, vec!["a/b/", "a/d"]);
    assert_eq!(h.st.kv_keys("a/b/", Some("/")).1, vec!["a/b/c", "a/b/e"]);
    // No separator (or an empty one): every key under the prefix.
    assert_eq!(h.st.kv_keys("a/", None).1, vec!["a/b/c", "a/b/e", "a/d"]);
    assert_eq!(h.st.kv_keys("a/", Some("")).1, vec!["a/b/c", "a/b/e", "a/d"]);
    assert!(h.st.kv_keys("zzz", Some("/")).1.is_empty());
}

#[test]
fn kv_keys_with_separator_matches_reference_recording() {
    // GET /v1/kv/ref/?keys&separator=/ -> ["ref/a","ref/b","ref/empty"]
    let mut h = Harness::new();
    h.set("ref/a", "hello");
    h.set("ref/b", "world");
    h.set("ref/empty", "");
    assert_eq!(h.st.kv_keys("ref/", Some("/")).1, vec!["ref/a", "ref/b", "ref/empty"]);
}

#[test]
fn kv_list_returns_values_under_prefix_in_order() {
    let mut h = Harness::new();
    h.set("ref/b", "2");
    h.set("ref/a", "1");
    let last_under_prefix = h.idx();
    h.set("refx", "no");
    let (i, list) = h.st.kv_list("ref/");
    assert_eq!(i, last_under_prefix, "a listing reports the highest ModifyIndex under its prefix");
    let got: Vec<(String, Option<Vec<u8>>)> = list.into_iter().map(|p| (p.key, p.value)).collect();
    assert_eq!(got, vec![("ref/a".into(), Some(b"1".to_vec())), ("ref/b".into(), Some(b"2".to_vec()))]);
}

/// The steps of `../shared/consul-reference/index-semantics.md`, with Consul 1.10.3's answers: which
/// index each read reports decides whether a blocking query on it wakes.
#[test]
fn kv_reads_report_the_index_consul_reports() {
    let mut h = Harness::new();
    h.set("a/one", "1");
    let one = h.idx();
    h.set("a/two", "2");
    let two = h.idx();
    h.set("z/other", "x");
    let other = h.idx();
    // A key reports its own ModifyIndex; a prefix, the highest under it; a missing key and the whole
    // table, the table's index.
    assert_eq!(h.st.kv_get("a/one").0, one);
    assert_eq!(h.st.kv_list("a/").0, two);
    assert_eq!(h.st.kv_keys("a/", None).0, two);
    assert_eq!(h.st.kv_get("missing").0, other);
    assert_eq!(h.st.kv_list("").0, other);
    // Writing z/other again moves neither a/one nor a/.
    h.set("z/other", "y");
    assert_eq!((h.st.kv_get("a/one").0, h.st.kv_list("a/").0), (one, two));
    assert_eq!(h.st.kv_get("missing").0, h.idx());
    // Writing a/two moves a/ but not a/one.
    h.set("a/two", "3");
    assert_eq!((h.st.kv_get("a/one").0, h.st.kv_list("a/").0), (one, h.idx()));
    // A prefix with nothing under it ever reports the table's index.
    assert_eq!(h.st.kv_list("nothing/").0, h.idx());
    // Catalog and session writes move no KV read.
    let before = h.st.kv_list("").0;
    h.node("n1", "10.0.0.1");
    assert_eq!((h.st.kv_get("a/one").0, h.st.kv_list("").0), (one, before));
}

/// A deleted key still counts in its prefixes' index (Consul's tombstones), so a watcher of the prefix
/// sees the deletion; once the tombstone is reaped the prefix reports what is left.
#[test]
fn kv_prefix_index_counts_deletions_until_their_tombstones_are_reaped() {
    let mut h = Harness::new();
    h.set("a/one", "1");
    let one = h.idx();
    h.set("a/two", "2");
    h.set("z/other", "x");
    h.delete("a/two", false, None);
    let deleted = h.idx();
    assert_eq!(h.st.kv_list("a/").0, deleted, "the deletion moves the prefix's index");
    h.set("z/other", "y");
    assert_eq!(h.st.kv_list("a/").0, deleted, "unrelated writes do not");
    // A recursive delete and a txn delete leave tombstones too; a failed txn none.
    h.set("b/x", "1");
    h.delete("b/", true, None);
    let tree = h.idx();
    assert_eq!(h.st.kv_list("b/").0, tree);
    assert_eq!(h.st.kv_keys("b/", None), (tree, vec![]));
    h.set("c/x", "1");
    h.txn(vec![op("delete", "c/x")]);
    assert_eq!(h.st.kv_list("c/").0, h.idx());
    assert_eq!(h.st.kv_tombstone_count(), 3);
    // Reaping up to the first deletion forgets only a/two's tombstone.
    h.apply(Command::KvReapTombstones { up_to: deleted });
    assert_eq!(h.st.kv_tombstone_count(), 2);
    assert_eq!(h.st.kv_list("a/").0, one);
    assert_eq!(h.st.kv_list("b/").0, tree);
}

#[test]
fn kv_table_index_moves_on_deletes() {
    let mut h = Harness::new();
    h.set("a", "1");
    h.set("b", "2");
    let after_sets = h.st.indexes().kvs;
    h.delete("a", false, None);
    let del = h.idx();
    assert!(del > after_sets);
    assert_eq!(h.st.indexes().kvs, del);
    assert_eq!(h.st.kv_list("").0, del);
    h.delete("", true, None);
    assert_eq!(h.st.indexes().kvs, h.idx());
}

// ---------------------------------------------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn txn_success_set_result_has_no_value_and_get_has_value() {
    // Mirrors the recorded `PUT /v1/txn` [set ref/t1 "1", get ref/t1].
    let mut h = Harness::new();
    let r = h.txn(vec![op_set("ref/t1", "1"), op("get", "ref/t1")]);
    let i = h.idx();
    assert_eq!(r.errors, None);
    let results = r.results.expect("results");
    assert_eq!(results.len(), 2);
    let set = &results[0].kv;
    assert_eq!(set.key, "ref/t1");
    assert_eq!(set.value, None, "set answers the entry without its value");
    assert_eq!((set.create_index, set.modify_index, set.lock_index), (i, i, 0));
    let get = &results[1].kv;
    assert_eq!(get.value.as_deref(), Some(&b"1"[..]));
    assert_eq!((get.create_index, get.modify_index), (i, i));
    assert_eq!(h.st.indexes().kvs, i);
    assert!(h.touched_kv("ref/t1"));
    assert_eq!(h.value("ref/t1").as_deref(), Some("1"));
}

#[test]
fn txn_failing_check_index_undoes_earlier_create() {
    let mut h = Harness::new();
    h.set("k", "v");
    let m = h.idx();
    let kvs_before = h.st.indexes().kvs;
    let r = h.txn(vec![op_set("new", "x"), op_index("check-index", "k", 1)]);
    assert_eq!(r.results, None);
    let errors = r.errors.expect("errors");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].op_index, 1);
    assert_eq!(errors[0].what, format!("failed index check for key \"k\", current modify index {m} != 1"));
    assert!(h.entry("new").is_none(), "the set before the failing op is undone");
    assert_eq!(h.st.indexes().kvs, kvs_before);
    assert!(h.touched.is_empty(), "a rolled-back txn wakes nobody");
}

#[test]
fn txn_failing_check_index_restores_old_value() {
    let mut h = Harness::new();
    h.set("k", "old");
    let created = h.idx();
    // Mirrors the recorded 409: a single failing check-index at op 0.
    let r = h.txn(vec![op_index("check-index", "k", 1)]);
    assert_eq!(
        r.errors.unwrap()[0].what,
        format!("failed index check for key \"k\", current modify index {created} != 1")
    );

    let r = h.txn(vec![op_set("k", "new"), op_set("k", "newer"), op_index("check-index", "k", created)]);
    // After the two sets, k's ModifyIndex is this txn's index, so the check against the old one fails.
    let errors = r.errors.expect("errors");
    assert_eq!(errors[0].op_index, 2);
    assert_eq!(
        errors[0].what,
        format!("failed index check for key \"k\", current modify index {} != {created}", h.idx())
    );
    let e = h.entry("k").unwrap();
    assert_eq!(String::from_utf8(e.value).unwrap(), "old");
    assert_eq!((e.create_index, e.modify_index), (created, created));
}

#[test]
fn txn_check_index_success_and_cas() {
    let mut h = Harness::new();
    h.set("k", "v");
    let m = h.idx();
    let r =
        h.txn(vec![op_index("check-index", "k", m), TxnKvOp { value: Some(b"w".to_vec()), ..op_index("cas", "k", m) }]);
    assert_eq!(r.errors, None);
    let results = r.results.unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].kv.value, None);
    assert_eq!(results[0].kv.modify_index, m);
    assert_eq!(results[1].kv.modify_index, h.idx());
    assert_eq!(h.value("k").as_deref(), Some("w"));

    // A stale CAS fails the whole txn.
    let r = h.txn(vec![op_set("other", "x"), TxnKvOp { value: Some(b"z".to_vec()), ..op_index("cas", "k", m) }]);
    let errors = r.errors.unwrap();
    assert_eq!(errors[0].op_index, 1);
    assert!(errors[0].what.contains("index is stale"), "{}", errors[0].what);
    assert!(h.entry("other").is_none());
    assert_eq!(h.value("k").as_deref(), Some("w"));
}

#[test]
fn txn_failing_after_delete_restores_deleted_keys() {
    let mut h = Harness::new();
    h.set("t/a", "1");
    h.set("t/b", "2");
    let r = h.txn(vec![op("delete-tree", "t/"), op("get", "t/a")]);
    let errors = r.errors.unwrap();
    assert_eq!(errors[0].op_index, 1);
    assert_eq!(errors[0].what, "key \"t/a\" doesn't exist");
    assert_eq!(h.value("t/a").as_deref(), Some("1"));
    assert_eq!(h.value("t/b").as_deref(), Some("2"));
}

#[test]
fn txn_get_tree_delete_and_check_not_exists() {
    let mut h = Harness::new();
    h.set("t/a", "1");
    h.set("t/b", "2");
    h.set("u", "3");
    let r = h.txn(vec![op("get-tree", "t/"), op("delete", "u"), op("check-not-exists", "u")]);
    assert_eq!(r.errors, None);
    let results = r.results.unwrap();
    let got: Vec<_> = results.iter().map(|r| (r.kv.key.as_str(), r.kv.value.clone())).collect();
    assert_eq!(got, vec![("t/a", Some(b"1".to_vec())), ("t/b", Some(b"2".to_vec()))]);
    assert!(h.entry("u").is_none());
    assert_eq!(h.st.indexes().kvs, h.idx(), "a txn that deleted moves the table index");

    let r = h.txn(vec![op("check-not-exists", "t/a")]);
    assert_eq!(r.errors.unwrap()[0].what, "key \"t/a\" exists");
}

#[test]
fn txn_delete_cas() {
    let mut h = Harness::new();
    h.set("k", "v");
    let m = h.idx();
    // Stale index: the whole txn fails with Consul's message.
    let r = h.txn(vec![op_set("side", "x"), op_index("delete-cas", "k", m + 1)]);
    let errors = r.errors.unwrap();
    assert_eq!(errors[0].op_index, 1);
    assert_eq!(errors[0].what, "failed to delete key \"k\", index is stale");
    assert!(h.entry("k").is_some());
    assert!(h.entry("side").is_none());
    // Matching index deletes.
    let r = h.txn(vec![op_index("delete-cas", "k", m)]);
    assert_eq!(r.errors, None);
    assert!(h.entry("k").is_none());
    assert_eq!(h.st.indexes().kvs, h.idx());
    // As in Consul (kvsDeleteCASTxn answers ok when the key is absent) and as the non-txn
    // `KvDelete { cas }` does here: a CAS delete of a missing key succeeds.
    let r = h.txn(vec![op_index("delete-cas", "k", m), op_set("after", "y")]);
    assert_eq!(r.errors, None, "delete-cas of a missing key must not fail the txn");
    assert_eq!(h.value("after").as_deref(), Some("y"));
}

#[test]
fn txn_read_only_does_not_move_table_index() {
    let mut h = Harness::new();
    h.set("k", "v");
    let before = h.st.indexes().kvs;
    let r = h.txn(vec![op("get", "k")]);
    assert!(r.errors.is_none());
    assert_eq!(h.st.indexes().kvs, before);
}

#[test]
fn txn_unknown_verb_is_an_error() {
    let mut h = Harness::new();
    let r = h.txn(vec![op_set("a", "1"), op("frobnicate", "a")]);
    let errors = r.errors.unwrap();
    assert_eq!(errors[0].op_index, 1);
    assert!(errors[0].what.contains("frobnicate"));
    assert!(h.entry("a").is_none());
}

#[test]
fn txn_rolled_back_lock_is_not_held() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Delete, 0);
    h.set("k", "v");
    let m = h.idx();
    let r = h.txn(vec![op_session("lock", "k", "s1"), op_index("check-index", "k", 1)]);
    assert!(r.errors.is_some());
    let e = h.entry("k").unwrap();
    assert_eq!((e.session, e.lock_index, e.modify_index), (None, 0, m));
    // s1 never held k, so destroying it (behavior delete) must not delete k.
    h.destroy_session("s1", 0);
    assert!(h.entry("k").is_some(), "a rolled-back lock must not leave the session owning the key");
}

#[test]
fn txn_rolled_back_unlock_keeps_the_lock() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, 0);
    h.acquire("k", "s1", 0);
    let r = h.txn(vec![op_session("unlock", "k", "s1"), op("get", "missing")]);
    assert!(r.errors.is_some());
    assert_eq!(h.entry("k").unwrap().session.as_deref(), Some("s1"));
    // The session still owns k: destroying it releases it.
    h.destroy_session("s1", 0);
    let e = h.entry("k").unwrap();
    assert_eq!(e.session, None);
    assert_eq!(e.modify_index, h.idx());
}

#[test]
fn txn_lock_unlock_and_check_session() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, 0);
    let r = h.txn(vec![op_session("lock", "k", "s1"), op_session("check-session", "k", "s1")]);
    assert_eq!(r.errors, None);
    let e = h.entry("k").unwrap();
    assert_eq!((e.session.as_deref(), e.lock_index), (Some("s1"), 1));

    let r = h.txn(vec![op_session("check-session", "k", "s2")]);
    assert_eq!(r.errors.unwrap()[0].what, "failed session check for key \"k\", current session \"s1\" != \"s2\"");

    let r = h.txn(vec![op_session("lock", "x", "nope")]);
    assert!(r.errors.unwrap()[0].what.contains("invalid session"));
    assert!(h.entry("x").is_none());

    let r = h.txn(vec![op_session("unlock", "k", "s1")]);
    assert_eq!(r.errors, None);
    assert_eq!(h.entry("k").unwrap().session, None);
}

// ---------------------------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn session_create_fails_for_unknown_node() {
    let mut h = Harness::new();
    let r = h.create_session(session("s1", "ghost", SessionBehavior::Release, 0, &["serfHealth"]));
    assert!(rejected(&r).contains("ghost"));
    assert_eq!(h.st.session_get("s1").1, None);
    assert_eq!(h.st.indexes().sessions, 0);
    assert!(h.touched.is_empty());
}

#[test]
fn session_create_fails_when_node_check_is_critical() {
    let mut h = Harness::new();
    h.register(node_req("n1", "10.0.0.1", HealthStatus::Critical));
    let r = h.create_session(session("s1", "n1", SessionBehavior::Release, 0, &["serfHealth"]));
    let msg = rejected(&r);
    assert!(msg.contains("serfHealth") && msg.contains("critical"), "{msg}");
    assert!(h.st.session_list().1.is_empty());
    // A warning check is good enough.
    h.check_status("n1", "serfHealth", HealthStatus::Warning, 0);
    assert_eq!(
        h.create_session(session("s1", "n1", SessionBehavior::Release, 0, &["serfHealth"])),
        CommandResult::None
    );
}

#[test]
fn session_create_fails_for_missing_check() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    let r = h.create_session(session("s1", "n1", SessionBehavior::Release, 0, &["nope"]));
    assert!(rejected(&r).contains("nope"));
    assert!(h.st.session_list().1.is_empty());
}

#[test]
fn session_create_records_indexes_and_rejects_duplicates() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, FIFTEEN_SECONDS_NS);
    let i = h.idx();
    let (index, s) = h.st.session_get("s1");
    let s = s.unwrap();
    assert_eq!(index, i);
    assert_eq!((s.create_index, s.modify_index), (i, i));
    assert_eq!(s.lock_delay, FIFTEEN_SECONDS_NS);
    assert_eq!(h.st.indexes().sessions, i);
    assert!(h.touched.contains(&WatchKey::Table(Table::Sessions)));
    assert_eq!(h.st.session_node("n1").1.len(), 1);
    assert!(h.st.session_node("n2").1.is_empty());

    assert!(matches!(
        h.create_session(session("s1", "n1", SessionBehavior::Release, 0, &[])),
        CommandResult::Rejected(_)
    ));
    assert_eq!(h.st.session_get("s1").1.unwrap().create_index, i);
}

#[test]
fn session_destroy_release_behavior_releases_held_keys() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, 0);
    h.acquire("a", "s1", 0);
    h.acquire("b", "s1", 0);
    h.set("unrelated", "x");
    let unrelated = h.idx();
    assert_eq!(h.destroy_session("s1", 0), CommandResult::Bool(true));
    let d = h.idx();
    for k in ["a", "b"] {
        let e = h.entry(k).unwrap_or_else(|| panic!("{k} is kept"));
        assert_eq!(e.session, None, "{k} released");
        assert_eq!(e.lock_index, 1);
        assert_eq!(e.modify_index, d, "release moves ModifyIndex");
        assert!(h.touched_kv(k));
    }
    assert_eq!(h.entry("unrelated").unwrap().modify_index, unrelated);
    assert_eq!(h.st.session_get("s1").1, None);
    assert_eq!(h.st.indexes().sessions, d);
    assert_eq!(h.st.indexes().kvs, d);
}

#[test]
fn session_destroy_delete_behavior_deletes_held_keys() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Delete, 0);
    h.session("s2", "n1", SessionBehavior::Delete, 0);
    h.acquire("a", "s1", 0);
    h.acquire("b", "s2", 0);
    h.destroy_session("s1", 0);
    assert!(h.entry("a").is_none());
    assert!(h.touched_kv("a"));
    assert_eq!(h.entry("b").unwrap().session.as_deref(), Some("s2"), "other sessions' keys stay");
    assert_eq!(h.st.indexes().kvs, h.idx());
}

#[test]
fn session_destroy_of_unknown_session_is_true_and_moves_nothing() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    let before = h.st.indexes().clone();
    assert_eq!(h.destroy_session("nope", 0), CommandResult::Bool(true));
    assert_eq!(h.st.indexes(), &before);
    assert!(h.touched.is_empty());
}

#[test]
fn lock_delay_refuses_other_sessions_until_it_expires() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, FIFTEEN_SECONDS_NS);
    h.session("s2", "n1", SessionBehavior::Release, FIFTEEN_SECONDS_NS);
    assert_eq!(h.acquire("k", "s1", 500), CommandResult::Bool(true));
    h.destroy_session("s1", 1000);
    assert_eq!(h.entry("k").unwrap().session, None);
    assert_eq!(h.acquire("k", "s2", 2000), CommandResult::Bool(false), "lock delay in effect until 16 000 ms");
    assert_eq!(h.entry("k").unwrap().session, None);
    assert_eq!(h.acquire("k", "s2", 15_999), CommandResult::Bool(false));
    assert_eq!(h.acquire("k", "s2", 20_000), CommandResult::Bool(true));
    let e = h.entry("k").unwrap();
    assert_eq!((e.session.as_deref(), e.lock_index), (Some("s2"), 2));
}

#[test]
fn lock_delay_only_applies_to_keys_the_session_held() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, FIFTEEN_SECONDS_NS);
    h.session("s2", "n1", SessionBehavior::Release, 0);
    h.acquire("held", "s1", 0);
    h.destroy_session("s1", 1000);
    assert_eq!(h.acquire("other", "s2", 2000), CommandResult::Bool(true));
}

#[test]
fn zero_lock_delay_allows_immediate_reacquire() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, 0);
    h.session("s2", "n1", SessionBehavior::Release, 0);
    h.acquire("k", "s1", 0);
    h.destroy_session("s1", 1000);
    assert_eq!(h.acquire("k", "s2", 1000), CommandResult::Bool(true));
}

#[test]
fn check_status_critical_invalidates_bound_sessions() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.node("n2", "10.0.0.2");
    h.session("s1", "n1", SessionBehavior::Release, 0);
    h.session("other-node", "n2", SessionBehavior::Release, 0);
    // A session bound to no checks survives its node's checks going critical.
    assert_eq!(h.create_session(session("unbound", "n1", SessionBehavior::Release, 0, &[])), CommandResult::None);
    h.acquire("k", "s1", 0);

    // Warning does not invalidate.
    assert_eq!(h.check_status("n1", "serfHealth", HealthStatus::Warning, 0), CommandResult::Bool(true));
    assert!(h.st.session_get("s1").1.is_some());

    assert_eq!(h.check_status("n1", "serfHealth", HealthStatus::Critical, 0), CommandResult::Bool(true));
    let i = h.idx();
    assert_eq!(h.st.session_get("s1").1, None);
    assert!(h.st.session_get("unbound").1.is_some());
    assert!(h.st.session_get("other-node").1.is_some(), "same check ID on another node is another check");
    assert_eq!(h.entry("k").unwrap().session, None);
    assert_eq!(h.st.indexes().sessions, i);
    assert_eq!(h.st.check("n1", "serfHealth").unwrap().status, HealthStatus::Critical);
    assert_eq!(h.st.check("n1", "serfHealth").unwrap().output, "now critical");
}

#[test]
fn register_with_critical_check_invalidates_bound_sessions() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Delete, 0);
    h.acquire("k", "s1", 0);
    h.register(node_req("n1", "10.0.0.1", HealthStatus::Critical));
    assert_eq!(h.st.session_get("s1").1, None);
    assert!(h.entry("k").is_none(), "behavior delete deletes the held key");
}

#[test]
fn session_bound_to_service_check_is_invalidated_by_it() {
    let mut h = Harness::new();
    h.register(svc_req("n1", "10.0.0.1", "db-1", "db", &[], HealthStatus::Passing));
    let mut s = session("s1", "n1", SessionBehavior::Release, 0, &[]);
    s.service_checks = Some(vec![crate::api::ServiceCheckRef { id: "db-1-alive".into(), namespace: String::new() }]);
    assert_eq!(h.create_session(s), CommandResult::None);
    h.check_status("n1", "db-1-alive", HealthStatus::Critical, 0);
    assert_eq!(h.st.session_get("s1").1, None);
}

#[test]
fn deregistering_a_bound_check_invalidates_sessions() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, 0);
    h.deregister(dereg("n1", None, Some("serfHealth")), 0);
    assert_eq!(h.st.session_get("s1").1, None);
    assert!(h.st.check("n1", "serfHealth").is_none());
}

#[test]
fn deregistering_a_service_invalidates_sessions_bound_to_its_check() {
    let mut h = Harness::new();
    h.register(svc_req("n1", "10.0.0.1", "db-1", "db", &[], HealthStatus::Passing));
    let mut s = session("s1", "n1", SessionBehavior::Delete, 0, &[]);
    s.service_checks = Some(vec![crate::api::ServiceCheckRef { id: "db-1-alive".into(), namespace: String::new() }]);
    assert_eq!(h.create_session(s), CommandResult::None);
    h.acquire("leader", "s1", 0);
    h.deregister(dereg("n1", Some("db-1"), None), 0);
    assert_eq!(h.st.session_get("s1").1, None);
    assert!(h.entry("leader").is_none());
}

#[test]
fn deregistering_the_node_destroys_its_sessions() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.node("n2", "10.0.0.2");
    assert_eq!(h.create_session(session("s1", "n1", SessionBehavior::Release, 0, &[])), CommandResult::None);
    h.session("s2", "n2", SessionBehavior::Release, 0);
    h.acquire("k", "s1", 0);
    h.deregister(dereg("n1", None, None), 0);
    assert_eq!(h.st.session_get("s1").1, None);
    assert!(h.st.session_get("s2").1.is_some());
    assert_eq!(h.entry("k").unwrap().session, None);
    assert!(h.st.session_node("n1").1.is_empty());
}

// ---------------------------------------------------------------------------------------------------------------
// Catalog
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn register_without_node_is_rejected() {
    let mut h = Harness::new();
    let r = h.register(RegisterRequest { address: Some("1.2.3.4".into()), ..Default::default() });
    assert_eq!(r, CommandResult::Rejected("Must provide node".into()));
    let r = h.register(RegisterRequest {
        node: Some(String::new()),
        address: Some("1.2.3.4".into()),
        ..Default::default()
    });
    assert_eq!(r, CommandResult::Rejected("Must provide node".into()));
    assert!(h.st.catalog_nodes().1.is_empty());
    assert_eq!(h.st.indexes(), &TableIndexes::default());
}

#[test]
fn register_without_address_is_rejected() {
    let mut h = Harness::new();
    let r = h.register(RegisterRequest { node: Some("n1".into()), ..Default::default() });
    assert!(rejected(&r).contains("address"));
    let r = h.register(RegisterRequest { node: Some("n1".into()), address: Some(String::new()), ..Default::default() });
    assert!(matches!(r, CommandResult::Rejected(_)));
    assert!(h.st.catalog_nodes().1.is_empty());
    assert!(h.touched.is_empty());
}

#[test]
fn register_node_service_and_check() {
    // Mirrors the recorded `PUT /v1/catalog/register` of ext1/db-1/db-alive.
    let mut h = Harness::new();
    let r = h.register(svc_req("ext1", "10.1.2.3", "db-1", "db", &[], HealthStatus::Passing));
    assert_eq!(r, CommandResult::Bool(true));
    let i = h.idx();

    let (ni, nodes) = h.st.catalog_nodes();
    assert_eq!(ni, i);
    assert_eq!(nodes.len(), 1);
    let n = &nodes[0];
    assert_eq!((n.node.as_str(), n.address.as_str(), n.datacenter.as_str()), ("ext1", "10.1.2.3", "dc1"));
    assert_eq!((n.create_index, n.modify_index), (i, i));

    let (_, cn) = h.st.catalog_node("ext1");
    let cn = cn.unwrap();
    let s = &cn.services["db-1"];
    assert_eq!((s.service.as_str(), s.port, s.tags.len()), ("db", 5432, 0));
    assert_eq!((s.create_index, s.modify_index), (i, i));

    let (_, checks) = h.st.node_checks("ext1");
    assert_eq!(checks.len(), 1);
    let c = &checks[0];
    assert_eq!(c.check_id, "db-1-alive");
    assert_eq!(c.status, HealthStatus::Passing);
    assert_eq!((c.service_id.as_str(), c.service_name.as_str()), ("db-1", "db"));
    assert_eq!((c.create_index, c.modify_index), (i, i));

    let (ci, cs) = h.st.catalog_service("db");
    assert_eq!(ci, i);
    assert_eq!(cs.len(), 1);
    assert_eq!((cs[0].node.as_str(), cs[0].service_id.as_str(), cs[0].address.as_str()), ("ext1", "db-1", "10.1.2.3"));

    assert_eq!(
        h.st.indexes(),
        &TableIndexes { kvs: 0, nodes: i, services: i, checks: i, sessions: 0, acl: 0, coordinates: 0, queries: 0 }
    );
    assert_eq!(h.st.checks_in_state(Some(HealthStatus::Critical)).1.len(), 0);
    assert_eq!(h.st.checks_in_state(None).1.len(), 1);
}

#[test]
fn register_service_without_id_uses_name_and_check_defaults_to_critical() {
    let mut h = Harness::new();
    h.register(RegisterRequest {
        node: Some("n1".into()),
        address: Some("10.0.0.1".into()),
        service: Some(ServiceRegistration { service: "web".into(), ..Default::default() }),
        check: Some(CheckRegistration {
            name: Some("web-check".into()),
            service_id: Some("web".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let svcs = h.st.node_services("n1");
    assert_eq!(svcs.len(), 1);
    assert_eq!(svcs[0].id, "web");
    let c = h.st.check("n1", "web-check").expect("CheckID defaults to Name");
    assert_eq!(c.status, HealthStatus::Critical);
    assert_eq!(c.service_name, "web");
}

#[test]
fn reregistering_the_same_thing_is_idempotent() {
    let mut h = Harness::new();
    let req = svc_req("n1", "10.0.0.1", "db-1", "db", &["primary"], HealthStatus::Passing);
    h.register(req.clone());
    let i = h.idx();
    let before = h.st.indexes().clone();
    let svc_before = h.st.catalog_service("db");
    let checks_before = h.st.node_checks("n1").1;

    h.set("unrelated", "x");
    assert_eq!(h.register(req.clone()), CommandResult::Bool(true));
    assert_eq!(h.register(req), CommandResult::Bool(true));
    assert!(h.touched.is_empty(), "an unchanged registration wakes nobody: {:?}", h.touched);

    let after = h.st.indexes();
    assert_eq!((after.nodes, after.services, after.checks), (before.nodes, before.services, before.checks));
    assert_eq!(h.st.catalog_service("db"), svc_before);
    assert_eq!(h.st.node_checks("n1").1, checks_before);
    assert_eq!(h.st.service_index("db"), i);
    assert_eq!(h.st.catalog_nodes().1[0].modify_index, i);
}

#[test]
fn reregistering_with_a_change_moves_only_what_changed() {
    let mut h = Harness::new();
    h.register(svc_req("n1", "10.0.0.1", "db-1", "db", &["primary"], HealthStatus::Passing));
    let first = h.idx();
    h.register(svc_req("n1", "10.0.0.1", "db-1", "db", &["replica"], HealthStatus::Passing));
    let second = h.idx();
    let ix = h.st.indexes();
    assert_eq!(ix.nodes, first, "the node did not change");
    assert_eq!(ix.services, second);
    let s = &h.st.catalog_service("db").1[0];
    assert_eq!((s.create_index, s.modify_index), (first, second));
    assert_eq!(s.service_tags, vec!["replica"]);
    assert_eq!(h.st.service_index("db"), second);
    assert!(h.touched.contains(&WatchKey::Service("db".into())));
    assert!(!h.touched.contains(&WatchKey::Table(Table::Nodes)));

    // A changed node address moves the node and the services on it.
    h.register(svc_req("n1", "10.0.0.9", "db-1", "db", &["replica"], HealthStatus::Passing));
    let third = h.idx();
    let n = &h.st.catalog_nodes().1[0];
    assert_eq!((n.address.as_str(), n.create_index, n.modify_index), ("10.0.0.9", first, third));
    assert_eq!(h.st.indexes().nodes, third);
    assert_eq!(h.st.service_index("db"), third);
    assert_eq!(h.st.catalog_service("db").1[0].address, "10.0.0.9");
}

#[test]
fn skip_node_update_keeps_node_fields() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    let node_idx = h.idx();
    let r = h.register(RegisterRequest {
        node: Some("n1".into()),
        skip_node_update: true,
        service: Some(svc("web-1", "web", &[], 80)),
        ..Default::default()
    });
    assert_eq!(r, CommandResult::Bool(true));
    let n = &h.st.catalog_nodes().1[0];
    assert_eq!((n.address.as_str(), n.modify_index), ("10.0.0.1", node_idx));
    assert_eq!(h.st.catalog_service("web").1.len(), 1);
}

#[test]
fn catalog_services_unions_tags() {
    let mut h = Harness::new();
    h.register(svc_req("n1", "10.0.0.1", "web-1", "web", &["v1", "blue"], HealthStatus::Passing));
    h.register(svc_req("n2", "10.0.0.2", "web-2", "web", &["v2", "blue"], HealthStatus::Passing));
    h.register(svc_req("n2", "10.0.0.2", "db-1", "db", &[], HealthStatus::Passing));
    let (i, services) = h.st.catalog_services();
    assert_eq!(i, h.st.indexes().services);
    assert_eq!(services.keys().collect::<Vec<_>>(), vec!["db", "web"]);
    assert_eq!(services["db"], Vec::<String>::new());
    let mut web = services["web"].clone();
    web.sort();
    assert_eq!(web, vec!["blue", "v1", "v2"], "tags are the union, each once");
}

#[test]
fn health_service_includes_node_checks_and_only_the_instances_own_checks() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.register(RegisterRequest {
        node: Some("n1".into()),
        address: Some("10.0.0.1".into()),
        service: Some(svc("web-1", "web", &["v1"], 8080)),
        checks: Some(vec![
            check("web-1-ttl", HealthStatus::Passing, Some("web-1")),
            check("disk", HealthStatus::Warning, None),
        ]),
        ..Default::default()
    });
    h.register(RegisterRequest {
        node: Some("n1".into()),
        address: Some("10.0.0.1".into()),
        service: Some(svc("api-1", "api", &[], 9090)),
        check: Some(check("api-1-ttl", HealthStatus::Critical, Some("api-1"))),
        ..Default::default()
    });

    let (i, entries) = h.st.health_service("web");
    assert_eq!(i, h.st.service_index("web"));
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.node.node, "n1");
    assert_eq!(e.service.id, "web-1");
    assert_eq!(names(&e.checks), vec!["disk", "serfHealth", "web-1-ttl"]);
    let own = e.checks.iter().find(|c| c.check_id == "web-1-ttl").unwrap();
    assert_eq!((own.service_name.as_str(), own.service_tags.clone()), ("web", vec!["v1".to_string()]));

    let (_, api) = h.st.health_service("api");
    assert_eq!(names(&api[0].checks), vec!["api-1-ttl", "disk", "serfHealth"]);

    assert_eq!(names(&h.st.service_checks("web").1), vec!["web-1-ttl"]);
    assert!(h.st.health_service("nope").1.is_empty());
    assert_eq!(names(&h.st.checks_in_state(Some(HealthStatus::Critical)).1), vec!["api-1-ttl"]);
    assert_eq!(names(&h.st.checks_in_state(Some(HealthStatus::Warning)).1), vec!["disk"]);
}

#[test]
fn deregister_service_removes_its_checks_only() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.register(svc_req("n1", "10.0.0.1", "db-1", "db", &[], HealthStatus::Passing));
    h.register(svc_req("n1", "10.0.0.1", "web-1", "web", &[], HealthStatus::Passing));
    assert_eq!(h.deregister(dereg("n1", Some("db-1"), None), 0), CommandResult::Bool(true));
    let d = h.idx();
    assert!(h.st.catalog_service("db").1.is_empty());
    assert!(h.st.check("n1", "db-1-alive").is_none());
    assert!(h.st.check("n1", "web-1-alive").is_some());
    assert!(h.st.check("n1", "serfHealth").is_some());
    assert_eq!(h.st.catalog_service("web").1.len(), 1);
    assert!(!h.st.catalog_services().1.contains_key("db"));
    assert_eq!((h.st.indexes().services, h.st.indexes().checks), (d, d));
    assert_eq!(h.st.service_index("db"), d, "the service index is kept after the last instance goes");
    assert!(h.touched.contains(&WatchKey::Service("db".into())));
    assert_eq!(h.st.catalog_nodes().1.len(), 1, "the node stays");
}

#[test]
fn deregister_node_removes_everything() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.register(svc_req("n1", "10.0.0.1", "db-1", "db", &[], HealthStatus::Passing));
    h.register(svc_req("n2", "10.0.0.2", "db-2", "db", &[], HealthStatus::Passing));
    assert_eq!(h.deregister(dereg("n1", None, None), 0), CommandResult::Bool(true));
    let d = h.idx();
    assert_eq!(h.st.catalog_node("n1").1, None);
    assert!(h.st.node_services("n1").is_empty());
    assert!(h.st.node_checks("n1").1.is_empty());
    let db = h.st.catalog_service("db").1;
    assert_eq!(db.len(), 1);
    assert_eq!(db[0].node, "n2");
    assert_eq!(names(&h.st.checks_in_state(None).1), vec!["db-2-alive"]);
    let ix = h.st.indexes();
    assert_eq!((ix.nodes, ix.services, ix.checks), (d, d, d));
    assert!(h.touched.contains(&WatchKey::Node("n1".into())));
    assert_eq!(h.st.service_index("db"), d);
}

#[test]
fn deregister_without_node_is_rejected() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    let r = h.deregister(DeregisterRequest::default(), 0);
    assert_eq!(r, CommandResult::Rejected("Must provide node".into()));
    assert_eq!(h.st.catalog_nodes().1.len(), 1);
}

#[test]
fn check_for_unknown_service_is_rejected_and_nothing_is_written() {
    let mut h = Harness::new();
    let r = h.register(RegisterRequest {
        node: Some("n1".into()),
        address: Some("10.0.0.1".into()),
        check: Some(check("c1", HealthStatus::Passing, Some("ghost"))),
        ..Default::default()
    });
    assert!(rejected(&r).contains("ghost"));
    assert_eq!(h.st.catalog_node("n1").1, None, "the node is not created either");
    assert!(h.st.checks_in_state(None).1.is_empty());
    assert_eq!(h.st.indexes(), &TableIndexes::default());
    assert!(h.touched.is_empty());

    // Also when the node exists and a valid service comes with it: the service is not written.
    h.node("n1", "10.0.0.1");
    let before = h.st.indexes().clone();
    let r = h.register(RegisterRequest {
        node: Some("n1".into()),
        address: Some("10.0.0.1".into()),
        service: Some(svc("web-1", "web", &[], 80)),
        checks: Some(vec![
            check("ok", HealthStatus::Passing, Some("web-1")),
            check("bad", HealthStatus::Passing, Some("ghost")),
        ]),
        ..Default::default()
    });
    assert!(matches!(r, CommandResult::Rejected(_)));
    assert!(h.st.catalog_service("web").1.is_empty());
    assert!(h.st.check("n1", "ok").is_none());
    assert_eq!(h.st.indexes(), &before);
}

#[test]
fn check_for_another_node_is_rejected() {
    let mut h = Harness::new();
    let r = h.register(RegisterRequest {
        node: Some("n1".into()),
        address: Some("10.0.0.1".into()),
        check: Some(CheckRegistration { node: Some("n2".into()), ..check("c1", HealthStatus::Passing, None) }),
        ..Default::default()
    });
    assert!(matches!(r, CommandResult::Rejected(_)));
    assert!(h.st.catalog_nodes().1.is_empty());
}

#[test]
fn renaming_a_service_moves_it_between_names() {
    let mut h = Harness::new();
    h.register(svc_req("n1", "10.0.0.1", "x-1", "web", &[], HealthStatus::Passing));
    let before = h.st.service_index("web");
    h.register(RegisterRequest {
        node: Some("n1".into()),
        address: Some("10.0.0.1".into()),
        service: Some(svc("x-1", "api", &[], 5432)),
        ..Default::default()
    });
    let i = h.idx();
    assert!(h.st.catalog_service("web").1.is_empty());
    assert_eq!(h.st.catalog_service("api").1.len(), 1);
    assert!(!h.st.catalog_services().1.contains_key("web"));
    assert!(before < i);
    assert_eq!(h.st.service_index("web"), i, "watchers of the old name are told it changed");
    assert_eq!(h.st.service_index("api"), i);
    assert!(h.touched.contains(&WatchKey::Service("web".into())));
    assert!(h.touched.contains(&WatchKey::Service("api".into())));
}

#[test]
fn check_status_for_unknown_check_is_rejected() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    let before = h.st.indexes().clone();
    assert!(matches!(h.check_status("n1", "nope", HealthStatus::Passing, 0), CommandResult::Rejected(_)));
    assert!(matches!(h.check_status("ghost", "serfHealth", HealthStatus::Passing, 0), CommandResult::Rejected(_)));
    assert_eq!(h.st.indexes(), &before);
}

#[test]
fn service_index_moves_when_its_check_changes() {
    let mut h = Harness::new();
    h.register(svc_req("n1", "10.0.0.1", "web-1", "web", &[], HealthStatus::Critical));
    h.register(svc_req("n1", "10.0.0.1", "db-1", "db", &[], HealthStatus::Passing));
    let db_index = h.st.service_index("db");
    let web_index = h.st.service_index("web");
    assert!(web_index < db_index);

    h.check_status("n1", "web-1-alive", HealthStatus::Passing, 0);
    let i = h.idx();
    assert_eq!(h.st.service_index("web"), i);
    assert_eq!(h.st.health_service("web").0, i);
    assert_eq!(h.st.service_index("db"), db_index, "another service's index stays");
    assert_eq!(h.st.indexes().checks, i);
    assert!(h.touched.contains(&WatchKey::Service("web".into())));
    assert!(!h.touched.contains(&WatchKey::Service("db".into())));
    let c = h.st.check("n1", "web-1-alive").unwrap();
    assert_eq!((c.status, c.modify_index), (HealthStatus::Passing, i));

    // Same status and output again: nothing changes.
    h.check_status("n1", "web-1-alive", HealthStatus::Passing, 0);
    assert_eq!(h.st.service_index("web"), i);
    assert!(h.touched.is_empty());
}

#[test]
fn node_check_change_moves_every_service_on_the_node() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.register(svc_req("n1", "10.0.0.1", "web-1", "web", &[], HealthStatus::Passing));
    h.register(svc_req("n1", "10.0.0.1", "db-1", "db", &[], HealthStatus::Passing));
    h.register(svc_req("n2", "10.0.0.2", "api-1", "api", &[], HealthStatus::Passing));
    let api = h.st.service_index("api");
    h.check_status("n1", "serfHealth", HealthStatus::Critical, 0);
    let i = h.idx();
    assert_eq!(h.st.service_index("web"), i);
    assert_eq!(h.st.service_index("db"), i);
    assert_eq!(h.st.service_index("api"), api);
}

// ---------------------------------------------------------------------------------------------------------------
// Watch keys
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn kv_set_touches_its_key() {
    let mut h = Harness::new();
    h.set("app/config", "x");
    assert_eq!(h.touched, vec![WatchKey::Kv("app/config".into())]);
}

#[test]
fn register_touches_the_service_and_node() {
    let mut h = Harness::new();
    h.register(svc_req("n1", "10.0.0.1", "web-1", "web", &[], HealthStatus::Passing));
    assert!(h.touched.contains(&WatchKey::Service("web".into())));
    assert!(h.touched.contains(&WatchKey::Node("n1".into())));
    assert!(h.touched.contains(&WatchKey::Table(Table::Nodes)));
    assert!(h.touched.contains(&WatchKey::Table(Table::Services)));
    assert!(h.touched.contains(&WatchKey::Table(Table::Checks)));
    assert!(!h.touched.iter().any(|k| matches!(k, WatchKey::Kv(_))));
}

#[tokio::test]
async fn apply_then_notify_wakes_prefix_watchers_of_the_change() {
    let hub = WatchHub::new();
    let mut under = hub.register(vec![WatchKey::KvPrefix("app/".into())]);
    let mut elsewhere = hub.register(vec![WatchKey::KvPrefix("db/".into())]);
    let mut service = hub.register(vec![WatchKey::Service("web".into())]);

    let mut st = State::new("dc1");
    let mut touched = Touched::default();
    let r = st.apply(
        1,
        Command::KvSet { key: "app/x/y".into(), value: b"1".to_vec(), flags: 0, mode: KvSetMode::Plain, now_ms: 0 },
        &mut touched,
    );
    assert_eq!(r, CommandResult::Bool(true));
    hub.notify(&touched.0);

    tokio::time::timeout(Duration::from_secs(1), under.changed()).await.expect("prefix watcher woken");
    assert!(tokio::time::timeout(Duration::from_millis(50), elsewhere.changed()).await.is_err());
    assert!(tokio::time::timeout(Duration::from_millis(50), service.changed()).await.is_err());

    // A service registration wakes the service watcher.
    let mut touched = Touched::default();
    st.apply(
        2,
        Command::Register { request: svc_req("n1", "10.0.0.1", "web-1", "web", &[], HealthStatus::Passing), now_ms: 0 },
        &mut touched,
    );
    hub.notify(&touched.0);
    tokio::time::timeout(Duration::from_secs(1), service.changed()).await.expect("service watcher woken");
    assert!(tokio::time::timeout(Duration::from_millis(50), elsewhere.changed()).await.is_err());
}

// ---------------------------------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn snapshot_round_trip_preserves_reads_and_derived_indexes() {
    let mut h = Harness::new();
    h.register(svc_req("n1", "10.0.0.1", "web-1", "web", &["v1"], HealthStatus::Passing));
    h.register(svc_req("n2", "10.0.0.2", "web-2", "web", &["v2"], HealthStatus::Passing));
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, FIFTEEN_SECONDS_NS);
    h.session("s2", "n1", SessionBehavior::Release, 0);
    assert_eq!(h.acquire("locked", "s1", 0), CommandResult::Bool(true));
    h.set("plain", "p");

    let bytes = rmp_serde::to_vec_named(&h.st).expect("serialize");
    let mut restored: State = rmp_serde::from_slice(&bytes).expect("deserialize");
    restored.rebuild_derived();

    assert_eq!(restored.datacenter, "dc1");
    assert_eq!(restored.indexes(), h.st.indexes());
    assert_eq!(restored.catalog_service("web"), h.st.catalog_service("web"));
    assert_eq!(restored.catalog_service("web").1.len(), 2);
    assert_eq!(restored.catalog_services(), h.st.catalog_services());
    assert_eq!(restored.health_service("web"), h.st.health_service("web"));
    assert_eq!(restored.catalog_nodes(), h.st.catalog_nodes());
    assert_eq!(restored.session_list(), h.st.session_list());
    assert_eq!(restored.kv_list(""), h.st.kv_list(""));
    assert_eq!(restored.service_index("web"), h.st.service_index("web"));

    // Continue both copies with the same commands: they must behave identically.
    let mut r = Harness { st: restored, last: h.last, touched: Vec::new() };
    for x in [&mut h, &mut r] {
        // The key locked before the snapshot is released by destroying its session.
        assert_eq!(x.destroy_session("s1", 1000), CommandResult::Bool(true));
        let e = x.entry("locked").unwrap();
        assert_eq!(e.session, None, "lock released after snapshot restore");
        assert_eq!(e.modify_index, x.idx());
        assert!(x.touched_kv("locked"));
        // The lock delay still applies.
        assert_eq!(x.acquire("locked", "s2", 2000), CommandResult::Bool(false));
        assert_eq!(x.acquire("locked", "s2", 20_000), CommandResult::Bool(true));
        // Deregistering a service still finds it through the rebuilt name index.
        x.deregister(dereg("n2", Some("web-2"), None), 0);
        assert_eq!(x.catalog_service_nodes("web"), vec!["n1"]);
    }
    assert_eq!(r.st.kv_list(""), h.st.kv_list(""));
    assert_eq!(r.st.health_service("web"), h.st.health_service("web"));
    assert_eq!(r.st.indexes(), h.st.indexes());
}

#[test]
fn snapshot_round_trip_preserves_pending_lock_delay() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.session("s1", "n1", SessionBehavior::Release, FIFTEEN_SECONDS_NS);
    h.session("s2", "n1", SessionBehavior::Release, 0);
    h.acquire("k", "s1", 0);
    h.destroy_session("s1", 1000);

    let bytes = rmp_serde::to_vec_named(&h.st).unwrap();
    let mut st: State = rmp_serde::from_slice(&bytes).unwrap();
    st.rebuild_derived();
    let mut r = Harness { st, last: h.last, touched: Vec::new() };
    assert_eq!(r.acquire("k", "s2", 2000), CommandResult::Bool(false));
    assert_eq!(r.acquire("k", "s2", 20_000), CommandResult::Bool(true));
}

impl Harness {
    fn catalog_service_nodes(&self, name: &str) -> Vec<String> {
        self.st.catalog_service(name).1.into_iter().map(|s| s.node).collect()
    }
}

#[test]
fn batch_applies_in_order_at_one_index_with_one_answer_each() {
    let mut h = Harness::new();
    let set = |key: &str, mode: KvSetMode| Command::KvSet {
        key: key.into(),
        value: b"v".to_vec(),
        flags: 0,
        mode,
        now_ms: 0,
    };
    // The second write sees the first (CAS 0 fails on a key the batch just created).
    let r = h.apply(Command::Batch(vec![
        set("b/1", KvSetMode::Plain),
        set("b/1", KvSetMode::Cas(0)),
        set("b/2", KvSetMode::Plain),
    ]));
    assert_eq!(
        r,
        CommandResult::Batch(vec![CommandResult::Bool(true), CommandResult::Bool(false), CommandResult::Bool(true)])
    );
    let i = h.idx();
    let (_, one) = h.st.kv_get("b/1");
    let (_, two) = h.st.kv_get("b/2");
    assert_eq!(one.unwrap().modify_index, i);
    assert_eq!(two.unwrap().modify_index, i);
}

#[test]
fn expired_tokens_are_refused_then_reaped_and_auth_methods_take_their_logins_along() {
    use crate::api::{AclAuthMethod, AclBindingRule, AclToken};
    let mut h = Harness::new();
    let token = |accessor: &str, secret: &str, exp: Option<&str>, method: &str| AclToken {
        accessor_id: accessor.into(),
        secret_id: secret.into(),
        expiration_time: exp.map(str::to_string),
        auth_method: method.into(),
        ..Default::default()
    };
    let m = AclAuthMethod { name: "k8s".into(), method_type: "kubernetes".into(), ..Default::default() };
    assert_eq!(h.apply(Command::AclAuthMethodSet { method: m }), CommandResult::None);
    h.apply(Command::AclTokenSet { token: token("a-1", "s-1", Some("2026-01-01T00:00:00Z"), "") });
    h.apply(Command::AclTokenSet { token: token("a-2", "s-2", Some("2027-01-01T00:00:00Z"), "") });
    h.apply(Command::AclTokenSet { token: token("a-3", "s-3", None, "k8s") });
    let rule = AclBindingRule {
        id: "r-1".into(),
        auth_method: "k8s".into(),
        bind_type: "service".into(),
        bind_name: "web".into(),
        ..Default::default()
    };
    assert_eq!(h.apply(Command::AclBindingRuleSet { rule }), CommandResult::None);
    let now = "2026-06-01T00:00:00Z";
    assert!(h.st.acl_token_by_secret("s-1", now).is_none(), "expired: refused before it is reaped");
    assert_eq!(h.st.acl_expired_tokens(now), vec!["a-1".to_string()]);
    assert_eq!(h.apply(Command::AclTokensReapExpired { now: now.into() }), CommandResult::Bool(true));
    assert!(h.st.acl_token("a-1").1.is_none() && h.st.acl_token("a-2").1.is_some());
    assert_eq!(h.apply(Command::AclTokensReapExpired { now: now.into() }), CommandResult::Bool(false));
    // A binding rule needs its method; deleting the method removes its rules and login tokens.
    let orphan = AclBindingRule { id: "r-2".into(), auth_method: "none".into(), ..Default::default() };
    assert!(matches!(h.apply(Command::AclBindingRuleSet { rule: orphan }), CommandResult::Rejected(_)));
    h.apply(Command::AclAuthMethodDelete { name: "k8s".into() });
    assert!(h.st.acl_token("a-3").1.is_none(), "login tokens go with their method");
    assert!(h.st.acl_binding_rules().1.is_empty());
    assert!(h.st.acl_token("a-2").1.is_some());
}

#[test]
fn the_first_cluster_identity_stays_and_a_restored_snapshot_does_not_bring_its_own() {
    let mut h = Harness::new();
    assert_eq!(h.st.cluster_id(), None);
    h.apply(Command::ClusterIdSet { id: "ours".into() });
    // A second leader that raced the first proposes another: every member keeps the first.
    h.apply(Command::ClusterIdSet { id: "late".into() });
    assert_eq!(h.st.cluster_id(), Some("ours"));
    let mut other = State::new("dc1");
    other.apply(1, Command::ClusterIdSet { id: "theirs".into() }, &mut Touched::default());
    other.apply(
        2,
        Command::KvSet { key: "k".into(), value: b"v".to_vec(), flags: 0, mode: KvSetMode::Plain, now_ms: 0 },
        &mut Touched::default(),
    );
    let archive = archive::encode(&other, 2).expect("archive");
    h.apply(Command::Restore { archive });
    assert_eq!(h.st.cluster_id(), Some("ours"), "the data is restored, the identity kept");
}

/// The UI's services page: instances, nodes and tags per service, and each check counted once even
/// when two instances on one node share its node-level check (as Consul's `internal/ui/services`).
#[test]
fn service_summaries_count_instances_and_each_check_once() {
    let mut h = Harness::new();
    h.node("n1", "10.0.0.1");
    h.node("n2", "10.0.0.2");
    for (node, addr, id, tags, status) in [
        ("n1", "10.0.0.1", "web-1", &["v1"][..], HealthStatus::Passing),
        ("n1", "10.0.0.1", "web-2", &["v2"][..], HealthStatus::Warning),
        ("n2", "10.0.0.2", "web-3", &["v1"][..], HealthStatus::Critical),
        ("n2", "10.0.0.2", "db-1", &[][..], HealthStatus::Passing),
    ] {
        let name = id.split('-').next().unwrap_or_default();
        assert_eq!(h.register(svc_req(node, addr, id, name, tags, status)), CommandResult::Bool(true));
    }
    let all = h.st.service_summaries("dc1");
    let names: Vec<_> = all.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["db", "web"]);
    let web = &all[1];
    assert_eq!(web.instance_count, 3);
    assert_eq!(web.nodes, ["n1", "n2"]);
    assert_eq!(web.tags, ["v1", "v2"]);
    assert_eq!(web.datacenter, "dc1");
    // serfHealth of n1 and of n2 once each, web-1's check: 3 passing; web-2's: warning; web-3's: critical.
    assert_eq!((web.checks_passing, web.checks_warning, web.checks_critical), (3, 1, 1));
    let db = &all[0];
    assert_eq!((db.instance_count, db.checks_passing, db.checks_warning, db.checks_critical), (1, 2, 0, 0));
}

/// Prepared queries share one namespace of names and IDs; a session a query names must exist.
#[test]
fn prepared_query_names_are_unique_and_indexes_move() {
    let mut h = Harness::new();
    let q = |id: &str, name: &str| crate::api::PreparedQuery {
        id: id.into(),
        name: name.into(),
        service: crate::api::ServiceQuery { service: "web".into(), ..Default::default() },
        ..Default::default()
    };
    assert_eq!(h.apply(Command::QuerySet { query: q("a", "web") }), CommandResult::None);
    let created = h.idx();
    assert!(
        matches!(h.apply(Command::QuerySet { query: q("b", "web") }), CommandResult::Rejected(m) if m.contains("aliases an existing query name"))
    );
    assert!(
        matches!(h.apply(Command::QuerySet { query: q("c", "a") }), CommandResult::Rejected(m) if m.contains("aliases an existing query ID"))
    );
    let mut with_session = q("d", "locked");
    with_session.session = "nope".into();
    assert!(matches!(h.apply(Command::QuerySet { query: with_session }), CommandResult::Rejected(_)));
    // An update keeps its create index.
    assert_eq!(h.apply(Command::QuerySet { query: q("a", "web-renamed") }), CommandResult::None);
    let (index, all) = h.st.prepared_queries();
    assert_eq!(index, h.idx());
    assert_eq!((all[0].name.as_str(), all[0].create_index, all[0].modify_index), ("web-renamed", created, h.idx()));
    assert_eq!(h.apply(Command::QueryDelete { id: "a".into() }), CommandResult::None);
    assert!(h.st.prepared_queries().1.is_empty());
}

#[test]
fn replicated_acls_resolve_and_a_round_leaves_local_tokens_alone() {
    use crate::acl::replication::{diff, AclChanges};
    use crate::api::{AclLink, AclPolicy, AclToken};
    let mut primary = Harness::new();
    let policy = AclPolicy {
        id: "p-1".into(),
        name: "kv-read".into(),
        rules: r#"key_prefix "" { policy = "read" }"#.into(),
        ..Default::default()
    };
    primary.apply(Command::AclPolicySet { policy });
    let global = AclToken {
        accessor_id: "a-g".into(),
        secret_id: "s-g".into(),
        policies: vec![AclLink { id: "p-1".into(), name: String::new() }],
        ..Default::default()
    };
    primary.apply(Command::AclTokenSet { token: global });

    let mut secondary = Harness::new();
    let mine = AclToken { accessor_id: "a-l".into(), secret_id: "s-l".into(), local: true, ..Default::default() };
    secondary.apply(Command::AclTokenSet { token: mine });
    let round = |primary: &Harness, secondary: &Harness| {
        let (rp, rr, rt) = primary.st.acl_replicated_copy();
        let (lp, lr, lt) = secondary.st.acl_replicated_copy();
        diff(&lp, &lr, &lt, &rp, &rr, &rt)
    };
    let changes = round(&primary, &secondary);
    assert_eq!((changes.policies.len(), changes.tokens.len()), (1, 1));
    assert_eq!(secondary.apply(Command::AclReplicate { changes }), CommandResult::None);
    assert!(secondary.touched.contains(&WatchKey::Table(Table::Acl)), "blocking ACL reads wake");
    let (_, copy) = secondary.st.acl_token("a-g");
    assert_eq!(copy.map(|t| t.modify_index), Some(secondary.idx()), "indexes are this datacenter's");
    // The replicated token works here with the replicated policy's rules.
    use crate::state::acl::Resolved;
    let Resolved::Token { authorizer, .. } = secondary.st.acl_resolve("s-g", false, "2026-01-01T00:00:00Z", "dc2")
    else {
        panic!("the replicated token resolves");
    };
    assert!(authorizer.allows(crate::acl::Resource::Key, "any/key", crate::acl::Access::Read));
    assert!(!authorizer.allows(crate::acl::Resource::Key, "any/key", crate::acl::Access::Write));
    // Nothing left to do; the local token is still here.
    assert_eq!(round(&primary, &secondary), AclChanges::default());
    assert!(secondary.st.acl_token("a-l").1.is_some());

    // Deleted in the primary: gone here, and its secret no longer resolves.
    primary.apply(Command::AclTokenDelete { accessor: "a-g".into() });
    primary.apply(Command::AclPolicyDelete { id: "p-1".into() });
    let changes = round(&primary, &secondary);
    assert_eq!((changes.deleted_tokens.len(), changes.deleted_policies.len()), (1, 1));
    secondary.apply(Command::AclReplicate { changes });
    assert!(matches!(secondary.st.acl_resolve("s-g", false, "2026-01-01T00:00:00Z", "dc2"), Resolved::NotFound));
    assert!(secondary.st.acl_token("a-l").1.is_some(), "the local token stays");
}
