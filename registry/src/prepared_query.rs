//! Prepared queries, pure: validating a definition as Consul does, which query a name or ID
//! resolves to (templates included), rendering a template for the name asked, filtering a
//! service's instances as a query asks, and the datacenters a failover tries. The HTTP layer
//! (`http/query.rs`) runs them against the state and, for failovers, other datacenters.

use crate::api::{HealthStatus, PreparedQuery, QueryFailover, ServiceEntry, ServiceQuery};

/// The one template type Consul has: the query's name is a prefix of the names it answers.
pub const NAME_PREFIX_MATCH: &str = "name_prefix_match";

/// What Consul's `parseQuery` refuses, with its messages.
pub fn validate(q: &PreparedQuery) -> Result<(), String> {
    if uuid::Uuid::parse_str(&q.name).is_ok() {
        return Err("Query name cannot be a UUID".into());
    }
    match q.template.kind.as_str() {
        "" => {}
        NAME_PREFIX_MATCH => {
            if !q.template.regexp.is_empty() {
                regex::Regex::new(&q.template.regexp).map_err(|e| format!("Bad Regexp: {e}"))?;
            }
        }
        other => return Err(format!("Bad Template.Type '{other}'")),
    }
    if q.service.service.is_empty() {
        return Err("Must provide a Service name to query".into());
    }
    if q.service.failover.nearest_n < 0 {
        return Err(format!("Bad NearestN '{}', must be >= 0", q.service.failover.nearest_n));
    }
    if !q.dns.ttl.is_empty() {
        crate::api::parse_go_duration(&q.dns.ttl).map_err(|e| format!("Bad DNS TTL '{}': {e}", q.dns.ttl))?;
    }
    // A template's variables must be ones it can fill: render it once for its own name.
    if q.template.kind == NAME_PREFIX_MATCH {
        render(q, &q.name)?;
    }
    Ok(())
}

/// The query `id_or_name` names, rendered for that name when it is a template: an ID first, then
/// an exact name, then the template with the longest name that prefixes it.
pub fn resolve<'a>(
    queries: impl IntoIterator<Item = &'a PreparedQuery> + Clone,
    id_or_name: &str,
) -> Option<Result<PreparedQuery, String>> {
    if let Some(q) = queries.clone().into_iter().find(|q| q.id == id_or_name) {
        return Some(render_if_template(q, &q.name.clone()));
    }
    if let Some(q) = queries.clone().into_iter().find(|q| q.name == id_or_name && !id_or_name.is_empty()) {
        return Some(render_if_template(q, id_or_name));
    }
    queries
        .into_iter()
        .filter(|q| q.template.kind == NAME_PREFIX_MATCH && id_or_name.starts_with(&q.name))
        .max_by_key(|q| q.name.len())
        .map(|q| render_if_template(q, id_or_name))
}

fn render_if_template(q: &PreparedQuery, name: &str) -> Result<PreparedQuery, String> {
    if q.template.kind == NAME_PREFIX_MATCH {
        render(q, name)
    } else {
        Ok(q.clone())
    }
}

/// Fills a template's `${name.full}`, `${name.prefix}`, `${name.suffix}` and `${match(N)}` (the
/// template's regexp against the name) in every text of its service query.
pub fn render(q: &PreparedQuery, name: &str) -> Result<PreparedQuery, String> {
    let groups: Vec<String> = if q.template.regexp.is_empty() {
        Vec::new()
    } else {
        let re = regex::Regex::new(&q.template.regexp).map_err(|e| format!("Bad Regexp: {e}"))?;
        re.captures(name)
            .map(|c| c.iter().map(|m| m.map_or(String::new(), |m| m.as_str().to_string())).collect())
            .unwrap_or_default()
    };
    let vars = |var: &str| -> Result<String, String> {
        Ok(match var {
            "name.full" => name.to_string(),
            "name.prefix" => q.name.clone(),
            "name.suffix" => name.strip_prefix(q.name.as_str()).unwrap_or(name).to_string(),
            "agent.segment" => String::new(),
            v => match v.strip_prefix("match(").and_then(|r| r.strip_suffix(')')).map(str::parse::<usize>) {
                Some(Ok(n)) => groups.get(n).cloned().unwrap_or_default(),
                _ => return Err(format!("Failed to render template: unknown variable ${{{v}}}")),
            },
        })
    };
    let fill = |text: &str| -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| format!("Failed to render template: unclosed ${{ in {text:?}"))?;
            out.push_str(&vars(rest[start + 2..start + end].trim())?);
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    };
    let mut r = q.clone();
    let s = &mut r.service;
    s.service = fill(&s.service)?;
    s.near = fill(&s.near)?;
    if let Some(tags) = &mut s.tags {
        let mut filled = Vec::new();
        for t in tags.iter() {
            let t = fill(t)?;
            if !(t.is_empty() && q.template.remove_empty_tags) {
                filled.push(t);
            }
        }
        *tags = filled;
    }
    if let Some(dcs) = &mut s.failover.datacenters {
        for d in dcs.iter_mut() {
            *d = fill(d)?;
        }
    }
    for meta in [&mut s.node_meta, &mut s.service_meta].into_iter().flatten() {
        for v in meta.values_mut() {
            *v = fill(v)?;
        }
    }
    Ok(r)
}

