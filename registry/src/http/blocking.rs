//! Query options shared by every read endpoint: consistency modes and blocking queries.
//!
//! A blocking query (`?index=N&wait=D`) registers on the watch keys of what it reads, then reads; if
//! the index already moved past N it answers at once, else it sleeps until one of its keys changes or
//! the wait runs out. Wake-ups can be spurious (another key in the same table): like Consul, the answer
//! then carries the same or a higher index and clients compare.

use std::time::Duration;

use rand::Rng;

use super::{ApiError, Req};
use crate::api::parse_go_duration;
use crate::app::App;
use crate::state::{State, WatchKey};

/// Consul's defaults: 5 minutes when `wait` is absent, at most 10 minutes.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Served by the leader without a quorum check (Consul's default).
    Default,
    /// Served by whichever server got the request.
    Stale,
    /// Served by the leader after confirming it still leads.
    Consistent,
}

#[derive(Debug, Clone, Copy)]
pub struct QueryOpts {
    pub index: Option<u64>,
    pub wait: Duration,
    pub consistency: Consistency,
}

impl QueryOpts {
    pub fn parse(req: &Req) -> Result<Self, ApiError> {
        let index = match req.get("index") {
            None | Some("") => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| ApiError::BadRequest("Invalid index".into()))?),
        };
        let wait = match req.get("wait") {
            None | Some("") => DEFAULT_WAIT,
            Some(v) => parse_go_duration(v).map_err(|_| ApiError::BadRequest("Invalid wait time".into()))?,
        }
        .min(MAX_WAIT);
        let consistency = match (req.has("stale"), req.has("consistent")) {
            (true, true) => {
                return Err(ApiError::BadRequest(
                    "Cannot specify ?stale with ?consistent, conflicting semantics.".into(),
                ))
            }
            (true, false) => Consistency::Stale,
            (false, true) => Consistency::Consistent,
            _ => Consistency::Default,
        };
        Ok(QueryOpts { index: index.filter(|i| *i > 0), wait, consistency })
    }
}

/// One of the server's `http_max_blocking_queries` places, held while a query blocks.
struct BlockingSlot<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> BlockingSlot<'a> {
    fn take(app: &'a App) -> Result<Self, ApiError> {
        use std::sync::atomic::Ordering::SeqCst;
        let max = app.config.http_max_blocking_queries;
        let open = app.blocking_queries.fetch_add(1, SeqCst);
        let slot = BlockingSlot(&app.blocking_queries);
        if max > 0 && open >= max {
            static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            if crate::telemetry::once_a_minute(&LAST) {
                tracing::warn!(
                    max,
                    "http_max_blocking_queries reached: new blocking queries get 429 (logged once a minute)"
                );
            }
            return Err(ApiError::TooMany(format!(
                "Too many blocking queries open on this server (http_max_blocking_queries = {max}): retry later"
            )));
        }
        Ok(slot)
    }
}

impl Drop for BlockingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Decides whether this server may answer the read: `NotLeader` makes the caller forward it.
pub async fn check_read(app: &App, opts: &QueryOpts) -> Result<(), ApiError> {
    match opts.consistency {
        Consistency::Stale => Ok(()),
        Consistency::Default => {
            super::require_leader(app)?;
            // Past its lease (cut off, or acknowledgements late on a loaded machine) the leader
            // confirms with a quorum round before answering, as a `?consistent` read does.
            if app.leader_lease_held() || app.read_barrier.confirm().await {
                Ok(())
            } else {
                Err(ApiError::NotLeader)
            }
        }
        Consistency::Consistent => {
            super::require_leader(app)?;
            if app.read_barrier.confirm().await {
                Ok(())
            } else {
                Err(ApiError::NotLeader)
            }
        }
    }
}

/// Runs `query` now, or blocks until its index passes `opts.index`, one of `keys` changes, or the
/// wait (plus up to 1/16 jitter, as Consul adds) runs out.
pub async fn run<T>(
    app: &App,
    opts: &QueryOpts,
    keys: impl Fn() -> Vec<WatchKey>,
    query: impl Fn(&State) -> (u64, T),
) -> Result<(u64, T), ApiError> {
    check_read(app, opts).await?;
    let Some(min) = opts.index else {
        return Ok(app.sm.read(&query));
    };
    let _slot = BlockingSlot::take(app)?;
    let jitter = opts.wait.as_millis() as u64 / 16;
    let extra = if jitter > 0 { rand::rng().random_range(0..=jitter) } else { 0 };
    let deadline = tokio::time::Instant::now() + opts.wait + Duration::from_millis(extra);
    app.metrics.watchers.set(app.sm.hub().watchers() as i64);
    loop {
        // Register before reading, so a change between the read and the sleep is not missed.
        let mut watch = app.sm.hub().register(keys());
        let (index, value) = app.sm.read(&query);
        if index > min {
            return Ok((index, value));
        }
        if tokio::time::timeout_at(deadline, watch.changed()).await.is_err() {
            drop(watch);
            return Ok(app.sm.read(&query));
        }
    }
}
