//! Endpoint handles and the registry that owns them.
//!
//! An [`Endpoint`] carries the live state of one upstream address: its connection pool, its
//! in-flight limit and pending queue, and counters the balancer and metrics read. Endpoints live
//! in the [`Registry`], outside the swapped config snapshot, keyed by address (later also by
//! protocol and TLS identity): a reload that keeps an endpoint keeps its warm connections, and an
//! endpoint that disappears is drained (idle connections closed, in-flight requests finish).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::error::ProxyError;
use crate::h1::H1Conn;
use crate::h2_ping::{H2ConnError, KeepAlive};
use crate::metrics::EndpointSample;
use crate::pool::multiplexed::{Multiplexed, MultiplexedSet, StreamSlot};
use crate::pool::{Pool, PoolSettings};

/// The HTTP/2 client side speaks the `h2` crate directly: hyper's HTTP/2 client spawns a task per
/// request (the response future) and hands each response over a channel, ~4 % of the h2c → h2
/// path's instructions plus two task wake-ups per request. Here the request's own task awaits
/// the response, and a body is piped by a task only when there is one (see `forward::send_h2`).
pub type H2Sender = h2::client::SendRequest<Bytes>;

/// Settings hyper's HTTP/2 client used (hyper 1.x defaults), kept when it was replaced.
const H2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const H2_CONN_WINDOW: u32 = 5 * 1024 * 1024;
const H2_MAX_FRAME: u32 = 16 * 1024;
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
const H2_MAX_SEND_BUF: usize = 1024 * 1024;
/// A PING every 20 s; no PONG by the next one closes the connection (a peer that vanished
/// without a FIN would otherwise hold its streams until the OS gives up on the socket).
const H2_KEEPALIVE: Duration = Duration::from_secs(20);

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

impl Multiplexed for H2Handle {
    fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::Acquire)
    }
    fn peer_max_streams(&self) -> usize {
        self.state.peer_max.load(Ordering::Relaxed)
    }
    fn same_connection(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }
}

pin_project_lite::pin_project! {
    /// Drives one HTTP/2 client connection: frames both ways, keep-alive pings, and the
    /// published state.
    struct H2Driver {
        #[pin]
        conn: h2::client::Connection<TcpStream, Bytes>,
        state: Arc<H2State>,
        keepalive: Option<KeepAlive>,
    }

    // The connection is closed for the pool once its driver is gone, however it ended (done,
    // failed, or dropped with its runtime).
    impl PinnedDrop for H2Driver {
        fn drop(this: Pin<&mut Self>) {
            this.state.closed.store(true, Ordering::Release);
        }
    }
}

