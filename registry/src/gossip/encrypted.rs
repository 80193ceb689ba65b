//! Gossip encryption: every datagram sealed with AES-256-GCM under the pool's shared key, in the
//! key format of Consul's `encrypt` (32 random bytes, base64, as `roster keygen` or `consul keygen`
//! print). A datagram that does not open under the key (plaintext gossip, another pool's key, a
//! forged or altered one) is dropped: a host without the key can neither join the pool, nor read
//! it, nor speak for a member.
//!
//! Wire format: `[1][12-byte random nonce][AES-GCM(flag || message)]`; flag 0: the message as it is
//! (chitchat's, or a probe), 1: zstd-compressed (only when sealing it as it is would not fit one
//! datagram). A member holds a [`Keyring`]: it seals with its primary key and opens with any.

use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, Generate, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;

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

/// The keys a member holds: it seals with the primary and opens with any, so a pool can move to a
/// new key without a moment where members cannot hear each other (install everywhere, then use,
/// then remove the old one: Consul's keyring rotation).
#[derive(Clone)]
pub struct Keyring(Arc<RwLock<Keys>>);

struct Keys {
    /// Base64 as normalized by [`normalize`].
    primary: String,
    installed: Vec<(String, GossipKey)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(<redacted>)")
    }
}

/// One spelling per key, whatever padding or whitespace it came with.
fn normalize(text: &str) -> Result<(String, GossipKey), String> {
    let key = GossipKey::parse(text)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|e| e.to_string())?;
    Ok((base64::engine::general_purpose::STANDARD.encode(bytes), key))
}

impl Keyring {
    pub fn new(primary: &str) -> Result<Keyring, String> {
        let (name, key) = normalize(primary)?;
        Ok(Keyring(Arc::new(RwLock::new(Keys { primary: name.clone(), installed: vec![(name, key)] }))))
    }

    /// From keys saved as Consul saves its `local.keyring`: a JSON list, the primary first.
    pub fn from_saved(json: &str) -> Result<Keyring, String> {
        let keys: Vec<String> = serde_json::from_str(json).map_err(|e| format!("keyring file: {e}"))?;
        let (primary, rest) = keys.split_first().ok_or("keyring file: no keys")?;
        let keyring = Keyring::new(primary)?;
        for k in rest {
            keyring.install(k)?;
        }
        Ok(keyring)
    }

    /// The keys as [`Keyring::from_saved`] reads them.
    pub fn saved(&self) -> String {
        let (keys, primary) = self.list();
        let ordered: Vec<&String> = std::iter::once(&primary).chain(keys.iter().filter(|k| **k != primary)).collect();
        serde_json::to_string(&ordered).unwrap_or_default()
    }

    /// A key's one spelling (what [`Keyring::list`] shows), or why it is not a key.
    pub fn normalize(text: &str) -> Result<String, String> {
        normalize(text).map(|(name, _)| name)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Keys> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The installed keys (base64) and which one is primary.
    pub fn list(&self) -> (Vec<String>, String) {
        let keys = self.read();
        (keys.installed.iter().map(|(n, _)| n.clone()).collect(), keys.primary.clone())
    }

    /// Adds a key (installing one already there changes nothing).
    pub fn install(&self, text: &str) -> Result<(), String> {
        let (name, key) = normalize(text)?;
        let mut keys = self.write();
        if !keys.installed.iter().any(|(n, _)| *n == name) {
            keys.installed.push((name, key));
        }
        Ok(())
    }

    /// Makes an installed key the one this member seals with.
    pub fn use_key(&self, text: &str) -> Result<(), String> {
        let (name, _) = normalize(text)?;
        let mut keys = self.write();
        if !keys.installed.iter().any(|(n, _)| *n == name) {
            return Err("Requested key is not in the keyring".into());
        }
        keys.primary = name;
        Ok(())
    }

    /// Drops a key; the primary cannot go (Consul's rule: use another first).
    pub fn remove(&self, text: &str) -> Result<(), String> {
        let (name, _) = normalize(text)?;
        let mut keys = self.write();
        if keys.primary == name {
            return Err("Removing the primary key is not allowed".into());
        }
        keys.installed.retain(|(n, _)| *n != name);
        Ok(())
    }

    /// Seals with the primary key.
    pub fn seal(&self, payload: &[u8]) -> Option<Vec<u8>> {
        let keys = self.read();
        let primary = keys.installed.iter().find(|(n, _)| *n == keys.primary)?;
        primary.1.seal(payload)
    }

    /// Opens with whichever installed key sealed it (the primary tried first).
    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, &'static str> {
        let keys = self.read();
        let mut why = "does not open under this pool's key";
        let ordered = keys
            .installed
            .iter()
            .filter(|(n, _)| *n == keys.primary)
            .chain(keys.installed.iter().filter(|(n, _)| *n != keys.primary));
        for (_, key) in ordered {
            match key.open(datagram) {
                Ok(plain) => return Ok(plain),
                Err(e) => why = e,
            }
        }
        Err(why)
    }
}

pub(super) fn transient(e: &std::io::Error) -> bool {
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
    fn a_keyring_rotates_without_a_deaf_moment() {
        let (old, new) = (GossipKey::generate(), GossipKey::generate());
        let a = Keyring::new(&old).expect("a");
        let b = Keyring::new(&old).expect("b");
        // Install the new key everywhere: both still seal with the old one, both open either.
        a.install(&new).expect("install");
        b.install(&new).expect("install");
        assert_eq!(b.open(&a.seal(b"x").expect("sealed")).as_deref(), Ok(&b"x"[..]));
        // a uses the new key first: b, which still seals with the old, is heard and hears a.
        a.use_key(&new).expect("use");
        assert_eq!(b.open(&a.seal(b"y").expect("sealed")).as_deref(), Ok(&b"y"[..]));
        assert_eq!(a.open(&b.seal(b"z").expect("sealed")).as_deref(), Ok(&b"z"[..]));
        assert_eq!(a.remove(&new), Err("Removing the primary key is not allowed".into()));
        b.use_key(&new).expect("use");
        a.remove(&old).expect("remove");
        let only_old = Keyring::new(&old).expect("outsider");
        assert!(a.open(&only_old.seal(b"w").expect("sealed")).is_err(), "the removed key opens nothing");
        assert_eq!(a.list(), (vec![new.clone()], new.clone()));
        assert!(a.use_key(&old).is_err_and(|e| e.contains("not in the keyring")));
        assert!(a.install("short").is_err());
        a.install(&old).expect("again");
        let restored = Keyring::from_saved(&a.saved()).expect("saved");
        assert_eq!(restored.list().1, new, "the primary comes back as primary");
        assert_eq!(restored.list().0.len(), 2);
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(GossipKey::parse("not base64!").is_err_and(|e| e.contains("base64")));
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        assert!(GossipKey::parse(&short).is_err_and(|e| e.contains("32 bytes") && e.contains("16")));
        assert!(format!("{:?}", GossipKey::parse(&GossipKey::generate()).expect("key")).contains("redacted"));
    }
}
