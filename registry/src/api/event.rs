//! User events (`/v1/event/*`), as Consul's agents answer them.

use serde::{Deserialize, Serialize};

/// One user event. `Payload` is base64 on the wire, null when empty; `LTime` is the Lamport time
/// the receiving agent gave it (0 in the answer to the one that fired it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct UserEvent {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    #[serde(with = "super::kv::base64_value", default)]
    pub payload: Option<Vec<u8>>,
    #[serde(default)]
    pub node_filter: String,
    #[serde(default)]
    pub service_filter: String,
    #[serde(default)]
    pub tag_filter: String,
    pub version: u32,
    #[serde(rename = "LTime", default)]
    pub ltime: u64,
}

/// Consul's `X-Consul-Index` for an event list: the last event's ID folded into 64 bits (its two
/// halves XORed), 1 when there is none.
pub fn event_index(id: &str) -> u64 {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return 1;
    }
    let low = u64::from_str_radix(&hex[..16], 16).unwrap_or(0);
    let high = u64::from_str_radix(&hex[16..], 16).unwrap_or(0);
    (low ^ high).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_folds_the_id_as_consul_does() {
        // Consul's uuidToUint64: the first 16 hex digits XOR the last 16.
        assert_eq!(event_index("00000000-0000-0001-0000-000000000003"), 1 ^ 3);
        assert_eq!(event_index("not-a-uuid"), 1);
    }
}
