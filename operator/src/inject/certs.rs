//! The webhook's serving certificate: the operator is its own small CA. A Secret keeps the CA
//! (10 years) and the serving certificate (1 year) with their expiry in annotations; `renewal`
//! (pure) says what to issue, `ensure` issues it, patches the webhook configuration's `caBundle`
//! and only then serves the new certificate. A renewed CA is added to the bundle beside the old
//! one, so the API server trusts both while it changes. Every replica runs `ensure`: creates and
//! replacements are conditional (create, or replace at a resourceVersion), so two never fight.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::core::ObjectMeta;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub const CA_VALIDITY_SECS: u64 = 10 * 365 * 86_400;
pub const LEAF_VALIDITY_SECS: u64 = 365 * 86_400;
/// A certificate this close to its end is renewed.
pub const RENEW_BEFORE_SECS: u64 = 30 * 86_400;
const CA_NOT_AFTER: &str = "roster.dev/ca-not-after";
const TLS_NOT_AFTER: &str = "roster.dev/tls-not-after";
const TLS_NAMES: &str = "roster.dev/tls-names";

/// What the Secret holds, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The CA bundle: the current CA first, then a previous one still valid.
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub ca_not_after: u64,
    pub tls_pem: String,
    pub tls_key_pem: String,
    pub tls_not_after: u64,
    pub tls_names: Vec<String>,
}

/// What to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Keep,
    /// A new serving certificate from the same CA (near its end, or for other names).
    Leaf,
    /// A new CA (none yet, or it would end before a new serving certificate does) and a leaf.
    CaAndLeaf,
}

pub fn renewal(stored: Option<&Stored>, names: &[String], now: u64) -> Renewal {
    let Some(s) = stored else { return Renewal::CaAndLeaf };
    if s.ca_not_after < now + LEAF_VALIDITY_SECS + RENEW_BEFORE_SECS {
        Renewal::CaAndLeaf
    } else if s.tls_not_after < now + RENEW_BEFORE_SECS || s.tls_names != names {
        Renewal::Leaf
    } else {
        Renewal::Keep
    }
}

/// The names the API server reaches the webhook's Service by.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

fn at(secs: u64) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())
}

