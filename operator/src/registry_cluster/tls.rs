//! The cluster's TLS, pure: which names its certificates carry, whether the one in a Secret must be
//! issued again (`decide`: certificate bytes + now), issuing it from the cluster's CA, and the
//! objects that hold them. The controller only reads and writes what these return.
//!
//! Two certificates (`Leaf`): one serves every server of a cluster (the per-pod names are a
//! wildcard under the headless Service), so scaling never needs a new one; one is what sidecars
//! present to servers that verify incoming connections (the injector copies its Secret into the
//! namespaces of the pods it injects). Renewal writes new bytes into the same Secret: the pod
//! template never changes, the kubelet updates the mounted volume in place, and servers and
//! sidecars re-read the files within a second. No rolling restart.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use super::build::{headless_name, meta};
use super::validate::ValidCluster;
use crate::inject::certs;

pub const HTTPS_PORT: i32 = 8501;
/// Where the server Secret is mounted in the server pods.
pub const MOUNT_PATH: &str = "/etc/roster/tls";
/// The servers' DNS domain (the server's default, `consul.`), part of `server.<dc>.<domain>`.
pub const DOMAIN: &str = "consul";
pub const DEFAULT_VALIDITY_SECS: u64 = 90 * 86_400;
/// cert-manager's own lower bound for a Certificate's duration.
pub const MIN_VALIDITY_SECS: u64 = 3_600;
pub const CA_VALIDITY_SECS: u64 = 10 * 365 * 86_400;
/// The Secret keys, as `kubernetes.io/tls` Secrets and cert-manager name them.
pub const CA_CRT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// A cert-manager issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerRef {
    pub name: String,
    pub kind: String,
    pub group: String,
}

/// A valid `spec.tls` that is enabled, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub verify_incoming: bool,
    pub validity_secs: u64,
    /// cert-manager issues the certificate; None: the operator, from its CA.
    pub cert_manager: Option<IssuerRef>,
}

/// The Secret holding the cluster's CA (certificate and key). Created once, never overwritten.
pub fn ca_secret_name(c: &ValidCluster) -> String {
    format!("{}-tls-ca", c.name)
}

/// The `kubernetes.io/tls` Secret mounted into every server.
pub fn server_secret_name(c: &ValidCluster) -> String {
    format!("{}-server-tls", c.name)
}

/// The `kubernetes.io/tls` Secret with the sidecars' client certificate.
pub fn client_secret_name(c: &ValidCluster) -> String {
    format!("{}-client-tls", c.name)
}

/// The ConfigMap publishing the CA certificate (`ca.crt`) for clients and sidecars.
pub fn ca_config_map_name(c: &ValidCluster) -> String {
    format!("{}-ca", c.name)
}

/// The names in the server certificate: `server.<dc>.<domain>` first (what
/// `verify_server_hostname` checks), the client Service, the headless Service and, by wildcard,
/// each server pod under it, then localhost.
pub fn server_dns_names(c: &ValidCluster) -> Vec<String> {
    let (name, ns, headless) = (&c.name, &c.namespace, headless_name(c));
    vec![
        format!("server.{}.{DOMAIN}", c.datacenter),
        name.clone(),
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}.svc.cluster.local"),
        format!("{headless}.{ns}.svc"),
        format!("{headless}.{ns}.svc.cluster.local"),
        format!("*.{headless}.{ns}.svc"),
        format!("*.{headless}.{ns}.svc.cluster.local"),
        "localhost".to_string(),
    ]
}

pub fn server_ip_addresses() -> Vec<IpAddr> {
    vec![IpAddr::from([127, 0, 0, 1])]
}

/// The client certificate's name: Consul's `client.<dc>.<domain>` for agents' certificates.
pub fn client_dns_names(c: &ValidCluster) -> Vec<String> {
    vec![format!("client.{}.{DOMAIN}", c.datacenter)]
}

/// The certificates the operator keeps from the cluster's CA, each in its own Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// The servers' (HTTPS and RPC, and as clients of each other).
    Server,
    /// What sidecars present to servers that verify incoming connections.
    Client,
}

