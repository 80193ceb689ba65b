//! Consul's `/v1` HTTP API over warp.
//!
//! One warp filter captures the request into a [`Req`]; `dispatch` routes it by area. A handler that
//! must run on the leader (writes, default and `?consistent` reads) answers `ApiError::NotLeader` on a
//! follower, and `serve` forwards the original request to the leader's HTTP address unchanged.

pub mod acl;
mod acl_auth;
mod acl_templated;
mod agent;
mod agent_admin;
mod blocking;
mod catalog;
mod coordinate;
mod event;
mod internal_ui;
mod kv;
mod query;
pub use crate::listener as serve;
mod session;
mod snapshot;
mod status;
pub use status::refresh_server_health;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::Filter;

use crate::app::{App, ProposeError};
pub use crate::web::{json, ok_json, text, ApiError, ApiResult, Req, Resp};

pub use blocking::{Consistency, QueryOpts};

/// The longest a forwarded request other than a blocking query may take: above the 5 s a server
/// waits for a leader (`serve`), about Consul's 7 s `rpc_hold_timeout` plus the trip.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Marks a request already forwarded once, so two servers that disagree on the leader cannot loop.
const FORWARDED: &str = "x-roster-forwarded";
/// Names the datacenter that forwarded a request to another one (so that ACL writes cannot bounce
/// between two datacenters that each think the other is the primary).
pub const FROM_DATACENTER: &str = "x-roster-from-datacenter";

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NoLeader | ProposeError::NotLeader => ApiError::NoLeader,
            ProposeError::Raft(m) => ApiError::Internal(m),
        }
    }
}

/// Adds `X-Consul-Index`, `X-Consul-KnownLeader` and `X-Consul-LastContact` to a read's answer.
pub fn with_query_meta(app: &App, mut resp: Resp, index: u64) -> Resp {
    let h = resp.headers_mut();
    h.insert("x-consul-index", HeaderValue::from(crate::state::nonzero(index)));
    let known = if app.knows_leader() { "true" } else { "false" };
    h.insert("x-consul-knownleader", HeaderValue::from_static(known));
    h.insert("x-consul-lastcontact", HeaderValue::from(app.last_contact_ms()));
    resp
}

/// Catalog and health reads also say which consistency mode answered them.
pub fn with_consistency(mut resp: Resp, opts: &QueryOpts) -> Resp {
    let mode = match opts.consistency {
        Consistency::Default => "leader",
        Consistency::Stale => "stale",
        Consistency::Consistent => "consistent",
    };
    resp.headers_mut().insert("x-consul-effective-consistency", HeaderValue::from_static(mode));
    resp
}

/// A request for another datacenter (`?dc=`, or `Datacenter` in a catalog write's body) is
/// forwarded there by `serve` (see `to_datacenter`).
pub fn check_datacenter(app: &App, dc: Option<&str>) -> Result<(), ApiError> {
    match dc.filter(|d| !d.is_empty()) {
        Some(dc) if dc != app.config.datacenter => Err(ApiError::OtherDatacenter(dc.to_string())),
        _ => Ok(()),
    }
}

/// Writes are answered by the leader: followers forward the request.
pub fn require_leader(app: &App) -> Result<(), ApiError> {
    if app.is_leader() {
        Ok(())
    } else {
        Err(ApiError::NotLeader)
    }
}

