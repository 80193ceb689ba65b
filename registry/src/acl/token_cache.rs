//! Tokens resolved by asking someone else, as Consul's `ACLResolver` caches them: a sidecar asks the
//! servers, a secondary datacenter's server asks the primary for a token it does not hold. An answer
//! is trusted for `token_ttl`; after that the owner is asked again, and when it cannot be reached the
//! down policy decides (`acl_down_policy`):
//! - `extend-cache` (the default): a token resolved before keeps its rules, however old; one never
//!   resolved gets the default policy only;
//! - `async-cache`: as extend-cache, and a stale entry answers at once while it is refreshed behind;
//! - `allow`: everything is allowed; `deny`: everything is denied.
//!
//! Pure: the caller fetches and passes the clock in.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::EffectiveRules;

/// Consul's `acl.down_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownPolicy {
    Allow,
    Deny,
    ExtendCache,
    AsyncCache,
}

impl FromStr for DownPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(DownPolicy::Allow),
            "deny" => Ok(DownPolicy::Deny),
            "extend-cache" => Ok(DownPolicy::ExtendCache),
            "async-cache" => Ok(DownPolicy::AsyncCache),
            other => Err(format!(
                "acl_down_policy must be \"allow\", \"deny\", \"extend-cache\" or \"async-cache\", not {other:?}"
            )),
        }
    }
}

impl DownPolicy {
    fn keeps_cache(self) -> bool {
        matches!(self, DownPolicy::ExtendCache | DownPolicy::AsyncCache)
    }
}

/// What asking the token's owner gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Found(EffectiveRules),
    /// The owner answered that the token does not exist (or may not be used here): the message.
    Refused(String),
    /// The owner could not be asked or could not answer (unreachable, no leader): why.
    Unreachable(String),
}

impl Fetched {
    /// What an answer of `/v1/internal/acl/rules` (asked with the token itself) says; `who` names the
    /// one asked, for messages. 401 is Consul's "ACL support disabled": ACLs are off there, so the
    /// token may do everything, as Consul's resolver then treats it.
    pub fn from_rules_answer(status: u16, body: &[u8], who: &str) -> Fetched {
        let text = || String::from_utf8_lossy(body).trim().to_string();
        match status {
            200 => match serde_json::from_slice(body) {
                Ok(rules) => Fetched::Found(rules),
                Err(e) => Fetched::Unreachable(format!("{who} answered rules that do not parse: {e}")),
            },
            401 => Fetched::Found(EffectiveRules { management: true, ..Default::default() }),
            403 => Fetched::Refused(text()),
            _ => Fetched::Unreachable(format!("{who}: {status}: {}", text())),
        }
    }
}

/// What the cache says before asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Resolved within the TTL: use it, ask no one.
    Fresh(EffectiveRules),
    /// async-cache: use it now and refresh it in the background.
    RefreshBehind(EffectiveRules),
    /// Ask the owner, then `settle`.
    Fetch,
}

#[derive(Debug, Clone)]
struct Entry {
    at: Instant,
    rules: EffectiveRules,
    /// The down policy's answer for a token never resolved: good for the request that got it only.
    down: bool,
}

/// Entries beyond this are dropped oldest first (a flood of made-up tokens must not grow it: those
/// are refused and never stored, but valid ones are many in a big cluster).
const CAPACITY: usize = 16_384;

/// Resolved tokens by secret (`None`: the request carried none: the anonymous token).
#[derive(Debug)]
pub struct TokenCache {
    ttl: Duration,
    down_policy: DownPolicy,
    entries: HashMap<Option<String>, Entry>,
    /// Moves on every answer settled: what was derived from the cache (a kept DNS answer) is current
    /// while it has not moved.
    generation: u64,
}

impl TokenCache {
    pub fn new(ttl: Duration, down_policy: DownPolicy) -> Self {
        TokenCache { ttl, down_policy, entries: HashMap::new(), generation: 0 }
    }

    pub fn down_policy(&self) -> DownPolicy {
        self.down_policy
    }

    pub fn lookup(&self, token: &Option<String>, now: Instant) -> Lookup {
        match self.entries.get(token) {
            Some(e) if !e.down && now.saturating_duration_since(e.at) < self.ttl => Lookup::Fresh(e.rules.clone()),
            Some(e) if !e.down && self.down_policy == DownPolicy::AsyncCache => Lookup::RefreshBehind(e.rules.clone()),
            _ => Lookup::Fetch,
        }
    }

    /// The cache's generation while `token`'s answer is fresh; None once it is due to be asked again.
    pub fn fresh_generation(&self, token: &Option<String>, now: Instant) -> Option<u64> {
        matches!(self.lookup(token, now), Lookup::Fresh(_)).then_some(self.generation)
    }

