//! `/v1/catalog/*` and `/v1/health/*`.

use std::sync::Arc;

use warp::http::Method;

use super::acl::{authorize_write, authorizer_in, filter_by, mark_filtered, require, token_of};
use super::blocking::{self, QueryOpts};
use super::{ok_json, require_leader, with_query_meta, ApiError, ApiResult, Req};
use crate::acl::{Access, Authorizer, Resource};
use crate::api::{DeregisterRequest, HealthStatus, RegisterRequest};
use crate::app::{now_ms, App};
use crate::filter::Filter;
use crate::state::{Command, CommandResult, State, Table, WatchKey};

pub(super) fn get_only(req: &Req) -> Result<(), ApiError> {
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

/// Runs a (possibly blocking) read and answers it with the query headers. The query gets the
/// caller's authorizer, resolved again on every wake, and says whether it dropped anything.
pub(super) async fn read<T: Body>(
    app: &Arc<App>,
    req: &Req,
    keys: impl Fn() -> Vec<WatchKey>,
    query: impl Fn(&State, &Authorizer) -> (u64, T, bool),
) -> ApiResult {
    let opts = QueryOpts::parse(req)?;
    let token = token_of(app, req);
    let (index, result) = blocking::run(app, &opts, keys, |s| match authorizer_in(app, s, &token) {
        Ok(a) => {
            let (i, v, f) = query(s, &a);
            (i, Ok((v, f)))
        }
        // An error answers at once: an index past any the client could hold.
        Err(e) => (u64::MAX, Err(e)),
    })
    .await?;
    let (value, filtered) = result?;
    Ok(mark_filtered(super::with_consistency(with_query_meta(app, value.into_response(), index), &opts), filtered))
}

/// An answer body: any serializable value, or JSON already encoded under the state's read lock.
pub(super) trait Body {
    fn into_response(self) -> super::Resp;
}

impl<T: serde::Serialize> Body for T {
    fn into_response(self) -> super::Resp {
        ok_json(&self)
    }
}

/// JSON bytes encoded while the state was locked.
struct Encoded(Vec<u8>);

impl Body for Encoded {
    fn into_response(self) -> super::Resp {
        let mut r = warp::http::Response::new(bytes::Bytes::from(self.0));
        r.headers_mut().insert("content-type", warp::http::HeaderValue::from_static("application/json"));
        r
    }
}

/// `?near=`: the node whose coordinate orders the answer (`_agent`: this agent's node).
fn near_of(app: &App, req: &Req) -> Option<String> {
    match req.get("near")? {
        "" => None,
        "_agent" => Some(app.agent.node().name),
        node => Some(node.to_string()),
    }
}

/// Orders `list` by estimated round trip from `near`'s node, nearest first (stable); nodes without
/// a coordinate go last, and when the source has none nothing moves, as Consul sorts.
pub(super) fn sort_near<T>(s: &State, near: Option<&str>, list: &mut [T], node_of: impl Fn(&T) -> &str) {
    let Some(from) = near.and_then(|n| s.coordinate_of(n)) else { return };
    let distance = |node: &str| s.coordinate_of(node).map_or(f64::INFINITY, |c| from.distance_to(c));
    list.sort_by(|a, b| distance(node_of(a)).total_cmp(&distance(node_of(b))));
}

fn can_read_node(a: &Authorizer, node: &str) -> bool {
    a.allows(Resource::Node, node, Access::Read)
}

fn can_read_service(a: &Authorizer, service: &str) -> bool {
    a.allows(Resource::Service, service, Access::Read)
}

/// A check is readable with read on its service, or on its node for node-level checks.
fn can_read_check(a: &Authorizer, c: &crate::api::HealthCheck) -> bool {
    if c.service_name.is_empty() {
        can_read_node(a, &c.node)
    } else {
        can_read_service(a, &c.service_name)
    }
}

pub async fn handle_catalog(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    let (op, arg) = tail.split_once('/').unwrap_or((tail, ""));
    match op {
        "register" => register(app, req).await,
        "deregister" => deregister(app, req).await,
        "datacenters" => {
            get_only(req)?;
            let own = &app.config.datacenter;
            Ok(ok_json(&match &app.wan {
                Some(wan) => wan.datacenters(own).await,
                None => vec![own.clone()],
            }))
        }
        "nodes" => {
            get_only(req)?;
            let filter = parse_filter(req)?;
            let near = near_of(app, req);
            read(
                app,
                req,
                || vec![WatchKey::Table(Table::Nodes)],
                |s, a| {
                    let (i, list) = filtered(&filter, s.catalog_nodes());
                    let (mut list, f) = filter_by(list, |n| can_read_node(a, &n.node));
                    sort_near(s, near.as_deref(), &mut list, |n| &n.node);
                    (i, list, f)
                },
            )
            .await
        }
        "services" => {
            get_only(req)?;
            read(
                app,
                req,
                || vec![WatchKey::Table(Table::Services)],
                |s, a| {
                    let (i, services) = s.catalog_services();
                    let before = services.len();
                    let kept: std::collections::BTreeMap<_, _> =
                        services.into_iter().filter(|(name, _)| can_read_service(a, name)).collect();
                    let f = kept.len() != before;
                    (i, kept, f)
                },
            )
            .await
        }
        "service" if !arg.is_empty() => {
            get_only(req)?;
            let wanted = tags_wanted(req);
            let filter = parse_filter(req)?;
            let near = near_of(app, req);
            read(
                app,
                req,
                || vec![WatchKey::Service(arg.to_string())],
                |s, a| {
                    let (i, list) = s.catalog_service(arg);
                    let list: Vec<_> = list
                        .into_iter()
                        .filter(|e| has_tags(&e.service_tags, &wanted))
                        .filter(|e| filter.as_ref().is_none_or(|f| f.matches(e)))
                        .collect();
                    let (mut list, f) =
                        filter_by(list, |e| can_read_service(a, &e.service_name) && can_read_node(a, &e.node));
                    sort_near(s, near.as_deref(), &mut list, |e| &e.node);
                    (i, list, f)
                },
            )
            .await
        }
        "connect" if !arg.is_empty() => {
            get_only(req)?;
            mesh_view(app, req, arg).await
        }
        "node" if !arg.is_empty() => {
            get_only(req)?;
            // Consul answers an unknown (or unreadable) node with 200 and null.
            read(
                app,
                req,
                || vec![WatchKey::Node(arg.to_string())],
                |s, a| {
                    let (i, node) = s.catalog_node(arg);
                    match node {
                        Some(_) if !can_read_node(a, arg) => (i, None, true),
                        Some(mut n) => {
                            let before = n.services.len();
                            n.services.retain(|_, svc| can_read_service(a, &svc.service));
                            let f = n.services.len() != before;
                            (i, Some(n), f)
                        }
                        None => (i, None, false),
                    }
                },
            )
            .await
        }
        _ => Err(ApiError::NotFound(String::new())),
    }
}

/// The Connect and ingress views of a service (`catalog/connect`, `health/connect`,
/// `health/ingress`): instances reachable through the service mesh. Roster has no service mesh,
/// so no instance is a Connect proxy, Connect-native or behind an ingress gateway: the answer is
/// the empty list, with the service's index so that blocking queries on it behave.
async fn mesh_view(app: &Arc<App>, req: &Req, service: &str) -> ApiResult {
    let service = service.to_string();
    let key = service.clone();
    read(
        app,
        req,
        move || vec![WatchKey::Service(key.clone())],
        |s, _| (s.catalog_service(&service).0, Vec::<crate::api::CatalogService>::new(), false),
    )
    .await
}

/// Keeps the items `?filter=` selects (all of them without a filter).
fn filtered<T: serde::Serialize>(filter: &Option<Filter>, (index, list): (u64, Vec<T>)) -> (u64, Vec<T>) {
    match filter {
        None => (index, list),
        Some(f) => (index, list.into_iter().filter(|x| f.matches(x)).collect()),
    }
}

pub(super) use crate::web::parse_filter;

async fn register(app: &Arc<App>, req: &Req) -> ApiResult {
    if req.method != Method::PUT {
        return Err(ApiError::MethodNotAllowed(req.method.clone()));
    }
    let r: RegisterRequest = super::json::decode(&req.body)?;
    if r.node.as_deref().unwrap_or("").is_empty() {
        return Err(ApiError::BadRequest("Must provide node".into()));
    }
    super::check_datacenter(app, r.datacenter.as_deref())?;
    let authz = authorize_write(app, req)?;
    let node = r.node.clone().unwrap_or_default();
    // Changing the node itself needs node:write; a service or its checks need service:write.
    let existing = app.sm.read(|s| s.catalog_node(&node).1.map(|n| n.node));
    let node_unchanged = existing.is_some_and(|n| {
        r.skip_node_update
            || (r.address.as_deref() == Some(n.address.as_str())
                && r.tagged_addresses == n.tagged_addresses
                && r.node_meta == n.meta)
    });
    if !node_unchanged || r.service.is_none() {
        require(&authz, Resource::Node, &node, Access::Write)?;
    }
    if let Some(svc) = &r.service {
        require(&authz, Resource::Service, &svc.service, Access::Write)?;
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
    super::check_datacenter(app, r.datacenter.as_deref())?;
    let authz = authorize_write(app, req)?;
    let node = r.node.clone().unwrap_or_default();
    match r.service_id.as_deref().filter(|s| !s.is_empty()) {
        Some(id) => {
            let name = app.sm.read(|s| s.node_services(&node).into_iter().find(|x| x.id == id).map(|x| x.service));
            if let Some(name) = name {
                require(&authz, Resource::Service, &name, Access::Write)?;
            }
        }
        None => require(&authz, Resource::Node, &node, Access::Write)?,
    }
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

pub async fn handle_health(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    get_only(req)?;
    let (op, arg) = tail.split_once('/').unwrap_or((tail, ""));
    if arg.is_empty() {
        return Err(ApiError::NotFound(String::new()));
    }
    let filter = parse_filter(req)?;
    let near = near_of(app, req);
    let near = near.as_deref();
    match op {
        "node" => {
            read(
                app,
                req,
                || vec![WatchKey::Node(arg.to_string())],
                |s, a| {
                    let (i, list) = filtered(&filter, s.node_checks(arg));
                    let (list, f) = filter_by(list, |c| can_read_check(a, c));
                    (i, list, f)
                },
            )
            .await
        }
        "checks" => {
            read(
                app,
                req,
                || vec![WatchKey::Service(arg.to_string())],
                |s, a| {
                    let (i, list) = filtered(&filter, s.service_checks(arg));
                    let (mut list, f) = filter_by(list, |c| can_read_check(a, c) && can_read_node(a, &c.node));
                    sort_near(s, near, &mut list, |c| &c.node);
                    (i, list, f)
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
                |s, a| {
                    // Borrowed entries, encoded under the read lock: a 10,000-instance answer is
                    // not deep-copied first.
                    let (i, list) = s.health_service_refs(arg);
                    let list: Vec<_> = list
                        .into_iter()
                        .filter(|e| !passing || e.checks.iter().all(|c| c.status == HealthStatus::Passing))
                        .filter(|e| has_tags(&e.service.tags, &wanted))
                        .filter(|e| filter.as_ref().is_none_or(|f| f.matches(e)))
                        .collect();
                    let (mut list, f) =
                        filter_by(list, |e| can_read_service(a, &e.service.service) && can_read_node(a, &e.node.node));
                    sort_near(s, near, &mut list, |e| &e.node.node);
                    (i, Encoded(serde_json::to_vec(&list).unwrap_or_default()), f)
                },
            )
            .await
        }
        "connect" | "ingress" => mesh_view(app, req, arg).await,
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
                |s, a| {
                    let (i, list) = filtered(&filter, s.checks_in_state(state));
                    let (mut list, f) = filter_by(list, |c| can_read_check(a, c));
                    sort_near(s, near, &mut list, |c| &c.node);
                    (i, list, f)
                },
            )
            .await
        }
        _ => Err(ApiError::NotFound(String::new())),
    }
}
