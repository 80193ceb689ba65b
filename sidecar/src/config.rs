//! Sidecar configuration: a file (YAML or JSON), then `ROSTER_*` environment variables, then flags.
//!
//! Built for Kubernetes: the node name and address come from the downward API (`ROSTER_NODE_NAME`
//! from `metadata.name`, `POD_IP` from `status.podIP`: the address defaults to it), node meta from labels or
//! namespace (`ROSTER_NODE_META=k8s-namespace=shop,k8s-node=worker-1`), and services from the file
//! or from `ROSTER_SERVICES` (JSON, for example copied from a pod annotation). Service definitions use
//! Consul's format in any key case (`name`, `Name`, `check`, `checks`, ...).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use registry::api::AgentServiceRegistration;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Node name in the catalog: the pod name.
    pub node_name: String,
    pub datacenter: String,
    /// The node's address in the catalog (the pod IP); services without their own address use it.
    /// Empty: `POD_IP`, else the address of the interface that reaches the first server.
    pub address: String,
    pub node_meta: BTreeMap<String, String>,
    /// The agent API for the app (Consul's default port).
    pub http_addr: SocketAddr,
    /// Open connections one client IP may hold on the agent API (Consul's
    /// `http_max_conns_per_client`, default 200; 0: no limit); more get 429 and are closed.
    pub http_max_conns_per_client: usize,
    /// Registry servers' HTTP addresses (host:port, DNS names allowed), tried in turn.
    pub servers: Vec<String>,
    /// ACL token for the sidecar's own calls, and for forwarded calls that carry none.
    pub token: Option<String>,
    /// Log in through this ACL auth method at start (a `kubernetes` one: with the pod's
    /// ServiceAccount token) instead of using `token`, and log out at stop.
    pub auth_method: Option<String>,
    /// The bearer token for `auth_method`: the pod's projected ServiceAccount token by default.
    pub bearer_token_file: PathBuf,
    /// LAN gossip listener and the address others dial; None turns gossip off.
    pub gossip_addr: Option<SocketAddr>,
    pub gossip_advertise: Option<SocketAddr>,
    /// Gossip addresses of the servers (their headless Service name:8301).
    pub gossip_seeds: Vec<String>,
    pub gossip_interval_ms: u64,
    pub gossip_phi_threshold: f64,
    /// The pool's gossip encryption key (Consul's `encrypt`: 32 bytes, base64; `roster keygen` makes
    /// one). Every member of a pool needs the same key; None: plaintext gossip.
    pub gossip_key: Option<String>,
    /// Full anti-entropy pass every this many seconds (changes are pushed at once regardless).
    pub sync_interval_secs: u64,
    /// Script checks run commands inside the pod: off unless asked for, as in Consul.
    pub enable_script_checks: bool,
    /// What a token may do while no server can be asked (Consul's `acl.down_policy`:
    /// `extend-cache` default, `async-cache`, `allow`, `deny`; see `registry::acl::token_cache`).
    pub acl_down_policy: String,
    /// How long a token the servers resolved is trusted before they are asked again (Consul's
    /// `acl.token_ttl`, a Go duration).
    pub acl_token_ttl: String,
    /// Service definitions to register at start.
    pub services: Vec<serde_json::Value>,
    pub log_format: String,
    /// The file this came from (`/v1/agent/reload` reads it again).
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// DNS interface for the pod (UDP and TCP), for example 127.0.0.1:8600. None: off.
    pub dns_addr: Option<SocketAddr>,
    /// `dns_addr` is the default one, not asked for: if taken, serve without DNS.
    #[serde(skip)]
    pub dns_addr_optional: bool,
    /// How DNS answers (Consul's `domain` and `dns_config`).
    pub dns: registry::dns::DnsSettings,
    /// TLS to servers listed as `https://host:port`.
    pub tls: TlsSettings,
}

