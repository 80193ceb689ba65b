//! Consul's DNS interface (`<service>.service.consul`, `<node>.node.consul`...), on UDP and TCP,
//! built on hickory-server. `answer` reads names and builds answers (pure); this module is the
//! glue: a [`Catalog`] to ask (a server reads its own state), a hickory `RequestHandler`, and
//! `serve`. Answers are authoritative, shuffled, only healthy instances; a UDP answer keeps at most
//! `udp_answer_limit` records and says it was truncated, so resolvers retry over TCP; hickory
//! truncates further to the client's buffer (512 bytes without EDNS). Unknown names get NXDOMAIN
//! with the zone's SOA; names outside the domain are refused (no recursors yet).

pub mod answer;

/// hickory's DNS message types, for clients and tests.
pub use hickory_server::proto;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use self::answer::{Lookup, NotFound, Rec};
use crate::api::{CatalogNode, ServiceEntry};

/// Consul's `dns_config` settings that Roster honours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsSettings {
    /// The domain answered (Consul's `domain`, `consul.`).
    pub domain: String,
    /// Leave out instances with a warning check too (not only critical ones).
    pub only_passing: bool,
    /// TTL of node answers and of service answers, in seconds (0, as Consul's defaults).
    pub node_ttl_secs: u32,
    pub service_ttl_secs: u32,
    /// Most answer records in a UDP reply (Consul's default 3); more makes it truncated.
    pub udp_answer_limit: usize,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            domain: "consul.".into(),
            only_passing: false,
            node_ttl_secs: 0,
            service_ttl_secs: 0,
            udp_answer_limit: 3,
        }
    }
}

/// A domain as DNS names it: lower case, one final dot; the error names the bad one.
pub fn normalize_domain(text: &str) -> Result<String, String> {
    let d = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if d.is_empty() || !d.split('.').all(label_ok) {
        return Err(format!("--domain {text:?} is not a DNS domain"));
    }
    Ok(format!("{d}."))
}

/// What DNS asks of the catalog, as seen with the agent's default token (Consul filters DNS
/// answers by it).
#[async_trait::async_trait]
pub trait Catalog: Send + Sync + 'static {
    fn datacenter(&self) -> String;
    /// A service's instances with their node and checks.
    async fn service(&self, name: &str) -> Result<Vec<ServiceEntry>, String>;
    async fn node(&self, name: &str) -> Result<Option<CatalogNode>, String>;
}

/// The hickory handler over a catalog.
pub struct Handler<C> {
    catalog: Arc<C>,
    settings: DnsSettings,
}

impl<C: Catalog> Handler<C> {
    pub fn new(catalog: Arc<C>, settings: DnsSettings) -> Self {
        Handler { catalog, settings }
    }

    fn soa(&self) -> Option<Record> {
        let zone = Name::from_ascii(&self.settings.domain).ok()?;
        let mname = Name::from_ascii(format!("ns.{}", self.settings.domain)).ok()?;
        let rname = Name::from_ascii(format!("hostmaster.{}", self.settings.domain)).ok()?;
        let serial = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let soa = SOA::new(mname, rname, serial as u32, 3600, 600, 86400, 0);
        Some(Record::from_rdata(zone, 0, RData::SOA(soa)))
    }

    /// The records for one question, or the response code that says why there are none.
    async fn resolve(&self, qname: &str, qtype: &str, udp: bool) -> Outcome {
        let dc = self.catalog.datacenter();
        let domain = &self.settings.domain;
        let lookup = match answer::parse(qname, domain, &dc) {
            Ok(l) => l,
            Err(NotFound::OutsideDomain) => return Outcome::code(ResponseCode::Refused),
            Err(NotFound::NoSuchName) => return Outcome::code(ResponseCode::NXDomain),
        };
        let (mut answers, mut additionals, ttl) = match lookup {
            Lookup::Service { service, tag } => {
                let entries = match self.catalog.service(&service).await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "DNS: the catalog did not answer");
                        return Outcome::code(ResponseCode::ServFail);
                    }
                };
                let mut entries = answer::healthy(entries, tag.as_deref(), self.settings.only_passing);
                if entries.is_empty() {
                    return Outcome::code(ResponseCode::NXDomain);
                }
                entries.shuffle(&mut rand::rng());
                let (a, x) = answer::service_records(qname, qtype, &entries, &dc, domain);
                (a, x, self.settings.service_ttl_secs)
            }
            Lookup::Node { node } => match self.catalog.node(&node).await {
                Ok(Some(n)) => (answer::node_records(qname, qtype, &n), Vec::new(), self.settings.node_ttl_secs),
                Ok(None) => return Outcome::code(ResponseCode::NXDomain),
                Err(e) => {
                    tracing::warn!(error = %e, "DNS: the catalog did not answer");
                    return Outcome::code(ResponseCode::ServFail);
                }
            },
            Lookup::Addr { ip } => {
                let wanted = qtype == "ANY" || (qtype == "A") == ip.is_ipv4() && (qtype == "A" || qtype == "AAAA");
                let recs = if wanted { vec![Rec::Ip { name: qname.to_string(), ip }] } else { Vec::new() };
                (recs, Vec::new(), self.settings.node_ttl_secs)
            }
        };
        let truncated = udp && answer::limit_answers(&mut answers, &mut additionals, self.settings.udp_answer_limit);
        Outcome { code: ResponseCode::NoError, answers, additionals, ttl, truncated }
    }
}

