//! The socket behind a pool: a [`Connector`] opens connections to an endpoint's address. Plain
//! TCP ([`TcpConnector`]) today; TLS slots in as another connector whose connection type wraps
//! the TCP stream, and tests use in-memory duplexes. [`Counted`] wraps whatever a connector
//! returns so the endpoint counts the connection open until it is dropped.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Weak;
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
}

/// Opens connections to endpoints. The endpoint bounds each attempt with its connect timeout.
pub trait Connector: Clone + Send + Sync + 'static {
    type Io: Io;
    fn connect(&self, target: &Target) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// Plain TCP, with Nagle's algorithm off (requests and responses are written whole).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    type Io = TcpStream;

    async fn connect(&self, target: &Target) -> io::Result<TcpStream> {
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
pub struct Counted<IO> {
    io: IO,
    endpoint: Weak<dyn OpenCount>,
}

/// The counter a [`Counted`] connection decrements when it is dropped (its endpoint's).
pub(crate) trait OpenCount: Send + Sync {
    fn closed(&self);
}

impl<IO> Counted<IO> {
    pub(crate) fn new(io: IO, endpoint: Weak<dyn OpenCount>) -> Self {
        Counted { io, endpoint }
    }
}

impl<IO> Drop for Counted<IO> {
    fn drop(&mut self) {
        if let Some(ep) = self.endpoint.upgrade() {
            ep.closed();
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
