use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use super::*;

/// A self-signed certificate for `names` and its key, written as PEM files `<stem>.crt`/`.key`.
fn write_cert(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("rcgen makes a certificate");
    let (cert, key) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    std::fs::write(&cert, made.cert.pem()).expect("write cert");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
    (cert, key)
}

fn spec(files: &(PathBuf, PathBuf), hosts: &[&str]) -> CertificateSpec {
    CertificateSpec {
        cert: PemSource::File(files.0.clone()),
        key: PemSource::File(files.1.clone()),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
    }
}

fn leaf(c: &Arc<CertifiedKey>) -> Vec<u8> {
    c.cert[0].to_vec()
}

fn leaf_of(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path).expect("a certificate").to_vec()
}

#[test]
fn resolver_picks_the_certificate_by_exact_sni_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write_cert(dir.path(), "a", &["a.example.com"]);
    let b = write_cert(dir.path(), "b", &["b.example.com"]);
    let r = SniResolver::load(&[spec(&a, &["a.example.com"]), spec(&b, &["b.example.com"])]).expect("loads");
    assert_eq!(leaf(r.pick(Some("a.example.com"))), leaf_of(&a.0));
    assert_eq!(leaf(r.pick(Some("b.example.com"))), leaf_of(&b.0));
    // SNI names compare without case and without a trailing dot.
    assert_eq!(leaf(r.pick(Some("B.Example.COM."))), leaf_of(&b.0));
}

#[test]
fn wildcard_covers_one_label_and_exact_names_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wild = write_cert(dir.path(), "wild", &["*.example.com"]);
    let api = write_cert(dir.path(), "api", &["api.example.com"]);
    let fallback = write_cert(dir.path(), "default", &["default.test"]);
    let r = SniResolver::load(&[
        spec(&wild, &["*.example.com"]),
        spec(&api, &["api.example.com"]),
        spec(&fallback, &[]),
    ])
    .expect("loads");
    assert_eq!(leaf(r.pick(Some("web.example.com"))), leaf_of(&wild.0));
    assert_eq!(leaf(r.pick(Some("api.example.com"))), leaf_of(&api.0));
    assert_eq!(leaf(r.pick(Some("a.b.example.com"))), leaf_of(&fallback.0));
    assert_eq!(leaf(r.pick(Some("example.com"))), leaf_of(&fallback.0));
}

#[test]
fn default_certificate_serves_unknown_names_and_clients_without_sni() {
    let dir = tempfile::tempdir().expect("tempdir");
    let web = write_cert(dir.path(), "web", &["web.example.com"]);
    let fallback = write_cert(dir.path(), "default", &["default.test"]);
    let r = SniResolver::load(&[spec(&web, &["web.example.com"]), spec(&fallback, &[])]).expect("loads");
    assert_eq!(leaf(r.pick(None)), leaf_of(&fallback.0));
    assert_eq!(leaf(r.pick(Some("other.test"))), leaf_of(&fallback.0));
    // Without a certificate lacking hosts, the first one is the default.
    let r = SniResolver::load(&[spec(&web, &["web.example.com"])]).expect("loads");
    assert_eq!(leaf(r.pick(None)), leaf_of(&web.0));
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = (dir.path().join("nope.crt"), dir.path().join("nope.key"));
    let e = SniResolver::load(&[spec(&missing, &[])]).expect_err("no file");
    assert!(matches!(e, TlsError::Read { what: "certificate", .. }), "{e:?}");
    assert!(e.to_string().contains("nope.crt"), "{e}");
}

#[test]
fn file_without_pem_certificate_or_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write_cert(dir.path(), "good", &["a.test"]);
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "this is not PEM\n").expect("write");
    let e = SniResolver::load(&[spec(&(junk.clone(), good.1.clone()), &[])]).expect_err("no certificate");
    assert!(matches!(e, TlsError::NoCertificate { .. }), "{e:?}");
    assert!(e.to_string().contains("junk.pem"), "{e}");
    let e = SniResolver::load(&[spec(&(good.0.clone(), junk.clone()), &[])]).expect_err("no key");
    assert!(matches!(e, TlsError::NoKey { .. }), "{e:?}");
    // A certificate given as the key: a PEM file, but no key in it.
    let e = SniResolver::load(&[spec(&(good.0.clone(), good.0.clone()), &[])]).expect_err("no key");
    assert!(matches!(e, TlsError::NoKey { .. }), "{e:?}");
    let broken = dir.path().join("broken.crt");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").expect("write");
    let e = SniResolver::load(&[spec(&(broken, good.1.clone()), &[])]).expect_err("bad base64");
    assert!(matches!(e, TlsError::Pem { .. }), "{e:?}");
}

#[test]
fn key_of_another_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write_cert(dir.path(), "a", &["a.test"]);
    let b = write_cert(dir.path(), "b", &["b.test"]);
    let e = SniResolver::load(&[spec(&(a.0.clone(), b.1.clone()), &[])]).expect_err("mismatch");
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("a.crt") && e.to_string().contains("b.key"), "{e}");
}

