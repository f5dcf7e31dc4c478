//! Protocol detection on a downstream connection, as Linkerd does: read the first bytes and
//! decide between HTTP/2 (the client connection preface, "prior knowledge" h2c), HTTP/1.x (a
//! method token and a space), or something else. The bytes read are replayed to whoever serves
//! the connection ([`PrefixedIo`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// RFC 9113 §3.4.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    /// Not HTTP, or nothing arrived before the timeout (server-speaks-first protocols).
    Opaque,
}

/// What the first bytes say, or `None` if more bytes are needed to tell.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    // An HTTP/1 request line starts with a method token followed by a space.
    match buf.iter().position(|&b| b == b' ') {
        Some(0) => Some(Detected::Opaque),
        Some(i) => {
            Some(if buf[..i].iter().all(|&b| is_tchar(b)) { Detected::Http1 } else { Detected::Opaque })
        }
        None if buf.len() > 24 || !buf.iter().all(|&b| is_tchar(b)) => Some(Detected::Opaque),
        None => None,
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads until the protocol is known or `timeout` passes. Returns what was read with the verdict.
pub async fn sniff<IO: AsyncRead + Unpin>(io: &mut IO, timeout: Duration) -> io::Result<(Detected, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            if io.read_buf(&mut buf).await? == 0 {
                // EOF before a verdict: let the HTTP/1 parser report whatever this was.
                return Ok::<_, io::Error>(classify(&buf).unwrap_or(Detected::Http1));
            }
            if let Some(d) = classify(&buf) {
                return Ok(d);
            }
        }
    };
    let verdict = match tokio::time::timeout(timeout, read).await {
        Ok(r) => r?,
        Err(_) => Detected::Opaque,
    };
    Ok((verdict, buf.freeze()))
}

/// An IO that first yields bytes already read from it.
pub struct PrefixedIo<IO> {
    prefix: Bytes,
    inner: IO,
}

impl<IO> PrefixedIo<IO> {
    pub fn new(prefix: Bytes, inner: IO) -> Self {
        PrefixedIo { prefix, inner }
    }

    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for PrefixedIo<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None, "a preface prefix needs more bytes");
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Detected::Opaque), "TLS ClientHello");
        assert_eq!(classify(b"\x00\x00\x00\x01"), Some(Detected::Opaque));
        assert_eq!(classify(b" GET"), Some(Detected::Opaque));
    }

    proptest! {
        #[test]
        fn never_needs_more_than_the_preface(bytes in proptest::collection::vec(any::<u8>(), 25..64)) {
            prop_assert!(classify(&bytes).is_some());
        }
    }

    #[tokio::test]
    async fn replays_what_it_read() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (d, prefix) = sniff(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(d, Detected::Http1);
        drop(client);
        let mut io = PrefixedIo::new(prefix, server);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_opaque() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (d, prefix) = sniff(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!((d, prefix.len()), (Detected::Opaque, 0));
    }
}
