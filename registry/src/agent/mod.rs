//! Consul's agent, one implementation for servers and sidecars: the node's own services and checks
//! in [`local`], kept in sync with the catalog by [`sync`] (through a [`sync::Catalog`]: the HTTP
//! client on a sidecar, Raft on a server), the check runners it starts and stops, its timers (TTL
//! expiry, `deregister_critical_service_after`), and the `/v1/agent` API over a [`api::Host`].

pub mod api;
pub mod local;
pub mod monitor;
pub mod sync;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};

use crate::api::{
    AgentCheckRegistration, AgentHealthCheck, AgentService, AgentServiceHealth, AgentServiceRegistration, HealthCheck,
    HealthStatus, Weights,
};
use crate::checks::plan::{self, CheckPlan, OfService};
use crate::checks::scheduler::CheckUpdate;
use crate::web::ApiError;

pub use local::{LocalCheck, LocalState, NodeInfo, TtlError, SERF_CHECK};

/// A check's `Definition` as Consul's agent shows it: timings as Go durations, the probe's target,
/// and the HTTP fields Consul always lists.
fn definition_of(p: &CheckPlan) -> serde_json::Map<String, serde_json::Value> {
    use crate::api::format_go_duration as go;
    use crate::checks::plan::ProbeKind;
    use serde_json::Value;
    let running = p.probe.is_some();
    let mut d = serde_json::Map::new();
    let timing = |on: bool, t: Duration| Value::from(go(if on { t } else { Duration::ZERO }));
    d.insert("Interval".into(), timing(running, p.schedule.interval));
    d.insert("Timeout".into(), timing(running, p.timeout));
    d.insert("DeregisterCriticalServiceAfter".into(), Value::from(go(p.deregister_after.unwrap_or_default())));
    let (mut http, mut method, mut tcp) = ("", "", "");
    match &p.probe {
        Some(ProbeKind::Http { url, method: m }) => (http, method) = (url.as_str(), m.as_str()),
        Some(ProbeKind::Tcp(addr)) => tcp = addr.as_str(),
        Some(ProbeKind::Grpc(target)) => {
            d.insert("GRPC".into(), Value::from(target.as_str()));
        }
        Some(ProbeKind::Exec(args)) => {
            d.insert("ScriptArgs".into(), Value::from(args.clone()));
        }
        None => {}
    }
    d.insert("HTTP".into(), Value::from(http));
    d.insert("Header".into(), Value::Null);
    d.insert("Method".into(), Value::from(method));
    d.insert("Body".into(), Value::from(""));
    d.insert("TLSServerName".into(), Value::from(""));
    d.insert("TLSSkipVerify".into(), Value::from(false));
    d.insert("TCP".into(), Value::from(tcp));
    d
}

/// The agent's record of a planned check.
fn local_of(p: &CheckPlan) -> LocalCheck {
    LocalCheck {
        definition: definition_of(p),
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
        kind: r.kind.clone().filter(|k| !k.is_empty()),
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
        proxy: r.proxy.clone(),
        datacenter: datacenter.into(),
    };
    if service.kind.as_deref() == Some("connect-proxy")
        && service.proxy.as_ref().is_none_or(|p| p.destination_service_name.is_empty())
    {
        return Err("Proxy.DestinationServiceName must be set for a connect-proxy".into());
    }
    let of = OfService { id: &service.id, name: &service.service, tags: &service.tags };
    let plans = plan::service_checks(r, of, enable_script_checks)?;
    Ok((service, plans))
}

/// Consul's range for sidecar proxy ports the agent picks itself.
const SIDECAR_PORTS: std::ops::RangeInclusive<u16> = 21000..=21255;

