//! `/v1/acl/*`, and how every other endpoint learns what the caller's token may do.
//!
//! The token travels as `X-Consul-Token`, `Authorization: Bearer`, or `?token=`; none means the
//! anonymous token. Tokens are resolved against the replicated ACL tables on every request (and on
//! every wake of a blocking query), so a change takes effect at once.

use std::sync::Arc;
use std::time::SystemTime;

use warp::http::Method;

use super::blocking::{self, QueryOpts};
use super::{ok_json, require_leader, with_query_meta, ApiError, ApiResult, Req};
use crate::acl::{Access, Authorizer, Global};
use crate::api::{parse_go_duration, AclPolicy, AclRole, AclToken, ANONYMOUS_TOKEN_ACCESSOR, ANONYMOUS_TOKEN_SECRET};
use crate::app::App;
use crate::state::acl::Resolved;
use crate::state::{Command, CommandResult, State, Table, WatchKey};
pub use crate::web::{denied, filter_by, mark_filtered, require, require_global};

/// The secret a request acts with: the one it carries, else the agent's default token (set through
/// `/v1/agent/token/default`), else none (anonymous), as Consul resolves it.
pub fn token_of(app: &App, req: &Req) -> Option<String> {
    crate::web::carried_token(req).or_else(|| app.agent.token("default"))
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// What the caller may do, resolved against `state` (call it inside blocking-query closures so each
/// wake re-checks).
pub fn authorizer_in(app: &App, state: &State, token: &Option<String>) -> Result<Authorizer, ApiError> {
    if !app.config.acl_enabled {
        return Ok(Authorizer::management());
    }
    let default_allow = app.config.acl_default_allow();
    let secret = token.as_deref().unwrap_or(ANONYMOUS_TOKEN_SECRET);
    match state.acl_resolve(secret, default_allow, &now_rfc3339(), &app.config.datacenter) {
        Resolved::Token { authorizer, .. } => Ok(authorizer),
        // A token only the primary knows: what it said (`acl_remote::prepare` asked it).
        Resolved::NotFound if crate::acl_remote::asks_primary(&app.config, state) => {
            match app.remote_tokens.current(token) {
                Some(rules) => Ok(rules.authorizer()),
                None if token.is_none() => Ok(Authorizer::new(default_allow, [])),
                None => Err(ApiError::Forbidden("ACL not found".into())),
            }
        }
        Resolved::NotFound if token.is_none() => Ok(Authorizer::new(default_allow, [])),
        Resolved::NotFound => Err(ApiError::Forbidden("ACL not found".into())),
    }
}

/// For writes: resolve on the leader (a follower forwards first), so a token created a moment ago
/// through another server is already known.
pub fn authorize_write(app: &App, req: &Req) -> Result<Authorizer, ApiError> {
    require_leader(app)?;
    authorize(app, req)
}

/// Resolves the request's token against the current state.
pub fn authorize(app: &App, req: &Req) -> Result<Authorizer, ApiError> {
    let token = token_of(app, req);
    app.sm.read(|s| authorizer_in(app, s, &token))
}

/// Drops what the caller may not read; says whether anything was dropped.
fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Secrets are shown only to callers with `acl:write`.
fn redact(mut t: AclToken, a: &Authorizer) -> AclToken {
    if !a.allows_global(Global::Acl, Access::Write) {
        t.secret_id = "<hidden>".into();
    }
    t
}

pub(super) async fn write(app: &App, cmd: Command) -> Result<(), ApiError> {
    match app.propose(cmd).await?.1 {
        CommandResult::Rejected(msg) if msg.starts_with("ACL bootstrap no longer allowed") => {
            Err(ApiError::Forbidden(msg))
        }
        CommandResult::Rejected(msg) => Err(ApiError::BadRequest(msg)),
        _ => Ok(()),
    }
}

pub(super) fn new_token(mut t: AclToken) -> Result<AclToken, ApiError> {
    if t.accessor_id.is_empty() {
        t.accessor_id = new_uuid();
    }
    if t.secret_id.is_empty() {
        t.secret_id = new_uuid();
    }
    t.create_time = now_rfc3339();
    // One form for every expiry (RFC 3339, UTC, seconds), so that expiry compares as strings.
    if let Some(exp) = t.expiration_time.take().filter(|s| !s.is_empty()) {
        let at = humantime::parse_rfc3339(&exp)
            .map_err(|e| ApiError::BadRequest(format!("Invalid ExpirationTime {exp:?} (RFC 3339, UTC): {e}")))?;
        if at <= SystemTime::now() {
            return Err(ApiError::BadRequest("ExpirationTime cannot be in the past".into()));
        }
        t.expiration_time = Some(humantime::format_rfc3339_seconds(at).to_string());
    }
    if let Some(ttl) = t.expiration_ttl.take().filter(|s| !s.is_empty()) {
        let d = parse_go_duration(&ttl).map_err(|e| ApiError::BadRequest(format!("Invalid ExpirationTTL: {e}")))?;
        t.expiration_time = Some(humantime::format_rfc3339_seconds(SystemTime::now() + d).to_string());
    }
    Ok(t)
}

pub async fn handle(app: &Arc<App>, req: &Req, tail: &str) -> ApiResult {
    if !app.config.acl_enabled {
        return Err(ApiError::Unauthorized("ACL support disabled".into()));
    }
    let parts: Vec<&str> = tail.split('/').collect();
    let m = req.method.clone();
    if parts.as_slice() == ["bootstrap"] && m == Method::PUT {
        // Only the primary bootstraps; a secondary's tokens come from it. Consul answers a
        // secondary's bootstrap as if ACLs were off.
        if app.config.primary_datacenter() != app.config.datacenter {
            return Err(ApiError::Unauthorized("ACL support disabled".into()));
        }
        require_leader(app)?;
        let token =
            new_token(AclToken { description: "Bootstrap Token (Global Management)".into(), ..Default::default() })?;
        write(app, Command::AclBootstrap { token: token.clone() }).await?;
        let (_, t) = app.sm.read(|s| s.acl_token(&token.accessor_id));
        return Ok(ok_json(&t.unwrap_or(token)));
    }
    // Login and logout authenticate by their own means (a bearer token; the token to destroy).
    if let Some(answer) = super::acl_auth::login_or_logout(app, req, &parts).await {
        return answer;
    }
    // Replication status: any caller may read it, from the leader (which runs replication).
    if parts.as_slice() == ["replication"] {
        if m != Method::GET {
            return Err(ApiError::MethodNotAllowed(m));
        }
        require_leader(app)?;
        return Ok(ok_json(&app.acl_replication.status()));
    }
    // The primary owns policies, roles and global tokens: a secondary sends their writes there,
    // as Consul does. Only local tokens are written here.
    if let Some(primary) = owner_elsewhere(app, req, &parts) {
        // The primary sending it here means the two disagree on which one is the primary.
        let from = req.headers.get(super::FROM_DATACENTER).and_then(|v| v.to_str().ok());
        if from == Some(primary.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "datacenter {primary:?} sent this ACL write here as to the primary, but this datacenter's primary_datacenter is {primary:?}: configure one primary_datacenter everywhere"
            )));
        }
        return Err(ApiError::OtherDatacenter(primary));
    }
    // ACL reads and writes are answered by the leader, like Consul's default consistency.
    let authz = authorize_write(app, req)?;
    if let Some(answer) = super::acl_auth::handle(app, req, &parts, &authz).await {
        return answer;
    }
    if let Some(answer) = super::acl_templated::handle(req, &parts, &authz) {
        return answer;
    }
    let token = token_of(app, req);
    // Tokens, policies and roles are looked up by UUID: anything else is refused before the lookup,
    // with Consul's message (Consul answers 500; it is the client's mistake).
    if let [kind @ ("token" | "policy" | "role"), id, ..] = parts.as_slice() {
        if !matches!(*id, "self" | "name") && (id.len() != 36 || uuid::Uuid::parse_str(id).is_err()) {
            return Err(ApiError::BadRequest(format!(
                "failed acl {kind} lookup: index error: UUID must be 36 characters"
            )));
        }
    }
    // A well-formed ID that names nothing: Consul's "ACL not found" (403), which clients raise on.
    let not_found = || ApiError::Forbidden("ACL not found".into());
    // Roles (and auth methods, binding rules) that do not exist are a plain 404, as Consul answers.
    let role_not_found = || ApiError::NotFound(String::new());
    match (parts.as_slice(), &m) {
        (["token", "self"], &Method::GET) => {
            let secret = token.unwrap_or_else(|| ANONYMOUS_TOKEN_SECRET.to_string());
            let t = app.sm.read(|s| s.acl_token_by_secret(&secret, &now_rfc3339()).cloned());
            t.map(|t| ok_json(&t)).ok_or_else(|| ApiError::Forbidden("ACL not found".into()))
        }
        (["tokens"], &Method::GET) => {
            require_global(&authz, Global::Acl, Access::Read)?;
            // Consul's filters: tokens linked to a policy or a role (by ID), with a service
            // identity for a service, or made by a login through an auth method.
            let param = |k: &str| req.get(k).filter(|v| !v.is_empty()).map(str::to_string);
            let (policy, role, service, method) =
                (param("policy"), param("role"), param("servicename"), param("authmethod"));
            let selected = move |t: &AclToken| {
                policy.as_ref().is_none_or(|p| t.policies.iter().any(|l| &l.id == p))
                    && role.as_ref().is_none_or(|r| t.roles.iter().any(|l| &l.id == r))
                    && service.as_ref().is_none_or(|s| t.service_identities.iter().any(|i| &i.service_name == s))
                    && method.as_ref().is_none_or(|m| &t.auth_method == m)
            };
            list(
                app,
                req,
                move |s| {
                    let (i, tokens) = s.acl_tokens();
                    (i, tokens.into_iter().filter(|t| selected(t)).collect())
                },
                move |t| redact(t, &authz),
            )
            .await
        }
        (["policies"], &Method::GET) => {
            require_global(&authz, Global::Acl, Access::Read)?;
            list(app, req, |s| s.acl_policies(), |p| p).await
        }
        (["roles"], &Method::GET) => {
            require_global(&authz, Global::Acl, Access::Read)?;
            list(app, req, |s| s.acl_roles(), |r| r).await
        }
        (["token"], &Method::PUT) => {
            require_global(&authz, Global::Acl, Access::Write)?;
            let t = new_token(super::json::decode::<AclToken>(&req.body)?)?;
            require_leader(app)?;
            write(app, Command::AclTokenSet { token: t.clone() }).await?;
            Ok(ok_json(&app.sm.read(|s| s.acl_token(&t.accessor_id).1)))
        }
        (["token", id], &Method::GET) => {
            require_global(&authz, Global::Acl, Access::Read)?;
            let (index, t) = app.sm.read(|s| s.acl_token(id));
            let t = t.ok_or_else(not_found)?;
            Ok(with_query_meta(app, ok_json(&redact(t, &authz)), index))
        }
        (["token", id], &Method::PUT) => {
            require_global(&authz, Global::Acl, Access::Write)?;
            let mut t: AclToken = super::json::decode(&req.body)?;
            let (_, old) = app.sm.read(|s| s.acl_token(id));
            let old = old.ok_or_else(|| ApiError::NotFound(format!("Cannot find token {id:?}")))?;
            t.accessor_id = id.to_string();
            if t.secret_id.is_empty() {
                t.secret_id = old.secret_id;
            }
            t.expiration_time = old.expiration_time;
            require_leader(app)?;
            write(app, Command::AclTokenSet { token: t }).await?;
            Ok(ok_json(&app.sm.read(|s| s.acl_token(id).1)))
        }
        (["token", id, "clone"], &Method::PUT) => {
            require_global(&authz, Global::Acl, Access::Write)?;
            let (_, old) = app.sm.read(|s| s.acl_token(id));
            let old = old.ok_or_else(|| ApiError::NotFound(format!("Cannot find token {id:?}")))?;
            #[derive(serde::Deserialize, Default)]
            #[serde(rename_all = "PascalCase", default)]
            struct Clone {
                description: Option<String>,
            }
            let c: Clone = super::json::decode_or_default(&req.body)?;
            let t = new_token(AclToken {
                description: c.description.unwrap_or(old.description),
                policies: old.policies,
                roles: old.roles,
                service_identities: old.service_identities,
                node_identities: old.node_identities,
                templated_policies: old.templated_policies,
                local: old.local,
                expiration_time: old.expiration_time,
                ..Default::default()
            })?;
            require_leader(app)?;
            write(app, Command::AclTokenSet { token: t.clone() }).await?;
            Ok(ok_json(&app.sm.read(|s| s.acl_token(&t.accessor_id).1)))
        }
        (["token", id], &Method::DELETE) => {
            require_global(&authz, Global::Acl, Access::Write)?;
            require_leader(app)?;
            write(app, Command::AclTokenDelete { accessor: id.to_string() }).await?;
            Ok(ok_json(&true))
        }
        (["policy"], &Method::PUT) => {
            require_global(&authz, Global::Acl, Access::Write)?;
            let mut p: AclPolicy = super::json::decode(&req.body)?;
            // Validate before anything is written: a bad rule names its line.
            crate::acl::Rules::parse(&p.rules).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            p.id = new_uuid();
            require_leader(app)?;
            write(app, Command::AclPolicySet { policy: p.clone() }).await?;
            Ok(ok_json(&app.sm.read(|s| s.acl_policy(&p.id).1)))
        }
        (["policy", "name", name], &Method::GET) => {
            require_global(&authz, Global::Acl, Access::Read)?;
            let (index, p) = app.sm.read(|s| s.acl_policy_by_name(name));
            let p = p.ok_or_else(not_found)?;
            Ok(with_query_meta(app, ok_json(&p), index))
        }
        (["policy", id], &Method::GET) => {
            require_global(&authz, Global::Acl, Access::Read)?;
            let (index, p) = app.sm.read(|s| s.acl_policy(id));
            let p = p.ok_or_else(not_found)?;
            Ok(with_query_meta(app, ok_json(&p), index))
        }
        (["policy", id], &Method::PUT) => {
            require_global(&authz, Global::Acl, Access::Write)?;
            let mut p: AclPolicy = super::json::decode(&req.body)?;
            crate::acl::Rules::parse(&p.rules).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            if app.sm.read(|s| s.acl_policy(id).1).is_none() {
                return Err(ApiError::NotFound(format!("Cannot find policy {id:?}")));
            }
            p.id = id.to_string();
            require_leader(app)?;
            write(app, Command::AclPolicySet { policy: p }).await?;
            Ok(ok_json(&app.sm.read(|s| s.acl_policy(id).1)))
        }
        (["policy", id], &Method::DELETE) => {
            require_global(&authz, Global::Acl, Access::Write)?;
            require_leader(app)?;
            write(app, Command::AclPolicyDelete { id: id.to_string() }).await?;
            Ok(ok_json(&true))
        }
        (["role"], &Method::PUT) => {
            require_global(&authz, Global::Acl, Access::Write)?;
            let mut r: AclRole = super::json::decode(&req.body)?;
            r.id = new_uuid();
            require_leader(app)?;
            write(app, Command::AclRoleSet { role: r.clone() }).await?;
            Ok(ok_json(&app.sm.read(|s| s.acl_role(&r.id).1)))
        }
        (["role", "name", name], &Method::GET) => {
            require_global(&authz, Global::Acl, Access::Read)?;
            let (index, r) = app.sm.read(|s| s.acl_role_by_name(name));
            let r = r.ok_or_else(role_not_found)?;
            Ok(with_query_meta(app, ok_json(&r), index))
        }
        (["role", id], &Method::GET) => {
            require_global(&authz, Global::Acl, Access::Read)?;
            let (index, r) = app.sm.read(|s| s.acl_role(id));
            let r = r.ok_or_else(role_not_found)?;
            Ok(with_query_meta(app, ok_json(&r), index))
        }
        (["role", id], &Method::PUT) => {
            require_global(&authz, Global::Acl, Access::Write)?;
            let mut r: AclRole = super::json::decode(&req.body)?;
            if app.sm.read(|s| s.acl_role(id).1).is_none() {
                return Err(ApiError::NotFound(format!("Cannot find role {id:?}")));
            }
            r.id = id.to_string();
            require_leader(app)?;
            write(app, Command::AclRoleSet { role: r }).await?;
            Ok(ok_json(&app.sm.read(|s| s.acl_role(id).1)))
        }
        (["role", id], &Method::DELETE) => {
            require_global(&authz, Global::Acl, Access::Write)?;
            require_leader(app)?;
            write(app, Command::AclRoleDelete { id: id.to_string() }).await?;
            Ok(ok_json(&true))
        }
        (["bootstrap"] | ["token", ..] | ["tokens"] | ["policy", ..] | ["policies"] | ["role", ..] | ["roles"], m) => {
            Err(ApiError::MethodNotAllowed(m.clone()))
        }
        _ => Err(ApiError::NotFound(String::new())),
    }
}

