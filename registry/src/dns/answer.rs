//! What a DNS name asks for and what the catalog answers, as Consul's DNS interface does; pure.
//!
//! Names (under the domain, `consul.` by default; a datacenter label may follow the type):
//! - `<service>.service`, `<tag>.<service>.service`, RFC 2782 `_<service>._<tag|tcp>.service`;
//! - `<node>.node`;
//! - `<hex ip>.addr` (the SRV targets of instances with their own address);
//! - `<query>.query` (prepared queries, executed as `/v1/query/<name>/execute`).
//!
//! A service or query name with another datacenter's label is answered by that datacenter.

use std::net::IpAddr;

use rand::seq::SliceRandom;

use crate::api::{CatalogNode, HealthStatus, ServiceEntry, ServiceEntryRef};

/// What a query name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// `dc`: another datacenter's label (None: this one).
    Service {
        service: String,
        tag: Option<String>,
        dc: Option<String>,
    },
    Query {
        name: String,
        dc: Option<String>,
    },
    Node {
        node: String,
        dc: Option<String>,
    },
    Addr {
        ip: IpAddr,
    },
}

/// Why a name gets NXDOMAIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotFound {
    /// Not under the domain at all (another resolver's business).
    OutsideDomain,
    /// Under the domain, but no such name.
    NoSuchName,
}

/// Reads `qname` (any case, with or without the final dot) under `domain` in datacenter `dc`.
pub fn parse(qname: &str, domain: &str, dc: &str) -> Result<Lookup, NotFound> {
    let qname = qname.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let rest =
        if qname == domain { "" } else { qname.strip_suffix(&format!(".{domain}")).ok_or(NotFound::OutsideDomain)? };
    let mut labels: Vec<&str> = rest.split('.').filter(|l| !l.is_empty()).collect();
    // An optional datacenter label after the type.
    let kinds = ["service", "node", "addr", "query"];
    let has_dc =
        labels.len() >= 2 && !kinds.contains(&labels[labels.len() - 1]) && kinds.contains(&labels[labels.len() - 2]);
    let other_dc = match has_dc.then(|| labels.pop()).flatten() {
        Some(d) if d != dc => Some(d.to_string()),
        _ => None,
    };
    let kind = labels.pop().ok_or(NotFound::NoSuchName)?;
    let service = |service: &str, tag: Option<&str>| {
        Ok(Lookup::Service { service: service.to_string(), tag: tag.map(str::to_string), dc: other_dc.clone() })
    };
    match (kind, labels.as_slice()) {
        ("service", [name]) => service(name, None),
        ("service", [first, second]) if first.starts_with('_') && second.starts_with('_') => {
            let tag = &second[1..];
            service(&first[1..], (tag != "tcp").then_some(tag))
        }
        ("service", [tag, name]) => service(name, Some(tag)),
        ("query", [name]) => Ok(Lookup::Query { name: name.to_string(), dc: other_dc.clone() }),
        ("node", parts) if !parts.is_empty() => Ok(Lookup::Node { node: parts.join("."), dc: other_dc.clone() }),
        // Addresses are answered here only (they are not a catalog lookup).
        _ if other_dc.is_some() => Err(NotFound::NoSuchName),
        ("addr", [hex]) => decode_addr(hex).map(|ip| Lookup::Addr { ip }).ok_or(NotFound::NoSuchName),
        _ => Err(NotFound::NoSuchName),
    }
}

