//! Downstream listeners: the accept loop (connection cap, accept-error backoff) and the
//! per-connection task (the TLS handshake on a listener with `tls` ([`tls`]), then HTTP/1.1 via
//! hyper, HTTP/2 via [`meshproxy_http::h2_server`] or opaque TCP, header-read and idle timeouts,
//! graceful drain).
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection sits idle, which
//! would cap the idle time at the header timeout; so both timeouts are tracked here from what the
//! connection is doing: bytes of a new request head arriving (header timeout), a request in
//! progress (no timeout), or nothing (idle timeout).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::activity::Activity;
use crate::compile::{ListenerLimits, ListenerRuntime};
use crate::config::ListenerProtocol;
use crate::proxy::ProxyService;
use crate::state::Shared;
use crate::tcp;
use meshproxy_http::detect::{self, Detected, PrefixedIo};
use meshproxy_http::h2_server;

mod mtls;
mod tls;

#[cfg(test)]
mod h2_tests;

/// The downstream connection (a socket, or the TLS stream over it), noting when bytes of a new
/// request start to arrive.
struct TrackedIo<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for TrackedIo<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.on_read();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for TrackedIo<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

pub use meshproxy_http::Drain;

/// Accepts until `stop` flips; never ends on an accept error (e.g. EMFILE), backing off instead.
pub async fn accept_loop(
    listener: TcpListener,
    key: Arc<str>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    drain: watch::Receiver<Drain>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                tracing::warn!(listener = %key, error = %e, ?backoff, "accept failed; backing off");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let snapshot = shared.snapshot().load();
        let Some(rt) = snapshot.listeners.get(&*key) else {
            continue;
        };
        let metrics = rt.metrics.clone();
        if metrics.open.load(Ordering::Relaxed) as usize >= rt.limits.max_connections {
            metrics.rejected.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        metrics.accepted.fetch_add(1, Ordering::Relaxed);
        let open = OpenConn::count(metrics, shared.open_connections());
        let rt = rt.clone();
        drop(snapshot);
        let worker = shared.deal().map(|(w, handle)| (w, handle.clone()));
        let (shared, key, drain) = (shared.clone(), key.clone(), drain.clone());
        match worker {
            Some((w, handle)) if w != meshproxy_upstream::worker::current() => {
                // To another worker: the socket leaves this runtime's reactor and joins that one's.
                match stream.into_std() {
                    Ok(std) => {
                        handle.spawn(async move {
                            match TcpStream::from_std(std) {
                                Ok(stream) => serve(stream, peer, rt, shared, key, drain).await,
                                Err(e) => tracing::warn!(%peer, error = %e, "could not hand a connection to a worker"),
                            }
                            drop(open);
                        });
                    }
                    Err(e) => tracing::warn!(%peer, error = %e, "could not hand a connection to a worker"),
                }
            }
            _ => {
                tokio::spawn(async move {
                    serve(stream, peer, rt, shared, key, drain).await;
                    drop(open);
                });
            }
        }
    }
}

/// One accepted connection in the listener's and the proxy's open counts, until dropped.
struct OpenConn {
    listener: Arc<crate::metrics::ListenerMetrics>,
    all: Arc<AtomicUsize>,
}