/// The primary datacenter, when this is a secondary and the request writes what the primary owns.
fn owner_elsewhere(app: &App, req: &Req, parts: &[&str]) -> Option<String> {
    let primary = app.config.primary_datacenter();
    if primary == app.config.datacenter {
        return None;
    }
    if req.method == Method::GET {
        // A secondary holding no copy of the primary's ACLs reads them there, as Consul's does
        // without token replication; one holding a copy answers from it.
        let here = app.sm.read(|s| !crate::acl_remote::asks_primary(&app.config, s));
        return (!here && !matches!(parts, ["replication"])).then(|| primary.to_string());
    }
    // A token's locality: the copy here says (it cannot change), else the body; a token unknown
    // here and named in no body may be a global one not replicated yet: the primary knows.
    let local_here = |id: &str| app.sm.read(|s| s.acl_token(id).1.map(|t| t.local));
    let local_in_body = || super::json::decode::<AclToken>(&req.body).ok().map(|t| t.local);
    let global = match parts {
        ["policy", ..] | ["role", ..] => true,
        ["token"] => local_in_body() == Some(false),
        ["token", id] if req.method == Method::PUT => !local_here(id).or_else(local_in_body).unwrap_or(false),
        ["token", id, ..] => local_here(id) != Some(true),
        _ => false,
    };
    global.then(|| primary.to_string())
}

