//! `roster-operator`: the Kubernetes operator (issue 5, in progress). So far: the custom resource
//! types and `roster-operator crd`, which prints their CRDs (the single source of `crds/`).

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
    /// Print every CRD as YAML (documents separated by ---), or write one file per CRD into a directory.
    Crd {
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
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
