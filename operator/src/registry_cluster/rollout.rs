//! Raft-aware scaling and rolling upgrades: pure. Given what the StatefulSet, its pods and the
//! servers' autopilot report say, `plan` picks the StatefulSet's replica count and at most one step.
//!
//! - Scaling up needs nothing from the operator: a new server joins as a learner, catches up and is
//!   promoted to voter by the leader (see `registry::cluster`).
//! - Scaling down removes the highest-ordinal servers from Raft (leadership moved away first) before
//!   the StatefulSet shrinks, so quorum is computed over the servers that remain.
//! - A template change rolls one server at a time (the StatefulSet uses `OnDelete`): only while every
//!   server is ready and autopilot reports every one healthy (on the leader's term, caught up), the
//!   highest-ordinal outdated follower first, the leader last after handing leadership off.

/// One server pod as the operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub name: String,
    pub ordinal: i32,
    pub ready: bool,
    /// The StatefulSet revision it was created from (`controller-revision-hash` label).
    pub revision: Option<String>,
    /// Being deleted (has a deletion timestamp).
    pub terminating: bool,
}

/// One Raft server as autopilot reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RaftMember {
    pub name: String,
    pub voter: bool,
    pub leader: bool,
    pub healthy: bool,
}

/// What the servers said (autopilot health), or None when they could not be asked.
#[derive(Debug, Clone, PartialEq)]
pub struct RaftView {
    pub members: Vec<RaftMember>,
}

impl RaftView {
    fn member(&self, name: &str) -> Option<&RaftMember> {
        self.members.iter().find(|m| m.name == name)
    }
}

impl From<&registry::api::AutopilotHealth> for RaftView {
    fn from(h: &registry::api::AutopilotHealth) -> Self {
        RaftView {
            members: h
                .servers
                .iter()
                .map(|s| RaftMember { name: s.name.clone(), voter: s.voter, leader: s.leader, healthy: s.healthy })
                .collect(),
        }
    }
}

/// The one thing to do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing: every server is current.
    Steady,
    /// Nothing yet; the reason goes into the status.
    Wait(String),
    /// Remove this server from the Raft configuration (scale down).
    RemovePeer(String),
    /// Move leadership from `from` (about to be removed or restarted) to `to` (a server that stays,
    /// healthy, on the current template).
    TransferLeadership { from: String, to: String },
    /// Delete this pod so the StatefulSet recreates it from the new template.
    RestartPod(String),
}

