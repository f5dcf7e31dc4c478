//! TLS origination: a [`TlsConnector`] opens a TCP connection and runs a rustls client handshake
//! over it (ring is the one crypto provider), and [`UpstreamConnector`] is the connector every
//! endpoint of the engine holds, plain TCP or TLS, so `Endpoint<C>` stays one type.
//!
//! What a handshake does:
//! - SNI and the name verified: the service's `serverName`, else the endpoint's host (a DNS name,
//!   or an IP address verified against the certificate's IP SANs, sent without SNI).
//! - Verification against the service's CA bundle, else the system roots (read once per process).
//! - An optional client certificate.
//! - ALPN by what the connection carries ([`Alpn`]): `h2` for HTTP/2, which the peer must choose
//!   (else the connect fails), `http/1.1` for HTTP/1.1 (a peer choosing none is accepted), none
//!   for opaque bytes.
//!
//! The client config is built once per config compile ([`TlsConnector::new`]) and shared by
//! every connection of the connector (and its clones), so rustls's default session cache
//! resumes sessions across connections. A failed handshake is an `io::Error` like a refused
//! connect (the endpoint counts it as a connect failure) and is logged with rustls's reason.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use meshproxy_http::h1::Io;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::connect::{Alpn, Connector, Target, TcpConnector};

mod mesh;
pub use mesh::{refused_our_certificate, MeshConnector, MeshIo};

/// A service's TLS settings as the config gives them (paths already resolved).
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// The name sent as SNI and verified; none = each endpoint's host.
    pub server_name: Option<String>,
    /// A PEM bundle of trusted CA certificates; none = the system roots.
    pub ca: Option<PathBuf>,
    /// A PEM client certificate chain and its PEM private key.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// Why a service's TLS settings give no client config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("no system root certificates could be loaded ({0}); name a CA bundle instead: a service's tls.ca, a global rate limit's ca")]
    NoSystemRoots(String),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// What makes two TLS connectors' connections to one address interchangeable: the name, the
/// trust and the client identity (by the files' contents, so a reload with changed files gives
/// new endpoints and pools, and one with the same files keeps them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Identity {
    server_name: Option<Box<str>>,
    /// xxh3-128 of the CA bundle; none = the system roots.
    roots: Option<u128>,
    /// xxh3-128 of the client certificate chain and key.
    client: Option<u128>,
}

/// TLS over TCP to endpoints, one client config per ALPN offer, all sharing one session cache.
#[derive(Clone)]
pub struct TlsConnector {
    identity: Arc<Identity>,
    server_name: Option<ServerName<'static>>,
    http1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
    opaque: Arc<ClientConfig>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl PartialEq for TlsConnector {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
    }
}

impl Eq for TlsConnector {}

impl Hash for TlsConnector {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity.hash(state);
    }
}

pub use meshproxy_tls::provider;

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| {
        TlsError::Pem { path: path.to_owned(), what: format!("not a PEM certificate file: {e}") }
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_owned(), what: "no certificate in the file".into() });
    }
    Ok(certs)
}

/// The system's trusted roots, read once per process (rustls-native-certs).
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map_or_else(|| "none found".to_owned(), |e| e.to_string());
                return Err(why);
            }
            if !found.errors.is_empty() {
                tracing::warn!(errors = ?found.errors, "some system root certificates could not be loaded");
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(TlsError::NoSystemRoots)
}

