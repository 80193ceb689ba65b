//! `roster tls ca create` and `roster tls cert create`: a CA and agents' certificates as Consul's
//! `consul tls` commands make them (the same file names and the same names inside), so a cluster
//! can turn TLS on without another tool. Issuing is pure but for the key's randomness; writing
//! files is [`save`].

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Whom a certificate is for; the name it carries follows Consul's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `server.<dc>.<domain>`: what `verify_server_hostname` checks.
    Server,
    /// `client.<dc>.<domain>`: sidecars (Consul's client agents).
    Client,
    /// `cli.client.<dc>.<domain>`: tools and people calling the HTTPS API.
    Cli,
}

impl Role {
    fn word(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
            Role::Cli => "cli",
        }
    }
}

/// What to put in an agent's certificate.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub role: Role,
    pub datacenter: String,
    pub domain: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub days: u32,
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A minute back: clocks of the machines that check it differ a little.
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A new CA (Consul's `consul tls ca create`): a self-signed certificate that signs the agents'.
pub fn create_ca(domain: &str, days: u32) -> Result<Issued, String> {
    let key = KeyPair::generate().map_err(rcgen_error("generating the CA key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let serial: u32 = rand::random();
    dn.push(DnType::CommonName, format!("Roster Agent CA {serial}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.subject_alt_names =
        vec![SanType::DnsName(domain.trim_end_matches('.').to_string().try_into().map_err(rcgen_error("the domain"))?)];
    validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(rcgen_error("signing the CA"))?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// The DNS names an agent's certificate carries: its role's name first, `localhost`, then `extra`.
pub fn names(leaf: &Leaf) -> Vec<String> {
    let domain = leaf.domain.trim_end_matches('.');
    let own = match leaf.role {
        Role::Server => crate::tls::server_name(&leaf.datacenter, domain),
        Role::Client => format!("client.{}.{domain}", leaf.datacenter),
        Role::Cli => format!("cli.client.{}.{domain}", leaf.datacenter),
    };
    let mut names = vec![own, "localhost".to_string()];
    names.extend(leaf.dns_names.iter().filter(|n| !n.is_empty()).cloned());
    names.dedup();
    names
}

/// An agent's certificate signed by the CA (Consul's `consul tls cert create -server|-client|-cli`).
/// Both TLS uses are allowed: servers dial each other, and sidecars present theirs to servers.
pub fn create_cert(ca_cert_pem: &str, ca_key_pem: &str, leaf: &Leaf) -> Result<Issued, String> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(rcgen_error("the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(rcgen_error("the CA certificate"))?;
    let names = names(leaf);
    let mut params = CertificateParams::new(names.clone()).map_err(rcgen_error("a DNS name"))?;
    let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
    ips.extend(leaf.ip_addresses.iter().copied());
    ips.dedup();
    params.subject_alt_names.extend(ips.into_iter().map(SanType::IpAddress));
    params.distinguished_name.push(DnType::CommonName, names[0].clone());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, leaf.days);
    let key = KeyPair::generate().map_err(rcgen_error("generating the key"))?;
    let cert = params.signed_by(&key, &issuer).map_err(rcgen_error("signing the certificate"))?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Consul's file names: `consul-agent-ca.pem` and `-key.pem` for the CA.
pub fn ca_file_names(domain: &str) -> (String, String) {
    let d = domain.trim_end_matches('.');
    (format!("{d}-agent-ca.pem"), format!("{d}-agent-ca-key.pem"))
}

/// Consul's file names for an agent: `dc1-server-consul-0.pem` and `-key.pem`, numbered from the
/// first number not taken in `dir`.
pub fn leaf_file_names(dir: &Path, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let d = leaf.domain.trim_end_matches('.');
    let prefix = format!("{}-{}-{d}", leaf.datacenter, leaf.role.word());
    let mut n = 0;
    loop {
        let cert = dir.join(format!("{prefix}-{n}.pem"));
        let key = dir.join(format!("{prefix}-{n}-key.pem"));
        if !cert.exists() && !key.exists() {
            return (cert, key);
        }
        n += 1;
    }
}

/// Writes a certificate and its key (the key readable by its owner only); never overwrites.
pub fn save(issued: &Issued, cert: &Path, key: &Path) -> Result<(), String> {
    for p in [cert, key] {
        if p.exists() {
            return Err(format!("{} already exists: not overwritten", p.display()));
        }
    }
    write_new(cert, issued.cert_pem.as_bytes(), 0o644)?;
    write_new(key, issued.key_pem.as_bytes(), 0o600)
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(contents).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{Expect, Material, TlsFiles};
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    fn leaf(role: Role, dc: &str) -> Leaf {
        Leaf {
            role,
            datacenter: dc.into(),
            domain: "consul.".into(),
            dns_names: vec![],
            ip_addresses: vec![],
            days: 30,
        }
    }

    struct Pki {
        dir: tempfile::TempDir,
        ca: Issued,
    }

    impl Pki {
        fn new() -> Self {
            Pki { dir: tempfile::tempdir().unwrap(), ca: create_ca("consul", 365).unwrap() }
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        }

        fn material(&self, own: Option<&Issued>) -> Arc<Material> {
            let ca_file = self.write("ca.pem", &self.ca.cert_pem);
            let (cert_file, key_file) = match own {
                Some(i) => (Some(self.write("own.pem", &i.cert_pem)), Some(self.write("own-key.pem", &i.key_pem))),
                None => (None, None),
            };
            Material::load(TlsFiles { ca_file, cert_file, key_file }).unwrap()
        }

        fn issue(&self, role: Role, dc: &str) -> Issued {
            create_cert(&self.ca.cert_pem, &self.ca.key_pem, &leaf(role, dc)).unwrap()
        }
    }

    use std::sync::Arc;

    /// Runs the verifier a client with `expect` would use on `presented`, dialled at 10.0.0.1.
    fn dial(material: &Arc<Material>, expect: Expect, presented: &Issued) -> Result<(), String> {
        let verifier = crate::tls::PeerVerifier { material: material.clone(), expect };
        let cert = CertificateDer::from_pem_slice(presented.cert_pem.as_bytes()).unwrap();
        let dialled = ServerName::try_from("10.0.0.1").unwrap();
        verifier.verify_server_cert(&cert, &[], &dialled, &[], UnixTime::now()).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn server_certificates_carry_consuls_names_and_verify_by_name_not_address() {
        let pki = Pki::new();
        let server = pki.issue(Role::Server, "dc1");
        assert_eq!(names(&leaf(Role::Server, "dc1"))[0], "server.dc1.consul");
        let m = pki.material(None);
        dial(&m, Expect::Name("server.dc1.consul".into()), &server).expect("its own name");
        dial(&m, Expect::Chain, &server).expect("chain only: the address dialled does not matter");
        let err = dial(&m, Expect::Name("server.dc2.consul".into()), &server).unwrap_err();
        assert!(err.contains("not valid for name") || err.contains("NotValidForName"), "{err}");
    }

    #[test]
    fn a_client_certificate_cannot_pose_as_a_server_when_hostnames_are_verified() {
        let pki = Pki::new();
        let client = pki.issue(Role::Client, "dc1");
        let m = pki.material(None);
        assert!(dial(&m, Expect::Name("server.dc1.consul".into()), &client).is_err());
        // Without verify_server_hostname only the CA counts (Consul's behaviour too).
        dial(&m, Expect::Chain, &client).expect("same CA");
    }

    #[test]
    fn another_cas_certificate_is_refused_even_chain_only() {
        let ours = Pki::new();
        let theirs = Pki::new();
        let stranger = theirs.issue(Role::Server, "dc1");
        let m = ours.material(None);
        let err = dial(&m, Expect::Chain, &stranger).unwrap_err();
        assert!(err.to_lowercase().contains("unknown") || err.contains("UnknownIssuer"), "{err}");
        assert!(dial(&m, Expect::Name("server.dc1.consul".into()), &stranger).is_err());
    }

    #[test]
    fn changed_files_are_read_again_and_broken_ones_keep_the_old() {
        let pki = Pki::new();
        let first = pki.issue(Role::Server, "dc1");
        let m = pki.material(Some(&first));
        assert!(!m.reload_if_changed().unwrap(), "nothing changed");
        // A half-written certificate: refused, the old one stays in use.
        std::fs::write(pki.dir.path().join("own.pem"), "-----BEGIN CERTIFICATE-----\nAAAA").unwrap();
        assert!(m.reload_if_changed().is_err());
        assert!(m.has_certificate());
        let second = pki.issue(Role::Server, "dc1");
        pki.write("own.pem", &second.cert_pem);
        pki.write("own-key.pem", &second.key_pem);
        assert!(m.reload_if_changed().unwrap());
        let served = m.current().key.clone().unwrap();
        let expected = CertificateDer::from_pem_slice(second.cert_pem.as_bytes()).unwrap();
        assert_eq!(served.cert[0], expected, "the new certificate is the one presented");
    }

    #[test]
    fn mismatched_or_missing_files_are_refused_with_the_file_named() {
        let pki = Pki::new();
        let a = pki.issue(Role::Server, "dc1");
        let b = pki.issue(Role::Server, "dc1");
        let ca_file = pki.write("ca.pem", &pki.ca.cert_pem);
        let cert_file = pki.write("a.pem", &a.cert_pem);
        let key_file = pki.write("b-key.pem", &b.key_pem);
        let err = Material::load(TlsFiles {
            ca_file: ca_file.clone(),
            cert_file: Some(cert_file.clone()),
            key_file: Some(key_file),
        })
        .unwrap_err();
        assert!(err.contains("do not match") && err.contains("a.pem"), "{err}");
        let err =
            Material::load(TlsFiles { ca_file: pki.dir.path().join("nope.pem"), cert_file: None, key_file: None })
                .unwrap_err();
        assert!(err.contains("nope.pem"), "{err}");
        let err = Material::load(TlsFiles { ca_file, cert_file: Some(cert_file), key_file: None }).unwrap_err();
        assert!(err.contains("set both"), "{err}");
    }

    #[test]
    fn files_are_named_as_consul_names_them_and_never_overwritten() {
        let pki = Pki::new();
        assert_eq!(ca_file_names("consul."), ("consul-agent-ca.pem".into(), "consul-agent-ca-key.pem".into()));
        let l = leaf(Role::Server, "dc1");
        let (c0, k0) = leaf_file_names(pki.dir.path(), &l);
        assert!(c0.ends_with("dc1-server-consul-0.pem") && k0.ends_with("dc1-server-consul-0-key.pem"));
        let issued = pki.issue(Role::Server, "dc1");
        save(&issued, &c0, &k0).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&k0).unwrap().permissions().mode() & 0o777, 0o600);
        let (c1, _) = leaf_file_names(pki.dir.path(), &l);
        assert!(c1.ends_with("dc1-server-consul-1.pem"));
        assert!(save(&issued, &c0, &k0).unwrap_err().contains("already exists"));
    }
}
