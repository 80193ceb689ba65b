//! `/v1/acl/auth-method*`, `/v1/acl/binding-rule*`, `/v1/acl/login` and `/v1/acl/logout`: auth
//! methods and their binding rules, and logging in with a bearer token they trust
//! (`crate::auth_method` verifies it and applies the rules).

use std::sync::Arc;

use warp::http::Method;

use super::acl::{list, new_token, require_global, write};
use super::{ok_json, require_leader, with_query_meta, ApiError, ApiResult, Req};
use crate::acl::{Access, Authorizer, Global};
use crate::api::{
    AclAuthMethod, AclBindingRule, AclLink, AclLoginRequest, AclNodeIdentity, AclServiceIdentity, AclToken,
};
use crate::app::App;
use crate::auth_method::{self, LoginError};
use crate::state::Command;

/// Config entries that are credentials (the TokenReview caller's JWT), hidden from callers without
/// `acl:write` as token secrets are: `acl:read` is for seeing setups, not for borrowing them.
const CREDENTIALS: &[&str] = &["ServiceAccountJWT"];

fn hide_credentials(mut m: AclAuthMethod, authz: &Authorizer) -> AclAuthMethod {
    if !authz.allows_global(Global::Acl, Access::Write) {
        for (key, value) in m.config.iter_mut().flatten() {
            if CREDENTIALS.iter().any(|c| c.eq_ignore_ascii_case(key)) && !value.is_null() {
                *value = "<hidden>".into();
            }
        }
    }
    m
}

/// Answers the auth method and binding rule endpoints (`None`: not one of them).
pub async fn handle(app: &Arc<App>, req: &Req, parts: &[&str], authz: &Authorizer) -> Option<ApiResult> {
    let read = || require_global(authz, Global::Acl, Access::Read);
    let write_access = || require_global(authz, Global::Acl, Access::Write);
    let missing = || ApiError::NotFound(String::new());
    let m = &req.method;
    Some(match (parts, m) {
        (["auth-methods"], &Method::GET) => match read() {
            // Listings leave out each method's Config, as Consul's do.
            Ok(()) => list(app, req, |s| s.acl_auth_methods(), |m| AclAuthMethod { config: None, ..m }).await,
            Err(e) => Err(e),
        },
        (["auth-method"], &Method::PUT) => {
            async {
                write_access()?;
                let m: AclAuthMethod = super::json::decode(&req.body)?;
                auth_method::validate(&m).map_err(ApiError::BadRequest)?;
                if app.sm.read(|s| s.acl_auth_method(&m.name).1.is_some()) {
                    return Err(ApiError::BadRequest(format!(
                        "Invalid Auth Method: an auth method named {:?} already exists",
                        m.name
                    )));
                }
                require_leader(app)?;
                write(app, Command::AclAuthMethodSet { method: m.clone() }).await?;
                Ok(ok_json(&app.sm.read(|s| s.acl_auth_method(&m.name).1)))
            }
            .await
        }
        (["auth-method", name], &Method::GET) => {
            async {
                read()?;
                let (index, m) = app.sm.read(|s| s.acl_auth_method(name));
                let m = hide_credentials(m.ok_or_else(missing)?, authz);
                Ok(with_query_meta(app, ok_json(&m), index))
            }
            .await
        }
        (["auth-method", name], &Method::PUT) => {
            async {
                write_access()?;
                let mut m: AclAuthMethod = super::json::decode(&req.body)?;
                if !m.name.is_empty() && m.name != *name {
                    return Err(ApiError::BadRequest("Auth Method name in URL and payload do not match".into()));
                }
                m.name = name.to_string();
                if app.sm.read(|s| s.acl_auth_method(name).1.is_none()) {
                    return Err(ApiError::NotFound(format!("Cannot find auth method {name:?} to update")));
                }
                auth_method::validate(&m).map_err(ApiError::BadRequest)?;
                require_leader(app)?;
                write(app, Command::AclAuthMethodSet { method: m }).await?;
                Ok(ok_json(&app.sm.read(|s| s.acl_auth_method(name).1)))
            }
            .await
        }
        (["auth-method", name], &Method::DELETE) => {
            async {
                write_access()?;
                require_leader(app)?;
                write(app, Command::AclAuthMethodDelete { name: name.to_string() }).await?;
                Ok(ok_json(&true))
            }
            .await
        }
        (["binding-rules"], &Method::GET) => match read() {
            Ok(()) => {
                let method = req.get("authmethod").filter(|m| !m.is_empty()).map(str::to_string);
                let query = move |s: &crate::state::State| {
                    let (i, rules) = s.acl_binding_rules();
                    (i, rules.into_iter().filter(|r| method.as_ref().is_none_or(|m| &r.auth_method == m)).collect())
                };
                list(app, req, query, |r: AclBindingRule| r).await
            }
            Err(e) => Err(e),
        },
        (["binding-rule"], &Method::PUT) => {
            async {
                write_access()?;
                let mut r: AclBindingRule = super::json::decode(&req.body)?;
                r.id = uuid::Uuid::new_v4().to_string();
                put_rule(app, r).await
            }
            .await
        }
        (["binding-rule", id], &Method::GET) => {
            async {
                read()?;
                let (index, r) = app.sm.read(|s| s.acl_binding_rule(id));
                Ok(with_query_meta(app, ok_json(&r.ok_or_else(missing)?), index))
            }
            .await
        }
        (["binding-rule", id], &Method::PUT) => {
            async {
                write_access()?;
                let mut r: AclBindingRule = super::json::decode(&req.body)?;
                if !r.id.is_empty() && r.id != *id {
                    return Err(ApiError::BadRequest("Binding Rule ID in URL and payload do not match".into()));
                }
                if app.sm.read(|s| s.acl_binding_rule(id).1.is_none()) {
                    return Err(ApiError::NotFound(format!("Cannot find binding rule {id:?} to update")));
                }
                r.id = id.to_string();
                put_rule(app, r).await
            }
            .await
        }
        (["binding-rule", id], &Method::DELETE) => {
            async {
                write_access()?;
                require_leader(app)?;
                write(app, Command::AclBindingRuleDelete { id: id.to_string() }).await?;
                Ok(ok_json(&true))
            }
            .await
        }
        (["auth-method" | "binding-rule", ..] | ["auth-methods" | "binding-rules"], m) => {
            Err(ApiError::MethodNotAllowed(m.clone()))
        }
        _ => return None,
    })
}