/// The CA that signed the servers' certificates, this sidecar's own (for servers that verify
/// incoming), and whether a server's must name `server.<datacenter>.<domain>`. Re-read on change.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub verify_server_hostname: bool,
}

impl TlsSettings {
    pub fn files(&self) -> Option<registry::tls::TlsFiles> {
        Some(registry::tls::TlsFiles {
            ca_file: self.ca_file.clone()?,
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "roster-pod".into()),
            datacenter: "dc1".into(),
            address: String::new(),
            node_meta: BTreeMap::new(),
            http_addr: ([127, 0, 0, 1], 8500).into(),
            servers: Vec::new(),
            token: None,
            auth_method: None,
            bearer_token_file: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token"),
            gossip_addr: None,
            gossip_advertise: None,
            gossip_seeds: Vec::new(),
            gossip_interval_ms: registry::gossip::DEFAULT_INTERVAL_MS,
            gossip_phi_threshold: registry::gossip::DEFAULT_PHI_THRESHOLD,
            gossip_key: None,
            sync_interval_secs: 60,
            acl_down_policy: "extend-cache".into(),
            http_max_conns_per_client: 200,
            acl_token_ttl: "30s".into(),
            enable_script_checks: false,
            services: Vec::new(),
            log_format: "text".into(),
            config_file: None,
            dns_addr: None,
            dns_addr_optional: false,
            dns: Default::default(),
            tls: TlsSettings::default(),
        }
    }
}

impl Config {
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_yaml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", path.display()))
    }

    /// The service definitions, decoded as Consul decodes them; the error names the bad one.
    pub fn service_definitions(&self) -> Result<Vec<AgentServiceRegistration>, String> {
        self.services
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let bytes = serde_json::to_vec(v).map_err(|e| e.to_string())?;
                registry::api::json::decode(&bytes).map_err(|e| format!("services[{i}]: {e}"))
            })
            .collect()
    }

    /// The resolved-token cache, as configured (validated).
    pub fn token_cache(&self) -> registry::acl::token_cache::TokenCache {
        use registry::acl::token_cache::{DownPolicy, TokenCache};
        let ttl = registry::api::parse_go_duration(&self.acl_token_ttl).unwrap_or(Duration::from_secs(30));
        TokenCache::new(ttl, self.acl_down_policy.parse().unwrap_or(DownPolicy::ExtendCache))
    }

    pub fn sync_interval(&self) -> Duration {
        Duration::from_secs(self.sync_interval_secs.max(1))
    }

    pub fn gossip_interval(&self) -> Duration {
        Duration::from_millis(self.gossip_interval_ms.max(1))
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(key) = &self.gossip_key {
            registry::gossip::GossipKey::parse(key)?;
        }
        if self.node_name.is_empty() {
            return Err("node_name must not be empty".into());
        }
        if self.address.is_empty() {
            return Err("address must not be empty (the pod IP)".into());
        }
        if self.servers.is_empty() {
            return Err("servers must list at least one registry server (host:port)".into());
        }
        if self.servers.iter().any(|s| s.starts_with("https://")) && self.tls.ca_file.is_none() {
            return Err("servers over https:// need tls ca_file (the CA that signed their certificates)".into());
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err("tls cert_file and key_file go together: set both or neither".into());
        }
        if self.gossip_addr.is_some() && self.gossip_seeds.is_empty() {
            return Err("gossip_seeds must list the servers' gossip addresses when gossip is on".into());
        }
        self.acl_down_policy.parse::<registry::acl::token_cache::DownPolicy>()?;
        registry::api::parse_go_duration(&self.acl_token_ttl)
            .map_err(|e| format!("acl_token_ttl {:?}: {e}", self.acl_token_ttl))?;
        self.service_definitions()?;
        Ok(())
    }
}

