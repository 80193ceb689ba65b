//! Structured logs and the process's shutdown signal.

use tracing_subscriber::EnvFilter;

/// Logs as text or JSON lines; the level comes from `RUST_LOG` (default `info`; hickory's server
/// only from `warn`: at `info` it logs two lines per DNS question, about a tenth of what an answer costs).
pub fn init(format: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,hickory_server=warn"));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // Every line also goes to /v1/agent/monitor's listeners, if any.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let monitor = crate::agent::monitor::layer();
    let _ = if format == "json" {
        builder.json().finish().with(monitor).try_init()
    } else {
        builder.finish().with(monitor).try_init()
    };
}

/// Resolves on SIGINT or SIGTERM (Kubernetes stops pods with SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub use crate::listener::once_a_minute;