impl Step {
    /// The `Progressing` condition's reason for this step, when it is progress.
    pub fn reason(&self, scaling_down: bool) -> Option<&'static str> {
        match self {
            Step::Steady => None,
            _ if scaling_down => Some("ScalingDown"),
            Step::Wait(_) | Step::RestartPod(_) | Step::TransferLeadership { .. } => Some("RollingUpdate"),
            Step::RemovePeer(_) => Some("ScalingDown"),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Step::Steady => "every server runs the current template".into(),
            Step::Wait(why) => why.clone(),
            Step::RemovePeer(s) => format!("removing {s} from the Raft configuration"),
            Step::TransferLeadership { from, to } => format!("moving Raft leadership from {from} to {to}"),
            Step::RestartPod(s) => format!("restarting {s} with the new template"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Replicas to give the StatefulSet now.
    pub replicas: i32,
    pub step: Step,
    /// Servers are being removed (replicas wanted < StatefulSet's current).
    pub scaling_down: bool,
}

/// `cluster`: the RegistryCluster's name (pods are `<cluster>-<ordinal>`); `desired`: spec.replicas;
/// `current`: the StatefulSet's replicas (None: not created yet); `update_revision`: the
/// StatefulSet's status.updateRevision.
pub fn plan(
    cluster: &str,
    desired: i32,
    current: Option<i32>,
    update_revision: Option<&str>,
    pods: &[PodView],
    raft: Option<&RaftView>,
) -> Plan {
    let current = current.unwrap_or(desired);
    if desired < current {
        return scale_down(cluster, desired, current, raft);
    }
    Plan { replicas: desired, step: roll(cluster, desired, update_revision, pods, raft), scaling_down: false }
}

fn scale_down(cluster: &str, desired: i32, current: i32, raft: Option<&RaftView>) -> Plan {
    let hold = |step| Plan { replicas: current, step, scaling_down: true };
    let Some(raft) = raft else {
        return hold(Step::Wait(format!(
            "cannot ask the servers who leads; {} server(s) stay until they can be removed from Raft",
            current - desired
        )));
    };
    // Highest ordinal first, as the StatefulSet removes pods.
    for ordinal in (desired..current).rev() {
        let name = format!("{cluster}-{ordinal}");
        let Some(member) = raft.member(&name) else { continue };
        if !member.leader {
            return hold(Step::RemovePeer(name));
        }
        // Hand leadership to a server that stays, or it would move again with the next removal.
        let staying = (0..desired).map(|i| format!("{cluster}-{i}"));
        return hold(match staying.into_iter().find(|n| raft.member(n).is_some_and(|m| m.voter && m.healthy)) {
            Some(to) => Step::TransferLeadership { from: name, to },
            None => Step::Wait(format!("no server that stays is healthy enough to take over leadership from {name}")),
        });
    }
    // None of the leaving servers is in Raft any more: the StatefulSet may shrink.
    Plan { replicas: desired, step: Step::Wait(format!("scaling down to {desired} server(s)")), scaling_down: true }
}

fn roll(cluster: &str, desired: i32, update_revision: Option<&str>, pods: &[PodView], raft: Option<&RaftView>) -> Step {
    let Some(revision) = update_revision else { return Step::Steady };
    let serving: Vec<&PodView> = pods.iter().filter(|p| p.ordinal < desired).collect();
    let outdated: Vec<&PodView> =
        serving.iter().copied().filter(|p| p.revision.as_deref() != Some(revision) && !p.terminating).collect();
    if outdated.is_empty() {
        return Step::Steady;
    }
    // One at a time: every server present, ready and not on its way out before the next restart.
    for ordinal in 0..desired {
        let name = format!("{cluster}-{ordinal}");
        match serving.iter().find(|p| p.ordinal == ordinal) {
            None => return Step::Wait(format!("waiting for {name} to be created")),
            Some(p) if p.terminating => return Step::Wait(format!("waiting for {name} to restart")),
            Some(p) if !p.ready => return Step::Wait(format!("waiting for {name} to be ready")),
            Some(_) => {}
        }
    }
    if desired == 1 {
        // A single server cannot hand off: it restarts, and the cluster is down meanwhile.
        return Step::RestartPod(outdated[0].name.clone());
    }
    let Some(raft) = raft else {
        return Step::Wait("cannot ask the servers for their health; the rolling update waits".into());
    };
    for p in &serving {
        match raft.member(&p.name) {
            None => return Step::Wait(format!("waiting for {} to join Raft", p.name)),
            Some(m) if !m.voter => return Step::Wait(format!("waiting for {} to become a voter", p.name)),
            Some(m) if !m.healthy => return Step::Wait(format!("waiting for {} to catch up with the leader", p.name)),
            Some(_) => {}
        }
    }
    let is_leader = |p: &PodView| raft.member(&p.name).is_some_and(|m| m.leader);
    match outdated.iter().filter(|p| !is_leader(p)).max_by_key(|p| p.ordinal) {
        Some(follower) => Step::RestartPod(follower.name.clone()),
        // Only the leader is left: hand leadership to an updated server (all are healthy and caught
        // up by now), then restart it.
        None => match serving.iter().find(|p| p.revision.as_deref() == Some(revision)) {
            Some(to) => Step::TransferLeadership { from: outdated[0].name.clone(), to: to.name.clone() },
            None => Step::RestartPod(outdated[0].name.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ordinal: i32, revision: &str) -> PodView {
        PodView {
            name: format!("rc-{ordinal}"),
            ordinal,
            ready: true,
            revision: Some(revision.into()),
            terminating: false,
        }
    }

    fn raft(leader: i32, n: i32) -> RaftView {
        RaftView {
            members: (0..n)
                .map(|i| RaftMember { name: format!("rc-{i}"), voter: true, leader: i == leader, healthy: true })
                .collect(),
        }
    }

    #[test]
    fn a_new_cluster_gets_its_replicas_and_nothing_else() {
        let p = plan("rc", 3, None, None, &[], None);
        assert_eq!(p, Plan { replicas: 3, step: Step::Steady, scaling_down: false });
    }

    #[test]
    fn scaling_up_is_left_to_the_servers() {
        let pods = [pod(0, "a"), pod(1, "a"), pod(2, "a")];
        let p = plan("rc", 5, Some(3), Some("a"), &pods, Some(&raft(0, 3)));
        assert_eq!(p, Plan { replicas: 5, step: Step::Steady, scaling_down: false });
    }

    #[test]
    fn scaling_down_removes_the_highest_servers_from_raft_before_the_pods_go() {
        let pods: Vec<_> = (0..5).map(|i| pod(i, "a")).collect();
        let p = plan("rc", 3, Some(5), Some("a"), &pods, Some(&raft(0, 5)));
        assert_eq!(p, Plan { replicas: 5, step: Step::RemovePeer("rc-4".into()), scaling_down: true });
        // rc-4 is out of Raft: rc-3 next, still holding the StatefulSet at 5.
        let mut r = raft(0, 5);
        r.members.retain(|m| m.name != "rc-4");
        let p = plan("rc", 3, Some(5), Some("a"), &pods, Some(&r));
        assert_eq!(p.step, Step::RemovePeer("rc-3".into()));
        assert_eq!(p.replicas, 5);
        // Both out: now the StatefulSet shrinks.
        r.members.retain(|m| m.name != "rc-3");
        let p = plan("rc", 3, Some(5), Some("a"), &pods, Some(&r));
        assert_eq!(p.replicas, 3);
        assert!(matches!(p.step, Step::Wait(_)));
    }

    #[test]
    fn a_leaving_leader_hands_off_first() {
        let pods: Vec<_> = (0..5).map(|i| pod(i, "a")).collect();
        let p = plan("rc", 3, Some(5), Some("a"), &pods, Some(&raft(4, 5)));
        assert_eq!(p.step, Step::TransferLeadership { from: "rc-4".into(), to: "rc-0".into() }, "to one that stays");
        assert_eq!(p.replicas, 5);
        // No healthy server among those that stay: wait rather than hand leadership to a laggard.
        let mut r = raft(4, 5);
        for m in r.members.iter_mut().take(3) {
            m.healthy = false;
        }
        let p = plan("rc", 3, Some(5), Some("a"), &pods, Some(&r));
        assert!(matches!(p.step, Step::Wait(_)), "{p:?}");
    }

    #[test]
    fn without_the_servers_nothing_is_removed() {
        let pods: Vec<_> = (0..5).map(|i| pod(i, "a")).collect();
        let p = plan("rc", 3, Some(5), Some("a"), &pods, None);
        assert_eq!(p.replicas, 5, "shrinking without removing from Raft could lose quorum");
        assert!(matches!(p.step, Step::Wait(_)));
    }

    #[test]
    fn a_rolling_update_restarts_followers_highest_first_and_the_leader_last() {
        let r = raft(2, 3);
        let pods = [pod(0, "old"), pod(1, "old"), pod(2, "old")];
        assert_eq!(plan("rc", 3, Some(3), Some("new"), &pods, Some(&r)).step, Step::RestartPod("rc-1".into()));
        let pods = [pod(0, "old"), pod(1, "new"), pod(2, "old")];
        assert_eq!(plan("rc", 3, Some(3), Some("new"), &pods, Some(&r)).step, Step::RestartPod("rc-0".into()));
        let pods = [pod(0, "new"), pod(1, "new"), pod(2, "old")];
        assert_eq!(
            plan("rc", 3, Some(3), Some("new"), &pods, Some(&r)).step,
            Step::TransferLeadership { from: "rc-2".into(), to: "rc-0".into() },
            "to an updated server"
        );
        // Leadership moved: the old leader is now a follower and restarts.
        let r = raft(0, 3);
        assert_eq!(plan("rc", 3, Some(3), Some("new"), &pods, Some(&r)).step, Step::RestartPod("rc-2".into()));
        let pods = [pod(0, "new"), pod(1, "new"), pod(2, "new")];
        assert_eq!(plan("rc", 3, Some(3), Some("new"), &pods, Some(&r)).step, Step::Steady);
    }

    #[test]
    fn the_next_restart_waits_for_the_last_one_to_be_ready_and_caught_up() {
        let mut pods = vec![pod(0, "old"), pod(1, "old"), pod(2, "new")];
        pods[2].ready = false;
        let step = plan("rc", 3, Some(3), Some("new"), &pods, Some(&raft(0, 3))).step;
        assert_eq!(step, Step::Wait("waiting for rc-2 to be ready".into()));
        pods[2].ready = true;
        let mut r = raft(0, 3);
        r.members[2].healthy = false;
        let step = plan("rc", 3, Some(3), Some("new"), &pods, Some(&r)).step;
        assert_eq!(step, Step::Wait("waiting for rc-2 to catch up with the leader".into()));
        let step = plan("rc", 3, Some(3), Some("new"), &pods, None).step;
        assert!(matches!(step, Step::Wait(_)), "no health, no restart");
        // A deleted pod not yet recreated, and one still terminating.
        let step = plan("rc", 3, Some(3), Some("new"), &pods[..2], Some(&raft(0, 3))).step;
        assert_eq!(step, Step::Wait("waiting for rc-2 to be created".into()));
        let mut pods = vec![pod(0, "old"), pod(1, "old"), pod(2, "old")];
        pods[2].terminating = true;
        let step = plan("rc", 3, Some(3), Some("new"), &pods, Some(&raft(0, 3))).step;
        assert_eq!(step, Step::Wait("waiting for rc-2 to restart".into()));
    }

    #[test]
    fn a_single_server_restarts_in_place() {
        let pods = [pod(0, "old")];
        let step = plan("rc", 1, Some(1), Some("new"), &pods, None).step;
        assert_eq!(step, Step::RestartPod("rc-0".into()));
    }

    #[test]
    fn pods_above_the_wanted_count_do_not_hold_a_rollout() {
        // After a scale down the StatefulSet may still be deleting rc-3 and rc-4.
        let mut pods: Vec<_> = (0..5).map(|i| pod(i, "old")).collect();
        pods[3].terminating = true;
        pods[4].ready = false;
        let step = plan("rc", 3, Some(3), Some("new"), &pods, Some(&raft(0, 3))).step;
        assert_eq!(step, Step::RestartPod("rc-2".into()));
    }
}
