//! The global limits against real `redis-server`s: plaintext, TLS (`rediss://`) and failures; and
//! a rate limit service over TLS that is slow to handshake.

use super::*;

/// A `redis-server` on a free port, without persistence, killed on drop.
struct Server {
    child: Option<std::process::Child>,
    port: u16,
    dir: std::path::PathBuf,
}

/// TLS for a test server: its certificate and key files (PEM), issued by a test CA.
struct ServerTls<'a> {
    cert: &'a std::path::Path,
    key: &'a std::path::Path,
}

impl Server {
    fn start(port: Option<u16>) -> Server {
        Server::start_with(port, None, None)
    }

    /// Panics when `redis-server` is not installed: a missing peer is a failure, never a
    /// skip (`.ci/run` installs it). With `tls`, the server speaks TLS only (`--tls-port`,
    /// `--port 0`) and asks clients for no certificate; with `password`, it requires AUTH.
    fn start_with(port: Option<u16>, tls: Option<ServerTls<'_>>, password: Option<&str>) -> Server {
        let port = port.unwrap_or_else(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("its address").port()
        });
        let dir = std::env::temp_dir().join(format!("meshproxy-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]).arg("--dir").arg(&dir);
        match &tls {
            None => {
                cmd.args(["--port", &port.to_string()]);
            }
            Some(t) => {
                cmd.args(["--port", "0", "--tls-port", &port.to_string(), "--tls-auth-clients", "no"]);
                cmd.arg("--tls-cert-file").arg(t.cert).arg("--tls-key-file").arg(t.key);
            }
        }
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        let Ok(child) = cmd.stdout(std::process::Stdio::null()).spawn() else {
            panic!("redis-server is not installed: apt-get install redis-server (.ci/run installs it)");
        };
        let server = Server { child: Some(child), port, dir };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not listen on {port}");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test CA made with the `openssl` CLI in `dir` (`<name>.crt`, `<name>.key`), as an operator
/// makes one.
struct TestCa {
    dir: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out =
        std::process::Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestCa {
    fn new(dir: &std::path::Path, name: &str) -> TestCa {
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        TestCa { dir: dir.to_owned(), cert, key }
    }

    /// A server certificate for 127.0.0.1 (an IP address SAN: the name rustls verifies for
    /// `rediss://127.0.0.1`): its certificate and key files.
    fn issue(&self, stem: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let ext = self.dir.join(format!("{stem}.ext"));
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("writes");
        let (crt, key, csr) = (format!("{stem}.crt"), format!("{stem}.key"), format!("{stem}.csr"));
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                "/CN=redis",
            ],
        );
        let (ca_crt, ca_key) = (self.cert.to_string_lossy(), self.key.to_string_lossy());
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-set_serial",
                "1",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &format!("{stem}.ext"),
            ],
        );
        (self.dir.join(crt), self.dir.join(key))
    }
}

/// A fresh temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("meshproxy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const TIMEOUT: Duration = Duration::from_millis(500);

fn gcra(key: &[u8], emission_us: &str, burst: u32) -> Ask {
    Ask::Gcra { key: key.to_vec(), emission_us: emission_us.into(), burst }
}

#[tokio::test]
async fn redis_admits_the_burst_then_one_per_emission_interval() {
    let server = Server::start(None);
    let stores = Stores::default();
    let store =
        stores.get("test", &format!("redis://127.0.0.1:{}", server.port), TlsFiles::ca(None)).unwrap();
    // 2 a second (one every 500 ms), 3 at once.
    let mut admitted = 0;
    let mut refused = None;
    for _ in 0..5 {
        match store.check(&gcra(b"k", "500000", 3), TIMEOUT).await.unwrap() {
            None => admitted += 1,
            Some(wait) => refused = Some(wait),
        }
    }
    assert_eq!(admitted, 3, "the burst at once");
    let wait = refused.expect("the 4th is refused");
    assert!(wait > Duration::from_millis(300) && wait <= Duration::from_millis(500), "wait {wait:?}");
    // Another key, another bucket.
    assert_eq!(store.check(&gcra(b"other", "500000", 3), TIMEOUT).await.unwrap(), None);
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    assert_eq!(
        store.check(&gcra(b"k", "500000", 3), TIMEOUT).await.unwrap(),
        None,
        "one more after the wait"
    );
}

