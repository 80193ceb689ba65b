//! The leader's lease: how long ago a quorum last acknowledged this server as leader, from the send
//! times of the AppendEntries (heartbeats included) its followers accepted.
//!
//! Default-mode reads are answered from the leader's own state without a quorum round, as Consul's
//! are. That is only safe while no other server can have been elected: a follower that accepted an
//! AppendEntries sent at `t` refuses to vote for anyone else until its election timeout has run from
//! when it got it (openraft keeps this lease on the voter's side), so while a quorum's
//! acknowledgements are younger than the election timeout no newer leader can have committed
//! anything. The times are kept here rather than read from openraft's metrics, whose age is only as
//! fresh as its last report: a leader paused (SIGSTOP) and resumed answers requests before its Raft
//! task reports anything, and it must see the pause in the lease at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::LeaderId;

use super::NodeId;

/// Per follower: the leader identity (term and node) of the last AppendEntries it accepted and when
/// that request was sent.
#[derive(Debug, Default)]
pub struct LeaseClock {
    acks: Mutex<HashMap<NodeId, (LeaderId<NodeId>, Instant)>>,
}

impl LeaseClock {
    /// `target` accepted an AppendEntries from `leader` sent at `sent` (any answer but a higher vote
    /// means it recognised that leader, a log conflict included).
    pub fn acknowledged(&self, target: NodeId, leader: LeaderId<NodeId>, sent: Instant) {
        let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let entry = acks.entry(target).or_insert((leader, sent));
        if entry.0 != leader || entry.1 < sent {
            *entry = (leader, sent);
        }
    }

    /// How long ago a quorum of every configuration in `configs` (two during a joint change)
    /// acknowledged `me` as `leader`, counting `me` as acknowledging now; `None` if no quorum has.
    pub fn quorum_age(
        &self,
        me: NodeId,
        leader: &LeaderId<NodeId>,
        configs: &[BTreeSet<NodeId>],
        now: Instant,
    ) -> Option<Duration> {
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let mut oldest = Duration::ZERO;
        for voters in configs {
            let mut times: Vec<Instant> = voters
                .iter()
                .filter_map(|v| match acks.get(v) {
                    _ if *v == me => Some(now),
                    Some((l, t)) if l == leader => Some(*t),
                    _ => None,
                })
                .collect();
            let quorum = voters.len() / 2 + 1;
            if voters.is_empty() || times.len() < quorum {
                return None;
            }
            times.sort_unstable_by(|a, b| b.cmp(a));
            oldest = oldest.max(now.saturating_duration_since(times[quorum - 1]));
        }
        Some(oldest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn the_quorums_oldest_needed_acknowledgement_sets_the_age() {
        let clock = LeaseClock::default();
        let leader = LeaderId::new(3, 1);
        let now = Instant::now();
        clock.acknowledged(2, leader, now - Duration::from_millis(300));
        clock.acknowledged(3, leader, now - Duration::from_millis(50));
        clock.acknowledged(4, leader, now - Duration::from_millis(900));
        // 5 voters: me (now), 3 (50 ms), 2 (300 ms) make the quorum.
        assert_eq!(clock.quorum_age(1, &leader, &[set(&[1, 2, 3, 4, 5])], now), Some(Duration::from_millis(300)));
        // 3 voters: me and 3.
        assert_eq!(clock.quorum_age(1, &leader, &[set(&[1, 3, 5])], now), Some(Duration::from_millis(50)));
        // Only me of 3: no quorum.
        assert_eq!(clock.quorum_age(1, &leader, &[set(&[1, 5, 6])], now), None);
        // A single server is its own quorum.
        assert_eq!(clock.quorum_age(1, &leader, &[set(&[1])], now), Some(Duration::ZERO));
    }

    #[test]
    fn acknowledgements_of_another_term_do_not_count_and_joint_configs_need_both_quorums() {
        let clock = LeaseClock::default();
        let now = Instant::now();
        let old = LeaderId::new(2, 1);
        let current = LeaderId::new(3, 1);
        clock.acknowledged(2, old, now - Duration::from_millis(10));
        clock.acknowledged(3, current, now - Duration::from_millis(20));
        assert_eq!(clock.quorum_age(1, &current, &[set(&[1, 2, 3])], now), Some(Duration::from_millis(20)));
        assert_eq!(clock.quorum_age(1, &current, &[set(&[1, 2, 4])], now), None, "2 acknowledged another term");
        // An older send time never replaces a newer one of the same leader.
        clock.acknowledged(3, current, now - Duration::from_millis(500));
        assert_eq!(clock.quorum_age(1, &current, &[set(&[1, 3])], now), Some(Duration::from_millis(20)));
        // Joint: {1,2,3} has a quorum (1,3); {3,4,5} needs 2 of 3 and has only 3.
        assert_eq!(clock.quorum_age(1, &current, &[set(&[1, 2, 3]), set(&[3, 4, 5])], now), None);
        clock.acknowledged(4, current, now - Duration::from_millis(700));
        assert_eq!(
            clock.quorum_age(1, &current, &[set(&[1, 2, 3]), set(&[3, 4, 5])], now),
            Some(Duration::from_millis(700))
        );
    }
}
