//! `/v1/agent/*`: what a server's own agent answers, so the dev server is a drop-in for
//! `consul agent -dev`. Agent services and checks live in the catalog under this server's node;
//! TTL checks are timed by this server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use warp::http::{HeaderValue, Method, StatusCode};

use super::acl::{authorize, mark_filtered, require};
use super::agent_admin::my_address;
use super::{json, ok_json, ApiError, ApiResult, Req};
use crate::acl::{Access, Authorizer, Resource};
use crate::api::{
    AgentCheckRegistration, AgentService, AgentServiceHealth, AgentServiceRegistration, CheckRegistration, HealthCheck,
    HealthStatus, NodeService, RegisterRequest, ServiceRegistration,
};
use crate::app::{now_ms, App, TtlCheck};
use crate::checks::plan::{self, CheckPlan, OfService};
use crate::state::{Command, CommandResult};

pub async fn handle(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    let parts: Vec<&str> = tail.splitn(4, '/').collect();
    let m = &req.method;
    let a = authorize(app, req)?;
    let me = app.me.name.clone();
    if let Some(answer) = super::agent_admin::handle(app, &a, req, &parts).await {
        return answer;
    }
    match (parts.as_slice(), m) {
        (["services"], &Method::GET) => {
            let filter = super::catalog::parse_filter(req)?;
            let all = local_services(app);
            let before = all.len();
            let kept: std::collections::BTreeMap<_, _> = all
                .into_iter()
                .filter(|(_, s)| a.allows(Resource::Service, &s.service, Access::Read))
                .filter(|(_, s)| filter.as_ref().is_none_or(|f| f.matches(s)))
                .collect();
            let f = kept.len() != before && filter.is_none();
            Ok(mark_filtered(ok_json(&kept), f))
        }
        (["service", "maintenance", id], &Method::PUT) => service_maintenance(app, &a, req, id).await,
        (["maintenance"], &Method::PUT) => node_maintenance(app, &a, req).await,
        (["service", id], &Method::GET) if *id != "register" => local_service(app, &a, id),
        (["checks"], &Method::GET) => {
            let filter = super::catalog::parse_filter(req)?;
            let all = local_checks(app);
            let before = all.len();
            let kept: std::collections::BTreeMap<_, _> = all
                .into_iter()
                .filter(|(_, c)| may_touch_check(&a, &me, c, Access::Read))
                .filter(|(_, c)| filter.as_ref().is_none_or(|f| f.matches(c)))
                .collect();
            let f = kept.len() != before && filter.is_none();
            Ok(mark_filtered(ok_json(&kept), f))
        }
        (["metrics"], &Method::GET) => {
            require(&a, Resource::Agent, &me, Access::Read)?;
            Ok(metrics(app))
        }
        (["service", "register"], &Method::PUT) => register_service(app, &a, req).await,
        (["service", "deregister", id], &Method::PUT) => deregister_service(app, &a, id).await,
        (["check", "register"], &Method::PUT) => register_check(app, &a, req).await,
        (["check", "deregister", id], &Method::PUT) => {
            require_check_write(app, &a, id)?;
            deregister_check(app, id).await
        }
        (["check", verb @ ("pass" | "warn" | "fail"), id], &Method::PUT) => {
            let status = match *verb {
                "pass" => HealthStatus::Passing,
                "warn" => HealthStatus::Warning,
                _ => HealthStatus::Critical,
            };
            require_check_write(app, &a, id)?;
            update_ttl(app, id, status, req.get("note").unwrap_or("").to_string()).await
        }
        (["check", "update", id], &Method::PUT) => {
            let u: crate::api::CheckUpdate = super::json::decode(&req.body)?;
            require_check_write(app, &a, id)?;
            let status = HealthStatus::parse(u.status.as_deref().unwrap_or("")).ok_or_else(|| {
                ApiError::BadRequest(format!("Invalid check status: {:?}", u.status.unwrap_or_default()))
            })?;
            update_ttl(app, id, status, u.output.unwrap_or_default()).await
        }
        (["health", "service", "name", name], &Method::GET) => {
            require(&a, Resource::Service, name, Access::Read)?;
            service_health_by_name(app, name)
        }
        (["health", "service", "id", id], &Method::GET) => service_health_by_id(app, &a, id),
        (
            ["services"]
            | ["maintenance"]
            | ["checks"]
            | ["metrics"]
            | ["service", ..]
            | ["check", ..]
            | ["health", ..],
            m,
        ) => Err(ApiError::MethodNotAllowed(m.clone())),
        _ => Err(ApiError::NotFound(String::new())),
    }
}