impl OpenConn {
    fn count(listener: Arc<crate::metrics::ListenerMetrics>, all: &Arc<AtomicUsize>) -> Self {
        listener.open.fetch_add(1, Ordering::Relaxed);
        all.fetch_add(1, Ordering::AcqRel);
        OpenConn { listener, all: all.clone() }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.listener.open.fetch_sub(1, Ordering::Relaxed);
        self.all.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    rt: Arc<ListenerRuntime>,
    shared: Arc<Shared>,
    key: Arc<str>,
    drain: watch::Receiver<Drain>,
) {
    let _ = stream.set_nodelay(true);
    if let Some(tls) = rt.tls.clone() {
        // Boxed: a connection's future is as large as its largest state, and the TLS states
        // (the handshake, then a connection served over a rustls stream) are many times the
        // plaintext one's; inline, every plaintext connection's task would carry their size.
        return Box::pin(async move {
            let Some((stream, alpn)) = tls::accept(stream, peer, &tls, &rt).await else {
                return;
            };
            serve_io(stream, alpn, peer, None, rt, shared, key, drain).await
        })
        .await;
    }
    if let Some(mtls) = rt.mtls.clone() {
        // Boxed for the same reason.
        return Box::pin(async move {
            match mtls::accept(stream, peer, &mtls, &rt).await {
                mtls::Accepted::Mesh(stream, alpn, id) => {
                    serve_io(stream, alpn, peer, Some(id), rt, shared, key, drain).await
                }
                mtls::Accepted::Plain(stream) => {
                    serve_io(stream, None, peer, None, rt, shared, key, drain).await
                }
                mtls::Accepted::Refused => {}
            }
        })
        .await;
    }
    serve_io(stream, None, peer, None, rt, shared, key, drain).await
}

/// Serves one connection, plaintext or decrypted: a protocol the client chose by ALPN is served
/// as such; otherwise the first bytes decide (HTTP/1.x, the h2 preface, or opaque TCP).
/// `peer_id`: the SPIFFE ID of an mTLS peer.
#[allow(clippy::too_many_arguments)]
async fn serve_io<IO>(
    stream: IO,
    alpn: Option<tls::Alpn>,
    peer: SocketAddr,
    peer_id: Option<Arc<str>>,
    rt: Arc<ListenerRuntime>,
    shared: Arc<Shared>,
    key: Arc<str>,
    drain: watch::Receiver<Drain>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &rt.limits;
    if let (ListenerProtocol::Tcp, Some(service)) = (rt.protocol, &rt.tcp_service) {
        return tcp::forward(stream, peer, service, limits.tunnel_idle_timeout, drain).await;
    }
    let activity = Arc::new(Activity::new());
    let mut io = TrackedIo { inner: stream, activity: activity.clone() };
    let (detected, prefix) = match alpn {
        Some(tls::Alpn::H2) => (Detected::Http2, bytes::Bytes::new()),
        Some(tls::Alpn::Http11) => (Detected::Http1, bytes::Bytes::new()),
        None => {
            // With somewhere to send opaque traffic, silence means a server-speaks-first protocol
            // after the (short) detection timeout; without, the client has the header-read timeout
            // to speak.
            let wait =
                if rt.tcp_service.is_some() { limits.detect_timeout } else { limits.header_read_timeout };
            match detect::sniff(&mut io, wait).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "downstream connection failed before its first request");
                    return;
                }
            }
        }
    };
    if detected == Detected::Opaque {
        if let Some(service) = &rt.tcp_service {
            let io = PrefixedIo::new(prefix, io.inner);
            return tcp::forward(io, peer, service, limits.tunnel_idle_timeout, drain).await;
        }
        if prefix.is_empty() {
            tracing::debug!(%peer, "downstream connection sent nothing; closing");
            return;
        }
    }
    let io = PrefixedIo::new(prefix, io);
    let peer_id = peer_id.map(|id| {
        let metrics = rt.metrics.tls.peer(&id);
        (id, metrics)
    });
    let service =
        ProxyService::new(shared, key, peer, activity.clone(), drain.clone(), rt.tls.is_some(), peer_id);
    match detected {
        Detected::Http2 => {
            activity.multiplexed();
            // The preface is already buffered (or, after ALPN h2, about to arrive): the handshake
            // writes the server's SETTINGS and reads the preface.
            let handshake = h2_server::Serve::handshake(io, &limits.http2, service);
            match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                Ok(Ok(conn)) => drive(conn, peer, limits, &activity, drain).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "downstream HTTP/2 handshake failed"),
                Err(_) => tracing::debug!(%peer, "downstream HTTP/2 handshake timed out"),
            }
        }
        // Anything else goes to the HTTP/1 parser, which answers 400 to what is not HTTP.
        Detected::Http1 | Detected::Opaque => {
            let conn = http1::Builder::new()
                .keep_alive(true)
                .half_close(false)
                // Heads beyond the limit get 431 from hyper; the read buffer (at least hyper's
                // 8 KiB minimum) must be larger than the limit or it would cut in first.
                .max_header_size(limits.max_header_bytes)
                .max_buf_size(limits.max_header_bytes.max(8192) + 8192)
                .header_read_timeout(None)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            drive(conn, peer, limits, &activity, drain).await;
        }
    }
}

/// A served connection that can be asked to finish what it is doing and close.
trait Drainable {
    fn drain(self: Pin<&mut Self>);
}

impl<IO, S> Drainable for h2_server::Serve<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: h2_server::Handler,
{
    fn drain(self: Pin<&mut Self>) {
        self.get_mut().graceful_shutdown();
    }
}

impl<I, S, B> Drainable for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs a connection to its end, enforcing the idle and header-read timeouts and following
/// the listener's drain signal.
async fn drive<C, E>(
    conn: C,
    peer: SocketAddr,
    limits: &ListenerLimits,
    activity: &Activity,
    mut drain: watch::Receiver<Drain>,
) where
    C: Drainable + Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    if *drain.borrow_and_update() != Drain::Run {
        conn.as_mut().drain();
    }
    // The clocks started before the connection was served: a head whose first bytes arrived
    // during protocol detection has had part of its header-read time already.
    let Some(first) = activity.next_check(limits) else {
        tracing::debug!(%peer, "downstream connection timed out (slow request head)");
        return;
    };
    let check = tokio::time::sleep_until(first);
    tokio::pin!(check);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "downstream connection ended with an error");
                }
                return;
            }
            _ = &mut check => match activity.next_check(limits) {
                Some(at) => check.as_mut().reset(at),
                None => {
                    tracing::debug!(%peer, "downstream connection timed out (idle or slow request head)");
                    return;
                }
            },
            changed = drain.changed() => {
                let state = if changed.is_ok() { *drain.borrow() } else { Drain::Force };
                match state {
                    Drain::Run => {}
                    Drain::Graceful => conn.as_mut().drain(),
                    Drain::Force => return,
                }
            }
        }
    }
}