/// The instances a query returns: none with a critical check (a warning one too with
/// `OnlyPassing`), checks in `IgnoreCheckIDs` aside; tags as asked (`!tag` excludes, compared
/// without case, as Consul does); node and service meta equal.
pub fn filter(q: &ServiceQuery, entries: Vec<ServiceEntry>) -> Vec<ServiceEntry> {
    let ignored = q.ignore_check_ids.as_deref().unwrap_or_default();
    entries
        .into_iter()
        .filter(|e| {
            e.checks.iter().filter(|c| !ignored.contains(&c.check_id)).all(|c| match c.status {
                HealthStatus::Passing => true,
                HealthStatus::Warning => !q.only_passing,
                HealthStatus::Critical | HealthStatus::Maintenance => false,
            })
        })
        .filter(|e| {
            q.tags.iter().flatten().all(|want| {
                let has = |t: &str| e.service.tags.iter().any(|x| x.eq_ignore_ascii_case(t));
                match want.strip_prefix('!') {
                    Some(not) => !has(not),
                    None => has(want),
                }
            })
        })
        .filter(|e| {
            let node_meta = e.node.meta.as_ref();
            q.node_meta.iter().flatten().all(|(k, v)| node_meta.and_then(|m| m.get(k)) == Some(v))
        })
        .filter(|e| {
            let meta = e.service.meta.as_ref();
            q.service_meta.iter().flatten().all(|(k, v)| meta.and_then(|m| m.get(k)) == Some(v))
        })
        .collect()
}

