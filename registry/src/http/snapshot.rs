//! `/v1/snapshot`: a consistent archive of the whole state (GET), and restoring one onto the running
//! cluster through Raft (PUT). Both need a management token, as in Consul.

use std::sync::Arc;

use warp::http::{HeaderValue, Method, StatusCode};

use super::acl::authorize;
use super::{require_leader, with_query_meta, ApiError, ApiResult, Req};
use crate::app::App;
use crate::state::{archive, Command, CommandResult};

pub async fn handle(app: &Arc<App>, req: &Req) -> ApiResult {
    // Where it is answered first (a follower forwards), then the token, checked there: one made a
    // moment ago through the leader is known.
    match req.method {
        Method::GET => super::blocking::check_read(app, &super::QueryOpts::parse(req)?).await?,
        _ => require_leader(app)?,
    }
    let a = authorize(app, req)?;
    if !a.is_management() {
        return Err(ApiError::Forbidden("Permission denied: snapshots need a management token".into()));
    }
    match req.method {
        Method::GET => save(app).await,
        Method::PUT => restore(app, req).await,
        ref m => Err(ApiError::MethodNotAllowed(m.clone())),
    }
}

async fn save(app: &Arc<App>) -> ApiResult {
    // The leader's state (or this server's with ?stale; `handle` checked), under one read lock.
    let index = app.sm.applied_index();
    let bytes = app.sm.read(|s| archive::encode(s, index)).map_err(ApiError::Internal)?;
    let mut r = warp::http::Response::new(bytes::Bytes::from(bytes));
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/x-gzip"));
    Ok(with_query_meta(app, r, index))
}

async fn restore(app: &Arc<App>, req: &Req) -> ApiResult {
    // Checked here first, so a bad archive is a 400 and never reaches the log.
    let (meta, _) = archive::decode(&req.body).map_err(ApiError::BadRequest)?;
    if meta.datacenter != app.config.datacenter {
        tracing::info!(from = %meta.datacenter, into = %app.config.datacenter, "restoring another datacenter's snapshot");
    }
    require_leader(app)?;
    match app.propose(Command::Restore { archive: req.body.to_vec() }).await?.1 {
        CommandResult::Bool(true) => Ok(super::text(StatusCode::OK, "")),
        CommandResult::Rejected(msg) => Err(ApiError::BadRequest(msg)),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}
