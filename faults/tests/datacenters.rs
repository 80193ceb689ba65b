//! Two datacenters of three `roster server` processes each, every server in a network namespace of
//! its own, all in one WAN pool; the link between the datacenters is cut, then healed. Skipped with
//! a SKIP line where namespaces cannot be made (not root), or failing there if
//! ROSTER_FAULTS_REQUIRE_NETNS is set (CI).

use std::io::Write;
use std::time::{Duration, Instant};

use reqwest::Method;
use roster_faults::datacenters::Datacenters;
use roster_faults::netns::{self, Net};
use serde_json::Value;

const PORT: u16 = 20100;

/// Polls `ok` every 100 ms; how long until it held, or a panic with the servers' logs.
async fn until(d: &Datacenters, what: &str, timeout: Duration, mut ok: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok().await {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", d.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

/// The WAN members server `i` sees, as (name, status) (Serf's status: 1 alive, 4 failed).
async fn wan_members(d: &Datacenters, i: usize) -> Vec<(String, u64)> {
    let (status, body) = d.call(i, Method::GET, "/v1/agent/members?wan=1", "").await;
    if status != 200 {
        return Vec::new();
    }
    let members: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
    members
        .iter()
        .map(|m| (m["Name"].as_str().unwrap_or_default().to_string(), m["Status"].as_u64().unwrap_or(0)))
        .collect()
}

async fn put(d: &Datacenters, i: usize, path: &str, value: &str) -> bool {
    d.call(i, Method::PUT, path, value).await == (200, "true".into())
}

async fn get_raw(d: &Datacenters, i: usize, path: &str) -> (u16, String) {
    d.call(i, Method::GET, path, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wan_partition_between_two_datacenters_is_detected_and_heals() {
    if !netns::available_or_skip("a_wan_partition_between_two_datacenters_is_detected_and_heals") {
        return;
    }
    let net = Net::create(6).unwrap_or_else(|e| panic!("namespaces: {e}"));
    let mut d = Datacenters::start(&[3, 3], PORT, net);
    let (dc1, dc2) = (d.in_dc("dc1"), d.in_dc("dc2"));
    let (a, b) = (dc1[0], dc2[0]);
    let started = Instant::now();
    for (dc, i) in [("dc1", a), ("dc2", b)] {
        until(&d, &format!("{dc} writable"), Duration::from_secs(60), async || put(&d, i, "/v1/kv/ready", dc).await)
            .await;
    }
    until(&d, "all six servers alive in the WAN pool, seen from both sides", Duration::from_secs(60), async || {
        let (x, y) = (wan_members(&d, a).await, wan_members(&d, b).await);
        [x, y].iter().all(|m| m.len() == 6 && m.iter().all(|(_, s)| *s == 1))
    })
    .await;
    let formed = started.elapsed();
    let names: Vec<String> = wan_members(&d, a).await.into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"dc2-server-3.dc2".to_string()), "members are node.dc: {names:?}");

    // Writes and reads across, both ways, through every server of the other side.
    assert!(put(&d, a, "/v1/kv/written-in-dc1?dc=dc2", "from dc1").await);
    assert!(put(&d, b, "/v1/kv/written-in-dc2?dc=dc1", "from dc2").await);
    for &i in &dc2 {
        assert_eq!(get_raw(&d, i, "/v1/kv/written-in-dc1?raw").await, (200, "from dc1".into()));
    }
    for &i in &dc1 {
        assert_eq!(get_raw(&d, i, "/v1/kv/written-in-dc2?raw").await, (200, "from dc2".into()));
    }

    // Cut the WAN: each side marks the other's servers failed and says the datacenter is unreachable.
    d.partition_datacenters();
    let cut = Instant::now();
    // Sent before the pool noticed, over the connection the write above left open: an answer (a
    // 5xx naming dc2), not a request hanging on a silent peer.
    let patient = registry::client::http_builder().timeout(Duration::from_secs(120)).build().expect("client");
    let url = format!("http://{}/v1/kv/written-in-dc1?dc=dc2", d.servers[a].http);
    let early_read = tokio::spawn(async move {
        let answer = match patient.get(url).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        };
        (answer, cut.elapsed())
    });
    let detected = until(&d, "each side to mark the other's servers failed", Duration::from_secs(90), async || {
        let from_dc1 = wan_members(&d, a).await;
        let from_dc2 = wan_members(&d, b).await;
        let failed = |m: &[(String, u64)], other: &str| {
            m.iter().filter(|(n, _)| n.ends_with(other)).all(|(_, s)| *s == 4)
                && m.iter().filter(|(n, _)| !n.ends_with(other)).all(|(_, s)| *s == 1)
        };
        failed(&from_dc1, ".dc2") && failed(&from_dc2, ".dc1")
    })
    .await;
    let ((status, body), first_answer) = early_read.await.expect("the early read");
    assert!(status >= 500 && body.contains("dc2"), "{status} {body} after {first_answer:?}");
    assert!(first_answer < Duration::from_secs(20), "answered after {first_answer:?}");
    let (status, body) = get_raw(&d, a, "/v1/kv/written-in-dc1?dc=dc2").await;
    assert!(status >= 500 && body.contains("dc2"), "an unreachable datacenter is a 5xx naming it: {status} {body}");
    let (status, body) = get_raw(&d, b, "/v1/kv/written-in-dc2?dc=dc1").await;
    assert!(status >= 500 && body.contains("dc1"), "{status} {body}");
    // Each datacenter goes on by itself, through every server.
    for (k, &i) in dc1.iter().chain(&dc2).enumerate() {
        assert!(put(&d, i, &format!("/v1/kv/during-partition-{k}"), "x").await, "{} writable", d.servers[i].name);
    }
    let answer = get_raw(&d, a, "/v1/catalog/datacenters").await;
    assert_eq!(answer.0, 200);
    let dcs: Vec<String> = serde_json::from_str(&answer.1).unwrap_or_default();
    assert!(dcs.contains(&"dc1".into()), "{dcs:?}");

    // Heal: both ways work again, through every server.
    d.heal();
    let healed = until(&d, "reads across again, both ways", Duration::from_secs(90), async || {
        get_raw(&d, a, "/v1/kv/written-in-dc1?dc=dc2&raw").await == (200, "from dc1".into())
            && get_raw(&d, b, "/v1/kv/written-in-dc2?dc=dc1&raw").await == (200, "from dc2".into())
    })
    .await;
    // Until then a server that still holds the other side failed answers 503 for it.
    let rejoined = until(&d, "every server to see all six alive again", Duration::from_secs(90), async || {
        for i in 0..d.servers.len() {
            let m = wan_members(&d, i).await;
            if m.len() != 6 || m.iter().any(|(_, s)| *s != 1) {
                return false;
            }
        }
        true
    })
    .await;
    for (k, &i) in dc1.iter().chain(&dc2).enumerate() {
        let other = if d.servers[i].dc == "dc1" { "dc2" } else { "dc1" };
        let answer = d.call(i, Method::PUT, &format!("/v1/kv/after-heal-{k}?dc={other}"), "y").await;
        assert_eq!(answer, (200, "true".into()), "{} to {other}", d.servers[i].name);
    }
    // Printed for docs/reliability.md (a figure, not a timed assertion).
    let _ = writeln!(
        std::io::stderr(),
        "WAN partition: pool formed in {formed:?}; a read across right after the cut answered in {first_answer:?}; failures detected {detected:?} after the cut; after the heal, \
         reads across in {healed:?}, every server sees all alive {rejoined:?} later (total {:?}); logs in {}",
        cut.elapsed(),
        d.dir().display()
    );
}