fn to_agent_service(app: &App, s: &NodeService) -> AgentService {
    AgentService {
        id: s.id.clone(),
        service: s.service.clone(),
        tags: s.tags.clone(),
        meta: s.meta.clone().unwrap_or_default(),
        port: s.port,
        address: s.address.clone(),
        socket_path: String::new(),
        tagged_addresses: s.tagged_addresses.clone(),
        weights: s.weights,
        enable_tag_override: s.enable_tag_override,
        datacenter: app.config.datacenter.clone(),
    }
}

fn local_service_list(app: &App) -> Vec<NodeService> {
    let mine = app.agent_services.lock().unwrap_or_else(|p| p.into_inner()).clone();
    app.sm.read(|s| s.node_services(&app.me.name)).into_iter().filter(|s| mine.contains(&s.id)).collect()
}

fn local_services(app: &App) -> std::collections::BTreeMap<String, AgentService> {
    local_service_list(app).iter().map(|s| (s.id.clone(), to_agent_service(app, s))).collect()
}

fn local_service(app: &App, a: &Authorizer, id: &str) -> ApiResult {
    let svc = local_service_list(app)
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("unknown service ID: {id}")))?;
    require(a, Resource::Service, &svc.service, Access::Read)?;
    Ok(ok_json(&to_agent_service(app, &svc)))
}

/// A check belongs to its service (service:ACCESS) or, node-level, to this agent's node.
fn may_touch_check(a: &Authorizer, me: &str, c: &HealthCheck, access: Access) -> bool {
    if c.service_name.is_empty() {
        a.allows(Resource::Node, me, access)
    } else {
        a.allows(Resource::Service, &c.service_name, access)
    }
}

fn require_check_write(app: &App, a: &Authorizer, id: &str) -> Result<(), ApiError> {
    match local_check_list(app).into_iter().find(|c| c.check_id == id) {
        Some(c) if !may_touch_check(a, &app.me.name, &c, Access::Write) => {
            Err(super::acl::denied("check", id, Access::Write))
        }
        _ => Ok(()),
    }
}

fn local_check_list(app: &App) -> Vec<HealthCheck> {
    let mine = app.agent_checks.lock().unwrap_or_else(|p| p.into_inner()).clone();
    app.sm.read(|s| s.node_checks(&app.me.name).1).into_iter().filter(|c| mine.contains(&c.check_id)).collect()
}

fn local_checks(app: &App) -> std::collections::BTreeMap<String, HealthCheck> {
    local_check_list(app).into_iter().map(|c| (c.check_id.clone(), c)).collect()
}

