//! TLS as Consul configures it: one CA, this agent's certificate and key, all PEM files re-read when
//! they change (so a rotated certificate takes effect without a restart). Used for the HTTPS API,
//! mutual TLS between servers on the RPC port, and sidecars' connections to servers.
//!
//! Consul's three switches: `verify_incoming` (a peer must present a certificate of our CA),
//! `verify_outgoing` (we dial servers over TLS and check their certificate against the CA) and
//! `verify_server_hostname` (a server's certificate must also name `server.<dc>.<domain>`, so a
//! client certificate of the same CA cannot pose as a server). Rustls with the ring provider only.

pub mod dial;
#[cfg(feature = "server")]
pub mod issue;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// The first byte of a TLS connection (a handshake record): how the RPC port tells TLS from plain.
pub const HANDSHAKE_BYTE: u8 = 0x16;

/// The files: the CA bundle (PEM, one or more certificates) and, optionally, this agent's
/// certificate chain and key (needed to serve TLS, or to present to a server that verifies incoming).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The name a server's certificate carries, as Consul's `verify_server_hostname` checks it.
pub fn server_name(datacenter: &str, domain: &str) -> String {
    format!("server.{datacenter}.{}", domain.trim_end_matches('.'))
}

/// What the other side's certificate must show besides being signed by our CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The CA's signature only (`verify_server_hostname` off).
    Chain,
    /// A DNS name in the certificate, whatever address was dialled (e.g. `server.dc1.consul`).
    Name(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the files held when last read.
#[derive(Debug)]
struct Loaded {
    key: Option<Arc<CertifiedKey>>,
    server_verifier: Arc<WebPkiServerVerifier>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

/// Modification times and sizes: a change in any means read again.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// The CA and this agent's certificate, swapped in place when the files change. Configurations built
/// from it ([`Material::client_config`], [`Material::server_config`]) always use the current ones.
#[derive(Debug)]
pub struct Material {
    files: TlsFiles,
    loaded: RwLock<Arc<Loaded>>,
    stamp: Mutex<Stamp>,
}

fn read_pem_file(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

fn load(files: &TlsFiles) -> Result<Loaded, String> {
    let ca = read_pem_file("tls ca_file", &files.ca_file)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| format!("tls ca_file {}: {e}", files.ca_file.display()))?;
        roots.add(cert).map_err(|e| format!("tls ca_file {}: {e}", files.ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("tls ca_file {}: no certificate in it", files.ca_file.display()));
    }
    let key = match (&files.cert_file, &files.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let pem = read_pem_file("tls cert_file", cert_file)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tls cert_file {}: {e}", cert_file.display()))?;
            if chain.is_empty() {
                return Err(format!("tls cert_file {}: no certificate in it", cert_file.display()));
            }
            let key_pem = read_pem_file("tls key_file", key_file)?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| format!("tls key_file {}: {e}", key_file.display()))?;
            let signer = rustls::crypto::ring::sign::any_supported_type(&key)
                .map_err(|e| format!("tls key_file {}: {e}", key_file.display()))?;
            let certified = CertifiedKey::new(chain, signer);
            certified.keys_match().map_err(|e| {
                format!("tls cert_file {} and key_file {} do not match: {e}", cert_file.display(), key_file.display())
            })?;
            Some(Arc::new(certified))
        }
        (None, None) => None,
        _ => return Err("tls cert_file and key_file go together: set both or neither".into()),
    };
    let roots = Arc::new(roots);
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| format!("tls ca_file {}: {e}", files.ca_file.display()))?;
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| format!("tls ca_file {}: {e}", files.ca_file.display()))?;
    Ok(Loaded { key, server_verifier, client_verifier })
}

fn stamp(files: &TlsFiles) -> Stamp {
    [Some(&files.ca_file), files.cert_file.as_ref(), files.key_file.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

impl Material {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, String> {
        crate::client::ensure_crypto_provider();
        let before = stamp(&files);
        let loaded = load(&files)?;
        Ok(Arc::new(Material { files, loaded: RwLock::new(Arc::new(loaded)), stamp: Mutex::new(before) }))
    }

    pub fn has_certificate(&self) -> bool {
        self.current().key.is_some()
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the files again if any changed since last read: Ok(true) when the new ones are in use.
    /// Half-written or broken files are an error and the old certificates stay.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamp(&self.files);
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *last == now {
            return Ok(false);
        }
        let loaded = load(&self.files)?;
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        *last = now;
        Ok(true)
    }

    /// Re-reads the files whenever they change, until `stop` turns true.
    pub async fn watch(self: Arc<Self>, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            match self.reload_if_changed() {
                Ok(true) => {
                    failing = false;
                    tracing::info!(ca = %self.files.ca_file.display(), "TLS certificates changed on disk: new connections use them");
                }
                Ok(false) => {}
                // Once per change, not every poll: a file being written is normal for a moment.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "TLS files changed but cannot be used; the previous ones stay");
                }
                Err(_) => {}
            }
        }
    }

    /// For dialling: the peer's certificate checked as `expect` says, ours presented when we have one.
    pub fn client_config(self: &Arc<Self>, expect: Expect) -> Result<rustls::ClientConfig, String> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier { material: self.clone(), expect }));
        Ok(if self.has_certificate() {
            builder.with_client_cert_resolver(Arc::new(OwnCertificate(self.clone())))
        } else {
            builder.with_no_client_auth()
        })
    }

    /// For serving: our certificate; a client's checked against the CA, and required when
    /// `require_client_certificate` (Consul's `verify_incoming`).
    pub fn server_config(self: &Arc<Self>, require_client_certificate: bool) -> Result<rustls::ServerConfig, String> {
        if !self.has_certificate() {
            return Err("serving TLS needs tls cert_file and key_file".into());
        }
        let verifier = ClientVerifier { material: self.clone(), mandatory: require_client_certificate };
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(OwnCertificate(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Our certificate, as the current files hold it.
#[derive(Debug)]
struct OwnCertificate(Arc<Material>);

impl ResolvesServerCert for OwnCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().key.clone()
    }
}

impl ResolvesClientCert for OwnCertificate {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current().key.clone()
    }

    fn has_certs(&self) -> bool {
        self.0.has_certificate()
    }
}

/// Checks a server's certificate against the current CA and, with `Expect::Name`, for that name
/// rather than the address dialled (servers are dialled by IP).
#[derive(Debug)]
struct PeerVerifier {
    material: Arc<Material>,
    expect: Expect,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        dialled: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let inner = self.material.current().server_verifier.clone();
        match &self.expect {
            Expect::Name(name) => {
                let name = ServerName::try_from(name.as_str())
                    .map_err(|_| rustls::Error::General(format!("{name:?} is not a DNS name")))?;
                inner.verify_server_cert(end_entity, intermediates, &name, ocsp, now)
            }
            // The chain is checked before the name: a name mismatch means the chain is good.
            Expect::Chain => match inner.verify_server_cert(end_entity, intermediates, dialled, ocsp, now) {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.material.current().server_verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.material.current().server_verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.material.current().server_verifier.supported_verify_schemes()
    }
}

/// Checks a client's certificate against the current CA.
#[derive(Debug)]
struct ClientVerifier {
    material: Arc<Material>,
    mandatory: bool,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    /// No hints (the CA may change under a running listener); clients send the one certificate they have.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.material.current().client_verifier.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.material.current().client_verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.material.current().client_verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.material.current().client_verifier.supported_verify_schemes()
    }
}
