//! The rollout plan and `RegistryAdmin` against real `roster server` processes on 127.0.0.x, with
//! this test standing in for the StatefulSet controller (it restarts a "pod" by killing its process
//! and starting it again on the same data, and removes pods when the replica count drops). The same
//! loop the controller runs: observe (readiness from `/readyz`, autopilot health) -> plan -> one step.
//! Checked: a rolling update restarts every server once, leader last, with writes going through
//! all along and nothing lost; a scale-down from 3 to 1 removes servers from Raft before they stop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use roster_operator::registry_cluster::controller::{RegistryAdmin, ServerAdmin, Target};
use roster_operator::registry_cluster::rollout::{plan, PodView, RaftView, Step};

const PORT: u16 = 19750;

struct Server {
    name: String,
    http: String,
    dir: PathBuf,
    /// The "template revision" this process was started from.
    revision: String,
    child: Option<Child>,
}

impl Server {
    fn start(&mut self, join: &str, revision: &str) {
        let log = std::fs::File::create(self.dir.with_extension("log")).expect("log");
        let rpc = self.http.replace(&PORT.to_string(), &(PORT + 1).to_string());
        let roster = PathBuf::from(env!("CARGO_BIN_EXE_roster-operator")).with_file_name("roster");
        let child = Command::new(roster)
            .args(["server", "--node-name", &self.name, "--http-addr", &self.http, "--rpc-addr", &rpc])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--bootstrap-expect", "3", "--retry-join", join])
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn roster server");
        self.child = Some(child);
        self.revision = revision.to_string();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM, as the kubelet does: a leader hands off first.
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Pods {
    _tmp: tempfile::TempDir,
    servers: Vec<Server>,
    join: String,
    http: reqwest::Client,
}

impl Pods {
    fn start() -> Pods {
        let tmp = tempfile::tempdir().expect("tmp");
        let join = (1..=3).map(|i| format!("127.0.0.{i}:{}", PORT + 1)).collect::<Vec<_>>().join(",");
        let mut servers: Vec<Server> = (0..3)
            .map(|i| Server {
                name: format!("rc-{i}"),
                http: format!("127.0.0.{}:{PORT}", i + 1),
                dir: tmp.path().join(format!("rc-{i}")),
                revision: String::new(),
                child: None,
            })
            .collect();
        for s in servers.iter_mut() {
            s.start(&join, "v1");
        }
        let http = registry::client::http_builder().timeout(Duration::from_secs(2)).build().expect("http");
        Pods { _tmp: tmp, servers, join, http }
    }

    /// The pods as the controller would list them: running ones, ready when `/readyz` says so.
    async fn views(&self) -> Vec<PodView> {
        let mut out = Vec::new();
        for (i, s) in self.servers.iter().enumerate() {
            if s.child.is_none() {
                continue;
            }
            let ready =
                self.http.get(format!("http://{}/readyz", s.http)).send().await.is_ok_and(|r| r.status().is_success());
            out.push(PodView {
                name: s.name.clone(),
                ordinal: i as i32,
                ready,
                revision: Some(s.revision.clone()),
                terminating: false,
            });
        }
        out
    }

    fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|s| {
                format!("--- {}\n{}", s.name, std::fs::read_to_string(s.dir.with_extension("log")).unwrap_or_default())
            })
            .collect()
    }
}

/// The registry as the controller reaches it (through "the client Service": any live server).
fn admin(pods: &Pods) -> RegistryAdmin {
    let live = pods.servers.iter().find(|s| s.child.is_some()).expect("a live server");
    RegistryAdmin { addr: Some(live.http.clone()), token: None }
}

/// The cluster the "controller" works on (no ACLs here: no token).
fn target() -> Target {
    Target { namespace: "ns".into(), cluster: "rc".into(), token: None }
}

async fn put(pods: &Pods, key: &str, value: &str) -> bool {
    for s in pods.servers.iter().filter(|s| s.child.is_some()) {
        let r = pods.http.put(format!("http://{}/v1/kv/{key}", s.http)).body(value.to_string()).send().await;
        if let Ok(r) = r {
            if r.status().is_success() {
                return true;
            }
        }
    }
    false
}

async fn get(pods: &Pods, key: &str) -> Option<String> {
    let live = pods.servers.iter().find(|s| s.child.is_some())?;
    let r = pods.http.get(format!("http://{}/v1/kv/{key}?raw", live.http)).send().await.ok()?;
    r.status().is_success().then_some(r.text().await.ok()?)
}