    /// The last answer for `token`, however old (a blocking query re-checking its caller on wake).
    pub fn current(&self, token: &Option<String>) -> Option<EffectiveRules> {
        self.entries.get(token).map(|e| e.rules.clone())
    }

    /// Records what asking gave and says what the token may do now: its rules, or the owner's
    /// refusal. An unreachable owner keeps a resolved token's rules under extend-cache and
    /// async-cache (its age starts over, as Consul's does), else the down policy answers.
    pub fn settle(
        &mut self,
        token: &Option<String>,
        fetched: Fetched,
        default_allow: bool,
        now: Instant,
    ) -> Result<EffectiveRules, String> {
        self.generation += 1;
        let rules = match fetched {
            Fetched::Found(rules) => {
                self.put(token, Entry { at: now, rules: rules.clone(), down: false });
                return Ok(rules);
            }
            Fetched::Refused(why) => {
                self.entries.remove(token);
                return Err(why);
            }
            Fetched::Unreachable(_) => match self.entries.get(token) {
                Some(e) if !e.down && self.down_policy.keeps_cache() => e.rules.clone(),
                _ => {
                    let rules = self.down_rules(default_allow);
                    self.put(token, Entry { at: now, rules: rules.clone(), down: true });
                    return Ok(rules);
                }
            },
        };
        self.put(token, Entry { at: now, rules: rules.clone(), down: false });
        Ok(rules)
    }

    /// What a token never resolved may do while its owner is unreachable.
    fn down_rules(&self, default_allow: bool) -> EffectiveRules {
        match self.down_policy {
            DownPolicy::Allow => EffectiveRules { management: true, default_allow: true, rules: Vec::new() },
            DownPolicy::Deny => EffectiveRules { management: false, default_allow: false, rules: Vec::new() },
            DownPolicy::ExtendCache | DownPolicy::AsyncCache => {
                EffectiveRules { management: false, default_allow, rules: Vec::new() }
            }
        }
    }

