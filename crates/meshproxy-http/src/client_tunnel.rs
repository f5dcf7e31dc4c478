//! The client's side of a tunnel (`CONNECT`, an HTTP/1.1 `Upgrade`, a WebSocket over HTTP/2),
//! whichever server the request came through: an HTTP/1.1 connection hyper hands over after the
//! response, or an HTTP/2 stream (`crate::h2_server`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::RequestBody;
use crate::h2_tunnel::{H2Io, PendingTunnel};

pub enum ClientTunnel {
    Http1(hyper::upgrade::OnUpgrade),
    H2(PendingTunnel),
}

impl ClientTunnel {
    /// Takes the tunnel out of the request (for HTTP/2, the request's stream is its body).
    pub fn take(req: &mut Request<RequestBody>) -> Self {
        match std::mem::replace(req.body_mut(), RequestBody::Empty) {
            RequestBody::H2Tunnel(pending) => ClientTunnel::H2(pending),
            body => {
                *req.body_mut() = body;
                ClientTunnel::Http1(hyper::upgrade::on(req))
            }
        }
    }

    /// Resolves once the response that opens the tunnel has been sent.
    pub async fn open(self) -> io::Result<ClientIo> {
        match self {
            ClientTunnel::Http1(on) => {
                on.await.map(|up| ClientIo::Http1(TokioIo::new(up))).map_err(io::Error::other)
            }
            ClientTunnel::H2(pending) => pending.open().await.map(ClientIo::H2),
        }
    }
}

pub enum ClientIo {
    Http1(TokioIo<hyper::upgrade::Upgraded>),
    H2(H2Io),
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Http1(io) => Pin::new(io).poll_read(cx, buf),
            ClientIo::H2(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Http1(io) => Pin::new(io).poll_write(cx, buf),
            ClientIo::H2(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Http1(io) => Pin::new(io).poll_flush(cx),
            ClientIo::H2(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Http1(io) => Pin::new(io).poll_shutdown(cx),
            ClientIo::H2(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}
