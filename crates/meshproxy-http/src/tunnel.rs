//! Byte splicing between two connections (upgraded HTTP connections, opaque TCP): both
//! directions at once, a half-close on one side passed to the other, an idle timeout on the
//! pair, and the owner's drain signal.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Drain;

/// Bytes moved `a → b` and `b → a`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Live byte counters of a tunnel (metrics read them while it runs).
#[derive(Debug, Default)]
pub struct Counters {
    pub a_to_b: AtomicU64,
    pub b_to_a: AtomicU64,
}

/// Copies both ways until both sides have closed, no byte moved for `idle`, or a forced drain.
pub async fn splice<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    mut drain: watch::Receiver<Drain>,
    counters: &Counters,
) -> io::Result<Moved>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = Arc::new(AtomicU64::new(0));
    let base = Instant::now();
    let mut a = Touched { inner: a, last: last.clone(), base, read: &counters.a_to_b };
    let mut b = Touched { inner: b, last: last.clone(), base, read: &counters.b_to_a };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let check = tokio::time::sleep(idle);
    tokio::pin!(check);
    loop {
        tokio::select! {
            r = &mut copy => return r.map(|(a_to_b, b_to_a)| Moved { a_to_b, b_to_a }),
            _ = &mut check => {
                let at = base + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                if at <= Instant::now() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "tunnel idle timeout"));
                }
                check.as_mut().reset(at);
            }
            changed = drain.changed() => {
                if changed.is_err() || *drain.borrow() == Drain::Force {
                    return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "proxy closing"));
                }
            }
        }
    }
}

/// Records the time of the last byte read (for the idle timeout) and counts bytes read.
struct Touched<'a, IO> {
    inner: &'a mut IO,
    last: Arc<AtomicU64>,
    base: Instant,
    read: &'a AtomicU64,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Touched<'_, IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.last.store(this.base.elapsed().as_millis() as u64, Ordering::Relaxed);
            this.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Touched<'_, IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let (_tx, rx) = watch::channel(Drain::Run);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let task = tokio::spawn(async move { splice(&mut a, &mut b, Duration::from_secs(5), rx, &c).await });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping", "client's half-close reached the server");
        server.write_all(b"pong").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong", "the other direction still worked after the half-close");
        assert_eq!(task.await.unwrap().unwrap(), Moved { a_to_b: 4, b_to_a: 4 });
        assert_eq!(counters.a_to_b.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_pairs_are_closed() {
        let (_client, mut a) = tokio::io::duplex(64);
        let (mut b, _server) = tokio::io::duplex(64);
        let (_tx, rx) = watch::channel(Drain::Run);
        let err = splice(&mut a, &mut b, Duration::from_secs(3), rx, &Counters::default()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
