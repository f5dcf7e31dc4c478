//! Message bodies as the protocol engines carry them: a client's request body (HTTP/1.1 via
//! hyper, an HTTP/2 stream), an HTTP/2 stream's incoming half, and the copy of a body into an
//! HTTP/2 stream. An upstream's response body is [`crate::upstream_body`]. All stream frame by frame (no buffering): one
//! side's flow control is the other's, which is what bounds memory.

use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::idle::IdleClock;

/// A request body as the client sends it, forwarded upstream frame by frame: from hyper's
/// HTTP/1.1 server or an HTTP/2 stream ([`crate::h2_server`]), or nothing (which lets a request be
/// re-sent on a fresh connection after a stale pooled one failed).
pub enum RequestBody {
    Empty,
    Http1(Incoming),
    H2(H2Body),
    /// An HTTP/2 `CONNECT`'s stream: taken by [`crate::client_tunnel::ClientTunnel`], never sent
    /// as a body.
    H2Tunnel(crate::h2_tunnel::PendingTunnel),
    /// A body read ahead (for a request that may be sent again): the chunks already read, then
    /// the rest, if the body was longer than what was read ahead.
    Buffered(Box<Buffered>),
    /// A body whose frames stamp an exchange's [`IdleClock`] (a route with an idle timeout).
    Watched(Box<Watched>),
}

/// A client's body that stamps `clock` with every frame (and its end or failure) it yields.
pub struct Watched {
    body: RequestBody,
    clock: Arc<IdleClock>,
}

impl RequestBody {
    /// `self`, stamping `clock` as its frames arrive; an ended body is left as it is (nothing
    /// more moves).
    pub fn watched(self, clock: &Arc<IdleClock>) -> RequestBody {
        if self.is_end_stream() {
            return self;
        }
        RequestBody::Watched(Box::new(Watched { body: self, clock: clock.clone() }))
    }
}

/// A request body read ahead: its chunks and trailers when it was read whole (and can be sent
/// again, [`Buffered::replay`]), or the first chunks followed by the rest of the client's body.
pub struct Buffered {
    chunks: std::collections::VecDeque<Bytes>,
    trailers: Option<http::HeaderMap>,
    rest: Option<RequestBody>,
}

impl Buffered {
    /// Reads `body` ahead up to `limit` bytes. Whole: a body that can be replayed. Longer: the
    /// chunks read and the rest, to be sent once.
    pub async fn read(mut body: RequestBody, limit: usize) -> Result<Buffered, ClientBodyError> {
        let mut chunks = std::collections::VecDeque::new();
        let mut len = 0;
        let mut trailers = None;
        let mut ended = body.is_end_stream();
        while !ended && len <= limit {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => ended = true,
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        len += data.len();
                        if !data.is_empty() {
                            chunks.push_back(data);
                        }
                        ended = body.is_end_stream();
                    }
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        ended = true;
                    }
                },
            }
        }
        let whole = ended && len <= limit;
        Ok(Buffered { chunks, trailers, rest: (!whole).then_some(body) })
    }

    /// `body` with nothing read ahead: sent once, never replayed.
    pub fn unread(body: RequestBody) -> Buffered {
        Buffered { chunks: std::collections::VecDeque::new(), trailers: None, rest: Some(body) }
    }

    /// True when the whole body was read, so [`Buffered::replay`] gives it again.
    pub fn is_whole(&self) -> bool {
        self.rest.is_none()
    }

    /// Bytes read ahead.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole body again, for another attempt (`Bytes` clones share their memory). None if
    /// the body was not read whole.
    pub fn replay(&self) -> Option<RequestBody> {
        self.is_whole().then(|| {
            RequestBody::Buffered(Box::new(Buffered {
                chunks: self.chunks.clone(),
                trailers: self.trailers.clone(),
                rest: None,
            }))
        })
    }

    /// Sends it once: what was read ahead, then the rest.
    pub fn into_body(self) -> RequestBody {
        RequestBody::Buffered(Box::new(self))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if let Some(data) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    /// Exact when the length is known: what is left of the chunks plus the rest's exact length.
    /// Trailers need chunked framing, so a body with trailers has no exact length.
    fn size_hint(&self) -> SizeHint {
        if self.trailers.is_some() {
            return SizeHint::default();
        }
        let rest = match &self.rest {
            None => 0,
            Some(r) => match r.size_hint().exact() {
                Some(n) => n,
                None => return SizeHint::default(),
            },
        };
        SizeHint::with_exact(self.len() as u64 + rest)
    }
}

