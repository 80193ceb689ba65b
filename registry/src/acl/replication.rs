//! What a secondary datacenter must change to hold the primary's ACL policies, roles and global
//! tokens: a pure diff of its copy against the primary's lists. Objects are compared by content,
//! without their indexes (each datacenter's log numbers its own writes), as Consul compares hashes.
//! Local tokens are no part of it on either side: they belong to their datacenter.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{AclPolicy, AclRole, AclToken};

/// One replication round's changes, applied as one Raft command in the secondary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclChanges {
    pub policies: Vec<AclPolicy>,
    pub deleted_policies: Vec<String>,
    pub roles: Vec<AclRole>,
    pub deleted_roles: Vec<String>,
    /// Global tokens only.
    pub tokens: Vec<AclToken>,
    pub deleted_tokens: Vec<String>,
}

impl AclChanges {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
            && self.deleted_policies.is_empty()
            && self.roles.is_empty()
            && self.deleted_roles.is_empty()
            && self.tokens.is_empty()
            && self.deleted_tokens.is_empty()
    }

    /// How many objects change.
    pub fn len(&self) -> usize {
        self.policies.len()
            + self.deleted_policies.len()
            + self.roles.len()
            + self.deleted_roles.len()
            + self.tokens.len()
            + self.deleted_tokens.len()
    }
}

/// An ACL object as replication sees it: an ID, and its content without indexes.
pub trait Replicated: Clone {
    fn id(&self) -> &str;
    fn without_indexes(&self) -> Self;
}

impl Replicated for AclPolicy {
    fn id(&self) -> &str {
        &self.id
    }
    fn without_indexes(&self) -> Self {
        AclPolicy { create_index: 0, modify_index: 0, ..self.clone() }
    }
}

impl Replicated for AclRole {
    fn id(&self) -> &str {
        &self.id
    }
    fn without_indexes(&self) -> Self {
        AclRole { create_index: 0, modify_index: 0, ..self.clone() }
    }
}

impl Replicated for AclToken {
    fn id(&self) -> &str {
        &self.accessor_id
    }
    fn without_indexes(&self) -> Self {
        AclToken { create_index: 0, modify_index: 0, ..self.clone() }
    }
}

/// What to write (new or different in `remote`) and what to delete (gone from `remote`), by ID.
pub fn diff_objects<T: Replicated + PartialEq>(local: &[T], remote: &[T]) -> (Vec<T>, Vec<String>) {
    let local_by_id: BTreeMap<&str, &T> = local.iter().map(|o| (o.id(), o)).collect();
    let remote_by_id: BTreeMap<&str, &T> = remote.iter().map(|o| (o.id(), o)).collect();
    let upserts = remote_by_id
        .iter()
        .filter(|(id, r)| local_by_id.get(*id).is_none_or(|l| l.without_indexes() != r.without_indexes()))
        .map(|(_, r)| (*r).clone())
        .collect();
    let deletes = local_by_id.keys().filter(|id| !remote_by_id.contains_key(*id)).map(|id| id.to_string()).collect();
    (upserts, deletes)
}

/// The changes that make the secondary's copy (`local_*`) equal the primary's (`remote_*`).
/// Local tokens in either list are left out: the primary's stay there, the secondary's stay here.
pub fn diff(
    local_policies: &[AclPolicy],
    local_roles: &[AclRole],
    local_tokens: &[AclToken],
    remote_policies: &[AclPolicy],
    remote_roles: &[AclRole],
    remote_tokens: &[AclToken],
) -> AclChanges {
    let global = |tokens: &[AclToken]| tokens.iter().filter(|t| !t.local).cloned().collect::<Vec<_>>();
    let (policies, deleted_policies) = diff_objects(local_policies, remote_policies);
    let (roles, deleted_roles) = diff_objects(local_roles, remote_roles);
    let (tokens, deleted_tokens) = diff_objects(&global(local_tokens), &global(remote_tokens));
    AclChanges { policies, deleted_policies, roles, deleted_roles, tokens, deleted_tokens }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AclLink;

    fn policy(id: &str, rules: &str, index: u64) -> AclPolicy {
        AclPolicy {
            id: id.into(),
            name: format!("p-{id}"),
            rules: rules.into(),
            create_index: index,
            modify_index: index,
            ..Default::default()
        }
    }

    fn token(accessor: &str, local: bool, policies: &[&str], index: u64) -> AclToken {
        AclToken {
            accessor_id: accessor.into(),
            secret_id: format!("secret-{accessor}"),
            local,
            policies: policies.iter().map(|p| AclLink { id: p.to_string(), name: format!("p-{p}") }).collect(),
            create_index: index,
            modify_index: index,
            ..Default::default()
        }
    }

    #[test]
    fn same_content_at_other_indexes_is_no_change() {
        let local = [policy("a", "key_prefix \"\" { policy = \"read\" }", 7)];
        let remote = [policy("a", "key_prefix \"\" { policy = \"read\" }", 1042)];
        let changes =
            diff(&local, &[], &[token("t", false, &["a"], 9)], &remote, &[], &[token("t", false, &["a"], 88)]);
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn new_and_changed_objects_are_written_and_missing_ones_deleted() {
        let local = [policy("a", "", 1), policy("b", "", 1), policy("gone", "", 1)];
        let remote =
            [policy("a", "", 5), policy("b", "node_prefix \"\" { policy = \"read\" }", 6), policy("new", "", 7)];
        let role = AclRole { id: "r".into(), name: "r".into(), ..Default::default() };
        let changes = diff(&local, &[role], &[], &remote, &[], &[token("t", false, &["new"], 8)]);
        let ids = |ps: &[AclPolicy]| ps.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&changes.policies), ["b", "new"]);
        assert_eq!(changes.deleted_policies, ["gone"]);
        assert_eq!(changes.deleted_roles, ["r"]);
        assert_eq!(changes.tokens.len(), 1);
        assert_eq!(changes.tokens[0].secret_id, "secret-t", "the token is copied whole, secret included");
        assert_eq!(changes.len(), 5);
    }

    #[test]
    fn local_tokens_stay_where_they_were_made() {
        // The secondary's local token is not deleted for being absent in the primary; the
        // primary's local token is not copied.
        let local_tokens = [token("mine", true, &[], 3), token("global", false, &[], 4)];
        let remote_tokens = [token("theirs", true, &[], 5), token("global", false, &[], 6)];
        let changes = diff(&[], &[], &local_tokens, &[], &[], &remote_tokens);
        assert!(changes.is_empty(), "{changes:?}");
        // A global token the primary deleted goes here too.
        let changes = diff(&[], &[], &local_tokens, &[], &[], &[]);
        assert_eq!(changes.deleted_tokens, ["global"]);
    }
}