fn metrics(app: &App) -> super::Resp {
    app.metrics.watchers.set(app.sm.hub().watchers() as i64);
    let mut r = warp::http::Response::new(bytes::Bytes::from(app.metrics.render()));
    r.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

/// The catalog registration of a planned check. A check re-registered unchanged keeps the status
/// and output it has (a client re-registering its service on every start must not reset it).
fn registration_of(app: &App, plan: &CheckPlan) -> CheckRegistration {
    let c = &plan.check;
    let existing = app.sm.read(|s| s.check(&app.me.name, &c.check_id).cloned());
    let unchanged = existing.as_ref().is_some_and(|e| {
        (&e.name, &e.check_type, &e.interval, &e.timeout, &e.notes, &e.service_id)
            == (&c.name, &c.check_type, &c.interval, &c.timeout, &c.notes, &c.service_id)
    });
    let (status, output) = match existing.filter(|_| unchanged) {
        Some(e) => (e.status, Some(e.output)),
        None => (c.status, None),
    };
    CheckRegistration {
        check_id: Some(c.check_id.clone()),
        name: Some(c.name.clone()),
        status: Some(status),
        notes: Some(c.notes.clone()).filter(|n| !n.is_empty()),
        output,
        service_id: Some(c.service_id.clone()).filter(|s| !s.is_empty()),
        check_type: Some(c.check_type.clone()),
        interval: Some(c.interval.clone()).filter(|i| !i.is_empty()),
        timeout: Some(c.timeout.clone()).filter(|t| !t.is_empty()),
        ..Default::default()
    }
}

/// After a check is in the catalog: arm its TTL or start its runner (HTTP, TCP, gRPC, script),
/// the same runners the sidecar uses. A runner that cannot start makes the check critical.
async fn start_check(app: &App, plan: CheckPlan) {
    let id = plan.check.check_id.clone();
    stop_runner(app, &id);
    arm_ttl(app, &id, plan.ttl);
    app.agent_checks.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
    let Some(probe) = &plan.probe else { return };
    match plan::start(probe, plan.schedule, plan.timeout, app.config.enable_script_checks, app.check_updates.clone()) {
        Ok(stop) => {
            app.check_runners.lock().unwrap_or_else(|p| p.into_inner()).insert(id, stop);
        }
        Err(e) => {
            let cmd = Command::CheckStatus {
                node: app.me.name.clone(),
                check_id: id,
                status: HealthStatus::Critical,
                output: format!("check cannot run: {e:#}"),
                now_ms: now_ms(),
            };
            let _ = app.propose(cmd).await;
        }
    }
}

fn stop_runner(app: &App, id: &str) {
    if let Some(stop) = app.check_runners.lock().unwrap_or_else(|p| p.into_inner()).remove(id) {
        let _ = stop.send(true);
    }
}

async fn write(app: &App, cmd: Command) -> Result<(), ApiError> {
    match app.propose(cmd).await?.1 {
        CommandResult::Rejected(msg) => Err(ApiError::BadRequest(msg)),
        _ => Ok(()),
    }
}

fn arm_ttl(app: &App, check_id: &str, ttl: Option<Duration>) {
    let mut ttls = app.ttl_checks.lock().unwrap_or_else(|p| p.into_inner());
    match ttl {
        Some(ttl) => {
            ttls.insert(check_id.to_string(), TtlCheck { ttl, deadline: Instant::now() + ttl });
        }
        None => {
            ttls.remove(check_id);
        }
    }
}

async fn register_service(app: &Arc<App>, a: &Authorizer, req: &Req) -> ApiResult {
    let r: AgentServiceRegistration = super::json::decode(&req.body)?;
    if r.name.is_empty() {
        return Err(ApiError::BadRequest("Missing service name".into()));
    }
    require(a, Resource::Service, &r.name, Access::Write)?;
    let id = r.id.clone().filter(|i| !i.is_empty()).unwrap_or(r.name.clone());
    let tags = r.tags.clone().unwrap_or_default();
    let of = OfService { id: &id, name: &r.name, tags: &tags };
    let plans = plan::service_checks(&r, of, app.config.enable_script_checks).map_err(ApiError::BadRequest)?;
    let request = RegisterRequest {
        node: Some(app.me.name.clone()),
        address: Some(my_address(app)),
        skip_node_update: true,
        service: Some(ServiceRegistration {
            id: Some(id.clone()),
            service: r.name.clone(),
            tags: r.tags,
            address: r.address,
            tagged_addresses: r.tagged_addresses,
            meta: r.meta,
            port: r.port,
            weights: r.weights,
            enable_tag_override: r.enable_tag_override,
        }),
        checks: Some(plans.iter().map(|p| registration_of(app, p)).collect()),
        ..Default::default()
    };
    write(app, Command::Register { request, now_ms: now_ms() }).await?;
    app.agent_services.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
    for p in plans {
        start_check(app, p).await;
    }
    Ok(super::text(StatusCode::OK, ""))
}

async fn deregister_service(app: &Arc<App>, a: &Authorizer, id: &str) -> ApiResult {
    if !app.agent_services.lock().unwrap_or_else(|p| p.into_inner()).contains(id) {
        return Err(ApiError::NotFound(format!(
            "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
        )));
    }
    if let Some(svc) = local_service_list(app).into_iter().find(|s| s.id == id) {
        require(a, Resource::Service, &svc.service, Access::Write)?;
    }
    let checks: Vec<String> =
        local_check_list(app).into_iter().filter(|c| c.service_id == id).map(|c| c.check_id).collect();
    let request = crate::api::DeregisterRequest {
        node: Some(app.me.name.clone()),
        service_id: Some(id.to_string()),
        ..Default::default()
    };
    write(app, Command::Deregister { request, now_ms: now_ms() }).await?;
    app.agent_services.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    for c in checks {
        arm_ttl(app, &c, None);
        stop_runner(app, &c);
        app.agent_checks.lock().unwrap_or_else(|p| p.into_inner()).remove(&c);
    }
    Ok(super::text(StatusCode::OK, ""))
}

async fn register_check(app: &Arc<App>, a: &Authorizer, req: &Req) -> ApiResult {
    let def: AgentCheckRegistration = super::json::decode(&req.body)?;
    let id = def.id_or_name().ok_or_else(|| ApiError::BadRequest("Missing check name".into()))?;
    let service = match def.service_id.as_deref().filter(|s| !s.is_empty()) {
        Some(sid) => {
            let svc = local_service_list(app)
                .into_iter()
                .find(|s| s.id == sid)
                .ok_or_else(|| ApiError::BadRequest(format!("ServiceID {sid:?} does not exist")))?;
            require(a, Resource::Service, &svc.service, Access::Write)?;
            Some(svc)
        }
        None => {
            require(a, Resource::Node, &app.me.name, Access::Write)?;
            None
        }
    };
    let of = service.as_ref().map(|s| OfService { id: &s.id, name: &s.service, tags: &s.tags });
    let plan = plan::plan_check(&def, id, of, app.config.enable_script_checks).map_err(ApiError::BadRequest)?;
    let request = RegisterRequest {
        node: Some(app.me.name.clone()),
        address: Some(my_address(app)),
        skip_node_update: true,
        check: Some(registration_of(app, &plan)),
        ..Default::default()
    };
    write(app, Command::Register { request, now_ms: now_ms() }).await?;
    start_check(app, plan).await;
    Ok(super::text(StatusCode::OK, ""))
}

async fn deregister_check(app: &Arc<App>, id: &str) -> ApiResult {
    if !app.agent_checks.lock().unwrap_or_else(|p| p.into_inner()).contains(id) {
        return Err(ApiError::NotFound(format!("Unknown check ID {id:?}")));
    }
    let request = crate::api::DeregisterRequest {
        node: Some(app.me.name.clone()),
        check_id: Some(id.to_string()),
        ..Default::default()
    };
    write(app, Command::Deregister { request, now_ms: now_ms() }).await?;
    arm_ttl(app, id, None);
    stop_runner(app, id);
    app.agent_checks.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    Ok(super::text(StatusCode::OK, ""))
}

async fn update_ttl(app: &Arc<App>, id: &str, status: HealthStatus, output: String) -> ApiResult {
    let ttl = app.ttl_checks.lock().unwrap_or_else(|p| p.into_inner()).get(id).map(|c| c.ttl);
    let Some(ttl) = ttl else {
        // Consul answers 500; a 400 with its message is the better answer to a client's mistake.
        return Err(ApiError::BadRequest(format!("CheckID {id:?} does not have associated TTL")));
    };
    let output = crate::api::cap_check_output(output);
    arm_ttl(app, id, Some(ttl));
    let cmd =
        Command::CheckStatus { node: app.me.name.clone(), check_id: id.to_string(), status, output, now_ms: now_ms() };
    write(app, cmd).await?;
    Ok(super::text(StatusCode::OK, ""))
}

fn health_status_code(s: HealthStatus) -> StatusCode {
    StatusCode::from_u16(crate::api::agent_health_http_status(s)).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

fn service_health(app: &App, svc: &NodeService) -> AgentServiceHealth {
    let checks: Vec<HealthCheck> = app
        .sm
        .read(|s| s.node_checks(&app.me.name).1)
        .into_iter()
        // Only the service's own checks, as Consul's agent answers.
        .filter(|c| c.service_id == svc.id)
        .collect();
    AgentServiceHealth {
        aggregated_status: crate::api::worst_status(checks.iter().map(|c| c.status)),
        service: to_agent_service(app, svc),
        checks,
    }
}

fn service_health_by_name(app: &App, name: &str) -> ApiResult {
    let list: Vec<AgentServiceHealth> =
        local_service_list(app).iter().filter(|s| s.service == name).map(|s| service_health(app, s)).collect();
    if list.is_empty() {
        return Err(ApiError::NotFound(format!("ServiceName {name} Not Found")));
    }
    let worst = crate::api::worst_status(list.iter().map(|h| h.aggregated_status));
    Ok(json(health_status_code(worst), &list))
}

fn service_health_by_id(app: &App, a: &Authorizer, id: &str) -> ApiResult {
    let svc = local_service_list(app)
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("ServiceId {id} not found")))?;
    require(a, Resource::Service, &svc.service, Access::Read)?;
    let h = service_health(app, &svc);
    Ok(json(health_status_code(h.aggregated_status), &h))
}