impl std::future::Future for H2Driver {
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

/// Counts an HTTP/1.1 connection (which has no task of its own) as open until it is dropped.
/// Weak for the reason given in [`Endpoint::track`].
pub struct ConnCount(Weak<Endpoint>);

impl Drop for ConnCount {
    fn drop(&mut self) {
        if let Some(ep) = self.0.upgrade() {
            ep.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Per-endpoint settings, taken from the service that names the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointSettings {
    pub pool: PoolSettings,
    pub connect_timeout: Duration,
    pub max_inflight: u32,
    pub max_pending: u32,
    pub max_streams: u32,
}

pub struct Endpoint {
    pub address: Box<str>,
    /// Parsed once when the address is an IP literal; host names resolve at connect time.
    socket: Option<SocketAddr>,
    /// One set of pools per worker thread (see `crate::workers`): a connection is only ever
    /// used by the worker whose runtime drives it.
    pools: Box<[WorkerPools]>,
    limiter: Arc<Semaphore>,
    max_inflight: AtomicU32,
    pending: AtomicUsize,
    max_pending: AtomicUsize,
    connect_timeout_ms: AtomicU64,
    /// Set when a reload removed the endpoint: connections finishing their last request close
    /// instead of going back to a pool nobody will use.
    retired: AtomicBool,
    pub open: AtomicU64,
    pub opened: AtomicU64,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Requests re-sent after a failure that left them unprocessed (or safe to repeat).
    pub retries: AtomicU64,
    /// [`H2_KEEPALIVE`]; shorter in tests.
    h2_keepalive: Duration,
}

/// One worker's upstream connections to an endpoint.
struct WorkerPools {
    http1: Pool<H1Conn>,
    h2: MultiplexedSet<H2Handle>,
}

/// A connection taken for one request; `reused` tells whether it came from the pool.
pub struct Checkout {
    pub conn: H1Conn,
    /// How long the connection sat in the pool; None for a new connection.
    pub idle: Option<Duration>,
}

impl Endpoint {
    fn new(address: &str, s: EndpointSettings, workers: usize) -> Self {
        Endpoint {
            address: address.into(),
            socket: address.parse().ok(),
            pools: (0..workers.max(1))
                .map(|_| WorkerPools {
                    http1: Pool::new(s.pool),
                    h2: MultiplexedSet::new(s.max_streams as usize),
                })
                .collect(),
            limiter: Arc::new(Semaphore::new(s.max_inflight as usize)),
            max_inflight: AtomicU32::new(s.max_inflight),
            pending: AtomicUsize::new(0),
            max_pending: AtomicUsize::new(s.max_pending as usize),
            connect_timeout_ms: AtomicU64::new(s.connect_timeout.as_millis() as u64),
            retired: AtomicBool::new(false),
            open: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            h2_keepalive: H2_KEEPALIVE,
        }
    }

    /// The calling worker's pools.
    fn local(&self) -> &WorkerPools {
        &self.pools[crate::workers::current() % self.pools.len()]
    }

    fn clear_idle(&self) {
        for p in self.pools.iter() {
            p.http1.clear();
            p.h2.clear();
        }
    }

    /// Applies the settings of a config that has been swapped in. Reloads are serialized by
    /// the proxy, so resizes of the in-flight limit do not race each other.
    pub fn update(&self, s: EndpointSettings) {
        for p in self.pools.iter() {
            p.http1.set_settings(s.pool);
            p.h2.set_max_streams(s.max_streams as usize);
        }
        self.max_pending.store(s.max_pending as usize, Ordering::Relaxed);
        self.connect_timeout_ms.store(s.connect_timeout.as_millis() as u64, Ordering::Relaxed);
        let old = self.max_inflight.swap(s.max_inflight, Ordering::Relaxed);
        if s.max_inflight > old {
            self.limiter.add_permits((s.max_inflight - old) as usize);
        } else if s.max_inflight < old {
            // Permits held by in-flight requests are forgotten as they come back.
            let shrink = (old - s.max_inflight) as usize;
            let forgotten = self.limiter.forget_permits(shrink);
            if forgotten < shrink {
                let limiter = self.limiter.clone();
                tokio::spawn(async move {
                    if let Ok(p) = limiter.acquire_many_owned((shrink - forgotten) as u32).await {
                        p.forget();
                    }
                });
            }
        }
    }

    /// Takes an in-flight slot, waiting in the bounded pending queue if all are taken.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, ProxyError> {
        match self.limiter.clone().try_acquire_owned() {
            Ok(p) => return Ok(p),
            Err(TryAcquireError::Closed) => return Err(ProxyError::Overloaded),
            Err(TryAcquireError::NoPermits) => {}
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending.load(Ordering::Relaxed) {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(ProxyError::Overloaded);
        }
        let permit = self.limiter.clone().acquire_owned().await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        permit.map_err(|_| ProxyError::Overloaded)
    }

    pub fn inflight(&self) -> u64 {
        let max = self.max_inflight.load(Ordering::Relaxed) as u64;
        max.saturating_sub(self.limiter.available_permits() as u64)
    }

    /// A pooled connection if one is usable, else a new one.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, ProxyError> {
        if let Some((conn, idle)) = self.local().http1.checkout() {
            return Ok(Checkout { conn, idle: Some(idle) });
        }
        // Boxed: the connect future is large and rarely needed; inline, it would size every
        // request's future (moved several times per request) to fit it.
        Ok(Checkout { conn: Box::pin(self.connect()).await?, idle: None })
    }

    pub fn checkin(&self, conn: H1Conn) {
        if !self.retired.load(Ordering::Acquire) {
            self.local().http1.checkin(conn);
        }
    }

    /// A stream on an HTTP/2 connection with room, opening a connection if all are full.
    pub async fn checkout_h2(self: &Arc<Self>) -> Result<(H2Handle, StreamSlot), ProxyError> {
        self.checkout_h2_avoiding(None).await
    }

    /// Like [`Endpoint::checkout_h2`], on a connection other than `avoid`: a retry must not land
    /// on the connection that just refused the stream or is going away.
    pub async fn checkout_h2_avoiding(
        self: &Arc<Self>,
        avoid: Option<&H2Handle>,
    ) -> Result<(H2Handle, StreamSlot), ProxyError> {
        if let Some(claimed) = self.local().h2.claim_avoiding(avoid) {
            return Ok(claimed);
        }
        // Boxed for the same reason as in `checkout`.
        Box::pin(self.open_h2_and_claim(avoid)).await
    }

    async fn open_h2_and_claim(
        self: &Arc<Self>,
        avoid: Option<&H2Handle>,
    ) -> Result<(H2Handle, StreamSlot), ProxyError> {
        let set = &self.local().h2;
        let _connecting = set.connecting.lock().await;
        if let Some(claimed) = set.claim_avoiding(avoid) {
            return Ok(claimed);
        }
        let sender = self.connect_h2().await?;
        set.insert(sender);
        set.claim_avoiding(avoid).ok_or(ProxyError::UpstreamConnect)
    }

    /// Opens a new HTTP/2 (h2c prior knowledge) connection.
    pub async fn connect_h2(self: &Arc<Self>) -> Result<H2Handle, ProxyError> {
        let stream = self.tcp_connect().await?;
        let (sender, mut conn) = h2::client::Builder::new()
            .initial_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONN_WINDOW)
            .max_frame_size(H2_MAX_FRAME)
            .max_header_list_size(H2_MAX_HEADER_LIST)
            .max_send_buffer_size(H2_MAX_SEND_BUF)
            // Until the peer's SETTINGS arrive, the RFC's recommended minimum.
            .initial_max_send_streams(100)
            .enable_push(false)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|e| {
                tracing::debug!(endpoint = %self.address, error = %e, "upstream h2 handshake failed");
                self.failed(ProxyError::UpstreamConnect)
            })?;
        let state = Arc::new(H2State { peer_max: AtomicUsize::new(100), closed: AtomicBool::new(false) });
        let keepalive = conn.ping_pong().map(|p| KeepAlive::new(p, self.h2_keepalive, self.h2_keepalive));
        self.track(H2Driver { conn, state: state.clone(), keepalive });
        Ok(H2Handle { sender, state })
    }