#[tokio::test]
async fn a_rate_too_high_to_move_the_arrival_time_admits_instead_of_failing() {
    let server = Server::start(None);
    let store = Stores::default()
        .get("test", &format!("redis://127.0.0.1:{}", server.port), TlsFiles::ca(None))
        .unwrap();
    // 10^9 a second: an interval of 0.001 µs, lost when added to the time in µs.
    for _ in 0..3 {
        assert_eq!(store.check(&gcra(b"fast", "0.001", 1_000_000_000), TIMEOUT).await.unwrap(), None);
    }
}

#[tokio::test]
async fn a_killed_server_fails_within_the_timeout_and_a_restarted_one_is_used_again() {
    let mut server = Server::start(None);
    let port = server.port;
    let stores = Stores::default();
    let store = stores.get("test", &format!("redis://127.0.0.1:{port}"), TlsFiles::ca(None)).unwrap();
    assert_eq!(store.check(&gcra(b"k", "1000", 10), TIMEOUT).await.unwrap(), None);
    server.kill();
    let short = Duration::from_millis(50);
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        assert!(store.check(&gcra(b"k", "1000", 10), short).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(1), "bounded by the timeout");
    }
    // Back on the same port, empty: the script is loaded again and checks succeed once the
    // connection manager has reconnected (its backoff is at most 1 s).
    let _server = Server::start(Some(port));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(None) = store.check(&gcra(b"k", "1000", 10), TIMEOUT).await {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no reconnection within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn limit(
    name: &str,
    redis: &str,
    fail_mode: crate::config::RateLimitFailMode,
) -> crate::config::RateLimitConfig {
    crate::config::RateLimitConfig {
        name: name.into(),
        rate: 1,
        burst: 5,
        key: crate::config::RateLimitKey::None,
        header: None,
        overrides: vec![],
        max_keys: 100,
        global: Some(crate::config::GlobalRateLimitConfig {
            redis: Some(redis.into()),
            rls: None,
            domain: None,
            fail_mode,
            ca: None,
            cert: None,
            key: None,
            timeout_ms: 200,
        }),
    }
}

type Metered = (Arc<super::super::Limits>, Arc<super::super::LimitMetrics>);

fn compile(stores: &Stores, c: crate::config::RateLimitConfig) -> Metered {
    let m = Arc::new(super::super::LimitMetrics::default());
    let mc = m.clone();
    let clock = governor::clock::DefaultClock::default();
    let l = super::super::Limits::compile("service \"s\"", "service:s", &[c], &clock, stores, move |_| {
        mc.clone()
    })
    .unwrap()
    .unwrap();
    (Arc::new(l), m)
}

/// Whether `limits` admits one request: local, then global.
async fn admits(limits: &Arc<super::super::Limits>) -> Result<(), crate::error::ProxyError> {
    let client = std::net::SocketAddr::from(([10, 0, 0, 1], 1));
    let headers = http::HeaderMap::new();
    if let Err(d) = limits.check(&headers, client, None) {
        return Err(limits.rejection(d).error);
    }
    match limits.global(&headers, client, None) {
        None => Ok(()),
        Some(check) => check.await.map_err(|r| r.error),
    }
}

#[tokio::test]
async fn two_proxies_share_one_global_count() {
    let server = Server::start(None);
    let url = format!("redis://127.0.0.1:{}", server.port);
    // Two proxies: stores and limits of their own, one limit name and scope.
    let (a, b) = (Stores::default(), Stores::default());
    let (la, ma) = compile(&a, limit("shared", &url, crate::config::RateLimitFailMode::Open));
    let (lb, mb) = compile(&b, limit("shared", &url, crate::config::RateLimitFailMode::Open));
    let mut admitted = 0;
    for _ in 0..6 {
        admitted += usize::from(admits(&la).await.is_ok());
        admitted += usize::from(admits(&lb).await.is_ok());
    }
    // Each local bucket admits its burst of 5 (10 together); Redis admits the burst once.
    assert_eq!(admitted, 5);
    let rejected = ma.rejected.load(Ordering::Relaxed) + mb.rejected.load(Ordering::Relaxed);
    assert_eq!(rejected, 7, "2 refused locally, 5 by redis");
    assert_eq!(ma.fallback.load(Ordering::Relaxed) + mb.fallback.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn without_redis_fail_open_admits_by_the_local_limit_and_fail_closed_refuses() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}");
    let stores = Stores::default();
    let (open, mo) = compile(&stores, limit("open", &url, crate::config::RateLimitFailMode::Open));
    let results: Vec<_> = futures_util::future::join_all((0..7).map(|_| admits(&open))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 5, "the local burst: {results:?}");
    assert_eq!(mo.fallback.load(Ordering::Relaxed), 5);
    let (closed, mc) = compile(&stores, limit("closed", &url, crate::config::RateLimitFailMode::Closed));
    assert_eq!(admits(&closed).await, Err(crate::error::ProxyError::RateLimitUnavailable));
    assert_eq!(mc.fallback.load(Ordering::Relaxed), 1);
    assert_eq!(mc.rejected.load(Ordering::Relaxed), 0, "not counted as over the limit");
}

#[tokio::test]
async fn after_a_failure_one_request_per_probe_interval_asks_and_the_others_fail_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let stores = Stores::default();
    let store = stores.get("test", &format!("redis://127.0.0.1:{port}"), TlsFiles::ca(None)).unwrap();
    let e = store.check(&gcra(b"k", "1000", 10), TIMEOUT).await.unwrap_err();
    store.failed(&e, false);
    for _ in 0..5 {
        assert!(matches!(store.check(&gcra(b"k", "1000", 10), TIMEOUT).await, Err(GlobalError::Failing)));
    }
    tokio::time::sleep(PROBE_EVERY + Duration::from_millis(10)).await;
    // The probe waits up to its (short) timeout; the next request, within the interval, not.
    let probe = store.check(&gcra(b"k", "1000", 10), Duration::from_millis(20)).await.unwrap_err();
    assert!(!matches!(probe, GlobalError::Failing), "the probe asks redis: {probe}");
    assert!(matches!(store.check(&gcra(b"k", "1000", 10), TIMEOUT).await, Err(GlobalError::Failing)));
}