/// Flags of `roster-sidecar`, each also a `ROSTER_*` environment variable.
#[derive(Debug, Args, Default)]
pub struct SidecarArgs {
    /// Config file (YAML or JSON); flags and environment override it.
    #[arg(long, env = "ROSTER_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "ROSTER_NODE_NAME")]
    pub node_name: Option<String>,
    #[arg(long, env = "ROSTER_DATACENTER")]
    pub datacenter: Option<String>,
    /// The node's address others reach it at [default: $POD_IP, else the address of the interface
    /// that reaches the first server]. `ROSTER_ADVERTISE_ADDR` is still read, for older manifests.
    #[arg(long, env = "ROSTER_ADDRESS")]
    pub address: Option<String>,
    /// key=value pairs, comma-separated in the environment.
    #[arg(long, env = "ROSTER_NODE_META", value_delimiter = ',')]
    pub node_meta: Vec<String>,
    #[arg(long, env = "ROSTER_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Open connections one client IP may hold on the agent API (0: no limit).
    #[arg(long, env = "ROSTER_HTTP_MAX_CONNS_PER_CLIENT")]
    pub http_max_conns_per_client: Option<usize>,
    #[arg(long, env = "ROSTER_SERVERS", value_delimiter = ',')]
    pub servers: Vec<String>,
    #[arg(long, env = "ROSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// ACL auth method to log in through at start (logged out at stop); replaces `--token`.
    #[arg(long, env = "ROSTER_AUTH_METHOD")]
    pub auth_method: Option<String>,
    /// The bearer token file for `--auth-method` [default: the pod's ServiceAccount token].
    #[arg(long, env = "ROSTER_BEARER_TOKEN_FILE")]
    pub bearer_token_file: Option<PathBuf>,
    #[arg(long, env = "ROSTER_GOSSIP_ADDR")]
    pub gossip_addr: Option<SocketAddr>,
    #[arg(long, env = "ROSTER_GOSSIP_ADVERTISE")]
    pub gossip_advertise: Option<SocketAddr>,
    #[arg(long, env = "ROSTER_GOSSIP_SEEDS", value_delimiter = ',')]
    pub gossip_seeds: Vec<String>,
    #[arg(long, env = "ROSTER_GOSSIP_INTERVAL_MS")]
    pub gossip_interval_ms: Option<u64>,
    /// Gossip encryption key; prefer the environment (from a Kubernetes Secret): flags show in `ps`.
    #[arg(long, env = "ROSTER_GOSSIP_KEY", hide_env_values = true)]
    pub gossip_key: Option<String>,
    #[arg(long, env = "ROSTER_SYNC_INTERVAL_SECS")]
    pub sync_interval_secs: Option<u64>,
    #[arg(long, env = "ROSTER_ENABLE_SCRIPT_CHECKS")]
    pub enable_script_checks: Option<bool>,
    /// extend-cache (default), async-cache, allow or deny: tokens while no server answers.
    #[arg(long, env = "ROSTER_ACL_DOWN_POLICY")]
    pub acl_down_policy: Option<String>,
    /// How long a resolved token is trusted (Go duration; default 30s).
    #[arg(long, env = "ROSTER_ACL_TOKEN_TTL")]
    pub acl_token_ttl: Option<String>,
    /// A JSON list of service definitions (Consul's format), added to the file's.
    #[arg(long, env = "ROSTER_SERVICES")]
    pub services: Option<String>,
    #[arg(long, env = "ROSTER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// DNS interface for the pod (UDP and TCP); default the HTTP address's IP on port 8600; "off"
    /// for none.
    #[arg(long, env = "ROSTER_DNS_ADDR")]
    pub dns_addr: Option<String>,
    /// The domain DNS answers (default `consul.`).
    #[arg(long, env = "ROSTER_DOMAIN")]
    pub domain: Option<String>,
    /// Where DNS sends names outside the domain (`ip` or `ip:port`), tried in order; repeatable, or
    /// comma-separated in ROSTER_RECURSOR.
    #[arg(long = "recursor", env = "ROSTER_RECURSOR", value_delimiter = ',')]
    pub recursors: Vec<String>,
    /// The CA that signed the servers' certificates (for servers listed as `https://host:port`).
    #[arg(long, env = "ROSTER_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// This sidecar's certificate (`roster tls cert create --client`), for servers that verify incoming.
    #[arg(long, env = "ROSTER_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long, env = "ROSTER_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Servers' certificates must name `server.<datacenter>.<domain>`.
    #[arg(long, env = "ROSTER_TLS_VERIFY_SERVER_HOSTNAME")]
    pub tls_verify_server_hostname: Option<bool>,
}

