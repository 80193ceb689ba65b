//! Checks a `RegistryCluster` beyond what its schema can say, before anything is built.

use crate::crd::{DefaultPolicy, RegistryCluster};

/// A cluster spec that passed validation, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidCluster {
    pub name: String,
    pub namespace: String,
    pub replicas: i32,
    pub image: String,
    pub datacenter: String,
    pub storage_size: String,
    pub storage_class: Option<String>,
    pub acl_enabled: bool,
    pub acl_default_deny: bool,
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// Secret whose `key` entry is the pool's gossip encryption key.
    pub gossip_key_secret: Option<String>,
    /// The `kubernetes` auth method to keep on the servers, when asked for.
    pub kubernetes_auth: Option<super::kubernetes_auth::Settings>,
    /// TLS for the servers, when enabled.
    pub tls: Option<super::tls::Settings>,
    /// WAN federation, when asked for.
    pub federation: Option<super::federation::Settings>,
}

/// StatefulSet pod names carry a controller-revision-hash label of the name plus 11 characters,
/// and labels are at most 63: 52 leaves room.
const MAX_NAME: usize = 52;

/// A Kubernetes quantity (`10Gi`, `500M`, `1.5Ti`).
fn is_quantity(s: &str) -> bool {
    let digits_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    !number.is_empty()
        && number.parse::<f64>().is_ok_and(|n| n > 0.0)
        && ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E"].contains(&suffix)
}

/// Every problem found, each naming the field; none means valid.
pub fn validate(rc: &RegistryCluster, default_image: &str) -> Result<ValidCluster, Vec<String>> {
    let mut errors = Vec::new();
    let name = rc.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        errors.push("metadata.name: required".to_string());
    } else if name.len() > MAX_NAME {
        errors
            .push(format!("metadata.name: at most {MAX_NAME} characters (StatefulSet pod labels), not {}", name.len()));
    }
    let namespace = rc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let spec = &rc.spec;
    if ![1, 3, 5].contains(&spec.replicas) {
        errors.push(format!("spec.replicas: must be 1, 3 or 5, not {}", spec.replicas));
    }
    if !is_quantity(&spec.storage.size) {
        errors
            .push(format!("spec.storage.size: {:?} is not a Kubernetes quantity (for example 1Gi)", spec.storage.size));
    }
    let image = spec.image.clone().unwrap_or_else(|| default_image.to_string());
    if image.trim().is_empty() || image.contains(char::is_whitespace) {
        errors.push(format!("spec.image: {image:?} is not an image reference"));
    }
    let dc = &spec.datacenter;
    let dns_label = !dc.is_empty()
        && dc.len() <= 63
        && dc.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !dc.starts_with('-')
        && !dc.ends_with('-');
    if !dns_label {
        errors.push(format!("spec.datacenter: {dc:?} is not a DNS label"));
    }
    if let Some(secret) = &spec.gossip_key_secret {
        let subdomain = !secret.is_empty()
            && secret.len() <= 253
            && secret.split('.').all(|l| {
                !l.is_empty()
                    && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !subdomain {
            errors.push(format!("spec.gossipKeySecret: {secret:?} is not a Secret name"));
        }
    }
    let kubernetes_auth = spec.acl.kubernetes_auth.as_ref().map(super::kubernetes_auth::Settings::from);
    if kubernetes_auth.is_some() && !spec.acl.enabled {
        errors.push("spec.acl.kubernetesAuth: needs spec.acl.enabled (logins make ACL tokens)".to_string());
    }
    if let Some(ttl) = &spec.acl.kubernetes_auth.as_ref().and_then(|k| k.max_token_ttl.clone()) {
        if registry::api::parse_go_duration(ttl).is_err() {
            errors.push(format!("spec.acl.kubernetesAuth.maxTokenTTL: {ttl:?} is not a duration (for example 24h)"));
        }
    }
    let tls = spec.tls.as_ref().filter(|t| t.enabled).and_then(|t| tls_settings(t, &mut errors));
    let federation =
        spec.federation.as_ref().map(|f| super::federation::settings(f, dc, &namespace, spec.acl.enabled, &mut errors));
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ValidCluster {
        name,
        namespace,
        replicas: spec.replicas,
        image,
        datacenter: dc.clone(),
        storage_size: spec.storage.size.clone(),
        storage_class: spec.storage.storage_class_name.clone(),
        acl_enabled: spec.acl.enabled,
        acl_default_deny: spec.acl.default_policy == DefaultPolicy::Deny,
        resources: spec.resources.clone(),
        gossip_key_secret: spec.gossip_key_secret.clone(),
        kubernetes_auth,
        tls,
        federation,
    })
}

/// An enabled `spec.tls`, checked, with its defaults; problems go to `errors`.
fn tls_settings(spec: &crate::crd::TlsSpec, errors: &mut Vec<String>) -> Option<super::tls::Settings> {
    use super::tls::{IssuerRef, Settings, DEFAULT_VALIDITY_SECS, MIN_VALIDITY_SECS};
    let before = errors.len();
    let validity_secs = match &spec.certificate_validity {
        None => DEFAULT_VALIDITY_SECS,
        Some(text) => match registry::api::parse_go_duration(text) {
            Ok(d) if d.as_secs() >= MIN_VALIDITY_SECS => d.as_secs(),
            Ok(_) => {
                errors.push(format!("spec.tls.certificateValidity: {text:?} is shorter than 1h"));
                0
            }
            Err(_) => {
                errors.push(format!("spec.tls.certificateValidity: {text:?} is not a duration (for example 2160h)"));
                0
            }
        },
    };
    let cert_manager = spec.cert_manager.as_ref().map(|m| &m.issuer_ref).map(|issuer| {
        if issuer.name.trim().is_empty() {
            errors.push("spec.tls.certManager.issuerRef.name: required".to_string());
        }
        IssuerRef {
            name: issuer.name.clone(),
            kind: issuer.kind.clone().unwrap_or_else(|| "Issuer".into()),
            group: issuer.group.clone().unwrap_or_else(|| "cert-manager.io".into()),
        }
    });
    if errors.len() > before {
        return None;
    }
    Some(Settings { verify_incoming: spec.verify_incoming, validity_secs, cert_manager })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["1Gi", "10Gi", "500M", "1.5Ti", "1024"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "ten", "1GB", "-1Gi", "0"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