#[tokio::test]
async fn rediss_is_verified_against_the_ca_bundle_and_sends_the_urls_password() {
    let tmp = TempDir::new("rediss-ok");
    let ca = TestCa::new(&tmp.0, "redis-ca");
    let (cert, key) = ca.issue("redis");
    let server = Server::start_with(None, Some(ServerTls { cert: &cert, key: &key }), Some("s3cret"));
    let ca_path = ca.cert.to_string_lossy();
    let stores = Stores::default();
    let url = format!("rediss://:s3cret@127.0.0.1:{}", server.port);
    let store = stores.get("test", &url, TlsFiles::ca(Some(&ca_path))).unwrap();
    assert!(!format!("{store:?}").contains("s3cret"), "{store:?}");
    let mut admitted = 0;
    for _ in 0..4 {
        admitted += usize::from(store.check(&gcra(b"k", "1000000", 2), TIMEOUT).await.unwrap().is_none());
    }
    assert_eq!(admitted, 2, "the burst, counted on the TLS server");
    // The same URL and bundle: the same server and connection.
    assert!(Arc::ptr_eq(&store, &stores.get("test", &url, TlsFiles::ca(Some(&ca_path))).unwrap()));
    // A wrong password: the server refuses the connection's AUTH.
    let wrong = stores
        .get("test", &format!("rediss://:nope@127.0.0.1:{}", server.port), TlsFiles::ca(Some(&ca_path)))
        .unwrap();
    let e = wrong.check(&gcra(b"k", "1000000", 2), TIMEOUT).await.unwrap_err();
    assert!(!e.to_string().contains("nope"), "{e}");
}

