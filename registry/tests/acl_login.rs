//! ACL auth methods against a real dev server: a JWT signed by a configured key logs in and gets
//! what the matching binding rules grant; a Kubernetes ServiceAccount token is vouched for by a
//! TokenReview (answered here by a stand-in API server); logout destroys only login tokens.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::signature::KeyPair;
use serde_json::{json, Value};
use warp::Filter;

const HTTP: &str = "127.0.0.1:19530";
const RPC: &str = "127.0.0.1:19531";
const MANAGEMENT: &str = "6d0a8a5e-0000-4000-8000-management1";

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn call(
    http: &reqwest::Client,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = http.request(method, format!("http://{HTTP}{path}"));
    if let Some(t) = token {
        req = req.header("X-Consul-Token", t);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// An Ed25519 key pair: the signer, and its public key in PEM (SubjectPublicKeyInfo).
fn ed25519() -> (jsonwebtoken::EncodingKey, String) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key pair");
    let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    spki.extend_from_slice(pair.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(spki)
    );
    (jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()), pem)
}

/// An Ed25519 key pair: the signer, and its public key as a JWK.
fn ed25519_jwk() -> (jsonwebtoken::EncodingKey, Value) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key pair");
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "use": "sig", "kid": "k1"});
    (jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()), jwk)
}

fn jwt(key: &jsonwebtoken::EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA), &claims, key).expect("sign")
}

