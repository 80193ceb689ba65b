//! Consul ACL rules, in HCL or JSON:
//!
//! ```hcl
//! key_prefix "" { policy = "read" }
//! key "app/config" { policy = "write" }
//! service_prefix "web" { policy = "write" }
//! operator = "read"
//! ```
//!
//! Parsed once, when a policy is written; a bad rule is rejected with its line and the reason.

use std::fmt;

use hcl_edit::structure::{Body, Structure};
use hcl_edit::Span;
use serde::{Deserialize, Serialize};

/// What a rule grants. Order matters: a higher level includes the lower ones, `Deny` grants nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Deny,
    Read,
    List,
    Write,
}

impl Access {
    fn parse(s: &str) -> Option<Access> {
        match s {
            "deny" => Some(Access::Deny),
            "read" => Some(Access::Read),
            "list" => Some(Access::List),
            "write" => Some(Access::Write),
            _ => None,
        }
    }

    /// Combining two policies' rules for the same thing: deny wins, otherwise the more permissive.
    pub fn merge(self, other: Access) -> Access {
        if self == Access::Deny || other == Access::Deny {
            Access::Deny
        } else {
            self.max(other)
        }
    }
}

/// Resources that are matched by name (exact or prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    Key,
    Service,
    Node,
    Session,
    Agent,
    Event,
    Query,
}

impl Resource {
    pub const ALL: [Resource; 7] = [
        Resource::Key,
        Resource::Service,
        Resource::Node,
        Resource::Session,
        Resource::Agent,
        Resource::Event,
        Resource::Query,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Resource::Key => "key",
            Resource::Service => "service",
            Resource::Node => "node",
            Resource::Session => "session",
            Resource::Agent => "agent",
            Resource::Event => "event",
            Resource::Query => "query",
        }
    }

    /// `key` -> (Key, exact), `key_prefix` -> (Key, prefix).
    fn from_block(ident: &str) -> Option<(Resource, bool)> {
        Resource::ALL.iter().find_map(|r| {
            if ident == r.name() {
                Some((*r, false))
            } else if ident.strip_suffix("_prefix") == Some(r.name()) {
                Some((*r, true))
            } else {
                None
            }
        })
    }
}

/// Resources with one access level and no name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Global {
    Operator,
    Acl,
    Keyring,
    Mesh,
}

