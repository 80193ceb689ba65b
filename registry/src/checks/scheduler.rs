//! Runs one check every interval, damps flapping, and reports only changes.
//!
//! Each check is one task: probe (bounded by the interval so a hung probe cannot pile up), feed the
//! `Damper`, and send a `CheckUpdate` when the reported status or output changed. The sync loop that
//! pushes updates to the servers consumes the channel; nothing travels when nothing changed.

use std::sync::Arc;
use std::time::Duration;

use crate::api::HealthStatus;
use tokio::sync::{mpsc, watch};

use super::{Check, Damper};

/// A change of a check's reported state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckUpdate {
    pub check_id: String,
    pub status: HealthStatus,
    pub output: String,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub check_id: String,
    pub interval: Duration,
    pub success_before_passing: u32,
    pub failures_before_critical: u32,
}

/// Spawns the check's loop; it ends when `stop` flips to true or the receiver is gone.
pub fn spawn<C: Check + 'static>(
    check: Arc<C>,
    schedule: Schedule,
    updates: mpsc::UnboundedSender<CheckUpdate>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut damper =
            Damper::new(schedule.success_before_passing, schedule.failures_before_critical, HealthStatus::Critical);
        let mut last: Option<(HealthStatus, String)> = None;
        let mut ticker = tokio::time::interval(schedule.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let probe = match tokio::time::timeout(schedule.interval, check.probe()).await {
                Ok(p) => p,
                Err(_) => super::Probe::new(HealthStatus::Critical, "check timed out"),
            };
            let status = damper.observe(probe.status);
            let now = (status, probe.output);
            if last.as_ref() != Some(&now) {
                let update = CheckUpdate { check_id: schedule.check_id.clone(), status: now.0, output: now.1.clone() };
                if updates.send(update).is_err() {
                    return;
                }
                last = Some(now);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::Probe;
    use std::sync::Mutex;

    /// A check that answers whatever the test last set.
    struct Scripted(Mutex<Probe>);

    impl Check for Scripted {
        async fn probe(&self) -> Probe {
            self.0.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn reports_changes_only_and_stops() {
        let check = Arc::new(Scripted(Mutex::new(Probe::new(HealthStatus::Critical, ""))));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let schedule = Schedule {
            check_id: "app".into(),
            interval: Duration::from_millis(20),
            success_before_passing: 2,
            failures_before_critical: 1,
        };
        let task = spawn(check.clone(), schedule, tx, stop_rx);
        let first = rx.recv().await.expect("first update");
        assert_eq!(first.status, HealthStatus::Critical);
        *check.0.lock().unwrap() = Probe::new(HealthStatus::Passing, "ok");
        // The first pass changes only the output (still damped to critical); the second one turns
        // it passing; after that, probes that change nothing send nothing.
        async fn next(rx: &mut mpsc::UnboundedReceiver<CheckUpdate>) -> CheckUpdate {
            tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.expect("update").expect("open")
        }
        let damped = next(&mut rx).await;
        assert_eq!((damped.status, damped.output.as_str()), (HealthStatus::Critical, "ok"));
        let passing = next(&mut rx).await;
        assert_eq!((passing.status, passing.output.as_str()), (HealthStatus::Passing, "ok"));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(rx.try_recv().is_err(), "no update without a change");
        stop_tx.send(true).expect("stop");
        tokio::time::timeout(Duration::from_secs(2), task).await.expect("stopped").expect("join");
    }
}