/// Runs the controller's loop until the plan is steady (or `timeout`); returns the steps taken.
async fn drive(pods: &mut Pods, desired: i32, revision: &str, timeout: Duration) -> Vec<Step> {
    let deadline = Instant::now() + timeout;
    let mut replicas = pods.servers.iter().filter(|s| s.child.is_some()).count() as i32;
    let mut steps = Vec::new();
    let mut writes = 0;
    loop {
        assert!(Instant::now() < deadline, "no steady state; steps so far {steps:?}\n{}", pods.logs());
        // Writes keep going through whatever happens.
        writes += 1;
        let w = tokio::time::timeout(Duration::from_secs(8), put(pods, &format!("during/{writes}"), "x")).await;
        assert!(matches!(w, Ok(true)), "write {writes} failed during {steps:?}\n{}", pods.logs());
        let views = pods.views().await;
        let admin = admin(pods);
        let raft = admin.health(&target()).await.ok().map(|h| RaftView::from(&h));
        let p = plan("rc", desired, Some(replicas), Some(revision), &views, raft.as_ref());
        // The "StatefulSet" follows the planned replica count: pods above it go.
        if p.replicas < replicas {
            for s in pods.servers.iter_mut().skip(p.replicas as usize) {
                s.stop();
            }
            replicas = p.replicas;
        }
        match &p.step {
            Step::Steady => return steps,
            Step::Wait(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            Step::RemovePeer(name) => admin.remove_peer(&target(), name).await.expect("remove peer"),
            Step::TransferLeadership { to, .. } => admin.transfer_leadership(&target(), to).await.expect("transfer"),
            Step::RestartPod(name) => {
                let join = pods.join.clone();
                let s = pods.servers.iter_mut().find(|s| &s.name == name).expect("pod");
                s.stop();
                s.start(&join, revision);
            }
        }
        if !matches!(p.step, Step::Wait(_)) {
            steps.push(p.step.clone());
        }
        if p.step == Step::Steady {
            return steps;
        }
    }
}

async fn wait_healthy(pods: &Pods, voters: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(h) = admin(pods).health(&target()).await {
            if h.healthy && h.servers.iter().filter(|s| s.voter).count() == voters {
                return;
            }
        }
        assert!(Instant::now() < deadline, "cluster never healthy with {voters} voters\n{}", pods.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_update_then_scale_down_against_real_servers() {
    registry::client::ensure_crypto_provider();
    let mut pods = Pods::start();
    wait_healthy(&pods, 3).await;
    assert!(put(&pods, "before", "kept").await);

    // Rolling update v1 -> v2: three restarts, leader last after a hand-off, writes throughout.
    let leader_before = admin(&pods).health(&target()).await.expect("health").servers.into_iter().find(|s| s.leader);
    let leader_before = leader_before.expect("a leader").name;
    let started = Instant::now();
    let steps = drive(&mut pods, 3, "v2", Duration::from_secs(120)).await;
    eprintln!("rolling update took {:?}: {steps:?}", started.elapsed());
    let restarts: Vec<&String> =
        steps.iter().filter_map(|s| if let Step::RestartPod(n) = s { Some(n) } else { None }).collect();
    assert_eq!(restarts.len(), 3, "{steps:?}");
    assert_eq!(restarts.last().map(|s| s.as_str()), Some(leader_before.as_str()), "the leader goes last: {steps:?}");
    let handoff = steps.iter().position(|s| matches!(s, Step::TransferLeadership { .. }));
    assert!(handoff.is_some_and(|h| h == steps.len() - 2), "hand-off right before the last restart: {steps:?}");
    assert!(pods.servers.iter().all(|s| s.revision == "v2"));
    wait_healthy(&pods, 3).await;
    assert_eq!(get(&pods, "before").await.as_deref(), Some("kept"));

    // Scale down to 1: rc-2 then rc-1 leave Raft (leadership moved off them first) before they stop.
    let steps = drive(&mut pods, 1, "v2", Duration::from_secs(60)).await;
    eprintln!("scale-down: {steps:?}");
    let removed: Vec<&String> =
        steps.iter().filter_map(|s| if let Step::RemovePeer(n) = s { Some(n) } else { None }).collect();
    assert_eq!(removed, ["rc-2", "rc-1"], "{steps:?}");
    let handoffs = steps.iter().filter(|s| matches!(s, Step::TransferLeadership { .. })).count();
    assert!(handoffs <= 1, "leadership goes straight to the server that stays: {steps:?}");
    assert!(pods.servers[1].child.is_none() && pods.servers[2].child.is_none());
    wait_healthy(&pods, 1).await;
    // The one left is a working single-server cluster with all the data.
    assert!(put(&pods, "after", "one").await);
    assert_eq!(get(&pods, "before").await.as_deref(), Some("kept"));
    assert_eq!(get(&pods, "during/1").await.as_deref(), Some("x"));
}
