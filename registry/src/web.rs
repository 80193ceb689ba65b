//! The HTTP vocabulary the servers' API and the agent API (servers and sidecars) share: a request
//! captured whole, Consul-style errors with their status codes, answers, body decoding and the ACL
//! checks every handler makes.

use bytes::Bytes;
use serde::Serialize;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::acl::{Access, Authorizer, Global, Resource};

/// Request bodies, decoded as Consul decodes them (see `api::json`), failing with a 400.
pub mod json {
    use super::ApiError;

    pub fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
        crate::api::json::decode(body).map_err(ApiError::BadRequest)
    }

    pub fn decode_or_default<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
        crate::api::json::decode_or_default(body).map_err(ApiError::BadRequest)
    }
}

/// An incoming API request, captured whole so it can be forwarded to the leader as it came.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub raw_query: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    /// Consul treats `?recurse`, `?recurse=` and `?recurse=1` alike: present means on.
    pub fn has(&self, key: &str) -> bool {
        self.query.iter().any(|(k, v)| k == key && v != "false" && v != "0")
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

pub type Resp = warp::http::Response<Bytes>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    /// 429: this server will not take more of these now.
    #[error("{0}")]
    TooMany(String),
    /// 403: the token may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 401: Consul's answer to ACL endpoints while ACLs are disabled.
    #[error("{0}")]
    Unauthorized(String),
    #[error("method {0} not allowed")]
    MethodNotAllowed(Method),
    #[error("{0}")]
    Internal(String),
    /// 501: a Consul feature Roster does not have (yet); the message says which.
    #[error("{0}")]
    NotImplemented(String),
    #[error("No cluster leader")]
    NoLeader,
    /// This server is not the leader: forward the request.
    #[error("not the leader")]
    NotLeader,
    /// The request is for another datacenter: forward it to one of its servers.
    #[error("No path to datacenter {0:?}")]
    OtherDatacenter(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal(_) | ApiError::NoLeader | ApiError::NotLeader => StatusCode::INTERNAL_SERVER_ERROR,
            // Answered so only where nothing forwards (a server without a WAN pool forwards nowhere).
            ApiError::OtherDatacenter(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn into_resp(self) -> Resp {
        text(self.status(), self.to_string())
    }
}

pub type ApiResult = Result<Resp, ApiError>;

pub fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut r = warp::http::Response::new(Bytes::from(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Resp {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut r = warp::http::Response::new(Bytes::from(bytes));
            *r.status_mut() = status;
            r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding response: {e}")),
    }
}

pub fn ok_json<T: Serialize + ?Sized>(value: &T) -> Resp {
    json(StatusCode::OK, value)
}

pub fn denied(resource: &str, name: &str, access: Access) -> ApiError {
    let need = match access {
        Access::Write => "write",
        Access::List => "list",
        _ => "read",
    };
    ApiError::Forbidden(format!("Permission denied: token lacks permission '{resource}:{need}' on {name:?}"))
}

pub fn require(a: &Authorizer, resource: Resource, name: &str, access: Access) -> Result<(), ApiError> {
    if a.allows(resource, name, access) {
        Ok(())
    } else {
        Err(denied(resource.name(), name, access))
    }
}

pub fn require_global(a: &Authorizer, global: Global, access: Access) -> Result<(), ApiError> {
    if a.allows_global(global, access) {
        Ok(())
    } else {
        let name = match global {
            Global::Operator => "operator",
            Global::Acl => "acl",
            Global::Keyring => "keyring",
            Global::Mesh => "mesh",
        };
        Err(ApiError::Forbidden(format!(
            "Permission denied: token lacks permission '{name}:{}'",
            if access == Access::Write { "write" } else { "read" }
        )))
    }
}

pub fn filter_by<T>(list: Vec<T>, allowed: impl Fn(&T) -> bool) -> (Vec<T>, bool) {
    let before = list.len();
    let kept: Vec<T> = list.into_iter().filter(|x| allowed(x)).collect();
    let filtered = kept.len() != before;
    (kept, filtered)
}

pub fn mark_filtered(mut resp: Resp, filtered: bool) -> Resp {
    if filtered {
        resp.headers_mut().insert("x-consul-results-filtered-by-acls", warp::http::HeaderValue::from_static("true"));
    }
    resp
}

/// `?filter=`: a bexpr expression over the answer's items.
pub fn parse_filter(req: &Req) -> Result<Option<crate::filter::Filter>, ApiError> {
    match req.get("filter") {
        Some(f) if !f.is_empty() => crate::filter::Filter::parse(f).map(Some).map_err(ApiError::BadRequest),
        _ => Ok(None),
    }
}

/// The token a request carries: `X-Consul-Token`, `Authorization: Bearer`, or `?token=`.
pub fn carried_token(req: &Req) -> Option<String> {
    if let Some(t) = req.headers.get("x-consul-token").and_then(|v| v.to_str().ok()).filter(|t| !t.is_empty()) {
        return Some(t.to_string());
    }
    if let Some(t) = req
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .filter(|t| !t.is_empty())
    {
        return Some(t.trim().to_string());
    }
    req.get("token").filter(|t| !t.is_empty()).map(str::to_string)
}
