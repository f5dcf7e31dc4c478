//! [`Shared`]: what every connection of a running proxy reads — the current snapshot and what
//! outlives snapshots (endpoints, metrics, readiness, the open-connection count, the worker deal).
//! Its fields are private: the listener, the request path and the admin listener read it through
//! these methods, and only [`crate::server`] changes the snapshot and readiness.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::compile::Snapshot;
use crate::metrics::Metrics;
use crate::upstream::Registry;

pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    registry: Registry,
    metrics: Metrics,
    /// The Redis servers of global rate limits.
    stores: crate::ratelimit::Stores,
    ready: AtomicBool,
    connections: Arc<AtomicUsize>,
    /// Worker runtimes accepted connections are dealt to (see `crate::workers`); empty: served
    /// on the runtime that accepts them.
    workers: Vec<tokio::runtime::Handle>,
    next_worker: AtomicUsize,
    /// Connections dealt to each worker (one entry when there are no worker runtimes).
    worker_connections: Box<[AtomicU64]>,
}

impl Shared {
    pub fn new(
        snapshot: Snapshot,
        registry: Registry,
        metrics: Metrics,
        stores: crate::ratelimit::Stores,
        workers: Vec<tokio::runtime::Handle>,
    ) -> Self {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            metrics,
            stores,
            ready: AtomicBool::new(false),
            connections: Arc::new(AtomicUsize::new(0)),
            worker_connections: (0..workers.len().max(1)).map(|_| AtomicU64::new(0)).collect(),
            workers,
            next_worker: AtomicUsize::new(0),
        }
    }

    /// The config in force.
    #[inline]
    pub fn snapshot(&self) -> &ArcSwap<Snapshot> {
        &self.snapshot
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn stores(&self) -> &crate::ratelimit::Stores {
        &self.stores
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Downstream connections open now, over every listener.
    pub fn open_connections(&self) -> &Arc<AtomicUsize> {
        &self.connections
    }

    /// The worker the next accepted connection goes to (round-robin), counted as dealt to it:
    /// None when connections are served on the accepting runtime.
    pub fn deal(&self) -> Option<(usize, &tokio::runtime::Handle)> {
        let worker = match self.workers.len() {
            0 | 1 => None,
            n => Some(self.next_worker.fetch_add(1, Ordering::Relaxed) % n),
        };
        if let Some(c) = self.worker_connections.get(worker.unwrap_or(0)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        worker.and_then(|w| self.workers.get(w).map(|h| (w, h)))
    }

    /// Connections dealt to each worker so far.
    pub fn dealt(&self) -> impl Iterator<Item = u64> + '_ {
        self.worker_connections.iter().map(|c| c.load(Ordering::Relaxed))
    }
}
