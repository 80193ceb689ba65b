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
    /// Reconcile RegistryClusters, ServiceRegistrations, KeyValues and AclPolicies (in-cluster, or against the
    /// current kubeconfig context).
    Run {
        /// Registry HTTP address for ServiceRegistrations and KeyValues (host:port), for example through a
        /// port-forward when running outside the cluster; default: each cluster's client Service.
        #[arg(long, env = "ROSTER_REGISTRY_ADDR")]
        registry_addr: Option<String>,
        /// ACL token for the registry (needs `acl = "write"` for AclPolicies); from a Secret in the chart.
        #[arg(long, env = "ROSTER_REGISTRY_TOKEN", hide_env_values = true)]
        registry_token: Option<String>,
    },
    /// Check RegistryCluster manifests (YAML, several documents allowed) as the operator would.
    Check { files: Vec<std::path::PathBuf> },
    /// Print every CRD as YAML (documents separated by ---), or write one file per CRD into a directory.
    Crd {
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Cmd::Run { registry_addr, registry_token } => {
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
                        tokio::join!(
                            roster_operator::registry_cluster::controller::run(client.clone()),
                            roster_operator::service_registration::controller::run(
                                client.clone(),
                                registry_addr.clone(),
                                registry_token.clone()
                            ),
                            roster_operator::key_value::controller::run(
                                client.clone(),
                                registry_addr.clone(),
                                registry_token.clone()
                            ),
                            roster_operator::acl_policy::controller::run(client, registry_addr, registry_token),
                        );
                        std::process::ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("roster-operator: no Kubernetes API to talk to (in-cluster or kubeconfig): {e}");
                        std::process::ExitCode::FAILURE
                    }
                }
            })
        }
        Cmd::Check { files } => {
            let mut failed = false;
            for file in &files {
                match check_file(file) {
                    Ok(n) => println!("{}: {n} RegistryCluster(s) valid", file.display()),
                    Err(errors) => {
                        failed = true;
                        for e in errors {
                            eprintln!("{}: {e}", file.display());
                        }
                    }
                }
            }
            if failed {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            }
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

/// Every RegistryCluster document in a file, validated; the errors name the document and field.
fn check_file(path: &std::path::Path) -> Result<usize, Vec<String>> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read: {e}")])?;
    let mut count = 0;
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("document {}: not YAML: {e}", i + 1));
                continue;
            }
        };
        if value.get("kind").and_then(|k| k.as_str()) != Some("RegistryCluster") {
            continue;
        }
        count += 1;
        match serde_yaml::from_value::<crd::RegistryCluster>(value) {
            Ok(rc) => {
                if let Err(es) =
                    roster_operator::registry_cluster::validate(&rc, roster_operator::registry_cluster::DEFAULT_IMAGE)
                {
                    errors.extend(es.into_iter().map(|e| format!("document {}: {e}", i + 1)));
                }
            }
            Err(e) => errors.push(format!("document {}: {e}", i + 1)),
        }
    }
    if errors.is_empty() {
        Ok(count)
    } else {
        Err(errors)
    }
}
