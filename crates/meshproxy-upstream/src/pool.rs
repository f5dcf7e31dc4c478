//! A keyed-by-endpoint idle set of keep-alive connections: LIFO checkout (the most recently used
//! connection is the least likely to have been closed by the peer), a bounded idle set, and an
//! idle timeout shorter than common backends' keep-alive timeouts (Node's is 5 s), so the proxy
//! retires a connection before the backend does instead of racing it.
//!
//! The pool is generic over the connection handle so its policy is testable without sockets.
//! HTTP/2 connections, which carry many requests at once, are pooled by [`multiplexed`].

pub mod multiplexed;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// What the pool needs to know about a connection handle.
pub trait Reusable {
    /// True when the peer has closed the connection or it is otherwise unusable.
    fn is_closed(&self) -> bool;
    /// True when the connection can take a new request right now.
    fn is_ready(&self) -> bool;
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

pub struct Pool<C> {
    idle: Mutex<Vec<Idle<C>>>,
    // Atomics, not a lock: read on every checkout, written only on reload.
    max_idle: AtomicUsize,
    idle_timeout_ms: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_idle: usize,
    pub idle_timeout: Duration,
}

impl<C: Reusable> Pool<C> {
    pub fn new(settings: PoolSettings) -> Self {
        let pool = Pool {
            idle: Mutex::new(Vec::new()),
            max_idle: AtomicUsize::new(0),
            idle_timeout_ms: AtomicU64::new(0),
        };
        pool.set_settings(settings);
        pool
    }

    pub fn set_settings(&self, settings: PoolSettings) {
        self.max_idle.store(settings.max_idle, Ordering::Relaxed);
        self.idle_timeout_ms.store(settings.idle_timeout.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }

    /// Takes the freshest usable idle connection, discarding stale ones on the way, with how
    /// long it sat idle: only a connection idle for a while can meet a peer's keep-alive timeout
    /// on the way (see `forward::send`).
    pub fn checkout(&self) -> Option<(C, Duration)> {
        let timeout = self.idle_timeout();
        let now = Instant::now();
        let mut idle = self.idle.lock();
        while let Some(entry) = idle.pop() {
            let idle_for = now.duration_since(entry.since);
            if idle_for < timeout && !entry.conn.is_closed() && entry.conn.is_ready() {
                return Some((entry.conn, idle_for));
            }
        }
        None
    }

    /// Returns a connection to the idle set; it is dropped (closed) if the set is full.
    pub fn checkin(&self, conn: C) {
        if conn.is_closed() {
            return;
        }
        let max = self.max_idle.load(Ordering::Relaxed);
        let mut idle = self.idle.lock();
        if idle.len() < max {
            idle.push(Idle { conn, since: Instant::now() });
        }
    }

    /// Closes idle connections past the idle timeout or closed by the peer. Called periodically.
    pub fn reap(&self) -> usize {
        let timeout = self.idle_timeout();
        let now = Instant::now();
        let mut idle = self.idle.lock();
        let before = idle.len();
        idle.retain(|e| now.duration_since(e.since) < timeout && !e.conn.is_closed());
        before - idle.len()
    }

    /// Drops every idle connection (endpoint removed, or proxy closing).
    pub fn clear(&self) {
        self.idle.lock().clear();
    }

    pub fn idle_len(&self) -> usize {
        self.idle.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[derive(Clone)]
    struct Fake(u32, Arc<AtomicBool>);
    impl Reusable for Fake {
        fn is_closed(&self) -> bool {
            self.1.load(Ordering::Relaxed)
        }
        fn is_ready(&self) -> bool {
            true
        }
    }

    fn fake(id: u32) -> Fake {
        Fake(id, Arc::new(AtomicBool::new(false)))
    }

    fn pool(max_idle: usize) -> Pool<Fake> {
        Pool::new(PoolSettings { max_idle, idle_timeout: Duration::from_secs(4) })
    }

    #[tokio::test(start_paused = true)]
    async fn lifo_bounded_and_skips_closed() {
        let p = pool(2);
        let (a, b, c) = (fake(1), fake(2), fake(3));
        p.checkin(a.clone());
        p.checkin(b.clone());
        p.checkin(c);
        assert_eq!(p.idle_len(), 2, "idle set is bounded");
        b.1.store(true, Ordering::Relaxed);
        assert_eq!(p.checkout().map(|(c, _)| c.0), Some(1), "closed connection skipped");
        assert!(p.checkout().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_retires_connections() {
        let p = pool(8);
        p.checkin(fake(1));
        tokio::time::advance(Duration::from_millis(3_900)).await;
        p.checkin(fake(2));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(p.reap(), 1);
        assert_eq!(p.checkout().map(|(c, _)| c.0), Some(2));
        p.checkin(fake(3));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(p.checkout().is_none(), "expired connection never handed out");
    }
}