#[tokio::test]
async fn rediss_refuses_a_server_its_ca_bundle_or_the_system_roots_do_not_trust() {
    let tmp = TempDir::new("rediss-wrong-ca");
    let ca = TestCa::new(&tmp.0, "redis-ca");
    let other = TestCa::new(&tmp.0, "other-ca");
    let (cert, key) = ca.issue("redis");
    let server = Server::start_with(None, Some(ServerTls { cert: &cert, key: &key }), None);
    let url = format!("rediss://127.0.0.1:{}", server.port);
    let stores = Stores::default();
    let other_path = other.cert.to_string_lossy();
    for store in [
        stores.get("test", &url, TlsFiles::ca(Some(&other_path))).unwrap(),
        stores.get("test", &url, TlsFiles::ca(None)).unwrap(),
    ] {
        // Time for the connection manager's retries, so the check ends with the connect's error.
        let e = store.check(&gcra(b"k", "1000", 10), Duration::from_secs(10)).await.unwrap_err();
        assert!(e.to_string().contains("UnknownIssuer"), "refused for its issuer: {e}");
    }
    // The right bundle, on the same server.
    let ca_path = ca.cert.to_string_lossy();
    let store = stores.get("test", &url, TlsFiles::ca(Some(&ca_path))).unwrap();
    assert_eq!(store.check(&gcra(b"k", "1000", 10), TIMEOUT).await.unwrap(), None);
}

#[test]
fn a_ca_bundle_needs_a_rediss_url_and_a_readable_file() {
    let stores = Stores::default();
    let e = stores
        .get("route \"r\"", "redis://:pw@127.0.0.1:6379", TlsFiles::ca(Some("/nonexistent.pem")))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "route \"r\": a CA bundle is given for \"redis://:***@127.0.0.1:6379\", which is not a rediss:// (TLS) URL"
    );
    let e = stores
        .get("route \"r\"", "rediss://127.0.0.1:6379", TlsFiles::ca(Some("/nonexistent.pem")))
        .unwrap_err();
    assert!(
        e.to_string().starts_with("route \"r\": cannot read the global redis CA bundle \"/nonexistent.pem\""),
        "{e}"
    );
    let e = stores.get("route \"r\"", "http://:pw@127.0.0.1:6379", TlsFiles::ca(None)).unwrap_err();
    assert!(e.to_string().contains("\"http://:***@127.0.0.1:6379\""), "{e}");
}

#[test]
fn a_rewritten_ca_bundle_gives_a_new_server_and_an_unchanged_one_keeps_it() {
    let tmp = TempDir::new("rediss-ca-reload");
    let (a, b) = (TestCa::new(&tmp.0, "ca-a"), TestCa::new(&tmp.0, "ca-b"));
    let bundle = tmp.0.join("bundle.pem");
    std::fs::copy(&a.cert, &bundle).unwrap();
    let path = bundle.to_string_lossy();
    let stores = Stores::default();
    let url = "rediss://127.0.0.1:6380";
    let first = stores.get("test", url, TlsFiles::ca(Some(&path))).unwrap();
    assert!(
        Arc::ptr_eq(&first, &stores.get("test", url, TlsFiles::ca(Some(&path))).unwrap()),
        "a reload with the same bundle"
    );
    std::fs::copy(&b.cert, &bundle).unwrap();
    let second = stores.get("test", url, TlsFiles::ca(Some(&path))).unwrap();
    assert!(!Arc::ptr_eq(&first, &second), "the bundle's contents changed");
    assert!(Arc::ptr_eq(&second, &stores.get("test", url, TlsFiles::ca(Some(&path))).unwrap()));
    // The system roots are another server entry of the same URL.
    assert!(!Arc::ptr_eq(&second, &stores.get("test", url, TlsFiles::ca(None)).unwrap()));
}

