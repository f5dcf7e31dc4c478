//! HTTP/2 keep-alive, for both sides of the proxy (pooled upstream connections, downstream
//! client connections): a PING every interval, and a peer that does not acknowledge it within the
//! timeout is taken as gone — a half-open TCP connection would otherwise hold its streams (and
//! their clients) until the kernel gives up, which can take many minutes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Why an HTTP/2 connection (either side's) ended other than cleanly.
#[derive(Debug, thiserror::Error)]
pub enum H2ConnError {
    #[error(transparent)]
    H2(#[from] h2::Error),
    #[error("no PING acknowledgement within {0:?}")]
    KeepAliveTimeout(Duration),
}

pub struct KeepAlive {
    ping: h2::PingPong,
    timer: Pin<Box<Sleep>>,
    outstanding: bool,
    interval: Duration,
    timeout: Duration,
}

impl KeepAlive {
    pub fn new(ping: h2::PingPong, interval: Duration, timeout: Duration) -> Self {
        KeepAlive {
            ping,
            timer: Box::pin(tokio::time::sleep(interval)),
            outstanding: false,
            interval,
            timeout,
        }
    }

    /// Pending while the peer keeps answering; polled with the connection it belongs to.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<H2ConnError> {
        if self.outstanding {
            if let Poll::Ready(r) = self.ping.poll_pong(cx) {
                if let Err(e) = r {
                    return Poll::Ready(e.into());
                }
                self.outstanding = false;
                self.timer.as_mut().reset(Instant::now() + self.interval);
            }
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            if self.outstanding {
                return Poll::Ready(H2ConnError::KeepAliveTimeout(self.timeout));
            }
            if let Err(e) = self.ping.send_ping(h2::Ping::opaque()) {
                return Poll::Ready(e.into());
            }
            self.outstanding = true;
            self.timer.as_mut().reset(Instant::now() + self.timeout);
            // Registers the new deadline with the timer.
            let _ = self.timer.as_mut().poll(cx);
        }
        Poll::Pending
    }
}
