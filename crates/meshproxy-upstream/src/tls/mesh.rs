//! mTLS to a meshed peer (a service with `identity`): the connection presents this proxy's
//! workload certificate, sends the expected identity's DNS form as SNI
//! (`<name>.<ns>.serviceaccount.identity.<td>`), and verifies that the peer's chain leads to the
//! trust anchors and that it is exactly the expected workload ([`meshproxy_tls::mesh`]). Each
//! handshake takes the identity material in force then, so rotated certificates and anchors
//! apply to new connections while pooled ones keep going. A refused peer is logged with the
//! reason and counted on the service ([`meshproxy_tls::mesh::ConnectFailures`]), and so is a
//! peer that refuses this proxy's certificate ([`MeshIo`]).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use meshproxy_tls::mesh::{ClientAlpn, ConnectFailures, MeshIdentity, PeerFailure, WorkloadId};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::connect::{Alpn, Target};

/// What makes two mesh connectors' connections interchangeable: the peer expected, and whose
/// identity this proxy presents (its files; their contents may rotate under one connector).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Key {
    expected: String,
    ours: meshproxy_tls::mesh::IdentitySource,
}

/// mTLS to the endpoints of one meshed service.
#[derive(Clone)]
pub struct MeshConnector {
    key: Arc<Key>,
    server_name: ServerName<'static>,
    identity: Arc<MeshIdentity>,
    failures: Arc<ConnectFailures>,
    service: Arc<str>,
}

impl fmt::Debug for MeshConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshConnector").field("expected", &self.key.expected).finish_non_exhaustive()
    }
}

impl PartialEq for MeshConnector {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for MeshConnector {}

impl Hash for MeshConnector {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl MeshConnector {
    /// Connections of `service` to the workload `expected`, as `identity` (this proxy).
    pub fn new(service: &str, expected: &WorkloadId, identity: Arc<MeshIdentity>) -> Result<Self, String> {
        let server_name = ServerName::try_from(expected.dns())
            .map_err(|_| format!("{:?} is not a valid TLS server name", expected.dns()))?;
        Ok(MeshConnector {
            key: Arc::new(Key { expected: expected.spiffe(), ours: identity.source().clone() }),
            server_name,
            failures: identity.connect_failures(service),
            identity,
            service: service.into(),
        })
    }

    /// The SPIFFE ID the peer must have.
    pub fn expected(&self) -> &str {
        &self.key.expected
    }

    pub(super) async fn handshake(&self, tcp: TcpStream, target: &Target, alpn: Alpn) -> io::Result<MeshIo> {
        let offer = match alpn {
            Alpn::Http1 => ClientAlpn::Http1,
            Alpn::H2 => ClientAlpn::H2,
            Alpn::Opaque => ClientAlpn::None,
        };
        let config = self.identity.material().client(offer).clone();
        let connect = tokio_rustls::TlsConnector::from(config).connect(self.server_name.clone(), tcp);
        let stream = match connect.await {
            Ok(stream) => stream,
            Err(e) => {
                let why = PeerFailure::of_io(&e);
                if let Some(why) = why {
                    self.failures.count(why);
                }
                tracing::warn!(
                    service = %self.service,
                    endpoint = %target.address,
                    expected = %self.key.expected,
                    reason = why.map_or("io", PeerFailure::as_str),
                    error = %e,
                    "mTLS to a meshed endpoint refused"
                );
                return Err(e);
            }
        };
        if alpn == Alpn::H2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            self.failures.count(PeerFailure::Protocol);
            tracing::warn!(service = %self.service, endpoint = %target.address, "meshed endpoint did not agree to h2 by ALPN");
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the meshed endpoint did not agree to h2 by ALPN",
            ));
        }
        let watch = Refusal {
            failures: self.failures.clone(),
            key: self.key.clone(),
            service: self.service.clone(),
            endpoint: target.address.clone(),
        };
        Ok(MeshIo { stream, watch: Some(Box::new(watch)) })
    }
}