impl TlsConnector {
    /// Reads and checks the files of `settings` and builds the client configs.
    pub fn new(settings: &TlsSettings) -> Result<Self, TlsError> {
        let server_name = settings
            .server_name
            .as_deref()
            .map(|n| ServerName::try_from(n.to_owned()).map_err(|_| TlsError::ServerName(n.to_owned())))
            .transpose()?;
        let (roots, roots_digest) = match &settings.ca {
            Some(path) => {
                let pem = read(path)?;
                let mut roots = RootCertStore::empty();
                for cert in certificates(path, &pem)? {
                    roots.add(cert).map_err(|e| TlsError::Pem {
                        path: path.clone(),
                        what: format!("not a usable CA certificate: {e}"),
                    })?;
                }
                (Arc::new(roots), Some(xxhash_rust::xxh3::xxh3_128(&pem)))
            }
            None => (system_roots()?, None),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let (mut base, client) = match &settings.client_auth {
            Some((cert_path, key_path)) => {
                let cert_pem = read(cert_path)?;
                let key_pem = read(key_path)?;
                let chain = certificates(cert_path, &cert_pem)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
                    path: key_path.clone(),
                    what: format!("not a PEM private key: {e}"),
                })?;
                let mut digest = xxhash_rust::xxh3::Xxh3::new();
                digest.update(&cert_pem);
                digest.update(&key_pem);
                (builder.with_client_auth_cert(chain, key)?, Some(digest.digest128()))
            }
            None => (builder.with_no_client_auth(), None),
        };
        base.alpn_protocols = Vec::new();
        // Clones share the session cache (`resumption` holds it behind an Arc).
        let with_alpn = |protocol: &[u8]| {
            let mut config = base.clone();
            config.alpn_protocols = vec![protocol.to_vec()];
            Arc::new(config)
        };
        let (http1, h2) = (with_alpn(b"http/1.1"), with_alpn(b"h2"));
        Ok(TlsConnector {
            identity: Arc::new(Identity {
                server_name: settings.server_name.as_deref().map(Into::into),
                roots: roots_digest,
                client,
            }),
            server_name,
            http1,
            h2,
            opaque: Arc::new(base),
        })
    }

    /// The TLS handshake over `tcp` to `target`, offering the ALPN protocol `alpn` calls for; a
    /// failure is logged with its reason.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        target: &Target,
        alpn: Alpn,
    ) -> io::Result<TlsStream<TcpStream>> {
        let result = self.handshake_unlogged(tcp, target, alpn).await;
        if let Err(e) = &result {
            tracing::warn!(endpoint = %target.address, error = %e, "upstream TLS handshake failed");
        }
        result
    }

    /// [`Self::handshake`] without the log line, for a caller that reports failures its own way
    /// (a global rate limit's service, whose failures are logged at most every 10 s). The error
    /// says why: rustls's reason, or the ALPN protocol the peer chose instead of `h2`.
    pub async fn handshake_unlogged(
        &self,
        tcp: TcpStream,
        target: &Target,
        alpn: Alpn,
    ) -> io::Result<TlsStream<TcpStream>> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(target.host().to_owned()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{:?} is neither a DNS name nor an IP address to verify; set tls.serverName",
                        target.host()
                    ),
                )
            })?,
        };
        let config = match alpn {
            Alpn::Http1 => &self.http1,
            Alpn::H2 => &self.h2,
            Alpn::Opaque => &self.opaque,
        };
        let stream = tokio_rustls::TlsConnector::from(config.clone()).connect(name.clone(), tcp).await?;
        if alpn == Alpn::H2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            let chosen = stream.get_ref().1.alpn_protocol().map(String::from_utf8_lossy);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the peer {} did not agree to h2 by ALPN (chose {chosen:?})", name.to_str()),
            ));
        }
        Ok(stream)
    }

    #[cfg(test)]
    fn config(&self, alpn: Alpn) -> &Arc<ClientConfig> {
        match alpn {
            Alpn::Http1 => &self.http1,
            Alpn::H2 => &self.h2,
            Alpn::Opaque => &self.opaque,
        }
    }
}

/// The connector of the engine's endpoints: plain TCP, TLS as the service's `tls` says, or mTLS
/// to a meshed peer ([`MeshConnector`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum UpstreamConnector {
    #[default]
    Tcp,
    Tls(TlsConnector),
    Mesh(MeshConnector),
}

impl Connector for UpstreamConnector {
    type Io = UpstreamIo;

    async fn connect(&self, target: &Target, alpn: Alpn) -> io::Result<UpstreamIo> {
        let tcp = TcpConnector.connect(target, alpn).await?;
        match self {
            UpstreamConnector::Tcp => Ok(UpstreamIo::Tcp(tcp)),
            UpstreamConnector::Tls(tls) => {
                Ok(UpstreamIo::Tls(Box::new(tls.handshake(tcp, target, alpn).await?)))
            }
            UpstreamConnector::Mesh(mesh) => {
                Ok(UpstreamIo::Mesh(Box::new(mesh.handshake(tcp, target, alpn).await?)))
            }
        }
    }

    fn is_tls(&self) -> bool {
        !matches!(self, UpstreamConnector::Tcp)
    }
}

/// A connection [`UpstreamConnector`] opened. The TLS stream is boxed (it holds rustls's
/// buffers), so a plaintext connection stays the size of a TCP stream plus a tag.
pub enum UpstreamIo {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Mesh(Box<MeshIo>),
}

impl UpstreamIo {
    /// The ALPN protocol agreed, for a TLS connection that agreed one.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            UpstreamIo::Tcp(_) => None,
            UpstreamIo::Tls(tls) => tls.get_ref().1.alpn_protocol(),
            UpstreamIo::Mesh(mesh) => mesh.get_ref().1.alpn_protocol(),
        }
    }
}

