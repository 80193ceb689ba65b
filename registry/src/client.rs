//! A typed HTTP client for Roster's (and Consul's) `/v1` API, shared by the sidecar, the operator and
//! the servers themselves (leader forwarding). Rustls with the ring provider only.

use std::sync::Once;
use std::time::Duration;

use crate::api::{KvPair, RegisterRequest, ServiceEntry};

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

/// A client over one or more servers: each call tries them in order until one answers.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    servers: Vec<String>,
}

/// A read's answer with its `X-Consul-Index`.
#[derive(Debug, Clone)]
pub struct Indexed<T> {
    pub index: u64,
    pub value: T,
}

impl Client {
    pub fn new(servers: Vec<String>) -> Result<Self, ClientError> {
        let http = http_builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| ClientError::Transport { addr: String::new(), source: e })?;
        Ok(Client { http, servers })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u64, reqwest::StatusCode, bytes::Bytes), ClientError> {
        let mut last = String::from("no servers configured");
        for server in &self.servers {
            let mut req = self.http.request(method.clone(), format!("http://{server}{path_and_query}"));
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let index = resp
                        .headers()
                        .get("x-consul-index")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let bytes =
                        resp.bytes().await.map_err(|e| ClientError::Transport { addr: server.clone(), source: e })?;
                    if status.is_server_error() {
                        last = format!("{server}: {status}");
                        continue;
                    }
                    return Ok((index, status, bytes));
                }
                Err(e) => last = format!("{server}: {e}"),
            }
        }
        Err(ClientError::NoServer(last))
    }

    fn check(status: reqwest::StatusCode, body: &bytes::Bytes) -> Result<(), ClientError> {
        if status.is_success() {
            Ok(())
        } else {
            Err(ClientError::Status { status: status.as_u16(), body: String::from_utf8_lossy(body).into_owned() })
        }
    }

    /// `GET /v1/kv/:key`; `None` when the key does not exist.
    pub async fn kv_get(&self, key: &str) -> Result<Indexed<Option<KvPair>>, ClientError> {
        let (index, status, body) = self.send(reqwest::Method::GET, &format!("/v1/kv/{key}"), None).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Indexed { index, value: None });
        }
        Self::check(status, &body)?;
        let mut list: Vec<KvPair> = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Status { status: status.as_u16(), body: e.to_string() })?;
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

    pub async fn catalog_register(&self, r: &RegisterRequest) -> Result<(), ClientError> {
        let body = serde_json::to_vec(r).map_err(|e| ClientError::Status { status: 0, body: e.to_string() })?;
        let (_, status, body) = self.send(reqwest::Method::PUT, "/v1/catalog/register", Some(body)).await?;
        Self::check(status, &body)
    }

    /// `GET /v1/health/service/:name[?passing]`.
    pub async fn health_service(&self, name: &str, passing: bool) -> Result<Indexed<Vec<ServiceEntry>>, ClientError> {
        let path = format!("/v1/health/service/{name}{}", if passing { "?passing" } else { "" });
        let (index, status, body) = self.send(reqwest::Method::GET, &path, None).await?;
        Self::check(status, &body)?;
        let value = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Status { status: status.as_u16(), body: e.to_string() })?;
        Ok(Indexed { index, value })
    }
}
