//! ACL tables: tokens, policies, roles, and whether bootstrap already happened.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::{CommandResult, State, Table, Touched, WatchKey};
use crate::acl::replication::AclChanges;
use crate::acl::{Authorizer, Rules};
use crate::api::{
    AclAuthMethod, AclBindingRule, AclLink, AclNodeIdentity, AclPolicy, AclRole, AclServiceIdentity,
    AclTemplatedPolicy, AclToken, ANONYMOUS_TOKEN_ACCESSOR, GLOBAL_MANAGEMENT_POLICY_ID, GLOBAL_MANAGEMENT_POLICY_NAME,
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AclTables {
    tokens: BTreeMap<String, AclToken>,
    policies: BTreeMap<String, AclPolicy>,
    roles: BTreeMap<String, AclRole>,
    #[serde(default)]
    auth_methods: BTreeMap<String, AclAuthMethod>,
    #[serde(default)]
    binding_rules: BTreeMap<String, AclBindingRule>,
    /// Log index of the bootstrap, once done (Consul's "reset index").
    bootstrapped_at: Option<u64>,
    /// Derived: secret -> accessor.
    #[serde(skip)]
    by_secret: HashMap<String, String>,
    /// Derived: policy ID -> parsed rules (rules are validated before they are written).
    #[serde(skip)]
    compiled: HashMap<String, Rules>,
}

impl AclTables {
    pub fn rebuild_derived(&mut self) {
        self.by_secret = self.tokens.values().map(|t| (t.secret_id.clone(), t.accessor_id.clone())).collect();
        self.compiled =
            self.policies.values().filter_map(|p| Some((p.id.clone(), Rules::parse(&p.rules).ok()?))).collect();
    }
}

/// The built-in management policy, written by bootstrap.
pub fn global_management_policy() -> AclPolicy {
    AclPolicy {
        id: GLOBAL_MANAGEMENT_POLICY_ID.into(),
        name: GLOBAL_MANAGEMENT_POLICY_NAME.into(),
        description: "Builtin Policy that grants unlimited access".into(),
        rules: String::new(),
        ..Default::default()
    }
}

/// Consul's rule for service and node names in identities: lowercase alphanumerics, `-` and `_`,
/// starting and ending with an alphanumeric, at most 256 characters.
fn valid_identity_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 256
        && name.chars().all(|c| alnum(c) || c == '-' || c == '_')
        && name.starts_with(alnum)
        && name.ends_with(alnum)
}

/// Identities as Consul validates them on a token or role, with its messages.
fn check_identities(services: &[AclServiceIdentity], nodes: &[AclNodeIdentity], on: &str) -> Result<(), String> {
    for s in services {
        if s.service_name.is_empty() {
            return Err(format!("Service identity is missing the service name field on this {on}"));
        }
        if !valid_identity_name(&s.service_name) {
            return Err(format!("Service identity {:?} has an invalid name. Only lowercase alphanumeric characters, '-' and '_' are allowed", s.service_name));
        }
    }
    for n in nodes {
        if n.node_name.is_empty() {
            return Err(format!("Node identity is missing the node name field on this {on}"));
        }
        if !valid_identity_name(&n.node_name) {
            return Err(
                "Node identity has an invalid name. Only lowercase alphanumeric characters, '-' and '_' are allowed"
                    .into(),
            );
        }
        if n.datacenter.is_empty() {
            return Err(format!("Node identity is missing the datacenter field on this {on}"));
        }
    }
    Ok(())
}

/// Every linked template exists and renders with its variables.
fn check_templates(links: &[AclTemplatedPolicy]) -> Result<(), String> {
    for t in links {
        crate::acl::templated::render(&t.template_name, t.template_variables.as_ref().map(|v| v.name.as_str()))?;
    }
    Ok(())
}

/// What a request's token resolves to.
pub enum Resolved {
    /// The token exists and has not expired.
    Token { accessor: String, authorizer: Authorizer },
    /// No such token (or expired): Consul answers 403 "ACL not found".
    NotFound,
}

impl State {
    fn acl_touch(&mut self, index: u64, touched: &mut Touched) {
        self.indexes.acl = index;
        touched.push(WatchKey::Table(Table::Acl));
    }

