//! Roster's registry: Consul's job, Kubernetes-native.
//!
//! Layers, bottom up (nothing imports upward):
//! - [`api`]: Consul wire types. Always built; no tokio, warp or openraft.
//! - `client`: a typed HTTP client over `api` (feature `client`), shared by the sidecar and the operator.
//! - `checks`: the agent's check runners and their plan (feature `checks`), shared by servers and sidecars.
//! - `gossip`: LAN gossip membership over chitchat (feature `gossip`), shared by servers and sidecars.
//! - `state`: the pure state machine (catalog, KV, sessions) and the watch hub for blocking queries.
//! - `raft`: openraft glue: durable log with group commit, state machine with snapshots, RPC network.
//! - `http`: Consul's `/v1` API over warp, forwarding to the leader where Consul would.
//! - `app`: the `App` every handler shares; `server`: wires config, Raft, membership and HTTP together.

pub mod api;

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "server")]
pub mod state;

#[cfg(feature = "server")]
pub mod raft;

#[cfg(feature = "acl")]
pub mod acl;
#[cfg(feature = "server")]
pub mod acl_remote;
#[cfg(feature = "server")]
pub mod acl_replication;
#[cfg(feature = "agent")]
pub mod agent;
#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod auth_method;
#[cfg(feature = "server")]
pub mod autopilot;
#[cfg(feature = "checks")]
pub mod checks;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "dns")]
pub mod dns;
#[cfg(feature = "server")]
pub mod dns_catalog;
#[cfg(feature = "agent")]
pub mod filter;
#[cfg(feature = "gossip")]
pub mod gossip;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "agent")]
pub mod listener;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod prepared_query;
#[cfg(feature = "server")]
pub mod proposer;
#[cfg(feature = "server")]
pub mod reconcile;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "client")]
pub mod tls;
#[cfg(feature = "ui")]
pub mod ui;
#[cfg(feature = "server")]
pub mod wan;
#[cfg(feature = "agent")]
pub mod web;
