//! The agent: local state behind a lock, the check runners it starts and stops, and the timers
//! (TTL expiry, `deregister_critical_service_after`). Every change that must reach the servers
//! wakes the sync loop through `changed`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use registry::api::{AgentCheckRegistration, AgentService, AgentServiceRegistration, HealthStatus, Weights};
use tokio::sync::{mpsc, watch, Notify};

use registry::checks::plan::{self, CheckPlan, OfService};
use registry::checks::scheduler::CheckUpdate;

use crate::local::{LocalCheck, LocalState, NodeInfo, TtlError};

/// The sidecar's record of a planned check.
fn local_of(p: &CheckPlan) -> LocalCheck {
    LocalCheck {
        check: p.check.clone(),
        ttl: p.ttl,
        ttl_deadline: None,
        deregister_after: p.deregister_after,
        critical_since: None,
    }
}

/// Validates a service registration and plans its checks (Consul's default check IDs included).
pub fn plan_service(
    r: &AgentServiceRegistration,
    datacenter: &str,
    enable_script_checks: bool,
) -> Result<(AgentService, Vec<CheckPlan>), String> {
    if r.name.is_empty() {
        return Err("Missing service name".into());
    }
    let id = r.id.clone().filter(|i| !i.is_empty()).unwrap_or(r.name.clone());
    let service = AgentService {
        id: id.clone(),
        service: r.name.clone(),
        tags: r.tags.clone().unwrap_or_default(),
        meta: r.meta.clone().unwrap_or_default(),
        port: r.port.unwrap_or(0),
        address: r.address.clone().unwrap_or_default(),
        socket_path: String::new(),
        tagged_addresses: r.tagged_addresses.clone(),
        weights: r.weights.unwrap_or(Weights { passing: 1, warning: 1 }),
        enable_tag_override: r.enable_tag_override.unwrap_or(false),
        datacenter: datacenter.into(),
    };
    let of = OfService { id: &service.id, name: &service.service, tags: &service.tags };
    let plans = plan::service_checks(r, of, enable_script_checks)?;
    Ok((service, plans))
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
}

pub struct Agent {
    state: Mutex<LocalState>,
    enable_script_checks: bool,
    /// Wakes the sync loop.
    pub changed: Notify,
    runners: Mutex<HashMap<String, watch::Sender<bool>>>,
    updates: mpsc::UnboundedSender<CheckUpdate>,
}

impl Agent {
    /// The agent, and the receiver of check results to drive with `run`.
    pub fn new(node: NodeInfo, enable_script_checks: bool) -> (Arc<Agent>, mpsc::UnboundedReceiver<CheckUpdate>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let agent = Agent {
            state: Mutex::new(LocalState::new(node)),
            enable_script_checks,
            changed: Notify::new(),
            runners: Mutex::new(HashMap::new()),
            updates: tx,
        };
        (Arc::new(agent), rx)
    }