/// The datacenters a failover tries, in order: the `NearestN` nearest others (`by_distance` is
/// every known datacenter, nearest first), then `Datacenters`, each once, never `own`.
pub fn failover_targets(f: &QueryFailover, own: &str, by_distance: &[String]) -> Vec<String> {
    let n = usize::try_from(f.nearest_n).unwrap_or(0);
    let mut out: Vec<String> = by_distance.iter().filter(|d| *d != own).take(n).cloned().collect();
    for d in f.datacenters.iter().flatten() {
        if d != own && !out.contains(d) {
            out.push(d.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HealthCheck, Node, NodeService, QueryTemplate};

    fn query(name: &str, service: &str) -> PreparedQuery {
        PreparedQuery {
            id: format!("id-{name}"),
            name: name.into(),
            service: ServiceQuery { service: service.into(), ..Default::default() },
            ..Default::default()
        }
    }

    fn template(name: &str, service: &str, regexp: &str) -> PreparedQuery {
        PreparedQuery {
            template: QueryTemplate { kind: NAME_PREFIX_MATCH.into(), regexp: regexp.into(), remove_empty_tags: true },
            ..query(name, service)
        }
    }

    #[test]
    fn definitions_are_checked_with_consuls_messages() {
        assert_eq!(validate(&query("q", "")), Err("Must provide a Service name to query".into()));
        let mut q = query("q", "web");
        q.service.failover.nearest_n = -1;
        assert_eq!(validate(&q), Err("Bad NearestN '-1', must be >= 0".into()));
        let mut q = query("q", "web");
        q.dns.ttl = "soon".into();
        assert!(validate(&q).is_err_and(|e| e.starts_with("Bad DNS TTL 'soon'")));
        let mut q = query("q", "web");
        q.template.kind = "regex".into();
        assert_eq!(validate(&q), Err("Bad Template.Type 'regex'".into()));
        assert!(validate(&template("geo-", "web", "^geo-(")).is_err_and(|e| e.starts_with("Bad Regexp")));
        assert!(validate(&template("geo-", "${nope}", "")).is_err_and(|e| e.contains("unknown variable ${nope}")));
        assert_eq!(
            validate(&query("3f2504e0-4f89-11d3-9a0c-0305e82c3301", "web")),
            Err("Query name cannot be a UUID".into())
        );
        assert_eq!(validate(&template("", "${name.full}", "")), Ok(()));
    }

    #[test]
    fn a_name_resolves_by_id_then_exact_name_then_the_longest_template_prefix() {
        let all = [
            query("web", "web"),
            template("", "${name.full}", ""),
            template("geo-", "${match(1)}", "^geo-(.*)-(primary|replica)$"),
            template("geo-db-", "database", ""),
        ];
        let got = |name: &str| resolve(&all, name).map(|r| r.map(|q| q.service.service));
        assert_eq!(got("id-web"), Some(Ok("web".into())));
        assert_eq!(got("web"), Some(Ok("web".into())));
        assert_eq!(got("geo-cache-primary"), Some(Ok("cache".into())));
        assert_eq!(got("geo-db-replica"), Some(Ok("database".into())), "the longer prefix wins");
        // The catch-all template (empty name) answers any other name as that service.
        assert_eq!(got("billing"), Some(Ok("billing".into())));
        assert_eq!(resolve(&all[..1], "billing"), None);
    }

    #[test]
    fn templates_fill_names_and_matches_and_drop_empty_tags() {
        let mut t = template("geo-", "${match(1)}", "^geo-([a-z]+)-?([a-z]*)$");
        t.service.tags = Some(vec!["${match(2)}".into(), "${name.suffix}".into()]);
        t.service.failover.datacenters = Some(vec!["${match(2)}-dc".into()]);
        let r = render(&t, "geo-cache-eu").expect("renders");
        assert_eq!(r.service.service, "cache");
        assert_eq!(r.service.tags, Some(vec!["eu".to_string(), "cache-eu".to_string()]));
        assert_eq!(r.service.failover.datacenters, Some(vec!["eu-dc".to_string()]));
        let r = render(&t, "geo-cache").expect("renders");
        assert_eq!(r.service.tags, Some(vec!["cache".to_string()]), "the empty ${{match(2)}} tag is removed");
    }

    fn entry(id: &str, tags: &[&str], statuses: &[(&str, HealthStatus)]) -> ServiceEntry {
        ServiceEntry {
            node: Node { node: format!("node-{id}"), ..Default::default() },
            service: NodeService {
                id: id.into(),
                service: "web".into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            },
            checks: statuses
                .iter()
                .map(|(cid, s)| HealthCheck { check_id: cid.to_string(), status: *s, ..Default::default() })
                .collect(),
        }
    }

    #[test]
    fn instances_are_filtered_by_health_tags_and_ignored_checks() {
        use HealthStatus::*;
        let all = || {
            vec![
                entry("a", &["Primary"], &[("serfHealth", Passing), ("http", Passing)]),
                entry("b", &["primary", "canary"], &[("http", Warning)]),
                entry("c", &["replica"], &[("http", Critical)]),
                entry("d", &[], &[("http", Critical), ("flaky", Passing)]),
            ]
        };
        let ids = |q: &ServiceQuery| filter(q, all()).into_iter().map(|e| e.service.id).collect::<Vec<_>>();
        let mut q = ServiceQuery { service: "web".into(), ..Default::default() };
        assert_eq!(ids(&q), ["a", "b"], "critical instances never, warning ones unless OnlyPassing");
        q.only_passing = true;
        assert_eq!(ids(&q), ["a"]);
        q.only_passing = false;
        q.tags = Some(vec!["primary".into(), "!canary".into()]);
        assert_eq!(ids(&q), ["a"], "tags without case; ! excludes");
        q.tags = None;
        q.ignore_check_ids = Some(vec!["http".into()]);
        assert_eq!(ids(&q), ["a", "b", "c", "d"]);
    }

    #[test]
    fn a_failover_tries_the_nearest_then_the_listed_datacenters_once_each() {
        let by_distance = ["dc1", "dc3", "dc2", "dc4"].map(String::from);
        let f = QueryFailover { nearest_n: 2, datacenters: Some(vec!["dc2".into(), "dc5".into(), "dc1".into()]) };
        assert_eq!(failover_targets(&f, "dc1", &by_distance), ["dc3", "dc2", "dc5"]);
        assert_eq!(failover_targets(&QueryFailover::default(), "dc1", &by_distance), Vec::<String>::new());
    }
}
