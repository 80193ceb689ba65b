//! `/v1/catalog/*` and `/v1/health/*`.

use std::sync::Arc;

use warp::http::Method;

use super::blocking::{self, QueryOpts};
use super::{ok_json, require_leader, with_query_meta, ApiError, ApiResult, Req};
use crate::api::{DeregisterRequest, HealthStatus, RegisterRequest, ServiceEntry};
use crate::server::{now_ms, App};
use crate::state::{Command, CommandResult, State, Table, WatchKey};

fn get_only(req: &Req) -> Result<(), ApiError> {
    if req.method == Method::GET {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed(req.method.clone()))
    }
}

fn tags_wanted(req: &Req) -> Vec<String> {
    req.query.iter().filter(|(k, _)| k == "tag").map(|(_, v)| v.clone()).collect()
}

fn has_tags(tags: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| tags.contains(w))
}

/// Runs a (possibly blocking) read and answers it with the query headers.
async fn read<T: serde::Serialize>(
    app: &Arc<App>,
    req: &Req,
    keys: impl Fn() -> Vec<WatchKey>,
    query: impl Fn(&State) -> (u64, T),
) -> ApiResult {
    let opts = QueryOpts::parse(req)?;
    let (index, value) = blocking::run(app, &opts, keys, query).await?;
    Ok(super::with_consistency(with_query_meta(app, ok_json(&value), index), &opts))
}

pub async fn handle_catalog(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    let (op, arg) = tail.split_once('/').unwrap_or((tail, ""));
    match op {
        "register" => register(app, req).await,
        "deregister" => deregister(app, req).await,
        "datacenters" => {
            get_only(req)?;
            Ok(ok_json(&[&app.config.datacenter]))
        }
        "nodes" => {
            get_only(req)?;
            let filter = parse_filter(req)?;
            read(
                app,
                req,
                || vec![WatchKey::Table(Table::Nodes)],
                |s| {
                    let (i, nodes) = s.catalog_nodes();
                    (i, nodes.into_iter().filter(|n| filter.as_ref().is_none_or(|f| f.matches(n))).collect::<Vec<_>>())
                },
            )
            .await
        }
        "services" => {
            get_only(req)?;
            read(app, req, || vec![WatchKey::Table(Table::Services)], |s| s.catalog_services()).await
        }
        "service" if !arg.is_empty() => {
            get_only(req)?;
            let wanted = tags_wanted(req);
            let filter = parse_filter(req)?;
            read(
                app,
                req,
                || vec![WatchKey::Service(arg.to_string())],
                |s| {
                    let (i, list) = s.catalog_service(arg);
                    let list: Vec<_> = list
                        .into_iter()
                        .filter(|e| has_tags(&e.service_tags, &wanted))
                        .filter(|e| filter.as_ref().is_none_or(|f| f.matches(e)))
                        .collect();
                    (i, list)
                },
            )
            .await
        }
        "node" if !arg.is_empty() => {
            get_only(req)?;
            let opts = QueryOpts::parse(req)?;
            let (index, node) =
                blocking::run(app, &opts, || vec![WatchKey::Node(arg.to_string())], |s| s.catalog_node(arg)).await?;
            // Consul answers an unknown node with 200 and null.
            Ok(super::with_consistency(with_query_meta(app, ok_json(&node), index), &opts))
        }
        _ => Err(ApiError::NotFound(String::new())),
    }
}

fn parse_filter(req: &Req) -> Result<Option<crate::filter::Filter>, ApiError> {
    match req.get("filter") {
        Some(f) if !f.is_empty() => crate::filter::Filter::parse(f).map(Some).map_err(ApiError::BadRequest),
        _ => Ok(None),
    }
}

async fn register(app: &Arc<App>, req: &Req) -> ApiResult {
    if req.method != Method::PUT {
        return Err(ApiError::MethodNotAllowed(req.method.clone()));
    }
    let r: RegisterRequest = super::json::decode(&req.body)?;
    if r.node.as_deref().unwrap_or("").is_empty() {
        return Err(ApiError::BadRequest("Must provide node".into()));
    }
    if let Some(dc) = r.datacenter.as_deref().filter(|d| !d.is_empty()) {
        if dc != app.config.datacenter {
            return Err(ApiError::BadRequest(format!("No path to datacenter {dc:?}")));
        }
    }
    require_leader(app)?;
    match app.propose(Command::Register { request: r, now_ms: now_ms() }).await?.1 {
        CommandResult::Bool(b) => Ok(ok_json(&b)),
        CommandResult::Rejected(msg) => Err(ApiError::BadRequest(msg)),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}

async fn deregister(app: &Arc<App>, req: &Req) -> ApiResult {
    if req.method != Method::PUT {
        return Err(ApiError::MethodNotAllowed(req.method.clone()));
    }
    let r: DeregisterRequest = super::json::decode(&req.body)?;
    if r.node.as_deref().unwrap_or("").is_empty() {
        return Err(ApiError::BadRequest("Must provide node".into()));
    }
    require_leader(app)?;
    match app.propose(Command::Deregister { request: r, now_ms: now_ms() }).await?.1 {
        CommandResult::Bool(b) => Ok(ok_json(&b)),
        CommandResult::Rejected(msg) => Err(ApiError::BadRequest(msg)),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}

/// `?passing`: only entries whose every check is passing.
fn all_passing(e: &ServiceEntry) -> bool {
    e.checks.iter().all(|c| c.status == HealthStatus::Passing)
}

pub async fn handle_health(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    get_only(req)?;
    let (op, arg) = tail.split_once('/').unwrap_or((tail, ""));
    if arg.is_empty() {
        return Err(ApiError::NotFound(String::new()));
    }
    let filter = parse_filter(req)?;
    match op {
        "node" => {
            read(
                app,
                req,
                || vec![WatchKey::Node(arg.to_string())],
                |s| {
                    let (i, list) = s.node_checks(arg);
                    (i, list.into_iter().filter(|c| filter.as_ref().is_none_or(|f| f.matches(c))).collect::<Vec<_>>())
                },
            )
            .await
        }
        "checks" => {
            read(
                app,
                req,
                || vec![WatchKey::Service(arg.to_string())],
                |s| {
                    let (i, list) = s.service_checks(arg);
                    (i, list.into_iter().filter(|c| filter.as_ref().is_none_or(|f| f.matches(c))).collect::<Vec<_>>())
                },
            )
            .await
        }
        "service" => {
            let passing = req.has("passing");
            let wanted = tags_wanted(req);
            read(
                app,
                req,
                || vec![WatchKey::Service(arg.to_string())],
                |s| {
                    let (i, list) = s.health_service(arg);
                    let list: Vec<_> = list
                        .into_iter()
                        .filter(|e| !passing || all_passing(e))
                        .filter(|e| has_tags(&e.service.tags, &wanted))
                        .filter(|e| filter.as_ref().is_none_or(|f| f.matches(e)))
                        .collect();
                    (i, list)
                },
            )
            .await
        }
        "state" => {
            let state = match arg {
                "any" => None,
                s => Some(HealthStatus::parse(s).ok_or_else(|| {
                    ApiError::BadRequest(format!("Invalid check state {s:?}: use any, passing, warning or critical"))
                })?),
            };
            read(
                app,
                req,
                || vec![WatchKey::Table(Table::Checks)],
                |s| {
                    let (i, list) = s.checks_in_state(state);
                    (i, list.into_iter().filter(|c| filter.as_ref().is_none_or(|f| f.matches(c))).collect::<Vec<_>>())
                },
            )
            .await
        }
        _ => Err(ApiError::NotFound(String::new())),
    }
}
