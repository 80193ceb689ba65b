//! ACL auth methods: how `/v1/acl/login` turns a bearer token into an identity, and how binding
//! rules turn that identity into what the login token gets. Two types, as Consul names them:
//! - `jwt`: a JWT signed by one of the method's `JWTValidationPubKeys` (PEM) or a key of its
//!   `JWKSURL` document; `BoundIssuer`/`BoundAudiences` checked; `ClaimMappings` and
//!   `ListClaimMappings` name the claims selectors see as `value.<name>` and `list.<name>`.
//! - `kubernetes`: a ServiceAccount token the API server at `Host` vouches for (TokenReview, called
//!   with the method's `ServiceAccountJWT`, trusting `CACert`); selectors see
//!   `serviceaccount.namespace`, `serviceaccount.name` and `serviceaccount.uid`, and for a
//!   pod-bound token `pod.name` and `pod.uid` (a Roster addition; empty for other tokens).
//!
//! Validation and binding are pure; only `identify` does I/O.

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::api::{AclAuthMethod, AclBindingRule};
use crate::filter::Filter;

/// A method's `Config` value by key, as Consul reads it (keys match regardless of case).
fn conf<'a>(m: &'a AclAuthMethod, key: &str) -> Option<&'a Value> {
    m.config.as_ref()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v).filter(|v| !v.is_null())
}

fn conf_str<'a>(m: &'a AclAuthMethod, key: &str) -> Option<&'a str> {
    conf(m, key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn conf_list(m: &AclAuthMethod, key: &str) -> Result<Vec<String>, String> {
    match conf(m, key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(|| format!("Config.{key} must be a list of strings")))
            .collect(),
        Some(_) => Err(format!("Config.{key} must be a list of strings")),
    }
}

fn conf_map(m: &AclAuthMethod, key: &str) -> Result<BTreeMap<String, String>, String> {
    match conf(m, key) {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(s) => Ok((k.clone(), s.to_string())),
                None => Err(format!("Config.{key} must map claim names to strings")),
            })
            .collect(),
        Some(_) => Err(format!("Config.{key} must map claim names to strings")),
    }
}

/// A public key in PEM: RSA, EC or Ed25519.
fn decoding_key(pem: &str) -> Result<DecodingKey, String> {
    let pem = pem.as_bytes();
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .map_err(|e| format!("error parsing public key JWTValidationPubKeys: {e}"))
}

fn algorithms(m: &AclAuthMethod) -> Result<Vec<Algorithm>, String> {
    let names = conf_list(m, "JWTSupportedAlgs")?;
    if names.is_empty() {
        return Ok(vec![Algorithm::RS256]);
    }
    names
        .iter()
        .map(|n| match n.parse::<Algorithm>() {
            Ok(a) if !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => Ok(a),
            _ => Err(format!("Invalid JWTSupportedAlgs: {n:?} is not a supported public-key algorithm")),
        })
        .collect()
}

/// A method as Consul validates it when it is written: the type's required settings, keys that parse.
pub fn validate(m: &AclAuthMethod) -> Result<(), String> {
    if m.name.is_empty() {
        return Err("Invalid Auth Method: no Name is set".into());
    }
    if !m.max_token_ttl.is_empty() {
        crate::api::parse_go_duration(&m.max_token_ttl).map_err(|e| format!("Invalid MaxTokenTTL: {e}"))?;
    }
    if !matches!(m.token_locality.as_str(), "" | "local" | "global") {
        return Err(format!("Invalid TokenLocality: {:?} (local or global)", m.token_locality));
    }
    match m.method_type.as_str() {
        "jwt" => {
            let keys = conf_list(m, "JWTValidationPubKeys")?;
            let sources =
                [!keys.is_empty(), conf_str(m, "JWKSURL").is_some(), conf_str(m, "OIDCDiscoveryURL").is_some()];
            match sources.iter().filter(|s| **s).count() {
                0 => {
                    return Err(
                        "exactly one of 'JWTValidationPubKeys', 'JWKSURL', or 'OIDCDiscoveryURL' must be set".into()
                    )
                }
                1 => {}
                _ => {
                    return Err(
                        "exactly one of 'JWTValidationPubKeys', 'JWKSURL', or 'OIDCDiscoveryURL' must be set".into()
                    )
                }
            }
            if sources[2] {
                return Err(
                    "OIDCDiscoveryURL is not supported by Roster yet: use JWTValidationPubKeys or JWKSURL".into()
                );
            }
            for k in &keys {
                decoding_key(k)?;
            }
            if let Some(url) = conf_str(m, "JWKSURL") {
                url::Url::parse(url).map_err(|e| format!("Invalid JWKSURL: {e}"))?;
            }
            algorithms(m)?;
            conf_list(m, "BoundAudiences")?;
            conf_map(m, "ClaimMappings")?;
            conf_map(m, "ListClaimMappings")?;
            Ok(())
        }
        "kubernetes" => {
            let host = conf_str(m, "Host").ok_or("Host is required")?;
            url::Url::parse(host).map_err(|e| format!("Invalid Host: {e}"))?;
            conf_str(m, "ServiceAccountJWT").ok_or("ServiceAccountJWT is required")?;
            if let Some(ca) = conf_str(m, "CACert") {
                reqwest::Certificate::from_pem(ca.as_bytes()).map_err(|e| format!("error parsing CACert: {e}"))?;
            }
            Ok(())
        }
        other => Err(format!("Invalid Auth Method: Type should be one of: [jwt kubernetes], got {other:?}")),
    }
}

