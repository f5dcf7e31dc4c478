//! meshproxy-upstream through its `Connector` seam, without sockets: endpoints connect through
//! [`DuplexConnector`], which hands the far half of each new in-memory duplex to a tiny HTTP/1.1
//! responder task (or an h2 server) and keeps a handle on it, so a test can count the
//! connections opened, close one or make it speak unasked, and make connects fail or hang.
//!
//! Covered: HTTP/1.1 connection reuse through `Endpoint::checkout` → `H1Conn::send` → the body
//! read to its end (the endpoint as the `Recycle` hook); idle connections the upstream closed or
//! spoke on being discarded at checkout; a response followed by unasked bytes not going back to
//! the pool; the in-flight limit and its bounded pending queue; the connect timeout (paused
//! time) and refused connects; `Registry::retain` retiring an endpoint (idle connections closed,
//! one finishing later not pooled); `Counted`'s open count across dropped connections, dropped
//! bodies and dropped endpoints; HTTP/2 checkouts sharing a connection that is counted open until
//! its driver ends. One test, ignored, shows a known bug: a queued `acquire` that is dropped
//! keeps its place in the pending queue.
//!
//! Everything runs on the test's current-thread runtime, where `worker::current()` is 0: one
//! worker, one set of pools.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::Response;
use meshproxy_http::body::RequestBody;
use meshproxy_http::h1::{H1Body, Io};
use meshproxy_upstream::endpoint::Conn;
use meshproxy_upstream::pool::PoolSettings;
use meshproxy_upstream::{
    Alpn, Checkout, Connector, Endpoint, EndpointSettings, Registry, Target, UpstreamError,
};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Room in each direction of a duplex: more than any exchange here writes at once.
const PIPE: usize = 64 * 1024;
/// How long a test waits for something a spawned task does before failing instead of hanging.
const PATIENCE: Duration = Duration::from_secs(5);
const ADDRESS: &str = "10.0.0.1:80";

// ---------------------------------------------------------------------------------------------
// The connection: the client half of a duplex.

/// The client half of an in-memory duplex, as a connection the HTTP/1.1 client can pool.
///
/// `Io::is_closed_idle` takes `&self` and reading needs `&mut`, hence the lock; reads and writes
/// go through `Mutex::get_mut` (they have `&mut self`) and never take it.
struct DuplexIo {
    state: Mutex<DuplexState>,
}

struct DuplexState {
    stream: DuplexStream,
    /// Set once the idle check has seen EOF, an error, or unasked bytes (which it consumed):
    /// the connection stays unusable, so every later check must say so too.
    closed: bool,
}

impl DuplexIo {
    fn new(stream: DuplexStream) -> Self {
        DuplexIo { state: Mutex::new(DuplexState { stream, closed: false }) }
    }

    fn stream(self: Pin<&mut Self>) -> Pin<&mut DuplexStream> {
        Pin::new(&mut self.get_mut().state.get_mut().stream)
    }
}

impl AsyncRead for DuplexIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for DuplexIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

impl Io for DuplexIo {
    /// One read of at most one byte, polled once with a no-op waker. A duplex read is ready
    /// exactly when the far end has written bytes (unasked, since the connection is idle) or has
    /// been dropped (EOF, `Ok` with nothing read); otherwise it is pending. That is the truth of
    /// the pipe at this instant, with no guess.
    ///
    /// Sound because only idle connections are checked (the pool's checkin, checkout and reap):
    /// no task is waiting on this read, so the no-op waker the pending poll leaves in the pipe
    /// replaces nobody's, and the next exchange polls with its own waker before it waits. A byte
    /// the check consumes belongs to a connection that is then discarded (`closed` stays set).
    /// The poll runs unconstrained: tokio's cooperative budget, if the calling task had spent
    /// it, would make the read pending and the check report a closed connection as open.
    fn is_closed_idle(&self) -> bool {
        let mut state = self.state.lock();
        if state.closed {
            return true;
        }
        let DuplexState { stream, closed } = &mut *state;
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let read = tokio::task::coop::unconstrained(std::future::poll_fn(|cx| {
            Pin::new(&mut *stream).poll_read(cx, &mut buf)
        }));
        *closed = pin!(read).poll(&mut Context::from_waker(Waker::noop())).is_ready();
        *closed
    }
}