impl AsyncRead for UpstreamIo {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_read(cx, buf),
            UpstreamIo::Mesh(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_write(cx, buf),
            UpstreamIo::Mesh(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }
    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
            UpstreamIo::Mesh(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }
    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Tcp(io) => io.is_write_vectored(),
            UpstreamIo::Tls(io) => io.is_write_vectored(),
            UpstreamIo::Mesh(io) => io.is_write_vectored(),
        }
    }
    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_flush(cx),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_flush(cx),
            UpstreamIo::Mesh(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            UpstreamIo::Tls(io) => Pin::new(&mut **io).poll_shutdown(cx),
            UpstreamIo::Mesh(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }
}

impl Io for UpstreamIo {
    /// For TLS, the TCP socket's state: anything readable on an idle TLS connection (a
    /// `close_notify`, an unasked record) means it is not reused.
    #[inline]
    fn is_closed_idle(&self) -> bool {
        match self {
            UpstreamIo::Tcp(io) => io.is_closed_idle(),
            UpstreamIo::Tls(io) => io.get_ref().0.is_closed_idle(),
            UpstreamIo::Mesh(io) => io.get_ref().0.is_closed_idle(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a leaf it signs for `localhost` and 127.0.0.1, written as PEM files into a
    /// fresh temporary directory with the `openssl` CLI.
    fn material() -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let id = format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(format!("meshproxy-tls-test-{id}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let run = |args: &[&str]| {
            let out =
                std::process::Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            &format!("/CN=test ca {id}"),
        ]);
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("ext");
        run(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.crt",
            "-days",
            "1",
            "-extfile",
            "ext",
        ]);
        dir
    }

    fn settings(dir: &Path, name: Option<&str>, client: bool) -> TlsSettings {
        TlsSettings {
            server_name: name.map(Into::into),
            ca: Some(dir.join("ca.crt")),
            client_auth: client.then(|| (dir.join("leaf.crt"), dir.join("leaf.key"))),
        }
    }

    fn connector(s: &TlsSettings) -> UpstreamConnector {
        UpstreamConnector::Tls(TlsConnector::new(s).expect("client config"))
    }

    #[test]
    fn a_plaintext_connection_is_a_tcp_stream_and_a_tag() {
        let (io, tcp) = (std::mem::size_of::<UpstreamIo>(), std::mem::size_of::<TcpStream>());
        assert!(io <= tcp + std::mem::size_of::<usize>(), "UpstreamIo {io} bytes, TcpStream {tcp}");
    }

    #[test]
    fn connectors_are_equal_when_name_trust_and_client_identity_are() {
        let dir = material();
        let base = connector(&settings(&dir, Some("payments.internal"), false));
        assert_eq!(base, connector(&settings(&dir, Some("payments.internal"), false)), "same files and name");
        assert_ne!(base, UpstreamConnector::Tcp, "plaintext and TLS never share a pool");
        assert_ne!(base, connector(&settings(&dir, Some("ledger.internal"), false)), "another server name");
        assert_ne!(base, connector(&settings(&dir, None, false)), "the endpoint's host instead of a name");
        assert_ne!(base, connector(&settings(&dir, Some("payments.internal"), true)), "a client certificate");
        let other = material();
        assert_ne!(base, connector(&settings(&other, Some("payments.internal"), false)), "another CA bundle");
    }

    /// A TLS server on 127.0.0.1 with `dir`'s leaf certificate, offering `alpn`: for each
    /// connection it completes the handshake and writes one byte (which makes the client read,
    /// and so take in TLS 1.3 session tickets), then holds the connection until the client closes.
    async fn server(dir: &Path, alpn: &[&[u8]]) -> Target {
        let chain =
            certificates(&dir.join("leaf.crt"), &read(&dir.join("leaf.crt")).expect("leaf")).expect("chain");
        let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).expect("key");
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(b"x").await;
                        let _ = tls.read(&mut [0u8; 1]).await;
                    }
                });
            }
        });
        Target::new(&address)
    }

    async fn first_byte(c: &UpstreamConnector, target: &Target, alpn: Alpn) -> io::Result<UpstreamIo> {
        use tokio::io::AsyncReadExt;
        let mut io = c.connect(target, alpn).await?;
        io.read_exact(&mut [0u8; 1]).await?;
        Ok(io)
    }

    #[test]
    fn the_registry_keeps_a_plaintext_and_a_tls_endpoint_at_one_address_apart() {
        let dir = material();
        let registry = crate::Registry::<UpstreamConnector>::new(1);
        let tls = connector(&settings(&dir, Some("payments.internal"), false));
        let plain = registry.lookup_or_new(
            "127.0.0.1:9443",
            &UpstreamConnector::Tcp,
            crate::endpoint::tests::settings(),
        );
        registry.adopt([&plain]);
        let again = registry.lookup_or_new(
            "127.0.0.1:9443",
            &UpstreamConnector::Tcp,
            crate::endpoint::tests::settings(),
        );
        assert!(Arc::ptr_eq(&plain, &again), "same address and connector: the registered endpoint");
        let secure = registry.lookup_or_new("127.0.0.1:9443", &tls, crate::endpoint::tests::settings());
        assert!(!Arc::ptr_eq(&plain, &secure), "TLS to the same address: another endpoint");
        registry.adopt([&secure]);
        let renamed = connector(&settings(&dir, Some("ledger.internal"), false));
        let other = registry.lookup_or_new("127.0.0.1:9443", &renamed, crate::endpoint::tests::settings());
        assert!(!Arc::ptr_eq(&secure, &other), "another server name: another endpoint");
        registry.retain(|_, c| *c == UpstreamConnector::Tcp);
        assert_eq!(registry.samples().len(), 1, "retain sees each endpoint's connector");
    }

    #[tokio::test]
    async fn a_second_connection_resumes_the_session_whatever_its_alpn_offer() {
        let dir = material();
        let target = server(&dir, &[b"h2", b"http/1.1"]).await;
        let c = connector(&settings(&dir, None, false));
        let kind = |io: &UpstreamIo| match io {
            UpstreamIo::Tls(tls) => tls.get_ref().1.handshake_kind(),
            UpstreamIo::Mesh(mesh) => mesh.get_ref().1.handshake_kind(),
            UpstreamIo::Tcp(_) => None,
        };
        let first = first_byte(&c, &target, Alpn::Http1).await.expect("first connection");
        assert_eq!(kind(&first), Some(rustls::HandshakeKind::Full));
        assert_eq!(first.alpn_protocol(), Some(&b"http/1.1"[..]));
        let second = first_byte(&c, &target, Alpn::H2).await.expect("second connection");
        assert_eq!(kind(&second), Some(rustls::HandshakeKind::Resumed));
        assert_eq!(second.alpn_protocol(), Some(&b"h2"[..]));
        let UpstreamConnector::Tls(tls) = &c else { unreachable!() };
        assert!(tls.config(Alpn::Opaque).alpn_protocols.is_empty(), "opaque bytes offer no protocol");
    }

    #[tokio::test]
    async fn handshakes_fail_on_a_wrong_name_an_unknown_ca_or_h2_not_agreed() {
        let dir = material();
        // A server that agrees to no ALPN protocol (as Node's `https` by default).
        let target = server(&dir, &[]).await;
        let fails = |c: UpstreamConnector, alpn: Alpn| {
            let target = target.clone();
            async move { first_byte(&c, &target, alpn).await.err().map(|e| e.to_string()).unwrap_or_default() }
        };
        let ok = connector(&settings(&dir, Some("localhost"), false));
        assert_eq!(fails(ok.clone(), Alpn::Http1).await, "", "the right name and CA; HTTP/1.1 needs no ALPN");
        let e = fails(connector(&settings(&dir, Some("payments.internal"), false)), Alpn::Http1).await;
        assert!(e.contains("not valid for name"), "{e}");
        let e = fails(connector(&settings(&material(), None, false)), Alpn::Http1).await;
        assert!(e.contains("UnknownIssuer"), "{e}");
        let e = fails(ok, Alpn::H2).await;
        assert!(e.contains("did not agree to h2"), "{e}");
    }

    #[test]
    fn bad_files_are_refused_naming_the_file() {
        let dir = material();
        let mut s = settings(&dir, None, false);
        s.ca = Some(dir.join("missing.crt"));
        let e = TlsConnector::new(&s).expect_err("a missing CA file");
        assert!(e.to_string().contains("missing.crt"), "{e}");
        s.ca = Some(dir.join("leaf.key"));
        let e = TlsConnector::new(&s).expect_err("a key is no CA bundle");
        assert!(e.to_string().contains("no certificate"), "{e}");
        let mut s = settings(&dir, None, true);
        s.client_auth = Some((dir.join("leaf.crt"), dir.join("ca.crt")));
        let e = TlsConnector::new(&s).expect_err("a certificate is no key");
        assert!(e.to_string().contains("ca.crt"), "{e}");
        let s = TlsSettings { server_name: Some("not a name!".into()), ..settings(&dir, None, false) };
        assert!(matches!(TlsConnector::new(&s), Err(TlsError::ServerName(_))));
    }
}
