use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};
use time::OffsetDateTime;

use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn anchor(dir: &Path, td: &str) {
    init_anchor(dir, td, meshproxy_identity::Existing::Refuse);
}

/// A new anchor of `cluster.local` in `dir`, the old one kept in the bundle beside it.
fn rotate_anchor(dir: &Path) {
    init_anchor(dir, "cluster.local", meshproxy_identity::Existing::Rotate);
}

fn init_anchor(dir: &Path, td: &str, existing: meshproxy_identity::Existing) {
    meshproxy_identity::init(dir, td, 30 * DAY, existing, OffsetDateTime::now_utc()).expect("anchor");
}

fn issue(dir: &Path, name: &str, now: OffsetDateTime) {
    meshproxy_identity::issue(dir, name, "shop", DAY, now).expect("workload certificate");
}

fn source(dir: &Path, name: &str) -> IdentitySource {
    IdentitySource { dir: dir.to_owned(), name: name.into(), namespace: "shop".into(), self_issue: None }
}

fn self_issued(dir: &Path, name: &str, lifetime: Duration) -> Result<MeshIdentity, TlsError> {
    MeshIdentity::load(IdentitySource { self_issue: Some(lifetime), ..source(dir, name) })
}

fn identity(dir: &Path, name: &str) -> MeshIdentity {
    issue(dir, name, OffsetDateTime::now_utc());
    MeshIdentity::load(source(dir, name)).expect("identity loads")
}

/// Runs a handshake in memory; the server's peer SPIFFE ID on success, else the first error.
fn handshake(
    client: &MeshIdentity,
    server: &MeshIdentity,
    expected: &str,
) -> Result<Option<String>, rustls::Error> {
    let td = &client.material().info.id.trust_domain.clone();
    let name = WorkloadId::parse(expected, td).expect("expected identity").dns();
    let cfg = client.material().client(ClientAlpn::H2).clone();
    let mut c = ClientConnection::new(cfg, ServerName::try_from(name).expect("name"))?;
    let mut s = ServerConnection::new(server.material().server().clone())?;
    pump(&mut c, &mut s)
}

fn pump(c: &mut ClientConnection, s: &mut ServerConnection) -> Result<Option<String>, rustls::Error> {
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("read");
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("write");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("read");
            c.process_new_packets()?;
        }
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() {
            return Ok(s.peer_certificates().and_then(|p| spiffe_id_of(p[0].as_ref())));
        }
    }
    panic!("handshake did not finish")
}

#[test]
fn two_workloads_of_one_anchor_authenticate_each_other() {
    let dir = tempfile::tempdir().expect("dir");
    anchor(dir.path(), "cluster.local");
    let (web, orders) = (identity(dir.path(), "web"), identity(dir.path(), "orders"));
    let info = &web.material().info;
    assert_eq!(info.id.spiffe(), "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(info.anchors.len(), 1);
    let peer = handshake(&web, &orders, "orders.shop").expect("handshake");
    assert_eq!(
        peer.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/web"),
        "the server sees the client's ID"
    );
}

#[test]
fn a_peer_of_another_identity_is_refused_by_the_client() {
    let dir = tempfile::tempdir().expect("dir");
    anchor(dir.path(), "cluster.local");
    let (web, orders) = (identity(dir.path(), "web"), identity(dir.path(), "orders"));
    let e = handshake(&web, &orders, "spiffe://cluster.local/ns/shop/sa/billing").expect_err("wrong peer");
    assert_eq!(PeerFailure::of(&e), PeerFailure::WrongIdentity, "{e}");
}

#[test]
fn a_foreign_anchor_is_untrusted_both_ways() {
    let (ours, theirs) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    anchor(ours.path(), "cluster.local");
    anchor(theirs.path(), "cluster.local");
    let (web, orders) = (identity(ours.path(), "web"), identity(ours.path(), "orders"));
    let (fake_orders, fake_web) = (identity(theirs.path(), "orders"), identity(theirs.path(), "web"));
    let e = handshake(&web, &fake_orders, "orders.shop").expect_err("server from another anchor");
    assert_eq!(PeerFailure::of(&e), PeerFailure::Untrusted, "{e}");
    let e = handshake(&fake_web, &orders, "orders.shop").expect_err("client from another anchor");
    assert_eq!(PeerFailure::of(&e), PeerFailure::Untrusted, "{e}");
}

#[test]
fn a_client_with_an_expired_certificate_or_none_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    anchor(dir.path(), "cluster.local");
    let orders = identity(dir.path(), "orders");
    // A client of the same anchor whose certificate expired yesterday (issued two days ago).
    issue(dir.path(), "web", OffsetDateTime::now_utc() - time::Duration::days(2));
    let e = MeshIdentity::load(source(dir.path(), "web")).expect_err("expired material is not loaded");
    assert!(e.to_string().contains("web.shop.crt"), "{e}");
    let chain = certificates(
        &source(dir.path(), "web").cert(),
        &std::fs::read(source(dir.path(), "web").cert()).expect("read"),
    )
    .expect("chain");
    let key = PrivateKeyDer::from_pem_file(source(dir.path(), "web").key()).expect("key");
    let trust = |config: rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>| {
        config.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny))
    };
    let builder =
        || ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().expect("v");
    let expired = Arc::new(trust(builder()).with_client_auth_cert(chain, key).expect("client config"));
    let name = ServerName::try_from("orders.shop.serviceaccount.identity.cluster.local").expect("name");
    let mut s = ServerConnection::new(orders.material().server().clone()).expect("server");
    let mut c = ClientConnection::new(expired, name.clone()).expect("client");
    let e = pump(&mut c, &mut s).expect_err("expired client");
    assert_eq!(PeerFailure::of(&e), PeerFailure::Expired, "{e}");
    let anonymous = Arc::new(trust(builder()).with_no_client_auth());
    let mut s = ServerConnection::new(orders.material().server().clone()).expect("server");
    let mut c = ClientConnection::new(anonymous, name).expect("client");
    let e = pump(&mut c, &mut s).expect_err("no certificate");
    assert_eq!(PeerFailure::of(&e), PeerFailure::NoClientCertificate, "{e}");
}