#[test]
fn an_https_rate_limit_service_keeps_its_connection_until_its_ca_bundle_changes() {
    let tmp = TempDir::new("rls-ca-reload");
    let (a, b) = (TestCa::new(&tmp.0, "ca-a"), TestCa::new(&tmp.0, "ca-b"));
    let bundle = tmp.0.join("bundle.pem");
    std::fs::copy(&a.cert, &bundle).unwrap();
    let path = bundle.to_string_lossy();
    let stores = Stores::default();
    let addr = "https://127.0.0.1:8443";
    let first = stores.get_rls("test", addr, TlsFiles::ca(Some(&path))).unwrap();
    assert!(
        Arc::ptr_eq(&first, &stores.get_rls("test", addr, TlsFiles::ca(Some(&path))).unwrap()),
        "a reload with the same bundle"
    );
    std::fs::copy(&b.cert, &bundle).unwrap();
    let second = stores.get_rls("test", addr, TlsFiles::ca(Some(&path))).unwrap();
    assert!(!Arc::ptr_eq(&first, &second), "the bundle's contents changed");
    assert!(Arc::ptr_eq(&second, &stores.get_rls("test", addr, TlsFiles::ca(Some(&path))).unwrap()));
    let e =
        stores.get_rls("route \"r\"", "127.0.0.1:8081", TlsFiles::ca(Some(&path))).unwrap_err().to_string();
    assert!(e.starts_with("route \"r\": invalid global rls: a CA bundle is only used with TLS"), "{e}");
}