/// `?enable=` of the maintenance endpoints: required, a boolean.
fn maintenance_enable(req: &Req) -> Result<bool, ApiError> {
    match req.get("enable") {
        None | Some("") => Err(ApiError::BadRequest("Missing value for enable".into())),
        Some(v) => v.parse::<bool>().map_err(|_| ApiError::BadRequest(format!("Invalid value for enable: {v:?}"))),
    }
}

/// Puts a service or the whole node in maintenance (a critical check of type `maintenance`, so it
/// leaves every `?passing` answer) or takes it out, as Consul's agent does.
async fn set_maintenance(
    app: &Arc<App>,
    check_id: String,
    name: &str,
    service_id: Option<&str>,
    enable: bool,
    notes: String,
) -> ApiResult {
    let present = app.agent_checks.lock().unwrap_or_else(|p| p.into_inner()).contains(&check_id);
    if !enable {
        if present {
            deregister_check(app, &check_id).await?;
        }
        return Ok(super::text(StatusCode::OK, ""));
    }
    let check = CheckRegistration {
        check_id: Some(check_id.clone()),
        name: Some(name.to_string()),
        status: Some(HealthStatus::Critical),
        notes: Some(notes),
        service_id: service_id.map(str::to_string),
        check_type: Some("maintenance".into()),
        ..Default::default()
    };
    let request = RegisterRequest {
        node: Some(app.me.name.clone()),
        address: Some(my_address(app)),
        skip_node_update: true,
        check: Some(check),
        ..Default::default()
    };
    write(app, Command::Register { request, now_ms: now_ms() }).await?;
    app.agent_checks.lock().unwrap_or_else(|p| p.into_inner()).insert(check_id);
    Ok(super::text(StatusCode::OK, ""))
}

async fn service_maintenance(app: &Arc<App>, a: &Authorizer, req: &Req, id: &str) -> ApiResult {
    let enable = maintenance_enable(req)?;
    let svc = local_service_list(app)
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("Unknown service ID {id:?}")))?;
    require(a, Resource::Service, &svc.service, Access::Write)?;
    let notes = req.get("reason").filter(|r| !r.is_empty()).map(str::to_string).unwrap_or_else(|| {
        "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.".into()
    });
    set_maintenance(app, format!("_service_maintenance:{id}"), "Service Maintenance Mode", Some(id), enable, notes)
        .await
}

async fn node_maintenance(app: &Arc<App>, a: &Authorizer, req: &Req) -> ApiResult {
    let enable = maintenance_enable(req)?;
    require(a, Resource::Node, &app.me.name, Access::Write)?;
    let notes = req.get("reason").filter(|r| !r.is_empty()).map(str::to_string).unwrap_or_else(|| {
        "Maintenance mode is enabled for this node, but no reason was provided. This is a default message.".into()
    });
    set_maintenance(app, "_node_maintenance".into(), "Node Maintenance Mode", None, enable, notes).await
}
