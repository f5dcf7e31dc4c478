//! A route's idle timeout (`idleTimeout`): an exchange during which no bytes move either way —
//! no request body from the client, no response head or body from the upstream — for that long
//! is ended. One [`IdleClock`] per request holds when bytes last moved; the request body stamps
//! it as the client's frames arrive (`meshproxy_http::body::RequestBody::watched`), the response
//! as the upstream's head and frames arrive. One timer per phase reads it: before the response
//! head the attempt's timer (shared with the route's `timeout`), after it the body's
//! ([`BodyIdle`]). A timer is set for the deadline the clock gives when it is armed; when it
//! fires and bytes moved meanwhile, it is set again for the new deadline. So activity costs a
//! clock read and a store per frame, and never a timer operation.
//!
//! Routes without an idle timeout have no clock: none of this runs for them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

pub use meshproxy_http::idle::IdleClock;

use crate::error::ProxyError;

/// The earlier of a fixed deadline (the route's `timeout`, an attempt's) and the idle clock's.
#[inline]
pub fn earliest(fixed: Option<Instant>, idle: Option<&IdleClock>) -> Option<Instant> {
    match (fixed, idle.map(IdleClock::deadline)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Ready once `fixed` has passed or the exchange has been idle for its timeout. `timer` is set
/// for [`earliest`]`(fixed, idle)` or earlier; when it fires before the deadline (bytes moved
/// since it was set) it is set again for the deadline.
pub fn poll_expired(
    mut timer: Pin<&mut Sleep>,
    fixed: Option<Instant>,
    idle: Option<&IdleClock>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        match earliest(fixed, idle) {
            Some(at) if at > Instant::now() => timer.as_mut().reset(at),
            _ => return Poll::Ready(()),
        }
    }
}

pin_project! {
    /// The idle timer of a response body, from its head on: polled when the body has nothing
    /// to give, so a body that keeps yielding frames never touches it.
    pub struct BodyIdle {
        clock: Arc<IdleClock>,
        // End an idle response with DEADLINE_EXCEEDED trailers instead of an error (a gRPC
        // response to an HTTP/2 client, see `BodyIdle::grpc_trailers`).
        grpc_trailers: bool,
        #[pin]
        timer: Sleep,
    }
}

impl BodyIdle {
    /// The response head arrived (bytes moved): the timer starts from now.
    pub fn start(clock: Arc<IdleClock>, grpc_trailers: bool) -> Pin<Box<Self>> {
        clock.touch();
        let timer = tokio::time::sleep_until(clock.deadline());
        Box::pin(BodyIdle { clock, grpc_trailers, timer })
    }

    /// After each poll of the body: `moved` when it yielded something (a frame, its end or an
    /// error). True when the exchange has been idle for its timeout.
    #[inline]
    pub fn expired(self: Pin<&mut Self>, moved: bool, cx: &mut Context<'_>) -> bool {
        let this = self.project();
        if moved {
            this.clock.touch();
            return false;
        }
        poll_expired(this.timer, None, Some(this.clock), cx).is_ready()
    }

    /// Whether an idle response ends with gRPC trailers: the client is a gRPC client over
    /// HTTP/2, which always carries trailers, and the response announced no length (a
    /// `content-length` cut short would be a broken message, whatever follows it).
    pub fn grpc_trailers(&self) -> bool {
        self.grpc_trailers
    }
}

/// The trailers that end an idle gRPC response: DEADLINE_EXCEEDED, as the proxy answers a gRPC
/// call whose response head does not arrive in time, and the `meshproxy-error` that says so.
pub fn deadline_exceeded_trailers() -> HeaderMap {
    let e = ProxyError::UpstreamTimeout;
    let mut t = HeaderMap::with_capacity(3);
    t.insert(HeaderName::from_static("grpc-status"), HeaderValue::from_static(e.grpc_status()));
    t.insert(HeaderName::from_static("grpc-message"), HeaderValue::from_static(IDLE_MESSAGE));
    t.insert(HeaderName::from_static("meshproxy-error"), HeaderValue::from_static(e.as_str()));
    t
}

/// `grpc-message` of an idle gRPC response (printable ASCII without `%`: no percent-encoding).
pub const IDLE_MESSAGE: &str = "meshproxy: the stream was idle for the route's idle timeout";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const IDLE: Duration = Duration::from_millis(300);

    /// Polls `f` once with a no-op waker.
    fn poll_once<T>(f: impl FnOnce(&mut Context<'_>) -> T) -> T {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        f(&mut cx)
    }

    #[tokio::test(start_paused = true)]
    async fn an_exchange_with_no_activity_expires_after_the_idle_timeout() {
        let clock = IdleClock::new(IDLE);
        let start = Instant::now();
        let mut timer = std::pin::pin!(tokio::time::sleep_until(earliest(None, Some(&clock)).unwrap()));
        tokio::time::advance(IDLE - Duration::from_millis(1)).await;
        assert!(poll_once(|cx| poll_expired(timer.as_mut(), None, Some(&clock), cx)).is_pending());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(poll_once(|cx| poll_expired(timer.as_mut(), None, Some(&clock), cx)).is_ready());
        assert_eq!(Instant::now() - start, IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_moves_the_deadline_and_the_timer_is_set_again_only_when_it_fires() {
        let clock = IdleClock::new(IDLE);
        let start = Instant::now();
        let mut timer = std::pin::pin!(tokio::time::sleep_until(clock.deadline()));
        // Bytes every 100 ms for a second: never idle. The timer fires at 300, 600 and 900 ms
        // and is set again each time for 300 ms after the last bytes; touches in between leave
        // it alone.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(100)).await;
            clock.touch();
            assert!(poll_once(|cx| poll_expired(timer.as_mut(), None, Some(&clock), cx)).is_pending());
        }
        assert_eq!(
            timer.deadline(),
            start + Duration::from_millis(900) + IDLE,
            "set when it fired at 900 ms"
        );
        // Then silence: it expires one idle timeout after the last bytes (at 1000 ms).
        tokio::time::advance(IDLE - Duration::from_millis(1)).await;
        assert!(poll_once(|cx| poll_expired(timer.as_mut(), None, Some(&clock), cx)).is_pending());
        assert_eq!(timer.deadline(), start + Duration::from_millis(1000) + IDLE);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(poll_once(|cx| poll_expired(timer.as_mut(), None, Some(&clock), cx)).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn the_fixed_deadline_wins_when_it_comes_first_even_with_activity() {
        let clock = IdleClock::new(IDLE);
        let at = Instant::now() + Duration::from_millis(450);
        let fixed = Some(at);
        let mut timer = std::pin::pin!(tokio::time::sleep_until(earliest(fixed, Some(&clock)).unwrap()));
        tokio::time::advance(Duration::from_millis(200)).await;
        clock.touch();
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(poll_once(|cx| poll_expired(timer.as_mut(), fixed, Some(&clock), cx)).is_pending());
        assert_eq!(timer.deadline(), at, "set for the fixed deadline, before the idle one");
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(poll_once(|cx| poll_expired(timer.as_mut(), fixed, Some(&clock), cx)).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_yielding_stays_alive_and_a_silent_one_expires() {
        let clock = Arc::new(IdleClock::new(IDLE));
        let mut body = BodyIdle::start(clock.clone(), false);
        let start = Instant::now();
        for _ in 0..8 {
            tokio::time::advance(Duration::from_millis(250)).await;
            assert!(!poll_once(|cx| body.as_mut().expired(false, cx)), "250 ms of silence is not idle");
            assert!(!poll_once(|cx| body.as_mut().expired(true, cx)));
        }
        // The request side moving counts too.
        tokio::time::advance(Duration::from_millis(250)).await;
        clock.touch();
        tokio::time::advance(Duration::from_millis(250)).await;
        assert!(!poll_once(|cx| body.as_mut().expired(false, cx)), "the request body moved 250 ms ago");
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(poll_once(|cx| body.as_mut().expired(false, cx)));
        assert_eq!(Instant::now() - start, Duration::from_millis(2000 + 250 + 300));
    }
}