/// Route label for metrics, without user data (keys, names, IDs) so label sets stay bounded:
/// `/v1/kv`, `/v1/health/service`, `/v1/agent/check`.
fn endpoint_label(path: &str) -> &'static str {
    const ROUTES: &[&str] = &[
        "/v1/kv",
        "/v1/txn",
        "/v1/session/create",
        "/v1/session/destroy",
        "/v1/session/renew",
        "/v1/session/info",
        "/v1/session/node",
        "/v1/session/list",
        "/v1/catalog/register",
        "/v1/catalog/deregister",
        "/v1/catalog/datacenters",
        "/v1/catalog/nodes",
        "/v1/catalog/services",
        "/v1/catalog/service",
        "/v1/catalog/node",
        "/v1/health/node",
        "/v1/health/checks",
        "/v1/health/service",
        "/v1/health/state",
        "/v1/agent/self",
        "/v1/agent/members",
        "/v1/agent/services",
        "/v1/agent/service",
        "/v1/agent/checks",
        "/v1/agent/check",
        "/v1/agent/health",
        "/v1/agent/metrics",
        "/v1/status/leader",
        "/v1/status/peers",
        "/v1/operator/raft",
        "/v1/operator/autopilot",
        "/v1/operator/keyring",
        "/v1/snapshot",
        "/v1/event/fire",
        "/v1/event/list",
        "/v1/coordinate",
        "/v1/internal/ui/services",
        "/v1/query",
        "/v1/agent/maintenance",
        "/readyz",
    ];
    ROUTES
        .iter()
        .find(|r| path.strip_prefix(**r).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
        .copied()
        .unwrap_or("other")
}

async fn dispatch(app: &Arc<App>, req: &Req) -> ApiResult {
    if req.path == "/readyz" {
        return Ok(match status::readiness(app) {
            Ok(why) => text(StatusCode::OK, why),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
        });
    }
    let Some(rest) = req.path.strip_prefix("/v1/") else {
        return Err(ApiError::NotFound(String::new()));
    };
    let (area, tail) = rest.split_once('/').unwrap_or((rest, ""));
    check_datacenter(app, req.get("dc"))?;
    match area {
        "kv" => kv::handle(app, req, tail).await,
        "txn" => kv::txn(app, req).await,
        "session" => session::handle(app, req, tail).await,
        "catalog" => catalog::handle_catalog(app, req, tail).await,
        "health" => catalog::handle_health(app, req, tail).await,
        "agent" => agent::handle(app, req, tail).await,
        "status" => status::handle_status(app, req, tail).await,
        "operator" => status::handle_operator(app, req, tail).await,
        "acl" => acl::handle(app, req, tail).await,
        "internal" if tail == "acl/rules" && req.method == Method::GET => acl::effective_rules(app, req),
        "internal" if tail.starts_with("ui/") => internal_ui::handle(app, req, &tail["ui/".len()..]).await,
        "snapshot" if tail.is_empty() => snapshot::handle(app, req).await,
        "event" => event::handle(app, req, tail).await,
        "coordinate" => coordinate::handle(app, req, tail).await,
        "query" => query::handle(app, req, tail).await,
        _ => Err(ApiError::NotFound(String::new())),
    }
}

/// Serves one request: dispatch, and forward to the leader where the handler asks for it.
pub async fn serve(app: Arc<App>, req: Req) -> Resp {
    let started = Instant::now();
    crate::acl_remote::prepare(&app, &req).await;
    let mut resp = None;
    for _ in 0..3 {
        match dispatch(&app, &req).await {
            Ok(r) => {
                resp = Some(r);
                break;
            }
            Err(ApiError::NotLeader) => match app.wait_leader(Duration::from_secs(5)).await {
                None => {
                    resp = Some(ApiError::NoLeader.into_resp());
                    break;
                }
                // Became leader meanwhile: dispatch again here.
                Some((id, _)) if id == app.id => continue,
                Some(_) if req.headers.contains_key(FORWARDED) => {
                    // The forwarder thought we lead; give metrics a moment to agree.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Some((_, leader)) => {
                    resp = Some(forward(&app, &leader.http_addr, &req).await);
                    break;
                }
            },
            Err(ApiError::OtherDatacenter(dc)) => {
                resp = Some(to_datacenter(&app, &dc, &req).await);
                break;
            }
            Err(e) => {
                resp = Some(e.into_resp());
                break;
            }
        }
    }
    let mut resp = resp.unwrap_or_else(|| ApiError::NoLeader.into_resp());
    let default_policy = if app.config.acl_default_allow() { "allow" } else { "deny" };
    resp.headers_mut().insert("x-consul-default-acl-policy", HeaderValue::from_static(default_policy));
    app.metrics.observe_request(endpoint_label(&req.path), req.method.as_str(), started.elapsed());
    resp
}

