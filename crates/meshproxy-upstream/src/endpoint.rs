//! Endpoint handles and the registry that owns them.
//!
//! An [`Endpoint`] carries the live state of one upstream address: its connection pool, its
//! in-flight limit and pending queue, and counters the balancer and metrics read. Endpoints live
//! in the [`Registry`], outside the swapped config snapshot, keyed by address and connector (a
//! plaintext and a TLS endpoint at one address are two endpoints; see [`Connector`]): a reload that keeps an endpoint keeps its warm connections, and an
//! endpoint that disappears is drained (idle connections closed, in-flight requests finish).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use meshproxy_http::h1::{H1Conn, Recycle};
use meshproxy_http::h2_client::{self, H2Handle};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::connect::{Alpn, ConnLimit, Connector, Counted, OpenCount, Target, TcpConnector};
use crate::health::Health;
use crate::pool::multiplexed::{Multiplexed, MultiplexedSet, StreamSlot};
use crate::pool::{Pool, PoolSettings, Reusable};
use crate::UpstreamError;

/// A connection to an endpoint made by connector `C`, counted open on the endpoint.
pub type Conn<C> = Counted<<C as Connector>::Io>;

impl<C: meshproxy_http::h1::Io> Reusable for H1Conn<C> {
    fn is_closed(&self) -> bool {
        H1Conn::is_closed(self)
    }

    fn is_ready(&self) -> bool {
        true
    }
}

impl Multiplexed for H2Handle {
    fn is_closed(&self) -> bool {
        H2Handle::is_closed(self)
    }
    fn peer_max_streams(&self) -> usize {
        H2Handle::peer_max_streams(self)
    }
    fn same_connection(&self, other: &Self) -> bool {
        H2Handle::same_connection(self, other)
    }
}

/// Per-endpoint settings, taken from the service that names the endpoint.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    pub pool: PoolSettings,
    pub connect_timeout: Duration,
    pub max_inflight: u32,
    pub max_pending: u32,
    pub max_streams: u32,
    /// The service's bound on open connections and its value; none = no bound.
    pub connections: Option<(Arc<ConnLimit>, usize)>,
}

pub struct Endpoint<C: Connector = TcpConnector> {
    pub address: Box<str>,
    pub(crate) target: Target,
    pub(crate) connector: C,
    /// One set of pools per worker thread (see [`crate::worker`]): a connection is only ever
    /// used by the worker whose runtime drives it.
    pools: Box<[WorkerPools<C>]>,
    limiter: Arc<Semaphore>,
    max_inflight: AtomicU32,
    pending: AtomicUsize,
    max_pending: AtomicUsize,
    connect_timeout_ms: AtomicU64,
    /// The service's bound on open connections, read when a connection is opened.
    conn_limit: parking_lot::Mutex<Option<Arc<ConnLimit>>>,
    /// Set when a reload removed the endpoint: connections finishing their last request close
    /// instead of going back to a pool nobody will use.
    retired: AtomicBool,
    pub(crate) open: AtomicU64,
    opened: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Requests re-sent after a failure that left them unprocessed (or safe to repeat).
    retries: AtomicU64,
    /// [`h2_client::KEEPALIVE`]; shorter in tests.
    h2_keepalive: Duration,
    /// Failures, ejection and latency as the endpoint's traffic shows them.
    pub health: Health,
}

/// One worker's upstream connections to an endpoint.
struct WorkerPools<C: Connector> {
    http1: Pool<H1Conn<Conn<C>>>,
    h2: MultiplexedSet<H2Handle>,
}

/// A connection taken for one request; `idle` tells whether (and how long) it sat in the pool.
pub struct Checkout<C: Connector> {
    pub conn: H1Conn<Conn<C>>,
    /// How long the connection sat in the pool; None for a new connection.
    pub idle: Option<Duration>,
}

