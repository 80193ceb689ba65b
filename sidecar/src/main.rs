//! `roster-sidecar`: runs next to the app in its pod. Configured by file, `ROSTER_*` environment
//! (the downward API fills node name and pod IP) and flags; stops cleanly on SIGTERM or Ctrl-C.

use clap::Parser;
use roster_sidecar::{Sidecar, SidecarArgs};

#[derive(Parser)]
#[command(
    name = "roster-sidecar",
    version,
    about = "Roster sidecar: gossip, registration, health checks, Consul's agent API on localhost"
)]
struct Cli {
    #[command(flatten)]
    args: SidecarArgs,
}

fn main() -> std::process::ExitCode {
    let config = match Cli::parse().args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("roster-sidecar: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(&config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("roster-sidecar: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let sidecar = match Sidecar::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("roster-sidecar: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let leave = sidecar.leave.clone();
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = leave.notified() => tracing::info!("leaving, as asked through /v1/agent/leave"),
        }
        sidecar.stop().await;
        std::process::ExitCode::SUCCESS
    })
}

fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // Every line also goes to /v1/agent/monitor's listeners, if any.
    let monitor = registry::agent::monitor::layer();
    if format == "json" {
        builder.json().finish().with(monitor).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).finish().with(monitor).init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
