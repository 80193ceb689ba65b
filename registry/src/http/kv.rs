//! `/v1/kv/*` and `/v1/txn`.

use std::sync::Arc;

use warp::http::{HeaderValue, Method, StatusCode};

use super::acl::{authorize_write, authorizer_in, denied, filter_by, mark_filtered, require, token_of};
use super::blocking::{self, QueryOpts};
use super::{json, ok_json, require_leader, with_query_meta, ApiError, ApiResult, Req};
use crate::acl::{Access, Resource};
use crate::api::{TxnOp, TxnResponse};
use crate::app::{now_ms, App};
use crate::state::{Command, CommandResult, KvSetMode, WatchKey};

pub async fn handle(app: &Arc<App>, req: &Req, key: &str) -> ApiResult {
    match req.method {
        Method::GET => get(app, req, key).await,
        Method::PUT => put(app, req, key).await,
        Method::DELETE => delete(app, req, key).await,
        ref m => Err(ApiError::MethodNotAllowed(m.clone())),
    }
}

fn parse_u64(req: &Req, name: &str) -> Result<Option<u64>, ApiError> {
    match req.get(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::BadRequest(format!("strconv.ParseUint: parsing {v:?}: invalid syntax (parameter {name})"))
        }),
    }
}

async fn get(app: &Arc<App>, req: &Req, key: &str) -> ApiResult {
    let opts = QueryOpts::parse(req)?;
    let token = token_of(app, req);
    if req.has("keys") || req.has("recurse") {
        let sep = req.get("separator").map(str::to_string);
        let prefix = key.to_string();
        let keys_only = req.has("keys");
        // Authorization runs inside the query: a blocking query re-checks it on every wake.
        let (index, result) = blocking::run(
            app,
            &opts,
            || vec![WatchKey::KvPrefix(prefix.clone())],
            |s| {
                let listing = authorizer_in(app, s, &token).map(|a| {
                    if keys_only {
                        let (i, keys) = s.kv_keys(&prefix, sep.as_deref());
                        let (keys, f) = filter_by(keys, |k| a.allows(Resource::Key, k, Access::Read));
                        (i, Listing::Keys(keys), f)
                    } else {
                        let (i, entries) = s.kv_list(&prefix);
                        let (entries, f) = filter_by(entries, |e| a.allows(Resource::Key, &e.key, Access::Read));
                        (i, Listing::Entries(entries), f)
                    }
                });
                (listing.as_ref().map_or(s.indexes().kvs, |l| l.0), listing)
            },
        )
        .await?;
        let (_, listing, filtered) = result?;
        let resp = match listing {
            Listing::Keys(k) => list_or_404(app, index, &k),
            Listing::Entries(e) => list_or_404(app, index, &e),
        };
        return Ok(mark_filtered(resp, filtered));
    }
    let k = key.to_string();
    let (index, entry) = blocking::run(
        app,
        &opts,
        || vec![WatchKey::Kv(k.clone())],
        |s| {
            let (i, entry) = s.kv_get(&k);
            // Denied callers learn nothing, not even whether the key exists.
            let allowed = authorizer_in(app, s, &token).and_then(|a| {
                if a.allows(Resource::Key, &k, Access::Read) {
                    Ok(entry)
                } else {
                    Err(denied("key", &k, Access::Read))
                }
            });
            (i, allowed)
        },
    )
    .await?;
    let Some(entry) = entry? else {
        return Ok(with_query_meta(app, super::text(StatusCode::NOT_FOUND, ""), index));
    };
    if req.has("raw") {
        let mut r = warp::http::Response::new(bytes::Bytes::from(entry.value.unwrap_or_default()));
        r.headers_mut().insert("content-type", HeaderValue::from_static("text/plain"));
        return Ok(with_query_meta(app, r, index));
    }
    Ok(with_query_meta(app, ok_json(&[entry]), index))
}

enum Listing {
    Keys(Vec<String>),
    Entries(Vec<crate::api::KvPair>),
}

/// Consul answers an empty listing with 404 (and still an index).
fn list_or_404<T: serde::Serialize>(app: &App, index: u64, items: &[T]) -> super::Resp {
    if items.is_empty() {
        with_query_meta(app, super::text(StatusCode::NOT_FOUND, ""), index)
    } else {
        with_query_meta(app, ok_json(items), index)
    }
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::BadRequest("Missing key name".into()));
    }
    Ok(())
}