#[test]
fn changed_files_reload_and_bad_ones_keep_the_material_in_force() {
    let dir = tempfile::tempdir().expect("dir");
    anchor(dir.path(), "cluster.local");
    let web = identity(dir.path(), "web");
    let orders = identity(dir.path(), "orders");
    let first = web.material().info.serial.clone();
    assert!(web.reload_if_changed().is_none(), "nothing changed");
    std::thread::sleep(Duration::from_millis(20));
    issue(dir.path(), "web", OffsetDateTime::now_utc());
    assert!(matches!(web.reload_if_changed(), Some(Ok(()))));
    assert_ne!(web.material().info.serial, first, "a new certificate is in force");
    // A key that belongs to another certificate: refused, the material in force stays.
    let serial = web.material().info.serial.clone();
    std::fs::copy(source(dir.path(), "orders").key(), source(dir.path(), "web").key()).expect("copy");
    assert!(matches!(web.reload_if_changed(), Some(Err(_))));
    assert_eq!(web.material().info.serial, serial);
    assert_eq!(web.reload_failures.load(Ordering::Relaxed), 1);
    // An anchor rotation: both anchors trusted; a certificate of the new one is accepted by a
    // peer that still has the old one in force only once it reloads the bundle.
    rotate_anchor(dir.path());
    issue(dir.path(), "web", OffsetDateTime::now_utc());
    assert!(matches!(web.reload_if_changed(), Some(Ok(()))));
    assert_eq!(web.material().info.anchors.len(), 2);
    orders.reload().expect("orders takes the bundle");
    handshake(&web, &orders, "orders.shop").expect("new anchor's certificate, old anchor's peer");
    handshake(&orders, &web, "web.shop").expect("and the other way");
}