/// A [`Counted`] connection to this endpoint is open until dropped.
impl<C: Connector> OpenCount for Endpoint<C> {
    fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the balancer reads of an endpoint.
impl<C: Connector> meshproxy_balance::EndpointView for Endpoint<C> {
    #[inline]
    fn available(&self) -> bool {
        !self.retired.load(Ordering::Relaxed) && self.health.available()
    }
    fn load(&self) -> u64 {
        self.inflight()
    }
    fn latency(&self) -> f64 {
        self.health.latency_estimate()
    }
}

/// A finished HTTP/1.1 exchange hands its connection back to the endpoint's pool.
impl<C: Connector> Recycle<Conn<C>> for Endpoint<C> {
    fn recycle(&self, conn: H1Conn<Conn<C>>) {
        self.checkin(conn);
    }
}

impl<C: Connector> Endpoint<C> {
    pub fn new(address: &str, s: EndpointSettings, workers: usize, connector: C) -> Self {
        Endpoint {
            address: address.into(),
            target: Target::new(address),
            connector,
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
            conn_limit: parking_lot::Mutex::new(s.connections.map(|(limit, max)| {
                limit.set_max(max);
                limit
            })),
            retired: AtomicBool::new(false),
            open: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            h2_keepalive: h2_client::KEEPALIVE,
            health: Health::default(),
        }
    }

    /// How this endpoint's connections are opened (with its address, its key in the registry).
    pub fn connector(&self) -> &C {
        &self.connector
    }

    /// The calling worker's pools.
    fn local(&self) -> &WorkerPools<C> {
        &self.pools[crate::worker::current() % self.pools.len()]
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
        *self.conn_limit.lock() = s.connections.map(|(limit, max)| {
            limit.set_max(max);
            limit
        });
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

    /// An in-flight slot if one is free now (no queueing).
    #[inline]
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.limiter.clone().try_acquire_owned().ok()
    }

    /// Takes an in-flight slot, waiting in the bounded pending queue if all are taken.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, UpstreamError> {
        match self.limiter.clone().try_acquire_owned() {
            Ok(p) => return Ok(p),
            Err(TryAcquireError::Closed) => return Err(UpstreamError::Overloaded),
            Err(TryAcquireError::NoPermits) => {}
        }
        let Some(_queued) = Queued::enter(&self.pending, self.max_pending.load(Ordering::Relaxed)) else {
            return Err(UpstreamError::Overloaded);
        };
        let permit = self.limiter.clone().acquire_owned().await;
        permit.map_err(|_| UpstreamError::Overloaded)
    }

    pub fn inflight(&self) -> u64 {
        let max = self.max_inflight.load(Ordering::Relaxed) as u64;
        max.saturating_sub(self.limiter.available_permits() as u64)
    }

