//! ACLs: rules (HCL/JSON) and the authorizer that applies them. Pure: no I/O, no Raft.

pub mod authorizer;
pub mod rules;
pub mod templated;

pub use authorizer::Authorizer;
pub use rules::{Access, Global, Resource, Rule, RuleError, Rules};
