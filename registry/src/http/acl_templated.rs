//! `/v1/acl/templated-policies`, `/v1/acl/templated-policy/name/:name` and
//! `/v1/acl/templated-policy/preview/:name`: the built-in templates (`crate::acl::templated`).

use std::collections::BTreeMap;

use warp::http::Method;

use super::acl::require_global;
use super::{ok_json, ApiError, ApiResult, Req};
use crate::acl::templated::{self, TemplatedPolicy};
use crate::acl::{Access, Authorizer, Global};
use crate::api::{AclPolicy, AclTemplateVariables};

/// Answers the templated-policy endpoints (`None`: not one of them). Template names hold a `/`.
pub fn handle(req: &Req, parts: &[&str], authz: &Authorizer) -> Option<ApiResult> {
    let m = &req.method;
    Some(match parts {
        ["templated-policies"] if m == Method::GET => require_global(authz, Global::Acl, Access::Read).map(|()| {
            let all: BTreeMap<&str, &TemplatedPolicy> =
                templated::TEMPLATES.iter().map(|t| (t.template_name, t)).collect();
            ok_json(&all)
        }),
        ["templated-policy", "name", name @ ..] if m == Method::GET => require_global(authz, Global::Acl, Access::Read)
            .and_then(|()| {
                let name = name.join("/");
                templated::template(&name)
                    .map(ok_json)
                    .ok_or_else(|| ApiError::NotFound(format!("templated policy {name:?} not found")))
            }),
        ["templated-policy", "preview", name @ ..] if m == Method::POST => {
            require_global(authz, Global::Acl, Access::Read).and_then(|()| preview(&name.join("/"), &req.body))
        }
        ["templated-policies"] | ["templated-policy", ..] => Err(ApiError::MethodNotAllowed(m.clone())),
        _ => return None,
    })
}

/// The policy a template and its variables stand for, as Consul previews it.
fn preview(name: &str, body: &[u8]) -> ApiResult {
    if templated::template(name).is_none() {
        return Err(ApiError::NotFound(format!("templated policy {name:?} not found")));
    }
    let vars: AclTemplateVariables = super::json::decode_or_default(body)?;
    let rules =
        templated::render(name, Some(vars.name.as_str()).filter(|n| !n.is_empty())).map_err(ApiError::BadRequest)?;
    let id = uuid::Uuid::new_v4().to_string();
    Ok(ok_json(&AclPolicy {
        name: format!("synthetic-policy-{}", &id.replace('-', "")[..16]),
        id,
        description: format!("synthetic policy generated from templated policy: {name}"),
        rules,
        ..Default::default()
    }))
}
