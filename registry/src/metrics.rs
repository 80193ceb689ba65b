//! Prometheus metrics: Raft commit time, apply lag, leader changes, request latency by endpoint, watchers.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::app::App;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<EndpointLabels, Histogram>,
    commits: Family<CommandLabels, Histogram>,
    pub leader_changes: Counter,
    pub apply_lag: Gauge,
    pub watchers: Gauge,
    pub last_index: Gauge,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("roster");
        let requests =
            Family::<EndpointLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let commits = Family::<CommandLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let leader_changes = Counter::default();
        let apply_lag = Gauge::default();
        let watchers = Gauge::default();
        let last_index = Gauge::default();
        registry.register("http_request_duration_seconds", "HTTP API latency by endpoint", requests.clone());
        registry.register("raft_commit_duration_seconds", "Time from propose to commit and apply", commits.clone());
        registry.register("raft_leader_changes", "Leader changes seen by this server", leader_changes.clone());
        registry.register("raft_apply_lag_entries", "Log entries known but not yet applied", apply_lag.clone());
        registry.register("blocking_query_watchers", "Blocking queries currently waiting", watchers.clone());
        registry.register("raft_last_log_index", "Last log index of this server", last_index.clone());
        Metrics { registry, requests, commits, leader_changes, apply_lag, watchers, last_index }
    }

    pub fn observe_request(&self, endpoint: &str, method: &str, took: Duration) {
        self.requests
            .get_or_create(&EndpointLabels { endpoint: endpoint.to_string(), method: method.to_string() })
            .observe(took.as_secs_f64());
    }

    pub fn observe_commit(&self, command: &str, took: Duration) {
        self.commits.get_or_create(&CommandLabels { command: command.to_string() }).observe(took.as_secs_f64());
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Follows Raft metrics into the gauges and counts leader changes.
pub async fn watch_raft(app: Arc<App>) {
    let mut rx = app.raft.metrics();
    let mut shutdown = app.shutdown.subscribe();
    let mut leader = None;
    loop {
        {
            let m = rx.borrow_and_update().clone();
            if m.current_leader != leader {
                if m.current_leader.is_some() {
                    app.metrics.leader_changes.inc();
                }
                leader = m.current_leader;
            }
            let last = m.last_log_index.unwrap_or(0);
            let applied = m.last_applied.map_or(0, |l| l.index);
            app.metrics.last_index.set(last as i64);
            app.metrics.apply_lag.set(last.saturating_sub(applied) as i64);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}
