//! `/v1/event/fire/:name` and `/v1/event/list`: user events through the gossip pool
//! (`gossip::events`). Each agent lists the events it received, as Consul's do.

use std::sync::Arc;

use warp::http::Method;

use super::acl::{authorize, filter_by, mark_filtered, require};
use super::{ok_json, ApiError, ApiResult, Req};
use crate::acl::{Access, Resource};
use crate::app::App;
use crate::gossip::events;

pub async fn handle(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    match (tail.split_once('/'), &req.method) {
        (Some(("fire", name)), &Method::PUT) => fire(app, req, name).await,
        (None, &Method::GET) if tail == "list" => list(app, req).await,
        (Some(("fire", _)), m) => Err(ApiError::MethodNotAllowed(m.clone())),
        (None, m) if tail == "list" => Err(ApiError::MethodNotAllowed(m.clone())),
        _ => Err(ApiError::NotFound(String::new())),
    }
}

async fn fire(app: &Arc<App>, req: &Req, name: &str) -> ApiResult {
    let a = authorize(app, req)?;
    require(&a, Resource::Event, name, Access::Write)?;
    let filter = |k: &str| req.get(k).unwrap_or("");
    let event =
        events::new_event(name, &req.body, filter("node"), filter("service"), filter("tag")).map_err(|e| match e {
            events::FireError::TooLarge(m) => ApiError::TooLarge(m),
            events::FireError::Invalid(m) => ApiError::BadRequest(m),
        })?;
    if let Some(g) = &app.gossip {
        g.fire(&event).await.map_err(|e| ApiError::Internal(format!("firing the event: {e}")))?;
    }
    // This agent takes its own event at once (gossip brings it back later, and it is ignored then).
    let (me, services) = app.agent.for_events();
    app.events.offer(event.clone(), |e| events::delivers_to(e, &me, &services));
    Ok(ok_json(&event))
}

async fn list(app: &Arc<App>, req: &Req) -> ApiResult {
    let a = authorize(app, req)?;
    let opts = super::QueryOpts::parse(req)?;
    let (index, list) = app.events.list_blocking(req.get("name"), opts.index, opts.wait).await;
    let (list, filtered) = filter_by(list, |e| a.allows(Resource::Event, &e.name, Access::Read));
    let mut resp = mark_filtered(ok_json(&list), filtered);
    resp.headers_mut().insert("x-consul-index", index.into());
    Ok(resp)
}