struct Outcome {
    code: ResponseCode,
    answers: Vec<Rec>,
    additionals: Vec<Rec>,
    ttl: u32,
    truncated: bool,
}

impl Outcome {
    fn code(code: ResponseCode) -> Outcome {
        Outcome { code, answers: Vec::new(), additionals: Vec::new(), ttl: 0, truncated: false }
    }
}

fn record(rec: &Rec, ttl: u32) -> Option<Record> {
    match rec {
        Rec::Ip { name, ip } => {
            let data = match ip {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            Some(Record::from_rdata(Name::from_ascii(name).ok()?, ttl, data))
        }
        Rec::Srv { name, port, target, weight } => {
            let srv = SRV::new(1, *weight, *port, Name::from_ascii(target).ok()?);
            Some(Record::from_rdata(Name::from_ascii(name).ok()?, ttl, RData::SRV(srv)))
        }
        Rec::Txt { name, text } => {
            Some(Record::from_rdata(Name::from_ascii(name).ok()?, ttl, RData::TXT(TXT::new(vec![text.clone()]))))
        }
    }
}

fn servfail(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
}

#[async_trait::async_trait]
impl<C: Catalog> RequestHandler for Handler<C> {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // Echo OPT when the client sent one: its size is the UDP limit hickory enforces.
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().min(1232));
            e
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        if request.metadata.op_code != OpCode::Query {
            let resp = builder.error_msg(&request.metadata, ResponseCode::NotImp);
            return response_handle.send_response(resp).await.unwrap_or_else(|_| servfail(request));
        }
        let Ok(info) = request.request_info() else {
            let resp = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return response_handle.send_response(resp).await.unwrap_or_else(|_| servfail(request));
        };
        let qname = info.query.original().name().to_ascii();
        let qtype = match info.query.query_type() {
            RecordType::A => "A",
            RecordType::AAAA => "AAAA",
            RecordType::SRV => "SRV",
            RecordType::TXT => "TXT",
            RecordType::ANY => "ANY",
            _ => "",
        };
        let udp = request.protocol().is_datagram();
        let outcome = self.resolve(&qname, qtype, udp).await;
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = outcome.code != ResponseCode::Refused;
        metadata.recursion_available = false;
        metadata.response_code = outcome.code;
        metadata.truncation = outcome.truncated;
        let answers: Vec<Record> = outcome.answers.iter().filter_map(|r| record(r, outcome.ttl)).collect();
        let additionals: Vec<Record> = outcome.additionals.iter().filter_map(|r| record(r, outcome.ttl)).collect();
        // No records (NXDOMAIN, or none of the asked type): the zone's SOA says for how long.
        let soa: Vec<Record> = if answers.is_empty() && outcome.code != ResponseCode::Refused {
            self.soa().into_iter().collect()
        } else {
            Vec::new()
        };
        let resp = builder.build(metadata, answers.iter(), [], soa.iter(), additionals.iter());
        response_handle.send_response(resp).await.unwrap_or_else(|_| servfail(request))
    }
}

/// The DNS listeners, bound before the server reports itself started (a taken port is an error
/// at start, not a silent absence).
pub struct Listeners {
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<Listeners> {
    let udp = tokio::net::UdpSocket::bind(addr).await.map_err(|e| anyhow::anyhow!("DNS on {addr}/udp: {e}"))?;
    let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("DNS on {addr}/tcp: {e}"))?;
    Ok(Listeners { udp, tcp })
}

/// Serves DNS on the listeners until `stop` turns true.
pub async fn serve<C: Catalog>(
    listeners: Listeners,
    catalog: Arc<C>,
    settings: DnsSettings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let addr = listeners.udp.local_addr().ok();
    let mut server = hickory_server::Server::new(Handler::new(catalog, settings));
    server.register_socket(listeners.udp);
    server.register_listener(listeners.tcp, Duration::from_secs(10), 32);
    let token = server.shutdown_token().clone();
    tokio::spawn(async move {
        let _ = stop.wait_for(|s| *s).await;
        token.cancel();
    });
    tracing::info!(?addr, "DNS interface serving");
    if let Err(e) = server.block_until_done().await {
        tracing::warn!(error = %e, "DNS interface stopped");
    }
}
