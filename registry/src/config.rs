//! Configuration: a file (YAML or JSON), then environment variables, then flags; later ones win.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

/// Everything a server needs to start. Built by [`ServerArgs::into_config`] or [`Config::dev`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The file this configuration was read from, if any: `/v1/agent/reload` reads it again.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Node name; unique in the datacenter (the pod name in Kubernetes).
    pub node_name: String,
    pub datacenter: String,
    /// Where the log, vote, node ID and snapshots live. None keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// Consul's HTTP API.
    pub http_addr: SocketAddr,
    /// Server RPC (Raft) listener.
    pub rpc_addr: SocketAddr,
    /// Address other servers use to reach this one's RPC port (defaults to rpc_addr).
    pub advertise_rpc: Option<String>,
    /// Address other servers forward HTTP requests to (defaults to http_addr).
    pub advertise_http: Option<String>,
    /// Number of servers to wait for before bootstrapping a new cluster (Consul's `bootstrap_expect`).
    pub bootstrap_expect: usize,
    /// RPC addresses (host:port, DNS names allowed) of other servers to join (Consul's `retry_join`).
    pub retry_join: Vec<String>,
    /// Largest KV value accepted, in bytes (Consul's `kv_max_value_size`).
    pub kv_max_value_size: usize,
    /// Raft timings in milliseconds.
    pub raft_heartbeat_ms: u64,
    pub raft_election_timeout_ms: u64,
    /// Take a snapshot and compact the log after this many entries.
    pub snapshot_threshold: u64,
    /// Log format: "text" or "json".
    pub log_format: String,
    /// ACL enforcement on or off (Consul's `acl.enabled`).
    pub acl_enabled: bool,
    /// "allow" or "deny": what a token may do where no rule says (Consul's `acl.default_policy`).
    pub acl_default_policy: String,
    /// A management token's secret to create at start (Consul's `acl.tokens.initial_management`).
    pub acl_initial_management: Option<String>,
    /// The datacenter that owns ACL policies, roles and global tokens (Consul's
    /// `primary_datacenter`). None: this one.
    pub primary_datacenter: Option<String>,
    /// The token a secondary's leader reads the primary's ACLs with (Consul's
    /// `acl.tokens.replication`; needs `acl = "write"` to see token secrets). None: no replication.
    pub acl_replication_token: Option<String>,
    /// What a secondary does about a token it must ask the primary for while the primary is
    /// unreachable (Consul's `acl.down_policy`: `extend-cache` default, `async-cache`, `allow`,
    /// `deny`; see `acl::token_cache`). Replicated tokens resolve from the copy and need no asking.
    pub acl_down_policy: String,
    /// How long a token resolved by asking the primary is trusted (Consul's `acl.token_ttl`, a Go
    /// duration such as "30s").
    pub acl_token_ttl: String,
    /// LAN gossip listener (UDP; Consul's serf_lan port is 8301). None: no gossip, so sidecars'
    /// health is not tracked by failure detection.
    pub gossip_addr: Option<SocketAddr>,
    /// Gossip address other members dial (the pod IP when listening on 0.0.0.0).
    pub gossip_advertise: Option<SocketAddr>,
    /// Gossip addresses (host:port, DNS names allowed) of other members, usually the other servers.
    pub gossip_seeds: Vec<String>,
    /// Gossip round interval and failure-detector sensitivity (see docs/benchmarks.md for the trade-off).
    pub gossip_interval_ms: u64,
    pub gossip_phi_threshold: f64,
    /// The pool's gossip encryption key (Consul's `encrypt`: 32 bytes, base64; `roster keygen` makes
    /// one). Every member of a pool needs the same key; None: plaintext gossip.
    pub gossip_key: Option<String>,
    /// WAN gossip listener (UDP; Consul's serf_wan port is 8302): the pool of every datacenter's
    /// servers. None: this datacenter alone.
    pub wan_addr: Option<SocketAddr>,
    /// WAN address other datacenters' servers dial (when listening on 0.0.0.0).
    pub wan_advertise: Option<SocketAddr>,
    /// WAN addresses (host:port, DNS names allowed) of servers of other datacenters (Consul's
    /// `retry_join_wan`).
    pub retry_join_wan: Vec<String>,
    /// A member failed this long is removed from the catalog (Consul's `reconnect_timeout`, 72 h).
    pub reap_after_secs: u64,
    /// Lets the agent API register script (`Args`) checks, which run commands on this server
    /// (Consul's `enable_script_checks`; off by default, as there).
    pub enable_script_checks: bool,
    /// Consul's DNS interface (UDP and TCP; Consul's port is 8600). None: off.
    pub dns_addr: Option<SocketAddr>,
    /// `dns_addr` is the default one, not asked for: if taken, serve without DNS.
    #[serde(skip)]
    pub dns_addr_optional: bool,
    /// Open HTTP connections one client IP may hold (Consul's `limits.http_max_conns_per_client`,
    /// 200); 0: no limit.
    pub http_max_conns_per_client: usize,
    /// How long a client has to send a request's headers (against slowloris), in ms.
    pub http_read_header_timeout_ms: u64,
    /// Blocking queries this server holds open at once; more get 429 (each holds a connection and
    /// a watch). 0: no limit.
    pub http_max_blocking_queries: usize,
    /// How DNS answers (Consul's `domain` and `dns_config`).
    pub dns: crate::dns::DnsSettings,
    /// The HTTPS API listener (Consul's port 8501). None: no HTTPS.
    pub https_addr: Option<SocketAddr>,
    /// Address other servers forward HTTPS requests to (defaults to https_addr).
    pub advertise_https: Option<String>,
    /// Serve plain HTTP on `http_addr` (Consul's `ports.http = -1` turns it off; HTTPS must be on).
    pub http_enabled: bool,
    /// Certificates and Consul's verify switches (HTTPS API, and TLS between servers).
    pub tls: TlsSettings,
}