    fn resolve_links(&self, links: &[AclLink], roles: bool) -> Result<Vec<AclLink>, String> {
        links
            .iter()
            .map(|l| {
                let found = if roles {
                    self.acl
                        .roles
                        .values()
                        .find(|r| r.id == l.id || (!l.name.is_empty() && r.name == l.name))
                        .map(|r| (&r.id, &r.name))
                } else {
                    self.acl
                        .policies
                        .values()
                        .find(|p| p.id == l.id || (!l.name.is_empty() && p.name == l.name))
                        .map(|p| (&p.id, &p.name))
                };
                found.map(|(id, name)| AclLink { id: id.clone(), name: name.clone() }).ok_or_else(|| {
                    format!(
                        "{} does not exist: {:?}",
                        if roles { "Role" } else { "Policy" },
                        if l.id.is_empty() { &l.name } else { &l.id }
                    )
                })
            })
            .collect()
    }

    pub(super) fn acl_bootstrap(&mut self, index: u64, mut token: AclToken, touched: &mut Touched) -> CommandResult {
        if let Some(at) = self.acl.bootstrapped_at {
            return CommandResult::Rejected(format!("ACL bootstrap no longer allowed (reset index: {at})"));
        }
        if !self.acl.policies.contains_key(GLOBAL_MANAGEMENT_POLICY_ID) {
            let mut p = global_management_policy();
            p.create_index = index;
            p.modify_index = index;
            self.acl.compiled.insert(p.id.clone(), Rules::default());
            self.acl.policies.insert(p.id.clone(), p);
        }
        token.policies =
            vec![AclLink { id: GLOBAL_MANAGEMENT_POLICY_ID.into(), name: GLOBAL_MANAGEMENT_POLICY_NAME.into() }];
        token.create_index = index;
        token.modify_index = index;
        self.acl.by_secret.insert(token.secret_id.clone(), token.accessor_id.clone());
        self.acl.tokens.insert(token.accessor_id.clone(), token);
        self.acl.bootstrapped_at = Some(index);
        self.acl_touch(index, touched);
        CommandResult::None
    }

    pub(super) fn acl_policy_set(&mut self, index: u64, mut p: AclPolicy, touched: &mut Touched) -> CommandResult {
        let rules = match Rules::parse(&p.rules) {
            Ok(r) => r,
            Err(e) => return CommandResult::Rejected(e.to_string()),
        };
        if p.name.is_empty() {
            return CommandResult::Rejected("Invalid Policy: no Name is set".into());
        }
        if self.acl.policies.values().any(|o| o.name == p.name && o.id != p.id) {
            return CommandResult::Rejected(format!("Invalid Policy: A Policy with Name {:?} already exists", p.name));
        }
        if p.id == GLOBAL_MANAGEMENT_POLICY_ID && !p.rules.is_empty() {
            return CommandResult::Rejected(
                "Changing the Rules for the builtin global-management policy is not permitted".into(),
            );
        }
        p.create_index = self.acl.policies.get(&p.id).map_or(index, |o| o.create_index);
        p.modify_index = index;
        // Links carry names: keep them current.
        for t in self.acl.tokens.values_mut() {
            t.policies.iter_mut().filter(|l| l.id == p.id).for_each(|l| l.name = p.name.clone());
        }
        for r in self.acl.roles.values_mut() {
            r.policies.iter_mut().filter(|l| l.id == p.id).for_each(|l| l.name = p.name.clone());
        }
        self.acl.compiled.insert(p.id.clone(), rules);
        self.acl.policies.insert(p.id.clone(), p);
        self.acl_touch(index, touched);
        CommandResult::None
    }

    pub(super) fn acl_policy_delete(&mut self, index: u64, id: &str, touched: &mut Touched) -> CommandResult {
        if id == GLOBAL_MANAGEMENT_POLICY_ID {
            return CommandResult::Rejected("Delete of the builtin global-management policy is not permitted".into());
        }
        if self.acl.policies.remove(id).is_some() {
            self.acl.compiled.remove(id);
            for t in self.acl.tokens.values_mut() {
                t.policies.retain(|l| l.id != id);
            }
            for r in self.acl.roles.values_mut() {
                r.policies.retain(|l| l.id != id);
            }
            self.acl_touch(index, touched);
        }
        CommandResult::Bool(true)
    }

