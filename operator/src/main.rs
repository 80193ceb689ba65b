//! `roster-operator`: the Kubernetes operator (issue 5, in progress). `run` reconciles
//! RegistryClusters against the cluster of the kubeconfig (or in-cluster); `crd` prints the CRDs
//! (the single source of `crds/`).

use clap::{Parser, Subcommand};
use roster_operator::crd;

#[derive(Parser)]
#[command(name = "roster-operator", version, about = "Roster's Kubernetes operator")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Reconcile RegistryClusters (in-cluster, or against the current kubeconfig context).
    Run,
    /// Print every CRD as YAML (documents separated by ---), or write one file per CRD into a directory.
    Crd {
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Cmd::Run => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            registry::client::ensure_crypto_provider();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("roster-operator: cannot start the runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            runtime.block_on(async {
                match kube::Client::try_default().await {
                    Ok(client) => {
                        roster_operator::controller::run(client).await;
                        std::process::ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("roster-operator: no Kubernetes API to talk to (in-cluster or kubeconfig): {e}");
                        std::process::ExitCode::FAILURE
                    }
                }
            })
        }
        Cmd::Crd { out_dir } => {
            for (file, crd) in crd::all() {
                let yaml = match crd::to_yaml(&crd) {
                    Ok(y) => y,
                    Err(e) => {
                        eprintln!("roster-operator: {file}: {e}");
                        return std::process::ExitCode::FAILURE;
                    }
                };
                match &out_dir {
                    Some(dir) => {
                        if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(dir.join(&file), yaml))
                        {
                            eprintln!("roster-operator: writing {}: {e}", dir.join(&file).display());
                            return std::process::ExitCode::FAILURE;
                        }
                    }
                    None => print!("---\n{yaml}"),
                }
            }
            std::process::ExitCode::SUCCESS
        }
    }
}