/// A connection to a meshed peer. With TLS 1.3 the server judges the client's certificate after
/// the client has finished its side of the handshake, so a peer that refuses this proxy's
/// certificate (another mesh's anchors, an identity it does not authorize) answers with an alert
/// as its first record, not during `MeshConnector::handshake`. Until the peer's first bytes,
/// a read that fails with an alert (or a write that fails because the peer closed after one) is
/// counted as `peer-refused` on the service and logged like a refused handshake; after them, the
/// TLS stream's own results pass unchanged.
pub struct MeshIo {
    stream: TlsStream<TcpStream>,
    watch: Option<Box<Refusal>>,
}

/// True when an HTTP/2 exchange failed because the meshed peer refused this proxy's certificate
/// ([`MeshIo`]): an alert in place of the peer's first bytes. Another connection to that endpoint
/// would be refused the same way.
pub fn refused_our_certificate(e: &h2::Error) -> bool {
    // h2 keeps an I/O error's kind and message, not its inner error: the kind is the mark.
    e.get_io().is_some_and(|io| io.kind() == REFUSED_KIND)
}

/// The kind of the error [`MeshIo`] reads when the peer refused this proxy's certificate. A
/// read on an established connection never fails with it otherwise (the OS reports a refusal
/// only on connect).
const REFUSED_KIND: io::ErrorKind = io::ErrorKind::ConnectionRefused;

/// Where a refusal of this proxy's certificate is reported.
struct Refusal {
    failures: Arc<ConnectFailures>,
    key: Arc<Key>,
    service: Arc<str>,
    endpoint: Box<str>,
}

impl MeshIo {
    pub fn get_ref(&self) -> (&TcpStream, &rustls::ClientConnection) {
        self.stream.get_ref()
    }

    /// Watches the reads until the peer's first bytes; a refusal becomes an error of
    /// [`REFUSED_KIND`] (see [`refused_our_certificate`]).
    #[cold]
    fn first_read(&mut self, result: &mut Poll<io::Result<()>>, progressed: bool) {
        match result {
            Poll::Ready(Err(e)) => {
                let Some(w) = self.watch.take() else { return };
                if PeerFailure::of_io(e) != Some(PeerFailure::PeerRefused) {
                    return;
                }
                w.failures.count(PeerFailure::PeerRefused);
                tracing::warn!(
                    service = %w.service,
                    endpoint = %w.endpoint,
                    expected = %w.key.expected,
                    reason = PeerFailure::PeerRefused.as_str(),
                    error = %e,
                    "mTLS to a meshed endpoint refused: the peer did not accept this proxy's certificate"
                );
                *e = io::Error::new(
                    REFUSED_KIND,
                    format!("the meshed peer refused this proxy's certificate ({e})"),
                );
            }
            Poll::Ready(Ok(())) if progressed => self.watch = None,
            _ => {}
        }
    }
}

impl AsyncRead for MeshIo {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let mut result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if this.watch.is_some() {
            let progressed = buf.filled().len() > before;
            this.first_read(&mut result, progressed);
        }
        result
    }
}