    /// Runs `f` on the local state under the lock.
    pub fn with_state<T>(&self, f: impl FnOnce(&mut LocalState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn node(&self) -> NodeInfo {
        self.with_state(|s| s.node().clone())
    }

    pub fn register_service(&self, r: &AgentServiceRegistration) -> Result<(), AgentError> {
        let datacenter = self.node().datacenter;
        let (service, plans) = plan_service(r, &datacenter, self.enable_script_checks).map_err(AgentError::Invalid)?;
        let locals = plans.iter().map(local_of).collect();
        let stale = self.with_state(|s| s.add_service(service, locals, Instant::now()));
        self.stop_runners(&stale);
        for p in plans {
            self.start_runner(p);
        }
        self.changed.notify_one();
        Ok(())
    }

    pub fn deregister_service(&self, id: &str) -> Result<(), AgentError> {
        let checks = self.with_state(|s| s.remove_service(id)).ok_or_else(|| {
            AgentError::NotFound(format!(
                "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
            ))
        })?;
        self.stop_runners(&checks);
        self.changed.notify_one();
        Ok(())
    }

    pub fn register_check(&self, def: &AgentCheckRegistration) -> Result<(), AgentError> {
        let id = def.id_or_name().ok_or_else(|| AgentError::Invalid("Missing check name".into()))?;
        let service = match def.service_id.as_deref().filter(|s| !s.is_empty()) {
            Some(sid) => Some(
                self.with_state(|s| s.service(sid).cloned())
                    .ok_or_else(|| AgentError::Invalid(format!("ServiceID {sid:?} does not exist")))?,
            ),
            None => None,
        };
        let of = service.as_ref().map(|s| OfService { id: &s.id, name: &s.service, tags: &s.tags });
        let plan = plan::plan_check(def, id.clone(), of, self.enable_script_checks).map_err(AgentError::Invalid)?;
        self.stop_runners(std::slice::from_ref(&id));
        self.with_state(|s| s.add_check(local_of(&plan), Instant::now()));
        self.start_runner(plan);
        self.changed.notify_one();
        Ok(())
    }

    pub fn deregister_check(&self, id: &str) -> Result<(), AgentError> {
        if !self.with_state(|s| s.remove_check(id)) {
            return Err(AgentError::NotFound(format!(
                "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
            )));
        }
        self.stop_runners(&[id.to_string()]);
        self.changed.notify_one();
        Ok(())
    }

    pub fn update_ttl(&self, id: &str, status: HealthStatus, output: String) -> Result<(), AgentError> {
        let output = registry::checks::cap_output(output);
        // Consul answers 500 for both; a 400 with its message is the better answer to a client's mistake
        // (and what the servers' own agent API answers).
        self.with_state(|s| s.update_ttl(id, status, output, Instant::now())).map_err(|e| match e {
            TtlError::Unknown | TtlError::NotTtl => {
                AgentError::Invalid(format!("CheckID {id:?} does not have associated TTL"))
            }
        })?;
        self.changed.notify_one();
        Ok(())
    }

    fn stop_runners(&self, ids: &[String]) {
        let mut runners = self.runners.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            if let Some(stop) = runners.remove(id) {
                let _ = stop.send(true);
            }
        }
    }

    fn start_runner(&self, plan: CheckPlan) {
        let Some(probe) = &plan.probe else { return };
        let id = plan.schedule.check_id.clone();
        match plan::start(probe, plan.schedule, plan.timeout, self.enable_script_checks, self.updates.clone()) {
            Ok(stop) => {
                self.runners.lock().unwrap_or_else(|p| p.into_inner()).insert(id, stop);
            }
            Err(e) => {
                let msg = format!("check cannot run: {e:#}");
                self.with_state(|s| s.set_check_status(&id, HealthStatus::Critical, msg, Instant::now()));
            }
        }
    }

    /// Applies check results and runs the timers until `shutdown` flips.
    pub async fn run(
        self: Arc<Self>,
        mut updates: mpsc::UnboundedReceiver<CheckUpdate>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut timer = tokio::time::interval(Duration::from_millis(250));
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(u) = updates.recv() => {
                    let changed = self.with_state(|s| s.set_check_status(&u.check_id, u.status, u.output, Instant::now()));
                    if changed {
                        tracing::info!(check = %u.check_id, status = u.status.as_str(), "check changed");
                        self.changed.notify_one();
                    }
                }
                _ = timer.tick() => {
                    let tick = self.with_state(|s| s.tick(Instant::now()));
                    for id in &tick.expired {
                        tracing::info!(check = %id, "TTL expired");
                    }
                    for id in &tick.deregistered {
                        tracing::info!(service = %id, "deregistered: critical longer than deregister_critical_service_after");
                    }
                    self.stop_runners(&tick.stopped_checks);
                    if tick != Default::default() {
                        self.changed.notify_one();
                    }
                }
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        let all: Vec<String> = self.runners.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        self.stop_runners(&all);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(json: &str) -> AgentServiceRegistration {
        registry::api::json::decode(json.as_bytes()).expect("decode")
    }

    #[test]
    fn service_checks_get_consul_default_ids_and_names() {
        let r =
            def(r#"{"Name":"web","Port":80,"Checks":[{"TTL":"10s"},{"HTTP":"http://127.0.0.1/","Interval":"100ms"}]}"#);
        let (svc, plans) = plan_service(&r, "dc1", false).unwrap();
        assert_eq!(svc.id, "web");
        assert_eq!(plans[0].check.check_id, "service:web:1");
        assert_eq!(plans[1].check.check_id, "service:web:2");
        assert_eq!(plans[0].check.name, "Service 'web' check");
        assert_eq!(plans[0].check.status, HealthStatus::Critical, "checks start critical");
        assert_eq!(plans[1].schedule.interval, Duration::from_secs(1), "intervals have Consul's 1 s floor");
        let r = def(r#"{"Name":"web","Check":{"TTL":"10s","Status":"passing"}}"#);
        let (_, plans) = plan_service(&r, "dc1", false).unwrap();
        assert_eq!(plans[0].check.check_id, "service:web");
        assert_eq!(plans[0].check.status, HealthStatus::Passing);
    }

    #[test]
    fn bad_checks_are_refused_with_a_reason() {
        let cases = [
            (r#"{"Name":"w","Check":{"HTTP":"http://x/"}}"#, "Interval is required"),
            (r#"{"Name":"w","Check":{"TTL":"soon"}}"#, "Invalid TTL"),
            (r#"{"Name":"w","Check":{"TTL":"1s","TCP":"x:1"}}"#, "exactly one"),
            (r#"{"Name":"w","Check":{"Args":["true"],"Interval":"1s"}}"#, "Scripts are disabled"),
            (r#"{"Name":"w","Check":{"GRPC":"x:1","GRPCUseTLS":true,"Interval":"1s"}}"#, "GRPCUseTLS"),
            (r#"{"Name":"w","Check":{"Name":"nothing"}}"#, "TTL or one of"),
            (r#"{"Port":80}"#, "Missing service name"),
        ];
        for (json, want) in cases {
            let err = plan_service(&def(json), "dc1", false).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
