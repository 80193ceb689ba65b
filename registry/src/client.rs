//! A typed HTTP client for Roster's (and Consul's) `/v1` API, shared by the sidecar, the operator and
//! the servers themselves (leader forwarding). Rustls with the ring provider only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use crate::api::{
    AclPolicy, AclToken, AutopilotHealth, CatalogNode, DeregisterRequest, HealthCheck, KvPair, RegisterRequest,
    ServiceEntry,
};

static CRYPTO: Once = Once::new();

/// Installs ring as the process's rustls provider (once). aws-lc is deliberately not built.
pub fn ensure_crypto_provider() {
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A reqwest client builder with the crypto provider installed.
pub fn http_builder() -> reqwest::ClientBuilder {
    ensure_crypto_provider();
    reqwest::Client::builder().tcp_nodelay(true)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("request to {addr} failed: {source}")]
    Transport { addr: String, source: reqwest::Error },
    #[error("{status}: {body}")]
    Status { status: u16, body: String },
    #[error("no server answered ({0})")]
    NoServer(String),
}

/// A client over one or more servers: each call starts at the last server that answered and fails
/// over to the others in turn.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    servers: Arc<Vec<String>>,
    preferred: Arc<AtomicUsize>,
    token: Option<String>,
}

/// A read's answer with its `X-Consul-Index`.
#[derive(Debug, Clone)]
pub struct Indexed<T> {
    pub index: u64,
    pub value: T,
}

/// An answer passed through as it came (the sidecar forwards these to its app).
#[derive(Debug)]
pub struct RawResponse {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Client {
    /// `servers` are HTTP addresses (host:port, DNS names allowed; `https://host:port` for HTTPS). No request timeout: blocking
    /// queries may take minutes; connecting is bounded.
    pub fn new(servers: Vec<String>) -> Result<Self, ClientError> {
        Self::with_tls(servers, None)
    }

    /// As [`Client::new`]; servers given as `https://host:port` are dialled with `tls`.
    pub fn with_tls(servers: Vec<String>, tls: Option<rustls::ClientConfig>) -> Result<Self, ClientError> {
        let mut builder = http_builder().connect_timeout(Duration::from_secs(2));
        if let Some(config) = tls {
            builder = builder.use_preconfigured_tls(config);
        }
        let http = builder.build().map_err(|e| ClientError::Transport { addr: String::new(), source: e })?;
        Ok(Client { http, servers: Arc::new(servers), preferred: Arc::new(AtomicUsize::new(0)), token: None })
    }