impl Global {
    fn parse(s: &str) -> Option<Global> {
        match s {
            "operator" => Some(Global::Operator),
            "acl" => Some(Global::Acl),
            "keyring" => Some(Global::Keyring),
            "mesh" => Some(Global::Mesh),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub resource: Resource,
    pub name: String,
    pub prefix: bool,
    pub access: Access,
}

/// One policy's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    pub rules: Vec<Rule>,
    pub globals: Vec<(Global, Access)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Failed to parse ACL rules: line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for RuleError {}

fn line_of(text: &str, offset: Option<std::ops::Range<usize>>) -> usize {
    let end = offset.map_or(0, |r| r.start).min(text.len());
    text[..end].matches('\n').count() + 1
}

impl Rules {
    /// Consul's synthesized policy for a service identity: write on the service and on its sidecar
    /// proxy, read on every service and node (for discovery).
    pub fn service_identity(service: &str) -> Rules {
        let rule = |resource, name: String, prefix, access| Rule { resource, name, prefix, access };
        Rules {
            rules: vec![
                rule(Resource::Service, service.to_string(), false, Access::Write),
                rule(Resource::Service, format!("{service}-sidecar-proxy"), false, Access::Write),
                rule(Resource::Service, String::new(), true, Access::Read),
                rule(Resource::Node, String::new(), true, Access::Read),
            ],
            globals: Vec::new(),
        }
    }

    /// Consul's synthesized policy for a node identity: write on the node, read on every service.
    pub fn node_identity(node: &str) -> Rules {
        let rule = |resource, name: String, prefix, access| Rule { resource, name, prefix, access };
        Rules {
            rules: vec![
                rule(Resource::Node, node.to_string(), false, Access::Write),
                rule(Resource::Service, String::new(), true, Access::Read),
            ],
            globals: Vec::new(),
        }
    }

    /// Parses rules in HCL, or in JSON when the text is a JSON object.
    pub fn parse(text: &str) -> Result<Rules, RuleError> {
        if text.trim_start().starts_with('{') {
            return Self::parse_json(text);
        }
        let body: Body = hcl_edit::parser::parse_body(text)
            .map_err(|e| RuleError { line: e.location().line(), message: e.message().to_string() })?;
        let mut rules = Rules::default();
        for item in body.iter() {
            let line = line_of(text, item.span());
            let err = |message: String| RuleError { line, message };
            match item {
                Structure::Attribute(attr) => {
                    let key = attr.key.as_str();
                    let global = Global::parse(key).ok_or_else(|| err(format!("unknown rule {key:?}")))?;
                    let value = attr.value.as_str().ok_or_else(|| err(format!("{key}: value must be a string")))?;
                    let access = Access::parse(value)
                        .ok_or_else(|| err(format!("{key}: invalid policy {value:?} (read, write, list or deny)")))?;
                    rules.globals.push((global, access));
                }
                Structure::Block(block) => {
                    let ident = block.ident.as_str();
                    let (resource, prefix) =
                        Resource::from_block(ident).ok_or_else(|| err(format!("unknown resource {ident:?}")))?;
                    let [label] = block.labels.as_slice() else {
                        return Err(err(format!("{ident} needs exactly one name, as in {ident} \"name\" {{ ... }}")));
                    };
                    let mut access = None;
                    for inner in block.body.iter() {
                        let inner_line = line_of(text, inner.span());
                        let attr =
                            inner.as_attribute().filter(|a| a.key.as_str() == "policy").ok_or_else(|| RuleError {
                                line: inner_line,
                                message: format!("{ident}: only `policy = \"...\"` is allowed"),
                            })?;
                        let value = attr.value.as_str().unwrap_or("");
                        access = Some(Access::parse(value).ok_or_else(|| RuleError {
                            line: inner_line,
                            message: format!(
                                "{ident} {:?}: invalid policy {value:?} (read, write, list or deny)",
                                label.as_str()
                            ),
                        })?);
                    }
                    let access = access.ok_or_else(|| err(format!("{ident} {:?}: missing policy", label.as_str())))?;
                    if access == Access::List && resource != Resource::Key {
                        return Err(err(format!("{ident}: \"list\" only applies to keys")));
                    }
                    rules.rules.push(Rule { resource, name: label.as_str().to_string(), prefix, access });
                }
            }
        }
        Ok(rules)
    }

    fn parse_json(text: &str) -> Result<Rules, RuleError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| RuleError { line: e.line(), message: format!("invalid JSON: {e}") })?;
        let err = |message: String| RuleError { line: 1, message };
        let obj = value.as_object().ok_or_else(|| err("rules must be a JSON object".into()))?;
        let mut rules = Rules::default();
        for (key, v) in obj {
            if let Some(global) = Global::parse(key) {
                let s = v.as_str().ok_or_else(|| err(format!("{key}: value must be a string")))?;
                let access = Access::parse(s).ok_or_else(|| err(format!("{key}: invalid policy {s:?}")))?;
                rules.globals.push((global, access));
                continue;
            }
            let (resource, prefix) =
                Resource::from_block(key).ok_or_else(|| err(format!("unknown resource {key:?}")))?;
            let named = v.as_object().ok_or_else(|| err(format!("{key}: expected an object of names")))?;
            for (name, body) in named {
                let s = body
                    .get("policy")
                    .and_then(|p| p.as_str())
                    .ok_or_else(|| err(format!("{key} {name:?}: missing policy")))?;
                let access = Access::parse(s).ok_or_else(|| err(format!("{key} {name:?}: invalid policy {s:?}")))?;
                if access == Access::List && resource != Resource::Key {
                    return Err(err(format!("{key}: \"list\" only applies to keys")));
                }
                rules.rules.push(Rule { resource, name: name.clone(), prefix, access });
            }
        }
        Ok(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hcl() {
        let r = Rules::parse(
            "key_prefix \"\" {\n  policy = \"read\"\n}\nkey \"app/secret\" { policy = \"deny\" }\noperator = \"read\"\n",
        )
        .unwrap();
        assert_eq!(r.rules.len(), 2);
        assert_eq!(
            r.rules[0],
            Rule { resource: Resource::Key, name: String::new(), prefix: true, access: Access::Read }
        );
        assert_eq!(r.rules[1].access, Access::Deny);
        assert_eq!(r.globals, vec![(Global::Operator, Access::Read)]);
    }

    #[test]
    fn parses_json() {
        let r = Rules::parse(r#"{"service_prefix": {"web": {"policy": "write"}}, "acl": "read"}"#).unwrap();
        assert_eq!(r.rules[0].resource, Resource::Service);
        assert!(r.rules[0].prefix);
        assert_eq!(r.globals, vec![(Global::Acl, Access::Read)]);
    }

    #[test]
    fn bad_rules_name_the_line_and_reason() {
        let e =
            Rules::parse("key_prefix \"\" { policy = \"read\" }\n\nnode \"x\" { policy = \"admin\" }\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("invalid policy"), "{e}");
        let e = Rules::parse("key_prefix \"\" { policy = \"read\" }\nbogus \"x\" { policy = \"read\" }").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("unknown resource"), "{e}");
        let e = Rules::parse("key \"a\" {\n policy = \"read\"\n").unwrap_err();
        assert!(e.line >= 2, "{e}");
        let e = Rules::parse("service \"a\" { policy = \"list\" }").unwrap_err();
        assert!(e.message.contains("only applies to keys"));
        assert!(Rules::parse("{\"key\": 3}").is_err());
    }
}