/// `<hex>.addr` as Consul encodes it: 8 hex digits for IPv4, 32 for IPv6.
pub fn encode_addr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
        IpAddr::V6(v6) => v6.octets().iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn decode_addr(hex: &str) -> Option<IpAddr> {
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect();
    match bytes?.as_slice() {
        b if b.len() == 4 => Some(IpAddr::from([b[0], b[1], b[2], b[3]])),
        b if b.len() == 16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

/// What a service lookup asks of the catalog.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want<'a> {
    pub tag: Option<&'a str>,
    /// Another datacenter's catalog (None: this one).
    pub datacenter: Option<&'a str>,
    /// Leave out instances with a warning check too.
    pub only_passing: bool,
    /// At most this many instances (a UDP answer's limit); None: all.
    pub limit: Option<usize>,
}

/// Whether DNS hands an instance out: none of its checks critical (with `only_passing`, all
/// passing), and the tag when one is asked for (case-insensitively, as Consul's DNS matches tags).
fn wanted<'a>(tags: &[String], mut statuses: impl Iterator<Item = &'a HealthStatus>, want: &Want<'_>) -> bool {
    want.tag.is_none_or(|t| tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
        && statuses.all(|s| match s {
            HealthStatus::Critical => false,
            HealthStatus::Warning => !want.only_passing,
            _ => true,
        })
}

pub fn healthy_ref(e: &ServiceEntryRef<'_>, want: &Want<'_>) -> bool {
    wanted(&e.service.tags, e.checks.iter().map(|c| &c.status), want)
}

/// The instances DNS hands out, of a whole list.
pub fn healthy(entries: Vec<ServiceEntry>, want: &Want<'_>) -> Vec<ServiceEntry> {
    entries.into_iter().filter(|e| wanted(&e.service.tags, e.checks.iter().map(|c| &c.status), want)).collect()
}

/// Shuffles `items` (every answer a different order, as Consul's) and keeps at most `limit`;
/// says whether some were left out. Picking before copying lets a server copy only what a UDP
/// answer can hold.
pub fn pick<T>(mut items: Vec<T>, limit: Option<usize>) -> (Vec<T>, bool) {
    items.shuffle(&mut rand::rng());
    match limit {
        Some(n) if items.len() > n => {
            items.truncate(n);
            (items, true)
        }
        _ => (items, false),
    }
}

/// What [`pick`] picks, from a list kept for many answers: only the picked items are copied.
pub fn pick_from<T: Clone>(items: &[T], limit: Option<usize>) -> (Vec<T>, bool) {
    match limit {
        Some(n) if items.len() > n => {
            // In random order, as a shuffle's first `n`.
            let picked = rand::seq::index::sample(&mut rand::rng(), items.len(), n);
            (picked.into_iter().map(|i| items[i].clone()).collect(), true)
        }
        _ => pick(items.to_vec(), None),
    }
}

/// One answer record, before it becomes wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    Ip { name: String, ip: IpAddr },
    Srv { name: String, port: u16, target: String, weight: u16 },
    Txt { name: String, text: String },
}

/// Where an instance is reached: its own address, else its node's.
fn instance_addr(e: &ServiceEntry) -> &str {
    if e.service.address.is_empty() {
        &e.node.address
    } else {
        &e.service.address
    }
}

/// The SRV target of an instance (its node's name, or `<hex>.addr` for an instance with its own
/// address) and the address record that goes with it.
fn srv_target(e: &ServiceEntry, dc: &str, domain: &str) -> (String, Option<IpAddr>) {
    let domain = domain.trim_end_matches('.');
    match e.service.address.parse::<IpAddr>() {
        Ok(ip) if !e.service.address.is_empty() => (format!("{}.addr.{dc}.{domain}.", encode_addr(ip)), Some(ip)),
        _ => (format!("{}.node.{dc}.{domain}.", e.node.node), e.node.address.parse().ok()),
    }
}

/// Answers for a service lookup: address records for A/AAAA/ANY, SRV records (with the targets'
/// addresses as additionals) for SRV. `qtype` is "A", "AAAA", "SRV", "ANY" or anything else
/// (which gets no records).
pub fn service_records(
    qname: &str,
    qtype: &str,
    entries: &[ServiceEntry],
    dc: &str,
    domain: &str,
) -> (Vec<Rec>, Vec<Rec>) {
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    for e in entries {
        match qtype {
            "SRV" => {
                let (target, ip) = srv_target(e, dc, domain);
                // Consul's weights: passing instances weigh Weights.Passing, warning ones Weights.Warning.
                let warning = e.checks.iter().any(|c| c.status == HealthStatus::Warning);
                let weight = if warning { e.service.weights.warning } else { e.service.weights.passing };
                answers.push(Rec::Srv {
                    name: qname.to_string(),
                    port: e.service.port,
                    target: target.clone(),
                    weight: weight.clamp(0, u16::MAX as i32) as u16,
                });
                if let Some(ip) = ip {
                    additionals.push(Rec::Ip { name: target, ip });
                }
            }
            "A" | "AAAA" | "ANY" => {
                if let Ok(ip) = instance_addr(e).parse::<IpAddr>() {
                    if qtype == "ANY" || (qtype == "A") == ip.is_ipv4() {
                        answers.push(Rec::Ip { name: qname.to_string(), ip });
                    }
                }
            }
            _ => {}
        }
    }
    // One address record per address, as Consul answers (a node may run the service twice).
    let mut seen = std::collections::HashSet::new();
    answers.retain(|r| !matches!(r, Rec::Ip { ip, .. } if !seen.insert(*ip)));
    (answers, additionals)
}

