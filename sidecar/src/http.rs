//! The app's one address: Consul's agent API on localhost, answered from the agent's local state,
//! and every other `/v1` call forwarded to the servers as it came (headers, token, body, blocking
//! query parameters), with failover between them.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use registry::api::{
    AgentCheckRegistration, AgentMember, AgentService, AgentServiceHealth, AgentServiceRegistration, HealthCheck,
    HealthStatus,
};
use registry::client::Client;
use registry::gossip::events::{self, EventBuffer, FireError, LocalServices};
use registry::gossip::{Member, Membership, Role};
use warp::http::{HeaderMap, Method, StatusCode};
use warp::Filter;

use crate::agent::{Agent, AgentError};

pub type Resp = warp::http::Response<Bytes>;

/// What every handler shares.
pub struct Ctx {
    pub agent: Arc<Agent>,
    pub client: Client,
    pub gossip: Option<Arc<Membership>>,
    /// User events this sidecar received through the pool (`/v1/event/list`).
    pub events: Arc<EventBuffer>,
}

/// Largest request body passed on (the servers apply their own, smaller limits).
const MAX_BODY: u64 = 16 * 1024 * 1024;

pub fn routes(ctx: Arc<Ctx>) -> impl Filter<Extract = (Resp,), Error = std::convert::Infallible> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(move |method: Method, path: warp::path::FullPath, query: String, headers: HeaderMap, body: Bytes| {
            let ctx = ctx.clone();
            async move {
                if body.len() as u64 > MAX_BODY {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("Request body too large (over {MAX_BODY} bytes)"),
                    );
                }
                handle(&ctx, method, path.as_str(), &query, headers, body).await
            }
        })
        .recover(|r: warp::Rejection| async move {
            Ok::<_, std::convert::Infallible>(text(StatusCode::BAD_REQUEST, format!("bad request: {r:?}")))
        })
        .unify()
}

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut r = warp::http::Response::new(Bytes::from(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", warp::http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Resp {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut r = warp::http::Response::new(Bytes::from(body));
            *r.status_mut() = status;
            r.headers_mut().insert("content-type", warp::http::HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the answer: {e}")),
    }
}

fn agent_error(e: AgentError) -> Resp {
    match e {
        AgentError::Invalid(m) => text(StatusCode::BAD_REQUEST, m),
        AgentError::NotFound(m) => text(StatusCode::NOT_FOUND, m),
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

async fn handle(ctx: &Ctx, method: Method, path: &str, query: &str, headers: HeaderMap, body: Bytes) -> Resp {
    match path.strip_prefix("/v1/agent/") {
        Some(tail) => agent(ctx, &method, tail, query, &body).await,
        // Events are the agent's own: fired into the pool from here, listed from what reached it.
        None if path.starts_with("/v1/event/") => event(ctx, &method, path, query, &body).await,
        None if path.starts_with("/v1/") => forward(ctx, method, path, query, headers, body).await,
        None => text(StatusCode::NOT_FOUND, format!("no such path: {path}")),
    }
}

async fn agent(ctx: &Ctx, method: &Method, tail: &str, query: &str, body: &[u8]) -> Resp {
    let parts: Vec<&str> = tail.splitn(4, '/').collect();
    let a = &ctx.agent;
    let ok = || text(StatusCode::OK, "");
    match (parts.as_slice(), method) {
        (["self"], &Method::GET) => json(StatusCode::OK, &agent_self(ctx).await),
        (["members"], &Method::GET) => json(StatusCode::OK, &members(ctx).await),
        (["services"], &Method::GET) => {
            let map: BTreeMap<String, AgentService> =
                a.with_state(|s| s.services().map(|svc| (svc.id.clone(), svc.clone())).collect());
            json(StatusCode::OK, &map)
        }
        (["service", id], &Method::GET) if *id != "register" => match a.with_state(|s| s.service(id).cloned()) {
            Some(svc) => json(StatusCode::OK, &svc),
            None => text(StatusCode::NOT_FOUND, format!("unknown service ID: {id}")),
        },
        (["checks"], &Method::GET) => {
            let map: BTreeMap<String, HealthCheck> =
                a.with_state(|s| s.checks().map(|c| (c.check.check_id.clone(), c.check.clone())).collect());
            json(StatusCode::OK, &map)
        }
        (["service", "register"], &Method::PUT) => {
            match registry::api::json::decode::<AgentServiceRegistration>(body) {
                Ok(r) => a.register_service(&r).map_or_else(agent_error, |_| ok()),
                Err(e) => text(StatusCode::BAD_REQUEST, e),
            }
        }
        (["service", "deregister", id], &Method::PUT) => a.deregister_service(id).map_or_else(agent_error, |_| ok()),
        (["check", "register"], &Method::PUT) => match registry::api::json::decode::<AgentCheckRegistration>(body) {
            Ok(def) => a.register_check(&def).map_or_else(agent_error, |_| ok()),
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
        (["check", "deregister", id], &Method::PUT) => a.deregister_check(id).map_or_else(agent_error, |_| ok()),
        (["check", verb @ ("pass" | "warn" | "fail"), id], &Method::PUT) => {
            let status = match *verb {
                "pass" => HealthStatus::Passing,
                "warn" => HealthStatus::Warning,
                _ => HealthStatus::Critical,
            };
            let note = query_param(query, "note").unwrap_or_default();
            a.update_ttl(id, status, note).map_or_else(agent_error, |_| ok())
        }
        (["check", "update", id], &Method::PUT) => {
            let u: registry::api::CheckUpdate = match registry::api::json::decode(body) {
                Ok(u) => u,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            };
            let Some(status) = HealthStatus::parse(u.status.as_deref().unwrap_or("")) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Invalid check status: {:?}", u.status.unwrap_or_default()),
                );
            };
            a.update_ttl(id, status, u.output.unwrap_or_default()).map_or_else(agent_error, |_| ok())
        }
        (["health", "service", "name", name], &Method::GET) => {
            let list: Vec<AgentServiceHealth> = a.with_state(|s| {
                s.services().filter(|svc| svc.service == *name).map(|svc| service_health(s, svc)).collect()
            });
            if list.is_empty() {
                return text(StatusCode::NOT_FOUND, format!("ServiceName {name} Not Found"));
            }
            let worst = registry::api::worst_status(list.iter().map(|h| h.aggregated_status));
            json(health_code(worst), &list)
        }
        (["health", "service", "id", id], &Method::GET) => {
            match a.with_state(|s| s.service(id).map(|svc| service_health(s, svc))) {
                Some(h) => json(health_code(h.aggregated_status), &h),
                None => text(StatusCode::NOT_FOUND, format!("ServiceId {id} not found")),
            }
        }
        (["self"] | ["members"] | ["services"] | ["checks"] | ["service", ..] | ["check", ..] | ["health", ..], m) => {
            text(StatusCode::METHOD_NOT_ALLOWED, format!("method {m} not allowed"))
        }
        _ => text(StatusCode::NOT_FOUND, format!("the sidecar does not serve /v1/agent/{tail}")),
    }
}

/// This sidecar's node name and services, against which events' filters match.
pub fn local_for_events(agent: &Agent) -> (String, LocalServices) {
    agent.with_state(|s| {
        (s.node().name.clone(), s.services().map(|svc| (svc.service.clone(), svc.tags.clone())).collect())
    })
}

async fn event(ctx: &Ctx, method: &Method, path: &str, query: &str, body: &[u8]) -> Resp {
    let param = |k: &str| query_param(query, k).unwrap_or_default();
    match (path.strip_prefix("/v1/event/"), method) {
        (Some("list"), &Method::GET) => {
            let index = match param("index") {
                i if i.is_empty() => None,
                i => match i.parse::<u64>() {
                    Ok(i) => Some(i),
                    Err(_) => return text(StatusCode::BAD_REQUEST, "Invalid index"),
                },
            };
            let wait = match param("wait") {
                w if w.is_empty() => std::time::Duration::from_secs(300),
                w => match registry::api::parse_go_duration(&w) {
                    Ok(w) => w.min(std::time::Duration::from_secs(600)),
                    Err(_) => return text(StatusCode::BAD_REQUEST, "Invalid wait time"),
                },
            };
            let name = query_param(query, "name");
            let (index, list) = ctx.events.list_blocking(name.as_deref(), index, wait).await;
            let mut r = json(StatusCode::OK, &list);
            r.headers_mut().insert("x-consul-index", index.into());
            r
        }
        (Some(fire), &Method::PUT) if fire.starts_with("fire/") => {
            let name = &fire["fire/".len()..];
            let event = match events::new_event(name, body, &param("node"), &param("service"), &param("tag")) {
                Ok(e) => e,
                Err(FireError::TooLarge(m)) => return text(StatusCode::PAYLOAD_TOO_LARGE, m),
                Err(FireError::Invalid(m)) => return text(StatusCode::BAD_REQUEST, m),
            };
            if let Some(g) = &ctx.gossip {
                if let Err(e) = g.fire(&event).await {
                    return text(StatusCode::INTERNAL_SERVER_ERROR, format!("firing the event: {e}"));
                }
            }
            let (me, services) = local_for_events(&ctx.agent);
            ctx.events.offer(event.clone(), |e| events::delivers_to(e, &me, &services));
            json(StatusCode::OK, &event)
        }
        (Some("list"), m) => text(StatusCode::METHOD_NOT_ALLOWED, format!("method {m} not allowed")),
        _ => text(StatusCode::NOT_FOUND, format!("no such path: {path}")),
    }
}

fn health_code(s: HealthStatus) -> StatusCode {
    StatusCode::from_u16(registry::api::agent_health_http_status(s)).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

fn service_health(s: &crate::local::LocalState, svc: &AgentService) -> AgentServiceHealth {
    let checks: Vec<HealthCheck> =
        s.checks().filter(|c| c.check.service_id == svc.id).map(|c| c.check.clone()).collect();
    AgentServiceHealth {
        aggregated_status: registry::api::worst_status(checks.iter().map(|c| c.status)),
        service: svc.clone(),
        checks,
    }
}

fn to_agent_member(m: &Member, status: u8) -> AgentMember {
    let role = match m.role {
        Role::Server => "consul",
        Role::Client => "node",
    };
    let tags = [("role", role), ("dc", m.datacenter.as_str()), ("build", m.version.as_str())]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AgentMember::new(m.name.clone(), m.gossip_addr.ip().to_string(), m.gossip_addr.port(), tags, status)
}

/// Serf's statuses: 1 alive, 3 left, 4 failed.
async fn members(ctx: &Ctx) -> Vec<AgentMember> {
    let Some(g) = &ctx.gossip else { return Vec::new() };
    let view = g.view().await;
    let mut out: Vec<AgentMember> = view.live.values().map(|m| to_agent_member(m, 1)).collect();
    out.extend(view.left.values().map(|m| to_agent_member(m, 3)));
    out.extend(view.failed.values().map(|m| to_agent_member(m, 4)));
    out
}

async fn agent_self(ctx: &Ctx) -> serde_json::Value {
    let node = ctx.agent.node();
    let member = match &ctx.gossip {
        Some(g) => g.view().await.live.get(&node.name).map(|m| to_agent_member(m, 1)),
        None => None,
    };
    serde_json::json!({
        "Config": {
            "Datacenter": node.datacenter,
            "PrimaryDatacenter": node.datacenter,
            "NodeName": node.name,
            "NodeID": "",
            "Revision": "roster-sidecar",
            "Server": false,
            "Version": env!("CARGO_PKG_VERSION"),
        },
        "Member": member,
        "Meta": node.meta,
    })
}

/// Hop-by-hop headers are not passed on; hyper sets framing for our answer itself.
fn pass_header(name: &str) -> bool {
    !matches!(
        name,
        "host"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "upgrade"
            | "proxy-connection"
            | "content-length"
    )
}

async fn forward(ctx: &Ctx, method: Method, path: &str, query: &str, headers: HeaderMap, body: Bytes) -> Resp {
    let path_and_query = if query.is_empty() { path.to_string() } else { format!("{path}?{query}") };
    let mut out_headers = reqwest::header::HeaderMap::new();
    for (k, v) in headers.iter().filter(|(k, _)| pass_header(k.as_str())) {
        out_headers.append(k.clone(), v.clone());
    }
    match ctx.client.raw(method, &path_and_query, out_headers, body, false).await {
        Ok(resp) => {
            let mut r = warp::http::Response::new(resp.body);
            *r.status_mut() = resp.status;
            for (k, v) in resp.headers.iter().filter(|(k, _)| pass_header(k.as_str())) {
                r.headers_mut().append(k.clone(), v.clone());
            }
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("No known Roster servers answered: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(query_param("note=all%20good&x=1", "note").as_deref(), Some("all good"));
        assert_eq!(query_param("note=a+b", "note").as_deref(), Some("a b"));
        assert_eq!(query_param("x=1", "note"), None);
    }
}