pub(super) async fn list<T: serde::Serialize, U: serde::Serialize>(
    app: &App,
    req: &Req,
    query: impl Fn(&State) -> (u64, Vec<T>),
    shape: impl Fn(T) -> U,
) -> ApiResult {
    let opts = QueryOpts::parse(req)?;
    let (index, items) = blocking::run(app, &opts, || vec![WatchKey::Table(Table::Acl)], query).await?;
    let items: Vec<U> = items.into_iter().map(shape).collect();
    Ok(with_query_meta(app, ok_json(&items), index))
}

/// `/v1/internal/acl/rules`: the rules the request's own token acts with (any token may ask about
/// itself), so that an agent resolving tokens itself enforces what the servers would.
///
/// A secondary datacenter asks its primary this for tokens it holds no copy of (`acl_remote`): the
/// rules are then those the token has in the asking datacenter, and a token local to this one is
/// refused, as Consul refuses it.
pub fn effective_rules(app: &App, req: &Req) -> ApiResult {
    if !app.config.acl_enabled {
        return Err(ApiError::Unauthorized("ACL support disabled".into()));
    }
    let token = token_of(app, req);
    let secret = token.clone().unwrap_or_else(|| ANONYMOUS_TOKEN_SECRET.to_string());
    let default_allow = app.config.acl_default_allow();
    let here = app.config.datacenter.as_str();
    let for_dc = req.headers.get(super::FROM_DATACENTER).and_then(|v| v.to_str().ok()).unwrap_or(here);
    let answer = app.sm.read(|s| {
        let Some(token) = s.acl_token_by_secret(&secret, &now_rfc3339()) else {
            let remote = crate::acl_remote::asks_primary(&app.config, s).then(|| app.remote_tokens.current(&token));
            return remote.flatten().ok_or_else(|| "ACL not found".to_string());
        };
        if token.local && for_dc != here {
            return Err(format!("This is a local token in datacenter {here:?}"));
        }
        Ok(match s.acl_effective_rules(token, for_dc) {
            None => crate::acl::EffectiveRules { management: true, default_allow, rules: Vec::new() },
            Some(rules) => crate::acl::EffectiveRules {
                management: false,
                default_allow,
                rules: rules.into_iter().map(|r| r.into_owned()).collect(),
            },
        })
    });
    answer.map(|a| ok_json(&a)).map_err(ApiError::Forbidden)
}

