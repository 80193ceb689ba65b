//! `roster`: the registry server. `roster dev` starts a single in-memory server on 127.0.0.1:8500.

use clap::{Parser, Subcommand};
use registry::config::{Config, ServerArgs};

#[derive(Parser)]
#[command(name = "roster", version, about = "Roster registry server: Consul's HTTP API on Raft")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A single server with everything in memory, API on 127.0.0.1:8500 (like `consul agent -dev`).
    Dev {
        /// HTTP API address.
        #[arg(long, default_value = "127.0.0.1:8500")]
        http_addr: std::net::SocketAddr,
        /// Server RPC address.
        #[arg(long, default_value = "127.0.0.1:8300")]
        rpc_addr: std::net::SocketAddr,
    },
    /// A server of a cluster, configured by file, environment and flags.
    Server(Box<ServerArgs>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match cli.command {
        Cmd::Dev { http_addr, rpc_addr } => Config { http_addr, rpc_addr, ..Config::dev() },
        Cmd::Server(args) => match (*args).into_config() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("roster: {e}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    registry::telemetry::init(&config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("roster: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(registry::server::run(config, registry::telemetry::shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roster: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
