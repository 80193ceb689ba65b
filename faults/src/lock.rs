//! Lock safety for Consul-style locks (`PUT /v1/kv/<key>?acquire=<session>`).
//!
//! A client believes it holds the lock from the completion of an acquire that answered `true`
//! until it invokes a release, or until its session is known to be invalid (the earliest time the
//! invalidation could have happened: a session destroy's invocation, a node's kill, ...). Two such
//! beliefs of different sessions must never overlap.
//!
//! Lock-delay: when a session is invalidated while it holds the lock (not on a release), Consul refuses
//! the lock to every other session for the session's lock-delay (15 s by default), so a holder that
//! learns of the invalidation late still has that long before anyone else can hold the lock. The
//! server measures the delay from when it applies the invalidation, which is no earlier than the
//! `at` recorded here: an acquire by another session that completed before `at + lock_delay` is a
//! violation. Every check here errs towards silence: it flags only what cannot have been correct.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LockEvent {
    /// `PUT ?acquire=<session>`; `ok` None if the outcome is unknown.
    Acquire { client: u32, session: String, call: u64, ret: Option<u64>, ok: Option<bool> },
    /// `PUT ?release=<session>` (or a delete of the key by the holder).
    Release { client: u32, session: String, call: u64, ret: Option<u64> },
    /// The session became invalid no earlier than `at` (and the holder may learn of it later), and
    /// no later than `done` when known (the acknowledged destroy's completion).
    Invalidate {
        session: String,
        at: u64,
        #[serde(default)]
        done: Option<u64>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockHistory {
    pub key: String,
    /// The sessions' lock-delay (ns); 15 s unless the sessions were created with another.
    pub lock_delay_ns: u64,
    pub events: Vec<LockEvent>,
}

/// One client's belief that it held the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub client: u32,
    pub session: String,
    pub from: u64,
    /// Exclusive; u64::MAX: to the end of the history.
    pub to: u64,
    /// The holding ended because its session was invalidated (not released).
    pub invalidated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockViolation {
    /// Two sessions' holdings overlap.
    Overlap { a: Holding, b: Holding },
    /// Another session acquired the lock within the lock-delay after the holder's session was invalidated.
    LockDelay { invalidated: Holding, acquired_by: String, acquired_at: u64, not_before: u64 },
}

/// The holdings: each successful acquire, until the next release invoked by that session or the
/// session's invalidation, whichever comes first.
pub fn holdings(h: &LockHistory) -> Vec<Holding> {
    let mut out = Vec::new();
    for e in &h.events {
        let LockEvent::Acquire { client, session, ret: Some(from), ok: Some(true), .. } = e else { continue };
        let release = h
            .events
            .iter()
            .filter_map(|e| match e {
                LockEvent::Release { session: s, call, .. } if s == session && *call >= *from => Some(*call),
                _ => None,
            })
            .min();
        let invalid = h
            .events
            .iter()
            .filter_map(|e| match e {
                LockEvent::Invalidate { session: s, at, .. } if s == session => Some(*at),
                _ => None,
            })
            .min();
        let (to, invalidated) = match (release, invalid) {
            (Some(r), Some(i)) if i < r => (i, true),
            (Some(r), _) => (r, false),
            (None, Some(i)) => (i, true),
            (None, None) => (u64::MAX, false),
        };
        // An invalidation before the acquire completed leaves an empty holding: nothing to check.
        if to > *from {
            out.push(Holding { client: *client, session: session.clone(), from: *from, to, invalidated });
        }
    }
    out.sort_by_key(|x| x.from);
    // A session that acquires again while holding (Consul allows it) extends one holding: merge.
    let mut merged: Vec<Holding> = Vec::new();
    for x in out {
        if let Some(last) = merged.iter_mut().rev().find(|m| m.session == x.session) {
            if x.from < last.to {
                if x.to > last.to {
                    last.to = x.to;
                    last.invalidated = x.invalidated;
                }
                continue;
            }
        }
        merged.push(x);
    }
    merged
}

pub fn check(h: &LockHistory) -> Vec<LockViolation> {
    let held = holdings(h);
    let mut out = Vec::new();
    for (i, a) in held.iter().enumerate() {
        for b in &held[i + 1..] {
            if a.session != b.session && a.from < b.to && b.from < a.to {
                out.push(LockViolation::Overlap { a: a.clone(), b: b.clone() });
            }
        }
    }
    for a in held.iter().filter(|a| a.invalidated) {
        // A release racing the invalidation may have been applied first (then no lock-delay applies):
        // only an invalidation known complete before any release of the holding counts.
        let done = h
            .events
            .iter()
            .filter_map(|e| match e {
                LockEvent::Invalidate { session, done, .. } if *session == a.session => Some(done.unwrap_or(u64::MAX)),
                _ => None,
            })
            .min()
            .unwrap_or(u64::MAX);
        let racing_release = h.events.iter().any(|e| {
            matches!(e, LockEvent::Release { session, call, .. } if *session == a.session && *call >= a.from && *call < done)
        });
        if racing_release {
            continue;
        }
        let not_before = a.to.saturating_add(h.lock_delay_ns);
        for e in &h.events {
            if let LockEvent::Acquire { session, ret: Some(at), ok: Some(true), .. } = e {
                if *session != a.session && *at >= a.to && *at < not_before {
                    out.push(LockViolation::LockDelay {
                        invalidated: a.clone(),
                        acquired_by: session.clone(),
                        acquired_at: *at,
                        not_before,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn acq(client: u32, session: &str, call: u64, ret: u64, ok: bool) -> LockEvent {
        LockEvent::Acquire { client, session: session.into(), call, ret: Some(ret), ok: Some(ok) }
    }
    fn rel(client: u32, session: &str, call: u64, ret: u64) -> LockEvent {
        LockEvent::Release { client, session: session.into(), call, ret: Some(ret) }
    }
    fn inv(session: &str, at: u64) -> LockEvent {
        LockEvent::Invalidate { session: session.into(), at, done: Some(at + 10) }
    }
    fn hist(events: Vec<LockEvent>) -> LockHistory {
        LockHistory { key: "lock".into(), lock_delay_ns: 15 * S, events }
    }

    #[test]
    fn acquire_release_acquire_is_fine() {
        let h = hist(vec![
            acq(1, "a", 0, 10, true),
            acq(2, "b", 5, 15, false),
            rel(1, "a", 20, 30),
            acq(2, "b", 25, 40, true),
        ]);
        assert_eq!(check(&h), vec![]);
        assert_eq!(holdings(&h).len(), 2);
    }

    #[test]
    fn two_holders_at_once_are_a_violation() {
        let h = hist(vec![acq(1, "a", 0, 10, true), acq(2, "b", 5, 15, true)]);
        assert!(matches!(check(&h).as_slice(), [LockViolation::Overlap { .. }]));
        // B acquired before A even asked to release.
        let h = hist(vec![acq(1, "a", 0, 10, true), acq(2, "b", 12, 15, true), rel(1, "a", 20, 30)]);
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn acquire_completing_after_the_release_began_is_fine() {
        let h = hist(vec![acq(1, "a", 0, 10, true), acq(2, "b", 12, 25, true), rel(1, "a", 20, 30)]);
        assert_eq!(check(&h), vec![]);
    }

    #[test]
    fn unknown_acquires_are_not_beliefs() {
        let h = hist(vec![
            LockEvent::Acquire { client: 1, session: "a".into(), call: 0, ret: None, ok: None },
            acq(2, "b", 5, 15, true),
        ]);
        assert_eq!(check(&h), vec![]);
    }

    #[test]
    fn reacquire_by_the_same_session_is_one_holding() {
        let h = hist(vec![acq(1, "a", 0, 10, true), acq(1, "a", 12, 15, true), rel(1, "a", 20, 30)]);
        assert_eq!(holdings(&h).len(), 1);
        assert_eq!(check(&h), vec![]);
    }

    #[test]
    fn lock_delay_must_hold_after_an_invalidation() {
        // A's session is destroyed while it holds the lock; B gets it 1 s later: lock-delay broken.
        let h = hist(vec![acq(1, "a", 0, 10, true), inv("a", 100), acq(2, "b", S, S + 100, true)]);
        let v = check(&h);
        assert!(matches!(v.as_slice(), [LockViolation::LockDelay { .. }]), "{v:?}");
        // After the delay: fine.
        let h = hist(vec![acq(1, "a", 0, 10, true), inv("a", 100), acq(2, "b", 16 * S, 16 * S + 100, true)]);
        assert_eq!(check(&h), vec![]);
        // A release racing the destroy (invoked before the destroy completed): either may have been
        // applied first, so no lock-delay can be demanded.
        let h = hist(vec![
            acq(1, "a", 0, 10, true),
            LockEvent::Invalidate { session: "a".into(), at: 100, done: Some(300) },
            rel(1, "a", 200, 250),
            acq(2, "b", S, S + 100, true),
        ]);
        assert_eq!(check(&h), vec![]);
        // The same release invoked after the destroy completed: the delay applied.
        let h = hist(vec![
            acq(1, "a", 0, 10, true),
            LockEvent::Invalidate { session: "a".into(), at: 100, done: Some(150) },
            rel(1, "a", 200, 250),
            acq(2, "b", S, S + 100, true),
        ]);
        assert_eq!(check(&h).len(), 1);
        // A released before its session went: no lock-delay applies.
        let h = hist(vec![acq(1, "a", 0, 10, true), rel(1, "a", 20, 30), inv("a", 100), acq(2, "b", S, S + 100, true)]);
        assert_eq!(check(&h), vec![]);
        // With a zero lock-delay, right after is fine.
        let mut h = hist(vec![acq(1, "a", 0, 10, true), inv("a", 100), acq(2, "b", 150, 200, true)]);
        h.lock_delay_ns = 0;
        assert_eq!(check(&h), vec![]);
    }

    #[test]
    fn holding_across_an_invalidation_ends_there() {
        // B acquires (legally, after the delay) while A never released: A's belief ended with its session.
        let h = hist(vec![acq(1, "a", 0, 10, true), inv("a", 50), acq(2, "b", 20 * S, 20 * S + 5, true)]);
        assert_eq!(check(&h), vec![]);
        // Without the invalidation, the same history is two holders.
        let h = hist(vec![acq(1, "a", 0, 10, true), acq(2, "b", 20 * S, 20 * S + 5, true)]);
        assert_eq!(check(&h).len(), 1);
    }
}
