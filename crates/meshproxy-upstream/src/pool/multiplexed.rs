//! The HTTP/2 side of an endpoint's pool: few connections, many streams each. A request takes a
//! stream slot on the first healthy connection with room — below min(the peer's
//! SETTINGS_MAX_CONCURRENT_STREAMS, the configured cap) — and opens another connection only when
//! all are full. The slot is held until the response body ends, so the count is what is really
//! in flight. Connections idle (no stream) past the idle timeout are closed by the reaper.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// What the set needs to know about a multiplexed connection handle.
pub trait Multiplexed: Clone {
    fn is_closed(&self) -> bool;
    /// The peer's current limit on concurrent streams.
    fn peer_max_streams(&self) -> usize;
    /// True when both handles drive the same connection.
    fn same_connection(&self, other: &Self) -> bool;
}

struct Conn<C> {
    handle: C,
    active: Arc<AtomicUsize>,
    /// ms since the set's base instant when the last stream ended.
    idle_since: Arc<AtomicU64>,
}

/// A claimed stream on one connection; dropping it gives the slot back.
pub struct StreamSlot {
    active: Arc<AtomicUsize>,
    idle_since: Arc<AtomicU64>,
    base: Instant,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(self.base.elapsed().as_millis() as u64, Ordering::Release);
        }
    }
}

pub struct MultiplexedSet<C> {
    conns: Mutex<Vec<Conn<C>>>,
    /// Serializes connection setup, so a burst of requests opens one connection and waits for
    /// it instead of opening one each.
    pub connecting: tokio::sync::Mutex<()>,
    max_streams: AtomicUsize,
    base: Instant,
}

impl<C: Multiplexed> MultiplexedSet<C> {
    pub fn new(max_streams: usize) -> Self {
        MultiplexedSet {
            conns: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
            max_streams: AtomicUsize::new(max_streams.max(1)),
            base: Instant::now(),
        }
    }

    pub fn set_max_streams(&self, max: usize) {
        self.max_streams.store(max.max(1), Ordering::Relaxed);
    }

    /// A stream on a connection with room, if any.
    pub fn claim(&self) -> Option<(C, StreamSlot)> {
        self.claim_avoiding(None)
    }

    /// A stream on a connection with room other than `avoid` (where a request just failed).
    pub fn claim_avoiding(&self, avoid: Option<&C>) -> Option<(C, StreamSlot)> {
        let cap = self.max_streams.load(Ordering::Relaxed);
        let mut conns = self.conns.lock();
        conns.retain(|c| !c.handle.is_closed());
        for c in conns.iter().filter(|c| !avoid.is_some_and(|a| a.same_connection(&c.handle))) {
            let limit = cap.min(c.handle.peer_max_streams()).max(1);
            let mut current = c.active.load(Ordering::Acquire);
            while current < limit {
                match c.active.compare_exchange(current, current + 1, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        let slot = StreamSlot {
                            active: c.active.clone(),
                            idle_since: c.idle_since.clone(),
                            base: self.base,
                        };
                        return Some((c.handle.clone(), slot));
                    }
                    Err(now) => current = now,
                }
            }
        }
        None
    }

    pub fn insert(&self, handle: C) {
        let idle_since = Arc::new(AtomicU64::new(self.base.elapsed().as_millis() as u64));
        self.conns.lock().push(Conn { handle, active: Arc::new(AtomicUsize::new(0)), idle_since });
    }

    /// Drops connections closed by the peer, and those without streams for `idle_timeout`.
    pub fn reap(&self, idle_timeout: Duration) {
        let now = self.base.elapsed().as_millis() as u64;
        let limit = idle_timeout.as_millis() as u64;
        self.conns.lock().retain(|c| {
            let idle = c.active.load(Ordering::Acquire) == 0
                && now.saturating_sub(c.idle_since.load(Ordering::Acquire)) >= limit;
            !c.handle.is_closed() && !idle
        });
    }

    pub fn clear(&self) {
        self.conns.lock().clear();
    }

    pub fn len(&self) -> usize {
        self.conns.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[derive(Clone)]
    struct Fake {
        peer_max: usize,
        closed: Arc<AtomicBool>,
    }
    impl Multiplexed for Fake {
        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::Relaxed)
        }
        fn peer_max_streams(&self) -> usize {
            self.peer_max
        }
        fn same_connection(&self, other: &Self) -> bool {
            Arc::ptr_eq(&self.closed, &other.closed)
        }
    }
    fn fake(peer_max: usize) -> Fake {
        Fake { peer_max, closed: Arc::new(AtomicBool::new(false)) }
    }

    #[tokio::test(start_paused = true)]
    async fn fills_a_connection_before_using_the_next() {
        let set = MultiplexedSet::new(3);
        set.insert(fake(100));
        let slots: Vec<_> = (0..3).map(|_| set.claim().unwrap()).collect();
        assert!(set.claim().is_none(), "configured cap of 3 reached");
        set.insert(fake(2));
        let a = set.claim().unwrap();
        let _b = set.claim().unwrap();
        assert!(set.claim().is_none(), "the peer's limit of 2 is respected");
        drop(a);
        assert!(set.claim().is_some(), "a released slot is reused");
        drop(slots);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_can_avoid_the_connection_that_failed() {
        let set = MultiplexedSet::new(10);
        let first = fake(10);
        set.insert(first.clone());
        assert!(set.claim_avoiding(Some(&first)).is_none(), "the only connection is the one to avoid");
        set.insert(fake(10));
        let (other, _slot) = set.claim_avoiding(Some(&first)).unwrap();
        assert!(!other.same_connection(&first));
    }

    #[tokio::test(start_paused = true)]
    async fn reaps_closed_and_idle_connections() {
        let set = MultiplexedSet::new(10);
        let c = fake(10);
        set.insert(c.clone());
        set.insert(fake(10));
        let (_, slot) = set.claim().unwrap();
        c.closed.store(true, Ordering::Relaxed);
        set.reap(Duration::from_secs(4));
        assert_eq!(set.len(), 1, "closed connection dropped");
        drop(slot);
        tokio::time::advance(Duration::from_secs(5)).await;
        set.reap(Duration::from_secs(4));
        assert!(set.is_empty(), "idle connection dropped");
    }
}
