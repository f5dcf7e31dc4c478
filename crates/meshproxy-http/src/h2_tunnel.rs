//! A client's HTTP/2 stream as a byte stream, for `CONNECT` tunnels and WebSockets over HTTP/2
//! (RFC 8441): DATA frames in, DATA frames out, END_STREAM as the half-close.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// The client's side of a tunnel before the response that opens it is sent.
pub struct PendingTunnel {
    recv: h2::RecvStream,
    send: oneshot::Receiver<h2::SendStream<Bytes>>,
}

impl PendingTunnel {
    pub(crate) fn new(recv: h2::RecvStream, send: oneshot::Receiver<h2::SendStream<Bytes>>) -> Self {
        PendingTunnel { recv, send }
    }

    /// Waits for the 2xx to be sent (see `h2_server`).
    pub async fn open(self) -> io::Result<H2Io> {
        let send = self
            .send
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the tunnel's 2xx was never sent"))?;
        Ok(H2Io { send, recv: self.recv, buf: Bytes::new() })
    }
}

pub struct H2Io {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    /// Received, not yet read.
    buf: Bytes,
}

fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io().unwrap_or_else(|| io::Error::other("h2 I/O error"))
    } else {
        io::Error::other(e)
    }
}

impl AsyncRead for H2Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.buf.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.buf = data,
                None => return Poll::Ready(Ok(())),
                // A client that cancels its tunnel is closing it, not failing it.
                Some(Err(e)) if matches!(e.reason(), Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL)) => {
                    return Poll::Ready(Ok(()))
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        // Window back as the bytes are taken, so the client sends at the pace they are consumed.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.get_mut().send;
        // Only what the client's window allows is taken, so nothing piles up in h2's buffers.
        send.reserve_capacity(buf.len());
        loop {
            let n = send.capacity().min(buf.len());
            if n > 0 {
                send.send_data(Bytes::copy_from_slice(&buf[..n]), false).map_err(io_error)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Handed to h2 is as far as a stream can flush; the connection writes it.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().send.send_data(Bytes::new(), true).map_err(io_error))
    }
}
