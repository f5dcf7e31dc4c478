//! What a downstream connection is doing, for its timeouts: bytes of a new request head arriving
//! (the header-read timeout runs), a request in progress (no timeout), or nothing (the idle
//! timeout runs). The listener notes reads; the request path marks requests in progress for as
//! long as their responses last ([`ActivityGuard`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::compile::ListenerLimits;

const IDLE: u8 = 0;
/// Bytes of a new HTTP/1 request head are arriving.
const HEAD: u8 = 1;
const BUSY: u8 = 2;

/// What a downstream connection is doing, for its timeouts.
pub struct Activity {
    phase: AtomicU8,
    /// HTTP/2: frames (PINGs, SETTINGS) arrive without meaning a request is starting, and
    /// headers arrive whole; only the idle timeout applies, when no stream is open.
    multiplexed: AtomicBool,
    busy: AtomicU32,
    /// When the current phase began, in ms since `base`.
    since_ms: AtomicU64,
    base: Instant,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            phase: AtomicU8::new(IDLE),
            multiplexed: AtomicBool::new(false),
            busy: AtomicU32::new(0),
            since_ms: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Marks a request in progress until the guard (held by the response body) drops.
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.phase.store(BUSY, Ordering::Release);
        ActivityGuard(self.clone())
    }

    pub fn multiplexed(&self) {
        self.multiplexed.store(true, Ordering::Release);
        if self.busy.load(Ordering::Acquire) == 0 {
            self.since_ms.store(self.now_ms(), Ordering::Release);
            self.phase.store(IDLE, Ordering::Release);
        }
    }

    pub fn on_read(&self) {
        if self.phase.load(Ordering::Acquire) == IDLE
            && !self.multiplexed.load(Ordering::Relaxed)
            && self.phase.compare_exchange(IDLE, HEAD, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.since_ms.store(self.now_ms(), Ordering::Release);
        }
    }

    /// None if the connection has overstayed its current phase; otherwise when to look again:
    /// that phase's deadline, and no later than the shorter timeout from now, since the phase
    /// may change before then (a head completes, a response ends and the connection idles).
    pub fn next_check(&self, limits: &ListenerLimits) -> Option<Instant> {
        let now = Instant::now();
        let soonest = now + limits.header_read_timeout.min(limits.idle_timeout);
        let limit = match self.phase.load(Ordering::Acquire) {
            IDLE => limits.idle_timeout,
            HEAD => limits.header_read_timeout,
            _ => return Some(soonest),
        };
        let since = self.base + Duration::from_millis(self.since_ms.load(Ordering::Acquire));
        let deadline = since + limit;
        (deadline > now).then_some(deadline.min(soonest))
    }
}

pub struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let a = &self.0;
        if a.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.since_ms.store(a.now_ms(), Ordering::Release);
            a.phase.store(IDLE, Ordering::Release);
        }
    }
}