async fn put(app: &Arc<App>, req: &Req, key: &str) -> ApiResult {
    check_key(key)?;
    require(&authorize_write(app, req)?, Resource::Key, key, Access::Write)?;
    let flags = parse_u64(req, "flags")?.unwrap_or(0);
    let max = app.config.kv_max_value_size;
    if req.body.len() > max {
        return Err(ApiError::TooLarge(format!(
            "Request body({} bytes) too large, max size: {max} bytes. See https://www.consul.io/docs/agent/options.html#kv_max_value_size.",
            req.body.len()
        )));
    }
    let mode = match (parse_u64(req, "cas")?, req.get("acquire"), req.get("release")) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return Err(ApiError::BadRequest("Conflicting flags: cas, acquire and release are exclusive".into()))
        }
        (Some(cas), None, None) => KvSetMode::Cas(cas),
        (None, Some(s), None) => KvSetMode::Acquire(s.to_string()),
        (None, None, Some(s)) => KvSetMode::Release(s.to_string()),
        (None, None, None) => KvSetMode::Plain,
    };
    require_leader(app)?;
    let cmd = Command::KvSet { key: key.to_string(), value: req.body.to_vec(), flags, mode, now_ms: now_ms() };
    match app.propose(cmd).await?.1 {
        CommandResult::Bool(b) => Ok(ok_json(&b)),
        CommandResult::Rejected(msg) => Err(ApiError::BadRequest(msg)),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}

async fn delete(app: &Arc<App>, req: &Req, key: &str) -> ApiResult {
    let recurse = req.has("recurse");
    if !recurse {
        check_key(key)?;
    }
    let authz = authorize_write(app, req)?;
    if recurse && !authz.allows_write_prefix(Resource::Key, key) {
        return Err(denied("key", key, Access::Write));
    }
    require(&authz, Resource::Key, key, Access::Write)?;
    let cas = parse_u64(req, "cas")?;
    if cas.is_some() && recurse {
        return Err(ApiError::BadRequest("Conflicting flags: cas and recurse".into()));
    }
    require_leader(app)?;
    let cmd = Command::KvDelete { key: key.to_string(), recurse, cas };
    match app.propose(cmd).await?.1 {
        CommandResult::Bool(b) => Ok(ok_json(&b)),
        CommandResult::Rejected(msg) => Err(ApiError::BadRequest(msg)),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}

/// Consul's limit on operations in one transaction.
const MAX_TXN_OPS: usize = 128;

pub async fn txn(app: &Arc<App>, req: &Req) -> ApiResult {
    if req.method != Method::PUT {
        return Err(ApiError::MethodNotAllowed(req.method.clone()));
    }
    let ops: Vec<TxnOp> = super::json::decode(&req.body)?;
    if ops.len() > MAX_TXN_OPS {
        return Err(ApiError::TooLarge(format!(
            "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
            ops.len()
        )));
    }
    let authz = authorize_write(app, req)?;
    let mut kv_ops = Vec::with_capacity(ops.len());
    for (i, op) in ops.into_iter().enumerate() {
        let kv =
            op.kv.ok_or_else(|| ApiError::BadRequest(format!("operation {i}: only KV operations are supported")))?;
        let allowed = match kv.verb.as_str() {
            "get" | "check-index" | "check-session" | "check-not-exists" => {
                authz.allows(Resource::Key, &kv.key, Access::Read)
            }
            // A tree read answers every key under the prefix: read on the prefix, and no deny below it.
            "get-tree" => authz.allows(Resource::Key, &kv.key, Access::Read) && authz.allows_read_prefix(&kv.key),
            "delete-tree" => authz.allows_write_prefix(Resource::Key, &kv.key),
            _ => authz.allows(Resource::Key, &kv.key, Access::Write),
        };
        if !allowed {
            return Err(ApiError::Forbidden(format!("Permission denied: operation {i} ({} {:?})", kv.verb, kv.key)));
        }
        let size = kv.value.as_ref().map_or(0, Vec::len);
        if size > app.config.kv_max_value_size {
            return Err(ApiError::TooLarge(format!(
                "Value for key {:?} is too large ({size} > {} bytes)",
                kv.key, app.config.kv_max_value_size
            )));
        }
        kv_ops.push(kv);
    }
    // Read-only transactions go through the log too: simple, and linearizable.
    require_leader(app)?;
    let (index, result) = app.propose(Command::Txn { ops: kv_ops, now_ms: now_ms() }).await?;
    match result {
        CommandResult::Txn(t @ TxnResponse { errors: None, .. }) => Ok(with_query_meta(app, ok_json(&t), index)),
        CommandResult::Txn(t) => {
            // A rolled-back transaction's body also carries Consul's query meta fields.
            let mut body = serde_json::to_value(&t).map_err(|e| ApiError::Internal(e.to_string()))?;
            body["Index"] = 0.into();
            body["LastContact"] = app.last_contact_ms().into();
            body["KnownLeader"] = app.knows_leader().into();
            body["ConsistencyLevel"] = "".into();
            body["NotModified"] = false.into();
            body["Backend"] = 0.into();
            Ok(with_query_meta(app, json(StatusCode::CONFLICT, &body), index))
        }
        CommandResult::Rejected(msg) => Err(ApiError::BadRequest(msg)),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}
