//! The status a cluster should report, from what was observed: pure.
//!
//! Conditions follow the Kubernetes API conventions: `type`, `status`, `reason`, `message`,
//! `observedGeneration`, and a `lastTransitionTime` that moves only when the status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{RegistryCluster, RegistryClusterStatus, TlsStatus};

/// The state of the servers' certificate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsObserved {
    /// A usable certificate is in the server Secret.
    pub ready: bool,
    pub reason: String,
    pub message: String,
    pub status: TlsStatus,
}

/// What the operator saw of a running cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub ready_servers: i32,
    pub leader: Option<String>,
    pub last_raft_index: Option<u64>,
    /// A scale-down or rolling update under way: the `Progressing` reason and message.
    pub progress: Option<(String, String)>,
    /// With TLS on: the certificate's state (`TLSReady` and `status.tls`).
    pub tls: Option<TlsObserved>,
    /// With federation: the `Federated` verdict and the datacenters the WAN pool holds.
    pub federation: Option<(super::federation::Verdict, Vec<String>)>,
}

fn condition(
    previous: Option<&RegistryClusterStatus>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Status of a cluster whose spec was refused.
pub fn invalid(rc: &RegistryCluster, errors: &[String], now: Time) -> RegistryClusterStatus {
    let previous = rc.status.as_ref();
    let generation = rc.metadata.generation;
    let message = errors.join("; ");
    RegistryClusterStatus {
        phase: Some("Failed".into()),
        ready_servers: previous.map_or(0, |p| p.ready_servers),
        leader: previous.and_then(|p| p.leader.clone()),
        last_raft_index: previous.and_then(|p| p.last_raft_index),
        observed_generation: generation,
        conditions: vec![
            condition(previous, "Available", false, "InvalidSpec", message.clone(), generation, &now),
            condition(previous, "Progressing", false, "InvalidSpec", message.clone(), generation, &now),
            condition(previous, "Degraded", true, "InvalidSpec", message, generation, &now),
        ],
        tls: previous.and_then(|p| p.tls.clone()),
        datacenters: previous.map(|p| p.datacenters.clone()).unwrap_or_default(),
    }
}

/// Status of a valid cluster of `replicas` servers, as observed.
pub fn observed(rc: &RegistryCluster, replicas: i32, seen: &Observed, now: Time) -> RegistryClusterStatus {
    let previous = rc.status.as_ref();
    let generation = rc.metadata.generation;
    let ready = seen.ready_servers;
    let quorum = replicas / 2 + 1;
    let available = ready >= quorum;
    let complete = ready >= replicas;
    let phase = if complete && seen.progress.is_some() {
        "Updating"
    } else if complete {
        "Running"
    } else if ready == 0 {
        "Pending"
    } else {
        "Degraded"
    };
    let servers = format!("{ready} of {replicas} servers ready (quorum {quorum})");
    let tls_condition = seen
        .tls
        .as_ref()
        .map(|t| condition(previous, "TLSReady", t.ready, &t.reason, t.message.clone(), generation, &now));
    let federated_condition = seen
        .federation
        .as_ref()
        .map(|(v, _)| condition(previous, "Federated", v.federated, v.reason, v.message.clone(), generation, &now));
    RegistryClusterStatus {
        phase: Some(phase.into()),
        ready_servers: ready,
        leader: seen.leader.clone(),
        last_raft_index: seen.last_raft_index,
        observed_generation: generation,
        conditions: vec![
            condition(
                previous,
                "Available",
                available,
                if available { "QuorumReady" } else { "NoQuorum" },
                servers.clone(),
                generation,
                &now,
            ),
            match &seen.progress {
                Some((reason, message)) => {
                    condition(previous, "Progressing", true, reason, format!("{message}; {servers}"), generation, &now)
                }
                None => condition(
                    previous,
                    "Progressing",
                    !complete,
                    if complete { "AllServersReady" } else { "ServersStarting" },
                    servers.clone(),
                    generation,
                    &now,
                ),
            },
            condition(
                previous,
                "Degraded",
                ready > 0 && !complete,
                if ready > 0 && !complete { "ServersMissing" } else { "AsExpected" },
                servers,
                generation,
                &now,
            ),
        ]
        .into_iter()
        .chain(tls_condition)
        .chain(federated_condition)
        .collect(),
        tls: seen.tls.as_ref().map(|t| t.status.clone()),
        datacenters: seen.federation.as_ref().map(|(_, dcs)| dcs.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RegistryClusterSpec;

    fn cluster() -> RegistryCluster {
        let spec: RegistryClusterSpec = serde_json::from_value(serde_json::json!({"replicas": 3})).expect("spec");
        let mut rc = RegistryCluster::new("registry", spec);
        rc.metadata.generation = Some(4);
        rc
    }

    fn time(s: &str) -> Time {
        serde_json::from_value(serde_json::json!(s)).expect("time")
    }

    fn get<'a>(s: &'a RegistryClusterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).expect("condition")
    }

    #[test]
    fn phases_follow_ready_servers_and_quorum() {
        let rc = cluster();
        let now = time("2026-11-25T10:00:00Z");
        let s = observed(&rc, 3, &Observed::default(), now.clone());
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(get(&s, "Available").status, "False");
        let s = observed(&rc, 3, &Observed { ready_servers: 2, ..Default::default() }, now.clone());
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        assert_eq!(get(&s, "Available").status, "True", "2 of 3 is a quorum");
        assert_eq!(get(&s, "Degraded").reason, "ServersMissing");
        let s = observed(
            &rc,
            3,
            &Observed {
                ready_servers: 3,
                leader: Some("registry-0".into()),
                last_raft_index: Some(42),
                progress: None,
                tls: None,
                federation: None,
            },
            now.clone(),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(get(&s, "Progressing").status, "False");
        assert_eq!(s.leader.as_deref(), Some("registry-0"));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(get(&s, "Available").observed_generation, Some(4));
        // A rolling update shows as progress, and in the phase column.
        let rolling = Observed {
            ready_servers: 3,
            progress: Some(("RollingUpdate".into(), "restarting registry-1 with the new template".into())),
            ..Default::default()
        };
        let s = observed(&rc, 3, &rolling, now);
        assert_eq!(s.phase.as_deref(), Some("Updating"));
        let p = get(&s, "Progressing");
        assert_eq!((p.status.as_str(), p.reason.as_str()), ("True", "RollingUpdate"));
        assert!(p.message.starts_with("restarting registry-1"), "{}", p.message);
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let mut rc = cluster();
        let t1 = time("2026-11-25T10:00:00Z");
        let t2 = time("2026-11-25T10:05:00Z");
        rc.status = Some(observed(&rc, 3, &Observed { ready_servers: 3, ..Default::default() }, t1.clone()));
        let same = observed(&rc, 3, &Observed { ready_servers: 3, ..Default::default() }, t2.clone());
        assert_eq!(get(&same, "Available").last_transition_time, t1);
        let flipped = observed(&rc, 3, &Observed { ready_servers: 1, ..Default::default() }, t2.clone());
        assert_eq!(get(&flipped, "Available").last_transition_time, t2);
    }

    #[test]
    fn an_invalid_spec_is_degraded_with_the_reasons() {
        let rc = cluster();
        let s = invalid(&rc, &["spec.replicas: must be 1, 3 or 5, not 4".into()], time("2026-11-25T10:00:00Z"));
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        let d = get(&s, "Degraded");
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", "InvalidSpec"));
        assert!(d.message.contains("spec.replicas"));
    }

    #[test]
    fn tls_shows_as_a_condition_and_in_the_status_only_when_on() {
        let rc = cluster();
        let now = time("2026-11-25T10:00:00Z");
        let plain = observed(&rc, 3, &Observed { ready_servers: 3, ..Default::default() }, now.clone());
        assert!(plain.conditions.iter().all(|c| c.type_ != "TLSReady") && plain.tls.is_none());
        let tls = TlsObserved {
            ready: true,
            reason: "CertificateValid".into(),
            message: "valid until 2027-02-23T10:00:00Z".into(),
            status: TlsStatus {
                server_secret: "registry-server-tls".into(),
                ca_config_map: "registry-ca".into(),
                not_after: Some("2027-02-23T10:00:00Z".into()),
                renew_after: Some("2027-01-24T10:00:00Z".into()),
            },
        };
        let s = observed(&rc, 3, &Observed { ready_servers: 3, tls: Some(tls.clone()), ..Default::default() }, now);
        let c = get(&s, "TLSReady");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "CertificateValid"));
        assert_eq!(s.tls, Some(tls.status));
    }
}
