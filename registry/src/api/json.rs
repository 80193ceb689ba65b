//! Request bodies decoded as Consul decodes them: field names match without regard to case or
//! underscores (`ServiceID`, `serviceid`, `service_id`), as Go's encoding/json and Consul's
//! decoder accept. User maps (`Meta`, `NodeMeta`) keep their keys as sent.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Every field name our request types use, in the spelling serde expects.
const CANONICAL: &[&str] = &[
    "ID",
    "CheckID",
    "ServiceID",
    "Name",
    "Node",
    "Address",
    "Datacenter",
    "TaggedAddresses",
    "NodeMeta",
    "Meta",
    "Service",
    "Check",
    "Checks",
    "SkipNodeUpdate",
    "Tags",
    "Port",
    "Weights",
    "Passing",
    "Warning",
    "EnableTagOverride",
    "Status",
    "Notes",
    "Output",
    "Type",
    "Interval",
    "Timeout",
    "TTL",
    "HTTP",
    "TCP",
    "GRPC",
    "Args",
    "DeregisterCriticalServiceAfter",
    "SuccessBeforePassing",
    "FailuresBeforeCritical",
    "Method",
    "GRPCUseTLS",
    "LockDelay",
    "Behavior",
    "NodeChecks",
    "ServiceChecks",
    "Namespace",
    "KV",
    "Verb",
    "Key",
    "Value",
    "Flags",
    "Index",
    "Session",
    "Rules",
    "Description",
    "Policies",
    "Roles",
    "AccessorID",
    "SecretID",
    "Local",
    "ExpirationTime",
    "ExpirationTTL",
    "Datacenters",
    "Kind",
    "Proxy",
    "Connect",
    "SidecarService",
    "Native",
    "DestinationServiceName",
    "DestinationServiceID",
    "LocalServiceAddress",
    "LocalServicePort",
    "Mode",
    "MeshGateway",
    "Expose",
    "ServiceIdentities",
    "NodeIdentities",
    "ServiceName",
    "NodeName",
    "DisplayName",
    "MaxTokenTTL",
    "TokenLocality",
    "Config",
    "AuthMethod",
    "Selector",
    "BindType",
    "BindName",
    "BearerToken",
    "TemplatedPolicies",
    "TemplateName",
    "TemplateVariables",
];

/// Fields whose value is a user map: keys are data, not field names.
const USER_MAPS: &[&str] = &["Meta", "NodeMeta", "Config"];

fn canonical(key: &str) -> Option<&'static str> {
    let folded: String = key.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect();
    CANONICAL.iter().copied().find(|c| c.to_ascii_lowercase() == folded)
}

fn normalize(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                let name = canonical(&k).map(str::to_string).unwrap_or(k);
                let v = if USER_MAPS.contains(&name.as_str()) {
                    v
                } else if name == "TaggedAddresses" {
                    // Keys are address names (lan, wan); values may be {Address, Port} objects.
                    match v {
                        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
                        other => other,
                    }
                } else {
                    normalize(v)
                };
                out.insert(name, v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        other => other,
    }
}

/// Decodes a JSON body; an empty body is an error. The error is Consul's message for a 400.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("Request decode failed: {e}"))?;
    serde_json::from_value(normalize(value)).map_err(|e| format!("Request decode failed: {e}"))
}

/// Decodes a JSON body; an empty body gives the default value (as Consul allows for session create).
pub fn decode_or_default<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    decode(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentServiceRegistration, RegisterRequest};

    #[test]
    fn lowercase_and_snake_case_fields_decode() {
        let body = br#"{"node":"n1","address":"10.0.0.1","node_meta":{"Env":"prod"},
            "service":{"service":"db","id":"db-1","port":5432},"check":{"checkid":"c1","status":"passing","serviceid":"db-1"}}"#;
        let r: RegisterRequest = decode(body).unwrap();
        assert_eq!(r.node.as_deref(), Some("n1"));
        assert_eq!(r.node_meta.unwrap().get("Env").map(String::as_str), Some("prod"));
        assert_eq!(r.service.unwrap().id.as_deref(), Some("db-1"));
        assert_eq!(r.check.unwrap().service_id.as_deref(), Some("db-1"));
    }

    #[test]
    fn python_consul_agent_registration_decodes() {
        let body = br#"{"name":"web","id":"web-1","port":80,"tags":["a"],"meta":{"Key":"v"},"checks":[{"ttl":"30s"}]}"#;
        let r: AgentServiceRegistration = decode(body).unwrap();
        assert_eq!(r.meta.unwrap().get("Key").map(String::as_str), Some("v"));
        assert_eq!(r.checks.unwrap()[0].ttl.as_deref(), Some("30s"));
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let err = decode::<RegisterRequest>(b"{not json").unwrap_err();
        assert!(err.starts_with("Request decode failed"), "{err}");
    }
}
