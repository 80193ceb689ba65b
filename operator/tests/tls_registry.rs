//! The certificate the operator issues for a cluster works with the registry's own TLS code: a
//! server loading it (`registry::tls::Material`, as `roster server --tls-*` does) completes a mutual
//! TLS handshake with another server dialling it with `verify_server_hostname` for
//! `server.<dc>.consul`; per-pod names verify through the wildcard; other names and CAs fail. The
//! sidecars' client certificate gets them past `verify_incoming`, and cannot pose as a server.

use std::sync::Arc;

use registry::tls::{Expect, Material, TlsFiles};
use roster_operator::registry_cluster::tls::{new_ca, Ca, Leaf, LeafCert, DEFAULT_VALIDITY_SECS};
use roster_operator::registry_cluster::{validate, ValidCluster, DEFAULT_IMAGE};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};

fn cluster() -> ValidCluster {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registry_cluster/tls.yaml");
    let rc = serde_yaml::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("parses");
    validate(&rc, DEFAULT_IMAGE).expect("valid")
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

/// Writes the Secret's three files as the volume would hold them and loads them as a server does.
fn material(dir: &tempfile::TempDir, ca: &Ca, own: &LeafCert) -> Arc<Material> {
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let files = TlsFiles {
        ca_file: write("ca.crt", &ca.cert_pem),
        cert_file: Some(write("tls.crt", &own.cert_pem)),
        key_file: Some(write("tls.key", &own.key_pem)),
    };
    Material::load(files).expect("the registry accepts the operator's files")
}

/// Runs a handshake in memory; the first error either side raises.
fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), rustls::Error> {
    for _ in 0..16 {
        let mut to_server = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut to_server).expect("buffer");
        }
        if !to_server.is_empty() {
            server.read_tls(&mut &to_server[..]).expect("buffer");
            server.process_new_packets()?;
        }
        let mut to_client = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut to_client).expect("buffer");
        }
        if !to_client.is_empty() {
            client.read_tls(&mut &to_client[..]).expect("buffer");
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    Err(rustls::Error::General("the handshake made no progress".into()))
}

/// Server `serving` (verify_incoming) dialled by server `dialling`, which expects `expect`.
fn dial(serving: &Arc<Material>, dialling: &Arc<Material>, expect: Expect) -> Result<(), rustls::Error> {
    let server_config = serving.server_config(true).expect("server config");
    let client_config = dialling.client_config(expect).expect("client config");
    // Servers dial each other by address; the name checked is the expected one.
    let dialled = ServerName::try_from("10.0.0.7").expect("address");
    let mut client = ClientConnection::new(Arc::new(client_config), dialled).expect("client");
    let mut server = ServerConnection::new(Arc::new(server_config)).expect("server");
    handshake(&mut client, &mut server)
}

#[test]
fn servers_with_the_operators_certificate_verify_each_other_by_server_name() {
    let c = cluster();
    let ca = new_ca(&c, now()).expect("ca");
    let (a, b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    // Two servers; the second has a renewed certificate of the same CA.
    let first = material(&a, &ca, &Leaf::Server.issue(&c, &ca, DEFAULT_VALIDITY_SECS, now()).expect("cert"));
    let second = material(&b, &ca, &Leaf::Server.issue(&c, &ca, DEFAULT_VALIDITY_SECS, now()).expect("cert"));
    dial(&first, &second, Expect::Name("server.eu-west.consul".into())).expect("mutual TLS by server name");
    dial(&second, &first, Expect::Chain).expect("chain only");
    let wrong = dial(&first, &second, Expect::Name("server.us-east.consul".into())).expect_err("another datacenter");
    assert!(format!("{wrong:?}").contains("NotValidForName"), "{wrong:?}");
}

/// An injected sidecar (its client Secret mounted, `verify_server_hostname` on) reaches a server
/// that verifies incoming connections; without the certificate it is refused; and a sidecar's
/// certificate in a server's place fails the sidecars' name check.
#[test]
fn sidecars_with_the_client_certificate_pass_verify_incoming_and_cannot_pose_as_servers() {
    let c = cluster();
    let ca = new_ca(&c, now()).expect("ca");
    let dirs = [(); 3].map(|_| tempfile::tempdir().expect("dir"));
    let server = material(&dirs[0], &ca, &Leaf::Server.issue(&c, &ca, DEFAULT_VALIDITY_SECS, now()).expect("cert"));
    let sidecar = material(&dirs[1], &ca, &Leaf::Client.issue(&c, &ca, DEFAULT_VALIDITY_SECS, now()).expect("cert"));
    let server_name = Expect::Name("server.eu-west.consul".into());
    dial(&server, &sidecar, server_name.clone()).expect("the sidecar is let in and verifies the server");
    let ca_file = dirs[2].path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).expect("write");
    let bare = Material::load(TlsFiles { ca_file, cert_file: None, key_file: None }).expect("CA only");
    assert!(dial(&server, &bare, server_name.clone()).is_err(), "verify_incoming refuses a sidecar without it");
    let posing = dial(&sidecar, &sidecar, server_name).expect_err("a client certificate is no server's");
    assert!(format!("{posing:?}").contains("NotValidForName"), "{posing:?}");
}

#[test]
fn a_server_of_another_ca_is_refused_both_ways() {
    let c = cluster();
    let ours = new_ca(&c, now()).expect("ca");
    let theirs = new_ca(&c, now()).expect("another ca");
    let (a, b) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let ours_server = material(&a, &ours, &Leaf::Server.issue(&c, &ours, DEFAULT_VALIDITY_SECS, now()).expect("cert"));
    let stranger = material(&b, &theirs, &Leaf::Server.issue(&c, &theirs, DEFAULT_VALIDITY_SECS, now()).expect("cert"));
    assert!(dial(&ours_server, &stranger, Expect::Chain).is_err(), "the stranger cannot verify us");
    assert!(dial(&stranger, &ours_server, Expect::Chain).is_err(), "we cannot verify the stranger");
}

/// Clients reaching one server through the headless Service verify its per-pod name (the wildcard),
/// and the client Service's name, with an ordinary WebPKI verifier.
#[test]
fn per_pod_and_service_names_verify_through_standard_webpki() {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    registry::client::ensure_crypto_provider();
    let c = cluster();
    let ca = new_ca(&c, now()).expect("ca");
    let cert = Leaf::Server.issue(&c, &ca, DEFAULT_VALIDITY_SECS, now()).expect("cert");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("ca der")).expect("root");
    let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots)).build().expect("verifier");
    let leaf = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("der");
    let check = |name: &str| {
        let name = ServerName::try_from(name.to_string()).expect("name");
        verifier.verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
    };
    for ok in [
        "registry-2.registry-server.shop.svc",
        "registry-0.registry-server.shop.svc.cluster.local",
        "registry.shop.svc",
        "localhost",
        "127.0.0.1",
    ] {
        check(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    assert!(check("registry-0.other-server.shop.svc").is_err());
}