/// A new self-signed CA valid from a little before `now` until `not_after` (PEM certificate, PEM key).
/// `path_len`: how many intermediate CAs may follow (None: unconstrained). Also used for the
/// RegistryClusters' server CAs.
pub fn new_ca(common_name: &str, path_len: Option<u8>, now: u64, not_after: u64) -> Result<(String, String), String> {
    let e = |e: rcgen::Error| e.to_string();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    p.is_ca = rcgen::IsCa::Ca(match path_len {
        Some(n) => rcgen::BasicConstraints::Constrained(n),
        None => rcgen::BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    // Clocks of the machines that check it differ a little.
    p.not_before = at(now.saturating_sub(300))?;
    p.not_after = at(not_after)?;
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let cert = p.self_signed(&key).map_err(e)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What a certificate signed by one of the operator's CAs is for.
#[derive(Debug, Clone, PartialEq)]
pub struct LeafRequest {
    /// DNS names; the first is also the common name.
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
    /// Also a client certificate (servers dial each other with theirs).
    pub client_auth: bool,
    pub not_before: u64,
    pub not_after: u64,
}

/// A certificate and a new key for `leaf`, signed by the CA (the first certificate of
/// `ca_bundle_pem`, and its key): (PEM certificate, PEM key).
pub fn sign_leaf(ca_bundle_pem: &str, ca_key_pem: &str, leaf: &LeafRequest) -> Result<(String, String), String> {
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(e)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(first_pem(ca_bundle_pem), ca_key).map_err(e)?;
    let mut params = rcgen::CertificateParams::new(leaf.dns_names.clone()).map_err(e)?;
    params.subject_alt_names.extend(leaf.ip_addresses.iter().copied().map(rcgen::SanType::IpAddress));
    params.distinguished_name.push(rcgen::DnType::CommonName, leaf.dns_names.first().cloned().unwrap_or_default());
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    if leaf.client_auth {
        params.extended_key_usages.push(rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    }
    params.not_before = at(leaf.not_before)?;
    params.not_after = at(leaf.not_after)?;
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let cert = params.signed_by(&key, &issuer).map_err(e)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issues what `renewal` asked for, keeping what it did not.
pub fn issue(stored: Option<&Stored>, what: Renewal, names: &[String], now: u64) -> Result<Stored, String> {
    let (ca_pem, ca_key_pem, ca_not_after) = match (what, stored) {
        (Renewal::Leaf | Renewal::Keep, Some(s)) => (s.ca_pem.clone(), s.ca_key_pem.clone(), s.ca_not_after),
        _ => {
            let (cert, key) = new_ca("roster-operator webhook CA", Some(0), now, now + CA_VALIDITY_SECS)?;
            // The old CA stays in the bundle while it is still valid.
            let mut bundle = cert;
            if let Some(old) = stored.filter(|s| s.ca_not_after > now) {
                bundle.push_str(first_pem(&old.ca_pem));
            }
            (bundle, key, now + CA_VALIDITY_SECS)
        }
    };
    if what == Renewal::Keep {
        if let Some(s) = stored {
            return Ok(s.clone());
        }
    }
    let tls_not_after = (now + LEAF_VALIDITY_SECS).min(ca_not_after);
    let leaf = LeafRequest {
        dns_names: names.to_vec(),
        ip_addresses: Vec::new(),
        client_auth: false,
        not_before: now.saturating_sub(300),
        not_after: tls_not_after,
    };
    let (tls_pem, tls_key_pem) = sign_leaf(&ca_pem, &ca_key_pem, &leaf)?;
    Ok(Stored { ca_pem, ca_key_pem, ca_not_after, tls_pem, tls_key_pem, tls_not_after, tls_names: names.to_vec() })
}

/// The first PEM block of a bundle.
pub fn first_pem(bundle: &str) -> &str {
    const END: &str = "-----END CERTIFICATE-----";
    match bundle.find(END) {
        Some(i) => &bundle[..i + END.len()],
        None => bundle,
    }
    .trim_start()
    .trim_end_matches('\n')
}

pub fn to_secret(name: &str, namespace: &str, s: &Stored, resource_version: Option<String>) -> Secret {
    let data = BTreeMap::from([
        ("ca.crt".to_string(), ByteString(s.ca_pem.clone().into_bytes())),
        ("ca.key".to_string(), ByteString(s.ca_key_pem.clone().into_bytes())),
        ("tls.crt".to_string(), ByteString(s.tls_pem.clone().into_bytes())),
        ("tls.key".to_string(), ByteString(s.tls_key_pem.clone().into_bytes())),
    ]);
    let annotations = BTreeMap::from([
        (CA_NOT_AFTER.to_string(), s.ca_not_after.to_string()),
        (TLS_NOT_AFTER.to_string(), s.tls_not_after.to_string()),
        (TLS_NAMES.to_string(), s.tls_names.join(",")),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            annotations: Some(annotations),
            resource_version,
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// The Secret's contents; None when anything is missing or unreadable (then it is issued anew).
pub fn from_secret(secret: &Secret) -> Option<Stored> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    let annotations = secret.metadata.annotations.as_ref()?;
    let number = |k: &str| annotations.get(k).and_then(|v| v.parse::<u64>().ok());
    Some(Stored {
        ca_pem: text("ca.crt")?,
        ca_key_pem: text("ca.key")?,
        ca_not_after: number(CA_NOT_AFTER)?,
        tls_pem: text("tls.crt")?,
        tls_key_pem: text("tls.key")?,
        tls_not_after: number(TLS_NOT_AFTER)?,
        tls_names: annotations.get(TLS_NAMES)?.split(',').filter(|n| !n.is_empty()).map(str::to_string).collect(),
    })
}

/// The serving certificate the webhook presents; replaced in place when renewed.
#[derive(Debug, Clone, Default)]
pub struct CertStore(Arc<RwLock<Option<Arc<CertifiedKey>>>>);

impl CertStore {
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("serving certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("serving key: {e}"))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(Arc::new(CertifiedKey::new(chain, signer)));
        }
        Ok(())
    }

    pub fn is_set(&self) -> bool {
        self.0.read().is_ok_and(|s| s.is_some())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().and_then(|s| s.clone())
    }
}

/// Where the certificate lives and whom it is for.
#[derive(Debug, Clone)]
pub struct CertTarget {
    pub namespace: String,
    pub secret: String,
    /// The MutatingWebhookConfiguration whose webhooks get the `caBundle`.
    pub webhook_config: String,
    pub names: Vec<String>,
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// One pass: read the Secret, issue what is due, keep the bundle in the webhook configuration, and
/// serve the certificate. Returns what was done.
pub async fn ensure(
    client: &kube::Client,
    target: &CertTarget,
    store: &CertStore,
    now: u64,
) -> Result<Renewal, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    let existing =
        secrets.get_opt(&target.secret).await.map_err(|e| format!("reading Secret {}: {e}", target.secret))?;
    let stored = existing.as_ref().and_then(from_secret);
    let what = renewal(stored.as_ref(), &target.names, now);
    let current = match what {
        Renewal::Keep => stored.clone().ok_or("nothing stored")?,
        _ => {
            let issued = issue(stored.as_ref(), what, &target.names, now)?;
            let rv = existing.as_ref().and_then(|s| s.metadata.resource_version.clone());
            let secret = to_secret(&target.secret, &target.namespace, &issued, rv.clone());
            let written = match rv {
                Some(_) => secrets.replace(&target.secret, &PostParams::default(), &secret).await,
                None => secrets.create(&PostParams::default(), &secret).await,
            };
            match written {
                Ok(_) => {
                    tracing::info!(secret = %target.secret, ?what, not_after = issued.tls_not_after, "issued the webhook's certificate");
                    issued
                }
                // Another replica wrote first: use what it wrote.
                Err(e) if is_status(&e, 409) => {
                    let theirs = secrets.get(&target.secret).await.map_err(|e| e.to_string())?;
                    from_secret(&theirs).ok_or("the Secret another replica wrote is unreadable")?
                }
                Err(e) => return Err(format!("writing Secret {}: {e}", target.secret)),
            }
        }
    };
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    match configs.get_opt(&target.webhook_config).await.map_err(|e| e.to_string())? {
        Some(mut config) => {
            let bundle = ByteString(current.ca_pem.clone().into_bytes());
            let mut changed = false;
            for w in config.webhooks.iter_mut().flatten() {
                if w.client_config.ca_bundle.as_ref() != Some(&bundle) {
                    w.client_config.ca_bundle = Some(bundle.clone());
                    changed = true;
                }
            }
            if changed {
                configs
                    .replace(&target.webhook_config, &PostParams::default(), &config)
                    .await
                    .map_err(|e| format!("setting the caBundle of {}: {e}", target.webhook_config))?;
                tracing::info!(config = %target.webhook_config, "set the webhook's caBundle");
            }
        }
        None => {
            tracing::warn!(config = %target.webhook_config, "no such MutatingWebhookConfiguration: pods get no sidecars")
        }
    }
    store.set(&current.tls_pem, &current.tls_key_pem)?;
    Ok(what)
}

/// `ensure` every 10 minutes (10 s after a failure), forever.
pub async fn keep(client: kube::Client, target: CertTarget, store: CertStore) {
    loop {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let pause = match ensure(&client, &target, &store, now).await {
            Ok(_) => Duration::from_secs(600),
            Err(e) => {
                tracing::warn!(error = %e, "webhook certificate");
                Duration::from_secs(10)
            }
        };
        tokio::time::sleep(pause).await;
    }
}