/// A gRPC server on 127.0.0.1 serving TLS with `cert` and `key` that answers every
/// `ShouldRateLimit` with OK, and starts its TLS handshake `delay` after accepting a connection;
/// with the number of connections it accepted.
async fn slow_handshake_service(
    cert: &std::path::Path,
    key: &std::path::Path,
    delay: Duration,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use meshproxy_tls::{CertificateSpec, PemSource};
    use rls::{Code, RateLimitResponse};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let spec = CertificateSpec {
        cert: PemSource::File(cert.to_owned()),
        key: PemSource::File(key.to_owned()),
        hosts: vec![],
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(meshproxy_tls::build(&[spec]).expect("server config"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("bound");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let Ok(tls) = acceptor.accept(socket).await else { return };
                let Ok(mut conn) = h2::server::handshake(tls).await else { return };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        while let Some(Ok(_)) = body.data().await {}
                        let head = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(())
                            .expect("a response head");
                        let Ok(mut stream) = respond.send_response(head, false) else { return };
                        let ok = RateLimitResponse { overall_code: Code::Ok as i32, statuses: vec![] };
                        let _ = stream.send_data(rls::tests::framed(&ok).into(), false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = stream.send_trailers(trailers);
                    });
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_service_slower_to_handshake_than_a_checks_timeout_is_connected_once_all_the_same() {
    let dir = TempDir::new("rls-slow-handshake");
    let ca = TestCa::new(&dir.0, "ca");
    let (cert, key) = ca.issue("rls");
    let (addr, accepted) = slow_handshake_service(&cert, &key, Duration::from_millis(300)).await;
    let service = rls::Rls::new(&format!("https://{addr}"), Some(&ca.cert), None).expect("an https service");
    let request = || rls::Template::new("mesh", &[("route", "api"), ("limit", "total")], None).encode("");
    let check = Duration::from_millis(50);
    assert!(
        tokio::time::timeout(check, service.check(request())).await.is_err(),
        "the first check times out: the service starts its TLS handshake 300 ms after the connect"
    );
    // Checks keep timing out (a check, its connect included, gets 50 ms) until the connect the
    // first one started is done; none of them starts another.
    let started = tokio::time::Instant::now();
    let answer = loop {
        match tokio::time::timeout(check, service.check(request())).await {
            Ok(answer) => break answer,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(_) => panic!("no check was answered within 10 s: the connect never completed"),
        }
    };
    assert_eq!(answer.expect("an answer"), None, "the service admits");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one connection, made once");
}

#[test]
fn a_client_certificate_needs_tls_both_its_files_and_readable_ones() {
    let stores = Stores::default();
    let client = TlsFiles { ca: None, cert: Some("/nonexistent.crt"), key: Some("/nonexistent.key") };
    let e = stores.get("route \"r\"", "redis://127.0.0.1:6379", client).unwrap_err().to_string();
    assert_eq!(
        e,
        "route \"r\": a client certificate is given for \"redis://127.0.0.1:6379\", which is not a rediss:// (TLS) URL"
    );
    let e = stores.get("route \"r\"", "rediss://127.0.0.1:6379", client).unwrap_err().to_string();
    assert!(
        e.starts_with("route \"r\": cannot read the global redis client certificate \"/nonexistent.crt\""),
        "{e}"
    );
    let junk = std::env::temp_dir().join(format!("meshproxy-junk-key-{}.pem", std::process::id()));
    std::fs::write(&junk, "not a key").unwrap();
    let junk_path = junk.to_string_lossy();
    let e = stores
        .get(
            "route \"r\"",
            "rediss://127.0.0.1:6379",
            TlsFiles { cert: Some(&junk_path), key: Some(&junk_path), ..client },
        )
        .unwrap_err()
        .to_string();
    std::fs::remove_file(&junk).unwrap();
    assert!(e.starts_with("route \"r\": the TLS files of global redis \"rediss://127.0.0.1:6379\": "), "{e}");
    let e = stores
        .get("route \"r\"", "rediss://127.0.0.1:6379", TlsFiles { key: None, ..client })
        .unwrap_err()
        .to_string();
    assert_eq!(e, "route \"r\": a client certificate (cert) is given without its key");
    let e = stores
        .get_rls("route \"r\"", "https://127.0.0.1:8443", TlsFiles { cert: None, ..client })
        .unwrap_err()
        .to_string();
    assert_eq!(e, "route \"r\": a client key is given without its certificate (cert)");
    let e = stores.get_rls("route \"r\"", "127.0.0.1:8081", client).unwrap_err().to_string();
    assert!(
        e.contains(
            "a client certificate is only used with TLS, and \"127.0.0.1:8081\" is not an https:// address"
        ),
        "{e}"
    );
    let e = stores.get_rls("route \"r\"", "https://127.0.0.1:8443", client).unwrap_err().to_string();
    assert!(e.contains("cannot read /nonexistent.crt"), "{e}");
}

#[test]
fn a_rewritten_client_certificate_gives_a_new_server_and_an_unchanged_one_keeps_it() {
    let tmp = TempDir::new("global-client-cert-reload");
    let ca = TestCa::new(&tmp.0, "ca");
    let (cert, key) = (tmp.0.join("client.crt"), tmp.0.join("client.key"));
    let issue = |stem: &str| {
        let (c, k) = ca.issue(stem);
        std::fs::copy(c, &cert).unwrap();
        std::fs::copy(k, &key).unwrap();
    };
    issue("one");
    let (ca_path, cert_path, key_path) =
        (ca.cert.to_string_lossy(), cert.to_string_lossy(), key.to_string_lossy());
    let files = TlsFiles { ca: Some(&ca_path), cert: Some(&cert_path), key: Some(&key_path) };
    let stores = Stores::default();
    let (url, addr) = ("rediss://127.0.0.1:6380", "https://127.0.0.1:8443");
    let first = [stores.get("test", url, files).unwrap(), stores.get_rls("test", addr, files).unwrap()];
    let again = [stores.get("test", url, files).unwrap(), stores.get_rls("test", addr, files).unwrap()];
    for (a, b) in first.iter().zip(&again) {
        assert!(Arc::ptr_eq(a, b), "a reload with the same certificate and key: {a:?}");
    }
    issue("two");
    let second = [stores.get("test", url, files).unwrap(), stores.get_rls("test", addr, files).unwrap()];
    for (a, b) in first.iter().zip(&second) {
        assert!(!Arc::ptr_eq(a, b), "the certificate and key changed: {a:?}");
    }
    let none = [
        stores.get("test", url, TlsFiles::ca(Some(&ca_path))).unwrap(),
        stores.get_rls("test", addr, TlsFiles::ca(Some(&ca_path))).unwrap(),
    ];
    for (a, b) in second.iter().zip(&none) {
        assert!(!Arc::ptr_eq(a, b), "no client certificate is another server entry: {a:?}");
    }
}