impl SidecarArgs {
    pub fn into_config(self) -> Result<Config, String> {
        let mut c = match &self.config {
            Some(p) => Config { config_file: Some(p.clone()), ..Config::from_file(p)? },
            None => Config::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            node_name,
            datacenter,
            address,
            http_addr,
            gossip_interval_ms,
            sync_interval_secs,
            enable_script_checks,
            acl_down_policy,
            acl_token_ttl,
            http_max_conns_per_client,
            log_format
        );
        for pair in &self.node_meta {
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("node meta {pair:?} is not key=value"))?;
            c.node_meta.insert(k.trim().to_string(), v.trim().to_string());
        }
        if !self.servers.is_empty() {
            c.servers = self.servers;
        }
        if self.token.is_some() {
            c.token = self.token;
        }
        if self.auth_method.is_some() {
            c.auth_method = self.auth_method;
        }
        if let Some(f) = self.bearer_token_file {
            c.bearer_token_file = f;
        }
        if self.gossip_key.is_some() {
            c.gossip_key = self.gossip_key;
        }
        if self.gossip_addr.is_some() {
            c.gossip_addr = self.gossip_addr;
        }
        if self.gossip_advertise.is_some() {
            c.gossip_advertise = self.gossip_advertise;
        }
        if !self.gossip_seeds.is_empty() {
            c.gossip_seeds = self.gossip_seeds;
        }
        (c.dns_addr, c.dns_addr_optional) =
            registry::dns::choose_addr(self.dns_addr.as_deref(), c.dns_addr, c.http_addr)?;
        if !self.recursors.is_empty() {
            c.dns.recursors = registry::dns::recursor::parse_recursors(&self.recursors)?;
        }
        if let Some(d) = &self.domain {
            c.dns.domain = d.clone();
        }
        c.dns.domain = registry::dns::normalize_domain(&c.dns.domain)?;
        for (flag, field) in [
            (self.tls_ca_file, &mut c.tls.ca_file),
            (self.tls_cert_file, &mut c.tls.cert_file),
            (self.tls_key_file, &mut c.tls.key_file),
        ] {
            if flag.is_some() {
                *field = flag;
            }
        }
        if let Some(v) = self.tls_verify_server_hostname {
            c.tls.verify_server_hostname = v;
        }
        if let Some(json) = &self.services {
            let list: Vec<serde_json::Value> =
                serde_json::from_str(json).map_err(|e| format!("ROSTER_SERVICES is not a JSON list: {e}"))?;
            c.services.extend(list);
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        // The pod's namespace marks the node as a pod's: the operator removes it once the pod is gone.
        if let Some(ns) = env("POD_NAMESPACE") {
            c.node_meta.entry(registry::api::POD_NAMESPACE_META.to_string()).or_insert(ns);
        }
        if c.address.is_empty() {
            c.address = env("ROSTER_ADVERTISE_ADDR")
                .or_else(|| env("POD_IP"))
                .or_else(|| address_towards(&c.servers))
                .unwrap_or_else(|| "127.0.0.1".into());
        }
        // Gossip bound to every interface is advertised at the node's address.
        if c.gossip_advertise.is_none() {
            if let (Some(bind), Ok(ip)) = (c.gossip_addr, c.address.parse::<std::net::IpAddr>()) {
                if bind.ip().is_unspecified() {
                    c.gossip_advertise = Some(SocketAddr::new(ip, bind.port()));
                }
            }
        }
        c.validate()?;
        Ok(c)
    }
}