#[test]
fn host_given_to_two_certificates_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write_cert(dir.path(), "a", &["a.test"]);
    let b = write_cert(dir.path(), "b", &["a.test"]);
    let e = SniResolver::load(&[spec(&a, &["a.test"]), spec(&b, &["A.test"])]).expect_err("duplicate");
    assert!(matches!(e, TlsError::DuplicateHost { .. }), "{e:?}");
}

#[test]
fn inline_pem_is_read_like_a_file() {
    let made = rcgen::generate_simple_self_signed(vec!["inline.test".to_string()]).expect("rcgen");
    let s = CertificateSpec {
        cert: PemSource::Inline { pem: made.cert.pem(), origin: "Secret default/web tls.crt".into() },
        key: PemSource::Inline {
            pem: made.signing_key.serialize_pem(),
            origin: "Secret default/web tls.key".into(),
        },
        hosts: vec!["inline.test".into()],
    };
    let r = SniResolver::load(std::slice::from_ref(&s)).expect("loads");
    assert_eq!(leaf(r.pick(Some("inline.test"))), made.cert.der().to_vec());
    let tls = ServerTls::load(vec![s]).expect("loads");
    assert!(!tls.watches_files());
    assert!(tls.reload_if_changed().is_none());
}

#[test]
fn server_config_offers_h2_then_http11() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write_cert(dir.path(), "a", &["a.test"]);
    let config = build(&[spec(&a, &[])]).expect("builds");
    assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
}

#[test]
fn changed_files_reload_and_bad_new_material_keeps_the_old_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write_cert(dir.path(), "web", &["web.test"]);
    let tls = ServerTls::load(vec![spec(&a, &[])]).expect("loads");
    assert!(tls.watches_files());
    assert!(tls.reload_if_changed().is_none(), "nothing changed");
    let before = tls.config();

    // New material of another size (a longer name): the stamp changes whatever the clock's resolution.
    let made =
        rcgen::generate_simple_self_signed(vec!["web.test".into(), "www.web.test".into()]).expect("rcgen");
    std::fs::write(&a.0, made.cert.pem()).expect("write");
    // The certificate is new but the key is not yet: refused, the old config stays.
    match tls.reload_if_changed() {
        Some(Err(TlsError::KeyMismatch { .. })) => {}
        other => panic!("expected a key mismatch, got {other:?}"),
    }
    assert!(Arc::ptr_eq(&before, &tls.config()));
    std::fs::write(&a.1, made.signing_key.serialize_pem()).expect("write");
    // The key may keep its size; its modification time changed, unless the clock is coarse.
    let mut reloaded = tls.reload_if_changed();
    if reloaded.is_none() {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(&a.1, made.signing_key.serialize_pem()).expect("write");
        reloaded = tls.reload_if_changed();
    }
    assert!(matches!(reloaded, Some(Ok(()))), "{reloaded:?}");
    assert!(!Arc::ptr_eq(&before, &tls.config()));
}

/// Moves TLS records between an in-memory client and server until neither has more to send.
fn exchange(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
    loop {
        let mut moved = false;
        while client.wants_write() {
            let mut records = Vec::new();
            client.write_tls(&mut records).expect("client writes");
            server.read_tls(&mut records.as_slice()).expect("server reads");
            server.process_new_packets().expect("server accepts the records");
            moved = true;
        }
        while server.wants_write() {
            let mut records = Vec::new();
            server.write_tls(&mut records).expect("server writes");
            client.read_tls(&mut records.as_slice()).expect("client reads");
            client.process_new_packets().expect("client accepts the records");
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn sessions_resume_by_stateless_tickets_for_more_clients_than_a_session_cache_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write_cert(dir.path(), "a", &["a.example.com"]);
    let server = build(&[spec(&a, &[])]).expect("builds");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(leaf_of(&a.0))).expect("a trust anchor");
    let name = rustls::pki_types::ServerName::try_from("a.example.com").expect("a name");
    // Each client its own config (its own session store), as separate client processes are;
    // more of them than rustls's default server-side cache (256 sessions) holds.
    let clients: Vec<Arc<rustls::ClientConfig>> = (0..300)
        .map(|_| {
            Arc::new(
                rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .expect("versions")
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth(),
            )
        })
        .collect();
    let connect = |client: &Arc<rustls::ClientConfig>| {
        let mut c = rustls::ClientConnection::new(client.clone(), name.clone()).expect("client");
        let mut s = rustls::ServerConnection::new(server.clone()).expect("server");
        exchange(&mut c, &mut s);
        assert!(!c.is_handshaking(), "the handshake completes");
        c.handshake_kind()
    };
    for client in &clients {
        assert_eq!(connect(client), Some(rustls::HandshakeKind::Full));
    }
    let resumed = clients.iter().filter(|c| connect(c) == Some(rustls::HandshakeKind::Resumed)).count();
    assert_eq!(resumed, clients.len(), "every client resumes its session");
}
