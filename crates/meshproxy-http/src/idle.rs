//! When bytes last moved on one exchange, for a route's idle timeout: stamped by the client's
//! request body as it is read (possibly in another task: an HTTP/2 upstream's body is copied by
//! a task of its own) and by the response as it arrives; read by the timers that end an idle
//! exchange (`meshproxy-core`'s `proxy::idle`). Stamping is a clock read and a relaxed store: no
//! timer is touched per frame.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The last activity of one exchange and how long it may be idle.
#[derive(Debug)]
pub struct IdleClock {
    start: Instant,
    timeout: Duration,
    /// Nanoseconds from `start` to the last activity.
    last: AtomicU64,
}

impl IdleClock {
    /// A clock whose last activity is now.
    pub fn new(timeout: Duration) -> Self {
        IdleClock { start: Instant::now(), timeout, last: AtomicU64::new(0) }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Bytes moved now.
    #[inline]
    pub fn touch(&self) {
        let since = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(since, Ordering::Relaxed);
    }

    /// When the exchange will have been idle for its timeout, unless bytes move before.
    pub fn deadline(&self) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed)) + self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_the_last_touch_plus_the_timeout() {
        let clock = IdleClock::new(Duration::from_millis(300));
        let start = Instant::now();
        assert_eq!(clock.deadline(), start + Duration::from_millis(300));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(clock.deadline(), start + Duration::from_millis(300), "time alone does not move it");
        clock.touch();
        assert_eq!(clock.deadline(), start + Duration::from_millis(500));
    }
}