    pub(super) fn acl_role_set(&mut self, index: u64, mut r: AclRole, touched: &mut Touched) -> CommandResult {
        if r.name.is_empty() {
            return CommandResult::Rejected("Invalid Role: no Name is set".into());
        }
        if let Err(e) = check_identities(&r.service_identities, &r.node_identities, "role") {
            return CommandResult::Rejected(e);
        }
        if let Err(e) = check_templates(&r.templated_policies) {
            return CommandResult::Rejected(e);
        }
        if self.acl.roles.values().any(|o| o.name == r.name && o.id != r.id) {
            return CommandResult::Rejected(format!("Invalid Role: A Role with Name {:?} already exists", r.name));
        }
        r.policies = match self.resolve_links(&r.policies, false) {
            Ok(l) => l,
            Err(e) => return CommandResult::Rejected(e),
        };
        r.create_index = self.acl.roles.get(&r.id).map_or(index, |o| o.create_index);
        r.modify_index = index;
        for t in self.acl.tokens.values_mut() {
            t.roles.iter_mut().filter(|l| l.id == r.id).for_each(|l| l.name = r.name.clone());
        }
        self.acl.roles.insert(r.id.clone(), r);
        self.acl_touch(index, touched);
        CommandResult::None
    }

    pub(super) fn acl_role_delete(&mut self, index: u64, id: &str, touched: &mut Touched) -> CommandResult {
        if self.acl.roles.remove(id).is_some() {
            for t in self.acl.tokens.values_mut() {
                t.roles.retain(|l| l.id != id);
            }
            self.acl_touch(index, touched);
        }
        CommandResult::Bool(true)
    }

    pub(super) fn acl_token_set(&mut self, index: u64, mut t: AclToken, touched: &mut Touched) -> CommandResult {
        if let Err(e) = check_identities(&t.service_identities, &t.node_identities, "token") {
            return CommandResult::Rejected(e);
        }
        if let Err(e) = check_templates(&t.templated_policies) {
            return CommandResult::Rejected(e);
        }
        if t.local && t.service_identities.iter().any(|s| !s.datacenters.is_empty()) {
            return CommandResult::Rejected("cannot specify a list of datacenters on a local token".into());
        }
        if let Some(owner) = self.acl.by_secret.get(&t.secret_id) {
            if owner != &t.accessor_id {
                return CommandResult::Rejected("Invalid Token: SecretID is already in use".into());
            }
        }
        t.policies = match self.resolve_links(&t.policies, false) {
            Ok(l) => l,
            Err(e) => return CommandResult::Rejected(e),
        };
        t.roles = match self.resolve_links(&t.roles, true) {
            Ok(l) => l,
            Err(e) => return CommandResult::Rejected(e),
        };
        if let Some(old) = self.acl.tokens.get(&t.accessor_id) {
            if old.secret_id != t.secret_id {
                return CommandResult::Rejected("Cannot change a token's SecretID".into());
            }
            t.create_index = old.create_index;
            t.create_time = old.create_time.clone();
        } else {
            t.create_index = index;
        }
        t.modify_index = index;
        self.acl.by_secret.insert(t.secret_id.clone(), t.accessor_id.clone());
        self.acl.tokens.insert(t.accessor_id.clone(), t);
        self.acl_touch(index, touched);
        CommandResult::None
    }

    pub(super) fn acl_token_delete(&mut self, index: u64, accessor: &str, touched: &mut Touched) -> CommandResult {
        if accessor == ANONYMOUS_TOKEN_ACCESSOR {
            return CommandResult::Rejected("Delete of the anonymous token is not allowed".into());
        }
        if let Some(t) = self.acl.tokens.remove(accessor) {
            self.acl.by_secret.remove(&t.secret_id);
            self.acl_touch(index, touched);
        }
        CommandResult::Bool(true)
    }

