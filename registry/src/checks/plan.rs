//! A check definition, validated as Consul's agent validates it, and how to run it: shared by the
//! servers' agent and the sidecar, so both accept and refuse the same definitions.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::scheduler::{self, CheckUpdate, Schedule};
use super::{ExecCheck, GrpcCheck, HttpCheck, TcpCheck};
use crate::api::{parse_go_duration, AgentCheckRegistration, HealthCheck, HealthStatus};

/// Consul's floor for check intervals.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What runs a check (TTL and status-only checks have no runner: the app or nobody updates them).
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    Http { url: String, method: String },
    Tcp(String),
    Grpc(String),
    Exec(Vec<String>),
}

/// A check definition, validated.
#[derive(Debug, Clone)]
pub struct CheckPlan {
    /// The check as the catalog holds it (status: the definition's, critical by default).
    pub check: HealthCheck,
    pub ttl: Option<Duration>,
    pub deregister_after: Option<Duration>,
    pub probe: Option<ProbeKind>,
    pub schedule: Schedule,
    pub timeout: Duration,
}

/// The service a check belongs to: ID, name and tags.
#[derive(Debug, Clone, Copy)]
pub struct OfService<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub tags: &'a [String],
}

fn duration(field: &str, text: Option<&str>) -> Result<Option<Duration>, String> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => parse_go_duration(t).map(Some).map_err(|e| format!("Invalid {field}: {e}")),
    }
}

/// Validates a check definition as Consul's agent does and plans how to run it.
pub fn plan_check(
    def: &AgentCheckRegistration,
    id: String,
    service: Option<OfService<'_>>,
    enable_script_checks: bool,
) -> Result<CheckPlan, String> {
    let ttl = duration("TTL", def.ttl.as_deref())?;
    let interval = duration("Interval", def.interval.as_deref())?;
    let timeout = duration("Timeout", def.timeout.as_deref())?.unwrap_or(DEFAULT_TIMEOUT);
    let kinds = [ttl.is_some(), def.http.is_some(), def.tcp.is_some(), def.grpc.is_some(), def.args.is_some()];
    if kinds.iter().filter(|k| **k).count() > 1 {
        return Err("Invalid check: give exactly one of TTL, HTTP, TCP, GRPC or Args".into());
    }
    let (probe, kind) = if let Some(url) = &def.http {
        (Some(ProbeKind::Http { url: url.clone(), method: def.method.clone().unwrap_or_else(|| "GET".into()) }), "http")
    } else if let Some(addr) = &def.tcp {
        (Some(ProbeKind::Tcp(addr.clone())), "tcp")
    } else if let Some(target) = &def.grpc {
        if def.grpc_use_tls == Some(true) {
            return Err("Invalid check: GRPCUseTLS is not supported by Roster's agents (plaintext gRPC only)".into());
        }
        (Some(ProbeKind::Grpc(target.clone())), "grpc")
    } else if let Some(args) = &def.args {
        if !enable_script_checks {
            return Err(
                "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' to true".into()
            );
        }
        if args.is_empty() {
            return Err("Invalid check: Args must name a command".into());
        }
        (Some(ProbeKind::Exec(args.clone())), "script")
    } else if ttl.is_some() {
        (None, "ttl")
    } else {
        return Err("Invalid check: TTL or one of HTTP, TCP, GRPC, Args with an Interval is required".into());
    };
    let interval = match (&probe, interval) {
        (Some(_), None) => {
            return Err("Invalid check: Interval is required for HTTP, TCP, GRPC and script checks".into())
        }
        (Some(_), Some(i)) => i.max(MIN_INTERVAL),
        (None, _) => Duration::ZERO,
    };
    let deregister_after =
        duration("DeregisterCriticalServiceAfter", def.deregister_critical_service_after.as_deref())?;
    let name = def.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| match service {
        Some(s) => format!("Service '{}' check", s.name),
        None => id.clone(),
    });
    let check = HealthCheck {
        check_id: id.clone(),
        name,
        status: def.status.unwrap_or(HealthStatus::Critical),
        notes: def.notes.clone().unwrap_or_default(),
        service_id: service.map(|s| s.id.to_string()).or(def.service_id.clone()).unwrap_or_default(),
        service_name: service.map(|s| s.name.to_string()).unwrap_or_default(),
        service_tags: service.map(|s| s.tags.to_vec()).unwrap_or_default(),
        check_type: kind.into(),
        interval: def.interval.clone().unwrap_or_default(),
        timeout: def.timeout.clone().unwrap_or_default(),
        ..Default::default()
    };
    Ok(CheckPlan {
        check,
        ttl,
        deregister_after,
        probe,
        schedule: Schedule {
            check_id: id,
            interval,
            success_before_passing: def.success_before_passing.unwrap_or(0),
            failures_before_critical: def.failures_before_critical.unwrap_or(1),
        },
        timeout: timeout.min(interval.max(MIN_INTERVAL)),
    })
}

/// Plans the checks of a service registration (`Check` and `Checks`), with Consul's default IDs:
/// `service:<id>` for one check, `service:<id>:<n>` for several.
pub fn service_checks(
    r: &crate::api::AgentServiceRegistration,
    service: OfService<'_>,
    enable_script_checks: bool,
) -> Result<Vec<CheckPlan>, String> {
    let defs: Vec<&AgentCheckRegistration> = r.check.iter().chain(r.checks.iter().flatten()).collect();
    let mut plans = Vec::new();
    for (i, def) in defs.iter().enumerate() {
        let id = service.id;
        let default_id = if defs.len() == 1 { format!("service:{id}") } else { format!("service:{id}:{}", i + 1) };
        let check_id = def.effective_id().map(str::to_string).unwrap_or(default_id);
        plans.push(plan_check(def, check_id, Some(service), enable_script_checks)?);
    }
    Ok(plans)
}

/// Starts the runner of a check that has one; its updates go to `updates`. Send `true` on the
/// returned sender to stop it. A check that cannot run (a bad URL, scripts disabled) is an error.
pub fn start(
    probe: &ProbeKind,
    schedule: Schedule,
    timeout: Duration,
    enable_script_checks: bool,
    updates: mpsc::UnboundedSender<CheckUpdate>,
) -> anyhow::Result<watch::Sender<bool>> {
    let (stop_tx, stop) = watch::channel(false);
    match probe {
        ProbeKind::Http { url, method } => {
            let m = reqwest::Method::from_bytes(method.as_bytes())
                .map_err(|e| anyhow::anyhow!("bad method {method:?}: {e}"))?;
            scheduler::spawn(std::sync::Arc::new(HttpCheck::new(url.clone(), m, timeout)?), schedule, updates, stop);
        }
        ProbeKind::Tcp(addr) => {
            scheduler::spawn(std::sync::Arc::new(TcpCheck::new(addr.clone(), timeout)), schedule, updates, stop);
        }
        ProbeKind::Grpc(target) => {
            scheduler::spawn(std::sync::Arc::new(GrpcCheck::new(target, timeout)?), schedule, updates, stop);
        }
        ProbeKind::Exec(args) => {
            let check = ExecCheck::new(args.clone(), timeout, enable_script_checks)?;
            scheduler::spawn(std::sync::Arc::new(check), schedule, updates, stop);
        }
    }
    Ok(stop_tx)
}