/// The sidecar proxy a `Connect.SidecarService` asks for, with Consul's defaults: ID and name
/// `<parent>-sidecar-proxy`, kind `connect-proxy`, the first free port of 21000-21255, the parent's
/// tags and meta when it names none, the parent as destination, and a TCP check on the proxy's port.
pub fn sidecar_registration(
    parent: &AgentServiceRegistration,
    parent_id: &str,
    ports_taken: &[u16],
) -> Result<Option<AgentServiceRegistration>, String> {
    let Some(mut sc) = parent.connect.as_ref().and_then(|c| c.sidecar_service.clone()).map(|b| *b) else {
        return Ok(None);
    };
    if sc.connect.as_ref().is_some_and(|c| c.sidecar_service.is_some()) {
        return Err("A sidecar service cannot have a sidecar of its own".into());
    }
    sc.kind = Some("connect-proxy".into());
    sc.id = Some(sc.id.filter(|i| !i.is_empty()).unwrap_or_else(|| format!("{parent_id}-sidecar-proxy")));
    if sc.name.is_empty() {
        sc.name = format!("{}-sidecar-proxy", parent.name);
    }
    if sc.tags.is_none() {
        sc.tags = parent.tags.clone();
    }
    if sc.meta.is_none() {
        sc.meta = parent.meta.clone();
    }
    let port = match sc.port.filter(|p| *p != 0) {
        Some(p) => p,
        None => SIDECAR_PORTS
            .clone()
            .find(|p| !ports_taken.contains(p))
            .ok_or("No free port left for the sidecar proxy in 21000-21255")?,
    };
    sc.port = Some(port);
    let mut proxy = sc.proxy.take().unwrap_or_default();
    if proxy.destination_service_name.is_empty() {
        proxy.destination_service_name = parent.name.clone();
    }
    if proxy.destination_service_id.is_empty() {
        proxy.destination_service_id = parent_id.to_string();
    }
    if proxy.local_service_address.is_empty() {
        proxy.local_service_address = "127.0.0.1".into();
    }
    if proxy.local_service_port == 0 {
        proxy.local_service_port = parent.port.unwrap_or(0);
    }
    sc.proxy = Some(proxy);
    if sc.check.is_none() && sc.checks.is_none() {
        let host = sc.address.clone().filter(|a| !a.is_empty()).unwrap_or_else(|| "127.0.0.1".into());
        sc.checks = Some(vec![AgentCheckRegistration {
            name: Some("Connect Sidecar Listening".into()),
            tcp: Some(format!("{host}:{port}")),
            interval: Some("10s".into()),
            ..Default::default()
        }]);
    }
    Ok(Some(sc))
}

fn unknown_service(id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
    ))
}

/// A service's health as `/v1/agent/health/service/*` answers it: its own checks only.
pub fn service_health(s: &LocalState, svc: &AgentService) -> AgentServiceHealth {
    let checks: Vec<AgentHealthCheck> = s
        .checks()
        .filter(|c| c.check.service_id == svc.id)
        .map(|c| AgentHealthCheck::new(&c.check, c.definition.clone()))
        .collect();
    AgentServiceHealth {
        aggregated_status: crate::api::worst_status(checks.iter().map(|c| c.status)),
        service: svc.clone(),
        checks,
    }
}

pub struct Agent {
    state: Mutex<LocalState>,
    enable_script_checks: bool,
    /// Wakes the sync loop.
    pub changed: Notify,
    generation: watch::Sender<u64>,
    runners: Mutex<HashMap<String, watch::Sender<bool>>>,
    updates: mpsc::UnboundedSender<CheckUpdate>,
    /// Tokens set through `/v1/agent/token/:kind` (`default` answers requests that carry none).
    tokens: Mutex<BTreeMap<String, String>>,
}

impl Agent {
    /// The agent, and the receiver of check results to drive with `run`.
    pub fn new(node: NodeInfo, enable_script_checks: bool) -> (Arc<Agent>, mpsc::UnboundedReceiver<CheckUpdate>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let agent = Agent {
            state: Mutex::new(LocalState::new(node)),
            enable_script_checks,
            changed: Notify::new(),
            generation: watch::channel(0).0,
            runners: Mutex::new(HashMap::new()),
            updates: tx,
            tokens: Mutex::new(BTreeMap::new()),
        };
        (Arc::new(agent), rx)
    }

    /// Runs `f` on the local state under the lock.
    /// Wakes the sync loop and every blocked agent read after a change to the local state.
    fn mark_changed(&self) {
        self.changed.notify_one();
        self.generation.send_modify(|g| *g += 1);
    }

