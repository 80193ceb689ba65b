//! openraft glue: type configuration, the durable log, the state machine and the RPC network.

pub mod election;
pub mod lease;
pub mod log_store;
pub mod network;
pub mod state_machine;

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::{Command, CommandResult};

/// What every server in the Raft configuration is known by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerNode {
    /// Node name (the pod name in Kubernetes).
    pub name: String,
    /// Server RPC address (Raft traffic), host:port.
    pub rpc_addr: String,
    /// HTTP API address, host:port: where followers forward client requests.
    pub http_addr: String,
}

impl fmt::Display for ServerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.rpc_addr)
    }
}

openraft::declare_raft_types!(
    /// Roster's Raft types: every log entry is one `Command`.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = ServerNode,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;

/// Encodes log entries, snapshots and RPC bodies (MessagePack with field names, so fields can be added).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}
