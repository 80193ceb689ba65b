//! The load generator: N client tasks, each with its own HTTP client (so its own connection, reused
//! across requests), running one operation in a loop bounded by both a duration and an operation count.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in microseconds, 3 significant digits, up to one hour.
#[derive(Clone)]
pub struct Hist(Histogram<u64>);

impl Hist {
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts; `expect` documents that, it cannot fire.
        Hist(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record((d.as_micros() as u64).max(1));
    }

    pub fn add(&mut self, other: &Hist) {
        // Same bounds on both sides, so adding cannot fail; saturate rather than lose the run if it did.
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Percentile in milliseconds (q in 0..=100).
    pub fn ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_percentile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }

    pub fn mean_ms(&self) -> f64 {
        self.0.mean() / 1000.0
    }
}

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

/// What one load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadStats {
    pub clients: usize,
    /// Successful operations inside the measured window.
    pub ops: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub ops_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl LoadStats {
    pub fn from_hist(clients: usize, hist: &Hist, errors: u64, elapsed: Duration, first_error: Option<String>) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        LoadStats {
            clients,
            ops: hist.len(),
            errors,
            elapsed_s: elapsed.as_secs_f64(),
            ops_per_s: hist.len() as f64 / secs,
            p50_ms: hist.ms(50.0),
            p99_ms: hist.ms(99.0),
            max_ms: hist.max_ms(),
            mean_ms: hist.mean_ms(),
            first_error,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    pub clients: usize,
    /// Each client stops starting operations after this long.
    pub duration: Duration,
    /// At most this many operations in all (each gets a distinct sequence number below it).
    pub max_ops: u64,
    /// One unmeasured operation per client before the clock starts, so connection set-up is not timed.
    pub warmup: bool,
}

/// Per-client HTTP/1.1 client: one connection per client task, kept alive between requests.
pub fn client(timeout: Duration) -> Result<reqwest::Client> {
    registry::client::http_builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .build()
        .context("building an HTTP client")
}

/// Runs `op(client, worker, seq)` from `spec.clients` tasks until the duration or the count runs out.
/// Errors are counted (the first is kept), never fatal: a benchmark should report them, not stop.
pub async fn run<F, Fut>(spec: LoadSpec, op: F) -> Result<LoadStats>
where
    F: Fn(reqwest::Client, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let seq = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    // Every client plus this task: the clock starts when all clients are connected and ready.
    let barrier = Arc::new(tokio::sync::Barrier::new(spec.clients + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..spec.clients {
        let (op, seq, first_error, barrier) = (op.clone(), seq.clone(), first_error.clone(), barrier.clone());
        let http = client(Duration::from_secs(30))?;
        tasks.spawn(async move {
            let note = |e: anyhow::Error| {
                if let Ok(mut f) = first_error.lock() {
                    f.get_or_insert_with(|| format!("{e:#}"));
                }
            };
            if spec.warmup {
                // Sequence numbers above the measured range keep warm-up keys apart from measured ones.
                if let Err(e) = op(http.clone(), worker, u64::MAX - worker as u64).await {
                    note(e);
                }
            }
            barrier.wait().await;
            let deadline = Instant::now() + spec.duration;
            let (mut hist, mut errors) = (Hist::new(), 0u64);
            while Instant::now() < deadline {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                if n >= spec.max_ops {
                    break;
                }
                let started = Instant::now();
                match op(http.clone(), worker, n).await {
                    Ok(()) => hist.record(started.elapsed()),
                    Err(e) => {
                        errors += 1;
                        note(e);
                    }
                }
            }
            (hist, errors)
        });
    }
    barrier.wait().await;
    let started = Instant::now();
    let (mut hist, mut errors) = (Hist::new(), 0u64);
    while let Some(done) = tasks.join_next().await {
        let (h, e) = done.context("a load client task failed")?;
        hist.add(&h);
        errors += e;
    }
    let elapsed = started.elapsed();
    let first = first_error.lock().ok().and_then(|mut f| f.take());
    Ok(LoadStats::from_hist(spec.clients, &hist, errors, elapsed, first))
}