/// Who a login is: the variables its method exposes, nested for selectors (`value.sub`) and flat
/// for `${value.sub}` in bind names.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub selectable: Value,
    pub names: BTreeMap<String, String>,
}

impl Identity {
    fn new(groups: BTreeMap<&str, BTreeMap<String, Value>>) -> Identity {
        let mut names = BTreeMap::new();
        let mut selectable = Map::new();
        for (group, vars) in groups {
            for (k, v) in &vars {
                if let Some(s) = scalar(v) {
                    names.insert(format!("{group}.{k}"), s);
                }
            }
            selectable.insert(group.to_string(), Value::Object(vars.into_iter().collect()));
        }
        Identity { selectable: Value::Object(selectable), names }
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Why a login was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The bearer token is not one this method trusts.
    #[error("{0}")]
    Untrusted(String),
    /// The method could not be asked (its JWKS or API server is unreachable).
    #[error("{0}")]
    Unavailable(String),
}

/// Verifies a bearer token with its method and reads the identity it carries.
pub async fn identify(m: &AclAuthMethod, bearer: &str, http: &reqwest::Client) -> Result<Identity, LoginError> {
    match m.method_type.as_str() {
        "jwt" => {
            let keys = match conf_str(m, "JWKSURL") {
                Some(url) => jwks_keys(url, http).await?,
                None => {
                    let pems = conf_list(m, "JWTValidationPubKeys").map_err(LoginError::Untrusted)?;
                    pems.iter().map(|p| decoding_key(p)).collect::<Result<_, _>>().map_err(LoginError::Untrusted)?
                }
            };
            let claims = verify_jwt(m, bearer, &keys).map_err(LoginError::Untrusted)?;
            jwt_identity(m, &claims).map_err(LoginError::Untrusted)
        }
        "kubernetes" => token_review(m, bearer).await,
        other => Err(LoginError::Untrusted(format!("auth method type {other:?} is not supported"))),
    }
}

async fn jwks_keys(url: &str, http: &reqwest::Client) -> Result<Vec<DecodingKey>, LoginError> {
    let unavailable = |e: String| LoginError::Unavailable(format!("fetching JWKSURL {url}: {e}"));
    let set: jsonwebtoken::jwk::JwkSet = http
        .get(url)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .json()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    Ok(set.keys.iter().filter_map(|k| DecodingKey::from_jwk(k).ok()).collect())
}

/// Checks a JWT's signature against the keys and its claims against the method's bounds; returns
/// its claims.
pub fn verify_jwt(m: &AclAuthMethod, token: &str, keys: &[DecodingKey]) -> Result<Map<String, Value>, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("invalid bearer token: {e}"))?;
    let algs = algorithms(m)?;
    if !algs.contains(&header.alg) {
        return Err(format!(
            "the bearer token is signed with {:?}, which this auth method does not accept",
            header.alg
        ));
    }
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    let leeway = |key: &str, default: u64| conf(m, key).and_then(Value::as_u64).unwrap_or(default);
    validation.leeway = leeway("ExpirationLeeway", 150).max(leeway("ClockSkewLeeway", 60));
    validation.validate_nbf = true;
    if let Some(iss) = conf_str(m, "BoundIssuer") {
        validation.set_issuer(&[iss]);
    }
    let audiences = conf_list(m, "BoundAudiences")?;
    if audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&audiences);
    }
    let mut last = String::from("no validation key is configured");
    for key in keys {
        match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("failed to validate the bearer token: {last}"))
}

/// A claim by name, or by JSON pointer (`/groups/0`) as Consul's claim mappings allow.
fn claim(claims: &Map<String, Value>, name: &str) -> Option<Value> {
    if name.starts_with('/') {
        Value::Object(claims.clone()).pointer(name).cloned()
    } else {
        claims.get(name).cloned()
    }
}