/// Consul's `tls.defaults` (files re-read when they change) and its three verify switches.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Clients of the HTTPS API and servers dialling the RPC port must present a certificate of the
    /// CA; the RPC port then refuses plain connections.
    pub verify_incoming: bool,
    /// Dial other servers' RPC ports over TLS, checking their certificate against the CA.
    pub verify_outgoing: bool,
    /// Servers' certificates must name `server.<datacenter>.<domain>` (implies verify_outgoing).
    pub verify_server_hostname: bool,
}

impl TlsSettings {
    pub fn files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            ca_file: self.ca_file.clone()?,
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        })
    }

    fn validate(&self, https: bool) -> Result<(), String> {
        let any = self.verify_incoming || self.verify_outgoing || self.verify_server_hostname || https;
        if any && self.ca_file.is_none() {
            return Err("TLS (https_addr or a tls verify_* switch) needs tls ca_file".into());
        }
        if (https || self.verify_incoming) && (self.cert_file.is_none() || self.key_file.is_none()) {
            return Err("serving TLS (https_addr, tls verify_incoming) needs tls cert_file and key_file".into());
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("tls cert_file and key_file go together: set both or neither".into());
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            config_file: None,
            node_name: default_node_name(),
            datacenter: "dc1".into(),
            data_dir: None,
            http_addr: ([127, 0, 0, 1], 8500).into(),
            rpc_addr: ([127, 0, 0, 1], 8300).into(),
            advertise_rpc: None,
            advertise_http: None,
            bootstrap_expect: 1,
            retry_join: Vec::new(),
            kv_max_value_size: 512 * 1024,
            raft_heartbeat_ms: 100,
            raft_election_timeout_ms: 1000,
            // Entries, and an entry is a batch of writes under load: keep the log (mirrored in memory) short.
            snapshot_threshold: 2_048,
            log_format: "text".into(),
            acl_enabled: false,
            acl_default_policy: "allow".into(),
            acl_initial_management: None,
            primary_datacenter: None,
            acl_replication_token: None,
            acl_down_policy: "extend-cache".into(),
            acl_token_ttl: "30s".into(),
            gossip_addr: None,
            gossip_advertise: None,
            gossip_seeds: Vec::new(),
            gossip_interval_ms: crate::gossip::DEFAULT_INTERVAL_MS,
            gossip_phi_threshold: crate::gossip::DEFAULT_PHI_THRESHOLD,
            gossip_key: None,
            wan_addr: None,
            wan_advertise: None,
            retry_join_wan: Vec::new(),
            reap_after_secs: 72 * 3600,
            enable_script_checks: false,
            dns_addr: None,
            dns_addr_optional: false,
            http_max_conns_per_client: 200,
            http_read_header_timeout_ms: 30_000,
            http_max_blocking_queries: 32_768,
            dns: Default::default(),
            https_addr: None,
            advertise_https: None,
            http_enabled: true,
            tls: TlsSettings::default(),
        }
    }
}

fn default_node_name() -> String {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "roster-dev".into())
}

