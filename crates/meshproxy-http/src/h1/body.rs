//! The response body, read off its connection as the downstream asks for it.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use super::request::Outgoing;
use super::response::{decode_chunked, Decoded, Framing};
use super::{H1Conn, H1Error, Io, Recycle, Upgraded, READ_SIZE};

enum BodyState<C> {
    Reading(H1Conn<C>, Framing),
    Upgraded(H1Conn<C>),
    Done,
}

/// A response body read off its connection as the downstream asks for it. When it ends cleanly
/// (and the request has been sent in full) the connection goes back to the pool; if it is
/// dropped early or fails, the connection closes.
pub struct H1Body<C> {
    state: BodyState<C>,
    /// The rest of the request body, still being sent (boxed: rare, and large).
    out: Option<Box<Outgoing>>,
    reusable: bool,
    recycle: Option<Arc<dyn Recycle<C>>>,
}

impl<C: Io> H1Body<C> {
    pub(super) fn upgraded(conn: H1Conn<C>) -> Self {
        H1Body { state: BodyState::Upgraded(conn), out: None, reusable: false, recycle: None }
    }

    /// The body of a response with `framing` on `conn`, still sending `out`; ended at once (and
    /// the connection pooled) if there is nothing to read.
    pub(super) fn reading(
        conn: H1Conn<C>,
        framing: Framing,
        out: Option<Box<Outgoing>>,
        reusable: bool,
        recycle: Arc<dyn Recycle<C>>,
    ) -> Self {
        let mut body =
            H1Body { state: BodyState::Reading(conn, framing), out, reusable, recycle: Some(recycle) };
        body.settle();
        body
    }

    /// The connection of a 101 response, with any bytes already read past its head.
    pub fn take_upgraded(&mut self) -> Option<Upgraded<C>> {
        match std::mem::replace(&mut self.state, BodyState::Done) {
            BodyState::Upgraded(conn) => Some(conn.into_upgraded()),
            other => {
                self.state = other;
                None
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    pub fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Reading(_, Framing::Length(n)) => SizeHint::with_exact(*n),
            BodyState::Reading(..) => SizeHint::default(),
            _ => SizeHint::with_exact(0),
        }
    }

    /// Ends the body if its framing says there is nothing (left) to read, pooling the
    /// connection when it can carry another request.
    fn settle(&mut self) {
        if !matches!(self.state, BodyState::Reading(_, Framing::Done)) {
            return;
        }
        let BodyState::Reading(mut conn, _) = std::mem::replace(&mut self.state, BodyState::Done) else {
            return;
        };
        // An idle connection keeps no large read buffer from a large response.
        if conn.rbuf.capacity() > READ_SIZE {
            conn.rbuf = BytesMut::new();
        }
        // Bytes past the end of the response were never asked for: the connection is out of step.
        if self.reusable && self.out.is_none() && conn.rbuf.is_empty() {
            if let Some(recycle) = self.recycle.take() {
                recycle.recycle(conn);
            }
        }
    }

    /// Sends more of the request body, if some is left (never waits: the socket's and the
    /// body's wakers are registered for the next poll).
    fn send_rest(&mut self, cx: &mut Context<'_>) -> Result<(), H1Error> {
        let (Some(out), BodyState::Reading(conn, _)) = (self.out.as_mut(), &mut self.state) else {
            return Ok(());
        };
        let mut written = true;
        out.poll_send(&mut conn.io, cx, &mut written)?;
        if out.done() {
            self.out = None;
        }
        Ok(())
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let polled = self.poll_inner(cx);
        match &polled {
            Poll::Ready(Some(Err(_))) => self.state = BodyState::Done,
            Poll::Ready(_) => self.settle(),
            Poll::Pending => {}
        }
        polled
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        if let Err(e) = self.send_rest(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        let BodyState::Reading(conn, framing) = &mut self.state else { return Poll::Ready(None) };
        loop {
            match framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if !conn.rbuf.is_empty() {
                        let n = conn.rbuf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= n as u64;
                        if *left == 0 {
                            *framing = Framing::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(conn.rbuf.split_to(n).freeze()))));
                    }
                }
                Framing::Eof => {
                    if !conn.rbuf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(conn.rbuf.split().freeze()))));
                    }
                }
                Framing::Chunked(chunk) => match decode_chunked(&mut conn.rbuf, chunk)? {
                    Decoded::Frame(frame) => {
                        if frame.is_trailers() {
                            *framing = Framing::Done;
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Decoded::End => {
                        *framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    Decoded::NeedMore => {}
                },
            }
            match conn.poll_read(cx) {
                Poll::Ready(Ok(0)) if *framing == Framing::Eof => {
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(Some(Err(H1Error::Incomplete))),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
