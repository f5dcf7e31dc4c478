//! HTTP/1.1 `Upgrade` (WebSocket and friends): the request's `Upgrade`/`Connection: upgrade`
//! travel upstream; if the upstream answers 101, both connections are handed over by hyper and
//! bytes are spliced both ways until either side closes (half-closes propagate) or the tunnel is
//! idle for the listener's tunnel idle timeout. Any other answer is passed back as it is.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::listener::Drain;

/// The `Upgrade` token of an HTTP/1.1 upgrade request (`Connection` must name `upgrade`).
pub fn requested(version: http::Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != http::Version::HTTP_11 {
        return None;
    }
    let upgrade = headers.get(header::UPGRADE)?;
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    named.then(|| upgrade.clone())
}

/// Puts the upgrade back after hop-by-hop stripping (it is hop-by-hop, but this hop carries it).
pub fn restore(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::UPGRADE, upgrade);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Splices the two upgraded connections once both handovers complete.
pub fn splice(downstream: OnUpgrade, upstream: OnUpgrade, idle: Duration, mut drain: watch::Receiver<Drain>) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade handover failed");
                return;
            }
        };
        let last = Arc::new(AtomicU64::new(0));
        let base = Instant::now();
        let mut down = Touched { inner: TokioIo::new(down), last: last.clone(), base };
        let mut up = Touched { inner: TokioIo::new(up), last: last.clone(), base };
        let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
        tokio::pin!(copy);
        let check = tokio::time::sleep(idle);
        tokio::pin!(check);
        loop {
            tokio::select! {
                r = &mut copy => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "upgraded connection ended with an error");
                    }
                    return;
                }
                _ = &mut check => {
                    let at = base + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                    if at <= Instant::now() {
                        tracing::debug!("upgraded connection idle; closing");
                        return;
                    }
                    check.as_mut().reset(at);
                }
                changed = drain.changed() => {
                    if changed.is_err() || *drain.borrow() == Drain::Force {
                        return;
                    }
                }
            }
        }
    });
}

/// Records the time of the last byte moved, for the idle timeout.
struct Touched<IO> {
    inner: IO,
    last: Arc<AtomicU64>,
    base: Instant,
}

impl<IO> Touched<IO> {
    fn touch(&self) {
        self.last.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Touched<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Touched<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
