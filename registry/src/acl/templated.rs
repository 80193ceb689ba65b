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
    Ok(match checked_name(t, name)? {
        Some(name) => t.template.replace(PLACEHOLDER, name),
        None => t.template.to_string(),
    })
}

/// Where a template puts its `name` variable.
const PLACEHOLDER: &str = "{{.Name}}";

/// The template's variable, validated (`None`: the template takes none).
fn checked_name<'a>(t: &TemplatedPolicy, name: Option<&'a str>) -> Result<Option<&'a str>, String> {
    let template_name = t.template_name;
    if t.schema.is_empty() {
        return Ok(None);
    }
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("Failed to validate templated policy {template_name:?}: name: name is required"))?;
    if !valid_name(name) {
        return Err(format!(
            "Failed to validate templated policy {template_name:?}: name {name:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(Some(name))
}

/// The parsed rules of a template with its variable. Tokens resolve on every request, so each
/// template is parsed once (its placeholder left in) and the name is put into the parsed rules.
pub fn rules(template_name: &str, name: Option<&str>) -> Result<Rules, String> {
    static PARSED: std::sync::OnceLock<Result<Vec<Rules>, String>> = std::sync::OnceLock::new();
    let parsed = PARSED
        .get_or_init(|| {
            TEMPLATES.iter().map(|t| Rules::parse(t.template).map_err(|e: RuleError| e.to_string())).collect()
        })
        .as_ref()
        .map_err(Clone::clone)?;
    let i = TEMPLATES
        .iter()
        .position(|t| t.template_name == template_name)
        .ok_or_else(|| format!("templated policy {template_name:?} not found"))?;
    let mut rules = parsed[i].clone();
    if let Some(name) = checked_name(&TEMPLATES[i], name)? {
        rules.rules.iter_mut().for_each(|r| r.name = r.name.replace(PLACEHOLDER, name));
    }
    Ok(rules)
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
    fn parsed_once_rules_equal_the_rendered_text_parsed() {
        for t in TEMPLATES {
            let text = render(t.template_name, Some("web")).unwrap();
            assert_eq!(
                rules(t.template_name, Some("web")).unwrap(),
                Rules::parse(&text).unwrap(),
                "{}",
                t.template_name
            );
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
