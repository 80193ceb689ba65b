//! `roster-operator`: the Kubernetes operator. `run` reconciles RegistryClusters,
//! ServiceRegistrations, KeyValues and AclPolicies against the cluster of the kubeconfig (or
//! in-cluster), optionally behind a Lease; `crd` prints the CRDs (the single source of `crds/`);
//! `check` validates RegistryCluster manifests offline.

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
    Run(Box<RunSettings>),
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
        Cmd::Run(settings) => {
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
            match runtime.block_on(run(*settings)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("roster-operator: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
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

#[derive(clap::Args)]
struct RunSettings {
    /// Registry HTTP address for ServiceRegistrations and KeyValues (host:port), for example through a
    /// port-forward when running outside the cluster; default: each cluster's client Service.
    #[arg(long, env = "ROSTER_REGISTRY_ADDR")]
    registry_addr: Option<String>,
    /// ACL token for the registry (needs `acl = "write"` for AclPolicies); from a Secret in the chart.
    #[arg(long, env = "ROSTER_REGISTRY_TOKEN", hide_env_values = true)]
    registry_token: Option<String>,
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, env = "ROSTER_OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Reconcile only while holding a Lease, so several replicas can run (one active, the others
    /// waiting to take over).
    #[arg(long, env = "ROSTER_OPERATOR_LEADER_ELECTION")]
    leader_election: bool,
    /// Namespace of the Lease (default: the pod's namespace from POD_NAMESPACE, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Secret holding the token reviewer's ServiceAccount token (`name`, in the operator's
    /// namespace, or `namespace/name`), for RegistryClusters with `spec.acl.kubernetesAuth`.
    #[arg(long, env = "ROSTER_TOKEN_REVIEWER_SECRET")]
    token_reviewer_secret: Option<String>,
    /// Serve the sidecar injection webhook (HTTPS) here, for example 0.0.0.0:9443; unset: none.
    #[arg(long, env = "ROSTER_WEBHOOK_ADDR")]
    webhook_addr: Option<std::net::SocketAddr>,
    /// The webhook's Service in the operator's namespace (the names its certificate carries).
    #[arg(long, env = "ROSTER_WEBHOOK_SERVICE", default_value = "roster-webhook")]
    webhook_service: String,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps.
    #[arg(long, env = "ROSTER_WEBHOOK_CONFIG", default_value = "roster-sidecar-injector")]
    webhook_config: String,
    /// The Secret (operator's namespace) keeping the webhook's CA and serving certificate.
    #[arg(long, env = "ROSTER_WEBHOOK_CERT_SECRET", default_value = "roster-webhook-cert")]
    webhook_cert_secret: String,
    /// The image of injected sidecars.
    #[arg(long, env = "ROSTER_SIDECAR_IMAGE", default_value = "ghcr.io/roster-dev/roster-sidecar:latest")]
    sidecar_image: String,
    /// The ConfigMap (operator's namespace) whose settings injected sidecars get (the chart's
    /// `<release>-sidecar`).
    #[arg(long, env = "ROSTER_SIDECAR_CONFIG_MAP", default_value = "roster-sidecar")]
    sidecar_config_map: String,
    /// A Secret (key `key`, operator's namespace) with the gossip key for injected sidecars; copied
    /// into each namespace where a sidecar is injected.
    #[arg(long, env = "ROSTER_SIDECAR_GOSSIP_KEY_SECRET")]
    sidecar_gossip_key_secret: Option<String>,
    /// A `kubernetes.io/tls` Secret (operator's namespace; the RegistryCluster's
    /// `<cluster>-client-tls` with spec.tls) whose client certificate and CA injected sidecars
    /// mount to reach their servers over HTTPS; copied into each namespace where a sidecar is
    /// injected, and kept current there when renewed.
    #[arg(long, env = "ROSTER_SIDECAR_TLS_SECRET")]
    sidecar_tls_secret: Option<String>,
    /// Give injected sidecars a projected ServiceAccount token to log in with (Kubernetes auth).
    #[arg(long, env = "ROSTER_SIDECAR_LOGIN")]
    sidecar_login: bool,
    /// Inject native sidecars (init containers with restartPolicy Always): auto (Kubernetes 1.29+),
    /// true or false.
    #[arg(long, env = "ROSTER_NATIVE_SIDECARS", default_value = "auto")]
    native_sidecars: String,
}

fn webhook_settings(s: &RunSettings) -> Option<roster_operator::inject::WebhookSettings> {
    use roster_operator::inject::{InjectSettings, WebhookSettings};
    Some(WebhookSettings {
        addr: s.webhook_addr?,
        namespace: s.lease_namespace.clone().unwrap_or_else(|| "default".into()),
        service: s.webhook_service.clone(),
        webhook_config: s.webhook_config.clone(),
        cert_secret: s.webhook_cert_secret.clone(),
        config_map: s.sidecar_config_map.clone(),
        native_sidecars: s.native_sidecars.clone(),
        inject: InjectSettings {
            image: s.sidecar_image.clone(),
            env: Default::default(),
            gossip_key_secret: s.sidecar_gossip_key_secret.clone().filter(|n| !n.is_empty()),
            tls_secret: s.sidecar_tls_secret.clone().filter(|n| !n.is_empty()),
            login_token: s.sidecar_login,
            native_sidecars: false,
        },
    })
}

/// The token reviewer's Secret as (namespace, name): a bare name lives in the operator's namespace.
fn token_reviewer_secret(s: &RunSettings) -> Option<(String, String)> {
    let secret = s.token_reviewer_secret.clone().filter(|s| !s.is_empty())?;
    Some(match secret.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (s.lease_namespace.clone().unwrap_or_else(|| "default".into()), secret),
    })
}

/// Runs every controller (after winning the Lease, with leader election) until a signal, or until
/// the Lease is lost: then the process exits, and Kubernetes restarts it as a candidate.
async fn run(s: RunSettings) -> Result<(), String> {
    use roster_operator::telemetry::{self, Metrics};
    let metrics = Metrics::new();
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("no Kubernetes API to talk to (in-cluster or kubeconfig): {e}"))?;
    let listener = telemetry::serve(s.metrics_addr, metrics.clone());
    let server = tokio::spawn(async move {
        if let Err(e) = listener.await {
            tracing::error!(error = %e, "cannot serve metrics and health");
        }
    });
    // Every replica serves the webhook: the API server may call any of them.
    let webhook = match webhook_settings(&s) {
        Some(w) => Some(roster_operator::inject::start(client.clone(), w).await?),
        None => None,
    };
    metrics.set_ready();
    let mut lease = None;
    if s.leader_election {
        let identity = std::env::var("POD_NAME")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("roster-operator-{}", std::process::id()));
        let namespace = s.lease_namespace.clone().unwrap_or_else(|| "default".into());
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "roster-operator")
            .with_namespace(&namespace)
            .with_identity(&identity)
            .with_duration(15)
            .with_grace(5)
            .build()
            .await
            .map_err(|e| format!("leader election: {e}"))?;
        let (mut leading, task) = manager.watch().await;
        tracing::info!(%identity, %namespace, "waiting for the roster-operator Lease");
        while !*leading.borrow_and_update() {
            leading.changed().await.map_err(|_| "leader election stopped".to_string())?;
        }
        tracing::info!(%identity, "holding the Lease: reconciling");
        lease = Some((leading, task));
    }
    metrics.set_leader(true);
    let controllers = async {
        use roster_operator::{acl_policy, catalog_sync, key_value, pod_gc, registry_cluster, service_registration};
        let (addr, token) = (s.registry_addr.clone(), s.registry_token.clone());
        // One context for the controllers of registry-side resources (client, registry, Events).
        let shared = std::sync::Arc::new(roster_operator::registry_api::Context::new(
            client.clone(),
            addr.clone(),
            token.clone(),
        ));
        tokio::join!(
            registry_cluster::controller::run(client.clone(), addr, token, token_reviewer_secret(&s), metrics.clone()),
            service_registration::controller::run(shared.clone(), metrics.clone()),
            key_value::controller::run(shared.clone(), metrics.clone()),
            acl_policy::controller::run(shared.clone(), metrics.clone()),
            pod_gc::controller::run(shared.clone()),
            catalog_sync::controller::run(shared),
        );
    };
    let result = match lease {
        None => {
            controllers.await;
            Ok(())
        }
        Some((mut leading, task)) => {
            let lost = async {
                while *leading.borrow_and_update() {
                    if leading.changed().await.is_err() {
                        break;
                    }
                }
            };
            tokio::select! {
                _ = controllers => {
                    // Shut down on a signal: let the Lease go so another replica takes over at once.
                    drop(leading);
                    if let Ok(Ok(manager)) = task.await {
                        let _ = manager.release().await;
                    }
                    Ok(())
                }
                _ = lost => Err("lost the roster-operator Lease; exiting so a new candidate starts".to_string()),
            }
        }
    };
    metrics.set_leader(false);
    server.abort();
    if let Some(w) = webhook {
        w.abort();
    }
    result
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