/// Forwards a request for `dc` to its nearest live server, the next one when a server cannot be
/// connected to (nothing was sent: safe for writes too). Consul answers an unknown datacenter with
/// 500 "No path to datacenter"; here the client's mistake is a 400 and an unreachable one a 503.
async fn to_datacenter(app: &App, dc: &str, req: &Req) -> Resp {
    let Some(wan) = &app.wan else {
        return text(StatusCode::BAD_REQUEST, format!("No path to datacenter {dc:?}: this server is in no WAN pool"));
    };
    let servers = match wan.route(dc).await {
        crate::wan::Route::Servers(s) => s,
        crate::wan::Route::Unknown => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("No path to datacenter {dc:?}: no server of it is in the WAN pool"),
            )
        }
        crate::wan::Route::Unreachable => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("No path to datacenter {dc:?}: none of its servers is reachable"),
            )
        }
    };
    let mut last = String::new();
    for addr in &servers {
        match send(app, dc, addr, req, false).await {
            Ok(resp) => return resp,
            Err(e) if e.is_connect() => last = format!("{addr}: {e}"),
            Err(e) => return text(StatusCode::BAD_GATEWAY, format!("forwarding to datacenter {dc:?} ({addr}): {e}")),
        }
    }
    text(StatusCode::SERVICE_UNAVAILABLE, format!("No path to datacenter {dc:?}: no server answered ({last})"))
}

/// A GET through this server's own API, as a client holding `token` would send it (routed to the
/// leader or to another datacenter as any request is): the DNS interface's and prepared queries'
/// reads of other datacenters.
pub async fn get_as(app: &Arc<App>, path: String, query: Vec<(String, String)>, token: Option<&str>) -> Resp {
    Box::pin(serve(app.clone(), get_request(path, query, token))).await
}

/// A GET of `path?query` carrying `token` as a client sends it.
fn get_request(path: String, query: Vec<(String, String)>, token: Option<&str>) -> Req {
    let raw_query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&query).finish();
    let mut headers = HeaderMap::new();
    if let Some(t) = token.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert("x-consul-token", t);
    }
    Req { method: Method::GET, path, raw_query, query, headers, body: Bytes::new() }
}

/// A GET sent straight to another datacenter's servers (not through this server's own pipeline),
/// as a client holding `token` would send it there.
pub async fn get_from_datacenter(app: &App, dc: &str, path: String, token: Option<&str>) -> Resp {
    let req = get_request(path, vec![("dc".to_string(), dc.to_string())], token);
    to_datacenter(app, dc, &req).await
}

async fn forward(app: &App, leader_http: &str, req: &Req) -> Resp {
    match send(app, &app.config.datacenter, leader_http, req, true).await {
        Ok(resp) => resp,
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("forwarding to leader {leader_http}: {e}")),
    }
}

/// How long a forwarded request may take before it fails with a 5xx: anything but a blocking query
/// [`FORWARD_TIMEOUT`], so that a request sent over a pooled connection to a server that went silent
/// (a partition not yet noticed) answers instead of hanging; a blocking query its wait, Consul's
/// jitter of up to 1/16 of it, and the same slack; a snapshot, which may be large, minutes.
fn forward_timeout(req: &Req) -> Duration {
    if req.path.starts_with("/v1/snapshot") {
        return Duration::from_secs(10 * 60);
    }
    match blocking::QueryOpts::parse(req) {
        Ok(blocking::QueryOpts { index: Some(_), wait, .. }) => wait + wait / 16 + FORWARD_TIMEOUT,
        _ => FORWARD_TIMEOUT,
    }
}