impl Leaf {
    pub fn secret_name(self, c: &ValidCluster) -> String {
        match self {
            Leaf::Server => server_secret_name(c),
            Leaf::Client => client_secret_name(c),
        }
    }

    pub fn dns_names(self, c: &ValidCluster) -> Vec<String> {
        match self {
            Leaf::Server => server_dns_names(c),
            Leaf::Client => client_dns_names(c),
        }
    }

    fn ip_addresses(self) -> Vec<IpAddr> {
        match self {
            Leaf::Server => server_ip_addresses(),
            Leaf::Client => Vec::new(),
        }
    }

    /// The Event reason when the operator issues one.
    pub fn issued_reason(self) -> &'static str {
        match self {
            Leaf::Server => "ServerCertificateIssued",
            Leaf::Client => "ClientCertificateIssued",
        }
    }

    /// The certificate (ServerAuth and ClientAuth: servers dial each other with theirs), valid for
    /// `validity_secs` from `now` but never past the CA.
    pub fn issue(self, c: &ValidCluster, ca: &Ca, validity_secs: u64, now: u64) -> Result<LeafCert, String> {
        let ca_info = read_cert(&ca.cert_pem).map_err(|e| format!("the CA certificate: {e}"))?;
        let leaf = certs::LeafRequest {
            dns_names: self.dns_names(c),
            ip_addresses: self.ip_addresses(),
            client_auth: true,
            not_before: now.saturating_sub(60),
            not_after: (now + validity_secs).min(ca_info.not_after),
        };
        let (cert_pem, key_pem) = certs::sign_leaf(&ca.cert_pem, &ca.key_pem, &leaf)?;
        Ok(LeafCert { cert_pem, key_pem })
    }

    /// The Secret holding it, with the CA certificate beside it (`ca.crt`), as cert-manager writes.
    pub fn secret(self, c: &ValidCluster, owner: &Option<OwnerReference>, ca_pem: &str, cert: &LeafCert) -> Secret {
        Secret {
            metadata: meta(c, self.secret_name(c), owner),
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data(&[(TLS_CRT, &cert.cert_pem), (TLS_KEY, &cert.key_pem), (CA_CRT, ca_pem)])),
            ..Default::default()
        }
    }

    /// The Certificate asking cert-manager for its Secret, with the names and uses the operator's
    /// own certificate has; cert-manager renews it at two thirds of its life (its default).
    pub fn certificate(
        self,
        c: &ValidCluster,
        owner: &Option<OwnerReference>,
        issuer: &IssuerRef,
        validity_secs: u64,
    ) -> DynamicObject {
        let resource = certificate_resource();
        let name = self.secret_name(c);
        let names = self.dns_names(c);
        let mut obj = DynamicObject::new(&name, &resource).within(&c.namespace);
        obj.metadata = meta(c, name.clone(), owner);
        obj.data = serde_json::json!({
            "spec": {
                "secretName": name,
                // Labelled as the operator's, so a change to the Secret wakes the controller.
                "secretTemplate": {"labels": {"app.kubernetes.io/managed-by": crate::MANAGER,
                                              "app.kubernetes.io/instance": c.name}},
                "commonName": names[0],
                "dnsNames": names,
                "ipAddresses": self.ip_addresses().iter().map(ToString::to_string).collect::<Vec<_>>(),
                "duration": go_duration(validity_secs),
                "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
                "privateKey": {"rotationPolicy": "Always", "algorithm": "ECDSA", "size": 256},
                "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
            }
        });
        obj
    }
}

impl std::fmt::Display for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Leaf::Server => "server",
            Leaf::Client => "client",
        })
    }
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: u64,
    pub not_after: u64,
    pub dns_names: Vec<String>,
}

impl CertInfo {
    /// Two thirds into its life (cert-manager's default too).
    pub fn renew_after(&self) -> u64 {
        self.not_before + self.not_after.saturating_sub(self.not_before) * 2 / 3
    }
}