/// Leader start-up duty with ACLs on (not in a replicating secondary): the anonymous token exists, and the configured initial
/// management token (bootstrapping with it, as Consul does).
pub async fn ensure_acl_bootstrap(app: &App) -> Result<(), crate::app::ProposeError> {
    // A replicating secondary gets its management and anonymous tokens from the primary, as
    // Consul's secondaries do.
    if !app.config.acl_enabled || app.config.acl_replicates() {
        return Ok(());
    }
    if let Some(secret) = app.config.acl_initial_management.clone().filter(|s| !s.is_empty()) {
        let exists = app.sm.read(|s| s.acl_token_by_secret(&secret, &now_rfc3339()).is_some());
        if !exists {
            let token = AclToken {
                accessor_id: new_uuid(),
                secret_id: secret,
                description: "Initial Management Token".into(),
                create_time: now_rfc3339(),
                policies: vec![crate::api::AclLink {
                    id: crate::api::GLOBAL_MANAGEMENT_POLICY_ID.into(),
                    name: crate::api::GLOBAL_MANAGEMENT_POLICY_NAME.into(),
                }],
                ..Default::default()
            };
            let cmd = if app.sm.read(|s| s.acl_bootstrapped()) {
                Command::AclTokenSet { token }
            } else {
                Command::AclBootstrap { token }
            };
            app.propose(cmd).await?;
        }
    }
    if app.sm.read(|s| s.acl_token(ANONYMOUS_TOKEN_ACCESSOR).1.is_none()) {
        let token = AclToken {
            accessor_id: ANONYMOUS_TOKEN_ACCESSOR.into(),
            secret_id: ANONYMOUS_TOKEN_SECRET.into(),
            description: "Anonymous Token".into(),
            create_time: now_rfc3339(),
            ..Default::default()
        };
        app.propose(Command::AclTokenSet { token }).await?;
    }
    Ok(())
}