// ---------------------------------------------------------------------------------------------
// The connector and the upstream behind it.

/// What a connect does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Succeeds at once; an HTTP/1.1 responder serves the far half.
    Http1,
    /// Succeeds at once; an h2 (prior knowledge) server serves the far half.
    Http2,
    /// Fails with `ConnectionRefused`.
    Refuse,
    /// Never completes.
    Hang,
    /// Succeeds after this long, served by the HTTP/1.1 responder.
    Delay(Duration),
}

/// A connector over in-memory duplexes. Clones share their state: the endpoint holds one, the
/// test another.
#[derive(Clone)]
struct DuplexConnector {
    shared: Arc<Shared>,
}

struct Shared {
    behaviour: Mutex<Behaviour>,
    /// Connects begun, whatever became of them.
    attempts: AtomicUsize,
    /// Responses the HTTP/1.1 responders have written, over all connections.
    served: Arc<AtomicUsize>,
    /// The upstream side of each connection opened, in the order they were opened.
    upstreams: Mutex<Vec<Upstream>>,
}

/// A test's handle on the task serving the far half of one connection.
struct Upstream {
    /// None once a test has awaited the task.
    task: Option<JoinHandle<()>>,
    /// Bytes for the HTTP/1.1 responder to write unasked, acknowledged once written.
    say: mpsc::UnboundedSender<(Bytes, oneshot::Sender<()>)>,
}

/// Clones are one connector (they share their state), as the registry's key needs.
impl PartialEq for DuplexConnector {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for DuplexConnector {}

impl std::hash::Hash for DuplexConnector {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.shared).hash(state);
    }
}

impl DuplexConnector {
    fn new(behaviour: Behaviour) -> Self {
        DuplexConnector {
            shared: Arc::new(Shared {
                behaviour: Mutex::new(behaviour),
                attempts: AtomicUsize::new(0),
                served: Arc::new(AtomicUsize::new(0)),
                upstreams: Mutex::new(Vec::new()),
            }),
        }
    }

    fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock() = behaviour;
    }

    /// Connections opened (connects that succeeded).
    fn opened(&self) -> usize {
        self.shared.upstreams.lock().len()
    }

    fn attempts(&self) -> usize {
        self.shared.attempts.load(Ordering::Relaxed)
    }

    fn served(&self) -> usize {
        self.shared.served.load(Ordering::Relaxed)
    }

    fn take_task(&self, index: usize) -> JoinHandle<()> {
        self.shared.upstreams.lock()[index].task.take().expect("upstream task already awaited")
    }

    /// Closes connection `index` from the upstream's side: its task is cancelled and, once the
    /// join returns, its future (and with it the far half of the duplex) has been dropped.
    async fn close_upstream(&self, index: usize) {
        let task = self.take_task(index);
        task.abort();
        let _ = task.await;
    }

    /// Waits for the upstream of connection `index` to end, which it does when the proxy's side
    /// of the connection is dropped (it reads EOF). Panics if that takes longer than `PATIENCE`.
    async fn upstream_ended(&self, index: usize) {
        let task = self.take_task(index);
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the upstream did not see the connection close")
            .expect("upstream task failed");
    }

    /// Has the HTTP/1.1 responder of connection `index` write `bytes` now, unasked.
    async fn say(&self, index: usize, bytes: &'static [u8]) {
        let (done, written) = oneshot::channel();
        let say = self.shared.upstreams.lock()[index].say.clone();
        say.send((Bytes::from_static(bytes), done)).expect("upstream gone");
        written.await.expect("upstream did not write");
    }
}

impl Connector for DuplexConnector {
    type Io = DuplexIo;

    async fn connect(&self, _target: &Target, _alpn: Alpn) -> io::Result<DuplexIo> {
        self.shared.attempts.fetch_add(1, Ordering::Relaxed);
        let behaviour = *self.shared.behaviour.lock();
        match behaviour {
            Behaviour::Refuse => return Err(io::ErrorKind::ConnectionRefused.into()),
            Behaviour::Hang => std::future::pending::<()>().await,
            Behaviour::Delay(d) => tokio::time::sleep(d).await,
            Behaviour::Http1 | Behaviour::Http2 => {}
        }
        let (near, far) = tokio::io::duplex(PIPE);
        let (say, heard) = mpsc::unbounded_channel();
        let task = if behaviour == Behaviour::Http2 {
            tokio::spawn(serve_h2(far))
        } else {
            tokio::spawn(serve_h1(far, heard, self.shared.served.clone()))
        };
        self.shared.upstreams.lock().push(Upstream { task: Some(task), say });
        Ok(DuplexIo::new(near))
    }
}

