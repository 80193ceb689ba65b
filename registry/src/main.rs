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
    Dev(Box<DevArgs>),
    /// A server of a cluster, configured by file, environment and flags.
    Server(Box<ServerArgs>),
    /// Print a new gossip encryption key (base64 of 32 random bytes, like `consul keygen`).
    Keygen,
    /// Create a CA and agents' certificates for TLS (like `consul tls`).
    #[command(subcommand)]
    Tls(TlsCmd),
}

#[derive(Subcommand)]
enum TlsCmd {
    /// The certificate authority.
    #[command(subcommand)]
    Ca(TlsCaCmd),
    /// Agents' certificates.
    #[command(subcommand)]
    Cert(TlsCertCmd),
}

#[derive(Subcommand)]
enum TlsCaCmd {
    /// Create a CA: `<domain>-agent-ca.pem` and `<domain>-agent-ca-key.pem` in the current directory.
    Create {
        #[arg(long, default_value = "consul")]
        domain: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 1825)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum TlsCertCmd {
    /// Create a certificate signed by the CA: `<dc>-<server|client|cli>-<domain>-<n>.pem` and its key.
    Create(Box<CertArgs>),
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("role").required(true).args(["server", "client", "cli"])))]
struct CertArgs {
    /// For a server: named `server.<dc>.<domain>`.
    #[arg(long)]
    server: bool,
    /// For a sidecar: named `client.<dc>.<domain>`.
    #[arg(long)]
    client: bool,
    /// For a tool or person calling the HTTPS API: named `cli.client.<dc>.<domain>`.
    #[arg(long)]
    cli: bool,
    #[arg(long, default_value = "dc1")]
    dc: String,
    #[arg(long, default_value = "consul")]
    domain: String,
    /// The CA's certificate (default `<domain>-agent-ca.pem`).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// The CA's key (default `<domain>-agent-ca-key.pem`).
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Another DNS name the certificate is valid for (a Service name, a pod's); repeatable.
    #[arg(long = "additional-dnsname")]
    dns_names: Vec<String>,
    /// Another IP address the certificate is valid for; repeatable.
    #[arg(long = "additional-ipaddress")]
    ip_addresses: Vec<std::net::IpAddr>,
}

/// `roster tls ...`: writes the files into the current directory and says which.
fn tls_command(cmd: TlsCmd) -> Result<(), String> {
    use registry::tls::issue;
    let here = std::path::Path::new(".");
    match cmd {
        TlsCmd::Ca(TlsCaCmd::Create { domain, days }) => {
            let (cert, key) = issue::ca_file_names(&domain);
            let ca = issue::create_ca(&domain, days)?;
            issue::save(&ca, &here.join(&cert), &here.join(&key))?;
            println!("==> Saved {cert}\n==> Saved {key}");
        }
        TlsCmd::Cert(TlsCertCmd::Create(args)) => {
            let role = match (args.server, args.client) {
                (true, _) => issue::Role::Server,
                (_, true) => issue::Role::Client,
                _ => issue::Role::Cli,
            };
            let (default_ca, default_key) = issue::ca_file_names(&args.domain);
            let ca_file = args.ca.unwrap_or_else(|| default_ca.into());
            let key_file = args.key.unwrap_or_else(|| default_key.into());
            let read = |p: &std::path::Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
            let leaf = issue::Leaf {
                role,
                datacenter: args.dc,
                domain: args.domain,
                dns_names: args.dns_names,
                ip_addresses: args.ip_addresses,
                days: args.days,
            };
            let issued = issue::create_cert(&read(&ca_file)?, &read(&key_file)?, &leaf)?;
            let (cert, key) = issue::leaf_file_names(here, &leaf);
            issue::save(&issued, &cert, &key)?;
            println!("==> Using {} and {}", ca_file.display(), key_file.display());
            println!("==> Saved {}\n==> Saved {}", cert.display(), key.display());
        }
    }
    Ok(())
}

#[derive(clap::Args)]
struct DevArgs {
    /// HTTP API address.
    #[arg(long, default_value = "127.0.0.1:8500")]
    http_addr: std::net::SocketAddr,
    /// Server RPC address.
    #[arg(long, default_value = "127.0.0.1:8300")]
    rpc_addr: std::net::SocketAddr,
    /// LAN gossip address sidecars join ("off" for none).
    #[arg(long, default_value = "127.0.0.1:8301")]
    gossip_addr: String,
    /// This server's datacenter.
    #[arg(long, default_value = "dc1")]
    datacenter: String,
    /// WAN gossip address, to join other datacenters' servers ("off", the default, for none).
    #[arg(long, default_value = "off")]
    wan_addr: String,
    /// WAN addresses of other datacenters' servers; repeatable or comma-separated.
    #[arg(long, value_delimiter = ',')]
    retry_join_wan: Vec<String>,
    /// Enforce ACLs (off by default, as in `consul agent -dev`).
    #[arg(long)]
    acl_enabled: bool,
    /// "allow" or "deny" where no rule applies.
    #[arg(long, default_value = "allow")]
    acl_default_policy: String,
    /// Secret of a management token to create at start.
    #[arg(long, env = "ROSTER_ACL_INITIAL_MANAGEMENT", hide_env_values = true)]
    acl_initial_management: Option<String>,
    /// The datacenter that owns ACL policies, roles and global tokens (default: this one).
    #[arg(long, env = "ROSTER_PRIMARY_DATACENTER")]
    primary_datacenter: Option<String>,
    /// Token this (secondary) datacenter's leader replicates the primary's ACLs with.
    #[arg(long, env = "ROSTER_ACL_REPLICATION_TOKEN", hide_env_values = true)]
    acl_replication_token: Option<String>,
    /// extend-cache, async-cache, allow or deny: tokens while the primary is unreachable.
    #[arg(long, default_value = "extend-cache")]
    acl_down_policy: String,
    /// How long a token resolved by asking the primary is trusted (Go duration).
    #[arg(long, default_value = "30s")]
    acl_token_ttl: String,
    /// Gossip encryption key (`roster keygen`); sidecars joining need the same.
    #[arg(long, env = "ROSTER_GOSSIP_KEY", hide_env_values = true)]
    gossip_key: Option<String>,
    /// DNS interface address (UDP and TCP); default the HTTP address's IP on port 8600 (skipped
    /// with a warning if another server holds it); "off" for none.
    #[arg(long)]
    dns_addr: Option<String>,
    /// The domain DNS answers.
    #[arg(long, default_value = "consul.")]
    domain: String,
    /// Where DNS sends names outside the domain (`ip` or `ip:port`), tried in order; repeatable.
    #[arg(long = "recursor", value_delimiter = ',')]
    recursors: Vec<String>,
}

/// A listener address, or "off" for none.
fn address_or_off(flag: &str, value: &str) -> Result<Option<std::net::SocketAddr>, String> {
    match value {
        "off" => Ok(None),
        a => a.parse().map(Some).map_err(|e| format!("{flag} {a:?}: {e}")),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match cli.command {
        Cmd::Dev(dev) => {
            let DevArgs {
                http_addr,
                rpc_addr,
                gossip_addr,
                acl_enabled,
                acl_default_policy,
                acl_initial_management,
                primary_datacenter,
                acl_replication_token,
                acl_down_policy,
                acl_token_ttl,
                gossip_key,
                dns_addr,
                domain,
                recursors,
                datacenter,
                wan_addr,
                retry_join_wan,
            } = *dev;
            let dns = registry::dns::choose_addr(dns_addr.as_deref(), None, http_addr).and_then(|a| {
                Ok((
                    a,
                    registry::config::normalize_domain(&domain)?,
                    registry::dns::recursor::parse_recursors(&recursors)?,
                ))
            });
            let ((dns_addr, dns_addr_optional), domain, recursors) = match dns {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("roster: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            let (gossip_addr, wan_addr) =
                match (address_or_off("--gossip-addr", &gossip_addr), address_or_off("--wan-addr", &wan_addr)) {
                    (Ok(g), Ok(w)) => (g, w),
                    (Err(e), _) | (_, Err(e)) => {
                        eprintln!("roster: {e}");
                        return std::process::ExitCode::from(2);
                    }
                };
            let c = Config {
                datacenter,
                wan_addr,
                retry_join_wan,
                gossip_addr,
                http_addr,
                rpc_addr,
                acl_enabled,
                acl_default_policy,
                acl_initial_management,
                primary_datacenter,
                acl_replication_token,
                acl_down_policy,
                acl_token_ttl,
                gossip_key,
                dns_addr,
                dns_addr_optional,
                dns: registry::dns::DnsSettings { domain, recursors, ..Default::default() },
                ..Config::dev()
            };
            if let Err(e) = c.validate() {
                eprintln!("roster: {e}");
                return std::process::ExitCode::from(2);
            }
            c
        }
        Cmd::Keygen => {
            println!("{}", registry::gossip::GossipKey::generate());
            return std::process::ExitCode::SUCCESS;
        }
        Cmd::Tls(cmd) => {
            registry::client::ensure_crypto_provider();
            return match tls_command(cmd) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("roster: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
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