    pub(super) fn acl_auth_method_set(
        &mut self,
        index: u64,
        mut m: AclAuthMethod,
        touched: &mut Touched,
    ) -> CommandResult {
        if m.name.is_empty() {
            return CommandResult::Rejected("Invalid Auth Method: no Name is set".into());
        }
        if !matches!(m.method_type.as_str(), "jwt" | "kubernetes") {
            return CommandResult::Rejected(format!(
                "Invalid Auth Method: Type should be one of: [jwt kubernetes], got {:?}",
                m.method_type
            ));
        }
        match self.acl.auth_methods.get(&m.name) {
            Some(old) if old.method_type != m.method_type => {
                return CommandResult::Rejected(format!(
                    "Invalid Auth Method: cannot change type of auth method {:?}",
                    m.name
                ));
            }
            Some(old) => m.create_index = old.create_index,
            None => m.create_index = index,
        }
        m.modify_index = index;
        self.acl.auth_methods.insert(m.name.clone(), m);
        self.acl_touch(index, touched);
        CommandResult::None
    }

    pub(super) fn acl_auth_method_delete(&mut self, index: u64, name: &str, touched: &mut Touched) -> CommandResult {
        if self.acl.auth_methods.remove(name).is_some() {
            self.acl.binding_rules.retain(|_, r| r.auth_method != name);
            let logins: Vec<String> =
                self.acl.tokens.values().filter(|t| t.auth_method == name).map(|t| t.accessor_id.clone()).collect();
            for accessor in logins {
                if let Some(t) = self.acl.tokens.remove(&accessor) {
                    self.acl.by_secret.remove(&t.secret_id);
                }
            }
            self.acl_touch(index, touched);
        }
        CommandResult::Bool(true)
    }

    pub(super) fn acl_binding_rule_set(
        &mut self,
        index: u64,
        mut r: AclBindingRule,
        touched: &mut Touched,
    ) -> CommandResult {
        if !self.acl.auth_methods.contains_key(&r.auth_method) {
            return CommandResult::Rejected(format!("Invalid Binding Rule: unknown AuthMethod {:?}", r.auth_method));
        }
        if !matches!(r.bind_type.as_str(), "service" | "node" | "role" | "policy") {
            return CommandResult::Rejected(format!("Invalid Binding Rule: unknown BindType {:?}", r.bind_type));
        }
        if r.bind_name.is_empty() {
            return CommandResult::Rejected("Invalid Binding Rule: no BindName is set".into());
        }
        match self.acl.binding_rules.get(&r.id) {
            Some(old) if old.auth_method != r.auth_method => {
                return CommandResult::Rejected("Invalid Binding Rule: cannot change AuthMethod".into());
            }
            Some(old) => r.create_index = old.create_index,
            None => r.create_index = index,
        }
        r.modify_index = index;
        self.acl.binding_rules.insert(r.id.clone(), r);
        self.acl_touch(index, touched);
        CommandResult::None
    }

    pub(super) fn acl_tokens_reap_expired(&mut self, index: u64, now: &str, touched: &mut Touched) -> CommandResult {
        let expired = self.acl_expired_tokens(now);
        for accessor in &expired {
            if let Some(t) = self.acl.tokens.remove(accessor) {
                self.acl.by_secret.remove(&t.secret_id);
            }
        }
        if !expired.is_empty() {
            self.acl_touch(index, touched);
        }
        CommandResult::Bool(!expired.is_empty())
    }

