//! Election watchdog: undoes openraft 0.9's sticky smaller-log backoff.
//!
//! When a candidate's vote request is rejected by a voter with a longer log, openraft 0.9 sets a
//! flag that adds `smaller_log_timeout` (twice the max election timeout: 3 s by default) to this
//! server's next election timer, so that the voter with the longer log campaigns first. The flag is
//! only cleared when this server next campaigns: a server that lost one election and then followed
//! a leader for minutes, catching up, still waits the extra 3 s at the next failover, even when its
//! log is now the longest of the survivors (fixed upstream after 0.9: databendlabs/openraft#2087
//! keeps the backoff only while the log is still behind). The fault harness saw it as up to 6 s from
//! a heal to the first acknowledged write: the survivors with the longest log all carried the flag
//! from earlier rounds, and the one without it had a shorter log and was rejected.
//!
//! The watchdog applies the intended rule from outside. Once openraft's own election timer, without
//! the backoff, has run out by a margin (no accepted AppendEntries and no vote change for the leader
//! lease, if the vote is committed, plus the max election timeout, plus a margin and a random
//! jitter), it asks the other voters for their last log ids (`/raft/info`) and campaigns
//! (`trigger().elect()`) unless one that answered has a longer log than its own (the backoff is then
//! right: that one should win) or still hears a leader (as a pre-vote would: it would refuse the vote,
//! and the higher term would depose that leader once this server is heard again). It looks again at
//! most once per election timeout.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use rand::Rng;

use crate::app::App;
use crate::raft::LogId;

/// How long after the vote's last update (an accepted AppendEntries, a vote granted or cast) the
/// watchdog steps in: openraft's own latest election time without the backoff (the leader lease,
/// which is the max election timeout, if the vote is committed, plus the max election timeout),
/// plus `extra`.
pub fn patience(committed: bool, max_election_timeout: Duration, extra: Duration) -> Duration {
    let lease = if committed { max_election_timeout } else { Duration::ZERO };
    lease + max_election_timeout + extra
}

/// Whether a voter's last log id `theirs` is longer than `mine` the way a vote request compares
/// them (openraft would refuse this server's campaign for it): a greater term, or the same term
/// and a greater index. Unknown (an older server, no answer) is not longer.
pub fn longer_log(theirs: Option<LogId>, mine: Option<LogId>) -> bool {
    theirs.is_some() && theirs.partial_cmp(&mine).is_some_and(|o| o.is_gt())
}

/// Past openraft's own latest election time (its tick is 1.5 heartbeats): it did not campaign.
fn margin(app: &App) -> Duration {
    Duration::from_millis(app.config.raft_heartbeat_ms * 3)
}

pub async fn watchdog(app: Arc<App>) {
    let mut shutdown = app.shutdown.subscribe();
    let max = Duration::from_millis(app.config.election_timeout_max_ms());
    let spread = app.config.election_timeout_max_ms().saturating_sub(app.config.raft_election_timeout_ms).max(1);
    let tick = Duration::from_millis(app.config.raft_heartbeat_ms.max(10));
    let min = Duration::from_millis(app.config.raft_election_timeout_ms);
    // No new look before this (after leaving a campaign to others, or campaigning).
    let mut quiet_until = tokio::time::Instant::now();
    let mut jitter = Duration::from_millis(rand::rng().random_range(0..spread));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        let Ok((state, committed, since)) =
            app.raft.with_raft_state(|st| (st.server_state, st.vote_ref().committed, st.vote_last_modified())).await
        else {
            return;
        };
        let Some(since) = since else { continue };
        if !matches!(state, ServerState::Follower | ServerState::Candidate) || tokio::time::Instant::now() < quiet_until
        {
            continue;
        }
        let voters: Vec<_> = {
            let m = app.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            if !membership.voter_ids().any(|v| v == app.id) {
                continue;
            }
            membership.voter_ids().filter(|v| *v != app.id).filter_map(|v| membership.get_node(&v).cloned()).collect()
        };
        if voters.is_empty() {
            continue;
        }
        let Some(overdue) = since.elapsed().checked_sub(patience(committed, max, margin(&app) + jitter)) else {
            continue;
        };
        quiet_until = tokio::time::Instant::now() + min;
        jitter = Duration::from_millis(rand::rng().random_range(0..spread));
        let mine = app.last_log.get();
        let answers = futures::future::join_all(
            voters.iter().map(|n| crate::cluster::server_info_within(&app.dialer, &n.rpc_addr, max / 5)),
        )
        .await;
        let theirs: Vec<Option<LogId>> = answers.iter().map(|a| a.as_ref().and_then(|a| a.last_log)).collect();
        let longer: Vec<&str> =
            voters.iter().zip(&theirs).filter(|(_, t)| longer_log(**t, mine)).map(|(n, _)| n.name.as_str()).collect();
        if !longer.is_empty() {
            tracing::info!(?longer, "election watchdog: a voter has a longer log; leaving the campaign to it");
            continue;
        }
        // As a pre-vote would: a voter that still hears a leader would refuse the vote, and the
        // higher term would depose that leader once this server is heard again.
        let hearing: Vec<&str> = voters
            .iter()
            .zip(&answers)
            .filter(|(_, a)| a.as_ref().and_then(|a| a.leader_contact_ms).is_some_and(|ms| ms < min.as_millis() as u64))
            .map(|(n, _)| n.name.as_str())
            .collect();
        if !hearing.is_empty() {
            tracing::info!(?hearing, "election watchdog: a voter still hears a leader; not campaigning");
            continue;
        }
        let answered = answers.iter().filter(|a| a.is_some()).count();
        tracing::info!(
            overdue_ms = overdue.as_millis() as u64,
            answered,
            last_log = ?mine,
            "election watchdog: openraft's election timer ran out without a campaign (its smaller-log backoff); campaigning"
        );
        if let Err(e) = app.raft.trigger().elect().await {
            tracing::warn!(error = %e, "election watchdog: cannot campaign");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    fn id(term: u64, node: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(term, node), index))
    }

    #[test]
    fn a_longer_log_is_a_greater_term_or_the_same_leader_further() {
        assert!(longer_log(id(5, 1, 10), id(4, 2, 90)), "greater term");
        assert!(longer_log(id(5, 1, 11), id(5, 1, 10)), "same term, further");
        assert!(!longer_log(id(5, 1, 10), id(5, 1, 10)), "equal");
        assert!(!longer_log(id(4, 1, 99), id(5, 2, 10)), "older term, however long");
        assert!(longer_log(id(1, 1, 1), None), "anything beats an empty log");
        assert!(!longer_log(None, id(1, 1, 1)), "no answer or an older server");
        assert!(!longer_log(None, None));
    }

    #[test]
    fn the_watchdog_waits_past_openrafts_own_timer() {
        let max = Duration::from_millis(1_500);
        let extra = Duration::from_millis(300);
        // Committed vote (a leader was followed): lease + election timeout + extra.
        assert_eq!(patience(true, max, extra), Duration::from_millis(3_300));
        // A candidate's or a granted vote: the election timeout + extra.
        assert_eq!(patience(false, max, extra), Duration::from_millis(1_800));
    }
}