impl Config {
    /// `roster dev`: one server, in memory, API on 127.0.0.1:8500, gossip on 127.0.0.1:8301.
    pub fn dev() -> Self {
        Config { gossip_addr: Some(([127, 0, 0, 1], 8301).into()), ..Config::default() }
    }

    /// Upper bound of the randomized election timeout (and openraft's leader lease).
    pub fn election_timeout_max_ms(&self) -> u64 {
        self.raft_election_timeout_ms * 3 / 2
    }

    pub fn acl_default_allow(&self) -> bool {
        self.acl_default_policy == "allow"
    }

    /// The datacenter that owns ACL policies, roles and global tokens.
    pub fn primary_datacenter(&self) -> &str {
        self.primary_datacenter.as_deref().filter(|p| !p.is_empty()).unwrap_or(&self.datacenter)
    }

    /// `acl_token_ttl` (validated).
    pub fn acl_token_ttl(&self) -> std::time::Duration {
        crate::api::parse_go_duration(&self.acl_token_ttl).unwrap_or(std::time::Duration::from_secs(30))
    }

    /// What to do about tokens while the primary (or, for a sidecar, every server) is unreachable.
    pub fn acl_down_policy(&self) -> crate::acl::token_cache::DownPolicy {
        self.acl_down_policy.parse().unwrap_or(crate::acl::token_cache::DownPolicy::ExtendCache)
    }

    /// A secondary with ACLs on and a replication token: its leader copies the primary's ACLs.
    pub fn acl_replicates(&self) -> bool {
        self.acl_enabled
            && self.primary_datacenter() != self.datacenter
            && self.acl_replication_token.as_deref().is_some_and(|t| !t.is_empty())
    }

    pub fn advertised_rpc(&self) -> String {
        self.advertise_rpc.clone().unwrap_or_else(|| self.rpc_addr.to_string())
    }

    /// Where other servers forward API requests to: the HTTPS API when there is one (so forwarded
    /// requests and their tokens stay encrypted), announced as `https://host:port`.
    pub fn advertised_http(&self) -> String {
        match self.https_addr {
            Some(https) => format!("https://{}", self.advertise_https.clone().unwrap_or_else(|| https.to_string())),
            None => self.advertise_http.clone().unwrap_or_else(|| self.http_addr.to_string()),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_yaml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", path.display()))
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(key) = &self.gossip_key {
            crate::gossip::GossipKey::parse(key)?;
        }
        // Consul's rule: datacenter names go into DNS names (`web.service.dc2.consul`).
        if self.datacenter.is_empty()
            || !self.datacenter.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(format!(
                "datacenter {:?}: use lowercase letters, digits, - and _ (it is part of DNS names)",
                self.datacenter
            ));
        }
        self.tls.validate(self.https_addr.is_some())?;
        if !self.http_enabled && self.https_addr.is_none() {
            return Err("http_enabled false needs https_addr: the API would be unreachable".into());
        }
        if !self.retry_join_wan.is_empty() && self.wan_addr.is_none() {
            return Err("retry_join_wan needs wan_addr: the WAN pool is joined from this server's WAN address".into());
        }
        if self.node_name.is_empty() {
            return Err("node_name must not be empty".into());
        }
        if self.bootstrap_expect == 0 {
            return Err("bootstrap_expect must be at least 1".into());
        }
        if self.bootstrap_expect > 1 && self.retry_join.is_empty() {
            return Err("bootstrap_expect > 1 needs retry_join addresses of the other servers".into());
        }
        if self.acl_default_policy != "allow" && self.acl_default_policy != "deny" {
            return Err(format!("acl_default_policy must be \"allow\" or \"deny\", not {:?}", self.acl_default_policy));
        }
        self.acl_down_policy.parse::<crate::acl::token_cache::DownPolicy>()?;
        crate::api::parse_go_duration(&self.acl_token_ttl)
            .map_err(|e| format!("acl_token_ttl {:?}: {e}", self.acl_token_ttl))?;
        if let Some(p) = self.primary_datacenter.as_deref().filter(|p| !p.is_empty()) {
            if !p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_') {
                return Err(format!("primary_datacenter {p:?}: use lowercase letters, digits, - and _"));
            }
        }
        if self.gossip_interval_ms == 0 || self.gossip_phi_threshold.is_nan() || self.gossip_phi_threshold <= 0.0 {
            return Err("gossip_interval_ms and gossip_phi_threshold must be positive".into());
        }
        if self.raft_heartbeat_ms == 0 || self.raft_election_timeout_ms <= self.raft_heartbeat_ms * 3 {
            return Err("raft_election_timeout_ms must be more than 3 x raft_heartbeat_ms".into());
        }
        Ok(())
    }
}