    /// A replication round from the primary: its objects as they are there (links and all, already
    /// validated by the primary), only the indexes this datacenter's own. Deletions go last, so a
    /// link to an object deleted this round is dropped as the primary dropped it.
    pub(super) fn acl_replicate(&mut self, index: u64, c: AclChanges, touched: &mut Touched) -> CommandResult {
        if c.is_empty() {
            return CommandResult::None;
        }
        for mut p in c.policies {
            p.create_index = self.acl.policies.get(&p.id).map_or(index, |o| o.create_index);
            p.modify_index = index;
            // A rule this server cannot parse grants nothing rather than stopping replication.
            match Rules::parse(&p.rules) {
                Ok(rules) => self.acl.compiled.insert(p.id.clone(), rules),
                Err(_) => self.acl.compiled.remove(&p.id),
            };
            self.acl.policies.insert(p.id.clone(), p);
        }
        for mut r in c.roles {
            r.create_index = self.acl.roles.get(&r.id).map_or(index, |o| o.create_index);
            r.modify_index = index;
            self.acl.roles.insert(r.id.clone(), r);
        }
        for mut t in c.tokens {
            // The primary's token owns its secret: a copy here under another accessor (an initial
            // management token made before this datacenter replicated) gives way.
            if let Some(other) = self.acl.by_secret.get(&t.secret_id).filter(|a| **a != t.accessor_id).cloned() {
                self.acl.tokens.remove(&other);
            }
            if let Some(old) = self.acl.tokens.get(&t.accessor_id) {
                self.acl.by_secret.remove(&old.secret_id);
            }
            t.create_index = self.acl.tokens.get(&t.accessor_id).map_or(index, |o| o.create_index);
            t.modify_index = index;
            self.acl.by_secret.insert(t.secret_id.clone(), t.accessor_id.clone());
            self.acl.tokens.insert(t.accessor_id.clone(), t);
        }
        for accessor in c.deleted_tokens {
            if let Some(t) = self.acl.tokens.remove(&accessor) {
                self.acl.by_secret.remove(&t.secret_id);
            }
        }
        for id in c.deleted_roles {
            self.acl.roles.remove(&id);
            for t in self.acl.tokens.values_mut() {
                t.roles.retain(|l| l.id != id);
            }
        }
        for id in c.deleted_policies {
            self.acl.policies.remove(&id);
            self.acl.compiled.remove(&id);
            for t in self.acl.tokens.values_mut() {
                t.policies.retain(|l| l.id != id);
            }
            for r in self.acl.roles.values_mut() {
                r.policies.retain(|l| l.id != id);
            }
        }
        self.acl_touch(index, touched);
        CommandResult::None
    }

    /// The secondary's side of a replication round: its policies, roles and global tokens.
    pub fn acl_replicated_copy(&self) -> (Vec<AclPolicy>, Vec<AclRole>, Vec<AclToken>) {
        (
            self.acl.policies.values().cloned().collect(),
            self.acl.roles.values().cloned().collect(),
            self.acl.tokens.values().filter(|t| !t.local).cloned().collect(),
        )
    }

    /// Accessors of the tokens expired at `now` (RFC 3339 UTC timestamps of one form compare as strings).
    pub fn acl_expired_tokens(&self, now: &str) -> Vec<String> {
        self.acl
            .tokens
            .values()
            .filter(|t| t.expiration_time.as_deref().is_some_and(|exp| exp <= now))
            .map(|t| t.accessor_id.clone())
            .collect()
    }

    pub(super) fn acl_binding_rule_delete(&mut self, index: u64, id: &str, touched: &mut Touched) -> CommandResult {
        if self.acl.binding_rules.remove(id).is_some() {
            self.acl_touch(index, touched);
        }
        CommandResult::Bool(true)
    }

    // ---- reads ----

    pub fn acl_auth_method(&self, name: &str) -> (u64, Option<AclAuthMethod>) {
        (self.indexes.acl, self.acl.auth_methods.get(name).cloned())
    }

    pub fn acl_auth_methods(&self) -> (u64, Vec<AclAuthMethod>) {
        (self.indexes.acl, self.acl.auth_methods.values().cloned().collect())
    }

    pub fn acl_binding_rule(&self, id: &str) -> (u64, Option<AclBindingRule>) {
        (self.indexes.acl, self.acl.binding_rules.get(id).cloned())
    }

    pub fn acl_binding_rules(&self) -> (u64, Vec<AclBindingRule>) {
        (self.indexes.acl, self.acl.binding_rules.values().cloned().collect())
    }

    pub fn acl_bootstrapped(&self) -> bool {
        self.acl.bootstrapped_at.is_some()
    }

    pub fn acl_token(&self, accessor: &str) -> (u64, Option<AclToken>) {
        (self.indexes.acl, self.acl.tokens.get(accessor).cloned())
    }

    pub fn acl_tokens(&self) -> (u64, Vec<AclToken>) {
        (self.indexes.acl, self.acl.tokens.values().cloned().collect())
    }

    pub fn acl_policy(&self, id: &str) -> (u64, Option<AclPolicy>) {
        (self.indexes.acl, self.acl.policies.get(id).cloned())
    }

    pub fn acl_policy_by_name(&self, name: &str) -> (u64, Option<AclPolicy>) {
        (self.indexes.acl, self.acl.policies.values().find(|p| p.name == name).cloned())
    }