pub fn jwt_identity(m: &AclAuthMethod, claims: &Map<String, Value>) -> Result<Identity, String> {
    let mut value = BTreeMap::new();
    for (claim_name, var) in conf_map(m, "ClaimMappings")? {
        if let Some(v) = claim(claims, &claim_name).as_ref().and_then(scalar) {
            value.insert(var, Value::String(v));
        }
    }
    let mut list = BTreeMap::new();
    for (claim_name, var) in conf_map(m, "ListClaimMappings")? {
        let items = match claim(claims, &claim_name) {
            Some(Value::Array(a)) => a.iter().filter_map(scalar).map(Value::String).collect(),
            Some(v) => scalar(&v).map(Value::String).into_iter().collect(),
            None => Vec::new(),
        };
        list.insert(var, Value::Array(items));
    }
    Ok(Identity::new(BTreeMap::from([("value", value), ("list", list)])))
}

/// Asks the API server whether a ServiceAccount token is genuine (TokenReview).
async fn token_review(m: &AclAuthMethod, bearer: &str) -> Result<Identity, LoginError> {
    let host = conf_str(m, "Host").ok_or_else(|| LoginError::Untrusted("Host is not set".into()))?;
    let reviewer = conf_str(m, "ServiceAccountJWT").unwrap_or_default();
    let mut builder = crate::client::http_builder().timeout(std::time::Duration::from_secs(10));
    if let Some(ca) = conf_str(m, "CACert") {
        let cert = reqwest::Certificate::from_pem(ca.as_bytes()).map_err(|e| LoginError::Untrusted(e.to_string()))?;
        builder = builder.add_root_certificate(cert);
    }
    let http = builder.build().map_err(|e| LoginError::Unavailable(e.to_string()))?;
    let review = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": bearer},
    });
    let url = format!("{}/apis/authentication.k8s.io/v1/tokenreviews", host.trim_end_matches('/'));
    let unavailable = |e: String| LoginError::Unavailable(format!("TokenReview at {host}: {e}"));
    let resp =
        http.post(&url).bearer_auth(reviewer).json(&review).send().await.map_err(|e| unavailable(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(unavailable(format!("answered {}", resp.status())));
    }
    let body: Value = resp.json().await.map_err(|e| unavailable(e.to_string()))?;
    service_account_identity(&body).map_err(LoginError::Untrusted)
}

/// The identity a TokenReview answer vouches for.
pub fn service_account_identity(review: &Value) -> Result<Identity, String> {
    let status = &review["status"];
    if status["authenticated"] != Value::Bool(true) {
        let why = status["error"].as_str().unwrap_or("not authenticated");
        return Err(format!("the API server did not accept the ServiceAccount token: {why}"));
    }
    let user = status["user"]["username"].as_str().unwrap_or_default();
    let Some(rest) = user.strip_prefix("system:serviceaccount:") else {
        return Err(format!("{user:?} is not a ServiceAccount"));
    };
    let (namespace, name) = rest.split_once(':').ok_or_else(|| format!("{user:?} is not a ServiceAccount"))?;
    let uid = status["user"]["uid"].as_str().unwrap_or_default();
    let vars = BTreeMap::from([
        ("namespace".to_string(), Value::from(namespace)),
        ("name".to_string(), Value::from(name)),
        ("uid".to_string(), Value::from(uid)),
    ]);
    // A pod-bound (projected) token also names its pod: empty for other tokens, so a selector
    // `pod.name != ""` picks the bound ones (a sidecar's node is named after its pod).
    let extra = |key: &str| {
        let v = &status["user"]["extra"][format!("authentication.kubernetes.io/{key}")];
        Value::from(v.get(0).and_then(Value::as_str).or(v.as_str()).unwrap_or_default())
    };
    let pod = BTreeMap::from([("name".to_string(), extra("pod-name")), ("uid".to_string(), extra("pod-uid"))]);
    Ok(Identity::new(BTreeMap::from([("serviceaccount", vars), ("pod", pod)])))
}

/// What a login's token gets from the binding rules that match its identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    pub services: Vec<String>,
    pub nodes: Vec<String>,
    pub roles: Vec<String>,
    pub policies: Vec<String>,
}

impl Bindings {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.nodes.is_empty() && self.roles.is_empty() && self.policies.is_empty()
    }
}

