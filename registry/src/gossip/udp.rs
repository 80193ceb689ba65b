//! Gossip over UDP: chitchat's messages and round-trip probes share the gossip port, every datagram
//! sealed with the pool's keyring when it has one. A probe is a ping answered at once by a pong
//! carrying the answering member's network coordinate; the prober (one task per member) measures
//! round trips to the live members in turn and feeds them to Vivaldi (`vivaldi`), then publishes
//! its coordinate in its gossip state (`KEY_COORD`), from where the leader stores it.
//!
//! Probe wire format (inside the seal when there is one): `[0xA5][0 ping | 1 pong][nonce, 8 bytes
//! big-endian]` and, in a pong, `{"Node": ..., "Coord": ...}` as JSON. chitchat's messages start
//! with their type tag (0 to 3), so the two never mix.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chitchat::transport::{Socket, Transport};
use chitchat::{Chitchat, ChitchatMessage, Deserializable, Serializable};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::encrypted::{transient, Keyring, MAX_DATAGRAM};
use super::vivaldi;
use crate::api::Coordinate;

const PROBE_MAGIC: u8 = 0xA5;
const PING: u8 = 0;
const PONG: u8 = 1;
/// A pong later than this counts as lost.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The coordinate goes into gossip after this many measurements (not after each: gossip traffic).
const PUBLISH_EVERY: u32 = 5;

#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Ping { nonce: u64 },
    Pong { nonce: u64, node: String, coord: Coordinate },
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PongBody {
    node: String,
    coord: Coordinate,
}

impl Probe {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, nonce) = match self {
            Probe::Ping { nonce } => (PING, nonce),
            Probe::Pong { nonce, .. } => (PONG, nonce),
        };
        let mut out = vec![PROBE_MAGIC, kind];
        out.extend_from_slice(&nonce.to_be_bytes());
        if let Probe::Pong { node, coord, .. } = self {
            let body = PongBody { node: node.clone(), coord: coord.clone() };
            out.extend(serde_json::to_vec(&body).unwrap_or_default());
        }
        out
    }

    /// None for anything that is not a well-formed probe.
    pub fn decode(bytes: &[u8]) -> Option<Probe> {
        let (&[PROBE_MAGIC, kind], rest) = bytes.split_first_chunk::<2>()? else { return None };
        let (nonce, body) = rest.split_first_chunk::<8>()?;
        let nonce = u64::from_be_bytes(*nonce);
        match kind {
            PING if body.is_empty() => Some(Probe::Ping { nonce }),
            PONG => {
                let b: PongBody = serde_json::from_slice(body).ok()?;
                b.coord.is_valid().then_some(Probe::Pong { nonce, node: b.node, coord: b.coord })
            }
            _ => None,
        }
    }
}

/// Seals (or not, in a plaintext pool) what goes out.
fn wrap(keyring: &Option<Keyring>, payload: Vec<u8>) -> Option<Vec<u8>> {
    match keyring {
        Some(k) => k.seal(&payload),
        None => Some(payload),
    }
}

fn unwrap(keyring: &Option<Keyring>, datagram: &[u8]) -> Result<Vec<u8>, &'static str> {
    match keyring {
        Some(k) => k.open(datagram),
        None => Ok(datagram.to_vec()),
    }
}

/// chitchat's transport: UDP, sealed with `keyring` when set, answering probes with `me`'s
/// coordinate.
pub struct GossipUdpTransport {
    pub keyring: Option<Keyring>,
    pub me: Arc<vivaldi::Shared>,
}

#[async_trait::async_trait]
impl Transport for GossipUdpTransport {
    async fn open(&self, bind_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = UdpSocket::bind(bind_addr)
            .await
            .with_context(|| format!("failed to bind to {bind_addr}/UDP for gossip"))?;
        Ok(Box::new(GossipSocket {
            socket,
            keyring: self.keyring.clone(),
            me: self.me.clone(),
            buf: vec![0; MAX_DATAGRAM],
            refused: 0,
        }))
    }
}

struct GossipSocket {
    socket: UdpSocket,
    keyring: Option<Keyring>,
    me: Arc<vivaldi::Shared>,
    buf: Vec<u8>,
    refused: u64,
}

impl GossipSocket {
    async fn send_bytes(&self, to: SocketAddr, payload: Vec<u8>) -> anyhow::Result<()> {
        let len = payload.len();
        let Some(datagram) = wrap(&self.keyring, payload).filter(|d| d.len() <= MAX_DATAGRAM) else {
            // Dropped like a lost datagram: the next round sends another delta.
            tracing::warn!(bytes = len, %to, "gossip message too large for one datagram");
            return Ok(());
        };
        match self.socket.send_to(&datagram, to).await {
            Ok(_) => Ok(()),
            // A peer that went away is gossip's everyday business, not a broken transport.
            Err(e) if transient(&e) => Ok(()),
            Err(e) => Err(e).context("failed to send a gossip datagram"),
        }
    }
}

