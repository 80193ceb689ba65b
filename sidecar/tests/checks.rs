//! Check runners against real local servers.

use std::time::Duration;

use registry::api::HealthStatus;
use registry::checks::{Check, GrpcCheck, HttpCheck, TcpCheck};
use warp::Filter;

/// An app with /ok (200), /busy (429), /broken (500) and /slow (answers after 2 s).
async fn app() -> std::net::SocketAddr {
    let ok = warp::path("ok").map(|| "fine");
    let busy = warp::path("busy").map(|| warp::reply::with_status("later", warp::http::StatusCode::TOO_MANY_REQUESTS));
    let broken =
        warp::path("broken").map(|| warp::reply::with_status("boom", warp::http::StatusCode::INTERNAL_SERVER_ERROR));
    let slow = warp::path("slow").then(|| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        "late"
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(ok.or(busy).or(broken).or(slow)).incoming(listener).run());
    addr
}

#[tokio::test]
async fn http_check_maps_status_codes_and_timeouts() {
    let addr = app().await;
    let probe = |path: &str| {
        HttpCheck::new(format!("http://{addr}/{path}"), reqwest::Method::GET, Duration::from_millis(500))
            .expect("check")
    };
    let ok = probe("ok").probe().await;
    assert_eq!(ok.status, HealthStatus::Passing);
    assert!(ok.output.contains("200") && ok.output.contains("fine"), "{}", ok.output);
    assert_eq!(probe("busy").probe().await.status, HealthStatus::Warning);
    assert_eq!(probe("broken").probe().await.status, HealthStatus::Critical);
    let slow = probe("slow").probe().await;
    assert_eq!(slow.status, HealthStatus::Critical, "a timeout is critical: {}", slow.output);
}

#[tokio::test]
async fn tcp_check_passes_on_connect_and_fails_on_refusal() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let open = listener.local_addr().expect("addr");
    assert_eq!(TcpCheck::new(open.to_string(), Duration::from_secs(1)).probe().await.status, HealthStatus::Passing);
    drop(listener);
    let refused = TcpCheck::new(open.to_string(), Duration::from_secs(1)).probe().await;
    assert_eq!(refused.status, HealthStatus::Critical);
    assert!(refused.output.contains("dial tcp"), "{}", refused.output);
}

#[tokio::test]
async fn grpc_check_speaks_the_health_protocol() {
    use tonic_health::ServingStatus;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", ServingStatus::Serving).await;
    reporter.set_service_status("db", ServingStatus::NotServing).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let probe =
        |target: String| async move { GrpcCheck::new(&target, Duration::from_secs(1)).expect("check").probe().await };
    let ok = probe(addr.to_string()).await;
    assert_eq!(ok.status, HealthStatus::Passing, "{}", ok.output);
    let db = probe(format!("{addr}/db")).await;
    assert_eq!(db.status, HealthStatus::Critical);
    assert!(db.output.contains("NOT_SERVING"), "{}", db.output);
    let unknown = probe(format!("{addr}/nope")).await;
    assert_eq!(unknown.status, HealthStatus::Critical, "an unknown service is not serving: {}", unknown.output);
    server.abort();
    let down = probe(addr.to_string()).await;
    assert_eq!(down.status, HealthStatus::Critical, "{}", down.output);
}