/// `${value.name}` in a bind name, replaced by the identity's variable; an unknown one is an error.
pub fn interpolate(template: &str, names: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unterminated ${{ in bind name {template:?}"))?;
        let var = after[..end].trim();
        let value = names.get(var).ok_or_else(|| format!("bind name {template:?} uses unknown variable {var:?}"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Applies the method's binding rules to an identity, as Consul does: every rule whose selector
/// matches (an empty selector always does) binds its name.
pub fn bind(rules: &[AclBindingRule], id: &Identity) -> Result<Bindings, String> {
    let mut b = Bindings::default();
    for r in rules {
        if !r.selector.trim().is_empty() {
            let f = Filter::parse(&r.selector).map_err(|e| format!("binding rule {}: invalid Selector: {e}", r.id))?;
            if !f.matches(&id.selectable) {
                continue;
            }
        }
        let name = interpolate(&r.bind_name, &id.names)?;
        let list = match r.bind_type.as_str() {
            "service" => &mut b.services,
            "node" => &mut b.nodes,
            "role" => &mut b.roles,
            _ => &mut b.policies,
        };
        if !list.contains(&name) {
            list.push(name);
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(config: Value) -> AclAuthMethod {
        AclAuthMethod {
            name: "m".into(),
            method_type: "jwt".into(),
            config: config.as_object().cloned(),
            ..Default::default()
        }
    }

    fn rule(selector: &str, bind_type: &str, bind_name: &str) -> AclBindingRule {
        AclBindingRule {
            id: "r".into(),
            auth_method: "m".into(),
            selector: selector.into(),
            bind_type: bind_type.into(),
            bind_name: bind_name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn jwt_methods_need_exactly_one_key_source_that_parses() {
        assert!(validate(&method(serde_json::json!({}))).unwrap_err().contains("exactly one"));
        let bad = method(serde_json::json!({"JWTValidationPubKeys": ["not a key"]}));
        assert!(validate(&bad).unwrap_err().contains("public key"));
        let both = method(serde_json::json!({"JWTValidationPubKeys": ["x"], "JWKSURL": "https://x/"}));
        assert!(validate(&both).unwrap_err().contains("exactly one"));
        let kube = AclAuthMethod { method_type: "kubernetes".into(), ..method(serde_json::json!({})) };
        assert!(validate(&kube).unwrap_err().contains("Host"));
    }

    #[test]
    fn claims_map_to_selectable_variables_and_bind_names() {
        let m = method(serde_json::json!({
            "ClaimMappings": {"sub": "name", "/ns/id": "ns"},
            "ListClaimMappings": {"groups": "groups"},
        }));
        let claims = serde_json::json!({"sub": "web", "ns": {"id": "shop"}, "groups": ["a", "b"]});
        let id = jwt_identity(&m, claims.as_object().expect("object")).unwrap();
        assert_eq!(id.names.get("value.name").map(String::as_str), Some("web"));
        assert_eq!(id.names.get("value.ns").map(String::as_str), Some("shop"));
        let rules = [
            rule(r#"value.ns=="shop""#, "service", "${value.name}"),
            rule(r#""b" in list.groups"#, "role", "group-b"),
            rule(r#"value.ns == "other""#, "node", "never"),
            rule("", "policy", "everyone"),
        ];
        let b = bind(&rules, &id).unwrap();
        assert_eq!(b.services, vec!["web"]);
        assert_eq!(b.roles, vec!["group-b"]);
        assert!(b.nodes.is_empty());
        assert_eq!(b.policies, vec!["everyone"]);
        assert!(interpolate("${value.missing}", &id.names).is_err());
    }

    #[test]
    fn a_token_review_names_the_service_account() {
        let ok = serde_json::json!({"status": {"authenticated": true,
            "user": {"username": "system:serviceaccount:shop:web", "uid": "u-1"}}});
        let id = service_account_identity(&ok).unwrap();
        assert_eq!(id.names.get("serviceaccount.namespace").map(String::as_str), Some("shop"));
        assert_eq!(id.names.get("serviceaccount.name").map(String::as_str), Some("web"));
        let rules = [rule("serviceaccount.namespace==shop", "service", "${serviceaccount.name}")];
        assert_eq!(bind(&rules, &id).unwrap().services, vec!["web"]);
        let refused = serde_json::json!({"status": {"authenticated": false, "error": "token expired"}});
        assert!(service_account_identity(&refused).unwrap_err().contains("token expired"));
        let user = serde_json::json!({"status": {"authenticated": true, "user": {"username": "alice"}}});
        assert!(service_account_identity(&user).is_err());
        // A pod-bound token names its pod, so a node rule can bind the sidecar's node.
        let bound = serde_json::json!({"status": {"authenticated": true, "user": {
            "username": "system:serviceaccount:shop:web", "uid": "u-1",
            "extra": {"authentication.kubernetes.io/pod-name": ["web-7d9f"], "authentication.kubernetes.io/pod-uid": ["p-1"]}}}});
        let node_rule = [rule(r#"pod.name != """#, "node", "${pod.name}")];
        assert_eq!(bind(&node_rule, &service_account_identity(&bound).unwrap()).unwrap().nodes, vec!["web-7d9f"]);
        assert!(bind(&node_rule, &id).unwrap().nodes.is_empty(), "an unbound token names no pod");
    }
}