/// A stand-in API server answering TokenReviews: "good-sa-token" is shop/web's ServiceAccount,
/// anything else is refused; only the reviewer's own token may ask.
async fn token_review_server() -> std::net::SocketAddr {
    let route = warp::post()
        .and(warp::path!("apis" / "authentication.k8s.io" / "v1" / "tokenreviews"))
        .and(warp::header::<String>("authorization"))
        .and(warp::body::json())
        .map(|auth: String, review: Value| {
            if auth != "Bearer reviewer-jwt" {
                return warp::reply::with_status(warp::reply::json(&json!({})), warp::http::StatusCode::UNAUTHORIZED);
            }
            let status = if review["spec"]["token"] == "good-sa-token" {
                json!({"authenticated": true, "user": {"username": "system:serviceaccount:shop:web", "uid": "u-1"}})
            } else {
                json!({"authenticated": false, "error": "invalid bearer token"})
            };
            warp::reply::with_status(warp::reply::json(&json!({"status": status})), warp::http::StatusCode::CREATED)
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(route).incoming(listener).run());
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_methods_log_in_with_jwts_and_service_account_tokens() {
    let child = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["dev", "--http-addr", HTTP, "--rpc-addr", RPC, "--gossip-addr", "off"])
        .args(["--acl-enabled", "--acl-default-policy", "deny"])
        .env("ROSTER_ACL_INITIAL_MANAGEMENT", MANAGEMENT)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn roster dev");
    let _dev = Dev(child);
    let http = registry::client::http_builder().timeout(Duration::from_secs(10)).build().expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    // A refused connection is expected until the server listens.
    let token_self =
        || http.get(format!("http://{HTTP}/v1/acl/token/self")).header("X-Consul-Token", MANAGEMENT).send();
    while !token_self().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "management token never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = |method: &'static str, path: String, body: Option<Value>| {
        let http = http.clone();
        async move {
            let (status, body) = call(&http, method, &path, Some(MANAGEMENT), body).await;
            assert!(status < 300, "{method} {path}: {status} {body}");
            body
        }
    };

    // A JWT method, and a rule binding the service named by the token's subject.
    let (signer, public_pem) = ed25519();
    let method = json!({"Name": "ci", "Type": "jwt", "MaxTokenTTL": "1h", "Config": {
        "JWTValidationPubKeys": [public_pem], "JWTSupportedAlgs": ["EdDSA"], "BoundIssuer": "roster-test",
        "ClaimMappings": {"sub": "name"}}});
    admin("PUT", "/v1/acl/auth-method".into(), Some(method)).await;
    let rule = json!({"AuthMethod": "ci", "Selector": "value.name==\"web\"", "BindType": "service",
        "BindName": "${value.name}"});
    admin("PUT", "/v1/acl/binding-rule".into(), Some(rule)).await;
    let bad_key = json!({"Name": "bad", "Type": "jwt", "Config": {"JWTValidationPubKeys": ["nope"]}});
    assert_eq!(call(&http, "PUT", "/v1/acl/auth-method", Some(MANAGEMENT), Some(bad_key)).await.0, 400);
    let bad_rule = json!({"AuthMethod": "nothing", "BindType": "service", "BindName": "x"});
    assert_eq!(call(&http, "PUT", "/v1/acl/binding-rule", Some(MANAGEMENT), Some(bad_rule)).await.0, 400);

    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let claims = |sub: &str, iss: &str| json!({"sub": sub, "iss": iss, "exp": now + 600, "iat": now});
    let login = |bearer: String| {
        let http = http.clone();
        async move {
            call(&http, "POST", "/v1/acl/login", None, Some(json!({"AuthMethod": "ci", "BearerToken": bearer}))).await
        }
    };
    let (status, token) = login(jwt(&signer, claims("web", "roster-test"))).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["ServiceIdentities"], json!([{"ServiceName": "web"}]), "{token}");
    assert_eq!(token["AuthMethod"], "ci");
    assert!(token["ExpirationTime"].is_string(), "MaxTokenTTL sets an expiry: {token}");
    let secret = token["SecretID"].as_str().expect("secret").to_string();
    let register = |service: &str| json!({"Node": "n1", "Address": "10.0.0.1", "Service": {"Service": service}});
    let (_, me) = call(&http, "GET", "/v1/acl/token/self", Some(&secret), None).await;
    assert_eq!(me["AuthMethod"], "ci");
    assert_eq!(call(&http, "PUT", "/v1/catalog/register", Some(&secret), Some(register("db"))).await.0, 403);
    // On a node that exists unchanged (as Consul, a new or changed node needs node:write).
    admin("PUT", "/v1/catalog/register".into(), Some(json!({"Node": "n1", "Address": "10.0.0.1"}))).await;
    let (status, body) = call(&http, "PUT", "/v1/catalog/register", Some(&secret), Some(register("web"))).await;
    assert_eq!(status, 200, "the bound service identity may register web: {body}");
    let bad_selector = json!({"AuthMethod": "ci", "Selector": "value.name ==", "BindType": "service", "BindName": "x"});
    let (status, body) = call(&http, "PUT", "/v1/acl/binding-rule", Some(MANAGEMENT), Some(bad_selector)).await;
    assert_eq!(status, 400, "{body}");

    // Refused: no rule matches, a wrong issuer, a forged signature, an unknown method.
    assert_eq!(login(jwt(&signer, claims("db", "roster-test"))).await.0, 403, "no binding rule matches");
    assert_eq!(login(jwt(&signer, claims("web", "elsewhere"))).await.0, 403, "wrong issuer");
    let (other, _) = ed25519();
    assert_eq!(login(jwt(&other, claims("web", "roster-test"))).await.0, 403, "signed by another key");
    let unknown = json!({"AuthMethod": "nope", "BearerToken": "x"});
    let (status, body) = call(&http, "POST", "/v1/acl/login", None, Some(unknown)).await;
    assert_eq!((status, body.as_str()), (403, Some("ACL not found: auth method \"nope\" not found")));

    // Listing by auth method; logout destroys login tokens only.
    let listed = admin("GET", "/v1/acl/tokens?authmethod=ci".into(), None).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(call(&http, "POST", "/v1/acl/logout", Some(MANAGEMENT), None).await.0, 403);
    assert_eq!(call(&http, "POST", "/v1/acl/logout", Some(&secret), None).await.0, 200);
    assert_eq!(call(&http, "GET", "/v1/acl/token/self", Some(&secret), None).await.0, 403, "logged out");

    // Keys from a JWKS document (fetched at login) instead of configured PEMs.
    let (jwks_signer, jwks_public) = ed25519_jwk();
    let jwks = json!({"keys": [jwks_public]});
    let route = warp::path!("jwks.json").map(move || warp::reply::json(&jwks));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let jwks_addr = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(route).incoming(listener).run());
    let method = json!({"Name": "jwks", "Type": "jwt", "Config": {
        "JWKSURL": format!("http://{jwks_addr}/jwks.json"), "JWTSupportedAlgs": ["EdDSA"],
        "BoundAudiences": ["roster"], "ClaimMappings": {"sub": "name"}}});
    admin("PUT", "/v1/acl/auth-method".into(), Some(method)).await;
    let rule = json!({"AuthMethod": "jwks", "BindType": "service", "BindName": "${value.name}"});
    admin("PUT", "/v1/acl/binding-rule".into(), Some(rule)).await;
    let jwks_login = |claims: Value| {
        let http = http.clone();
        let body = json!({"AuthMethod": "jwks", "BearerToken": jwt(&jwks_signer, claims)});
        async move { call(&http, "POST", "/v1/acl/login", None, Some(body)).await }
    };
    let (status, token) = jwks_login(json!({"sub": "api", "aud": "roster", "exp": now + 600})).await;
    assert_eq!((status, &token["ServiceIdentities"]), (200, &json!([{"ServiceName": "api"}])), "{token}");
    assert_eq!(jwks_login(json!({"sub": "api", "aud": "other", "exp": now + 600})).await.0, 403, "wrong audience");
    assert_eq!(jwks_login(json!({"sub": "api", "aud": "roster", "exp": now - 3600})).await.0, 403, "expired");

    // Kubernetes: the API server's TokenReview vouches for a ServiceAccount token.
    let api_server = token_review_server().await;
    let kube = json!({"Name": "k8s", "Type": "kubernetes", "Config": {
        "Host": format!("http://{api_server}"), "ServiceAccountJWT": "reviewer-jwt"}});
    admin("PUT", "/v1/acl/auth-method".into(), Some(kube)).await;
    let rule = json!({"AuthMethod": "k8s", "Selector": "serviceaccount.namespace==shop", "BindType": "service",
        "BindName": "${serviceaccount.name}"});
    admin("PUT", "/v1/acl/binding-rule".into(), Some(rule)).await;
    let kube_login = |bearer: &str| {
        let http = http.clone();
        let body = json!({"AuthMethod": "k8s", "BearerToken": bearer, "Meta": {"pod": "web-0"}});
        async move { call(&http, "POST", "/v1/acl/login", None, Some(body)).await }
    };
    let (status, token) = kube_login("good-sa-token").await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["ServiceIdentities"], json!([{"ServiceName": "web"}]));
    assert!(token["Description"].as_str().is_some_and(|d| d.contains("web-0")), "{token}");
    let kube_secret = token["SecretID"].as_str().expect("secret").to_string();
    assert_eq!(kube_login("stolen").await.0, 403);

    // The reviewer's JWT is a credential: shown to acl:write, hidden from acl:read.
    let method = admin("GET", "/v1/acl/auth-method/k8s".into(), None).await;
    assert_eq!(method["Config"]["ServiceAccountJWT"], "reviewer-jwt");
    let policy = json!({"Name": "acl-reader", "Rules": "acl = \"read\""});
    admin("PUT", "/v1/acl/policy".into(), Some(policy)).await;
    let reader = admin("PUT", "/v1/acl/token".into(), Some(json!({"Policies": [{"Name": "acl-reader"}]}))).await;
    let reader = reader["SecretID"].as_str().expect("secret");
    let (status, seen) = call(&http, "GET", "/v1/acl/auth-method/k8s", Some(reader), None).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["Config"]["ServiceAccountJWT"], "<hidden>", "{seen}");
    assert_eq!(seen["Config"]["Host"], method["Config"]["Host"]);

    // Deleting a method takes its rules and its login tokens along.
    admin("DELETE", "/v1/acl/auth-method/k8s".into(), None).await;
    assert_eq!(call(&http, "GET", "/v1/acl/token/self", Some(&kube_secret), None).await.0, 403);
    let rules = admin("GET", "/v1/acl/binding-rules?authmethod=k8s".into(), None).await;
    assert_eq!(rules, json!([]));
}
