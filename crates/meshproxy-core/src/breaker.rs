//! Circuit breaking per service, as Envoy's thresholds do it: at most `max_requests` requests to
//! the service's endpoints at once, and at most `max_pending` of them waiting for an endpoint's
//! in-flight slot. A request past either limit is refused at once (503 `overloaded`) instead of
//! queueing, and counted as an overflow; it never counts against an endpoint.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::ProxyError;
use crate::metrics::ServiceMetrics;
use crate::upstream::Endpoint;
use meshproxy_upstream::Queued;
use tokio::sync::OwnedSemaphorePermit;

pub struct Breaker {
    max_requests: u32,
    max_pending: usize,
    active: AtomicU32,
    pending: AtomicUsize,
    /// Where overflows are counted.
    metrics: Arc<ServiceMetrics>,
}

/// A request counted in its service's `max_requests` until dropped (with its response).
pub struct BreakerGuard(Arc<Breaker>);

impl Drop for BreakerGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The slots a request holds while it is in flight: its endpoint's, and its service's when the
/// service has a breaker. Held, not read: dropping it gives them back.
pub struct Admission {
    pub _permit: OwnedSemaphorePermit,
    pub _breaker: Option<BreakerGuard>,
}

impl Breaker {
    /// A breaker with these limits (0 = no limit), counting overflows in `metrics`.
    pub fn new(max_requests: u32, max_pending: u32, metrics: Arc<ServiceMetrics>) -> Self {
        Breaker {
            max_requests: if max_requests == 0 { u32::MAX } else { max_requests },
            max_pending: if max_pending == 0 { usize::MAX } else { max_pending as usize },
            active: AtomicU32::new(0),
            pending: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Admits a request to `endpoint`: a place under `max_requests`, then the endpoint's slot,
    /// waiting for it only while fewer than `max_pending` requests of the service wait.
    pub async fn admit(self: &Arc<Self>, endpoint: &Endpoint) -> Result<Admission, ProxyError> {
        if self.active.fetch_add(1, Ordering::AcqRel) >= self.max_requests {
            self.active.fetch_sub(1, Ordering::AcqRel);
            self.metrics.overflow_requests.fetch_add(1, Ordering::Relaxed);
            return Err(ProxyError::Overloaded);
        }
        let guard = BreakerGuard(self.clone());
        if let Some(permit) = endpoint.try_acquire() {
            return Ok(Admission { _permit: permit, _breaker: Some(guard) });
        }
        let Some(waiting) = Queued::enter(&self.pending, self.max_pending) else {
            self.metrics.overflow_pending.fetch_add(1, Ordering::Relaxed);
            return Err(ProxyError::Overloaded);
        };
        let permit = endpoint.acquire().await?;
        drop(waiting);
        Ok(Admission { _permit: permit, _breaker: Some(guard) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_give_back_their_place() {
        let b = Arc::new(Breaker::new(2, 0, Arc::default()));
        b.active.fetch_add(1, Ordering::AcqRel);
        let g = BreakerGuard(b.clone());
        assert_eq!(b.active.load(Ordering::Relaxed), 1);
        drop(g);
        assert_eq!(b.active.load(Ordering::Relaxed), 0);
        assert_eq!(Breaker::new(0, 0, Arc::default()).max_requests, u32::MAX, "0 = no limit");
    }
}
