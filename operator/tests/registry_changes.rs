//! Watches, not polling: the stream controllers reconcile on moves when the registry changes (a
//! blocking query), against a real registry (`roster dev`), and stays quiet otherwise.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use roster_operator::registry_api::changes_of;

const REGISTRY: &str = "127.0.0.1:19751";

#[tokio::test]
async fn a_registry_change_triggers_at_once_and_nothing_else_does() {
    let _registry = common::start_registry(REGISTRY, "127.0.0.1:19752").await;
    let client = registry::client::Client::new(vec![REGISTRY.into()]).expect("client");
    let source = client.clone();
    let mut changes = Box::pin(changes_of(
        move || {
            let c = source.clone();
            async move { vec![("dev".to_string(), c)] }
        },
        "/v1/kv/?keys&separator=/",
    ));

    // Keep writing until the stream says so (its first read may come after the first write).
    let started = Instant::now();
    let mut i = 0;
    loop {
        client.kv_put("app/flag", format!("{i}").into_bytes(), None).await.expect("put");
        i += 1;
        match tokio::time::timeout(Duration::from_millis(300), changes.next()).await {
            Ok(Some(())) => break,
            Ok(None) => panic!("the change stream ended"),
            Err(_) => assert!(started.elapsed() < Duration::from_secs(10), "no change seen in 10 s"),
        }
    }
    // Quiet registry, quiet stream: no polling, no spurious triggers.
    assert!(tokio::time::timeout(Duration::from_millis(1500), changes.next()).await.is_err(), "triggered for nothing");
    // One more write: seen within a second.
    let written = Instant::now();
    client.kv_put("app/flag", b"last".to_vec(), None).await.expect("put");
    tokio::time::timeout(Duration::from_secs(1), changes.next()).await.expect("seen within a second");
    assert!(written.elapsed() < Duration::from_secs(1));
}
