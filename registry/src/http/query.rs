//! `/v1/query`: prepared queries. Definitions go through Raft; `execute` and `explain` resolve a
//! name or ID (rendering templates), pick the service's instances as the query asks
//! (`prepared_query`), and when none is left here try the failover datacenters in order.

use std::sync::Arc;

use rand::seq::SliceRandom;
use warp::http::{Method, StatusCode};

use super::acl::{authorize, authorize_write, require};
use super::{ok_json, require_leader, text, with_query_meta, ApiError, ApiResult, Req};
use crate::acl::{Access, Authorizer, Global, Resource};
use crate::api::{PreparedQuery, QueryExecuteResponse, QueryExplainResponse, ServiceEntry};
use crate::app::App;
use crate::prepared_query as pq;
use crate::state::{Command, CommandResult, State, Table, WatchKey};

pub async fn handle(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    let (first, op) = tail.split_once('/').unwrap_or((tail, ""));
    match (first, op, &req.method) {
        ("", "", &Method::POST) => create(app, req).await,
        ("", "", &Method::GET) => list(app, req).await,
        ("", "", m) => Err(ApiError::MethodNotAllowed(m.clone())),
        (id, "", &Method::GET) => get(app, req, id).await,
        (id, "", &Method::PUT) => update(app, req, id).await,
        (id, "", &Method::DELETE) => delete(app, req, id).await,
        (name, "execute", &Method::GET) => execute(app, req, name).await,
        (name, "explain", &Method::GET) => explain(app, req, name).await,
        (_, "" | "execute" | "explain", m) => Err(ApiError::MethodNotAllowed(m.clone())),
        _ => Err(ApiError::NotFound(String::new())),
    }
}

/// A query's token is shown only to those who may manage ACLs, as Consul redacts it.
fn redacted(mut q: PreparedQuery, a: &Authorizer) -> PreparedQuery {
    if !q.token.is_empty() && !a.allows_global(Global::Acl, Access::Write) {
        q.token = "<hidden>".into();
    }
    q
}

fn decode(req: &Req) -> Result<PreparedQuery, ApiError> {
    let q: PreparedQuery = super::json::decode(&req.body)?;
    pq::validate(&q).map_err(ApiError::BadRequest)?;
    Ok(q)
}

