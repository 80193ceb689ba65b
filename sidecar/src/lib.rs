//! Roster's sidecar: one per pod. It joins the LAN gossip pool (failure detection spread over the
//! pods), registers the pod as a node with its services, runs their health checks against the app,
//! keeps the servers in sync (anti-entropy), and answers the app on localhost with Consul's agent
//! API, forwarding every other `/v1` call to the servers.
//!
//! Layout: `config` (file, env, flags) -> the agent (`registry::agent`, shared with the servers:
//! local state, check runners, anti-entropy, the agent API) -> `http` (the localhost API: the
//! agent's, events, and forwarding); `Sidecar` wires them up.

pub mod config;
pub mod dns;
pub mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use registry::agent::{sync, Agent, NodeInfo};
use registry::api::DeregisterRequest;
use registry::client::Client;
use registry::gossip::Membership;
use registry::tls::Expect;
use tokio::sync::watch;

pub use config::{Config, SidecarArgs};

/// A running sidecar.
pub struct Sidecar {
    pub http_addr: SocketAddr,
    pub agent: Arc<Agent>,
    /// Notified when the app asks the sidecar to leave (`/v1/agent/leave`).
    pub leave: Arc<tokio::sync::Notify>,
    pub gossip: Option<Arc<Membership>>,
    client: Client,
    /// The token came from a login: log out at stop.
    logged_in: bool,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Sidecar {
    pub async fn start(config: Config) -> anyhow::Result<Sidecar> {
        config.validate().map_err(anyhow::Error::msg)?;
        let node = NodeInfo {
            name: config.node_name.clone(),
            address: config.address.clone(),
            datacenter: config.datacenter.clone(),
            meta: config.node_meta.clone(),
        };
        let (agent, updates) = Agent::new(node, config.enable_script_checks);
        for def in config.service_definitions().map_err(anyhow::Error::msg)? {
            agent.register_service(&def).map_err(|e| anyhow::anyhow!("service {:?}: {e}", def.name))?;
        }
        let tls = match config.tls.files() {
            Some(files) => Some(registry::tls::Material::load(files).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let tls_config = match &tls {
            Some(m) => {
                let expect = match config.tls.verify_server_hostname {
                    true => Expect::Name(registry::tls::server_name(&config.datacenter, &config.dns.domain)),
                    false => Expect::Chain,
                };
                Some(m.client_config(expect).map_err(anyhow::Error::msg)?)
            }
            None => None,
        };
        let mut client = Client::with_tls(config.servers.clone(), tls_config)?.with_token(config.token.clone());
        let logged_in = match &config.auth_method {
            Some(method) => {
                let token = login(&client, &config.node_name, method, &config.bearer_token_file).await?;
                client = client.with_token(Some(token));
                true
            }
            None => false,
        };
        let gossip = match config.gossip_addr {
            Some(addr) => Some(Arc::new(start_gossip(&config, addr).await?)),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.http_addr))?;
        let dns_listeners = registry::dns::bind_at(config.dns_addr, config.dns_addr_optional).await?;
        let http_addr = listener.local_addr()?;
        let (shutdown, stop_rx) = watch::channel(false);
        let events: Arc<registry::gossip::events::EventBuffer> = Default::default();
        let leave = Arc::new(tokio::sync::Notify::new());
        let ctx = Arc::new(http::Ctx {
            agent: agent.clone(),
            client: client.clone(),
            gossip: gossip.clone(),
            events: events.clone(),
            leave: leave.clone(),
            config_file: config.config_file.clone(),
            enable_script_checks: config.enable_script_checks,
            tokens: registry::acl::resolver::Resolver::new(config.token_cache(), false),
        });
        let mut graceful = stop_rx.clone();
        let mut tasks = vec![
            tokio::spawn(agent.clone().run(updates, stop_rx.clone())),
            tokio::spawn(sync::sync_loop(agent.clone(), Arc::new(client.clone()), config.sync_interval(), stop_rx)),
        ];
        // The agent API answers once this node is alive in the catalog (see `wait_joined`); start
        // returns at once, so a signal meanwhile still gets a clean stop.
        let joined = gossip.is_some().then(|| (client.clone(), config.node_name.clone()));
        // Consul's agent limits, as on the servers' API.
        let limits = registry::listener::Limits {
            max_conns_per_client: config.http_max_conns_per_client,
            header_read_timeout: HEADER_READ_TIMEOUT,
        };
        let mut waiting = shutdown.subscribe();
        tasks.push(tokio::spawn(async move {
            if let Some((client, node)) = joined {
                tokio::select! {
                    _ = wait_joined(&client, &node, JOIN_WAIT) => {}
                    _ = waiting.wait_for(|s| *s) => return,
                }
            }
            let stop = async move {
                let _ = graceful.wait_for(|s| *s).await;
            };
            registry::listener::serve(listener, http::routes(ctx), limits, registry::listener::Transport::Plain, stop)
                .await
        }));
        if let Some(m) = tls {
            // Rotated certificates are picked up for new connections.
            tasks.push(tokio::spawn(m.watch(Duration::from_secs(1), shutdown.subscribe())));
        }
        if let Some(listeners) = dns_listeners {
            let catalog = Arc::new(dns::ServersCatalog {
                client: client.clone(),
                agent: agent.clone(),
                datacenter: config.datacenter.clone(),
            });
            tasks.push(tokio::spawn(registry::dns::serve(
                listeners,
                catalog,
                config.dns.clone(),
                shutdown.subscribe(),
            )));
        }
        if let Some(g) = gossip.clone() {
            let (agent, stop) = (agent.clone(), shutdown.subscribe());
            tasks.push(tokio::spawn(async move {
                g.deliver_events(events, || agent.for_events(), stop).await;
            }));
        }
        tracing::info!(node = %config.node_name, http = %http_addr, servers = ?config.servers, "roster sidecar started");
        Ok(Sidecar { http_addr, agent, leave, gossip, client, logged_in, shutdown, tasks })
    }

    /// Clean shutdown: stop syncing (so nothing registers again behind us), deregister this node at
    /// once, announce the leave to the pool.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        // Forwarded blocking queries may hold the HTTP server for minutes: 3 s, then cut them off.
        let aborts: Vec<_> = self.tasks.iter().map(|t| t.abort_handle()).collect();
        if tokio::time::timeout(Duration::from_secs(3), futures_join(self.tasks)).await.is_err() {
            aborts.iter().for_each(|a| a.abort());
        }
        let node = self.agent.node();
        let dereg = DeregisterRequest {
            node: Some(node.name.clone()),
            datacenter: Some(node.datacenter),
            ..Default::default()
        };
        match tokio::time::timeout(Duration::from_secs(3), self.client.catalog_deregister(&dereg)).await {
            Ok(Ok(())) => tracing::info!("deregistered from the catalog"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not deregister; the leader will when it sees the leave"),
            Err(_) => tracing::warn!("deregistering timed out; the leader will when it sees the leave"),
        }
        if let Some(g) = &self.gossip {
            let _ = g.leave().await;
        }
        if self.logged_in {
            match tokio::time::timeout(Duration::from_secs(3), self.client.acl_logout()).await {
                Ok(Ok(())) => tracing::info!("logged out"),
                _ => tracing::warn!("could not log out; the token stays until it expires or is deleted"),
            }
        }
    }
}

/// Logs in through an ACL auth method with the bearer token in `file` (retrying while the servers
/// are not there yet); returns the token's secret. A refusal is final: the pod's identity is wrong.
async fn login(client: &Client, node: &str, method: &str, file: &std::path::Path) -> anyhow::Result<String> {
    let bearer = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("auth method {method}: cannot read the bearer token {}: {e}", file.display()))?;
    let request = registry::api::AclLoginRequest {
        auth_method: method.to_string(),
        bearer_token: bearer.trim().to_string(),
        meta: std::collections::BTreeMap::from([("node".to_string(), node.to_string())]),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match client.acl_login(&request).await {
            Ok(token) => {
                tracing::info!(method, accessor = %token.accessor_id, "logged in");
                return Ok(token.secret_id);
            }
            Err(registry::client::ClientError::Status { status, body }) if (400..500).contains(&status) => {
                anyhow::bail!("login through auth method {method} refused ({status}): {body}");
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("login through auth method {method}: {e}");
            }
            Err(e) => {
                tracing::warn!(error = %e, "login failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// How long a starting sidecar waits to be in the catalog, alive, before it answers its app.
const JOIN_WAIT: Duration = Duration::from_secs(10);
/// How long a client of the agent API has to send a request's headers (slowloris), as the servers' default.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Ready means ready: the app's first call finds this node in the catalog and alive (its
/// `serfHealth` passing, which the leader sets once gossip shows the sidecar), as on a Consul agent
/// that has joined. The app's connections meanwhile wait in the listen backlog. Bounded, so that
/// with the servers away the agent API still answers from local state.
async fn wait_joined(client: &Client, node: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(checks) = client.health_node(node).await {
            let alive = checks
                .iter()
                .any(|c| c.check_id == registry::agent::SERF_CHECK && c.status == registry::api::HealthStatus::Passing);
            if alive {
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(?limit, "not alive in the catalog yet; answering the app anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

async fn start_gossip(config: &Config, addr: SocketAddr) -> anyhow::Result<Membership> {
    registry::gossip::Joining {
        pool: registry::gossip::Pool::Lan,
        name: config.node_name.clone(),
        address: config.address.clone(),
        datacenter: config.datacenter.clone(),
        role: registry::gossip::Role::Client,
        bind: addr,
        advertise: config.gossip_advertise,
        seeds: config.gossip_seeds.clone(),
        interval: config.gossip_interval(),
        phi_threshold: config.gossip_phi_threshold,
        key: config.gossip_key.clone(),
        // A sidecar keeps no state: restarted, it starts from its configured key and replays the
        // pool's keyring requests still in gossip.
        keyring_file: None,
    }
    .join_udp()
    .await
}