/// Sends `req` as it came to the server at `http_addr` and returns its answer with Consul's
/// headers. `to_leader` marks it forwarded, so that two servers disagreeing on the leader cannot loop.
async fn send(
    app: &App,
    datacenter: &str,
    http_addr: &str,
    req: &Req,
    to_leader: bool,
) -> Result<Resp, reqwest::Error> {
    const PATH: &percent_encoding::AsciiSet =
        &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'?').add(b'<').add(b'>');
    let path = percent_encoding::utf8_percent_encode(&req.path, PATH).to_string();
    let mut url = crate::tls::dial::api_url(http_addr, &path);
    if !req.raw_query.is_empty() {
        url.push('?');
        url.push_str(&req.raw_query);
    }
    let timeout = forward_timeout(req);
    let client = match app.dialer.api(datacenter) {
        Ok(c) => c,
        Err(e) => {
            return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, format!("TLS for datacenter {datacenter:?}: {e}")))
        }
    };
    let mut builder = client.request(req.method.clone(), url).timeout(timeout).body(req.body.clone());
    for (name, value) in req.headers.iter() {
        let n = name.as_str();
        if n.starts_with("x-consul-") || n == "content-type" || n == "authorization" {
            builder = builder.header(name, value);
        }
    }
    if to_leader {
        builder = builder.header(FORWARDED, "1");
    } else {
        builder = builder.header(FROM_DATACENTER, &app.config.datacenter);
    }
    let r = builder.send().await?;
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.bytes().await?;
    let mut out = warp::http::Response::new(body);
    *out.status_mut() = status;
    for (name, value) in headers.iter() {
        let n = name.as_str();
        if n.starts_with("x-consul-") || n == "content-type" {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(out)
}

#[derive(Debug)]
struct BodyTooLarge;
impl warp::reject::Reject for BodyTooLarge {}

/// The warp filter for the whole HTTP API.
pub fn routes(
    app: Arc<App>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    use warp::Reply;
    let monitor = crate::agent::api::monitor_route(Arc::new(agent::ServerHost(app.clone())));
    // The web UI's paths first: they are GETs of `/` and `/ui/...`, which the API does not serve.
    let ui = crate::ui::routes().map(|r: Resp| r.into_response());
    ui.or(monitor).unify().or(api_routes(app).map(|r: Resp| r.into_response())).unify()
}

/// Every route but the streamed `/v1/agent/monitor`.
fn api_routes(app: Arc<App>) -> impl Filter<Extract = (Resp,), Error = std::convert::Infallible> + Clone {
    // Bodies up to 64 MiB are read so that an oversized KV value gets Consul's 413 message.
    const MAX_BODY: u64 = 64 * 1024 * 1024;
    let body_limit = warp::header::optional::<u64>("content-length")
        .and_then(|len: Option<u64>| async move {
            if len.unwrap_or(0) > MAX_BODY {
                Err(warp::reject::custom(BodyTooLarge))
            } else {
                Ok(())
            }
        })
        .untuple_one();
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(body_limit)
        .and(warp::body::bytes())
        .then(move |method: Method, path: warp::path::FullPath, raw_query: String, headers: HeaderMap, body: Bytes| {
            let app = app.clone();
            async move {
                let query = url::form_urlencoded::parse(raw_query.as_bytes()).into_owned().collect();
                // KV keys and names arrive percent-encoded; handlers see them decoded.
                let path = match percent_encoding::percent_decode_str(path.as_str()).decode_utf8() {
                    Ok(p) => p.into_owned(),
                    Err(_) => return text(StatusCode::BAD_REQUEST, "Request path is not valid UTF-8 once decoded"),
                };
                let req = Req { method, path, raw_query, query, headers, body };
                serve(app, req).await
            }
        })
        .recover(|rej: warp::Rejection| async move {
            let resp = if rej.find::<BodyTooLarge>().is_some() {
                text(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
            } else {
                text(StatusCode::BAD_REQUEST, format!("{rej:?}"))
            };
            Ok::<_, std::convert::Infallible>(resp)
        })
        .unify()
}