/// Reads the first certificate of a PEM bundle.
pub fn read_cert(pem: &str) -> Result<CertInfo, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
    let cert = block.parse_x509().map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let secs = |t: x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0);
    let validity = cert.validity();
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(CertInfo { not_before: secs(validity.not_before), not_after: secs(validity.not_after), dns_names })
}

/// Why a certificate is issued again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Missing,
    Unreadable(String),
    /// Two thirds of its life are over.
    RenewalDue,
    /// The cluster's names changed (datacenter, name).
    NamesChanged,
    /// Signed by another CA than the cluster's (the CA Secret was replaced).
    OtherCa,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Missing => write!(f, "none yet"),
            Reason::Unreadable(why) => write!(f, "unreadable ({why})"),
            Reason::RenewalDue => write!(f, "two thirds through its life"),
            Reason::NamesChanged => write!(f, "lacks the cluster's current names"),
            Reason::OtherCa => write!(f, "not from the cluster's CA"),
        }
    }
}

/// What to do about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Keep(CertInfo),
    Issue(Reason),
}

/// A certificate Secret's contents, as far as the decision needs them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Current {
    pub cert_pem: Option<String>,
    pub ca_pem: Option<String>,
}

impl Current {
    pub fn from_secret(secret: &Secret) -> Current {
        let text =
            |k: &str| secret.data.as_ref().and_then(|d| d.get(k)).and_then(|b| String::from_utf8(b.0.clone()).ok());
        Current { cert_pem: text(TLS_CRT), ca_pem: text(CA_CRT) }
    }
}

/// Whether the certificate in a Secret (None: no Secret) can stay, at `now`, for a
/// cluster whose CA certificate is `ca_pem` and whose certificate must name `names`.
pub fn decide(current: Option<&Current>, ca_pem: &str, names: &[String], now: u64) -> Decision {
    let Some(cert_pem) = current.and_then(|c| c.cert_pem.as_deref()) else { return Decision::Issue(Reason::Missing) };
    let info = match read_cert(cert_pem) {
        Ok(info) => info,
        Err(why) => return Decision::Issue(Reason::Unreadable(why)),
    };
    if current.and_then(|c| c.ca_pem.as_deref()).map(str::trim) != Some(ca_pem.trim()) {
        Decision::Issue(Reason::OtherCa)
    } else if now >= info.renew_after() {
        Decision::Issue(Reason::RenewalDue)
    } else if names.iter().any(|n| !info.dns_names.contains(n)) {
        Decision::Issue(Reason::NamesChanged)
    } else {
        Decision::Keep(info)
    }
}

/// The cluster's CA.
#[derive(Debug, Clone, PartialEq)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn new_ca(c: &ValidCluster, now: u64) -> Result<Ca, String> {
    let name = format!("Roster Agent CA {}/{}", c.namespace, c.name);
    let (cert_pem, key_pem) = certs::new_ca(&name, None, now, now + CA_VALIDITY_SECS)?;
    Ok(Ca { cert_pem, key_pem })
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone, PartialEq)]
pub struct LeafCert {
    pub cert_pem: String,
    pub key_pem: String,
}

fn data(entries: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    entries.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()
}

pub fn ca_secret(c: &ValidCluster, owner: &Option<OwnerReference>, ca: &Ca) -> Secret {
    Secret {
        metadata: meta(c, ca_secret_name(c), owner),
        type_: Some("Opaque".into()),
        data: Some(data(&[(CA_CRT, &ca.cert_pem), (CA_KEY, &ca.key_pem)])),
        ..Default::default()
    }
}

/// The CA a Secret holds; None when anything is missing or unreadable (then it is not overwritten:
/// the controller says so instead).
pub fn ca_from_secret(secret: &Secret) -> Option<Ca> {
    let d = secret.data.as_ref()?;
    let text = |k: &str| d.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    let ca = Ca { cert_pem: text(CA_CRT)?, key_pem: text(CA_KEY)? };
    read_cert(&ca.cert_pem).ok()?;
    Some(ca)
}

pub fn ca_config_map(c: &ValidCluster, owner: &Option<OwnerReference>, ca_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta(c, ca_config_map_name(c), owner),
        data: Some(BTreeMap::from([(CA_CRT.to_string(), ca_pem.to_string())])),
        ..Default::default()
    }
}

