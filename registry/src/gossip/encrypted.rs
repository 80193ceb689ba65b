//! Gossip encryption: every datagram sealed with AES-256-GCM under the pool's shared key, in the
//! key format of Consul's `encrypt` (32 random bytes, base64, as `roster keygen` or `consul keygen`
//! print). A datagram that does not open under the key (plaintext gossip, another pool's key, a
//! forged or altered one) is dropped: a host without the key can neither join the pool, nor read
//! it, nor speak for a member.
//!
//! Wire format: `[1][12-byte random nonce][AES-GCM(flag || message)]`; flag 0: chitchat's message as
//! it serializes, 1: zstd-compressed (only when sealing it as it is would not fit one datagram).

use std::net::SocketAddr;
use std::sync::Arc;

use aes_gcm::aead::{Aead, Generate, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use anyhow::Context as _;
use base64::Engine;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Format byte, nonce, payload flag and tag.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 1 + TAG_LEN;
/// The largest UDP payload over IPv4, what chitchat fills its datagrams up to.
pub const MAX_DATAGRAM: usize = 65_507;
const RAW: u8 = 0;
const ZSTD: u8 = 1;

/// The pool's shared key. Its `Debug` shows nothing of the key.
#[derive(Clone)]
pub struct GossipKey(Arc<Aes256Gcm>);

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(<redacted>)")
    }
}

impl GossipKey {
    /// Parses a base64 key of 32 bytes (Consul's `encrypt` format).
    pub fn parse(text: &str) -> Result<GossipKey, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| format!("gossip key is not valid base64: {e}"))?;
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "gossip key must be 32 bytes, base64-encoded (as `roster keygen` prints), not {} bytes",
                bytes.len()
            )
        })?;
        Ok(GossipKey(Arc::new(Aes256Gcm::new(&Key::<Aes256Gcm>::from(key)))))
    }

    /// A new random key, base64-encoded.
    pub fn generate() -> String {
        base64::engine::general_purpose::STANDARD.encode(Key::<Aes256Gcm>::generate())
    }

    /// Seals one datagram's payload; None if it cannot fit a datagram even compressed.
    pub fn seal(&self, payload: &[u8]) -> Option<Vec<u8>> {
        let mut plain = Vec::with_capacity(payload.len() + 1);
        if payload.len() + OVERHEAD <= MAX_DATAGRAM {
            plain.push(RAW);
            plain.extend_from_slice(payload);
        } else {
            plain.push(ZSTD);
            plain.extend_from_slice(&zstd::bulk::compress(payload, 3).ok()?);
            if plain.len() - 1 + OVERHEAD > MAX_DATAGRAM {
                return None;
            }
        }
        let nonce = Nonce::generate();
        let sealed = self.0.encrypt(&nonce, plain.as_slice()).ok()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// Opens a sealed datagram; the error says why it was refused.
    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, &'static str> {
        if datagram.len() < OVERHEAD {
            return Err("too short to be sealed");
        }
        if datagram[0] != FORMAT_V1 {
            return Err("not sealed (plaintext gossip, or another format)");
        }
        let nonce = Nonce::try_from(&datagram[1..1 + NONCE_LEN]).map_err(|_| "bad nonce")?;
        let plain =
            self.0.decrypt(&nonce, &datagram[1 + NONCE_LEN..]).map_err(|_| "does not open under this pool's key")?;
        match plain.split_first() {
            Some((&RAW, message)) => Ok(message.to_vec()),
            Some((&ZSTD, packed)) => zstd::bulk::decompress(packed, MAX_DATAGRAM * 8).map_err(|_| "bad compression"),
            _ => Err("unknown payload flag"),
        }
    }
}

/// chitchat over UDP with every datagram sealed under `key`.
pub struct EncryptedUdpTransport {
    pub key: GossipKey,
}

#[async_trait::async_trait]
impl Transport for EncryptedUdpTransport {
    async fn open(&self, bind_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(bind_addr)
            .await
            .with_context(|| format!("failed to bind to {bind_addr}/UDP for gossip"))?;
        Ok(Box::new(EncryptedSocket { socket, key: self.key.clone(), buf: vec![0; MAX_DATAGRAM], refused: 0 }))
    }
}

struct EncryptedSocket {
    socket: tokio::net::UdpSocket,
    key: GossipKey,
    buf: Vec<u8>,
    refused: u64,
}

#[async_trait::async_trait]
impl Socket for EncryptedSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let mut payload = Vec::new();
        message.serialize(&mut payload);
        let Some(sealed) = self.key.seal(&payload) else {
            // Dropped like a lost datagram: the next round sends another delta.
            tracing::warn!(bytes = payload.len(), %to, "gossip message too large to seal into one datagram");
            return Ok(());
        };
        match self.socket.send_to(&sealed, to).await {
            Ok(_) => Ok(()),
            // A peer that went away is gossip's everyday business, not a broken transport.
            Err(e) if transient(&e) => Ok(()),
            Err(e) => Err(e).context("failed to send a gossip datagram"),
        }
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e) if transient(&e) => continue,
                Err(e) => return Err(e).context("fatal UDP recv error"),
            };
            let plain = match self.key.open(&self.buf[..n]) {
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
            match ChitchatMessage::deserialize(&mut plain.as_slice()) {
                Ok(message) => return Ok((from, message)),
                Err(e) => tracing::warn!(%from, error = %e, "invalid chitchat message under a valid seal"),
            }
        }
    }
}

fn transient(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_datagrams_open_only_under_the_same_key_and_unaltered() {
        let key = GossipKey::parse(&GossipKey::generate()).expect("key");
        let other = GossipKey::parse(&GossipKey::generate()).expect("key");
        let sealed = key.seal(b"hello pool").expect("sealed");
        assert_eq!(sealed.len(), b"hello pool".len() + OVERHEAD);
        assert_eq!(key.open(&sealed).as_deref(), Ok(&b"hello pool"[..]));
        assert!(other.open(&sealed).is_err(), "another pool's key");
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(key.open(&altered).is_err(), "a flipped bit");
        assert!(key.open(b"\x00plaintext chitchat datagram, long enough to look like one").is_err());
        assert_ne!(key.seal(b"same").expect("a"), key.seal(b"same").expect("b"), "a fresh nonce each time");
    }

    #[test]
    fn a_full_datagram_is_compressed_to_fit_and_an_incompressible_one_dropped() {
        let key = GossipKey::parse(&GossipKey::generate()).expect("key");
        // chitchat fills a datagram to the limit; sealed as it is it would not fit.
        let full: Vec<u8> = (0..MAX_DATAGRAM).map(|i| b"node-0042:addr=10.1.2.3;"[i % 24]).collect();
        let sealed = key.seal(&full).expect("compressed to fit");
        assert!(sealed.len() <= MAX_DATAGRAM);
        assert_eq!(key.open(&sealed).expect("opens"), full);
        // Ciphertext is as good as random, and random bytes do not compress.
        let noise = key.0.encrypt(&Nonce::generate(), vec![0u8; MAX_DATAGRAM].as_slice()).expect("noise");
        assert!(key.seal(&noise).is_none(), "cannot fit: dropped, like a lost datagram");
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(GossipKey::parse("not base64!").is_err_and(|e| e.contains("base64")));
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        assert!(GossipKey::parse(&short).is_err_and(|e| e.contains("32 bytes") && e.contains("16")));
        assert!(format!("{:?}", GossipKey::parse(&GossipKey::generate()).expect("key")).contains("redacted"));
    }
}