/// The local address of the interface that routes to the first server (no packet is sent: a UDP
/// socket is only connected, which picks the route).
fn address_towards(servers: &[String]) -> Option<String> {
    use std::net::ToSocketAddrs;
    let target = servers.first()?.to_socket_addrs().ok()?.next()?;
    let bind: SocketAddr =
        if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SidecarArgs,
    }

    /// A sidecar added by hand registered its node at 127.0.0.1 (unreachable from other pods): the
    /// address now follows the route to the servers when neither a flag nor POD_IP says otherwise.
    #[test]
    fn the_default_address_is_the_one_that_reaches_the_servers() {
        let route = address_towards(&["127.0.0.3:8500".into()]).expect("a route to loopback");
        assert!(route.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()), "{route}");
        let seeds = ["--gossip-seeds", "127.0.0.3:8301"];
        let cli =
            Cli::parse_from(["x", "--servers", "127.0.0.3:8500", "--gossip-addr", "0.0.0.0:8301", seeds[0], seeds[1]]);
        let c = cli.args.into_config().unwrap();
        if std::env::var("POD_IP").is_err() && std::env::var("ROSTER_ADVERTISE_ADDR").is_err() {
            assert_eq!(c.address, route);
            assert_eq!(c.gossip_advertise, Some(format!("{route}:8301").parse().unwrap()));
        }
        let flags = ["--servers", "127.0.0.3:8500", "--address", "10.1.2.3", "--gossip-addr", "0.0.0.0:8301"];
        let cli = Cli::parse_from(["x"].into_iter().chain(flags).chain(seeds));
        let c = cli.args.into_config().unwrap();
        assert_eq!((c.address.as_str(), c.gossip_advertise), ("10.1.2.3", Some("10.1.2.3:8301".parse().unwrap())));
    }

    #[test]
    fn file_env_style_flags_and_consul_service_definitions() {
        let dir = std::env::temp_dir().join(format!("roster-sidecar-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sidecar.yaml");
        std::fs::write(
            &path,
            "servers: [roster-server:8500]\nservices:\n  - name: web\n    port: 8080\n    tags: [v1]\n    check:\n      http: http://127.0.0.1:8080/health\n      interval: 5s\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "x",
            "--config",
            path.to_str().unwrap(),
            "--node-name",
            "web-7d9f",
            "--address",
            "10.1.2.3",
            "--node-meta",
            "k8s-namespace=shop,k8s-node=worker-1",
            "--services",
            r#"[{"Name":"metrics","Port":9100}]"#,
        ]);
        let c = cli.args.into_config().unwrap();
        assert_eq!(c.node_name, "web-7d9f");
        assert_eq!(c.node_meta["k8s-namespace"], "shop");
        let defs = c.service_definitions().unwrap();
        assert_eq!(defs[0].name, "web");
        assert_eq!(defs[0].check.as_ref().unwrap().http.as_deref(), Some("http://127.0.0.1:8080/health"));
        assert_eq!(defs[1].name, "metrics");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let cli = Cli::parse_from(["x", "--address", "10.0.0.1"]);
        assert!(cli.args.into_config().unwrap_err().contains("servers"));
        let cli = Cli::parse_from(["x", "--servers", "s:8500", "--services", r#"[{"Name":"web","Port":"eighty"}]"#]);
        let err = cli.args.into_config().unwrap_err();
        assert!(err.contains("services[0]"), "{err}");
        let cli = Cli::parse_from(["x", "--servers", "s:8500", "--node-meta", "novalue"]);
        assert!(cli.args.into_config().unwrap_err().contains("key=value"));
    }
}