/// Answers for a node lookup: its address for A/AAAA/ANY, its meta as TXT (`key=value`) for
/// TXT/ANY.
pub fn node_records(qname: &str, qtype: &str, node: &CatalogNode) -> Vec<Rec> {
    let mut out = Vec::new();
    if let Ok(ip) = node.node.address.parse::<IpAddr>() {
        if qtype == "ANY" || (qtype == "A" && ip.is_ipv4()) || (qtype == "AAAA" && ip.is_ipv6()) {
            out.push(Rec::Ip { name: qname.to_string(), ip });
        }
    }
    if qtype == "TXT" || qtype == "ANY" {
        for (k, v) in node.node.meta.iter().flatten() {
            out.push(Rec::Txt { name: qname.to_string(), text: format!("{k}={v}") });
        }
    }
    out
}

/// Keeps at most `limit` answers of a UDP reply (and the additionals that go with them); says
/// whether any were left out, so the reply is marked truncated and the client retries over TCP.
pub fn limit_answers(answers: &mut Vec<Rec>, additionals: &mut Vec<Rec>, limit: usize) -> bool {
    if answers.len() <= limit {
        return false;
    }
    answers.truncate(limit);
    let kept: Vec<&str> = answers
        .iter()
        .filter_map(|r| match r {
            Rec::Srv { target, .. } => Some(target.as_str()),
            _ => None,
        })
        .collect();
    additionals.retain(|r| matches!(r, Rec::Ip { name, .. } if kept.contains(&name.as_str())));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HealthCheck, Node, NodeService};

    #[test]
    fn names_as_consul_reads_them() {
        let p = |n: &str| parse(n, "consul.", "dc1");
        let svc =
            |s: &str, t: Option<&str>| Ok(Lookup::Service { service: s.into(), tag: t.map(str::to_string), dc: None });
        assert_eq!(p("web.service.consul."), svc("web", None));
        assert_eq!(p("WEB.Service.Consul"), svc("web", None));
        assert_eq!(p("web.service.dc1.consul."), svc("web", None));
        assert_eq!(p("v1.web.service.consul."), svc("web", Some("v1")));
        assert_eq!(p("_web._tcp.service.consul."), svc("web", None));
        assert_eq!(p("_web._v1.service.consul."), svc("web", Some("v1")));
        assert_eq!(p("db-1.node.consul."), Ok(Lookup::Node { node: "db-1".into(), dc: None }));
        assert_eq!(p("db-1.node.dc1.consul."), Ok(Lookup::Node { node: "db-1".into(), dc: None }));
        assert_eq!(p("7f000001.addr.dc1.consul."), Ok(Lookup::Addr { ip: "127.0.0.1".parse().unwrap() }));
        let in_dc2 = Lookup::Service { service: "web".into(), tag: Some("v1".into()), dc: Some("dc2".into()) };
        assert_eq!(p("v1.web.service.dc2.consul."), Ok(in_dc2), "another datacenter's");
        assert_eq!(p("db-1.node.dc2.consul."), Ok(Lookup::Node { node: "db-1".into(), dc: Some("dc2".into()) }));
        assert_eq!(p("7f000001.addr.dc2.consul."), Err(NotFound::NoSuchName), "addresses only here");
        assert_eq!(p("web.query.consul."), Ok(Lookup::Query { name: "web".into(), dc: None }));
        assert_eq!(p("web.query.dc2.consul."), Ok(Lookup::Query { name: "web".into(), dc: Some("dc2".into()) }));
        assert_eq!(p("a.b.web.service.consul."), Err(NotFound::NoSuchName));
        assert_eq!(p("zz.addr.consul."), Err(NotFound::NoSuchName));
        assert_eq!(p("consul."), Err(NotFound::NoSuchName));
        assert_eq!(p("example.com."), Err(NotFound::OutsideDomain));
        assert_eq!(parse("web.service.roster.", "roster", "dc1"), svc("web", None));
        assert_eq!(encode_addr("::1".parse().unwrap()).len(), 32);
    }

    fn entry(node: &str, addr: &str, svc_addr: &str, tags: &[&str], status: HealthStatus) -> ServiceEntry {
        ServiceEntry {
            node: Node { node: node.into(), address: addr.into(), ..Default::default() },
            service: NodeService {
                service: "web".into(),
                address: svc_addr.into(),
                port: 8080,
                tags: tags.iter().map(|t| t.to_string()).collect(),
                weights: crate::api::Weights { passing: 1, warning: 1 },
                ..Default::default()
            },
            checks: vec![HealthCheck { status, ..Default::default() }],
        }
    }

    #[test]
    fn only_healthy_instances_with_the_tag_are_answered() {
        let all = vec![
            entry("a", "10.0.0.1", "", &["v1"], HealthStatus::Passing),
            entry("b", "10.0.0.2", "", &["V2"], HealthStatus::Warning),
            entry("c", "10.0.0.3", "", &["v1"], HealthStatus::Critical),
        ];
        let names = |v: Vec<ServiceEntry>| v.into_iter().map(|e| e.node.node).collect::<Vec<_>>();
        let want = |tag, only_passing| Want { tag, only_passing, limit: None, datacenter: None };
        assert_eq!(names(healthy(all.clone(), &want(None, false))), ["a", "b"]);
        assert_eq!(names(healthy(all.clone(), &want(None, true))), ["a"]);
        assert_eq!(names(healthy(all.clone(), &want(Some("v2"), false))), ["b"]);
        let refs: Vec<ServiceEntryRef<'_>> = all
            .iter()
            .map(|e| ServiceEntryRef { node: &e.node, service: &e.service, checks: e.checks.iter().collect() })
            .collect();
        let kept: Vec<&str> =
            refs.iter().filter(|e| healthy_ref(e, &want(None, false))).map(|e| e.node.node.as_str()).collect();
        assert_eq!(kept, ["a", "b"], "the same reading on borrowed entries");
        let (three, more) = pick((0..10).collect::<Vec<_>>(), Some(3));
        assert_eq!((three.len(), more), (3, true));
        let (all_of_them, more) = pick((0..3).collect::<Vec<_>>(), Some(3));
        assert_eq!((all_of_them.len(), more), (3, false));
    }

    #[test]
    fn srv_targets_and_their_addresses() {
        let entries = vec![
            entry("a", "10.0.0.1", "", &[], HealthStatus::Passing),
            entry("b", "10.0.0.2", "192.168.1.9", &[], HealthStatus::Passing),
            entry("c", "fd00::3", "", &[], HealthStatus::Passing),
        ];
        let (answers, extra) = service_records("web.service.consul.", "SRV", &entries, "dc1", "consul.");
        assert_eq!(
            answers[1],
            Rec::Srv {
                name: "web.service.consul.".into(),
                port: 8080,
                target: "c0a80109.addr.dc1.consul.".into(),
                weight: 1
            }
        );
        assert_eq!(extra[0], Rec::Ip { name: "a.node.dc1.consul.".into(), ip: "10.0.0.1".parse().unwrap() });
        let (a, _) = service_records("web.service.consul.", "A", &entries, "dc1", "consul.");
        assert_eq!(a.len(), 2, "the instance's own address for b; no IPv6 for A");
        let twice = [entries[0].clone(), entries[2].clone(), entries[0].clone()];
        let (a, _) = service_records("web.service.consul.", "ANY", &twice, "dc1", "consul.");
        assert_eq!(a.len(), 2, "one record per address, wherever the repeat falls");
        let (aaaa, _) = service_records("web.service.consul.", "AAAA", &entries, "dc1", "consul.");
        assert_eq!(aaaa, vec![Rec::Ip { name: "web.service.consul.".into(), ip: "fd00::3".parse().unwrap() }]);
        let (mut answers, mut extra) = (answers, extra);
        assert!(limit_answers(&mut answers, &mut extra, 2));
        assert_eq!((answers.len(), extra.len()), (2, 2));
        assert!(!limit_answers(&mut answers, &mut extra, 3));
    }
}
