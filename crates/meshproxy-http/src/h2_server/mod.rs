//! The downstream HTTP/2 server, on the `h2` crate directly (as the upstream side already is).
//!
//! hyper's HTTP/2 server around `h2` did what this module does, plus what a proxy pays for and
//! does not use: a boxed service future and a boxed stream future per request, its own
//! connection-header stripping on every request and response (h2 already refuses
//! connection-specific request headers as malformed, and the proxy strips hop-by-hop response
//! fields itself), and an `Incoming` body wrapper (docs/performance.md has the measurement).
//!
//! A connection's streams run inside the connection's own task on the current-thread runtime
//! (`--workers 1` and the worker pool): a stream that answers is followed, in the same poll, by
//! the connection writing the answer, with no task spawn or switch per request. On a
//! multi-thread runtime (an embedder's) each stream is a task, so one connection's streams can
//! run on several workers at once.

mod stream;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::h2_ping::{H2ConnError, KeepAlive};

/// What a downstream HTTP/2 connection is allowed (the listener's `http2` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    pub connection_window_size: u32,
    pub stream_window_size: u32,
    /// PING interval on idle-looking connections; 0 = off.
    pub keep_alive_interval_ms: u64,
    /// How long to wait for the PING's ACK before closing the connection.
    pub keep_alive_timeout_ms: u64,
}

/// What serves the requests of a connection: called once per request (stream), whatever the
/// protocol it arrived on. The engine's request path implements it; the servers here know
/// nothing of routes or endpoints.
pub trait Handler: Clone + Send + Sync + Unpin + 'static {
    /// The response body; its error decides how a broken-off HTTP/2 response is reset.
    type Body: http_body::Body<Data = Bytes, Error = crate::upstream_body::BodyError> + Send + Unpin + 'static;

    fn call(
        &self,
        req: http::Request<crate::body::RequestBody>,
    ) -> impl Future<Output = http::Response<Self::Body>> + Send + 'static;
}

/// The listener's HTTP/2 settings, and limits against reset floods (CVE-2023-44487, h2's
/// defaults, set here so they stay whatever h2's become): a client that has more than 20 streams
/// reset before they are accepted, or makes the server reset 1,024 for its errors, gets a GOAWAY
/// (ENHANCE_YOUR_CALM).
fn builder(h2: &Settings) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_header_list_size(h2.max_header_list_size)
        .initial_connection_window_size(h2.connection_window_size)
        .initial_window_size(h2.stream_window_size)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(Some(1024))
        // RFC 8441: clients may open WebSockets with extended CONNECT.
        .enable_connect_protocol();
    builder
}

type StreamTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One client connection, served until it ends.
pub struct Serve<IO, S> {
    conn: h2::server::Connection<IO, Bytes>,
    service: S,
    /// Streams running inside this task (current-thread runtime).
    streams: FuturesUnordered<StreamTask>,
    /// Multi-thread runtime: a task per stream instead.
    spawn: bool,
    keepalive: Option<KeepAlive>,
}

impl<IO, S> Serve<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Handler,
{
    /// Sends the server's SETTINGS and reads the client's preface (already buffered by protocol
    /// detection, so this does not wait on the client).
    pub async fn handshake(io: IO, settings: &Settings, service: S) -> Result<Self, h2::Error> {
        let mut conn = builder(settings).handshake(io).await?;
        let keepalive = match (settings.keep_alive_interval_ms, conn.ping_pong()) {
            (0, _) | (_, None) => None,
            (interval, Some(ping)) => Some(KeepAlive::new(
                ping,
                Duration::from_millis(interval),
                Duration::from_millis(settings.keep_alive_timeout_ms.max(1)),
            )),
        };
        let spawn = tokio::runtime::Handle::current().runtime_flavor()
            != tokio::runtime::RuntimeFlavor::CurrentThread;
        Ok(Serve { conn, service, streams: FuturesUnordered::new(), spawn, keepalive })
    }

    /// GOAWAY: streams already open finish, no new ones are accepted, then the connection ends.
    pub fn graceful_shutdown(&mut self) {
        self.conn.graceful_shutdown();
    }
}

impl<IO, S> Future for Serve<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Handler,
{
    type Output = Result<(), H2ConnError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(Poll::Ready(e)) = this.keepalive.as_mut().map(|k| k.poll(cx)) {
            return Poll::Ready(Err(e));
        }
        // Connection (reads frames, accepts streams, writes what streams queued) → streams
        // (route, forward, answer) → connection again, so an answer is written in the poll that
        // produced it. Bounded: the connection's limits bound what one poll can accept.
        for _ in 0..4 {
            let mut accepted = false;
            loop {
                match this.conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        accepted = true;
                        let service = this.service.clone();
                        if this.spawn {
                            tokio::spawn(stream::serve(service, req, respond));
                        } else {
                            let task = crate::box_built_in_place(|| stream::serve(service, req, respond));
                            this.streams.push(task);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                    // Closed: streams still running are dropped, which cancels their upstream
                    // requests as a client's RST_STREAM would.
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            if this.streams.is_empty() {
                return Poll::Pending;
            }
            let mut finished = false;
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {
                finished = true;
            }
            if !accepted && !finished {
                return Poll::Pending;
            }
        }
        // More work remains: let other connections run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
