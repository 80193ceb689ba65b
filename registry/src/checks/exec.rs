//! Script checks: run a command; exit 0 is passing, 1 is warning, anything else critical (Consul's
//! convention). Off unless the sidecar is started with script checks enabled, as in Consul.

use std::time::Duration;

use crate::api::HealthStatus;

use super::{Check, Probe};

pub struct ExecCheck {
    args: Vec<String>,
    timeout: Duration,
}

impl ExecCheck {
    /// `enabled` is the sidecar's `enable_script_checks`; without it the check cannot be built.
    pub fn new(args: Vec<String>, timeout: Duration, enabled: bool) -> anyhow::Result<Self> {
        if !enabled {
            anyhow::bail!("script checks are disabled (enable_script_checks is off)");
        }
        if args.is_empty() {
            anyhow::bail!("a script check needs Args: the command and its arguments");
        }
        Ok(ExecCheck { args, timeout })
    }
}

impl Check for ExecCheck {
    async fn probe(&self) -> Probe {
        let mut cmd = tokio::process::Command::new(&self.args[0]);
        cmd.args(&self.args[1..]).kill_on_drop(true);
        match tokio::time::timeout(self.timeout, cmd.output()).await {
            Err(_) => Probe::new(HealthStatus::Critical, format!("Timed out ({:?}) running check", self.timeout)),
            Ok(Err(e)) => Probe::new(HealthStatus::Critical, format!("cannot run {:?}: {e}", self.args[0])),
            Ok(Ok(out)) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                let status = match out.status.code() {
                    Some(0) => HealthStatus::Passing,
                    Some(1) => HealthStatus::Warning,
                    _ => HealthStatus::Critical,
                };
                Probe::new(status, text)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ExecCheck {
        ExecCheck::new(vec!["sh".into(), "-c".into(), script.into()], Duration::from_millis(500), true).expect("check")
    }

    #[tokio::test]
    async fn exit_codes_map_to_statuses() {
        let ok = sh("echo fine").probe().await;
        assert_eq!((ok.status, ok.output.as_str()), (HealthStatus::Passing, "fine\n"));
        assert_eq!(sh("exit 1").probe().await.status, HealthStatus::Warning);
        assert_eq!(sh("echo bad >&2; exit 2").probe().await.status, HealthStatus::Critical);
        let slow = sh("sleep 5").probe().await;
        assert_eq!(slow.status, HealthStatus::Critical);
        assert!(slow.output.contains("Timed out"));
    }

    #[test]
    fn disabled_by_default() {
        assert!(ExecCheck::new(vec!["true".into()], Duration::from_secs(1), false).is_err());
    }
}
