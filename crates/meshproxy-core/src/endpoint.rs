//! Endpoint handles and the registry that owns them.
//!
//! An [`Endpoint`] carries the live state of one upstream address: its connection pool, its
//! in-flight limit and pending queue, and counters the balancer and metrics read. Endpoints live
//! in the [`Registry`], outside the swapped config snapshot, keyed by address (later also by
//! protocol and TLS identity): a reload that keeps an endpoint keeps its warm connections, and an
//! endpoint that disappears is drained (idle connections closed, in-flight requests finish).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::error::ProxyError;
use crate::metrics::EndpointSample;
use crate::pool::multiplexed::{Multiplexed, MultiplexedSet, StreamSlot};
use crate::pool::{Pool, PoolSettings, Reusable};
use crate::proxy::body::UpstreamBody;

pub type Sender = http1::SendRequest<UpstreamBody>;
pub type H2Sender = http2::SendRequest<UpstreamBody>;

/// An HTTP/2 connection's sender, and the peer's SETTINGS_MAX_CONCURRENT_STREAMS as last seen by
/// the connection task (hyper exposes it on the connection, not the sender).
#[derive(Clone)]
pub struct H2Handle {
    pub sender: H2Sender,
    peer_max: Arc<AtomicUsize>,
}

impl Multiplexed for H2Handle {
    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
    fn peer_max_streams(&self) -> usize {
        self.peer_max.load(Ordering::Relaxed)
    }
    fn same_connection(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.peer_max, &other.peer_max)
    }
}

type H2Connection = http2::Connection<TokioIo<TcpStream>, UpstreamBody, TokioExecutor>;

pin_project_lite::pin_project! {
    /// Drives an HTTP/2 client connection and publishes the peer's stream limit after each poll.
    struct WatchedH2 {
        #[pin]
        conn: H2Connection,
        peer_max: Arc<AtomicUsize>,
    }
}

impl std::future::Future for WatchedH2 {
    type Output = Result<(), hyper::Error>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let mut this = self.project();
        let r = this.conn.as_mut().poll(cx);
        this.peer_max.store(this.conn.current_max_send_streams(), Ordering::Relaxed);
        r
    }
}

impl Reusable for Sender {
    fn is_closed(&self) -> bool {
        http1::SendRequest::is_closed(self)
    }
    fn is_ready(&self) -> bool {
        http1::SendRequest::is_ready(self)
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
    pool: Pool<Sender>,
    h2: MultiplexedSet<H2Handle>,
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
}

/// A connection taken for one request; `reused` tells whether it came from the pool.
pub struct Checkout {
    pub sender: Sender,
    /// How long the connection sat in the pool; None for a new connection.
    pub idle: Option<Duration>,
}

impl Endpoint {
    fn new(address: &str, s: EndpointSettings) -> Self {
        Endpoint {
            address: address.into(),
            socket: address.parse().ok(),
            pool: Pool::new(s.pool),
            h2: MultiplexedSet::new(s.max_streams as usize),
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
        }
    }

    /// Applies the settings of a config that has been swapped in. Reloads are serialized by
    /// the proxy, so resizes of the in-flight limit do not race each other.
    pub fn update(&self, s: EndpointSettings) {
        self.pool.set_settings(s.pool);
        self.h2.set_max_streams(s.max_streams as usize);
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
        if let Some((sender, idle)) = self.pool.checkout() {
            return Ok(Checkout { sender, idle: Some(idle) });
        }
        // Boxed: the connect future is large and rarely needed; inline, it would size every
        // request's future (moved several times per request) to fit it.
        Ok(Checkout { sender: Box::pin(self.connect()).await?, idle: None })
    }

    pub fn checkin(&self, sender: Sender) {
        if !self.retired.load(Ordering::Acquire) {
            self.pool.checkin(sender);
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
        if let Some(claimed) = self.h2.claim_avoiding(avoid) {
            return Ok(claimed);
        }
        // Boxed for the same reason as in `checkout`.
        Box::pin(self.open_h2_and_claim(avoid)).await
    }

    async fn open_h2_and_claim(
        self: &Arc<Self>,
        avoid: Option<&H2Handle>,
    ) -> Result<(H2Handle, StreamSlot), ProxyError> {
        let _connecting = self.h2.connecting.lock().await;
        if let Some(claimed) = self.h2.claim_avoiding(avoid) {
            return Ok(claimed);
        }
        let sender = self.connect_h2().await?;
        self.h2.insert(sender);
        self.h2.claim_avoiding(avoid).ok_or(ProxyError::UpstreamConnect)
    }

    /// Opens a new HTTP/2 (h2c prior knowledge) connection.
    pub async fn connect_h2(self: &Arc<Self>) -> Result<H2Handle, ProxyError> {
        let stream = self.tcp_connect().await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| self.failed(ProxyError::UpstreamConnect))?;
        // Until the peer's SETTINGS arrive, assume the RFC's recommended minimum of 100.
        let peer_max = Arc::new(AtomicUsize::new(100));
        self.track(WatchedH2 { conn, peer_max: peer_max.clone() });
        Ok(H2Handle { sender, peer_max })
    }

    /// A raw TCP connection for opaque forwarding; counted as opened and open. Only
    /// [`crate::tcp::TcpUpstream`] calls it, and undoes `open` when dropped.
    pub(crate) async fn connect_tcp(&self) -> Result<TcpStream, ProxyError> {
        let stream = self.tcp_connect().await?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
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
    fn track<F>(self: &Arc<Self>, conn: F)
    where
        F: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
    {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
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
    pub async fn connect(self: &Arc<Self>) -> Result<Sender, ProxyError> {
        let stream = self.tcp_connect().await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| self.failed(ProxyError::UpstreamConnect))?;
        self.track(conn.with_upgrades());
        Ok(sender)
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
            idle: self.pool.idle_len(),
            inflight: self.inflight(),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// All endpoints, keyed by address, shared by every config version.
#[derive(Default)]
pub struct Registry {
    endpoints: Mutex<HashMap<Box<str>, Arc<Endpoint>>>,
}

impl Registry {
    /// The endpoint for `address`, created with `settings` on first use. An existing endpoint
    /// keeps its settings until the config that changes them is swapped in
    /// ([`crate::compile::Snapshot::apply_endpoint_settings`]), so a reload that fails later
    /// changes nothing.
    pub fn get(&self, address: &str, settings: EndpointSettings) -> Arc<Endpoint> {
        let mut map = self.endpoints.lock();
        if let Some(ep) = map.get(address) {
            return ep.clone();
        }
        let ep = Arc::new(Endpoint::new(address, settings));
        map.insert(address.into(), ep.clone());
        ep
    }

    /// Drops endpoints no longer in use: their idle connections close now, in-flight requests
    /// keep their handle until they finish.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.endpoints.lock().retain(|addr, ep| {
            let kept = keep(addr);
            if !kept {
                ep.retired.store(true, Ordering::Release);
                ep.pool.clear();
                ep.h2.clear();
            }
            kept
        });
    }

    pub fn reap_idle(&self) {
        for ep in self.endpoints.lock().values() {
            ep.pool.reap();
            ep.h2.reap(ep.pool.idle_timeout());
        }
    }

    pub fn clear_idle(&self) {
        for ep in self.endpoints.lock().values() {
            ep.pool.clear();
            ep.h2.clear();
        }
    }

    pub fn samples(&self) -> Vec<EndpointSample> {
        let mut v: Vec<_> = self.endpoints.lock().values().map(|e| e.sample()).collect();
        v.sort_by(|a, b| a.address.cmp(&b.address));
        v
    }
}
