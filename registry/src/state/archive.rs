//! Snapshot archives for `/v1/snapshot`: the whole state, gzip-compressed as Consul's archives are,
//! with a SHA-256 of the state so that a corrupt or truncated archive is refused before anything
//! is restored.
//!
//! Layout inside the gzip stream: the magic `ROSTER-SNAPSHOT-1\n`, the metadata as one JSON line,
//! the hex SHA-256 of the state bytes and a newline, then the state as MessagePack.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::State;

const MAGIC: &[u8] = b"ROSTER-SNAPSHOT-1\n";
/// Restores read at most this much once decompressed, so a small gzip bomb cannot exhaust memory.
const MAX_UNPACKED: u64 = 1 << 30;

/// What an archive says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ArchiveMeta {
    /// The Raft index the state was taken at.
    pub index: u64,
    pub datacenter: String,
    pub version: String,
}

pub fn encode(state: &State, index: u64) -> Result<Vec<u8>, String> {
    // With field names, as the Raft snapshots: fields with defaults can be added later.
    let body = rmp_serde::to_vec_named(state).map_err(|e| format!("encoding the state: {e}"))?;
    let meta = ArchiveMeta { index, datacenter: state.datacenter.clone(), version: env!("CARGO_PKG_VERSION").into() };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let write = |gz: &mut flate2::write::GzEncoder<Vec<u8>>| -> std::io::Result<()> {
        gz.write_all(MAGIC)?;
        gz.write_all(&serde_json::to_vec(&meta).map_err(std::io::Error::other)?)?;
        gz.write_all(b"\n")?;
        gz.write_all(hex(&Sha256::digest(&body)).as_bytes())?;
        gz.write_all(b"\n")?;
        gz.write_all(&body)
    };
    write(&mut gz).map_err(|e| format!("writing the archive: {e}"))?;
    gz.finish().map_err(|e| format!("writing the archive: {e}"))
}

/// Checks and opens an archive: every problem is named, and nothing is returned unless the state's
/// checksum matches and it decodes.
pub fn decode(archive: &[u8]) -> Result<(ArchiveMeta, State), String> {
    if archive.len() < 2 || archive[..2] != [0x1f, 0x8b] {
        return Err("not a snapshot archive: not gzip-compressed".into());
    }
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(archive)
        .take(MAX_UNPACKED)
        .read_to_end(&mut raw)
        .map_err(|e| format!("snapshot archive is corrupt or truncated: {e}"))?;
    let rest = raw.strip_prefix(MAGIC).ok_or("not a Roster snapshot archive (no header)")?;
    let (meta_line, rest) = split_line(rest).ok_or("snapshot archive is truncated (no metadata)")?;
    let meta: ArchiveMeta =
        serde_json::from_slice(meta_line).map_err(|e| format!("snapshot archive metadata is invalid: {e}"))?;
    let (sum, body) = split_line(rest).ok_or("snapshot archive is truncated (no checksum)")?;
    if sum != hex(&Sha256::digest(body)).as_bytes() {
        return Err("snapshot archive checksum does not match its contents: corrupt or truncated".into());
    }
    let mut state: State =
        rmp_serde::from_slice(body).map_err(|e| format!("snapshot archive state is invalid: {e}"))?;
    state.rebuild_derived();
    Ok((meta, state))
}

fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|b| *b == b'\n')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, KvSetMode, Touched};

    fn state_with_key() -> State {
        let mut s = State::new("dc1");
        let cmd = Command::KvSet { key: "a".into(), value: b"1".to_vec(), flags: 7, mode: KvSetMode::Plain, now_ms: 0 };
        s.apply(5, cmd, &mut Touched::default());
        // ACL tables too: their wire types skip empty fields, which positional encoding would break.
        let token = crate::api::AclToken {
            accessor_id: "0b8b7e4c-0000-4000-8000-000000000001".into(),
            secret_id: "0b8b7e4c-0000-4000-8000-000000000002".into(),
            ..Default::default()
        };
        s.apply(6, Command::AclBootstrap { token }, &mut Touched::default());
        s
    }

    #[test]
    fn an_archive_round_trips_the_state() {
        let s = state_with_key();
        let archive = encode(&s, 5).expect("encode");
        assert_eq!(&archive[..2], &[0x1f, 0x8b], "gzip, as Consul's archives");
        let (meta, back) = decode(&archive).expect("decode");
        assert_eq!(meta.index, 5);
        assert_eq!(back.kv_get("a"), s.kv_get("a"));
        assert_eq!(back.indexes().acl, s.indexes().acl);
        assert_eq!(rmp_serde::to_vec_named(&back).ok(), rmp_serde::to_vec_named(&s).ok(), "the whole state");
    }

    #[test]
    fn corrupt_truncated_and_foreign_archives_are_refused() {
        let archive = encode(&state_with_key(), 5).expect("encode");
        assert!(decode(&archive[..archive.len() / 2]).unwrap_err().contains("corrupt or truncated"));
        assert!(decode(b"hello").unwrap_err().contains("not gzip"));
        // A flipped byte inside the state: the checksum catches it.
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&archive[..]).read_to_end(&mut raw).expect("gunzip");
        let last = raw.len() - 1;
        raw[last] ^= 0xff;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).expect("write");
        let tampered = gz.finish().expect("finish");
        assert!(decode(&tampered).unwrap_err().contains("checksum"));
    }
}