#[test]
fn a_self_issued_identity_renews_between_65_and_75_percent_of_its_lifetime() {
    let dir = tempfile::tempdir().expect("dir");
    anchor(dir.path(), "cluster.local");
    let lifetime = Duration::from_secs(10);
    let web = self_issued(dir.path(), "web", lifetime).expect("self-issued identity");
    let orders = identity(dir.path(), "orders");
    assert!(!source(dir.path(), "web").cert().exists(), "nothing is written");
    let info = web.material().info.clone();
    assert_eq!(info.id.spiffe(), "spiffe://cluster.local/ns/shop/sa/web");
    let issued_at = info.loaded_at;
    let due = info.renews_at.expect("a renewal is scheduled");
    // Certificates keep whole seconds: the lifetime left at issue is 9 to 10 s.
    let left = info.not_after.duration_since(issued_at).expect("expiry").as_secs_f64();
    assert!((9.0..=10.0).contains(&left), "expires {left}s after issue");
    let offset = due.duration_since(issued_at).expect("after issue").as_secs_f64();
    assert!((0.65..0.75).contains(&(offset / left)), "renews {offset}s into {left}s");
    handshake(&web, &orders, "orders.shop").expect("the issued certificate authenticates");
    handshake(&orders, &web, "web.shop").expect("both ways");

    assert!(web.renew_if_due(due - Duration::from_millis(1)).is_none(), "not due yet");
    assert!(matches!(web.renew_if_due(due), Some(Ok(()))));
    let renewed = web.material().info.clone();
    assert_ne!(renewed.serial, info.serial, "a new certificate is in force");
    assert!(renewed.renews_at.expect("next renewal") > due);
    handshake(&web, &orders, "orders.shop").expect("the renewed certificate authenticates");
    assert!(web.renew_if_due(due).is_none(), "the renewed certificate is not due");

    // A renewal that fails keeps the material in force and is tried again after RENEW_RETRY.
    let key = dir.path().join("ca.key");
    let saved = std::fs::read(&key).expect("anchor key");
    std::fs::remove_file(&key).expect("remove");
    let next = renewed.renews_at.expect("next renewal");
    assert!(matches!(web.renew_if_due(next), Some(Err(_))));
    assert_eq!(web.material().info.serial, renewed.serial);
    assert!(web.renew_if_due(next + RENEW_RETRY - Duration::from_millis(1)).is_none(), "waits to retry");
    std::fs::write(&key, saved).expect("restore");
    assert!(matches!(web.renew_if_due(next + RENEW_RETRY), Some(Ok(()))));
    assert_ne!(web.material().info.serial, renewed.serial);
    assert_eq!(web.reload_failures.load(Ordering::Relaxed), 1);
}

#[test]
fn mesh_connections_negotiate_tls13_aes_128_gcm() {
    let dir = tempfile::tempdir().expect("dir");
    anchor(dir.path(), "cluster.local");
    let (web, orders) = (identity(dir.path(), "web"), identity(dir.path(), "orders"));
    let name = WorkloadId::parse("orders.shop", "cluster.local").expect("id").dns();
    let mut c = ClientConnection::new(
        web.material().client(ClientAlpn::H2).clone(),
        ServerName::try_from(name).expect("name"),
    )
    .expect("client");
    let mut s = ServerConnection::new(orders.material().server().clone()).expect("server");
    pump(&mut c, &mut s).expect("handshake");
    assert!(!c.is_handshaking() && !s.is_handshaking());
    let suite = c.negotiated_cipher_suite().expect("suite").suite();
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
}

#[test]
fn a_self_issued_identity_reissues_from_a_rotated_anchor() {
    let dir = tempfile::tempdir().expect("dir");
    anchor(dir.path(), "cluster.local");
    let web = self_issued(dir.path(), "web", DAY).expect("self-issued identity");
    let first = web.material().info.serial.clone();
    assert!(web.reload_if_changed().is_none(), "nothing changed");
    std::thread::sleep(Duration::from_millis(20));
    rotate_anchor(dir.path());
    assert!(matches!(web.reload_if_changed(), Some(Ok(()))));
    assert_ne!(web.material().info.serial, first, "issued again, by the new anchor");
    assert_eq!(web.material().info.anchors.len(), 2);
    let orders = identity(dir.path(), "orders");
    handshake(&web, &orders, "orders.shop").expect("the new anchor's certificate is trusted");
}

#[test]
fn a_self_issued_identity_needs_the_anchor_key_and_a_lifetime_of_10s() {
    let dir = tempfile::tempdir().expect("dir");
    anchor(dir.path(), "cluster.local");
    let e = self_issued(dir.path(), "web", Duration::from_secs(9)).expect_err("too short");
    assert!(e.to_string().contains("at least 10s"), "{e}");
    std::fs::remove_file(dir.path().join("ca.key")).expect("remove");
    let e = self_issued(dir.path(), "web", DAY).expect_err("no anchor key");
    let message = e.to_string();
    assert!(
        message.contains("cannot issue this proxy's certificate") && message.contains("ca.key"),
        "{message}"
    );
}

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}
