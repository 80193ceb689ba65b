//! The one enum every mutation is. Each Raft log entry carries one `Command`; applying it is deterministic:
//! everything that depends on time or randomness (session IDs, "now" for lock delays) is chosen by the
//! proposer and travels inside the command.

use serde::{Deserialize, Serialize};

use crate::api::{
    AclPolicy, AclRole, AclToken, DeregisterRequest, HealthStatus, RegisterRequest, SessionEntry, TxnKvOp,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvSetMode {
    Plain,
    /// `?cas=N`: write only if ModifyIndex is N (0: only if the key does not exist).
    Cas(u64),
    /// `?acquire=session`.
    Acquire(String),
    /// `?release=session`.
    Release(String),
}

// Commands are built once and moved into the log; boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    KvSet {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: u64,
        mode: KvSetMode,
        now_ms: u64,
    },
    KvDelete {
        key: String,
        recurse: bool,
        cas: Option<u64>,
    },
    Txn {
        ops: Vec<TxnKvOp>,
        now_ms: u64,
    },
    SessionCreate {
        session: SessionEntry,
    },
    SessionDestroy {
        id: String,
        now_ms: u64,
    },
    Register {
        request: RegisterRequest,
        now_ms: u64,
    },
    Deregister {
        request: DeregisterRequest,
        now_ms: u64,
    },
    /// A check's status as the agent that runs it sees it (TTL pass/warn/fail, or expiry).
    CheckStatus {
        node: String,
        check_id: String,
        status: HealthStatus,
        output: String,
        now_ms: u64,
    },
    /// Creates the global-management policy and the first management token, once.
    AclBootstrap {
        token: AclToken,
    },
    AclPolicySet {
        policy: AclPolicy,
    },
    AclPolicyDelete {
        id: String,
    },
    AclRoleSet {
        role: AclRole,
    },
    AclRoleDelete {
        id: String,
    },
    AclTokenSet {
        token: AclToken,
    },
    AclTokenDelete {
        accessor: String,
    },
    AclAuthMethodSet {
        method: crate::api::AclAuthMethod,
    },
    /// Deletes the method with its binding rules and the tokens logins made through it.
    AclAuthMethodDelete {
        name: String,
    },
    AclBindingRuleSet {
        rule: crate::api::AclBindingRule,
    },
    AclBindingRuleDelete {
        id: String,
    },
    /// Deletes the tokens whose ExpirationTime is at or before `now` (RFC 3339, UTC; proposed by the
    /// leader, so every server deletes the same ones).
    AclTokensReapExpired {
        now: String,
    },
    /// Forgets KV tombstones at or below this index (proposed by the leader once they are older
    /// than the tombstone TTL, as Consul's tombstone GC does).
    KvReapTombstones {
        up_to: u64,
    },
    /// Replaces the autopilot configuration (with `cas`: only if its ModifyIndex matches).
    AutopilotSet {
        config: crate::api::AutopilotConfiguration,
        cas: Option<u64>,
    },
    /// Nodes' network coordinates (`/v1/coordinate/update`).
    CoordinateUpdate {
        updates: Vec<crate::api::CoordinateEntry>,
    },
    /// The cluster's identity; applied only while there is none.
    ClusterIdSet {
        id: String,
    },
    /// Replaces the whole state with a snapshot archive's (`state::archive`).
    Restore {
        #[serde(with = "serde_bytes")]
        archive: Vec<u8>,
    },
    /// Several commands in one log entry (one fsync, one replication round), applied in order at
    /// the same index. The leader batches concurrent client writes this way.
    Batch(Vec<Command>),
    // New variants go last: log entries on disk may name variants by position.
    /// Creates or replaces a prepared query (validated by the handler; the name's uniqueness here).
    QuerySet {
        query: crate::api::PreparedQuery,
    },
    QueryDelete {
        id: String,
    },
    /// A secondary datacenter's leader copies what changed in the primary's ACL policies, roles
    /// and global tokens (`acl_replication`): written as the primary has them but for the indexes.
    AclReplicate {
        changes: crate::acl::replication::AclChanges,
    },
}

impl Command {
    /// A short name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::KvSet { .. } => "kv_set",
            Command::KvDelete { .. } => "kv_delete",
            Command::Txn { .. } => "txn",
            Command::SessionCreate { .. } => "session_create",
            Command::SessionDestroy { .. } => "session_destroy",
            Command::Register { .. } => "register",
            Command::Deregister { .. } => "deregister",
            Command::CheckStatus { .. } => "check_status",
            Command::AclBootstrap { .. } => "acl_bootstrap",
            Command::AclPolicySet { .. } => "acl_policy_set",
            Command::AclPolicyDelete { .. } => "acl_policy_delete",
            Command::AclRoleSet { .. } => "acl_role_set",
            Command::AclRoleDelete { .. } => "acl_role_delete",
            Command::QuerySet { .. } => "query_set",
            Command::QueryDelete { .. } => "query_delete",
            Command::AclTokenSet { .. } => "acl_token_set",
            Command::AclTokenDelete { .. } => "acl_token_delete",
            Command::AclAuthMethodSet { .. } => "acl_auth_method_set",
            Command::AclAuthMethodDelete { .. } => "acl_auth_method_delete",
            Command::AclBindingRuleSet { .. } => "acl_binding_rule_set",
            Command::AclBindingRuleDelete { .. } => "acl_binding_rule_delete",
            Command::AclTokensReapExpired { .. } => "acl_tokens_reap_expired",
            Command::KvReapTombstones { .. } => "kv_reap_tombstones",
            Command::AutopilotSet { .. } => "autopilot_set",
            Command::Restore { .. } => "restore",
            Command::CoordinateUpdate { .. } => "coordinate_update",
            Command::ClusterIdSet { .. } => "cluster_id_set",
            Command::Batch(_) => "batch",
            Command::AclReplicate { .. } => "acl_replicate",
        }
    }
}

impl Command {
    /// Rough encoded size, to keep batched log entries bounded.
    pub fn approx_size(&self) -> usize {
        match self {
            Command::KvSet { key, value, .. } => 64 + key.len() + value.len(),
            Command::Txn { ops, .. } => {
                ops.iter().map(|o| 64 + o.key.len() + o.value.as_ref().map_or(0, Vec::len)).sum()
            }
            Command::Batch(cmds) => cmds.iter().map(Command::approx_size).sum(),
            Command::Restore { archive } => archive.len(),
            Command::AclReplicate { changes } => 512 * changes.len().max(1),
            _ => 512,
        }
    }
}

/// What applying a command answers to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CommandResult {
    /// Membership changes and blank entries.
    #[default]
    None,
    /// KV writes and deletes: Consul answers `true`/`false`.
    Bool(bool),
    Txn(crate::api::TxnResponse),
    /// A rejected command: nothing was written. Carries the client-facing message.
    Rejected(String),
    /// One answer per command of a `Batch`, in order.
    Batch(Vec<CommandResult>),
}
