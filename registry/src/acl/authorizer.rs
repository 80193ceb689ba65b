//! Decides what a token may do: its policies' rules merged, the most specific rule winning.
//!
//! For a named resource, an exact rule beats every prefix rule, and a longer prefix beats a shorter
//! one. Rules for the same thing from several policies merge as Consul merges them: deny wins,
//! otherwise the more permissive. Nothing matching falls back to the default policy.

use std::collections::{BTreeMap, HashMap};

use super::rules::{Access, Global, Resource, Rules};

#[derive(Debug, Default, Clone)]
struct Matcher {
    exact: HashMap<String, Access>,
    prefixes: BTreeMap<String, Access>,
}

impl Matcher {
    fn lookup(&self, name: &str) -> Option<Access> {
        if let Some(a) = self.exact.get(name) {
            return Some(*a);
        }
        (0..=name.len())
            .rev()
            .filter(|i| name.is_char_boundary(*i))
            .find_map(|end| self.prefixes.get(&name[..end]).copied())
    }

    /// Every rule at or below `prefix`: what a recursive write must not be denied by.
    fn below<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = Access> + 'a {
        let exact = self.exact.iter().filter(move |(n, _)| n.starts_with(prefix)).map(|(_, a)| *a);
        let prefixes =
            self.prefixes.range(prefix.to_string()..).take_while(move |(n, _)| n.starts_with(prefix)).map(|(_, a)| *a);
        exact.chain(prefixes)
    }
}

#[derive(Debug, Clone)]
pub struct Authorizer {
    management: bool,
    default: Access,
    matchers: HashMap<Resource, Matcher>,
    globals: HashMap<Global, Access>,
}

impl Authorizer {
    /// Full access (the management token, or ACLs disabled).
    pub fn management() -> Self {
        Authorizer { management: true, default: Access::Write, matchers: HashMap::new(), globals: HashMap::new() }
    }

    /// `default_allow`: Consul's `default_policy = "allow"`.
    pub fn new<'a>(default_allow: bool, policies: impl IntoIterator<Item = &'a Rules>) -> Self {
        let mut matchers: HashMap<Resource, Matcher> = HashMap::new();
        let mut globals: HashMap<Global, Access> = HashMap::new();
        for rules in policies {
            for rule in &rules.rules {
                let m = matchers.entry(rule.resource).or_default();
                let map_merge = |a: &mut Access| *a = a.merge(rule.access);
                if rule.prefix {
                    m.prefixes.entry(rule.name.clone()).and_modify(map_merge).or_insert(rule.access);
                } else {
                    m.exact.entry(rule.name.clone()).and_modify(map_merge).or_insert(rule.access);
                }
            }
            for (g, a) in &rules.globals {
                globals.entry(*g).and_modify(|x| *x = x.merge(*a)).or_insert(*a);
            }
        }
        let default = if default_allow { Access::Write } else { Access::Deny };
        Authorizer { management: false, default, matchers, globals }
    }

    pub fn is_management(&self) -> bool {
        self.management
    }

    pub fn access(&self, resource: Resource, name: &str) -> Access {
        if self.management {
            return Access::Write;
        }
        self.matchers.get(&resource).and_then(|m| m.lookup(name)).unwrap_or(self.default)
    }

    pub fn allows(&self, resource: Resource, name: &str, need: Access) -> bool {
        let have = self.access(resource, name);
        have != Access::Deny && have >= need
    }

    /// A write to everything under `prefix` (recursive delete): allowed at the prefix and not denied
    /// or limited by any rule below it.
    pub fn allows_write_prefix(&self, resource: Resource, prefix: &str) -> bool {
        if self.management {
            return true;
        }
        self.allows(resource, prefix, Access::Write)
            && self.matchers.get(&resource).is_none_or(|m| m.below(prefix).all(|a| a == Access::Write))
    }

    /// Reading every key under `prefix` (a txn `get-tree`): no rule below the prefix denies it.
    pub fn allows_read_prefix(&self, prefix: &str) -> bool {
        self.management || self.matchers.get(&Resource::Key).is_none_or(|m| m.below(prefix).all(|a| a != Access::Deny))
    }

    pub fn allows_global(&self, global: Global, need: Access) -> bool {
        if self.management {
            return true;
        }
        let have = self.globals.get(&global).copied().unwrap_or(self.default);
        have != Access::Deny && have >= need
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authz(default_allow: bool, texts: &[&str]) -> Authorizer {
        let rules: Vec<Rules> = texts.iter().map(|t| Rules::parse(t).unwrap()).collect();
        Authorizer::new(default_allow, rules.iter())
    }

    #[test]
    fn most_specific_rule_wins() {
        let a = authz(
            false,
            &[r#"
            key_prefix "" { policy = "read" }
            key_prefix "app/" { policy = "write" }
            key_prefix "app/secret/" { policy = "deny" }
            key "app/secret/public" { policy = "read" }
        "#],
        );
        assert!(a.allows(Resource::Key, "other", Access::Read));
        assert!(!a.allows(Resource::Key, "other", Access::Write));
        assert!(a.allows(Resource::Key, "app/x", Access::Write));
        assert!(!a.allows(Resource::Key, "app/secret/pw", Access::Read));
        assert!(a.allows(Resource::Key, "app/secret/public", Access::Read));
        assert!(!a.allows(Resource::Service, "web", Access::Read), "default deny");
        assert!(!a.allows_write_prefix(Resource::Key, "app/"), "a deny below the prefix blocks a recursive write");
        assert!(a.allows_write_prefix(Resource::Key, "app/x/"));
    }

    #[test]
    fn policies_merge_deny_wins_ties_otherwise_most_permissive() {
        let a = authz(false, &[r#"service "web" { policy = "read" }"#, r#"service "web" { policy = "write" }"#]);
        assert!(a.allows(Resource::Service, "web", Access::Write));
        let a = authz(true, &[r#"service "web" { policy = "write" }"#, r#"service "web" { policy = "deny" }"#]);
        assert!(!a.allows(Resource::Service, "web", Access::Read));
        assert!(a.allows(Resource::Service, "db", Access::Write), "default allow");
    }

    #[test]
    fn globals_and_management() {
        let a = authz(false, &[r#"operator = "read""#]);
        assert!(a.allows_global(Global::Operator, Access::Read));
        assert!(!a.allows_global(Global::Operator, Access::Write));
        assert!(!a.allows_global(Global::Acl, Access::Read));
        let m = Authorizer::management();
        assert!(m.allows_global(Global::Acl, Access::Write) && m.allows(Resource::Key, "x", Access::Write));
    }
}
