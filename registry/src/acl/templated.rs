//! Consul's templated policies (`builtin/service`, `builtin/node`, `builtin/dns`, ...): named rule
//! templates a token or role links with variables, instead of a policy written for each service.
//! Pure: the catalog of templates, rendering and validation.

use serde::Serialize;

use super::rules::{RuleError, Rules};

/// One template as `/v1/acl/templated-policy/name/:name` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TemplatedPolicy {
    pub template_name: &'static str,
    /// JSON schema of the variables (empty: none).
    pub schema: &'static str,
    /// The rules, with `{{.Name}}` standing for the `name` variable.
    pub template: &'static str,
    pub description: &'static str,
}

const NAME_SCHEMA: &str = r##"{
  "type": "object",
  "properties": { "name": { "type": "string", "$ref": "#/definitions/min-length-one" } },
  "required": ["name"],
  "definitions": { "min-length-one": { "type": "string", "minLength": 1 } }
}"##;

/// Every template Roster knows, by name.
pub const TEMPLATES: &[TemplatedPolicy] = &[
    TemplatedPolicy {
        template_name: "builtin/service",
        schema: NAME_SCHEMA,
        template: r#"service "{{.Name}}" {
  policy = "write"
}
service "{{.Name}}-sidecar-proxy" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}"#,
        description: "Gives the token or role permissions to register a service and discover services in the Consul catalog. It also gives the specified service's sidecar proxy the permission to discover and route traffic to other services.",
    },
    TemplatedPolicy {
        template_name: "builtin/node",
        schema: NAME_SCHEMA,
        template: r#"node "{{.Name}}" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}"#,
        description: "Gives the token or role permissions for a register an agent/node into the catalog. A node is typically a consul agent but can also be a physical server, cloud instance or a container.",
    },
    TemplatedPolicy {
        template_name: "builtin/dns",
        schema: "",
        template: r#"node_prefix "" {
  policy = "read"
}
service_prefix "" {
  policy = "read"
}
query_prefix "" {
  policy = "read"
}"#,
        description: "Gives the token or role permissions for the Consul DNS to query services in the network.",
    },
    TemplatedPolicy {
        template_name: "builtin/nomad-server",
        schema: "",
        template: r#"acl = "write"
agent_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "write"
}"#,
        description: "Gives the token or role permissions required for integration with a nomad server.",
    },
    TemplatedPolicy {
        template_name: "builtin/nomad-client",
        schema: "",
        template: r#"agent_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "write"
}
key_prefix "" {
  policy = "read"
}"#,
        description: "Gives the token or role permissions required for integration with a nomad client.",
    },
    TemplatedPolicy {
        template_name: "builtin/api-gateway",
        schema: NAME_SCHEMA,
        template: r#"mesh = "read"
node_prefix "" {
  policy = "read"
}
service_prefix "" {
  policy = "read"
}
service "{{.Name}}" {
  policy = "write"
}"#,
        description: "Gives the token or role permissions for a Consul api gateway",
    },
];

pub fn template(name: &str) -> Option<&'static TemplatedPolicy> {
    TEMPLATES.iter().find(|t| t.template_name == name)
}

/// Names a template's `name` variable may take: they land inside a quoted rule, so no quotes,
/// backslashes or braces.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The rules text of a template with its variable, or why it cannot be rendered.
pub fn render(template_name: &str, name: Option<&str>) -> Result<String, String> {
    let t = template(template_name).ok_or_else(|| format!("templated policy {template_name:?} not found"))?;
    if t.schema.is_empty() {
        return Ok(t.template.to_string());
    }
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("Failed to validate templated policy {template_name:?}: name: name is required"))?;
    if !valid_name(name) {
        return Err(format!(
            "Failed to validate templated policy {template_name:?}: name {name:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(t.template.replace("{{.Name}}", name))
}

/// The parsed rules of a template with its variable.
pub fn rules(template_name: &str, name: Option<&str>) -> Result<Rules, String> {
    let text = render(template_name, name)?;
    Rules::parse(&text).map_err(|e: RuleError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Access, Authorizer, Resource};

    #[test]
    fn every_template_renders_rules_that_parse() {
        for t in TEMPLATES {
            rules(t.template_name, Some("web")).unwrap_or_else(|e| panic!("{}: {e}", t.template_name));
        }
    }

    #[test]
    fn builtin_service_grants_what_a_service_identity_grants() {
        let r = rules("builtin/service", Some("web")).unwrap();
        let a = Authorizer::new(false, [&r]);
        assert!(a.allows(Resource::Service, "web", Access::Write));
        assert!(a.allows(Resource::Service, "web-sidecar-proxy", Access::Write));
        assert!(!a.allows(Resource::Service, "db", Access::Write));
        assert!(a.allows(Resource::Node, "any", Access::Read));
    }

    #[test]
    fn variables_are_required_and_cannot_inject_rules() {
        assert!(render("builtin/service", None).unwrap_err().contains("name is required"));
        assert!(render("builtin/service", Some("x\" { policy = \"write\" } key_prefix \"")).is_err());
        assert!(render("builtin/none", Some("x")).unwrap_err().contains("not found"));
        assert!(render("builtin/dns", None).is_ok(), "no variables");
    }
}