/// A full response: `hello`, framed by its length.
const HELLO: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
/// The head and the first half of a 10-byte body; the rest never comes.
const PARTIAL: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";
/// What a server might send on an idle connection it is about to close.
const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// The HTTP/1.1 upstream: answers each request head (requests here have no body) by its path —
/// `/partial` with `PARTIAL`, `/extra` with `HELLO` followed by `TIMEOUT_408`, anything else
/// with `HELLO`, and `/close` then closes the connection without saying so in the response — and
/// writes whatever the test says unasked. Ends at EOF.
async fn serve_h1(
    mut io: DuplexStream,
    mut heard: mpsc::UnboundedReceiver<(Bytes, oneshot::Sender<()>)>,
    served: Arc<AtomicUsize>,
) {
    let mut buf = BytesMut::new();
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf.split_to(end + 4);
            let path = head[..].split(|&b| b == b' ').nth(1);
            let reply: &[&[u8]] = match path {
                Some(b"/partial") => &[PARTIAL],
                Some(b"/extra") => &[HELLO, TIMEOUT_408],
                _ => &[HELLO],
            };
            if io.write_all(&reply.concat()).await.is_err() {
                return;
            }
            served.fetch_add(1, Ordering::Relaxed);
            if path == Some(b"/close") {
                return;
            }
        }
        tokio::select! {
            read = io.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            Some((bytes, done)) = heard.recv() => {
                if io.write_all(&bytes).await.is_err() {
                    return;
                }
                let _ = done.send(());
            }
        }
    }
}