    /// A raw TCP connection for opaque forwarding; counted as opened and open. Only
    /// [`crate::tcp::TcpUpstream`] calls it, and undoes `open` when dropped.
    pub(crate) async fn connect_tcp(&self) -> Result<TcpStream, ProxyError> {
        let stream = self.tcp_connect().await?;
        self.count_opened();
        Ok(stream)
    }

    async fn tcp_connect(&self) -> Result<TcpStream, ProxyError> {
        let timeout = Duration::from_millis(self.connect_timeout_ms.load(Ordering::Relaxed));
        let connect = async {
            match self.socket {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect(&*self.address).await,
            }
        };
        let stream = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %self.address, error = %e, "upstream connect failed");
                return Err(self.failed(ProxyError::UpstreamConnect));
            }
            Err(_) => {
                tracing::debug!(endpoint = %self.address, "upstream connect timed out");
                return Err(self.failed(ProxyError::UpstreamConnect));
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Counts a new connection open until its task ends.
    fn track<F, E>(self: &Arc<Self>, conn: F)
    where
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.count_opened();
        // Weak: the endpoint's pool owns the connection's sender, so a strong reference here
        // would keep a removed endpoint (and its idle connection) alive forever.
        let ep: Weak<Endpoint> = Arc::downgrade(self);
        tokio::spawn(async move {
            let result = conn.await;
            if let Some(ep) = ep.upgrade() {
                if let Err(e) = result {
                    tracing::debug!(endpoint = %ep.address, error = %e, "upstream connection ended with an error");
                }
                ep.open.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }

    /// Opens a new HTTP/1.1 upstream connection, bounded by the connect timeout.
    pub async fn connect(self: &Arc<Self>) -> Result<H1Conn, ProxyError> {
        let stream = self.tcp_connect().await?;
        self.count_opened();
        Ok(H1Conn::new(stream, ConnCount(Arc::downgrade(self))))
    }

    /// A new connection: opened, and open until whatever holds it undoes `open`.
    fn count_opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure and passes the error on.
    pub fn failed(&self, e: ProxyError) -> ProxyError {
        self.failures.fetch_add(1, Ordering::Relaxed);
        e
    }

    pub fn sample(&self) -> EndpointSample {
        EndpointSample {
            address: self.address.to_string(),
            open: self.open.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
            idle: self.pools.iter().map(|p| p.http1.idle_len()).sum(),
            inflight: self.inflight(),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// All endpoints, keyed by address, shared by every config version.
pub struct Registry {
    endpoints: Mutex<HashMap<Box<str>, Arc<Endpoint>>>,
    /// Worker threads, each with its own pools in every endpoint.
    workers: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(1)
    }
}

impl Registry {
    pub fn new(workers: usize) -> Self {
        Registry { endpoints: Mutex::default(), workers: workers.max(1) }
    }

    /// The registered endpoint for `address`, or a new one with `settings` that is not
    /// registered until [`Registry::adopt`]: a config being compiled must not change what the
    /// running one shows (`stats`, `/metrics`) until it is swapped in. An existing endpoint keeps
    /// its settings until then too ([`crate::compile::Snapshot::commit`]).
    pub fn lookup_or_new(&self, address: &str, settings: EndpointSettings) -> Arc<Endpoint> {
        if let Some(ep) = self.endpoints.lock().get(address) {
            return ep.clone();
        }
        Arc::new(Endpoint::new(address, settings, self.workers))
    }

    /// Registers the endpoints of a config that has been swapped in (those already registered
    /// are the same objects).
    pub fn adopt<'a>(&self, endpoints: impl IntoIterator<Item = &'a Arc<Endpoint>>) {
        let mut map = self.endpoints.lock();
        for ep in endpoints {
            map.entry(ep.address.clone()).or_insert_with(|| ep.clone());
        }
    }

    /// Drops endpoints no longer in use: their idle connections close now, in-flight requests
    /// keep their handle until they finish.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.endpoints.lock().retain(|addr, ep| {
            let kept = keep(addr);
            if !kept {
                ep.retired.store(true, Ordering::Release);
                ep.clear_idle();
            }
            kept
        });
    }

    pub fn reap_idle(&self) {
        for ep in self.endpoints.lock().values() {
            for p in ep.pools.iter() {
                p.http1.reap();
                p.h2.reap(p.http1.idle_timeout());
            }
        }
    }

    pub fn clear_idle(&self) {
        for ep in self.endpoints.lock().values() {
            ep.clear_idle();
        }
    }

    pub fn samples(&self) -> Vec<EndpointSample> {
        let mut v: Vec<_> = self.endpoints.lock().values().map(|e| e.sample()).collect();
        v.sort_by(|a, b| a.address.cmp(&b.address));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::multiplexed::Multiplexed;

    fn settings() -> EndpointSettings {
        EndpointSettings {
            pool: PoolSettings { max_idle: 8, idle_timeout: Duration::from_secs(4) },
            connect_timeout: Duration::from_secs(1),
            max_inflight: 100,
            max_pending: 100,
            max_streams: 100,
        }
    }

    /// An h2c upstream that completes the handshake and then either keeps serving its connection
    /// (which is what answers PINGs) or holds it open without reading another frame.
    async fn h2_upstream(answers: bool) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address").to_string();
        let task = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let mut conn = h2::server::handshake(socket).await.expect("server handshake");
            if answers {
                while let Some(Ok(_)) = conn.accept().await {}
            } else {
                std::future::pending::<()>().await;
                drop(conn);
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn an_upstream_h2_connection_whose_peer_stops_answering_pings_is_closed() {
        for answers in [false, true] {
            let (addr, upstream) = h2_upstream(answers).await;
            let mut ep = Endpoint::new(&addr, settings(), 1);
            ep.h2_keepalive = Duration::from_millis(100);
            let ep = Arc::new(ep);
            let handle = ep.connect_h2().await.expect("connect");
            // Three intervals: a PING at 100 ms, its deadline at 200 ms, and room for a slow CI.
            tokio::time::sleep(Duration::from_millis(700)).await;
            assert_eq!(handle.is_closed(), !answers, "upstream answers PINGs: {answers}");
            assert_eq!(ep.open.load(Ordering::Relaxed), u64::from(answers));
            upstream.abort();
        }
    }
}