    /// Moves on every change to the local state (hash-based blocking reads wait on it).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn with_state<T>(&self, f: impl FnOnce(&mut LocalState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn node(&self) -> NodeInfo {
        self.with_state(|s| s.node().clone())
    }

    /// `Stats.agent` of `/v1/agent/self`: what this agent holds.
    pub fn stats(&self) -> serde_json::Value {
        let (services, checks, ttls) = self
            .with_state(|s| (s.services().count(), s.checks().count(), s.checks().filter(|c| c.ttl.is_some()).count()));
        serde_json::json!({
            "check_monitors": "0",
            "check_ttls": ttls.to_string(),
            "checks": checks.to_string(),
            "services": services.to_string(),
        })
    }

    pub fn token(&self, kind: &str) -> Option<String> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(kind).cloned().filter(|t| !t.is_empty())
    }

    pub fn set_token(&self, kind: &str, token: String) {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(kind.to_string(), token);
    }

    /// This agent's node name and services (name, tags), against which events' filters match.
    pub fn for_events(&self) -> (String, crate::gossip::events::LocalServices) {
        self.with_state(|s| {
            (s.node().name.clone(), s.services().map(|svc| (svc.service.clone(), svc.tags.clone())).collect())
        })
    }

    /// Registers a service with its checks, and its sidecar proxy when `Connect.SidecarService`
    /// asks for one.
    pub fn register_service(&self, r: &AgentServiceRegistration) -> Result<(), ApiError> {
        let datacenter = self.node().datacenter;
        let (service, plans) = plan_service(r, &datacenter, self.enable_script_checks).map_err(ApiError::BadRequest)?;
        let taken: Vec<u16> =
            self.with_state(|s| s.services().filter(|x| x.id != service.id).map(|x| x.port).collect());
        let sidecar = sidecar_registration(r, &service.id, &taken).map_err(ApiError::BadRequest)?;
        let sidecar = match sidecar {
            Some(sc) => Some(plan_service(&sc, &datacenter, self.enable_script_checks).map_err(ApiError::BadRequest)?),
            None => None,
        };
        for (service, plans) in std::iter::once((service, plans)).chain(sidecar) {
            let locals = plans.iter().map(local_of).collect();
            let (stale, kept) = self.with_state(|s| s.add_service(service, locals, Instant::now()));
            self.stop_runners(&stale);
            for p in plans.into_iter().filter(|p| !kept.contains(&p.check.check_id)) {
                self.stop_runners(std::slice::from_ref(&p.check.check_id));
                self.start_runner(p);
            }
        }
        self.mark_changed();
        Ok(())
    }

    /// Deregisters a service, its checks, and the sidecar proxy registered with it.
    pub fn deregister_service(&self, id: &str) -> Result<(), ApiError> {
        let checks = self.with_state(|s| s.remove_service(id)).ok_or_else(|| unknown_service(id))?;
        self.stop_runners(&checks);
        let sidecar = format!("{id}-sidecar-proxy");
        let owned = self.with_state(|s| {
            s.service(&sidecar).and_then(|x| x.proxy.as_ref()).is_some_and(|p| p.destination_service_id == id)
        });
        if owned {
            if let Some(checks) = self.with_state(|s| s.remove_service(&sidecar)) {
                self.stop_runners(&checks);
            }
        }
        self.mark_changed();
        Ok(())
    }

    pub fn register_check(&self, def: &AgentCheckRegistration) -> Result<(), ApiError> {
        let id = def.id_or_name().ok_or_else(|| ApiError::BadRequest("Missing check name".into()))?;
        let service = match def.service_id.as_deref().filter(|s| !s.is_empty()) {
            Some(sid) => Some(
                self.with_state(|s| s.service(sid).cloned())
                    .ok_or_else(|| ApiError::BadRequest(format!("ServiceID {sid:?} does not exist")))?,
            ),
            None => None,
        };
        let of = service.as_ref().map(|s| OfService { id: &s.id, name: &s.service, tags: &s.tags });
        let plan = plan::plan_check(def, id.clone(), of, self.enable_script_checks).map_err(ApiError::BadRequest)?;
        let kept = self.with_state(|s| s.add_check(local_of(&plan), Instant::now()));
        if !kept {
            self.stop_runners(std::slice::from_ref(&id));
            self.start_runner(plan);
        }
        self.mark_changed();
        Ok(())
    }

    pub fn deregister_check(&self, id: &str) -> Result<(), ApiError> {
        if !self.with_state(|s| s.remove_check(id)) {
            return Err(ApiError::NotFound(format!(
                "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
            )));
        }
        self.stop_runners(&[id.to_string()]);
        self.mark_changed();
        Ok(())
    }

    pub fn update_ttl(&self, id: &str, status: HealthStatus, output: String) -> Result<(), ApiError> {
        let output = crate::checks::cap_output(output);
        // Consul answers 500 for both; a 400 with its message is the better answer to a client's mistake.
        self.with_state(|s| s.update_ttl(id, status, output, Instant::now())).map_err(|e| match e {
            TtlError::Unknown | TtlError::NotTtl => {
                ApiError::BadRequest(format!("CheckID {id:?} does not have associated TTL"))
            }
        })?;
        self.mark_changed();
        Ok(())
    }

    /// Puts a service (`Some(id)`) or the whole node in maintenance, or takes it out: a critical
    /// check of type `maintenance`, so it leaves every `?passing` answer, as Consul's agent does.
    pub fn set_maintenance(
        &self,
        service_id: Option<&str>,
        enable: bool,
        reason: Option<&str>,
    ) -> Result<(), ApiError> {
        let (check_id, name, what) = match service_id {
            Some(id) => {
                if self.with_state(|s| s.service(id).is_none()) {
                    return Err(ApiError::NotFound(format!("Unknown service ID {id:?}")));
                }
                (format!("_service_maintenance:{id}"), "Service Maintenance Mode", "service")
            }
            None => ("_node_maintenance".to_string(), "Node Maintenance Mode", "node"),
        };
        if !enable {
            if self.with_state(|s| s.remove_check(&check_id)) {
                self.mark_changed();
            }
            return Ok(());
        }
        let notes = reason.filter(|r| !r.is_empty()).map(str::to_string).unwrap_or_else(|| {
            format!(
                "Maintenance mode is enabled for this {what}, but no reason was provided. This is a default message."
            )
        });
        let service_name = service_id.and_then(|id| self.with_state(|s| s.service(id).map(|x| x.service.clone())));
        let check = HealthCheck {
            check_id: check_id.clone(),
            name: name.into(),
            status: HealthStatus::Critical,
            notes,
            service_id: service_id.unwrap_or_default().to_string(),
            service_name: service_name.unwrap_or_default(),
            check_type: "maintenance".into(),
            ..Default::default()
        };
        let local = LocalCheck {
            check,
            ttl: None,
            ttl_deadline: None,
            deregister_after: None,
            critical_since: None,
            definition: Default::default(),
        };
        self.with_state(|s| s.add_check(local, Instant::now()));
        self.mark_changed();
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
                        self.mark_changed();
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
                        self.mark_changed();
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
        crate::api::json::decode(json.as_bytes()).expect("decode")
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
    fn a_sidecar_service_gets_consul_defaults() {
        let r = def(r#"{"name":"web","port":8080,"tags":["v1"],"connect":{"sidecar_service":{}}}"#);
        let sc = sidecar_registration(&r, "web-1", &[21000]).unwrap().expect("a sidecar");
        assert_eq!(sc.id.as_deref(), Some("web-1-sidecar-proxy"));
        assert_eq!(sc.name, "web-sidecar-proxy");
        assert_eq!(sc.kind.as_deref(), Some("connect-proxy"));
        assert_eq!(sc.port, Some(21001), "the first free port of Consul's range");
        assert_eq!(sc.tags, Some(vec!["v1".to_string()]), "the parent's tags");
        let proxy = sc.proxy.clone().unwrap();
        assert_eq!((proxy.destination_service_name.as_str(), proxy.destination_service_id.as_str()), ("web", "web-1"));
        assert_eq!((proxy.local_service_address.as_str(), proxy.local_service_port), ("127.0.0.1", 8080));
        assert_eq!(sc.checks.unwrap()[0].tcp.as_deref(), Some("127.0.0.1:21001"));
        assert!(sidecar_registration(&def(r#"{"name":"web"}"#), "web", &[]).unwrap().is_none());
        let nested = def(r#"{"name":"w","connect":{"sidecar_service":{"connect":{"sidecar_service":{}}}}}"#);
        assert!(sidecar_registration(&nested, "w", &[]).is_err());
        let proxy_without_destination = def(r#"{"name":"p","kind":"connect-proxy","port":21000}"#);
        assert!(plan_service(&proxy_without_destination, "dc1", false).unwrap_err().contains("DestinationServiceName"));
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