impl MeshIo {
    /// A write that failed before the peer's first bytes: the peer may have refused this proxy's
    /// certificate and closed, the alert waiting unread. It is read now (the connection is lost
    /// either way), so the refusal is what the write reports.
    #[cold]
    fn failed_write<T>(&mut self, cx: &mut Context<'_>, e: io::Error) -> Poll<io::Result<T>> {
        let mut scratch = [0u8; 64];
        let mut buf = ReadBuf::new(&mut scratch);
        let mut read = Pin::new(&mut self.stream).poll_read(cx, &mut buf);
        self.first_read(&mut read, false);
        match read {
            Poll::Ready(Err(refused)) if refused.kind() == REFUSED_KIND => Poll::Ready(Err(refused)),
            _ => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for MeshIo {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(Err(e)) if this.watch.is_some() => this.failed_write(cx, e),
            r => r,
        }
    }
    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(Err(e)) if this.watch.is_some() => this.failed_write(cx, e),
            r => r,
        }
    }
    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_flush(cx) {
            Poll::Ready(Err(e)) if this.watch.is_some() => this.failed_write(cx, e),
            r => r,
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use meshproxy_tls::mesh::{chain_current, spiffe_id_of, IdentitySource};
    use rustls::HandshakeKind;
    use time::OffsetDateTime;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// A trust anchor and the identities `names` (namespace `shop`) in a fresh temporary directory.
    fn mesh(names: &[&str]) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "meshproxy-mesh-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let now = OffsetDateTime::now_utc();
        meshproxy_identity::init(&dir, "cluster.local", 30 * DAY, meshproxy_identity::Existing::Refuse, now)
            .expect("anchor");
        for name in names {
            meshproxy_identity::issue(&dir, name, "shop", DAY, now).expect("workload certificate");
        }
        dir
    }

    fn identity(dir: &std::path::Path, name: &str) -> Arc<MeshIdentity> {
        let source = IdentitySource {
            dir: dir.to_owned(),
            name: name.into(),
            namespace: "shop".into(),
            self_issue: None,
        };
        Arc::new(MeshIdentity::load(source).expect("identity loads"))
    }

    /// What the inbound side saw of one connection.
    #[derive(Debug, PartialEq)]
    struct Seen {
        kind: Option<HandshakeKind>,
        peer: Option<String>,
        current: bool,
    }

    /// A server on 127.0.0.1 with `identity`'s mesh server config, as a listener with `mtls`
    /// uses it: for each connection it reports the handshake kind and the client's SPIFFE ID,
    /// writes one byte (so that the client reads, and takes in the session tickets), and holds
    /// the connection until the client closes.
    async fn inbound(identity: Arc<MeshIdentity>) -> (Target, mpsc::UnboundedReceiver<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = Target::new(&listener.local_addr().expect("address").to_string());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = tokio_rustls::TlsAcceptor::from(identity.material().server().clone());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let conn = tls.get_ref().1;
                    let chain = conn.peer_certificates().unwrap_or_default();
                    let _ = tx.send(Seen {
                        kind: conn.handshake_kind(),
                        peer: chain.first().and_then(|c| spiffe_id_of(c.as_ref())),
                        current: chain_current(chain, std::time::SystemTime::now()),
                    });
                    let _ = tls.write_all(b"x").await;
                    let _ = tls.read(&mut [0u8; 1]).await;
                });
            }
        });
        (target, rx)
    }

    async fn connect(c: &MeshConnector, target: &Target, alpn: Alpn) -> MeshIo {
        let tcp = TcpStream::connect(target.address.as_ref()).await.expect("tcp");
        let mut tls = c.handshake(tcp, target, alpn).await.expect("mTLS handshake");
        tls.read_exact(&mut [0u8; 1]).await.expect("first byte");
        tls
    }

    #[tokio::test]
    async fn a_second_mesh_connection_resumes_its_session_and_still_carries_the_client_identity() {
        let dir = mesh(&["web", "orders"]);
        let (orders, web) = (identity(&dir, "orders"), identity(&dir, "web"));
        assert!(orders.material().server().ticketer.enabled(), "the inbound side issues stateless tickets");
        let (target, mut seen) = inbound(orders.clone()).await;
        let expected = orders.material().info.id.clone();
        let c = MeshConnector::new("orders", &expected, web.clone()).expect("connector");
        let web_id = Some(web.material().info.id.spiffe());

        let first = connect(&c, &target, Alpn::Http1).await;
        assert_eq!(first.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
        let s = seen.recv().await.expect("first connection seen");
        assert_eq!(s, Seen { kind: Some(HandshakeKind::Full), peer: web_id.clone(), current: true });

        // Another connection of the same connector (another ALPN offer, as the h2 pool's) resumes.
        let second = connect(&c, &target, Alpn::H2).await;
        assert_eq!(second.get_ref().1.handshake_kind(), Some(HandshakeKind::Resumed));
        assert_eq!(second.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let s = seen.recv().await.expect("second connection seen");
        assert_eq!(s, Seen { kind: Some(HandshakeKind::Resumed), peer: web_id, current: true });

        // After a reload of the inbound side's identity, its new ticket keys cannot open the old
        // tickets: a full handshake, verifying the client's certificate again.
        orders.reload().expect("reload");
        let _third = connect(&c, &target, Alpn::Http1).await;
        let s = seen.recv().await.expect("third connection seen");
        assert_eq!(s.kind, Some(HandshakeKind::Full));
        drop((first, second));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