    /// Sends this ACL token (`X-Consul-Token`) on every call that does not carry its own.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Sends one request, failing over between servers. A write is retried on another server only
    /// when it could not be sent (connection refused or reset before an answer); a read also when
    /// the server answers 5xx and `retry_5xx` is set.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        headers: reqwest::header::HeaderMap,
        body: bytes::Bytes,
        retry_5xx: bool,
    ) -> Result<RawResponse, ClientError> {
        let n = self.servers.len();
        if n == 0 {
            return Err(ClientError::NoServer("no servers configured".into()));
        }
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let idempotent = matches!(method, reqwest::Method::GET | reqwest::Method::HEAD);
        let mut last = String::new();
        for k in 0..n {
            let i = (start + k) % n;
            let server = &self.servers[i];
            let mut req = self
                .http
                .request(method.clone(), crate::tls::dial::api_url(server, path_and_query))
                .headers(headers.clone())
                .body(body.clone());
            if let Some(t) = &self.token {
                if !headers.contains_key("x-consul-token") {
                    req = req.header("x-consul-token", t);
                }
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    match resp.bytes().await {
                        Ok(body) => {
                            if retry_5xx && status.is_server_error() && k + 1 < n {
                                last = format!("{server}: {status}");
                                continue;
                            }
                            self.preferred.store(i, Ordering::Relaxed);
                            return Ok(RawResponse { status, headers, body });
                        }
                        Err(e) if idempotent => last = format!("{server}: {e}"),
                        Err(e) => return Err(ClientError::Transport { addr: server.clone(), source: e }),
                    }
                }
                Err(e) if idempotent || e.is_connect() => last = format!("{server}: {e}"),
                Err(e) => return Err(ClientError::Transport { addr: server.clone(), source: e }),
            }
        }
        Err(ClientError::NoServer(last))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u64, reqwest::StatusCode, bytes::Bytes), ClientError> {
        let resp = self
            .raw(method, path_and_query, Default::default(), body.map(bytes::Bytes::from).unwrap_or_default(), true)
            .await?;
        let index =
            resp.headers.get("x-consul-index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok((index, resp.status, resp.body))
    }

    fn check(status: reqwest::StatusCode, body: &bytes::Bytes) -> Result<(), ClientError> {
        if status.is_success() {
            Ok(())
        } else {
            Err(ClientError::Status { status: status.as_u16(), body: String::from_utf8_lossy(body).into_owned() })
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(status: reqwest::StatusCode, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| ClientError::Status { status: status.as_u16(), body: e.to_string() })
    }

    /// `GET /v1/kv/:key`; `None` when the key does not exist.
    pub async fn kv_get(&self, key: &str) -> Result<Indexed<Option<KvPair>>, ClientError> {
        let (index, status, body) = self.send(reqwest::Method::GET, &format!("/v1/kv/{key}"), None).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Indexed { index, value: None });
        }
        Self::check(status, &body)?;
        let mut list: Vec<KvPair> = Self::parse(status, &body)?;
        Ok(Indexed { index, value: list.pop() })
    }

    /// `PUT /v1/kv/:key[?cas=N]`: true when written.
    pub async fn kv_put(&self, key: &str, value: Vec<u8>, cas: Option<u64>) -> Result<bool, ClientError> {
        let path = match cas {
            Some(c) => format!("/v1/kv/{key}?cas={c}"),
            None => format!("/v1/kv/{key}"),
        };
        let (_, status, body) = self.send(reqwest::Method::PUT, &path, Some(value)).await?;
        Self::check(status, &body)?;
        Ok(body.as_ref() == b"true")
    }

    /// `DELETE /v1/kv/:key[?cas=N]`: true when deleted (with `cas`, only if still at that index).
    pub async fn kv_delete(&self, key: &str, cas: Option<u64>) -> Result<bool, ClientError> {
        let path = match cas {
            Some(c) => format!("/v1/kv/{key}?cas={c}"),
            None => format!("/v1/kv/{key}"),
        };
        let (_, status, body) = self.send(reqwest::Method::DELETE, &path, None).await?;
        Self::check(status, &body)?;
        Ok(body.as_ref() == b"true")
    }

    /// `POST /v1/acl/login`: a token for a bearer token the auth method trusts.
    pub async fn acl_login(&self, r: &crate::api::AclLoginRequest) -> Result<crate::api::AclToken, ClientError> {
        let body = serde_json::to_vec(r).map_err(|e| ClientError::Status { status: 0, body: e.to_string() })?;
        let (_, status, body) = self.send(reqwest::Method::POST, "/v1/acl/login", Some(body)).await?;
        Self::check(status, &body)?;
        Self::parse(status, &body)
    }

    /// `POST /v1/acl/logout`: destroys this client's token (one a login made).
    pub async fn acl_logout(&self) -> Result<(), ClientError> {
        let (_, status, body) = self.send(reqwest::Method::POST, "/v1/acl/logout", None).await?;
        Self::check(status, &body)
    }

    pub async fn catalog_register(&self, r: &RegisterRequest) -> Result<(), ClientError> {
        let body = serde_json::to_vec(r).map_err(|e| ClientError::Status { status: 0, body: e.to_string() })?;
        let (_, status, body) = self.send(reqwest::Method::PUT, "/v1/catalog/register", Some(body)).await?;
        Self::check(status, &body)
    }

    pub async fn catalog_deregister(&self, r: &DeregisterRequest) -> Result<(), ClientError> {
        let body = serde_json::to_vec(r).map_err(|e| ClientError::Status { status: 0, body: e.to_string() })?;
        let (_, status, body) = self.send(reqwest::Method::PUT, "/v1/catalog/deregister", Some(body)).await?;
        Self::check(status, &body)
    }

    /// `GET /v1/catalog/node/:node`: the node and its services; `None` when it is not registered.
    pub async fn catalog_node(&self, node: &str) -> Result<Option<CatalogNode>, ClientError> {
        self.catalog_node_in(node, None).await
    }

    /// `GET /v1/catalog/node/:node?dc=`: a node of another datacenter (None: the servers' own).
    pub async fn catalog_node_in(&self, node: &str, dc: Option<&str>) -> Result<Option<CatalogNode>, ClientError> {
        let query =
            dc.map(|d| format!("?dc={}", url::form_urlencoded::byte_serialize(d.as_bytes()).collect::<String>()));
        let path = format!("/v1/catalog/node/{node}{}", query.unwrap_or_default());
        let (_, status, body) = self.send(reqwest::Method::GET, &path, None).await?;
        Self::check(status, &body)?;
        Self::parse(status, &body)
    }

    /// A blocking read of `path`: answers once its `X-Consul-Index` passes `index` or `wait` runs
    /// out, and returns the index it reports (`index` 0: an ordinary read, answered at once).
    pub async fn wait_index(&self, path: &str, index: u64, wait: Duration) -> Result<u64, ClientError> {
        let query = match (index, path.contains('?')) {
            (0, _) => String::new(),
            (_, false) => format!("?index={index}&wait={}ms", wait.as_millis()),
            (_, true) => format!("&index={index}&wait={}ms", wait.as_millis()),
        };
        let (new, status, body) = self.send(reqwest::Method::GET, &format!("{path}{query}"), None).await?;
        // A missing key or an empty listing is a 404 that still carries an index.
        if status != reqwest::StatusCode::NOT_FOUND {
            Self::check(status, &body)?;
        }
        Ok(new)
    }

    /// `GET /v1/catalog/nodes`: every node.
    pub async fn catalog_nodes(&self) -> Result<Vec<crate::api::Node>, ClientError> {
        let (_, status, body) = self.send(reqwest::Method::GET, "/v1/catalog/nodes", None).await?;
        Self::check(status, &body)?;
        Self::parse(status, &body)
    }

    /// `GET /v1/health/state/:state`: every check in that state (`any` for all).
    pub async fn health_state(&self, state: &str) -> Result<Vec<HealthCheck>, ClientError> {
        let (_, status, body) = self.send(reqwest::Method::GET, &format!("/v1/health/state/{state}"), None).await?;
        Self::check(status, &body)?;
        Self::parse(status, &body)
    }

    /// `GET /v1/health/node/:node`: the node's checks.
    pub async fn health_node(&self, node: &str) -> Result<Vec<HealthCheck>, ClientError> {
        let (_, status, body) = self.send(reqwest::Method::GET, &format!("/v1/health/node/{node}"), None).await?;
        Self::check(status, &body)?;
        Self::parse(status, &body)
    }

    /// A JSON call; `None` when the server answers that the thing does not exist: 404, or the
    /// ACL endpoints' 403 "ACL not found" (Consul's answer for a token, policy or role it lacks).
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Option<T>, ClientError> {
        let (_, status, body) = self.send(method, path, body).await?;
        let acl_not_found = status == reqwest::StatusCode::FORBIDDEN && body.as_ref() == b"ACL not found";
        if status == reqwest::StatusCode::NOT_FOUND || acl_not_found {
            return Ok(None);
        }
        Self::check(status, &body)?;
        Self::parse(status, &body).map(Some)
    }

    fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(value).map_err(|e| ClientError::Status { status: 0, body: e.to_string() })
    }

    /// `GET /v1/acl/auth-methods` (each without its Config).
    pub async fn acl_auth_methods(&self) -> Result<Vec<crate::api::AclAuthMethod>, ClientError> {
        Ok(self.json(reqwest::Method::GET, "/v1/acl/auth-methods", None).await?.unwrap_or_default())
    }

    /// `GET /v1/acl/auth-method/:name`.
    pub async fn acl_auth_method(&self, name: &str) -> Result<Option<crate::api::AclAuthMethod>, ClientError> {
        self.json(reqwest::Method::GET, &format!("/v1/acl/auth-method/{name}"), None).await
    }

    /// `PUT /v1/acl/auth-method` (new) or `PUT /v1/acl/auth-method/:name` (update).
    pub async fn acl_auth_method_write(
        &self,
        method: &crate::api::AclAuthMethod,
        exists: bool,
    ) -> Result<(), ClientError> {
        let path = if exists { format!("/v1/acl/auth-method/{}", method.name) } else { "/v1/acl/auth-method".into() };
        let (_, status, body) = self.send(reqwest::Method::PUT, &path, Some(Self::encode(method)?)).await?;
        Self::check(status, &body)
    }

    /// `DELETE /v1/acl/auth-method/:name` (its binding rules and login tokens go with it).
    pub async fn acl_auth_method_delete(&self, name: &str) -> Result<(), ClientError> {
        let (_, status, body) =
            self.send(reqwest::Method::DELETE, &format!("/v1/acl/auth-method/{name}"), None).await?;
        Self::check(status, &body)
    }

    /// `GET /v1/acl/binding-rules?authmethod=`.
    pub async fn acl_binding_rules(&self, method: &str) -> Result<Vec<crate::api::AclBindingRule>, ClientError> {
        let path = format!("/v1/acl/binding-rules?authmethod={method}");
        Ok(self.json(reqwest::Method::GET, &path, None).await?.unwrap_or_default())
    }

    /// `PUT /v1/acl/binding-rule`.
    pub async fn acl_binding_rule_create(&self, rule: &crate::api::AclBindingRule) -> Result<(), ClientError> {
        let (_, status, body) =
            self.send(reqwest::Method::PUT, "/v1/acl/binding-rule", Some(Self::encode(rule)?)).await?;
        Self::check(status, &body)
    }

    /// `DELETE /v1/acl/binding-rule/:id`.
    pub async fn acl_binding_rule_delete(&self, id: &str) -> Result<(), ClientError> {
        let (_, status, body) = self.send(reqwest::Method::DELETE, &format!("/v1/acl/binding-rule/{id}"), None).await?;
        Self::check(status, &body)
    }

    /// `GET /v1/acl/policy/name/:name`.
    pub async fn acl_policy_by_name(&self, name: &str) -> Result<Option<AclPolicy>, ClientError> {
        self.json(reqwest::Method::GET, &format!("/v1/acl/policy/name/{name}"), None).await
    }

    /// `PUT /v1/acl/policy` (new) or `PUT /v1/acl/policy/:id` (update, when `policy.id` is set).
    pub async fn acl_policy_write(&self, policy: &AclPolicy) -> Result<AclPolicy, ClientError> {
        let path =
            if policy.id.is_empty() { "/v1/acl/policy".to_string() } else { format!("/v1/acl/policy/{}", policy.id) };
        self.json(reqwest::Method::PUT, &path, Some(Self::encode(policy)?))
            .await?
            .ok_or_else(|| ClientError::Status { status: 404, body: format!("policy {} not found", policy.id) })
    }

    /// `DELETE /v1/acl/policy/:id`.
    pub async fn acl_policy_delete(&self, id: &str) -> Result<(), ClientError> {
        let (_, status, body) = self.send(reqwest::Method::DELETE, &format!("/v1/acl/policy/{id}"), None).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Self::check(status, &body)
    }

    /// `PUT /v1/acl/token`: a new token; the answer carries its SecretID.
    pub async fn acl_token_create(&self, token: &AclToken) -> Result<AclToken, ClientError> {
        self.json(reqwest::Method::PUT, "/v1/acl/token", Some(Self::encode(token)?))
            .await?
            .ok_or_else(|| ClientError::Status { status: 404, body: "token endpoint not found".into() })
    }

    /// `GET /v1/acl/token/:accessor_id`.
    pub async fn acl_token_read(&self, accessor_id: &str) -> Result<Option<AclToken>, ClientError> {
        self.json(reqwest::Method::GET, &format!("/v1/acl/token/{accessor_id}"), None).await
    }

    /// `DELETE /v1/acl/token/:accessor_id`.
    pub async fn acl_token_delete(&self, accessor_id: &str) -> Result<(), ClientError> {
        let (_, status, body) =
            self.send(reqwest::Method::DELETE, &format!("/v1/acl/token/{accessor_id}"), None).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Self::check(status, &body)
    }

    /// `GET /v1/health/service/:name[?passing]`.
    pub async fn health_service(&self, name: &str, passing: bool) -> Result<Indexed<Vec<ServiceEntry>>, ClientError> {
        self.health_service_in(name, passing, None).await
    }

    /// `GET /v1/health/service/:name` in datacenter `dc` (None: the servers' own).
    pub async fn health_service_in(
        &self,
        name: &str,
        passing: bool,
        dc: Option<&str>,
    ) -> Result<Indexed<Vec<ServiceEntry>>, ClientError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if passing {
            pairs.push(("passing", ""));
        }
        if let Some(dc) = dc {
            pairs.push(("dc", dc));
        }
        let query: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        let path = format!("/v1/health/service/{name}{}{query}", if query.is_empty() { "" } else { "?" });
        let (index, status, body) = self.send(reqwest::Method::GET, &path, None).await?;
        Self::check(status, &body)?;
        let value = Self::parse(status, &body)?;
        Ok(Indexed { index, value })
    }

    /// `GET /v1/query/:name/execute` (in `dc`, None: the servers' own); None when no query has
    /// that name.
    pub async fn query_execute(
        &self,
        name: &str,
        dc: Option<&str>,
    ) -> Result<Option<crate::api::QueryExecuteResponse>, ClientError> {
        let dc = dc.map(|d| format!("?dc={}", url::form_urlencoded::byte_serialize(d.as_bytes()).collect::<String>()));
        let path = format!("/v1/query/{name}/execute{}", dc.unwrap_or_default());
        let (_, status, body) = self.send(reqwest::Method::GET, &path, None).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::check(status, &body)?;
        Ok(Some(Self::parse(status, &body)?))
    }

    /// `PUT /v1/acl/bootstrap`: the initial management token, or None when the ACL system was
    /// bootstrapped already (Consul answers 403).
    pub async fn acl_bootstrap(&self) -> Result<Option<AclToken>, ClientError> {
        let (_, status, body) = self.send(reqwest::Method::PUT, "/v1/acl/bootstrap", Some(Vec::new())).await?;
        if status == reqwest::StatusCode::FORBIDDEN && String::from_utf8_lossy(&body).contains("no longer allowed") {
            return Ok(None);
        }
        Self::check(status, &body)?;
        Self::parse(status, &body).map(Some)
    }

    /// `GET /v1/operator/autopilot/health`: the leader's view of every server. Consul answers 429
    /// with the same body when some server is unhealthy; both are a health report here.
    pub async fn autopilot_health(&self) -> Result<AutopilotHealth, ClientError> {
        let (_, status, body) = self.send(reqwest::Method::GET, "/v1/operator/autopilot/health", None).await?;
        if status != reqwest::StatusCode::TOO_MANY_REQUESTS {
            Self::check(status, &body)?;
        }
        Self::parse(status, &body)
    }

    /// `DELETE /v1/operator/raft/peer?id=`: removes a server (by ID or node name) from Raft.
    pub async fn raft_remove_peer(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/operator/raft/peer?id={}", encode_query(id));
        let (_, status, body) = self.send(reqwest::Method::DELETE, &path, None).await?;
        Self::check(status, &body)
    }

    /// `POST /v1/operator/raft/transfer-leader[?id=]`: hands leadership to a voter (by ID or node
    /// name), or to the most up-to-date one.
    pub async fn raft_transfer_leader(&self, to: Option<&str>) -> Result<(), ClientError> {
        let path = match to {
            Some(id) => format!("/v1/operator/raft/transfer-leader?id={}", encode_query(id)),
            None => "/v1/operator/raft/transfer-leader".to_string(),
        };
        let (_, status, body) = self.send(reqwest::Method::POST, &path, Some(Vec::new())).await?;
        Self::check(status, &body)
    }
}

/// Percent-encodes a query value (node names are DNS labels; this only guards the odd character).
fn encode_query(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
