//! The operator's own endpoints: Prometheus metrics at `/metrics`, liveness at `/healthz`,
//! readiness at `/readyz` (the Kubernetes API answered), and who leads (`roster_operator_leader`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kube::runtime::controller::Action;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use warp::Filter;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    controller: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: &'static str,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    durations: Family<ControllerLabel, Histogram>,
    leader: Gauge,
    ready: AtomicBool,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~33 s: a reconcile that talks to the servers can take a while.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("roster_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let durations =
            Family::<ControllerLabel, Histogram>::new_with_constructor(duration_histogram as fn() -> Histogram);
        let leader = Gauge::default();
        registry.register("reconciles", "Reconcile passes by controller and result", reconciles.clone());
        registry.register("reconcile_duration_seconds", "Time one reconcile pass took", durations.clone());
        registry.register(
            "leader",
            "1 while this replica holds the leader lease (or runs without election)",
            leader.clone(),
        );
        Arc::new(Metrics { registry, reconciles, durations, leader, ready: AtomicBool::new(false) })
    }

    pub fn reconciled(&self, controller: &'static str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles.get_or_create(&ReconcileLabels { controller, result }).inc();
        self.durations.get_or_create(&ControllerLabel { controller }).observe(took.as_secs_f64());
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Wraps a reconcile function so every pass is counted and timed under `controller`.
pub fn instrumented<K, C, E, F, Fut>(
    metrics: Arc<Metrics>,
    controller: &'static str,
    reconcile: F,
) -> impl FnMut(Arc<K>, Arc<C>) -> BoxFuture<'static, Result<Action, E>>
where
    F: Fn(Arc<K>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    move |obj, ctx| {
        let metrics = metrics.clone();
        let pass = reconcile(obj, ctx);
        Box::pin(async move {
            let started = Instant::now();
            let result = pass.await;
            metrics.reconciled(controller, result.is_ok(), started.elapsed());
            result
        })
    }
}

/// Runs `controller` until SIGTERM or Ctrl-C, every pass counted and timed under `name`.
pub async fn drive<K, C, E, F, Fut>(
    controller: kube::runtime::Controller<K>,
    name: &'static str,
    reconcile: F,
    error_policy: impl Fn(Arc<K>, &E, Arc<C>) -> Action,
    ctx: Arc<C>,
    metrics: Arc<Metrics>,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + std::fmt::Debug + Unpin,
    C: Send + Sync + 'static,
    E: std::error::Error + Send + 'static,
    F: Fn(Arc<K>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    use futures::StreamExt;
    controller
        .shutdown_on_signal()
        .run(instrumented(metrics, name, reconcile), error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(controller = name, object = %obj.name, "reconciled"),
                Err(e) => tracing::warn!(controller = name, error = %e, "reconcile error"),
            }
        })
        .await;
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let m = metrics.clone();
    let metrics_route = warp::path!("metrics").and(warp::get()).map(move || {
        warp::http::Response::builder()
            .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(m.encode())
            .unwrap_or_default()
    });
    // Owned strings: `&str` replies make the server future not `Send` for every lifetime.
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok".to_string());
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        if metrics.ready.load(Ordering::Relaxed) {
            warp::reply::with_status("ok".to_string(), warp::http::StatusCode::OK)
        } else {
            let why = "not connected to the Kubernetes API yet".to_string();
            warp::reply::with_status(why, warp::http::StatusCode::SERVICE_UNAVAILABLE)
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    warp::serve(metrics_route.or(healthz).or(readyz)).incoming(listener).run().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_are_counted_by_controller_and_result() {
        let m = Metrics::new();
        m.reconciled("keyvalue", true, Duration::from_millis(3));
        m.reconciled("keyvalue", false, Duration::from_millis(3));
        m.reconciled("keyvalue", true, Duration::from_millis(3));
        m.set_leader(true);
        let text = m.encode();
        assert!(text.contains(r#"roster_operator_reconciles_total{controller="keyvalue",result="ok"} 2"#), "{text}");
        assert!(text.contains(r#"roster_operator_reconciles_total{controller="keyvalue",result="error"} 1"#), "{text}");
        assert!(
            text.contains(r#"roster_operator_reconcile_duration_seconds_count{controller="keyvalue"} 3"#),
            "{text}"
        );
        assert!(text.contains("roster_operator_leader 1"), "{text}");
    }
}
