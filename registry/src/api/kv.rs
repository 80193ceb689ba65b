//! KV entries and transactions.

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One KV entry as `GET /v1/kv/:key` returns it. `Value` is base64 on the wire, null when empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvPair {
    pub lock_index: u64,
    pub key: String,
    pub flags: u64,
    #[serde(with = "base64_value")]
    pub value: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// Base64 `Value` fields: an empty value is written as null, as Consul does.
pub mod base64_value {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) if !v.is_empty() => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v)),
            _ => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        match text {
            None => Ok(None),
            Some(t) => base64::engine::general_purpose::STANDARD
                .decode(t.as_bytes())
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("Value is not valid base64: {e}"))),
        }
    }
}

/// One operation of `PUT /v1/txn`. Only KV operations are supported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnOp {
    #[serde(rename = "KV")]
    pub kv: Option<TxnKvOp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnKvOp {
    pub verb: String,
    pub key: String,
    #[serde(default, with = "base64_value")]
    pub value: Option<Vec<u8>>,
    #[serde(default)]
    pub flags: u64,
    #[serde(default)]
    pub index: u64,
    #[serde(default)]
    pub session: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnResult {
    #[serde(rename = "KV")]
    pub kv: KvPair,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnError {
    pub op_index: usize,
    pub what: String,
}

/// The body of a `/v1/txn` answer: `Results` on success (200), `Errors` on a rolled-back one (409).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnResponse {
    pub results: Option<Vec<TxnResult>>,
    pub errors: Option<Vec<TxnError>>,
}
