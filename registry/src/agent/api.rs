//! `/v1/agent/*` as Consul's agent answers it, one implementation for every agent: a server's
//! (`roster server`, `roster dev`) and a pod's sidecar. What differs between them (who the members
//! are, how the process leaves, how tokens resolve, where writes go) is the [`Host`]'s.

use std::collections::BTreeMap;

use warp::http::{HeaderValue, Method, StatusCode};

use super::sync::{self, Catalog};
use super::{service_health, Agent};
use crate::acl::{Access, Authorizer, Global, Resource};
use crate::api::{AgentMember, AgentService, AgentServiceHealth, HealthCheck, HealthStatus};
use crate::web::{denied, json, mark_filtered, ok_json, parse_filter, require, text, ApiError, ApiResult, Req, Resp};

/// What an agent's host provides.
#[async_trait::async_trait]
pub trait Host: Send + Sync {
    fn agent(&self) -> &Agent;
    /// Where the agent's changes are written.
    fn catalog(&self) -> &dyn Catalog;
    /// The request's ACL authorizer (its token, else the agent's default token).
    async fn authorize(&self, req: &Req) -> Result<Authorizer, ApiError>;
    async fn acl_enabled(&self) -> bool;
    /// `/v1/agent/self`.
    async fn self_info(&self) -> serde_json::Value;
    /// This agent's network coordinate (the origin until its gossip has measured round trips).
    fn coordinate(&self) -> crate::api::Coordinate;
    /// `/v1/agent/members` (`wan`: the WAN pool, members named `node.dc`).
    async fn members(&self, wan: bool) -> Vec<AgentMember>;
    /// Leaves the pool and stops, after the answer has gone out.
    fn leave(&self);
    /// Consul's force-leave of a failed member.
    async fn force_leave(&self, node: &str, prune: bool) -> Result<(), ApiError>;
    /// Reads the configuration file again.
    fn reload(&self) -> Result<(), ApiError>;
    /// Prometheus text of the agent's metrics.
    fn prometheus(&self) -> String;
}

/// The token kinds `/v1/agent/token/:kind` sets (Consul's names, old and new).
const TOKEN_KINDS: &[&str] =
    &["default", "agent", "agent_recovery", "agent_master", "replication", "config_file_service_registration"];

