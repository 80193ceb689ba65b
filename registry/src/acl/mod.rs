//! ACLs: rules (HCL/JSON) and the authorizer that applies them. Pure: no I/O, no Raft.

pub mod authorizer;
pub mod replication;
#[cfg(feature = "agent")]
pub mod resolver;
pub mod rules;
pub mod templated;
pub mod token_cache;

pub use authorizer::Authorizer;

/// What a token may do, as a server tells an agent that resolves tokens itself (a sidecar):
/// `/v1/internal/acl/rules` answers it for the token of the request.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EffectiveRules {
    pub management: bool,
    pub default_allow: bool,
    pub rules: Vec<Rules>,
}

impl EffectiveRules {
    pub fn authorizer(&self) -> Authorizer {
        if self.management {
            Authorizer::management()
        } else {
            Authorizer::new(self.default_allow, &self.rules)
        }
    }
}
pub use rules::{Access, Global, Resource, Rule, RuleError, Rules};
