//! The ACL matrix: every endpoint family hit with each kind of token against a dev server with
//! `default_policy = deny`, asserting exactly what is allowed, denied, and filtered.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const HTTP: &str = "127.0.0.1:19510";
const RPC: &str = "127.0.0.1:19511";
const MANAGEMENT: &str = "6d0a8a5e-0000-4000-8000-management0";

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Api {
    http: reqwest::Client,
}

/// What a request answered: status, body, and whether results were filtered by ACLs.
struct Answer {
    status: u16,
    body: Value,
    filtered: bool,
}

impl Api {
    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("http://{HTTP}{path}"));
        if let Some(t) = token {
            req = req.header("X-Consul-Token", t);
        }
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let filtered = resp.headers().contains_key("x-consul-results-filtered-by-acls");
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, body, filtered }
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let a = self.call(method, path, Some(MANAGEMENT), body).await;
        assert!(a.status < 300, "{method} {path}: {} {}", a.status, a.body);
        a.body
    }
}

/// Expected outcome of one request for one token.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// 2xx.
    Ok,
    /// 403.
    Denied,
    /// 409 (a transaction that was allowed but failed its own check).
    Conflict,
    /// A listing of exactly n items; `true` if ACLs must have filtered it.
    List(usize, bool),
}
use Want::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_matrix() {
    let child = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["dev", "--http-addr", HTTP, "--rpc-addr", RPC, "--gossip-addr", "off"])
        .args(["--acl-enabled", "--acl-default-policy", "deny"])
        .env("ROSTER_ACL_INITIAL_MANAGEMENT", MANAGEMENT)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn roster dev");
    let _dev = Dev(child);
    let api = Api { http: registry::client::http_builder().timeout(Duration::from_secs(10)).build().expect("client") };

    // Wait until the server listens (a refused connection is expected until then) and the leader
    // has created the management token.
    let deadline = Instant::now() + Duration::from_secs(20);
    let token_self = || {
        let req = api.http.get(format!("http://{HTTP}/v1/acl/token/self")).header("X-Consul-Token", MANAGEMENT);
        req.send()
    };
    while !token_self().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "management token never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Data.
    for (k, v) in [("app/config", "c"), ("app/secret/pw", "p"), ("other/x", "x")] {
        api.ok("PUT", &format!("/v1/kv/{k}"), Some(json!(v))).await;
    }
    api.ok(
        "PUT",
        "/v1/catalog/register",
        Some(json!({"Node": "n1", "Address": "10.0.0.1",
        "Service": {"ID": "web-1", "Service": "web", "Port": 80},
        "Check": {"CheckID": "web-ok", "Name": "web", "Status": "passing", "ServiceID": "web-1"}})),
    )
    .await;
    api.ok(
        "PUT",
        "/v1/catalog/register",
        Some(json!({"Node": "n1", "Address": "10.0.0.1",
        "Service": {"ID": "db-1", "Service": "db", "Port": 5432}})),
    )
    .await;

    // Policies and tokens.
    let policies = [
        (
            "read-only",
            r#"key_prefix "" { policy = "read" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
session_prefix "" { policy = "read" }
agent_prefix "" { policy = "read" }
operator = "read"
acl = "read""#,
        ),
        (
            "app-writer",
            r#"key_prefix "app/" { policy = "write" }
service "web" { policy = "write" }
node_prefix "" { policy = "read" }
session_prefix "" { policy = "write" }"#,
        ),
        (
            "deny-inside",
            r#"key_prefix "app/" { policy = "write" }
key_prefix "app/secret/" { policy = "deny" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }"#,
        ),
    ];
    let mut secrets = Vec::new();
    for (name, rules) in policies {
        api.ok("PUT", "/v1/acl/policy", Some(json!({"Name": name, "Rules": rules}))).await;
        let t = api.ok("PUT", "/v1/acl/token", Some(json!({"Description": name, "Policies": [{"Name": name}]}))).await;
        secrets.push(t["SecretID"].as_str().expect("secret").to_string());
    }
    // Columns: no token, explicit anonymous, read-only, prefix writer, deny inside prefix, management.
    let tokens: [Option<&str>; 6] =
        [None, Some("anonymous"), Some(&secrets[0]), Some(&secrets[1]), Some(&secrets[2]), Some(MANAGEMENT)];

    let session_body = json!({"Node": "n1", "NodeChecks": [], "TTL": "30s"});
    let register_web =
        json!({"Node": "n1", "SkipNodeUpdate": true, "Service": {"ID": "web-1", "Service": "web", "Port": 80}});
    let agent_web = json!({"Name": "web", "ID": "web-agent", "Port": 81});
    let new_policy = json!({"Name": "p-new", "Rules": "key \"z\" { policy = \"read\" }"});
    // (method, path, body, [no token, anonymous, read-only, writer, deny-inside, management])
    let matrix: Vec<(&str, &str, Option<Value>, [Want; 6])> = vec![
        ("GET", "/v1/kv/app/config", None, [Denied, Denied, Ok, Ok, Ok, Ok]),
        ("GET", "/v1/kv/app/secret/pw", None, [Denied, Denied, Ok, Ok, Denied, Ok]),
        (
            "GET",
            "/v1/kv/?recurse",
            None,
            [List(0, true), List(0, true), List(3, false), List(2, true), List(1, true), List(3, false)],
        ),
        (
            "GET",
            "/v1/kv/?keys",
            None,
            [List(0, true), List(0, true), List(3, false), List(2, true), List(1, true), List(3, false)],
        ),
        ("PUT", "/v1/kv/app/config", Some(json!("c")), [Denied, Denied, Denied, Ok, Ok, Ok]),
        ("PUT", "/v1/kv/other/x", Some(json!("x")), [Denied, Denied, Denied, Denied, Denied, Ok]),
        ("DELETE", "/v1/kv/app/tmp/?recurse", None, [Denied, Denied, Denied, Ok, Ok, Ok]),
        // A recursive delete of app/ is denied when a rule below it denies; permitted callers reach
        // the failing check and get 409, so nothing is deleted either way.
        (
            "PUT",
            "/v1/txn",
            Some(json!([{"KV": {"Verb": "check-index", "Key": "app/config", "Index": 1}},
                {"KV": {"Verb": "delete-tree", "Key": "app/"}}])),
            [Denied, Denied, Denied, Conflict, Denied, Conflict],
        ),
        (
            "PUT",
            "/v1/txn",
            Some(json!([{"KV": {"Verb": "get", "Key": "app/config"}}])),
            [Denied, Denied, Ok, Ok, Ok, Ok],
        ),
        (
            "PUT",
            "/v1/txn",
            Some(json!([{"KV": {"Verb": "set", "Key": "app/secret/pw", "Value": "cA=="}}])),
            [Denied, Denied, Denied, Ok, Denied, Ok],
        ),
        (
            "GET",
            "/v1/catalog/services",
            None,
            [List(0, true), List(0, true), List(3, false), List(1, true), List(3, false), List(3, false)],
        ),
        (
            "GET",
            "/v1/catalog/nodes",
            None,
            [List(0, true), List(0, true), List(2, false), List(2, false), List(2, false), List(2, false)],
        ),
        (
            "GET",
            "/v1/catalog/service/web",
            None,
            [List(0, true), List(0, true), List(1, false), List(1, false), List(1, false), List(1, false)],
        ),
        (
            "GET",
            "/v1/health/service/web",
            None,
            [List(0, true), List(0, true), List(1, false), List(1, false), List(1, false), List(1, false)],
        ),
        (
            "GET",
            "/v1/health/checks/web",
            None,
            [List(0, true), List(0, true), List(1, false), List(1, false), List(1, false), List(1, false)],
        ),
        ("PUT", "/v1/catalog/register", Some(register_web), [Denied, Denied, Denied, Ok, Denied, Ok]),
        ("PUT", "/v1/session/create", Some(session_body), [Denied, Denied, Denied, Ok, Denied, Ok]),
        (
            "GET",
            "/v1/session/list",
            None,
            [List(0, true), List(0, true), List(2, false), List(2, false), List(0, true), List(2, false)],
        ),
        ("GET", "/v1/agent/self", None, [Denied, Denied, Ok, Denied, Denied, Ok]),
        ("PUT", "/v1/agent/service/register", Some(agent_web), [Denied, Denied, Denied, Ok, Denied, Ok]),
        ("GET", "/v1/operator/raft/configuration", None, [Denied, Denied, Ok, Denied, Denied, Ok]),
        ("GET", "/v1/acl/policies", None, [Denied, Denied, Ok, Denied, Denied, Ok]),
        ("PUT", "/v1/acl/policy", Some(new_policy), [Denied, Denied, Denied, Denied, Denied, Ok]),
        ("GET", "/v1/acl/token/self", None, [Ok, Ok, Ok, Ok, Ok, Ok]),
        ("GET", "/v1/status/leader", None, [Ok, Ok, Ok, Ok, Ok, Ok]),
    ];

    let mut failures = Vec::new();
    for (method, path, body, wants) in &matrix {
        for (col, (token, want)) in tokens.iter().zip(wants.iter()).enumerate() {
            let a = api.call(method, path, *token, body.clone()).await;
            let ok = match want {
                Ok => (200..300).contains(&a.status),
                Denied => a.status == 403,
                Conflict => a.status == 409,
                List(n, filtered) => {
                    let count = match &a.body {
                        Value::Array(v) => v.len(),
                        Value::Object(m) => m.len(),
                        _ => 0,
                    };
                    // Consul answers an empty KV listing with 404.
                    (a.status == 200 || (a.status == 404 && *n == 0)) && count == *n && a.filtered == *filtered
                }
            };
            if !ok {
                failures.push(format!(
                    "{method} {path} as column {col}: want {want:?}, got {} filtered={} {}",
                    a.status, a.filtered, a.body
                ));
            }
        }
    }
    assert!(failures.is_empty(), "ACL matrix mismatches:\n{}", failures.join("\n"));

    // A token that does not exist is refused everywhere, even where anonymous would be allowed.
    assert_eq!(api.call("GET", "/v1/status/leader", Some("no-such-token"), None).await.status, 200);
    assert_eq!(api.call("GET", "/v1/kv/app/config", Some("no-such-token"), None).await.status, 403);

    // Secrets are hidden from tokens without acl:write.
    let listed = api.call("GET", "/v1/acl/tokens", Some(&secrets[0]), None).await;
    assert!(listed.body.as_array().expect("tokens").iter().all(|t| t["SecretID"] == "<hidden>"));

    // The anonymous token's policies are editable: give it read on app/ and it reads at once.
    let anon = api.ok("GET", "/v1/acl/token/00000000-0000-0000-0000-000000000002", None).await;
    api.ok(
        "PUT",
        "/v1/acl/policy",
        Some(json!({"Name": "anon-app", "Rules": "key_prefix \"app/config\" { policy = \"read\" }"})),
    )
    .await;
    api.ok(
        "PUT",
        "/v1/acl/token/00000000-0000-0000-0000-000000000002",
        Some(json!({
        "Description": anon["Description"], "Policies": [{"Name": "anon-app"}]})),
    )
    .await;
    assert_eq!(api.call("GET", "/v1/kv/app/config", None, None).await.status, 200);

    // Deleting a token takes effect for the next request.
    let self_of_writer = api.call("GET", "/v1/acl/token/self", Some(&secrets[1]), None).await;
    let accessor = self_of_writer.body["AccessorID"].as_str().expect("accessor").to_string();
    api.ok("DELETE", &format!("/v1/acl/token/{accessor}"), None).await;
    assert_eq!(api.call("PUT", "/v1/kv/app/config", Some(&secrets[1]), Some(json!("c"))).await.status, 403);

    // A bad rule is rejected at write time, naming the line.
    let bad = api
        .call(
            "PUT",
            "/v1/acl/policy",
            Some(MANAGEMENT),
            Some(json!({"Name": "bad", "Rules": "key \"a\" { policy = \"read\" }\nnode \"b\" { policy = \"owner\" }"})),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.as_str().is_some_and(|m| m.contains("line 2")), "{}", bad.body);

    // Bootstrap is one-shot.
    assert_eq!(api.call("PUT", "/v1/acl/bootstrap", None, None).await.status, 403);

    // IDs are UUIDs: anything else is refused before a lookup; a UUID naming nothing is Consul's
    // "ACL not found", which clients raise on (a 404 reads as "no answer" to py-consul).
    for (method, path) in [
        ("GET", "/v1/acl/token/unknown"),
        ("PUT", "/v1/acl/token/unknown"),
        ("PUT", "/v1/acl/token/unknown/clone"),
        ("DELETE", "/v1/acl/token/unknown"),
        ("GET", "/v1/acl/policy/unknown"),
        ("GET", "/v1/acl/role/unknown"),
    ] {
        let a = api.call(method, path, Some(MANAGEMENT), Some(json!({}))).await;
        assert_eq!(a.status, 400, "{method} {path}: {}", a.body);
        assert!(a.body.as_str().is_some_and(|m| m.contains("UUID must be 36 characters")), "{}", a.body);
    }
    // Token listing filters: by linked policy.
    let policy = api.ok("PUT", "/v1/acl/policy", Some(json!({"Name": "filter-test"}))).await;
    let pid = policy["ID"].as_str().expect("policy ID").to_string();
    let linked = json!({"AccessorID": "00000000-f17e-0000-0000-000000000000", "Policies": [{"ID": pid}]});
    api.ok("PUT", "/v1/acl/token", Some(linked)).await;
    let filtered = api.ok("GET", &format!("/v1/acl/tokens?policy={pid}"), None).await;
    let ids: Vec<&str> = filtered.as_array().expect("list").iter().filter_map(|t| t["AccessorID"].as_str()).collect();
    assert_eq!(ids, vec!["00000000-f17e-0000-0000-000000000000"]);
    let none = api.ok("GET", "/v1/acl/tokens?policy=00000000-0000-0000-0000-000000000099", None).await;
    assert_eq!(none, json!([]));
    let gone = "00000000-dead-beef-0000-000000000000";
    for path in [format!("/v1/acl/token/{gone}"), format!("/v1/acl/policy/{gone}")] {
        let a = api.call("GET", &path, Some(MANAGEMENT), None).await;
        assert_eq!((a.status, a.body.as_str()), (403, Some("ACL not found")), "{path}");
    }
    for path in [format!("/v1/acl/role/{gone}"), "/v1/acl/role/name/nothing".to_string()] {
        assert_eq!(api.call("GET", &path, Some(MANAGEMENT), None).await.status, 404, "a missing role: {path}");
    }

    // Service and node identities: stored, echoed, and granting what Consul's synthesized
    // policies grant, in their datacenters only.
    let identity = |body: Value| async { api.ok("PUT", "/v1/acl/token", Some(body)).await };
    let svc = identity(json!({"ServiceIdentities": [{"ServiceName": "api", "Datacenters": ["dc1"]}]})).await;
    assert_eq!(svc["ServiceIdentities"], json!([{"ServiceName": "api", "Datacenters": ["dc1"]}]), "{svc}");
    let svc_secret = svc["SecretID"].as_str().expect("secret").to_string();
    let elsewhere = identity(json!({"ServiceIdentities": [{"ServiceName": "api", "Datacenters": ["dc2"]}]})).await;
    let elsewhere_secret = elsewhere["SecretID"].as_str().expect("secret").to_string();
    let node = identity(json!({"NodeIdentities": [{"NodeName": "n1", "Datacenter": "dc1"}]})).await;
    let node_secret = node["SecretID"].as_str().expect("secret").to_string();
    let role = api
        .ok("PUT", "/v1/acl/role", Some(json!({"Name": "api-role", "ServiceIdentities": [{"ServiceName": "api"}]})))
        .await;
    assert_eq!(role["ServiceIdentities"], json!([{"ServiceName": "api"}]), "{role}");
    let via_role = identity(json!({"Roles": [{"Name": "api-role"}]})).await;
    let templated = identity(json!({"TemplatedPolicies": [
        {"TemplateName": "builtin/service", "TemplateVariables": {"Name": "api"}}]}))
    .await;
    assert_eq!(templated["TemplatedPolicies"][0]["TemplateVariables"], json!({"name": "api"}), "{templated}");
    let templated_secret = templated["SecretID"].as_str().expect("secret").to_string();
    let role_secret = via_role["SecretID"].as_str().expect("secret").to_string();
    let register = |service: &str| {
        json!({"Node": "n1", "Address": "10.0.0.1", "SkipNodeUpdate": true,
               "Service": {"ID": format!("{service}-1"), "Service": service}})
    };
    for (secret, service, want) in [
        (&svc_secret, "api", 200),
        (&svc_secret, "api-sidecar-proxy", 200),
        (&svc_secret, "db", 403),
        (&role_secret, "api", 200),
        (&templated_secret, "api", 200),
        (&templated_secret, "db", 403),
        (&elsewhere_secret, "api", 403),
    ] {
        let a = api.call("PUT", "/v1/catalog/register", Some(secret), Some(register(service))).await;
        assert_eq!(a.status, want, "register {service}: {}", a.body);
    }
    let nodes = api.call("GET", "/v1/catalog/nodes", Some(&svc_secret), None).await;
    assert!(!nodes.filtered && nodes.body.as_array().is_some_and(|n| n.len() == 2), "reads nodes: {}", nodes.body);
    let node_write =
        json!({"Node": "n1", "Address": "10.0.0.1", "Check": {"CheckID": "n1-ok", "Name": "ok", "Status": "passing"}});
    assert_eq!(api.call("PUT", "/v1/catalog/register", Some(&node_secret), Some(node_write)).await.status, 200);
    let other_node = json!({"Node": "n2", "Address": "10.0.0.2"});
    assert_eq!(api.call("PUT", "/v1/catalog/register", Some(&node_secret), Some(other_node)).await.status, 403);
    let by_service = api.ok("GET", "/v1/acl/tokens?servicename=api", None).await;
    assert_eq!(by_service.as_array().map(Vec::len), Some(2), "{by_service}");
    for (bad, why) in [
        (json!({"ServiceIdentities": [{"ServiceName": "Not Valid"}]}), "invalid name"),
        (json!({"NodeIdentities": [{"NodeName": "n1"}]}), "missing the datacenter"),
        (json!({"TemplatedPolicies": [{"TemplateName": "builtin/service"}]}), "name is required"),
        (json!({"TemplatedPolicies": [{"TemplateName": "builtin/nothing"}]}), "not found"),
        (json!({"Local": true, "ServiceIdentities": [{"ServiceName": "a", "Datacenters": ["dc1"]}]}), "local token"),
    ] {
        let a = api.call("PUT", "/v1/acl/token", Some(MANAGEMENT), Some(bad)).await;
        assert_eq!(a.status, 400, "{}", a.body);
        assert!(a.body.as_str().is_some_and(|m| m.contains(why)), "{}", a.body);
    }

    // Expiry times are kept in one form (so they compare), and never in the past.
    let later = api.ok("PUT", "/v1/acl/token", Some(json!({"ExpirationTime": "2099-01-01T00:00:00.5Z"}))).await;
    assert_eq!(later["ExpirationTime"], "2099-01-01T00:00:00Z", "{later}");
    // An expired token is deleted by the leader, not just refused.
    let brief = api.ok("PUT", "/v1/acl/token", Some(json!({"ExpirationTTL": "1s"}))).await;
    let accessor = brief["AccessorID"].as_str().expect("accessor").to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.call("GET", &format!("/v1/acl/token/{accessor}"), Some(MANAGEMENT), None).await.status != 403 {
        assert!(Instant::now() < deadline, "the expired token was never reaped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (exp, why) in [("2000-01-01T00:00:00Z", "in the past"), ("tomorrow", "Invalid ExpirationTime")] {
        let a = api.call("PUT", "/v1/acl/token", Some(MANAGEMENT), Some(json!({"ExpirationTime": exp}))).await;
        assert_eq!(a.status, 400, "{}", a.body);
        assert!(a.body.as_str().is_some_and(|m| m.contains(why)), "{}", a.body);
    }
}