/// `GET /v1/agent/service/:id`, with Consul's hash-based blocking: the answer carries
/// `X-Consul-ContentHash`; given `?hash=` equal to the current one, it waits (`?wait=`, 5 min by
/// default, 10 at most) until the service's definition changes.
async fn service_blocking(host: &dyn Host, req: &Req, id: &str) -> ApiResult {
    let agent = host.agent();
    let wait = match req.get("wait") {
        None | Some("") => std::time::Duration::from_secs(300),
        Some(w) => crate::api::parse_go_duration(w)
            .map_err(|e| ApiError::BadRequest(format!("Invalid wait time: {e}")))?
            .min(std::time::Duration::from_secs(600)),
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = agent.changes();
    loop {
        changes.borrow_and_update();
        let a = host.authorize(req).await?;
        let svc = agent
            .with_state(|s| s.service(id).cloned())
            .ok_or_else(|| ApiError::NotFound(format!("unknown service ID: {id}")))?;
        require(&a, Resource::Service, &svc.service, Access::Read)?;
        let body = serde_json::to_vec(&svc).map_err(|e| ApiError::Internal(e.to_string()))?;
        let hash = content_hash(&body);
        if req.get("hash") != Some(hash.as_str()) || tokio::time::Instant::now() >= deadline {
            let mut r = json_bytes(body);
            if let Ok(v) = HeaderValue::from_str(&hash) {
                r.headers_mut().insert("x-consul-contenthash", v);
            }
            return Ok(r);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return Err(ApiError::Internal("agent stopped".into())) },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// A short, stable digest of an answer (Consul's content hash is 16 hex digits too).
fn content_hash(body: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn json_bytes(body: Vec<u8>) -> Resp {
    let mut r = warp::http::Response::new(bytes::Bytes::from(body));
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    r
}

/// `GET /v1/agent/monitor`, served beside [`handle`] because its answer is a stream: the agent's
/// log lines from now on, until the client goes.
pub async fn monitor(host: &dyn Host, req: &Req) -> Result<warp::reply::Response, ApiError> {
    let a = host.authorize(req).await?;
    require(&a, Resource::Agent, &host.agent().node().name, Access::Read)?;
    let name = req.get("loglevel").unwrap_or("info");
    let level = super::monitor::parse_level(name)
        .ok_or_else(|| ApiError::BadRequest(format!("Bad request: Unknown log level: {name}")))?;
    use warp::Reply;
    let mut r = warp::reply::stream(super::monitor::lines(level, req.has("logjson"))).into_response();
    r.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
    Ok(r)
}

/// The warp route of `GET /v1/agent/monitor` for a host; put it before the host's other routes.
pub fn monitor_route<H: Host + 'static>(
    host: std::sync::Arc<H>,
) -> impl warp::Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    use warp::{Filter, Reply};
    warp::get()
        .and(warp::path!("v1" / "agent" / "monitor"))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .then(move |raw_query: String, headers: warp::http::HeaderMap| {
            let host = host.clone();
            async move {
                let req = Req {
                    method: Method::GET,
                    path: "/v1/agent/monitor".into(),
                    query: url::form_urlencoded::parse(raw_query.as_bytes()).into_owned().collect(),
                    raw_query,
                    headers,
                    body: bytes::Bytes::new(),
                };
                match monitor(host.as_ref(), &req).await {
                    Ok(r) => r,
                    Err(e) => e.into_resp().into_response(),
                }
            }
        })
}

/// Answers `/v1/agent/<tail>`.
pub async fn handle(host: &dyn Host, req: &Req, tail: &str) -> ApiResult {
    let parts: Vec<&str> = tail.splitn(4, '/').collect();
    let a = host.authorize(req).await?;
    let agent = host.agent();
    let me = agent.node().name;
    let (get, put) = (req.method == Method::GET, req.method == Method::PUT);
    match parts.as_slice() {
        ["self"] if get => {
            require(&a, Resource::Agent, &me, Access::Read)?;
            let mut info = host.self_info().await;
            if let Some(map) = info.as_object_mut() {
                map.insert("Coord".into(), serde_json::json!(host.coordinate()));
            }
            Ok(ok_json(&info))
        }
        ["members"] if get => {
            let all = host.members(req.has("wan")).await;
            let before = all.len();
            let kept: Vec<AgentMember> =
                all.into_iter().filter(|m| a.allows(Resource::Node, &m.name, Access::Read)).collect();
            let filtered = kept.len() != before;
            Ok(mark_filtered(ok_json(&kept), filtered))
        }
        ["leave"] if put => {
            require(&a, Resource::Agent, &me, Access::Write)?;
            host.leave();
            Ok(text(StatusCode::OK, ""))
        }
        ["force-leave", node] if put => {
            if !a.allows_global(Global::Operator, Access::Write) {
                return Err(denied("operator", "", Access::Write));
            }
            host.force_leave(node, req.has("prune")).await?;
            Ok(text(StatusCode::OK, ""))
        }
        ["reload"] if put => {
            require(&a, Resource::Agent, &me, Access::Write)?;
            host.reload()?;
            Ok(text(StatusCode::OK, ""))
        }
        ["token", kind] if put => set_token(host, &a, kind, req).await,
        ["metrics"] if get => {
            require(&a, Resource::Agent, &me, Access::Read)?;
            Ok(metrics(host, req))
        }
        ["services"] if get => {
            let filter = parse_filter(req)?;
            let all: Vec<AgentService> = agent.with_state(|s| s.services().cloned().collect());
            let before = all.len();
            let kept: BTreeMap<String, AgentService> = all
                .into_iter()
                .filter(|s| a.allows(Resource::Service, &s.service, Access::Read))
                .filter(|s| filter.as_ref().is_none_or(|f| f.matches(s)))
                .map(|s| (s.id.clone(), s))
                .collect();
            let filtered = kept.len() != before && filter.is_none();
            Ok(mark_filtered(ok_json(&kept), filtered))
        }
        ["service", "register"] if put => {
            let r: crate::api::AgentServiceRegistration = crate::web::json::decode(&req.body)?;
            require(&a, Resource::Service, &r.name, Access::Write)?;
            if let Some(sc) = r.connect.as_ref().and_then(|c| c.sidecar_service.as_ref()) {
                let name = if sc.name.is_empty() { format!("{}-sidecar-proxy", r.name) } else { sc.name.clone() };
                require(&a, Resource::Service, &name, Access::Write)?;
            }
            agent.register_service(&r)?;
            changed(host).await
        }
        ["service", "deregister", id] if put => {
            let svc = agent.with_state(|s| s.service(id).cloned()).ok_or_else(|| super::unknown_service(id))?;
            require(&a, Resource::Service, &svc.service, Access::Write)?;
            agent.deregister_service(id)?;
            changed(host).await
        }
        ["service", "maintenance", id] if put => {
            let enable = maintenance_enable(req)?;
            let svc = agent
                .with_state(|s| s.service(id).cloned())
                .ok_or_else(|| ApiError::NotFound(format!("Unknown service ID {id:?}")))?;
            require(&a, Resource::Service, &svc.service, Access::Write)?;
            agent.set_maintenance(Some(id), enable, req.get("reason"))?;
            changed(host).await
        }
        ["maintenance"] if put => {
            let enable = maintenance_enable(req)?;
            require(&a, Resource::Node, &me, Access::Write)?;
            agent.set_maintenance(None, enable, req.get("reason"))?;
            changed(host).await
        }
        ["service", id] if get => service_blocking(host, req, id).await,
        ["checks"] if get => {
            let filter = parse_filter(req)?;
            let all: Vec<HealthCheck> = agent.with_state(|s| s.checks().map(|c| c.check.clone()).collect());
            let before = all.len();
            let kept: BTreeMap<String, HealthCheck> = all
                .into_iter()
                .filter(|c| may_touch_check(&a, &me, c, Access::Read))
                .filter(|c| filter.as_ref().is_none_or(|f| f.matches(c)))
                .map(|c| (c.check_id.clone(), c))
                .collect();
            let filtered = kept.len() != before && filter.is_none();
            Ok(mark_filtered(ok_json(&kept), filtered))
        }
        ["check", "register"] if put => {
            let def: crate::api::AgentCheckRegistration = crate::web::json::decode(&req.body)?;
            match def.service_id.as_deref().filter(|s| !s.is_empty()) {
                Some(sid) => {
                    if let Some(svc) = agent.with_state(|s| s.service(sid).cloned()) {
                        require(&a, Resource::Service, &svc.service, Access::Write)?;
                    }
                }
                None => require(&a, Resource::Node, &me, Access::Write)?,
            }
            agent.register_check(&def)?;
            changed(host).await
        }
        ["check", "deregister", id] if put => {
            require_check_write(agent, &a, &me, id)?;
            agent.deregister_check(id)?;
            changed(host).await
        }
        ["check", verb @ ("pass" | "warn" | "fail"), id] if put => {
            let status = match *verb {
                "pass" => HealthStatus::Passing,
                "warn" => HealthStatus::Warning,
                _ => HealthStatus::Critical,
            };
            require_check_write(agent, &a, &me, id)?;
            agent.update_ttl(id, status, req.get("note").unwrap_or("").to_string())?;
            changed(host).await
        }
        ["check", "update", id] if put => {
            let u: crate::api::CheckUpdate = crate::web::json::decode(&req.body)?;
            require_check_write(agent, &a, &me, id)?;
            let status = HealthStatus::parse(u.status.as_deref().unwrap_or("")).ok_or_else(|| {
                ApiError::BadRequest(format!("Invalid check status: {:?}", u.status.clone().unwrap_or_default()))
            })?;
            agent.update_ttl(id, status, u.output.unwrap_or_default())?;
            changed(host).await
        }
        ["health", "service", "name", name] if get => {
            require(&a, Resource::Service, name, Access::Read)?;
            let list: Vec<AgentServiceHealth> = agent.with_state(|s| {
                s.services().filter(|svc| svc.service == *name).map(|svc| service_health(s, svc)).collect()
            });
            if list.is_empty() {
                return Err(ApiError::NotFound(format!("ServiceName {name} Not Found")));
            }
            let worst = crate::api::worst_status(list.iter().map(|h| h.aggregated_status));
            Ok(json(health_code(worst), &list))
        }
        ["health", "service", "id", id] if get => {
            let h = agent
                .with_state(|s| s.service(id).map(|svc| service_health(s, svc)))
                .ok_or_else(|| ApiError::NotFound(format!("ServiceId {id} not found")))?;
            require(&a, Resource::Service, &h.service.service, Access::Read)?;
            Ok(json(health_code(h.aggregated_status), &h))
        }
        ["self" | "members" | "monitor" | "metrics" | "services" | "checks" | "maintenance"]
        | ["leave" | "reload"]
        | ["force-leave" | "token", _]
        | ["service" | "check" | "health", ..] => Err(ApiError::MethodNotAllowed(req.method.clone())),
        _ => Err(ApiError::NotFound(String::new())),
    }
}

/// Consul's agent writes a change through to the servers before it answers (a failure is logged
/// and left to anti-entropy), so a client reads its own registration right away.
async fn changed(host: &dyn Host) -> ApiResult {
    if let Err(e) = sync::push(host.agent(), host.catalog()).await {
        tracing::warn!(error = %e, "could not sync a change now; anti-entropy retries");
    }
    Ok(text(StatusCode::OK, ""))
}

/// A check belongs to its service (service:ACCESS) or, node-level, to this agent's node.
fn may_touch_check(a: &Authorizer, me: &str, c: &HealthCheck, access: Access) -> bool {
    if c.service_name.is_empty() {
        a.allows(Resource::Node, me, access)
    } else {
        a.allows(Resource::Service, &c.service_name, access)
    }
}

fn require_check_write(agent: &Agent, a: &Authorizer, me: &str, id: &str) -> Result<(), ApiError> {
    match agent.with_state(|s| s.check(id).map(|c| c.check.clone())) {
        Some(c) if !may_touch_check(a, me, &c, Access::Write) => Err(denied("check", id, Access::Write)),
        _ => Ok(()),
    }
}

/// `?enable=` of the maintenance endpoints: required, a boolean.
fn maintenance_enable(req: &Req) -> Result<bool, ApiError> {
    match req.get("enable") {
        None | Some("") => Err(ApiError::BadRequest("Missing value for enable".into())),
        Some(v) => v.parse::<bool>().map_err(|_| ApiError::BadRequest(format!("Invalid value for enable: {v:?}"))),
    }
}

fn health_code(s: HealthStatus) -> StatusCode {
    StatusCode::from_u16(crate::api::agent_health_http_status(s)).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

async fn set_token(host: &dyn Host, a: &Authorizer, kind: &str, req: &Req) -> ApiResult {
    if !host.acl_enabled().await {
        return Err(ApiError::Unauthorized("ACL support disabled".into()));
    }
    let me = host.agent().node().name;
    require(a, Resource::Agent, &me, Access::Write)?;
    if !TOKEN_KINDS.contains(&kind) {
        return Err(ApiError::NotFound(format!("Token {kind:?} is unknown")));
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "PascalCase", default)]
    struct TokenBody {
        token: String,
    }
    let body: TokenBody = crate::web::json::decode(&req.body)?;
    let kind = match kind {
        "agent_master" => "agent_recovery",
        k => k,
    };
    host.agent().set_token(kind, body.token);
    Ok(text(StatusCode::OK, ""))
}

/// `?format=prometheus`: Prometheus text; otherwise Consul's JSON summary (`Timestamp`, `Gauges`,
/// `Counters`, `Samples`) of the same figures.
fn metrics(host: &dyn Host, req: &Req) -> Resp {
    let text_body = host.prometheus();
    if req.get("format") == Some("prometheus") {
        let mut r = warp::http::Response::new(bytes::Bytes::from(text_body));
        r.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
        return r;
    }
    let gauges: Vec<serde_json::Value> = prometheus_samples(&text_body)
        .map(|(name, value)| serde_json::json!({"Name": name, "Value": value, "Labels": {}}))
        .collect();
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    ok_json(&serde_json::json!({"Timestamp": now, "Gauges": gauges, "Points": [], "Counters": [], "Samples": []}))
}

/// The unlabelled samples of Prometheus text, as (name, value).
fn prometheus_samples(text: &str) -> impl Iterator<Item = (String, f64)> + '_ {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
        let (name, value) = l.split_once(' ')?;
        if name.contains('{') {
            return None;
        }
        Some((name.replace('_', "."), value.trim().parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlabelled_prometheus_samples_become_gauges() {
        let text = "# HELP x y\nroster_raft_term 3\nroster_requests{a=\"b\"} 2\nbad\n";
        let got: Vec<(String, f64)> = prometheus_samples(text).collect();
        assert_eq!(got, vec![("roster.raft.term".to_string(), 3.0)]);
    }
}
