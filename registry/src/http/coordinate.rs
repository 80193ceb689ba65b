//! `/v1/coordinate/*`: nodes' network coordinates, stored through Raft. Each member measures round
//! trips over the gossip port (Vivaldi, `gossip::udp`) and publishes its coordinate in gossip; the
//! leader stores them (`reconcile::coordinate_loop`). They also arrive through
//! `PUT /v1/coordinate/update`. A server without one yet reports Serf's starting coordinate (the
//! origin), as a new Consul agent does.

use std::sync::Arc;

use warp::http::{Method, StatusCode};

use super::acl::{authorize, authorize_write, filter_by, mark_filtered, require};
use super::blocking::{self, QueryOpts};
use super::{ok_json, require_leader, with_query_meta, ApiError, ApiResult, Req};
use crate::acl::{Access, Resource};
use crate::api::{Coordinate, CoordinateEntry, DatacenterCoordinates};
use crate::app::App;
use crate::state::{Command, CommandResult, Table, WatchKey};

pub async fn handle(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    match (tail.split_once('/').unwrap_or((tail, "")), &req.method) {
        (("datacenters", ""), &Method::GET) => Ok(ok_json(&[datacenter(app)])),
        (("nodes", ""), &Method::GET) => nodes(app, req, None).await,
        (("node", node), &Method::GET) if !node.is_empty() => nodes(app, req, Some(node)).await,
        (("update", ""), &Method::PUT) => update(app, req).await,
        (("datacenters" | "nodes" | "node" | "update", _), m) => Err(ApiError::MethodNotAllowed(m.clone())),
        _ => Err(ApiError::NotFound(String::new())),
    }
}

/// This datacenter's servers with their coordinates (the origin for one that has none stored).
fn datacenter(app: &App) -> DatacenterCoordinates {
    let servers: Vec<String> =
        app.raft.metrics().borrow().membership_config.membership().nodes().map(|(_, n)| n.name.clone()).collect();
    let stored = app.sm.read(|s| s.coordinates().1);
    let coordinates = servers
        .into_iter()
        .map(|node| {
            let coord = stored.iter().find(|e| e.node == node).map_or_else(Coordinate::origin, |e| e.coord.clone());
            CoordinateEntry { node, segment: String::new(), coord }
        })
        .collect();
    DatacenterCoordinates { datacenter: app.config.datacenter.clone(), area_id: "wan".into(), coordinates }
}

async fn nodes(app: &Arc<App>, req: &Req, node: Option<&str>) -> ApiResult {
    let opts = QueryOpts::parse(req)?;
    // Forwarded first when this server may not answer, so the token is checked where it is.
    blocking::check_read(app, &opts).await?;
    let a = authorize(app, req)?;
    let (index, list) = blocking::run(
        app,
        &opts,
        || vec![WatchKey::Table(Table::Coordinates)],
        |s| {
            let (i, list) = s.coordinates();
            (i, list.into_iter().filter(|e| node.is_none_or(|n| e.node == n)).collect::<Vec<_>>())
        },
    )
    .await?;
    let (list, filtered) = filter_by(list, |e| a.allows(Resource::Node, &e.node, Access::Read));
    // One node's coordinate: 404 when it has none, as Consul answers.
    if node.is_some() && list.is_empty() {
        return Ok(with_query_meta(app, super::text(StatusCode::NOT_FOUND, ""), index));
    }
    Ok(mark_filtered(with_query_meta(app, ok_json(&list), index), filtered))
}

async fn update(app: &Arc<App>, req: &Req) -> ApiResult {
    let entry: CoordinateEntry = super::json::decode(&req.body)?;
    if entry.node.is_empty() {
        return Err(ApiError::BadRequest("Missing node name".into()));
    }
    if !entry.coord.is_valid() {
        return Err(ApiError::BadRequest(format!(
            "Invalid coordinate: {} finite components (Vec, Error, Adjustment, Height) are needed",
            crate::api::COORDINATE_DIMENSIONS
        )));
    }
    let a = authorize_write(app, req)?;
    require(&a, Resource::Node, &entry.node, Access::Write)?;
    if app.sm.read(|s| s.catalog_node(&entry.node).1.is_none()) {
        return Err(ApiError::BadRequest(format!("Node {:?} is not registered", entry.node)));
    }
    require_leader(app)?;
    match app.propose(Command::CoordinateUpdate { updates: vec![entry] }).await?.1 {
        CommandResult::Bool(_) => Ok(super::text(StatusCode::OK, "")),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}
