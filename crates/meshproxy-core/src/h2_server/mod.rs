//! The downstream HTTP/2 server, on the `h2` crate directly (as the upstream side already is).
//!
//! hyper's HTTP/2 server around `h2` did what this module does, plus what a proxy pays for and
//! does not use: a boxed service future and a boxed stream future per request, its own
//! connection-header stripping on every request and response (h2 already refuses
//! connection-specific request headers as malformed, and the proxy strips hop-by-hop response
//! fields itself), and an `Incoming` body wrapper. Serving on `h2` directly cut ~1.6k of the
//! ~61k instructions an h2c → h2 request cost (callgrind, `npm run bench:ci`).
//!
//! A connection's streams run inside the connection's own task on the current-thread runtime
//! (`--workers 1` and the worker pool): a stream that answers is followed, in the same poll, by
//! the connection writing the answer, with no task spawn or switch per request. On a
//! multi-thread runtime (an embedder's) each stream is a task, so one connection's streams can
//! run on several workers at once.

mod stream;
mod tunnel;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Http2Config;
use crate::h2_ping::{H2ConnError, KeepAlive};
use crate::proxy::ProxyService;

pub use tunnel::{H2Io, PendingTunnel};

/// The listener's HTTP/2 settings, and limits against reset floods (CVE-2023-44487, h2's
/// defaults, set here so they stay whatever h2's become): a client that has more than 20 streams
/// reset before they are accepted, or makes the server reset 1,024 for its errors, gets a GOAWAY
/// (ENHANCE_YOUR_CALM).
fn builder(h2: &Http2Config) -> h2::server::Builder {
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

/// One client connection, served until it ends; a [`crate::listener`] connection future.
pub struct Serve<IO> {
    conn: h2::server::Connection<IO, Bytes>,
    service: ProxyService,
    /// Streams running inside this task (current-thread runtime).
    streams: FuturesUnordered<StreamTask>,
    /// Multi-thread runtime: a task per stream instead.
    spawn: bool,
    keepalive: Option<KeepAlive>,
}

impl<IO> Serve<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Sends the server's SETTINGS and reads the client's preface (already buffered by protocol
    /// detection, so this does not wait on the client).
    pub async fn handshake(io: IO, settings: &Http2Config, service: ProxyService) -> Result<Self, h2::Error> {
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

impl<IO> Future for Serve<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
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
                            let task =
                                crate::proxy::box_built_in_place(|| stream::serve(service, req, respond));
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    use crate::config::testing::listener;
    use crate::config::Config;
    use crate::server::MeshProxy;

    async fn proxy(keep_alive_interval_ms: u64) -> (MeshProxy, String) {
        let mut l = listener("127.0.0.1:0", vec![]);
        l.http2.keep_alive_interval_ms = keep_alive_interval_ms;
        l.http2.keep_alive_timeout_ms = 100;
        let proxy = MeshProxy::new(Config { listeners: vec![l], services: vec![], admin: None }).unwrap();
        let addr = proxy.start().await.unwrap().listeners[0].local_address.clone();
        (proxy, addr)
    }

    /// A raw client that sends the preface and an empty SETTINGS, then nothing (no ACKs): a hung
    /// peer. Reads frames until the proxy closes the connection or `wait` passes; returns whether
    /// it closed and whether a PING (not an ACK) arrived.
    async fn silent_client(addr: &str, wait: Duration) -> (bool, bool) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
        let deadline = Instant::now() + wait;
        let (mut buf, mut pinged) = (Vec::new(), false);
        let mut chunk = [0u8; 4096];
        loop {
            let n = match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                Err(_) => return (false, pinged),
                Ok(r) => r.unwrap_or(0),
            };
            if n == 0 {
                return (true, pinged);
            }
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 9 {
                let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                pinged |= buf[3] == 0x6 && buf[4] & 0x1 == 0;
                buf.drain(..9 + len);
            }
        }
    }

    #[tokio::test]
    async fn a_client_that_stops_answering_pings_is_closed_one_that_answers_stays() {
        let (proxy, addr) = proxy(100).await;
        let start = Instant::now();
        let (closed, pinged) = silent_client(&addr, Duration::from_secs(5)).await;
        assert!(closed && pinged, "closed after an unanswered PING (closed {closed}, pinged {pinged})");
        assert!(start.elapsed() >= Duration::from_millis(200), "not before the interval and the timeout");

        // A client whose connection task runs answers the PINGs and keeps its connection.
        let s = TcpStream::connect(&addr).await.unwrap();
        let (client, conn) = h2::client::handshake(s).await.unwrap();
        let conn = tokio::spawn(conn);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!conn.is_finished(), "a client answering PINGs keeps its connection");
        let mut client = client.ready().await.unwrap();
        let (resp, _) =
            client.send_request(http::Request::get("http://h.test/").body(()).unwrap(), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 404, "and it still serves requests (no route here)");
        // A response the proxy makes itself says when and how long, as hyper's HTTP/1.1 ones do.
        assert!(resp.headers().contains_key(http::header::DATE), "Date on a proxy-made HTTP/2 response");
        let length: usize = resp.headers()[http::header::CONTENT_LENGTH].to_str().unwrap().parse().unwrap();
        let mut body = resp.into_body();
        let mut got = 0;
        while let Some(chunk) = body.data().await {
            got += chunk.unwrap().len();
        }
        assert_eq!(got, length);
        proxy.close(Duration::from_millis(100)).await.unwrap();
    }

    /// Closing the proxy drains an HTTP/2 client connection: the stream in flight completes, the
    /// client is told GOAWAY, and the connection ends without waiting out the grace period.
    #[tokio::test]
    async fn graceful_close_finishes_the_stream_in_flight_then_ends_the_connection() {
        // A backend that answers after 300 ms.
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = backend.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = backend.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow").await;
                    let _ = s.read(&mut buf).await;
                });
            }
        });
        let proxy = MeshProxy::new(crate::config::testing::all_to(&backend_addr)).unwrap();
        let addr = proxy.start().await.unwrap().listeners[0].local_address.clone();
        let (client, conn) = h2::client::handshake(TcpStream::connect(&addr).await.unwrap()).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let (resp, _) =
            client.send_request(http::Request::get("http://h.test/").body(()).unwrap(), true).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = Instant::now();
        let close = tokio::spawn(async move { proxy.close(Duration::from_secs(10)).await });
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200, "the stream in flight completes");
        let mut body = resp.into_body();
        assert_eq!(body.data().await.unwrap().unwrap(), &b"slow"[..]);
        tokio::time::timeout(Duration::from_secs(3), conn)
            .await
            .expect("the connection ends")
            .unwrap()
            .unwrap();
        close.await.unwrap().unwrap();
        assert!(start.elapsed() < Duration::from_secs(3), "close did not wait out its 10 s grace");
    }

    #[tokio::test]
    async fn keep_alive_zero_sends_no_pings() {
        let (proxy, addr) = proxy(0).await;
        assert_eq!(silent_client(&addr, Duration::from_millis(700)).await, (false, false));
        proxy.close(Duration::from_millis(100)).await.unwrap();
    }
}
