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

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::error::ProxyError;
use crate::metrics::EndpointSample;
use crate::pool::{Pool, PoolSettings, Reusable};
use crate::proxy::body::UpstreamBody;

pub type Sender = http1::SendRequest<UpstreamBody>;

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
}

pub struct Endpoint {
    pub address: Box<str>,
    /// Parsed once when the address is an IP literal; host names resolve at connect time.
    socket: Option<SocketAddr>,
    pool: Pool<Sender>,
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
}

/// A connection taken for one request; `reused` tells whether it came from the pool.
pub struct Checkout {
    pub sender: Sender,
    pub reused: bool,
}

impl Endpoint {
    fn new(address: &str, s: EndpointSettings) -> Self {
        Endpoint {
            address: address.into(),
            socket: address.parse().ok(),
            pool: Pool::new(s.pool),
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
        }
    }

    /// Applies the settings of a config that has been swapped in. Reloads are serialized by
    /// the proxy, so resizes of the in-flight limit do not race each other.
    pub fn update(&self, s: EndpointSettings) {
        self.pool.set_settings(s.pool);
        self.max_pending.store(s.max_pending as usize, Ordering::Relaxed);
        self.connect_timeout_ms
            .store(s.connect_timeout.as_millis() as u64, Ordering::Relaxed);
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
        if let Some(sender) = self.pool.checkout() {
            return Ok(Checkout { sender, reused: true });
        }
        Ok(Checkout {
            sender: self.connect().await?,
            reused: false,
        })
    }

    pub fn checkin(&self, sender: Sender) {
        if !self.retired.load(Ordering::Acquire) {
            self.pool.checkin(sender);
        }
    }

    /// Opens a new upstream connection, bounded by the connect timeout.
    pub async fn connect(self: &Arc<Self>) -> Result<Sender, ProxyError> {
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
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| self.failed(ProxyError::UpstreamConnect))?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        // Weak: the endpoint's pool owns the connection's sender, so a strong reference here
        // would keep a removed endpoint (and its idle connection) alive forever.
        let ep: Weak<Endpoint> = Arc::downgrade(self);
        tokio::spawn(async move {
            let result = conn.with_upgrades().await;
            if let Some(ep) = ep.upgrade() {
                if let Err(e) = result {
                    tracing::debug!(endpoint = %ep.address, error = %e, "upstream connection ended with an error");
                }
                ep.open.fetch_sub(1, Ordering::Relaxed);
            }
        });
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
            }
            kept
        });
    }

    pub fn reap_idle(&self) {
        for ep in self.endpoints.lock().values() {
            ep.pool.reap();
        }
    }

    pub fn clear_idle(&self) {
        for ep in self.endpoints.lock().values() {
            ep.pool.clear();
        }
    }

    pub fn samples(&self) -> Vec<EndpointSample> {
        let mut v: Vec<_> = self.endpoints.lock().values().map(|e| e.sample()).collect();
        v.sort_by(|a, b| a.address.cmp(&b.address));
        v
    }
}
