//! The socket behind a pool: a [`Connector`] opens connections to an endpoint's address. Plain
//! TCP ([`TcpConnector`]), TLS over TCP ([`crate::tls`]), and in-memory duplexes in tests.
//! [`Counted`] wraps whatever a connector returns so the endpoint counts the connection open
//! until it is dropped.

use std::future::Future;
use std::hash::Hash;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use meshproxy_http::h1::Io;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Where an endpoint is: its address as configured, and the socket address when it is an IP
/// literal (parsed once; host names resolve at connect time).
#[derive(Debug, Clone)]
pub struct Target {
    pub address: Box<str>,
    pub socket: Option<SocketAddr>,
}

impl Target {
    pub fn new(address: &str) -> Self {
        Target { address: address.into(), socket: address.parse().ok() }
    }

    /// The address without its port (and without the brackets of an IPv6 literal): the name a
    /// TLS connection verifies when its service names none.
    pub fn host(&self) -> &str {
        let host = match self.address.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => &self.address,
        };
        host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
    }
}

/// What a new connection is for: a TLS connector offers the matching ALPN protocol and checks
/// the one the peer chose; plain TCP ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/1.1 requests (the endpoint's idle pool, an HTTP/1.1 health check).
    Http1,
    /// HTTP/2 streams: the peer must agree to `h2`.
    H2,
    /// Bytes the proxy does not read (a TCP service, a `CONNECT` tunnel, a TCP health check).
    Opaque,
}

/// Opens connections to endpoints. The endpoint bounds each attempt with its connect timeout.
///
/// Two connectors are equal when the connections they open to one address are interchangeable:
/// the [`crate::Registry`] keys endpoints by address and connector, so a plaintext and a TLS
/// connection to one address (or two TLS connections with different names or client
/// certificates) never share a pool.
pub trait Connector: Clone + Eq + Hash + Send + Sync + 'static {
    type Io: Io;
    fn connect(&self, target: &Target, alpn: Alpn) -> impl Future<Output = io::Result<Self::Io>> + Send;

    /// Whether its connections are TLS: a label on the endpoint's metrics, which tells a
    /// plaintext and a TLS endpoint at one address apart.
    fn is_tls(&self) -> bool {
        false
    }
}

/// Plain TCP, with Nagle's algorithm off (requests and responses are written whole).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    type Io = TcpStream;

    async fn connect(&self, target: &Target, _alpn: Alpn) -> io::Result<TcpStream> {
        let stream = match target.socket {
            Some(addr) => TcpStream::connect(addr).await?,
            None => TcpStream::connect(&*target.address).await?,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// A connection counted open on its endpoint until dropped. Weak: the endpoint's pool owns
/// idle connections, so a strong reference would keep a removed endpoint alive through them.
/// Also counted in its service's [`ConnLimit`] when the service has one.
pub struct Counted<IO> {
    io: IO,
    endpoint: Weak<dyn OpenCount>,
    service: Option<Arc<ConnLimit>>,
}

/// A service-wide bound on open upstream connections (a circuit breaker's `maxConnections`),
/// shared by the service's endpoints and kept across reloads. A connection past it is not
/// opened: the request is refused (overloaded) rather than queued. An endpoint two services
/// share counts in the limit of the service whose settings it was last given.
#[derive(Debug, Default)]
pub struct ConnLimit {
    /// 0 = no limit.
    max: AtomicUsize,
    open: AtomicUsize,
    overflows: AtomicU64,
}

impl ConnLimit {
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Takes a place for a new connection; false (an overflow, counted) when none is left.
    pub(crate) fn try_open(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (max == 0 || n < max).then_some(n + 1));
        if taken.is_err() {
            self.overflows.fetch_add(1, Ordering::Relaxed);
        }
        taken.is_ok()
    }

    /// Gives back a place: its connection closed, or never opened.
    pub(crate) fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// Connections open under the limit.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused by the limit so far.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }
}

/// The counter a [`Counted`] connection decrements when it is dropped (its endpoint's).
pub(crate) trait OpenCount: Send + Sync {
    fn closed(&self);
}

impl<IO> Counted<IO> {
    pub(crate) fn new(io: IO, endpoint: Weak<dyn OpenCount>, service: Option<Arc<ConnLimit>>) -> Self {
        Counted { io, endpoint, service }
    }
}

impl<IO> Drop for Counted<IO> {
    fn drop(&mut self) {
        if let Some(ep) = self.endpoint.upgrade() {
            ep.closed();
        }
        if let Some(limit) = &self.service {
            limit.release();
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO: Io> Io for Counted<IO> {
    fn is_closed_idle(&self) -> bool {
        self.io.is_closed_idle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_targets_host_is_its_address_without_port_or_brackets() {
        for (address, host) in [
            ("payments.internal:9443", "payments.internal"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("[::1]:8443", "::1"),
            ("localhost", "localhost"),
        ] {
            assert_eq!(Target::new(address).host(), host, "{address}");
        }
    }

    #[test]
    fn a_conn_limit_takes_places_up_to_its_max_and_counts_refusals() {
        let l = ConnLimit::default();
        assert!((0..5).all(|_| l.try_open()), "no max: every connection may open");
        l.set_max(6);
        assert!(l.try_open());
        assert!(!l.try_open());
        assert_eq!((l.open(), l.overflows()), (6, 1));
        l.release();
        assert!(l.try_open(), "a closed connection gives its place back");
    }
}