/// The HTTP/2 upstream: answers every request with an empty 200 until the connection ends.
async fn serve_h2(io: DuplexStream) {
    let Ok(mut conn) = h2::server::handshake(io).await else { return };
    while let Some(Ok((_, mut respond))) = conn.accept().await {
        let _ = respond.send_response(Response::new(()), true);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn settings() -> EndpointSettings {
    EndpointSettings {
        pool: PoolSettings { max_idle: 8, idle_timeout: Duration::from_secs(4) },
        connect_timeout: Duration::from_secs(1),
        max_inflight: 100,
        max_pending: 100,
        max_streams: 100,
        connections: None,
    }
}

fn endpoint(s: EndpointSettings, behaviour: Behaviour) -> (Arc<Endpoint<DuplexConnector>>, DuplexConnector) {
    let connector = DuplexConnector::new(behaviour);
    (Arc::new(Endpoint::new(ADDRESS, s, 1, connector.clone())), connector)
}

fn get(path: &str) -> Parts {
    http::Request::get(path).header("host", "upstream").body(()).expect("request").into_parts().0
}

type Body = H1Body<Conn<DuplexConnector>>;

/// Sends `GET path` on `conn`, with the endpoint as the connection's way back to the pool.
async fn send(
    ep: &Arc<Endpoint<DuplexConnector>>,
    conn: Checkout<DuplexConnector>,
    path: &str,
) -> Response<Body> {
    match conn.conn.send(&get(path), RequestBody::Empty, ep.clone()).await {
        Ok(resp) => resp,
        Err(failed) => panic!("exchange failed: {}", failed.error),
    }
}

/// Checks a connection out (pooled or new) and sends `GET path` on it; with whether it was
/// pooled.
async fn request(ep: &Arc<Endpoint<DuplexConnector>>, path: &str) -> (Response<Body>, bool) {
    let conn = ep.checkout().await.expect("checkout");
    let pooled = conn.idle.is_some();
    (send(ep, conn, path).await, pooled)
}

async fn next_frame(body: &mut Body) -> Option<Bytes> {
    let frame = std::future::poll_fn(|cx| body.poll_frame(cx)).await?;
    Some(frame.expect("body frame").into_data().expect("a data frame"))
}

/// Reads a body to its end.
async fn read_to_end(body: &mut Body) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(data) = next_frame(body).await {
        out.extend_from_slice(&data);
    }
    out
}

/// `open`, `opened` and `idle` from the endpoint's sample.
fn counts(ep: &Endpoint<DuplexConnector>) -> (u64, u64, usize) {
    let s = ep.sample();
    (s.open, s.opened, s.idle)
}

/// Polls `f` once, with a waker that does nothing (the test polls again when it wants to know).
fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 pooling.

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    assert_eq!(meshproxy_upstream::worker::current(), 0);
    let (ep, connector) = endpoint(settings(), Behaviour::Http1);
    for i in 0..3 {
        let (mut resp, pooled) = request(&ep, "/").await;
        assert_eq!(pooled, i > 0, "request {i}: only the first opens a connection");
        assert_eq!(read_to_end(resp.body_mut()).await, b"hello");
        assert!(resp.body().is_end_stream());
        assert_eq!(counts(&ep), (1, 1, 1), "request {i}: (open, opened, idle) after the body ended");
    }
    assert_eq!(connector.opened(), 1);
    assert_eq!(connector.served(), 3);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_discarded_at_checkout() {
    let (ep, connector) = endpoint(settings(), Behaviour::Http1);
    let (mut resp, _) = request(&ep, "/").await;
    read_to_end(resp.body_mut()).await;
    assert_eq!(counts(&ep), (1, 1, 1));

    connector.close_upstream(0).await;
    // Still pooled, and counted open, until something looks at it.
    assert_eq!(counts(&ep), (1, 1, 1));
    let (mut resp, pooled) = request(&ep, "/").await;
    assert!(!pooled, "the closed connection was handed out");
    // Checkout dropped the dead connection (open back down) and opened a new one.
    assert_eq!(counts(&ep), (1, 2, 0));
    assert_eq!(read_to_end(resp.body_mut()).await, b"hello");
    assert_eq!(counts(&ep), (1, 2, 1));
    assert_eq!(connector.opened(), 2);
}

#[tokio::test]
async fn a_connection_the_upstream_spoke_on_while_idle_is_discarded_at_checkout() {
    let (ep, connector) = endpoint(settings(), Behaviour::Http1);
    let (mut resp, _) = request(&ep, "/").await;
    read_to_end(resp.body_mut()).await;
    // A 408 on an idle connection, which stays open: unasked bytes, not EOF.
    connector.say(0, TIMEOUT_408).await;
    let (mut resp, pooled) = request(&ep, "/").await;
    assert!(!pooled, "the connection the upstream spoke on was handed out");
    assert_eq!(read_to_end(resp.body_mut()).await, b"hello");
    assert_eq!(counts(&ep), (1, 2, 1));
    // Dropping it closed the proxy's side: its upstream sees EOF.
    connector.upstream_ended(0).await;
}

#[tokio::test]
async fn a_response_followed_by_unasked_bytes_does_not_go_back_to_the_pool() {
    let (ep, connector) = endpoint(settings(), Behaviour::Http1);
    let (mut resp, _) = request(&ep, "/extra").await;
    assert_eq!(read_to_end(resp.body_mut()).await, b"hello");
    assert_eq!(counts(&ep), (0, 1, 0), "(open, opened, idle): closed instead of pooled");
    drop(resp);
    connector.upstream_ended(0).await;
}

#[tokio::test]
async fn a_connection_the_upstream_closed_right_after_its_response_is_not_pooled() {
    let (ep, connector) = endpoint(settings(), Behaviour::Http1);
    let (mut resp, _) = request(&ep, "/close").await;
    // The EOF is not read with the response: the check as the connection goes back finds it.
    assert_eq!(read_to_end(resp.body_mut()).await, b"hello");
    assert_eq!(counts(&ep), (0, 1, 0), "(open, opened, idle): closed instead of pooled");
    connector.upstream_ended(0).await;
}

// ---------------------------------------------------------------------------------------------
// Limits and connecting.

#[tokio::test]
async fn the_inflight_limit_queues_up_to_max_pending_and_refuses_the_rest() {
    let s = EndpointSettings { max_inflight: 1, max_pending: 1, ..settings() };
    let (ep, _) = endpoint(s, Behaviour::Http1);
    let first = ep.acquire().await.expect("a free slot");
    assert_eq!(ep.sample().inflight, 1);

    let mut second = pin!(ep.acquire());
    assert!(poll_once(second.as_mut()).is_pending(), "the second request waits in the queue");
    // Polled, not awaited: a third request that were queued instead would hang the test.
    let third = poll_once(pin!(ep.acquire()));
    assert!(matches!(third, Poll::Ready(Err(UpstreamError::Overloaded))), "the queue is full");

    drop(first);
    let second = match poll_once(second.as_mut()) {
        Poll::Ready(r) => r.expect("the queued request gets the released slot"),
        Poll::Pending => panic!("the queued request still waits after the slot was released"),
    };
    assert_eq!(ep.sample().inflight, 1);
    // The queue is free again: another request waits rather than being refused.
    let mut third = pin!(ep.acquire());
    assert!(poll_once(third.as_mut()).is_pending());
    drop(second);
    assert!(matches!(poll_once(third.as_mut()), Poll::Ready(Ok(_))));
}

/// `Endpoint::acquire` counts a waiter into `pending` before it awaits its permit and out after,
/// so a waiter dropped while queued (the client went away, the response-header timeout fired)
/// never gives its place back: after `max_pending` of them the endpoint refuses every request that
/// would have to wait.
#[tokio::test]
async fn a_waiter_dropped_while_queued_gives_its_place_back() {
    let s = EndpointSettings { max_inflight: 1, max_pending: 1, ..settings() };
    let (ep, _) = endpoint(s, Behaviour::Http1);
    let _held = ep.acquire().await.expect("a free slot");
    {
        let mut cancelled = pin!(ep.acquire());
        assert!(poll_once(cancelled.as_mut()).is_pending());
    }
    let mut next = pin!(ep.acquire());
    assert!(poll_once(next.as_mut()).is_pending(), "the queue's only place was not given back");
}

#[tokio::test(start_paused = true)]
async fn a_connect_that_never_completes_fails_after_the_connect_timeout() {
    let (ep, connector) = endpoint(settings(), Behaviour::Hang);
    let started = Instant::now();
    // Bounded by a longer timer of the test's own, so a connect timeout that never fires fails
    // the test instead of hanging it.
    let checkout = tokio::time::timeout(PATIENCE, ep.checkout()).await.expect("the connect never timed out");
    assert_eq!(checkout.err(), Some(UpstreamError::Connect));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_millis(1_010),
        "failed after {waited:?}, not the 1 s connect timeout"
    );
    assert_eq!(counts(&ep), (0, 0, 0));
    assert_eq!((connector.attempts(), connector.opened()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_connect_just_within_the_connect_timeout_succeeds() {
    let (ep, connector) = endpoint(settings(), Behaviour::Delay(Duration::from_millis(990)));
    let (mut resp, _) = request(&ep, "/").await;
    assert_eq!(read_to_end(resp.body_mut()).await, b"hello");
    assert_eq!(counts(&ep), (1, 1, 1));
    assert_eq!(connector.opened(), 1);
}

#[tokio::test]
async fn a_refused_connect_fails_and_the_next_connect_succeeds() {
    let (ep, connector) = endpoint(settings(), Behaviour::Refuse);
    assert_eq!(ep.checkout().await.err(), Some(UpstreamError::Connect));
    assert_eq!(counts(&ep), (0, 0, 0));
    connector.set(Behaviour::Http1);
    let (mut resp, pooled) = request(&ep, "/").await;
    assert!(!pooled);
    read_to_end(resp.body_mut()).await;
    assert_eq!(counts(&ep), (1, 1, 1));
    assert_eq!((connector.attempts(), connector.opened()), (2, 1));
}

// ---------------------------------------------------------------------------------------------
// Retiring endpoints and counting connections.

#[tokio::test]
async fn a_retired_endpoint_closes_its_idle_connections_and_does_not_pool_one_returned_later() {
    let connector = DuplexConnector::new(Behaviour::Http1);
    let registry = Registry::new(1);
    let ep = registry.lookup_or_new(ADDRESS, &connector, settings());
    registry.adopt([&ep]);

    // Two connections: `a` goes idle, `b` carries a response still being read.
    let a = ep.checkout().await.expect("checkout");
    let b = ep.checkout().await.expect("checkout");
    let mut resp_a = send(&ep, a, "/").await;
    read_to_end(resp_a.body_mut()).await;
    let mut resp_b = send(&ep, b, "/").await;
    assert_eq!(counts(&ep), (2, 2, 1));

    registry.retain(|_, _| false);
    assert!(registry.samples().is_empty(), "the endpoint is no longer registered");
    assert_eq!(counts(&ep), (1, 2, 0), "the idle connection closed at once");
    connector.upstream_ended(0).await;

    assert_eq!(read_to_end(resp_b.body_mut()).await, b"hello");
    assert_eq!(counts(&ep), (0, 2, 0), "the connection that finished later closed, not pooled");
    connector.upstream_ended(1).await;
}

#[tokio::test]
async fn dropping_a_connection_counts_it_closed_exactly_once() {
    let (ep, connector) = endpoint(settings(), Behaviour::Http1);
    let a = ep.checkout().await.expect("checkout");
    let b = ep.checkout().await.expect("checkout");
    let raw = ep.connect_opaque().await.expect("opaque connection");
    assert_eq!(counts(&ep), (3, 3, 0));
    drop(a);
    assert_eq!(counts(&ep), (2, 3, 0));
    drop(raw);
    assert_eq!(counts(&ep), (1, 3, 0));
    drop(b);
    assert_eq!(counts(&ep), (0, 3, 0));
    assert_eq!(connector.opened(), 3);
    for i in 0..3 {
        connector.upstream_ended(i).await;
    }
}

#[tokio::test]
async fn dropping_a_body_mid_response_closes_its_connection_once() {
    let (ep, connector) = endpoint(settings(), Behaviour::Http1);
    let other = ep.checkout().await.expect("checkout");
    let (mut resp, _) = request(&ep, "/partial").await;
    assert_eq!(next_frame(resp.body_mut()).await.as_deref(), Some(&b"hello"[..]));
    assert!(!resp.body().is_end_stream());
    assert_eq!(counts(&ep), (2, 2, 0));
    drop(resp);
    assert_eq!(counts(&ep), (1, 2, 0), "only the body's connection closed, and not pooled");
    connector.upstream_ended(1).await;
    drop(other);
    assert_eq!(counts(&ep), (0, 2, 0));
}

#[tokio::test]
async fn a_connection_outliving_its_removed_endpoint_drops_cleanly() {
    let connector = DuplexConnector::new(Behaviour::Http1);
    let registry = Registry::new(1);
    let ep = registry.lookup_or_new(ADDRESS, &connector, settings());
    registry.adopt([&ep]);
    let conn = ep.checkout().await.expect("checkout");
    assert_eq!(ep.sample().open, 1);

    registry.retain(|_, _| false);
    let gone: Weak<Endpoint<DuplexConnector>> = Arc::downgrade(&ep);
    drop(ep);
    assert!(gone.upgrade().is_none(), "the connection kept its removed endpoint alive");
    // Its `Counted` finds no endpoint to count it closed on.
    drop(conn);
    connector.upstream_ended(0).await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2.

#[tokio::test]
async fn h2_checkouts_share_a_connection_counted_open_until_its_driver_ends() {
    let (ep, connector) = endpoint(settings(), Behaviour::Http2);
    // Each checkout holds its stream slot (its `.1`) until dropped.
    let first = ep.checkout_h2().await.expect("h2 checkout");
    let second = ep.checkout_h2().await.expect("h2 checkout");
    assert!(first.0.same_connection(&second.0), "the second stream opened another connection");
    assert_eq!((ep.sample().open, ep.sample().opened), (1, 1));
    assert_eq!(connector.opened(), 1);

    // A request on it is answered by the upstream.
    let mut sender = first.0.sender.clone().ready().await.expect("h2 connection ready");
    let request = http::Request::get("http://upstream/").body(()).expect("request");
    let (response, _) = sender.send_request(request, true).expect("send");
    assert_eq!(response.await.expect("h2 response").status(), 200);
    let handle = first.0.clone();
    drop((first, second, sender));

    // The upstream closes it: the driver ends, the pool sees it closed, and it is counted closed.
    connector.close_upstream(0).await;
    tokio::time::timeout(PATIENCE, async {
        while !handle.is_closed() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the driver did not notice the upstream closed");
    assert_eq!((ep.sample().open, ep.sample().opened), (0, 1));
}