/// Flags (and `ROSTER_*` environment variables) of `roster server`.
#[derive(Debug, Args, Default)]
pub struct ServerArgs {
    /// Config file (YAML or JSON); flags and environment override it.
    #[arg(long, env = "ROSTER_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "ROSTER_NODE_NAME")]
    pub node_name: Option<String>,
    #[arg(long, env = "ROSTER_DATACENTER")]
    pub datacenter: Option<String>,
    #[arg(long, env = "ROSTER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "ROSTER_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    #[arg(long, env = "ROSTER_RPC_ADDR")]
    pub rpc_addr: Option<SocketAddr>,
    #[arg(long, env = "ROSTER_ADVERTISE_RPC")]
    pub advertise_rpc: Option<String>,
    #[arg(long, env = "ROSTER_ADVERTISE_HTTP")]
    pub advertise_http: Option<String>,
    #[arg(long, env = "ROSTER_BOOTSTRAP_EXPECT")]
    pub bootstrap_expect: Option<usize>,
    /// Repeatable; or comma-separated in ROSTER_RETRY_JOIN.
    #[arg(long, env = "ROSTER_RETRY_JOIN", value_delimiter = ',')]
    pub retry_join: Vec<String>,
    #[arg(long, env = "ROSTER_KV_MAX_VALUE_SIZE")]
    pub kv_max_value_size: Option<usize>,
    #[arg(long, env = "ROSTER_SNAPSHOT_THRESHOLD")]
    pub snapshot_threshold: Option<u64>,
    #[arg(long, env = "ROSTER_LOG_FORMAT")]
    pub log_format: Option<String>,
    #[arg(long, env = "ROSTER_ACL_ENABLED")]
    pub acl_enabled: Option<bool>,
    #[arg(long, env = "ROSTER_ACL_DEFAULT_POLICY")]
    pub acl_default_policy: Option<String>,
    /// Prefer the environment (for example from a Kubernetes Secret) over a flag: flags show in `ps`.
    #[arg(long, env = "ROSTER_ACL_INITIAL_MANAGEMENT", hide_env_values = true)]
    pub acl_initial_management: Option<String>,
    /// The datacenter that owns ACL policies, roles and global tokens (default: this one).
    #[arg(long, env = "ROSTER_PRIMARY_DATACENTER")]
    pub primary_datacenter: Option<String>,
    /// Token a secondary's leader replicates the primary's ACLs with (needs acl = "write").
    #[arg(long, env = "ROSTER_ACL_REPLICATION_TOKEN", hide_env_values = true)]
    pub acl_replication_token: Option<String>,
    /// extend-cache (default), async-cache, allow or deny: tokens while the primary is unreachable.
    #[arg(long, env = "ROSTER_ACL_DOWN_POLICY")]
    pub acl_down_policy: Option<String>,
    /// How long a token resolved by asking the primary is trusted (Go duration; default 30s).
    #[arg(long, env = "ROSTER_ACL_TOKEN_TTL")]
    pub acl_token_ttl: Option<String>,
    #[arg(long, env = "ROSTER_GOSSIP_ADDR")]
    pub gossip_addr: Option<SocketAddr>,
    #[arg(long, env = "ROSTER_GOSSIP_ADVERTISE")]
    pub gossip_advertise: Option<SocketAddr>,
    /// Repeatable; or comma-separated in ROSTER_GOSSIP_SEEDS.
    #[arg(long, env = "ROSTER_GOSSIP_SEEDS", value_delimiter = ',')]
    pub gossip_seeds: Vec<String>,
    #[arg(long, env = "ROSTER_GOSSIP_INTERVAL_MS")]
    pub gossip_interval_ms: Option<u64>,
    /// Gossip encryption key; prefer the environment (from a Kubernetes Secret): flags show in `ps`.
    #[arg(long, env = "ROSTER_GOSSIP_KEY", hide_env_values = true)]
    pub gossip_key: Option<String>,
    /// WAN gossip address (UDP; Consul's 8302) for joining other datacenters' servers.
    #[arg(long, env = "ROSTER_WAN_ADDR")]
    pub wan_addr: Option<SocketAddr>,
    #[arg(long, env = "ROSTER_WAN_ADVERTISE")]
    pub wan_advertise: Option<SocketAddr>,
    /// WAN addresses of other datacenters' servers; repeatable, or comma-separated in ROSTER_RETRY_JOIN_WAN.
    #[arg(long, env = "ROSTER_RETRY_JOIN_WAN", value_delimiter = ',')]
    pub retry_join_wan: Vec<String>,
    #[arg(long, env = "ROSTER_REAP_AFTER_SECS")]
    pub reap_after_secs: Option<u64>,
    /// Allow script (`Args`) checks through the agent API (they run commands on this server).
    #[arg(long, env = "ROSTER_ENABLE_SCRIPT_CHECKS")]
    pub enable_script_checks: Option<bool>,
    /// DNS interface address (UDP and TCP); default the HTTP address's IP on port 8600; "off" for none.
    #[arg(long, env = "ROSTER_DNS_ADDR")]
    pub dns_addr: Option<String>,
    /// The domain DNS answers (default `consul.`).
    #[arg(long, env = "ROSTER_DOMAIN")]
    pub domain: Option<String>,
    /// Where DNS sends names outside the domain (`ip` or `ip:port`), tried in order; repeatable, or
    /// comma-separated in ROSTER_RECURSOR.
    #[arg(long = "recursor", env = "ROSTER_RECURSOR", value_delimiter = ',')]
    pub recursors: Vec<String>,
    /// Open HTTP connections one client IP may hold (default 200; 0: no limit).
    #[arg(long, env = "ROSTER_HTTP_MAX_CONNS_PER_CLIENT")]
    pub http_max_conns_per_client: Option<usize>,
    /// How long a client has to send a request's headers, in ms (default 30000).
    #[arg(long, env = "ROSTER_HTTP_READ_HEADER_TIMEOUT_MS")]
    pub http_read_header_timeout_ms: Option<u64>,
    /// Blocking queries held open at once (default 32768; 0: no limit); more get 429.
    #[arg(long, env = "ROSTER_HTTP_MAX_BLOCKING_QUERIES")]
    pub http_max_blocking_queries: Option<usize>,
    /// HTTPS API address (Consul's 8501); needs the tls files.
    #[arg(long, env = "ROSTER_HTTPS_ADDR")]
    pub https_addr: Option<SocketAddr>,
    #[arg(long, env = "ROSTER_ADVERTISE_HTTPS")]
    pub advertise_https: Option<String>,
    /// `false` turns the plain HTTP API off (HTTPS only).
    #[arg(long, env = "ROSTER_HTTP_ENABLED")]
    pub http_enabled: Option<bool>,
    /// CA bundle (PEM) that signs every server's and client's certificate.
    #[arg(long, env = "ROSTER_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// This server's certificate (PEM; `roster tls cert create --server`), re-read when it changes.
    #[arg(long, env = "ROSTER_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long, env = "ROSTER_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Require a certificate of the CA from HTTPS clients and from servers dialling the RPC port.
    #[arg(long, env = "ROSTER_TLS_VERIFY_INCOMING")]
    pub tls_verify_incoming: Option<bool>,
    /// Dial other servers over TLS, checking their certificates.
    #[arg(long, env = "ROSTER_TLS_VERIFY_OUTGOING")]
    pub tls_verify_outgoing: Option<bool>,
    /// Servers' certificates must name `server.<datacenter>.<domain>`.
    #[arg(long, env = "ROSTER_TLS_VERIFY_SERVER_HOSTNAME")]
    pub tls_verify_server_hostname: Option<bool>,
}