async fn propose(app: &App, query: Command) -> Result<(), ApiError> {
    match app.propose(query).await?.1 {
        CommandResult::None => Ok(()),
        CommandResult::Rejected(msg) => Err(ApiError::BadRequest(msg)),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}

fn existing(app: &App, id: &str) -> Option<PreparedQuery> {
    app.sm.read(|s| s.prepared_queries().1.into_iter().find(|q| q.id == id).cloned())
}

async fn create(app: &Arc<App>, req: &Req) -> ApiResult {
    let mut q = decode(req)?;
    let authz = authorize_write(app, req)?;
    require(&authz, Resource::Query, &q.name, Access::Write)?;
    require_leader(app)?;
    q.id = uuid::Uuid::new_v4().to_string();
    let id = q.id.clone();
    propose(app, Command::QuerySet { query: q }).await?;
    Ok(ok_json(&serde_json::json!({ "ID": id })))
}

async fn update(app: &Arc<App>, req: &Req, id: &str) -> ApiResult {
    let mut q = decode(req)?;
    let authz = authorize_write(app, req)?;
    let old = existing(app, id)
        .ok_or_else(|| ApiError::BadRequest(format!("Cannot modify non-existent prepared query: '{id}'")))?;
    require(&authz, Resource::Query, &old.name, Access::Write)?;
    require(&authz, Resource::Query, &q.name, Access::Write)?;
    require_leader(app)?;
    q.id = id.to_string();
    propose(app, Command::QuerySet { query: q }).await?;
    Ok(text(StatusCode::OK, ""))
}

async fn delete(app: &Arc<App>, req: &Req, id: &str) -> ApiResult {
    let authz = authorize_write(app, req)?;
    let old = existing(app, id)
        .ok_or_else(|| ApiError::BadRequest(format!("Cannot delete non-existent prepared query: '{id}'")))?;
    require(&authz, Resource::Query, &old.name, Access::Write)?;
    require_leader(app)?;
    propose(app, Command::QueryDelete { id: id.to_string() }).await?;
    Ok(text(StatusCode::OK, ""))
}

async fn list(app: &Arc<App>, req: &Req) -> ApiResult {
    super::catalog::read(
        app,
        req,
        || vec![WatchKey::Table(Table::Queries)],
        |s, a| {
            let (index, all) = s.prepared_queries();
            let before = all.len();
            let kept: Vec<PreparedQuery> = all
                .into_iter()
                .filter(|q| a.allows(Resource::Query, &q.name, Access::Read))
                .map(|q| redacted(q.clone(), a))
                .collect();
            let filtered = kept.len() != before;
            (index, kept, filtered)
        },
    )
    .await
}

async fn get(app: &Arc<App>, req: &Req, id: &str) -> ApiResult {
    super::blocking::check_read(app, &super::QueryOpts::parse(req)?).await?;
    let authz = authorize(app, req)?;
    let q = existing(app, id).ok_or_else(|| ApiError::NotFound("Query not found".into()))?;
    require(&authz, Resource::Query, &q.name, Access::Read)?;
    let index = app.sm.read(|s| s.prepared_queries().0);
    Ok(with_query_meta(app, ok_json(&[redacted(q, &authz)]), index))
}

/// The query `name` resolves to, rendered; 404 when none does.
fn resolved(s: &State, name: &str) -> Result<PreparedQuery, ApiError> {
    match pq::resolve(s.prepared_queries().1, name) {
        None => Err(ApiError::NotFound("Query not found".into())),
        Some(r) => r.map_err(ApiError::BadRequest),
    }
}

async fn explain(app: &Arc<App>, req: &Req, name: &str) -> ApiResult {
    super::blocking::check_read(app, &super::QueryOpts::parse(req)?).await?;
    let authz = authorize(app, req)?;
    let (index, q) = app.sm.read(|s| Ok::<_, ApiError>((s.prepared_queries().0, resolved(s, name)?)))?;
    require(&authz, Resource::Query, &q.name, Access::Read)?;
    Ok(with_query_meta(app, ok_json(&QueryExplainResponse { query: redacted(q, &authz) }), index))
}

async fn execute(app: &Arc<App>, req: &Req, name: &str) -> ApiResult {
    // Consul executes on the leader unless `?stale`: a follower forwards (a write acknowledged a
    // moment ago through another server is then in the answer).
    super::blocking::check_read(app, &super::QueryOpts::parse(req)?).await?;
    let authz = authorize(app, req)?;
    let limit = match req.get("limit") {
        None | Some("") => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| ApiError::BadRequest(format!("Bad limit {v:?}")))?),
    };
    let near = req.get("near").map(str::to_string);
    let (index, q, mut nodes) = app.sm.read(|s| {
        let q = resolved(s, name)?;
        let (index, entries) = s.health_service_refs(&q.service.service);
        let readable = entries
            .into_iter()
            .filter(|e| {
                authz.allows(Resource::Service, &e.service.service, Access::Read)
                    && authz.allows(Resource::Node, &e.node.node, Access::Read)
            })
            .map(|e| e.to_owned_entry())
            .collect();
        let mut nodes = pq::filter(&q.service, readable);
        nodes.shuffle(&mut rand::rng());
        let near = near.clone().unwrap_or_else(|| q.service.near.clone());
        let near = if near == "_agent" { app.agent.node().name } else { near };
        if !near.is_empty() {
            super::catalog::sort_near(s, Some(&near), &mut nodes, |e| &e.node.node);
        }
        Ok::<_, ApiError>((index, q, nodes))
    })?;
    let mut datacenter = app.config.datacenter.clone();
    let mut failovers = 0;
    if nodes.is_empty() {
        let by_distance = match &app.wan {
            Some(wan) => wan.datacenters(&app.config.datacenter).await,
            None => vec![app.config.datacenter.clone()],
        };
        for dc in pq::failover_targets(&q.service.failover, &app.config.datacenter, &by_distance) {
            failovers += 1;
            let mut remote = remote_instances(app, req, &q.service.service, &dc).await;
            if remote.is_empty() {
                continue;
            }
            remote = pq::filter(&q.service, remote);
            if !remote.is_empty() {
                remote.shuffle(&mut rand::rng());
                nodes = remote;
                datacenter = dc;
                break;
            }
        }
    }
    if let Some(n) = limit {
        nodes.truncate(n);
    }
    let answer =
        QueryExecuteResponse { service: q.service.service.clone(), nodes, dns: q.dns.clone(), datacenter, failovers };
    Ok(with_query_meta(app, ok_json(&answer), index))
}

/// A service's instances in another datacenter, read through the same routing as `?dc=`
/// (with the caller's token); none when that datacenter cannot answer.
async fn remote_instances(app: &Arc<App>, req: &Req, service: &str, dc: &str) -> Vec<ServiceEntry> {
    let token = super::acl::token_of(app, req);
    let path = format!("/v1/health/service/{service}");
    let resp = super::get_as(app, path, vec![("dc".into(), dc.into())], token.as_deref()).await;
    if resp.status() != StatusCode::OK {
        tracing::debug!(dc, status = %resp.status(), "prepared query failover: no answer");
        return Vec::new();
    }
    serde_json::from_slice(resp.body()).unwrap_or_default()
}