    fn put(&mut self, token: &Option<String>, entry: Entry) {
        if self.entries.len() >= CAPACITY && !self.entries.contains_key(token) {
            if let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.at).map(|(k, _)| k.clone()) {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(token.clone(), entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Access, Resource, Rules};

    const TTL: Duration = Duration::from_secs(30);

    fn kv_reader() -> EffectiveRules {
        let rules = Rules::parse(r#"key_prefix "" { policy = "read" }"#).expect("parses");
        EffectiveRules { management: false, default_allow: false, rules: vec![rules] }
    }

    fn reads_kv(r: &EffectiveRules) -> bool {
        r.authorizer().allows(Resource::Key, "a", Access::Read)
    }

    fn writes_kv(r: &EffectiveRules) -> bool {
        r.authorizer().allows(Resource::Key, "a", Access::Write)
    }

    fn tok(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn the_generation_moves_with_every_answer_and_is_given_only_while_fresh() {
        let mut c = TokenCache::new(TTL, DownPolicy::ExtendCache);
        let (t, now) = (Some("t".to_string()), Instant::now());
        assert_eq!(c.fresh_generation(&t, now), None, "never asked");
        c.settle(&t, Fetched::Found(kv_reader()), false, now).expect("found");
        let first = c.fresh_generation(&t, now).expect("fresh");
        c.settle(&Some("u".into()), Fetched::Found(kv_reader()), false, now).expect("found");
        assert_ne!(c.fresh_generation(&t, now), Some(first), "another answer moved it");
        assert_eq!(c.fresh_generation(&t, now + TTL), None, "due again");
    }

    #[test]
    fn a_resolved_token_is_fresh_for_the_ttl_then_asked_again() {
        let t0 = Instant::now();
        let mut c = TokenCache::new(TTL, DownPolicy::ExtendCache);
        assert_eq!(c.lookup(&tok("a"), t0), Lookup::Fetch);
        c.settle(&tok("a"), Fetched::Found(kv_reader()), false, t0).expect("found");
        assert_eq!(c.lookup(&tok("a"), t0 + TTL / 2), Lookup::Fresh(kv_reader()));
        assert_eq!(c.lookup(&tok("a"), t0 + TTL), Lookup::Fetch);
        assert_eq!(c.lookup(&tok("b"), t0), Lookup::Fetch, "per token");
    }

    #[test]
    fn extend_cache_keeps_a_resolved_tokens_rules_while_the_owner_is_down() {
        let t0 = Instant::now();
        let mut c = TokenCache::new(TTL, DownPolicy::ExtendCache);
        c.settle(&tok("a"), Fetched::Found(kv_reader()), false, t0).expect("found");
        let later = t0 + TTL * 10;
        let r = c.settle(&tok("a"), Fetched::Unreachable("down".into()), false, later).expect("kept");
        assert!(reads_kv(&r));
        assert_eq!(c.lookup(&tok("a"), later + TTL / 2), Lookup::Fresh(kv_reader()), "its age starts over");
        // Never resolved: default policy only (deny here).
        let r = c.settle(&tok("new"), Fetched::Unreachable("down".into()), false, later).expect("down rules");
        assert!(!reads_kv(&r));
        assert_eq!(c.lookup(&tok("new"), later), Lookup::Fetch, "a down answer is not cached");
        let r = c.settle(&tok("new2"), Fetched::Unreachable("down".into()), true, later).expect("down rules");
        assert!(writes_kv(&r), "default allow");
    }

    #[test]
    fn allow_and_deny_ignore_what_was_cached() {
        let t0 = Instant::now();
        for (policy, allowed) in [(DownPolicy::Allow, true), (DownPolicy::Deny, false)] {
            let mut c = TokenCache::new(TTL, policy);
            c.settle(&tok("a"), Fetched::Found(kv_reader()), false, t0).expect("found");
            let r = c.settle(&tok("a"), Fetched::Unreachable("down".into()), false, t0 + TTL).expect("down");
            assert_eq!(writes_kv(&r), allowed, "{policy:?}");
            assert_eq!(reads_kv(&r), allowed, "{policy:?}");
            assert_eq!(c.current(&tok("a")), Some(r), "what the next wake of a blocking query sees");
        }
    }

    #[test]
    fn async_cache_answers_stale_entries_at_once_and_refreshes_behind() {
        let t0 = Instant::now();
        let mut c = TokenCache::new(TTL, DownPolicy::AsyncCache);
        assert_eq!(c.lookup(&tok("a"), t0), Lookup::Fetch, "nothing to answer with yet");
        c.settle(&tok("a"), Fetched::Found(kv_reader()), false, t0).expect("found");
        assert_eq!(c.lookup(&tok("a"), t0 + TTL * 3), Lookup::RefreshBehind(kv_reader()));
    }

    #[test]
    fn a_refused_token_is_forgotten_whatever_the_policy() {
        let t0 = Instant::now();
        let mut c = TokenCache::new(TTL, DownPolicy::AsyncCache);
        c.settle(&tok("a"), Fetched::Found(kv_reader()), false, t0).expect("found");
        let err = c.settle(&tok("a"), Fetched::Refused("ACL not found".into()), false, t0 + TTL).unwrap_err();
        assert_eq!(err, "ACL not found");
        assert_eq!((c.lookup(&tok("a"), t0 + TTL), c.current(&tok("a"))), (Lookup::Fetch, None));
        // Deleted in the owner while it was up, then the owner goes down: nothing to extend.
        let r = c.settle(&tok("a"), Fetched::Unreachable("down".into()), false, t0 + TTL).expect("down");
        assert!(!reads_kv(&r));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let t0 = Instant::now();
        let mut c = TokenCache::new(TTL, DownPolicy::ExtendCache);
        for i in 0..CAPACITY + 10 {
            let at = t0 + Duration::from_millis(i as u64);
            c.settle(&Some(i.to_string()), Fetched::Found(kv_reader()), false, at).expect("found");
        }
        assert_eq!(c.len(), CAPACITY);
        assert_eq!(c.current(&Some("0".into())), None, "the oldest went first");
        assert!(c.current(&Some((CAPACITY + 9).to_string())).is_some());
    }

    #[test]
    fn answers_of_the_rules_endpoint_are_read_as_consul_means_them() {
        let rules = serde_json::to_vec(&kv_reader()).expect("serializes");
        assert_eq!(Fetched::from_rules_answer(200, &rules, "dc1"), Fetched::Found(kv_reader()));
        assert!(matches!(Fetched::from_rules_answer(401, b"ACL support disabled", "dc1"),
            Fetched::Found(r) if r.management));
        assert_eq!(
            Fetched::from_rules_answer(403, b"ACL not found\n", "dc1"),
            Fetched::Refused("ACL not found".into())
        );
        assert!(
            matches!(Fetched::from_rules_answer(503, b"No path", "dc1"), Fetched::Unreachable(m) if m.contains("dc1"))
        );
        assert!(matches!(Fetched::from_rules_answer(200, b"{", "dc1"), Fetched::Unreachable(_)));
    }

    #[test]
    fn down_policies_parse_as_consul_spells_them() {
        assert_eq!("extend-cache".parse(), Ok(DownPolicy::ExtendCache));
        assert_eq!("async-cache".parse(), Ok(DownPolicy::AsyncCache));
        assert_eq!("allow".parse(), Ok(DownPolicy::Allow));
        assert_eq!("deny".parse(), Ok(DownPolicy::Deny));
        assert!("later".parse::<DownPolicy>().unwrap_err().contains("later"));
    }
}
