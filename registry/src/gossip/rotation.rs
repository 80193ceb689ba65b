//! Gossip key rotation across the pool (Consul's `operator keyring`): a server asks the pool to
//! install, use or remove a key by putting the request in its own gossip state
//! (`keyring-op:<seq>`, the last few kept); every member applies each request it has not applied
//! yet, oldest first, and publishes the keys it then holds (`keyring`). The requester answers once
//! every live member shows the result, as Consul answers once every member has replied to its
//! query. Requests travel sealed, like all gossip; a member that joins later replays the requests
//! still in gossip, so it ends with the same keys. Pure, but for `Membership`'s glue.

use std::collections::{BTreeMap, BTreeSet};

use chitchat::{ChitchatId, NodeState};
use serde::{Deserialize, Serialize};

use super::Keyring;

/// This member's keys, as JSON [`MemberKeys`].
pub const KEY_KEYRING: &str = "keyring";
pub const KEY_OP_PREFIX: &str = "keyring-op:";
/// Requests kept in a member's gossip state (older ones are dropped).
pub const OPS_GOSSIPED_PER_MEMBER: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Install,
    Use,
    Remove,
}

/// One request to the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyringOp {
    pub action: Action,
    pub key: String,
    /// When it was asked (ms since the epoch): replayed in this order.
    pub at_ms: u64,
}

/// The keys one member holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MemberKeys {
    pub keys: Vec<String>,
    pub primary: String,
}

impl MemberKeys {
    pub fn of(keyring: &Keyring) -> MemberKeys {
        let (keys, primary) = keyring.list();
        MemberKeys { keys, primary }
    }

    /// Whether this member shows `op` done.
    pub fn shows(&self, op: &KeyringOp) -> bool {
        match op.action {
            Action::Install => self.keys.contains(&op.key),
            Action::Use => self.primary == op.key,
            Action::Remove => !self.keys.contains(&op.key),
        }
    }
}

/// Applies one request to a member's keyring.
pub fn apply(keyring: &Keyring, op: &KeyringOp) -> Result<(), String> {
    match op.action {
        Action::Install => keyring.install(&op.key),
        Action::Use => keyring.use_key(&op.key),
        Action::Remove => keyring.remove(&op.key),
    }
}

/// Every request in the pool's gossip, oldest first, each with an id unique in the pool.
pub fn ops_in(states: &BTreeMap<ChitchatId, NodeState>) -> Vec<(String, KeyringOp)> {
    let mut ops: Vec<(String, KeyringOp)> = states
        .iter()
        .flat_map(|(id, state)| {
            state.iter_prefix(KEY_OP_PREFIX).filter_map(move |(key, value)| {
                let op: KeyringOp = serde_json::from_str(&value.value).ok()?;
                Some((format!("{}/{}/{key}", id.node_id, id.generation_id), op))
            })
        })
        .collect();
    ops.sort_by(|a, b| a.1.at_ms.cmp(&b.1.at_ms).then_with(|| a.0.cmp(&b.0)));
    ops
}

/// The keys each live member published (None: nothing yet).
pub fn member_keys(states: &BTreeMap<ChitchatId, NodeState>) -> BTreeMap<String, Option<MemberKeys>> {
    states
        .iter()
        .map(|(id, state)| {
            let keys = state.get(KEY_KEYRING).and_then(|v| serde_json::from_str(v).ok());
            (id.node_id.to_string(), keys)
        })
        .collect()
}

/// The live members that do not show `op` done yet.
pub fn not_done(members: &BTreeMap<String, Option<MemberKeys>>, op: &KeyringOp) -> Vec<String> {
    members.iter().filter(|(_, k)| !k.as_ref().is_some_and(|k| k.shows(op))).map(|(n, _)| n.clone()).collect()
}

/// `/v1/operator/keyring`'s counts: how many members hold each key, and use it as primary.
pub fn counts(members: &BTreeMap<String, Option<MemberKeys>>) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut keys = BTreeMap::new();
    let mut primary = BTreeMap::new();
    for k in members.values().flatten() {
        for key in k.keys.iter().collect::<BTreeSet<_>>() {
            *keys.entry(key.clone()).or_insert(0) += 1;
        }
        *primary.entry(k.primary.clone()).or_insert(0) += 1;
    }
    (keys, primary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::GossipKey;

    fn op(action: Action, key: &str, at_ms: u64) -> KeyringOp {
        KeyringOp { action, key: key.into(), at_ms }
    }

    #[test]
    fn a_late_member_replaying_the_requests_ends_with_the_same_keys() {
        let (old, new) = (GossipKey::generate(), GossipKey::generate());
        let history = [op(Action::Install, &new, 1), op(Action::Use, &new, 2), op(Action::Remove, &old, 3)];
        // Joined mid-rotation with the old key, or after it with the new one: the same end.
        for configured in [&old, &new] {
            let k = Keyring::new(configured).expect("key");
            for o in &history {
                let _ = apply(&k, o);
            }
            assert_eq!(MemberKeys::of(&k), MemberKeys { keys: vec![new.clone()], primary: new.clone() });
        }
    }

    #[test]
    fn counts_and_stragglers() {
        let (a, b) = ("a".to_string(), "b".to_string());
        let members = BTreeMap::from([
            ("n1".to_string(), Some(MemberKeys { keys: vec![a.clone(), b.clone()], primary: a.clone() })),
            ("n2".to_string(), Some(MemberKeys { keys: vec![a.clone()], primary: a.clone() })),
            ("n3".to_string(), None),
        ]);
        let (keys, primary) = counts(&members);
        assert_eq!(keys, BTreeMap::from([(a.clone(), 2), (b.clone(), 1)]));
        assert_eq!(primary, BTreeMap::from([(a.clone(), 2)]));
        assert_eq!(not_done(&members, &op(Action::Install, &b, 0)), ["n2", "n3"]);
        assert_eq!(not_done(&members, &op(Action::Remove, &b, 0)), ["n1", "n3"]);
        assert_eq!(not_done(&members, &op(Action::Use, &a, 0)), ["n3"]);
    }
}