/// A domain as DNS names it (see [`crate::dns::normalize_domain`]).
pub fn normalize_domain(text: &str) -> Result<String, String> {
    crate::dns::normalize_domain(text)
}

impl ServerArgs {
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
            http_addr,
            rpc_addr,
            bootstrap_expect,
            kv_max_value_size,
            snapshot_threshold,
            log_format,
            acl_enabled,
            acl_default_policy,
            acl_down_policy,
            acl_token_ttl,
            gossip_interval_ms,
            reap_after_secs,
            enable_script_checks,
            http_max_conns_per_client,
            http_read_header_timeout_ms,
            http_max_blocking_queries
        );
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
        if self.acl_initial_management.is_some() {
            c.acl_initial_management = self.acl_initial_management;
        }
        if self.primary_datacenter.is_some() {
            c.primary_datacenter = self.primary_datacenter;
        }
        if self.acl_replication_token.is_some() {
            c.acl_replication_token = self.acl_replication_token;
        }
        if self.data_dir.is_some() {
            c.data_dir = self.data_dir;
        }
        if self.advertise_rpc.is_some() {
            c.advertise_rpc = self.advertise_rpc;
        }
        if self.advertise_http.is_some() {
            c.advertise_http = self.advertise_http;
        }
        if !self.retry_join.is_empty() {
            c.retry_join = self.retry_join;
        }
        if self.wan_addr.is_some() {
            c.wan_addr = self.wan_addr;
        }
        if self.wan_advertise.is_some() {
            c.wan_advertise = self.wan_advertise;
        }
        if !self.retry_join_wan.is_empty() {
            c.retry_join_wan = self.retry_join_wan;
        }
        (c.dns_addr, c.dns_addr_optional) = crate::dns::choose_addr(self.dns_addr.as_deref(), c.dns_addr, c.http_addr)?;
        if !self.recursors.is_empty() {
            c.dns.recursors = crate::dns::recursor::parse_recursors(&self.recursors)?;
        }
        if let Some(d) = &self.domain {
            c.dns.domain = d.clone();
        }
        if self.https_addr.is_some() {
            c.https_addr = self.https_addr;
        }
        if self.advertise_https.is_some() {
            c.advertise_https = self.advertise_https;
        }
        if let Some(v) = self.http_enabled {
            c.http_enabled = v;
        }
        for (flag, field) in [
            (self.tls_ca_file, &mut c.tls.ca_file),
            (self.tls_cert_file, &mut c.tls.cert_file),
            (self.tls_key_file, &mut c.tls.key_file),
        ] {
            if flag.is_some() {
                *field = flag;
            }
        }
        for (flag, field) in [
            (self.tls_verify_incoming, &mut c.tls.verify_incoming),
            (self.tls_verify_outgoing, &mut c.tls.verify_outgoing),
            (self.tls_verify_server_hostname, &mut c.tls.verify_server_hostname),
        ] {
            if let Some(v) = flag {
                *field = v;
            }
        }
        // Checking a server's name means dialling it over TLS (as Consul 1.12+ treats it).
        c.tls.verify_outgoing |= c.tls.verify_server_hostname;
        c.dns.domain = normalize_domain(&c.dns.domain)?;
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServerArgs,
    }

    #[test]
    fn file_then_flags_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roster.yaml");
        std::fs::write(
            &path,
            "node_name: from-file\ndatacenter: eu1\nbootstrap_expect: 3\nretry_join: [a:8300, b:8300]\n",
        )
        .unwrap();
        let cli = Cli::parse_from(["x", "--config", path.to_str().unwrap(), "--node-name", "from-flag"]);
        let c = cli.args.into_config().unwrap();
        assert_eq!(c.node_name, "from-flag");
        assert_eq!(c.datacenter, "eu1");
        assert_eq!(c.bootstrap_expect, 3);
        assert_eq!(c.retry_join, vec!["a:8300", "b:8300"]);
    }

    #[test]
    fn acl_replication_settings_come_from_flags_and_default_to_this_datacenter() {
        let c = Cli::parse_from(["x", "--datacenter", "dc2"]).args.into_config().unwrap();
        assert_eq!((c.primary_datacenter(), c.acl_down_policy.as_str()), ("dc2", "extend-cache"));
        assert!(!c.acl_replicates(), "the primary replicates from no one");
        let flags = [
            "x",
            "--datacenter",
            "dc2",
            "--primary-datacenter",
            "dc1",
            "--acl-enabled",
            "true",
            "--acl-replication-token",
            "t",
            "--acl-down-policy",
            "async-cache",
        ];
        let c = Cli::parse_from(flags).args.into_config().unwrap();
        assert_eq!((c.primary_datacenter(), c.acl_down_policy.as_str()), ("dc1", "async-cache"));
        assert!(c.acl_replicates());
        let err = Cli::parse_from(["x", "--acl-down-policy", "later"]).args.into_config().unwrap_err();
        assert!(err.contains("acl_down_policy") && err.contains("later"), "{err}");
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roster.yaml");
        std::fs::write(&path, "node_nmae: typo\n").unwrap();
        let err = Config::from_file(&path).unwrap_err();
        assert!(err.contains("node_nmae"), "{err}");
        let cli = Cli::parse_from(["x", "--bootstrap-expect", "3"]);
        let err = cli.args.into_config().unwrap_err();
        assert!(err.contains("retry_join"), "{err}");
    }
}
