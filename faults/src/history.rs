//! The recorded history: one entry per operation, with invocation and completion times.
//!
//! Times are nanoseconds on one monotonic clock (since the run started). An operation whose outcome
//! is unknown (timed out, connection dropped after the request was sent, a 5xx) has no completion
//! time: it may have taken effect at any point after its invocation, or never.

use serde::{Deserialize, Serialize};

/// A value written to a register. Every write in a run writes a value no other write uses, so a
/// value read names the one write that produced it.
pub type Value = u64;

/// How a read was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// No parameter: served by the leader without confirming leadership (Consul's default mode).
    Default,
    /// `?consistent`: the leader confirms it still leads before answering.
    Consistent,
    /// `?stale`: any server, from its local state. Not linearizable; checked for monotonicity only.
    Stale,
}

/// One operation on a single-key register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RegOp {
    /// A read that completed. `value` None: the key did not exist. `index`: the ModifyIndex (or
    /// the `X-Consul-Index` of a 404).
    Read {
        mode: ReadMode,
        value: Option<Value>,
        #[serde(default)]
        index: Option<u64>,
    },
    /// `PUT /v1/kv/<key>` with the value as body.
    Write { value: Value },
    /// `PUT /v1/kv/<key>?cas=N`: `expected` is the value the client saw with ModifyIndex N (None for
    /// `cas=0`, "only if absent"); `ok` is the answer, None if unknown.
    Cas { expected: Option<Value>, value: Value, ok: Option<bool> },
}

/// One operation of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub client: u32,
    pub key: String,
    /// Invocation time (ns).
    pub call: u64,
    /// Completion time (ns); None: the outcome is unknown (completion is +infinity).
    pub ret: Option<u64>,
    pub op: RegOp,
    /// Which server answered (index in the cluster) and that server's incarnation (restarts), for
    /// the per-client monotonicity of `?stale` reads. Not used by the linearizability check.
    #[serde(default)]
    pub server: Option<(usize, u32)>,
}

impl Operation {
    pub fn is_read(&self) -> bool {
        matches!(self.op, RegOp::Read { .. })
    }

    pub fn read_mode(&self) -> Option<ReadMode> {
        match self.op {
            RegOp::Read { mode, .. } => Some(mode),
            _ => None,
        }
    }

    /// A write (plain or CAS) that the server acknowledged as applied.
    pub fn acknowledged_write(&self) -> Option<Value> {
        match self.op {
            RegOp::Write { value } if self.ret.is_some() => Some(value),
            RegOp::Cas { value, ok: Some(true), .. } if self.ret.is_some() => Some(value),
            _ => None,
        }
    }

    /// The value this operation may have written (acknowledged or of unknown outcome).
    pub fn written_value(&self) -> Option<Value> {
        match self.op {
            RegOp::Write { value } => Some(value),
            RegOp::Cas { value, ok, .. } if ok != Some(false) => Some(value),
            _ => None,
        }
    }
}

/// A history as saved to disk (fixtures, failing runs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    #[serde(default)]
    pub note: String,
    pub ops: Vec<Operation>,
}
