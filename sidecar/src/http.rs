//! The app's one address: Consul's agent API on localhost, answered from the agent's local state,
//! and every other `/v1` call forwarded to the servers as it came (headers, token, body, blocking
//! query parameters), with failover between them.

use std::sync::Arc;

use bytes::Bytes;
use registry::acl::resolver::Resolver;
use registry::acl::token_cache::Fetched;
use registry::acl::Authorizer;
use registry::agent::api::Host;
use registry::agent::sync::Catalog;
use registry::agent::Agent;
use registry::api::AgentMember;
use registry::client::Client;
use registry::gossip::events::{self, EventBuffer, FireError};
use registry::gossip::{Member, Membership, Role};
use registry::web::{ApiError, Req};
use warp::http::{HeaderMap, Method, StatusCode};
use warp::Filter;

pub type Resp = warp::http::Response<Bytes>;

/// What every handler shares.
pub struct Ctx {
    pub agent: Arc<Agent>,
    pub client: Client,
    pub gossip: Option<Arc<Membership>>,
    /// User events this sidecar received through the pool (`/v1/event/list`).
    pub events: Arc<EventBuffer>,
    /// `/v1/agent/leave` asks the sidecar to stop as a signal would.
    pub leave: Arc<tokio::sync::Notify>,
    /// The configuration file `/v1/agent/reload` reads again.
    pub config_file: Option<std::path::PathBuf>,
    pub enable_script_checks: bool,
    /// What each token may do, as the servers said, and when they said it.
    /// Keyed by secret (`None`: the sidecar's own token stands in).
    pub tokens: Arc<Resolver>,
}

/// Largest request body passed on (the servers apply their own, smaller limits).
const MAX_BODY: u64 = 16 * 1024 * 1024;

pub fn routes(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    use warp::Reply;
    let monitor = registry::agent::api::monitor_route(ctx.clone());
    // The web UI's paths first: they are GETs of `/` and `/ui/...`, which the API does not serve.
    let ui = registry::ui::routes().map(|r: Resp| r.into_response());
    ui.or(monitor).unify().or(api_routes(ctx).map(|r: Resp| r.into_response())).unify()
}