/// How a client's request body can break off.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error(transparent)]
    Http1(#[from] hyper::Error),
    #[error(transparent)]
    H2(#[from] h2::Error),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            RequestBody::Empty | RequestBody::H2Tunnel(_) => Poll::Ready(None),
            RequestBody::Http1(b) => Pin::new(b).poll_frame(cx).map_err(ClientBodyError::from),
            RequestBody::H2(b) => b.poll_frame(cx).map_err(ClientBodyError::from),
            RequestBody::Buffered(b) => b.poll_frame(cx),
            RequestBody::Watched(w) => {
                let polled = Pin::new(&mut w.body).poll_frame(cx);
                if polled.is_ready() {
                    w.clock.touch();
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty | RequestBody::H2Tunnel(_) => true,
            RequestBody::Http1(b) => b.is_end_stream(),
            RequestBody::H2(b) => b.is_end_stream(),
            RequestBody::Buffered(b) => b.is_end_stream(),
            RequestBody::Watched(w) => w.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty | RequestBody::H2Tunnel(_) => SizeHint::with_exact(0),
            RequestBody::Http1(b) => b.size_hint(),
            RequestBody::H2(b) => b.size_hint(),
            RequestBody::Buffered(b) => b.size_hint(),
            RequestBody::Watched(w) => w.body.size_hint(),
        }
    }
}

/// An HTTP/2 stream's incoming half as a body (an upstream's response, a client's request): DATA
/// then trailers. Received bytes are released to the flow-control window as they are handed on,
/// so the sender sends at the pace the other side reads (h2 validates `content-length` against
/// the DATA received).
pub struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
    /// `recv.is_end_stream()` as of the last poll: asked several times per request, each a lock
    /// of h2's stream store.
    ended: bool,
    /// From `content-length`, counted down: what the downstream side announces.
    remaining: Option<u64>,
}

impl H2Body {
    pub fn new(recv: h2::RecvStream, headers: &http::HeaderMap) -> Self {
        let ended = recv.is_end_stream();
        let remaining = if ended {
            Some(0)
        } else {
            headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok())
        };
        H2Body { recv, data_done: false, ended, remaining }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.ended
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Only fails once the stream is gone, and then the next poll says so.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(n) = self.remaining.as_mut() {
                        *n = n.saturating_sub(data.len() as u64);
                    }
                    self.ended = self.recv.is_end_stream();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => self.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(t))) => {
                self.ended = true;
                Poll::Ready(Some(Ok(Frame::trailers(t))))
            }
            Poll::Ready(Ok(None)) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Copies a body into an HTTP/2 stream: a request body to an upstream (as its own task, started
/// only for requests that have a body: the response may arrive, and the request's task move on,
/// before the body ends — gRPC client streaming, or a server answering early), or a response
/// body to a client. A body that breaks off resets the stream with what `reason` says, so the
/// peer never takes it as complete.
pub async fn pipe_to_h2<B>(mut body: B, mut tx: h2::SendStream<Bytes>, reason: fn(&B::Error) -> h2::Reason)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    loop {
        // Backpressure: wait for some window before taking the next frame from the body (h2
        // buffers what exceeds the window, up to its send-buffer limit). A reset from the peer
        // (e.g. it answered without reading the body) ends the copy.
        let ready = std::future::poll_fn(|cx| {
            tx.reserve_capacity(1);
            if tx.capacity() == 0 {
                loop {
                    match tx.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(0))) => {}
                        Poll::Ready(Some(Ok(_))) => return Poll::Ready(true),
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(false),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
            match tx.poll_reset(cx) {
                Poll::Ready(_) => Poll::Ready(false),
                Poll::Pending => Poll::Ready(true),
            }
        })
        .await;
        if !ready {
            return;
        }
        let frame = std::future::poll_fn(|cx| {
            if tx.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            Pin::new(&mut body).poll_frame(cx).map(Some)
        })
        .await;
        let result = match frame {
            // Reset by the peer.
            None => return,
            // No more frames and no end sent yet: an empty DATA frame with END_STREAM.
            Some(None) => tx.send_data(Bytes::new(), true),
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    let eos = body.is_end_stream();
                    match tx.send_data(data, eos) {
                        Ok(()) if !eos => continue,
                        r => r,
                    }
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        tx.reserve_capacity(0);
                        tx.send_trailers(trailers)
                    }
                    Err(_) => continue,
                },
            },
            Some(Some(Err(e))) => {
                tracing::debug!(error = %e, "body failed; resetting the h2 stream");
                tx.send_reset(reason(&e));
                return;
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "h2 stream refused the body");
        }
        return;
    }
}
