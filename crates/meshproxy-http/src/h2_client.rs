//! The HTTP/2 client side of one upstream connection, on the `h2` crate directly: hyper's
//! HTTP/2 client spawns a task per request (the response future) and hands each response over a
//! channel. Here the request's own task awaits the response, and a body is piped by a task only
//! when there is one. A connection's driver ([`H2Driver`]) is a future the caller spawns; the
//! [`H2Handle`] is what a pool keeps.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::h2_ping::{H2ConnError, KeepAlive};

pub type H2Sender = h2::client::SendRequest<Bytes>;

/// The settings hyper's HTTP/2 client uses (hyper 1.x defaults).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
const MAX_SEND_BUF: usize = 1024 * 1024;
/// A PING every 20 s; no PONG by the next one closes the connection (a peer that vanished
/// without a FIN would otherwise hold its streams until the OS gives up on the socket).
pub const KEEPALIVE: Duration = Duration::from_secs(20);

/// What an HTTP/2 connection's driver task publishes for the pool.
struct H2State {
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS as last seen.
    peer_max: AtomicUsize,
    /// Set when the connection has ended.
    closed: AtomicBool,
}

/// An HTTP/2 connection's sender and what its driver publishes. When the last sender is dropped
/// (the pool let the connection go), h2 wakes the driver, and the connection closes once its
/// streams have ended.
#[derive(Clone)]
pub struct H2Handle {
    pub sender: H2Sender,
    state: Arc<H2State>,
}

impl H2Handle {
    pub fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::Acquire)
    }

    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS as last seen.
    pub fn peer_max_streams(&self) -> usize {
        self.state.peer_max.load(Ordering::Relaxed)
    }

    pub fn same_connection(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }
}

pin_project_lite::pin_project! {
    /// Drives one HTTP/2 client connection: frames both ways, keep-alive pings, and the
    /// published state.
    pub struct H2Driver<IO> {
        #[pin]
        conn: h2::client::Connection<IO, Bytes>,
        state: Arc<H2State>,
        keepalive: Option<KeepAlive>,
    }

    // The connection is closed for the pool once its driver is gone, however it ended (done,
    // failed, or dropped with its runtime).
    impl<IO> PinnedDrop for H2Driver<IO> {
        fn drop(this: Pin<&mut Self>) {
            this.state.closed.store(true, Ordering::Release);
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> std::future::Future for H2Driver<IO> {
    type Output = Result<(), H2ConnError>;
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(Poll::Ready(e)) = this.keepalive.as_mut().map(|k| k.poll(cx)) {
            return Poll::Ready(Err(e));
        }
        let r = this.conn.as_mut().poll(cx);
        this.state.peer_max.store(this.conn.max_concurrent_send_streams(), Ordering::Relaxed);
        r.map_err(H2ConnError::from)
    }
}

/// The h2c (prior knowledge) handshake on `io`, with a PING every `keepalive`. Spawn the
/// driver; the handle sends requests.
pub async fn handshake<IO>(io: IO, keepalive: Duration) -> Result<(H2Handle, H2Driver<IO>), h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (sender, mut conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUF)
        // Until the peer's SETTINGS arrive, the RFC's recommended minimum.
        .initial_max_send_streams(100)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let state = Arc::new(H2State { peer_max: AtomicUsize::new(100), closed: AtomicBool::new(false) });
    let keepalive = conn.ping_pong().map(|p| KeepAlive::new(p, keepalive, keepalive));
    Ok((H2Handle { sender, state: state.clone() }, H2Driver { conn, state, keepalive }))
}