    /// A pooled connection if one is usable, else a new one.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout<C>, UpstreamError> {
        if let Some((conn, idle)) = self.local().http1.checkout() {
            return Ok(Checkout { conn, idle: Some(idle) });
        }
        // Boxed: the connect future is large and rarely needed; inline, it would size every
        // request's future (moved several times per request) to fit it.
        Ok(Checkout { conn: Box::pin(self.connect()).await?, idle: None })
    }

    pub fn checkin(&self, conn: H1Conn<Conn<C>>) {
        if !self.retired.load(Ordering::Acquire) {
            self.local().http1.checkin(conn);
        }
    }

    /// A stream on an HTTP/2 connection with room, opening a connection if all are full; true
    /// when the connection already existed.
    pub async fn checkout_h2(self: &Arc<Self>) -> Result<(H2Handle, StreamSlot, bool), UpstreamError> {
        self.checkout_h2_avoiding(None).await
    }

    /// Like [`Endpoint::checkout_h2`], on a connection other than `avoid`: a retry must not land
    /// on the connection that just refused the stream or is going away.
    pub async fn checkout_h2_avoiding(
        self: &Arc<Self>,
        avoid: Option<&H2Handle>,
    ) -> Result<(H2Handle, StreamSlot, bool), UpstreamError> {
        if let Some((handle, slot)) = self.local().h2.claim_avoiding(avoid) {
            return Ok((handle, slot, true));
        }
        // Boxed for the same reason as in `checkout`.
        Box::pin(self.open_h2_and_claim(avoid)).await
    }

    async fn open_h2_and_claim(
        self: &Arc<Self>,
        avoid: Option<&H2Handle>,
    ) -> Result<(H2Handle, StreamSlot, bool), UpstreamError> {
        let set = &self.local().h2;
        let _connecting = set.connecting.lock().await;
        if let Some((handle, slot)) = set.claim_avoiding(avoid) {
            // Another request opened one while this one waited.
            return Ok((handle, slot, true));
        }
        let sender = self.connect_h2().await?;
        set.insert(sender);
        let (handle, slot) = set.claim_avoiding(avoid).ok_or(UpstreamError::Connect)?;
        Ok((handle, slot, false))
    }

    /// Opens a new HTTP/2 connection (h2c with prior knowledge, or `h2` agreed by ALPN over TLS).
    pub async fn connect_h2(self: &Arc<Self>) -> Result<H2Handle, UpstreamError> {
        let io = self.open_counted(Alpn::H2).await?;
        let (handle, driver) = h2_client::handshake(io, self.h2_keepalive).await.map_err(|e| {
            tracing::debug!(endpoint = %self.address, error = %e, "upstream h2 handshake failed");
            UpstreamError::Connect
        })?;
        let address = self.address.clone();
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(endpoint = %address, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(handle)
    }

    /// A raw connection for opaque forwarding (TCP, `CONNECT`), counted as opened and open
    /// until dropped.
    pub async fn connect_opaque(self: &Arc<Self>) -> Result<Conn<C>, UpstreamError> {
        self.open_counted(Alpn::Opaque).await
    }

    /// Opens a new HTTP/1.1 upstream connection, bounded by the connect timeout.
    pub async fn connect(self: &Arc<Self>) -> Result<H1Conn<Conn<C>>, UpstreamError> {
        Ok(H1Conn::new(self.open_counted(Alpn::Http1).await?))
    }

    /// A new connection from the connector, bounded by the connect timeout, counted as opened
    /// and open until dropped.
    async fn open_counted(self: &Arc<Self>, alpn: Alpn) -> Result<Conn<C>, UpstreamError> {
        // The service's place is taken before connecting, so concurrent connects stay bounded.
        let limit = self.conn_limit.lock().clone();
        if limit.as_ref().is_some_and(|l| !l.try_open()) {
            tracing::debug!(endpoint = %self.address, "service connection limit reached");
            return Err(UpstreamError::Overloaded);
        }
        let timeout = Duration::from_millis(self.connect_timeout_ms.load(Ordering::Relaxed));
        let failed = |limit: &Option<Arc<ConnLimit>>| {
            if let Some(l) = limit {
                l.release();
            }
            UpstreamError::Connect
        };
        let io = match tokio::time::timeout(timeout, self.connector.connect(&self.target, alpn)).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %self.address, error = %e, "upstream connect failed");
                return Err(failed(&limit));
            }
            Err(_) => {
                tracing::debug!(endpoint = %self.address, "upstream connect timed out");
                return Err(failed(&limit));
            }
        };
        self.count_opened();
        let weak: Weak<dyn OpenCount> = Arc::downgrade(self) as Weak<dyn OpenCount>;
        Ok(Counted::new(io, weak, limit))
    }

    /// A new connection: opened, and open until whatever holds it undoes `open`.
    fn count_opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request sent to this endpoint (the engine's outcome of an attempt).
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure of this endpoint (the engine's outcome of an attempt or a tunnel).
    pub fn count_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request re-sent on a fresh connection after a stale one failed.
    pub fn count_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sample(&self) -> Sample {
        Sample {
            address: self.address.to_string(),
            tls: self.connector.is_tls(),
            open: self.open.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
            idle: self.pools.iter().map(|p| p.http1.idle_len()).sum(),
            inflight: self.inflight(),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            state: self.health.state(),
            ready: self.health.is_ready(),
            ejections: self.health.ejections(),
            latency_ms: self.health.latency_estimate() / 1e6,
        }
    }
}

/// A place in a bounded queue of waiting requests (an endpoint's, or a service's under a circuit
/// breaker), held while a request waits for an in-flight slot. It is given back however the wait
/// ends, also when the waiting request is dropped (its client went away, or its timeout fired).
pub struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    /// A place among the `waiting`, unless `max` already wait.
    pub fn enter(waiting: &'a AtomicUsize, max: usize) -> Option<Self> {
        if waiting.fetch_add(1, Ordering::AcqRel) >= max {
            waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Queued(waiting))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What `stats()` and `/metrics` show of one endpoint.
pub struct Sample {
    pub address: String,
    /// Its connections are TLS (see [`Connector::is_tls`]).
    pub tls: bool,
    pub open: u64,
    pub opened: u64,
    pub idle: usize,
    pub inflight: u64,
    pub requests: u64,
    pub failures: u64,
    pub retries: u64,
    pub state: crate::HealthState,
    /// Whether its active health check (if any) lets requests go to it.
    pub ready: bool,
    /// Times failure accrual ejected it.
    pub ejections: u64,
    /// The peak-EWMA latency estimate, in milliseconds.
    pub latency_ms: f64,
}

/// An endpoint's key in the [`Registry`]: its address and how its connections are opened.
type Key<C> = (Box<str>, C);

/// All endpoints, keyed by address and connector, shared by every config version.
pub struct Registry<C: Connector = TcpConnector> {
    endpoints: Mutex<HashMap<Key<C>, Arc<Endpoint<C>>>>,
    /// Worker threads, each with its own pools in every endpoint.
    workers: usize,
}

impl<C: Connector> Default for Registry<C> {
    fn default() -> Self {
        Registry::new(1)
    }
}

impl<C: Connector> Registry<C> {
    pub fn new(workers: usize) -> Self {
        Registry { endpoints: Mutex::default(), workers: workers.max(1) }
    }

    /// The registered endpoint for `address` reached through `connector`, or a new one with `settings` that is not
    /// registered until [`Registry::adopt`]: a config being compiled must not change what the
    /// running one shows (`stats`, `/metrics`) until it is swapped in. An existing endpoint keeps
    /// its settings until then too (the engine applies them with [`Endpoint::update`]).
    pub fn lookup_or_new(
        &self,
        address: &str,
        connector: &C,
        settings: EndpointSettings,
    ) -> Arc<Endpoint<C>> {
        let key: Key<C> = (address.into(), connector.clone());
        if let Some(ep) = self.endpoints.lock().get(&key) {
            return ep.clone();
        }
        Arc::new(Endpoint::new(address, settings, self.workers, key.1))
    }

    /// Registers the endpoints of a config that has been swapped in (those already registered
    /// are the same objects).
    pub fn adopt<'a>(&self, endpoints: impl IntoIterator<Item = &'a Arc<Endpoint<C>>>) {
        let mut map = self.endpoints.lock();
        for ep in endpoints {
            map.entry((ep.address.clone(), ep.connector.clone())).or_insert_with(|| ep.clone());
        }
    }

    /// Drops endpoints no longer in use: their idle connections close now, in-flight requests
    /// keep their handle until they finish.
    pub fn retain(&self, keep: impl Fn(&str, &C) -> bool) {
        self.endpoints.lock().retain(|(address, connector), ep| {
            let kept = keep(address, connector);
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

    pub fn samples(&self) -> Vec<Sample> {
        let mut v: Vec<_> = self.endpoints.lock().values().map(|e| e.sample()).collect();
        v.sort_by(|a, b| a.address.cmp(&b.address));
        v
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn settings() -> EndpointSettings {
        EndpointSettings {
            pool: PoolSettings { max_idle: 8, idle_timeout: Duration::from_secs(4) },
            connect_timeout: Duration::from_secs(1),
            max_inflight: 100,
            max_pending: 100,
            max_streams: 100,
            connections: None,
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
            let mut ep = Endpoint::new(&addr, settings(), 1, TcpConnector);
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