/// Every route but the streamed `/v1/agent/monitor`.
fn api_routes(ctx: Arc<Ctx>) -> impl Filter<Extract = (Resp,), Error = std::convert::Infallible> + Clone {
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

fn query_param(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

async fn handle(ctx: &Ctx, method: Method, path: &str, query: &str, headers: HeaderMap, body: Bytes) -> Resp {
    match path.strip_prefix("/v1/agent/") {
        Some(tail) => {
            let tail = match percent_decode(tail) {
                Some(t) => t,
                None => return text(StatusCode::BAD_REQUEST, "Request path is not valid UTF-8 once decoded"),
            };
            let req = Req {
                method,
                path: path.to_string(),
                raw_query: query.to_string(),
                query: url::form_urlencoded::parse(query.as_bytes()).into_owned().collect(),
                headers,
                body,
            };
            match registry::agent::api::handle(ctx, &req, &tail).await {
                Ok(r) => r,
                Err(e) => e.into_resp(),
            }
        }
        // Events are the agent's own: fired into the pool from here, listed from what reached it.
        None if path.starts_with("/v1/event/") => event(ctx, &method, path, query, &body).await,
        None if path.starts_with("/v1/") => forward(ctx, method, path, query, headers, body).await,
        None => text(StatusCode::NOT_FOUND, format!("no such path: {path}")),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes: Vec<u8> = url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned().into_bytes())?;
    String::from_utf8(bytes).ok()
}

/// `/v1/internal/acl/rules` with the token itself.
async fn ask_servers(client: &Client, token: &Option<String>) -> Fetched {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        match t.parse() {
            Ok(value) => headers.insert("x-consul-token", value),
            Err(_) => return Fetched::Refused("the token is not a valid header value".into()),
        };
    }
    let r = match client.raw(Method::GET, "/v1/internal/acl/rules", headers, Bytes::new(), true).await {
        Ok(r) => r,
        Err(e) => return Fetched::Unreachable(format!("No known Roster servers answered: {e}")),
    };
    Fetched::from_rules_answer(r.status.as_u16(), &r.body, "the servers")
}

#[async_trait::async_trait]
impl Host for Ctx {
    fn agent(&self) -> &Agent {
        &self.agent
    }

    fn catalog(&self) -> &dyn Catalog {
        &self.client
    }

    /// The request's token (else the agent's default token, else the sidecar's own), resolved by
    /// asking the servers what it may do, cached for `acl_token_ttl` as Consul's agents cache; while no
    /// server answers, the down policy decides (`registry::acl::token_cache`).
    async fn authorize(&self, req: &Req) -> Result<Authorizer, ApiError> {
        let token = registry::web::carried_token(req).or_else(|| self.agent.token("default"));
        // The servers' default policy is unknown while none answers: deny, as Consul's agents' default.
        let (client, down_policy) = (self.client.clone(), self.tokens.down_policy());
        let ask = move |token: Option<String>| async move {
            let fetched = ask_servers(&client, &token).await;
            if let Fetched::Unreachable(why) = &fetched {
                tracing::warn!(error = %why, ?down_policy, "cannot resolve a token with the servers");
            }
            fetched
        };
        let rules = self.tokens.resolve(token, ask).await.map_err(ApiError::Forbidden)?;
        Ok(rules.authorizer())
    }

    /// The servers know: with ACLs off they answer `token/self` with Consul's 401.
    async fn acl_enabled(&self) -> bool {
        let r = self.client.raw(Method::GET, "/v1/acl/token/self", Default::default(), Bytes::new(), true).await;
        !matches!(r, Ok(r) if r.status == StatusCode::UNAUTHORIZED)
    }

    async fn self_info(&self) -> serde_json::Value {
        agent_self(self).await
    }

    fn coordinate(&self) -> registry::api::Coordinate {
        self.gossip.as_ref().map_or_else(registry::api::Coordinate::origin, |g| g.coordinate())
    }

    async fn members(&self, wan: bool) -> Vec<AgentMember> {
        if wan {
            // The WAN pool holds servers only: ask one.
            let r = self.client.raw(Method::GET, "/v1/agent/members?wan=1", Default::default(), Bytes::new(), true);
            return match r.await {
                Ok(r) if r.status.is_success() => serde_json::from_slice(&r.body).unwrap_or_default(),
                _ => Vec::new(),
            };
        }
        members(self).await
    }

    fn leave(&self) {
        let leave = self.leave.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            leave.notify_one();
        });
    }

    async fn force_leave(&self, node: &str, prune: bool) -> Result<(), ApiError> {
        let path = format!("/v1/agent/force-leave/{node}{}", if prune { "?prune=1" } else { "" });
        let r = self
            .client
            .raw(Method::PUT, &path, Default::default(), Bytes::new(), false)
            .await
            .map_err(|e| ApiError::Internal(format!("No known Roster servers answered: {e}")))?;
        match r.status {
            s if s.is_success() => Ok(()),
            s if s.is_client_error() => Err(ApiError::BadRequest(String::from_utf8_lossy(&r.body).into_owned())),
            _ => Err(ApiError::Internal(String::from_utf8_lossy(&r.body).into_owned())),
        }
    }

    fn reload(&self) -> Result<(), ApiError> {
        if let Some(path) = &self.config_file {
            let c =
                crate::Config::from_file(path).map_err(|e| ApiError::BadRequest(format!("Failed reloading: {e}")))?;
            c.service_definitions().map_err(|e| ApiError::BadRequest(format!("Failed reloading: {e}")))?;
            tracing::info!(file = %path.display(), "configuration reloaded; changes apply at the next restart");
        }
        Ok(())
    }

    fn prometheus(&self) -> String {
        let (services, checks) = self.agent.with_state(|s| (s.services().count(), s.checks().count()));
        format!(
            "# TYPE roster_agent_services gauge\nroster_agent_services {services}\n\
             # TYPE roster_agent_checks gauge\nroster_agent_checks {checks}\n"
        )
    }
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
            let (me, services) = ctx.agent.for_events();
            ctx.events.offer(event.clone(), |e| events::delivers_to(e, &me, &services));
            json(StatusCode::OK, &event)
        }
        (Some("list"), m) => text(StatusCode::METHOD_NOT_ALLOWED, format!("method {m} not allowed")),
        _ => text(StatusCode::NOT_FOUND, format!("no such path: {path}")),
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
        // The settings clients read (Consul's full DebugConfig is hundreds of fields).
        "DebugConfig": {
            "AdvertiseAddrLAN": node.address,
            "Datacenter": node.datacenter,
            "EnableScriptChecks": ctx.enable_script_checks,
            "NodeName": node.name,
            "PrimaryDatacenter": node.datacenter,
            "ServerMode": false,
        },
        "Member": member,
        "Stats": {
            "agent": ctx.agent.stats(),
            "build": {"prerelease": "", "revision": "roster-sidecar", "version": env!("CARGO_PKG_VERSION")},
            "consul": {"server": "false", "known_servers": ctx.client.servers().len().to_string()},
        },
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

/// `near=_agent` means this agent's node, which the servers cannot know: name it before forwarding.
fn resolve_near_agent(query: &str, node: &str) -> String {
    query
        .split('&')
        .map(|pair| if pair == "near=_agent" { format!("near={}", urlencode(node)) } else { pair.to_string() })
        .collect::<Vec<_>>()
        .join("&")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn forward(ctx: &Ctx, method: Method, path: &str, query: &str, headers: HeaderMap, body: Bytes) -> Resp {
    let query = resolve_near_agent(query, &ctx.agent.node().name);
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
    fn near_agent_names_this_node() {
        assert_eq!(resolve_near_agent("near=_agent&passing", "pod 1"), "near=pod%201&passing");
        assert_eq!(resolve_near_agent("near=web-1", "pod-1"), "near=web-1");
        assert_eq!(resolve_near_agent("", "pod-1"), "");
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(query_param("note=all%20good&x=1", "note").as_deref(), Some("all good"));
        assert_eq!(query_param("note=a+b", "note").as_deref(), Some("a b"));
        assert_eq!(query_param("x=1", "note"), None);
    }
}