async fn put_rule(app: &App, r: AclBindingRule) -> ApiResult {
    if !r.selector.trim().is_empty() {
        crate::filter::Filter::parse(&r.selector)
            .map_err(|e| ApiError::BadRequest(format!("Invalid Binding Rule: invalid Selector: {e}")))?;
    }
    require_leader(app)?;
    write(app, Command::AclBindingRuleSet { rule: r.clone() }).await?;
    Ok(ok_json(&app.sm.read(|s| s.acl_binding_rule(&r.id).1)))
}

/// `POST /v1/acl/login` and `/v1/acl/logout` (`None`: neither).
pub async fn login_or_logout(app: &Arc<App>, req: &Req, parts: &[&str]) -> Option<ApiResult> {
    match (parts, &req.method) {
        (["login"], &Method::POST) => Some(login(app, req).await),
        (["logout"], &Method::POST) => Some(logout(app, req).await),
        (["login" | "logout"], m) => Some(Err(ApiError::MethodNotAllowed(m.clone()))),
        _ => None,
    }
}

async fn login(app: &Arc<App>, req: &Req) -> ApiResult {
    let r: AclLoginRequest = super::json::decode(&req.body)?;
    require_leader(app)?;
    let method = app
        .sm
        .read(|s| s.acl_auth_method(&r.auth_method).1)
        .ok_or_else(|| ApiError::Forbidden(format!("ACL not found: auth method {:?} not found", r.auth_method)))?;
    if r.bearer_token.is_empty() {
        return Err(ApiError::BadRequest("Missing auth method bearer token".into()));
    }
    let identity = auth_method::identify(&method, &r.bearer_token, &app.http).await.map_err(|e| match e {
        LoginError::Untrusted(m) => ApiError::Forbidden(format!("Permission denied: {m}")),
        LoginError::Unavailable(m) => ApiError::Internal(m),
    })?;
    let rules: Vec<AclBindingRule> =
        app.sm.read(|s| s.acl_binding_rules().1).into_iter().filter(|b| b.auth_method == method.name).collect();
    let bound = auth_method::bind(&rules, &identity).map_err(ApiError::BadRequest)?;
    // Roles and policies that do not exist (yet) bind nothing, as in Consul.
    let (roles, policies) = app.sm.read(|s| {
        let roles: Vec<AclLink> = bound
            .roles
            .iter()
            .filter(|n| s.acl_role_by_name(n).1.is_some())
            .map(|n| AclLink { name: n.clone(), ..Default::default() })
            .collect();
        let policies: Vec<AclLink> = bound
            .policies
            .iter()
            .filter(|n| s.acl_policy_by_name(n).1.is_some())
            .map(|n| AclLink { name: n.clone(), ..Default::default() })
            .collect();
        (roles, policies)
    });
    let datacenter = app.config.datacenter.clone();
    let token = AclToken {
        description: match r.meta.is_empty() {
            true => "token created via login".into(),
            false => format!("token created via login: {}", serde_json::to_string(&r.meta).unwrap_or_default()),
        },
        service_identities: bound
            .services
            .iter()
            .map(|s| AclServiceIdentity { service_name: s.clone(), datacenters: Vec::new() })
            .collect(),
        node_identities: bound
            .nodes
            .iter()
            .map(|n| AclNodeIdentity { node_name: n.clone(), datacenter: datacenter.clone() })
            .collect(),
        roles,
        policies,
        auth_method: method.name.clone(),
        local: method.token_locality != "global",
        expiration_ttl: Some(method.max_token_ttl.clone()).filter(|t| !t.is_empty()),
        ..Default::default()
    };
    if token.service_identities.is_empty()
        && token.node_identities.is_empty()
        && token.roles.is_empty()
        && token.policies.is_empty()
    {
        return Err(ApiError::Forbidden("Permission denied: no binding rule of this auth method matches".into()));
    }
    let token = new_token(token)?;
    write(app, Command::AclTokenSet { token: token.clone() }).await?;
    Ok(ok_json(&app.sm.read(|s| s.acl_token(&token.accessor_id).1)))
}

/// Destroys the request's token, which a login must have made.
async fn logout(app: &Arc<App>, req: &Req) -> ApiResult {
    let secret = crate::web::carried_token(req).ok_or_else(|| ApiError::Forbidden("ACL not found".into()))?;
    require_leader(app)?;
    let now = super::acl::now_rfc3339();
    let token = app
        .sm
        .read(|s| s.acl_token_by_secret(&secret, &now).cloned())
        .ok_or_else(|| ApiError::Forbidden("ACL not found".into()))?;
    if token.auth_method.is_empty() {
        return Err(ApiError::Forbidden("Permission denied: the token was not created by a login".into()));
    }
    write(app, Command::AclTokenDelete { accessor: token.accessor_id }).await?;
    Ok(ok_json(&true))
}
