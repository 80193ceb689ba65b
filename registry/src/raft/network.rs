//! Raft RPC between servers: MessagePack over HTTP (mutual TLS when configured) on the server RPC port.
//!
//! Client side: `Network` (openraft's `RaftNetworkFactory`). Server side: `rpc_routes`, the warp filters
//! that hand requests to the local Raft.

use std::sync::Arc;
use std::time::Instant;

use crate::tls::dial::Dialer;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::lease::LeaseClock;
use super::state_machine::StateMachineStore;
use super::{decode, encode, NodeId, ServerNode, TypeConfig};

/// The header every server RPC carries once the sender knows its cluster's identity.
pub const CLUSTER_HEADER: &str = "x-roster-cluster";

/// The node ID a Raft RPC is meant for. A server refuses one meant for another ID: after its data
/// directory is wiped a server comes back under a new ID at the old address, and must not answer
/// (vote, acknowledge entries) for the member it replaced, whose log it no longer has.
pub const TARGET_HEADER: &str = "x-roster-target";

/// Paths of the server RPC API.
pub const RPC_APPEND: &str = "append";
pub const RPC_VOTE: &str = "vote";
pub const RPC_SNAPSHOT: &str = "snapshot";

#[derive(Clone)]
pub struct Network {
    /// Other servers' RPC ports, over TLS where configured.
    dialer: Arc<Dialer>,
    /// Where this server's cluster identity is read from (its state).
    sm: StateMachineStore,
    /// Followers' acknowledgements of this server's leadership, for default-mode reads.
    lease: Arc<LeaseClock>,
}

impl Network {
    pub fn new(sm: StateMachineStore, dialer: Arc<Dialer>, lease: Arc<LeaseClock>) -> Self {
        Network { dialer, sm, lease }
    }
}

pub struct Connection {
    client: reqwest::Client,
    target: NodeId,
    base: String,
    sm: StateMachineStore,
    lease: Arc<LeaseClock>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &ServerNode) -> Connection {
        Connection {
            client: self.dialer.rpc().clone(),
            target,
            base: self.dialer.rpc_url(&node.rpc_addr, "/raft"),
            sm: self.sm.clone(),
            lease: self.lease.clone(),
        }
    }
}

impl Connection {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, ServerNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = self.client.post(format!("{}/{path}", self.base)).timeout(option.hard_ttl()).body(body);
        if let Some(id) = self.sm.read(|s| s.cluster_id().map(str::to_string)) {
            request = request.header(CLUSTER_HEADER, id);
        }
        request = request.header(TARGET_HEADER, self.target.to_string());
        let resp = request.send().await.map_err(|e| {
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        let bytes = resp.bytes().await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ServerNode, RaftError<NodeId>>> {
        let sent = Instant::now();
        let leader = *rpc.vote.leader_id();
        let resp = self.call(RPC_APPEND, &rpc, &option).await;
        if matches!(&resp, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.lease.acknowledged(self.target, leader, sent);
        }
        resp
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, ServerNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(RPC_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ServerNode, RaftError<NodeId>>> {
        self.call(RPC_VOTE, &rpc, &option).await
    }
}
