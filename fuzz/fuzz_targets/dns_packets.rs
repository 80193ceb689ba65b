//! Feeds the DNS interface raw packets, as the server reads them off UDP and TCP: hickory decodes,
//! Roster's handler answers from a small catalog. Properties: nothing panics; whatever is answered
//! decodes, carries the query's ID and, over UDP, fits the client's buffer.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use registry::api::{HealthCheck, HealthStatus, Node, NodeService, ServiceEntry};
use registry::dns::proto::op::Message;
use registry::dns::{answer_packet, DnsSettings, FixedCatalog, Handler};

fn handler() -> &'static Handler<FixedCatalog> {
    static HANDLER: OnceLock<Handler<FixedCatalog>> = OnceLock::new();
    HANDLER.get_or_init(|| {
        let instances = (1..=6u16)
            .map(|i| ServiceEntry {
                node: Node { node: format!("n{i}"), address: format!("10.0.0.{i}"), ..Default::default() },
                service: NodeService {
                    id: format!("web-{i}"),
                    service: if i % 2 == 0 { "web".into() } else { "db".into() },
                    tags: vec![format!("v{}", i % 3)],
                    address: if i == 6 { "fd00::6".into() } else { String::new() },
                    port: 8000 + i,
                    ..Default::default()
                },
                checks: vec![HealthCheck {
                    status: if i == 3 { HealthStatus::Critical } else { HealthStatus::Passing },
                    ..Default::default()
                }],
            })
            .collect();
        Handler::new(Arc::new(FixedCatalog { datacenter: "dc1".into(), instances }), DnsSettings::default())
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"))
}

fuzz_target!(|data: &[u8]| {
    for udp in [true, false] {
        let Some(answer) = runtime().block_on(answer_packet(handler(), data, udp)) else { continue };
        let m = Message::from_vec(&answer).expect("every answer decodes");
        assert_eq!(m.metadata.id, u16::from_be_bytes([data[0], data[1]]), "the query's ID");
        if udp {
            let limit = Message::from_vec(data).ok().and_then(|q| q.edns.map(|e| e.max_payload())).unwrap_or(512);
            assert!(answer.len() <= usize::from(limit.max(512)), "{} bytes over UDP", answer.len());
        }
    }
});