/// cert-manager's `Certificate` (v1), without depending on cert-manager's types.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"), "certificates")
}

/// A Go duration cert-manager reads: whole hours when they fit, else seconds.
fn go_duration(secs: u64) -> String {
    if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ValidCluster {
        ValidCluster {
            name: "registry".into(),
            namespace: "shop".into(),
            replicas: 3,
            image: "roster".into(),
            datacenter: "eu-west".into(),
            storage_size: "1Gi".into(),
            storage_class: None,
            acl_enabled: false,
            acl_default_deny: false,
            resources: None,
            gossip_key_secret: None,
            kubernetes_auth: None,
            tls: None,
            federation: None,
        }
    }

    const DAY: u64 = 86_400;
    const NOW: u64 = 1_800_000_000;

    fn issued(c: &ValidCluster, ca: &Ca, at: u64) -> Current {
        let cert = Leaf::Server.issue(c, ca, DEFAULT_VALIDITY_SECS, at).expect("issued");
        Current { cert_pem: Some(cert.cert_pem), ca_pem: Some(ca.cert_pem.clone()) }
    }

    #[test]
    fn a_fresh_certificate_is_kept_until_two_thirds_of_its_life() {
        let c = cluster();
        let ca = new_ca(&c, NOW).expect("ca");
        let names = server_dns_names(&c);
        let current = issued(&c, &ca, NOW);
        let Decision::Keep(info) = decide(Some(&current), &ca.cert_pem, &names, NOW) else { panic!("fresh") };
        assert_eq!(info.not_after, NOW + DEFAULT_VALIDITY_SECS);
        assert_eq!(info.renew_after(), NOW - 60 + (DEFAULT_VALIDITY_SECS + 60) * 2 / 3);
        assert!(matches!(decide(Some(&current), &ca.cert_pem, &names, NOW + 59 * DAY), Decision::Keep(_)));
        assert_eq!(decide(Some(&current), &ca.cert_pem, &names, NOW + 61 * DAY), Decision::Issue(Reason::RenewalDue));
        assert_eq!(
            decide(Some(&current), &ca.cert_pem, &names, NOW + 100 * DAY),
            Decision::Issue(Reason::RenewalDue),
            "an expired one too"
        );
    }

    #[test]
    fn missing_unreadable_foreign_or_misnamed_certificates_are_issued_again() {
        let c = cluster();
        let ca = new_ca(&c, NOW).expect("ca");
        let names = server_dns_names(&c);
        assert_eq!(decide(None, &ca.cert_pem, &names, NOW), Decision::Issue(Reason::Missing));
        assert_eq!(decide(Some(&Current::default()), &ca.cert_pem, &names, NOW), Decision::Issue(Reason::Missing));
        let garbage = Current { cert_pem: Some("-----BEGIN CERTIFICATE-----\nAAAA\n".into()), ca_pem: None };
        assert!(matches!(decide(Some(&garbage), &ca.cert_pem, &names, NOW), Decision::Issue(Reason::Unreadable(_))));
        let other = new_ca(&c, NOW).expect("another ca");
        let current = issued(&c, &other, NOW);
        assert_eq!(decide(Some(&current), &ca.cert_pem, &names, NOW), Decision::Issue(Reason::OtherCa));
        let current = issued(&c, &ca, NOW);
        let mut moved = c.clone();
        moved.datacenter = "eu-east".into();
        assert_eq!(
            decide(Some(&current), &ca.cert_pem, &server_dns_names(&moved), NOW),
            Decision::Issue(Reason::NamesChanged)
        );
    }

    #[test]
    fn the_server_certificate_names_every_way_servers_are_reached() {
        let c = cluster();
        let ca = new_ca(&c, NOW).expect("ca");
        let cert = Leaf::Server.issue(&c, &ca, DEFAULT_VALIDITY_SECS, NOW).expect("issued");
        let info = read_cert(&cert.cert_pem).expect("parses");
        for name in [
            "server.eu-west.consul",
            "registry.shop.svc",
            "registry-server.shop.svc",
            "*.registry-server.shop.svc",
            "*.registry-server.shop.svc.cluster.local",
            "localhost",
        ] {
            assert!(info.dns_names.iter().any(|n| n == name), "{name} missing from {:?}", info.dns_names);
        }
        let (_, block) = x509_parser::pem::parse_x509_pem(cert.cert_pem.as_bytes()).expect("pem");
        let x509 = block.parse_x509().expect("x509");
        let eku = x509.extended_key_usage().expect("eku").expect("present").value;
        assert!(eku.server_auth && eku.client_auth, "servers dial each other with it");
        let ips = x509.subject_alternative_name().expect("san").expect("present").value.general_names.clone();
        assert!(ips
            .iter()
            .any(|n| matches!(n, x509_parser::extensions::GeneralName::IPAddress(b) if *b == [127, 0, 0, 1])));
    }

    #[test]
    fn the_client_certificate_is_consuls_client_name_in_its_own_secret() {
        let c = cluster();
        let ca = new_ca(&c, NOW).expect("ca");
        let cert = Leaf::Client.issue(&c, &ca, DEFAULT_VALIDITY_SECS, NOW).expect("issued");
        assert_eq!(read_cert(&cert.cert_pem).expect("parses").dns_names, ["client.eu-west.consul"]);
        let (_, block) = x509_parser::pem::parse_x509_pem(cert.cert_pem.as_bytes()).expect("pem");
        let x509 = block.parse_x509().expect("x509");
        assert!(x509.extended_key_usage().expect("eku").expect("present").value.client_auth);
        let secret = Leaf::Client.secret(&c, &None, &ca.cert_pem, &cert);
        assert_eq!(secret.metadata.name.as_deref(), Some("registry-client-tls"));
        assert_ne!(Leaf::Client.secret_name(&c), Leaf::Server.secret_name(&c));
        // The server's names are not the client's: a server certificate in its place is issued again.
        let server = Leaf::Server.issue(&c, &ca, DEFAULT_VALIDITY_SECS, NOW).expect("issued");
        let current = Current { cert_pem: Some(server.cert_pem), ca_pem: Some(ca.cert_pem.clone()) };
        assert_eq!(
            decide(Some(&current), &ca.cert_pem, &client_dns_names(&c), NOW),
            Decision::Issue(Reason::NamesChanged)
        );
    }

    #[test]
    fn a_certificate_never_outlives_its_ca() {
        let c = cluster();
        let ca = new_ca(&c, NOW).expect("ca");
        let late = NOW + CA_VALIDITY_SECS - 10 * DAY;
        let cert = Leaf::Server.issue(&c, &ca, DEFAULT_VALIDITY_SECS, late).expect("issued");
        assert_eq!(read_cert(&cert.cert_pem).expect("parses").not_after, NOW + CA_VALIDITY_SECS);
    }

    #[test]
    fn secrets_round_trip_and_a_broken_ca_secret_reads_as_none() {
        let c = cluster();
        let ca = new_ca(&c, NOW).expect("ca");
        let secret = ca_secret(&c, &None, &ca);
        assert_eq!(ca_from_secret(&secret), Some(ca.clone()));
        let mut broken = secret.clone();
        broken.data.as_mut().expect("data").remove(CA_KEY);
        assert_eq!(ca_from_secret(&broken), None);
        let cert = Leaf::Server.issue(&c, &ca, DEFAULT_VALIDITY_SECS, NOW).expect("issued");
        let server = Leaf::Server.secret(&c, &None, &ca.cert_pem, &cert);
        assert_eq!(server.type_.as_deref(), Some("kubernetes.io/tls"));
        let current = Current::from_secret(&server);
        assert_eq!(current.cert_pem.as_deref(), Some(cert.cert_pem.as_str()));
        assert_eq!(current.ca_pem.as_deref(), Some(ca.cert_pem.as_str()));
    }

    #[test]
    fn durations_are_written_as_cert_manager_reads_them() {
        assert_eq!(go_duration(90 * DAY), "2160h");
        assert_eq!(go_duration(5400), "5400s");
    }
}