    pub fn acl_policies(&self) -> (u64, Vec<AclPolicy>) {
        (self.indexes.acl, self.acl.policies.values().cloned().collect())
    }

    pub fn acl_role(&self, id: &str) -> (u64, Option<AclRole>) {
        (self.indexes.acl, self.acl.roles.get(id).cloned())
    }

    pub fn acl_role_by_name(&self, name: &str) -> (u64, Option<AclRole>) {
        (self.indexes.acl, self.acl.roles.values().find(|r| r.name == name).cloned())
    }

    pub fn acl_roles(&self) -> (u64, Vec<AclRole>) {
        (self.indexes.acl, self.acl.roles.values().cloned().collect())
    }

    /// The token with this secret, compared in constant time; `now_rfc3339` for expiry checks.
    pub fn acl_token_by_secret(&self, secret: &str, now_rfc3339: &str) -> Option<&AclToken> {
        let accessor = self.acl.by_secret.get(secret)?;
        let token = self.acl.tokens.get(accessor)?;
        if !bool::from(token.secret_id.as_bytes().ct_eq(secret.as_bytes())) {
            return None;
        }
        // RFC 3339 UTC timestamps of equal form compare as strings.
        if token.expiration_time.as_deref().is_some_and(|exp| exp <= now_rfc3339) {
            return None;
        }
        Some(token)
    }

    /// Whether any global token is here: in a replicating secondary, whether replication has
    /// brought its first tokens (until then, tokens are asked of the primary).
    pub fn acl_holds_global_tokens(&self) -> bool {
        self.acl.tokens.values().any(|t| !t.local)
    }

    /// The rules a token acts with in this datacenter: its policies', its roles' policies', and
    /// those its and its roles' identities and templated policies stand for. `None`: management.
    pub fn acl_effective_rules<'a>(&'a self, token: &'a AclToken, datacenter: &str) -> Option<Vec<Cow<'a, Rules>>> {
        let mut policy_ids: Vec<&str> = token.policies.iter().map(|l| l.id.as_str()).collect();
        let mut services: Vec<&AclServiceIdentity> = token.service_identities.iter().collect();
        let mut nodes: Vec<&AclNodeIdentity> = token.node_identities.iter().collect();
        let mut templated: Vec<&AclTemplatedPolicy> = token.templated_policies.iter().collect();
        for role in &token.roles {
            if let Some(r) = self.acl.roles.get(&role.id) {
                policy_ids.extend(r.policies.iter().map(|l| l.id.as_str()));
                services.extend(&r.service_identities);
                nodes.extend(&r.node_identities);
                templated.extend(&r.templated_policies);
            }
        }
        if policy_ids.contains(&GLOBAL_MANAGEMENT_POLICY_ID) {
            return None;
        }
        let here = |dcs: &[String]| dcs.is_empty() || dcs.iter().any(|d| d == datacenter);
        let from_templates = templated.into_iter().filter(|t| here(&t.datacenters)).filter_map(|t| {
            crate::acl::templated::rules(&t.template_name, t.template_variables.as_ref().map(|v| v.name.as_str())).ok()
        });
        let synthesized = services
            .iter()
            .filter(|s| here(&s.datacenters))
            .map(|s| Rules::service_identity(&s.service_name))
            .chain(nodes.iter().filter(|n| n.datacenter == datacenter).map(|n| Rules::node_identity(&n.node_name)))
            .chain(from_templates)
            .map(Cow::Owned);
        let compiled = policy_ids.iter().filter_map(|id| self.acl.compiled.get(*id)).map(Cow::Borrowed);
        Some(compiled.chain(synthesized).collect())
    }

    /// The authorizer of a token (see `acl_effective_rules`).
    pub fn acl_resolve(&self, secret: &str, default_allow: bool, now_rfc3339: &str, datacenter: &str) -> Resolved {
        let Some(token) = self.acl_token_by_secret(secret, now_rfc3339) else { return Resolved::NotFound };
        let authorizer = match self.acl_effective_rules(token, datacenter) {
            None => Authorizer::management(),
            Some(rules) => Authorizer::new(default_allow, rules.iter().map(|r| r.as_ref())),
        };
        Resolved::Token { accessor: token.accessor_id.clone(), authorizer }
    }
}