#[async_trait::async_trait]
impl Socket for GossipSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let mut payload = Vec::new();
        message.serialize(&mut payload);
        self.send_bytes(to, payload).await
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e) if transient(&e) => continue,
                Err(e) => return Err(e).context("fatal UDP recv error"),
            };
            let plain = match unwrap(&self.keyring, &self.buf[..n]) {
                Ok(p) => p,
                Err(why) => {
                    self.refused += 1;
                    // Each refusal at debug level; a warning at the 1st, 2nd, 4th, 8th...
                    if self.refused.is_power_of_two() {
                        tracing::warn!(%from, why, refused = self.refused, "refused gossip datagrams");
                    } else {
                        tracing::debug!(%from, why, "refused a gossip datagram");
                    }
                    continue;
                }
            };
            if plain.first() == Some(&PROBE_MAGIC) {
                if let Some(Probe::Ping { nonce }) = Probe::decode(&plain) {
                    let pong = Probe::Pong { nonce, node: self.me.node().to_string(), coord: self.me.coordinate() };
                    self.send_bytes(from, pong.encode()).await?;
                }
                continue;
            }
            match ChitchatMessage::deserialize(&mut plain.as_slice()) {
                Ok(message) => return Ok((from, message)),
                Err(e) => tracing::warn!(%from, error = %e, "invalid chitchat message"),
            }
        }
    }
}

/// Measures round trips to the live members in turn, one every `interval`, updating `me`'s
/// coordinate and publishing it in gossip, until `stop` turns true.
pub async fn probe_loop(
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    me: Arc<vivaldi::Shared>,
    keyring: Option<Keyring>,
    bind: SocketAddr,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let local = SocketAddr::new(bind.ip(), 0);
    let socket = match UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%local, error = %e, "cannot bind the probe socket: no network coordinates");
            return;
        }
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut turn = 0usize;
    let mut measured = 0u32;
    let mut nonce =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let peers: Vec<(String, SocketAddr)> = {
            let guard = chitchat.lock().await;
            let self_id = guard.self_chitchat_id().clone();
            guard
                .live_nodes()
                .filter(|id| **id != self_id)
                .map(|id| (id.node_id.to_string(), id.gossip_advertise_addr))
                .collect()
        };
        if peers.is_empty() {
            continue;
        }
        let (name, addr) = &peers[turn % peers.len()];
        turn = turn.wrapping_add(1);
        nonce = nonce.wrapping_add(1);
        let Some(ping) = wrap(&keyring, Probe::Ping { nonce }.encode()) else { continue };
        let sent = Instant::now();
        if socket.send_to(&ping, addr).await.is_err() {
            continue;
        }
        let Some((node, coord, rtt)) = await_pong(&socket, &keyring, &mut buf, nonce, sent).await else {
            tracing::debug!(peer = %name, "probe lost");
            continue;
        };
        if node != *name {
            continue;
        }
        if let Err(e) = me.update(&node, &coord, rtt.as_secs_f64()) {
            tracing::debug!(peer = %node, error = %e, "round trip not taken");
            continue;
        }
        measured += 1;
        if measured % PUBLISH_EVERY == 1 {
            let value = serde_json::to_string(&me.coordinate()).unwrap_or_default();
            chitchat.lock().await.self_node_state().set(super::KEY_COORD, value);
        }
    }
}

async fn await_pong(
    socket: &UdpSocket,
    keyring: &Option<Keyring>,
    buf: &mut [u8],
    nonce: u64,
    sent: Instant,
) -> Option<(String, Coordinate, Duration)> {
    let deadline = sent + PROBE_TIMEOUT;
    loop {
        let (n, _) = tokio::time::timeout_at(deadline.into(), socket.recv_from(buf)).await.ok()?.ok()?;
        let rtt = sent.elapsed();
        let Ok(plain) = unwrap(keyring, &buf[..n]) else { continue };
        if let Some(Probe::Pong { nonce: got, node, coord }) = Probe::decode(&plain) {
            if got == nonce {
                return Some((node, coord, rtt));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_and_never_pass_for_gossip() {
        let pong = Probe::Pong { nonce: 7, node: "web-1".into(), coord: Coordinate::origin() };
        assert_eq!(Probe::decode(&pong.encode()), Some(pong));
        assert_eq!(Probe::decode(&Probe::Ping { nonce: 9 }.encode()), Some(Probe::Ping { nonce: 9 }));
        assert_eq!(Probe::decode(b"\xA5\x01short"), None);
        assert_eq!(Probe::decode(b"\x00chitchat syn"), None);
        let mut bad = Coordinate::origin();
        bad.vec.truncate(2);
        let invalid = Probe::Pong { nonce: 1, node: "x".into(), coord: bad };
        assert_eq!(Probe::decode(&invalid.encode()), None, "an invalid coordinate is no pong");
    }
}
