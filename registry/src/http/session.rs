//! `/v1/session/*`.

use std::sync::Arc;
use std::time::Duration;

use warp::http::{Method, StatusCode};

use super::acl::{authorize_write, authorizer_in, filter_by, mark_filtered, require, token_of};
use super::blocking::{self, QueryOpts};
use super::{ok_json, require_leader, with_query_meta, ApiError, ApiResult, Req};
use crate::acl::{Access, Resource};
use crate::api::{parse_go_duration, SessionCreated, SessionEntry, SessionRequest};
use crate::app::{now_ms, App};
use crate::state::{Command, CommandResult, Table, WatchKey};

const MIN_TTL: Duration = Duration::from_secs(10);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

pub async fn handle(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    let (op, arg) = tail.split_once('/').unwrap_or((tail, ""));
    match (op, &req.method) {
        ("create", &Method::PUT) => create(app, req).await,
        ("destroy", &Method::PUT) => destroy(app, req, arg).await,
        ("renew", &Method::PUT) => renew(app, req, arg).await,
        ("info", &Method::GET) => read(app, req, |s| s.session_get(arg).map_opt()).await,
        ("node", &Method::GET) => read(app, req, |s| s.session_node(arg)).await,
        ("list", &Method::GET) => read(app, req, |s| s.session_list()).await,
        ("create" | "destroy" | "renew" | "info" | "node" | "list", m) => Err(ApiError::MethodNotAllowed(m.clone())),
        _ => Err(ApiError::NotFound(String::new())),
    }
}

trait MapOpt {
    fn map_opt(self) -> (u64, Vec<SessionEntry>);
}

impl MapOpt for (u64, Option<SessionEntry>) {
    fn map_opt(self) -> (u64, Vec<SessionEntry>) {
        (self.0, self.1.into_iter().collect())
    }
}

async fn read(
    app: &Arc<App>,
    req: &Req,
    query: impl Fn(&crate::state::State) -> (u64, Vec<SessionEntry>),
) -> ApiResult {
    let opts = QueryOpts::parse(req)?;
    let token = token_of(app, req);
    let (index, result) = blocking::run(
        app,
        &opts,
        || vec![WatchKey::Table(Table::Sessions)],
        |s| {
            let (i, list) = query(s);
            (
                i,
                authorizer_in(app, s, &token)
                    .map(|a| filter_by(list, |e| a.allows(Resource::Session, &e.node, Access::Read))),
            )
        },
    )
    .await?;
    let (list, filtered) = result?;
    Ok(mark_filtered(with_query_meta(app, ok_json(&list), index), filtered))
}

/// Writes to an existing session need `session:write` on its node.
fn require_session_write(app: &App, req: &Req, id: &str) -> Result<(), ApiError> {
    let authz = authorize_write(app, req)?;
    if let Some(s) = app.sm.read(|s| s.session_get(id).1) {
        require(&authz, Resource::Session, &s.node, Access::Write)?;
    }
    Ok(())
}

/// Validates a create request into a session entry, as Consul's session endpoint does.
fn build_session(app: &App, r: SessionRequest) -> Result<SessionEntry, ApiError> {
    let ttl = match r.ttl.as_deref().filter(|t| !t.is_empty()) {
        None => String::new(),
        Some(t) => {
            let d = parse_go_duration(t).map_err(|e| ApiError::BadRequest(format!("Invalid Session TTL: {e}")))?;
            if d != Duration::ZERO && !(MIN_TTL..=MAX_TTL).contains(&d) {
                return Err(ApiError::BadRequest(format!(
                    "Invalid Session TTL '{}', must be between [10s=24h0m0s]",
                    d.as_nanos()
                )));
            }
            crate::api::format_go_duration(d)
        }
    };
    let lock_delay = match r.lock_delay {
        None => DEFAULT_LOCK_DELAY,
        Some(serde_json::Value::Number(n)) => {
            // Consul takes small numbers as seconds and large ones as nanoseconds.
            let v = n.as_u64().ok_or_else(|| ApiError::BadRequest("Invalid LockDelay".into()))?;
            if v < 60 {
                Duration::from_secs(v)
            } else {
                Duration::from_nanos(v)
            }
        }
        Some(serde_json::Value::String(s)) => {
            parse_go_duration(&s).map_err(|e| ApiError::BadRequest(format!("Invalid LockDelay: {e}")))?
        }
        Some(_) => return Err(ApiError::BadRequest("Invalid LockDelay".into())),
    }
    .min(MAX_LOCK_DELAY);
    // Absent check lists mean the node's serfHealth; an explicit empty list means no checks.
    let node_checks = match (r.node_checks, r.checks, &r.service_checks) {
        (None, None, None) => vec!["serfHealth".to_string()],
        (a, b, _) => a.into_iter().chain(b).flatten().collect(),
    };
    Ok(SessionEntry {
        id: uuid::Uuid::new_v4().to_string(),
        name: r.name.unwrap_or_default(),
        node: r.node.filter(|n| !n.is_empty()).unwrap_or_else(|| app.me.name.clone()),
        lock_delay: lock_delay.as_nanos() as u64,
        behavior: r.behavior.unwrap_or_default(),
        ttl,
        node_checks: Some(node_checks),
        service_checks: r.service_checks,
        create_index: 0,
        modify_index: 0,
    })
}

async fn create(app: &Arc<App>, req: &Req) -> ApiResult {
    let r: SessionRequest = super::json::decode_or_default(&req.body)?;
    let session = build_session(app, r)?;
    require(&authorize_write(app, req)?, Resource::Session, &session.node, Access::Write)?;
    require_leader(app)?;
    let (id, ttl) = (session.id.clone(), session.ttl.clone());
    match app.propose(Command::SessionCreate { session }).await?.1 {
        CommandResult::None => {
            app.touch_session(&id, &ttl);
            Ok(ok_json(&SessionCreated { id }))
        }
        CommandResult::Rejected(msg) => Err(ApiError::BadRequest(msg)),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}

async fn destroy(app: &Arc<App>, req: &Req, id: &str) -> ApiResult {
    if id.is_empty() {
        return Err(ApiError::BadRequest("Missing session".into()));
    }
    require_session_write(app, req, id)?;
    require_leader(app)?;
    app.propose(Command::SessionDestroy { id: id.to_string(), now_ms: now_ms() }).await?;
    Ok(ok_json(&true))
}

/// Renewal resets the leader's TTL timer; it writes nothing to the log (as in Consul).
async fn renew(app: &Arc<App>, req: &Req, id: &str) -> ApiResult {
    require_session_write(app, req, id)?;
    require_leader(app)?;
    let (index, session) = app.sm.read(|s| s.session_get(id));
    match session {
        None => Ok(super::text(StatusCode::NOT_FOUND, format!("Session id '{id}' not found"))),
        Some(s) => {
            app.touch_session(&s.id, &s.ttl);
            Ok(with_query_meta(app, ok_json(&[s]), index))
        }
    }
}
