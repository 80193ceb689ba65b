//! Feeds the HTTP API requests as a client could send them: any method, a path under a real
//! endpoint (or none) with arbitrary bytes after it, an arbitrary query, a token (the management
//! one, an unknown one, or none), `X-Consul-Index`-style headers and an arbitrary body, through the
//! same warp routes a server serves, with a real single-server state (in memory, ACLs on) behind
//! them. Properties: nothing panics, and client input never gets a 5xx (Consul answers some client
//! mistakes with 500; Roster answers 400 naming the problem).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use registry::app::App;

const MANAGEMENT: &str = "3f0e4a4c-fuzz-4c2b-9d3e-management00";

/// Where requests start: every API area, and the UI.
const PREFIXES: &[&str] = &[
    "/v1/kv/",
    "/v1/txn",
    "/v1/session/",
    "/v1/catalog/",
    "/v1/health/",
    "/v1/agent/",
    "/v1/status/",
    "/v1/operator/",
    "/v1/acl/",
    "/v1/internal/",
    "/v1/snapshot",
    "/v1/event/",
    "/v1/coordinate/",
    "/v1/query",
    "/v1/",
    "/ui/",
    "/",
];

const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "OPTIONS"];

struct Server {
    runtime: tokio::runtime::Runtime,
    app: Arc<App>,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let config = registry::config::Config {
            http_addr: ([127, 0, 0, 1], 0).into(),
            rpc_addr: ([127, 0, 0, 1], 0).into(),
            gossip_addr: None,
            dns_addr: None,
            acl_enabled: true,
            acl_default_policy: "deny".into(),
            acl_initial_management: Some(MANAGEMENT.into()),
            ..registry::config::Config::default()
        };
        let app = runtime.block_on(async {
            let (app, tasks) = registry::server::start(config).await.expect("server starts");
            std::mem::forget(tasks);
            while !app.is_leader() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The management token exists once its bootstrap write is applied.
            tokio::time::sleep(Duration::from_millis(500)).await;
            app
        });
        Server { runtime, app }
    })
}

/// Bytes as they may appear in a request line: everything outside a safe set percent-encoded.
fn encoded(bytes: &[u8]) -> String {
    const UNSAFE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'=')
        .remove(b'&')
        .remove(b'%')
        .remove(b'+')
        .remove(b'?');
    percent_encoding::percent_encode(bytes, UNSAFE).to_string()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (head, rest) = data.split_at(4);
    let method = METHODS[usize::from(head[0]) % METHODS.len()];
    let prefix = PREFIXES[usize::from(head[1]) % PREFIXES.len()];
    let token = match head[2] % 3 {
        0 => Some(MANAGEMENT),
        1 => Some("00000000-0000-0000-0000-000000000000"),
        _ => None,
    };
    // Fields separated by 0xff: path tail, query, one header value, body.
    let mut fields = rest.splitn(4, |b| *b == 0xff);
    let tail = fields.next().unwrap_or_default();
    let query = fields.next().unwrap_or_default();
    let header = fields.next().unwrap_or_default();
    let body = fields.next().unwrap_or_default().to_vec();
    // Keep `?` out of the path: the query goes after the first one, as a client sends it.
    let path = encoded(tail).replace('?', "%3F");
    let mut uri = format!("{prefix}{path}");
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(&encoded(query));
    }
    if uri.parse::<warp::http::Uri>().is_err() {
        return;
    }
    let mut request = warp::test::request().method(method).path(&uri).body(body);
    if let Some(t) = token {
        request = request.header("x-consul-token", t);
    }
    if let Ok(value) = warp::http::HeaderValue::from_bytes(header) {
        let name = ["content-type", "x-consul-index", "authorization", "x-consul-namespace"][usize::from(head[3]) % 4];
        request = request.header(name, value);
    }
    let s = server();
    let routes = registry::http::routes(s.app.clone());
    let answer = s.runtime.block_on(async {
        // A blocking query may rightly wait minutes: not a finding, and not worth the fuzzer's time.
        tokio::time::timeout(Duration::from_millis(100), request.reply(&routes)).await
    });
    if let Ok(resp) = answer {
        let status = resp.status();
        assert!(
            !status.is_server_error(),
            "{method} {uri} answered {status}: {}",
            String::from_utf8_lossy(resp.body())
        );
    }
});
