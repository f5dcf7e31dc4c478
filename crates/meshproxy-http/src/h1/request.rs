//! The request on its way upstream: the head encoded once into the connection's buffer, then the
//! body framed by `content-length` or chunked, written as the socket takes it.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::header;
use http::request::Parts;
use http_body::Body;
use tokio::io::AsyncWrite;

use super::{is_reset, H1Error};
use crate::body::RequestBody;

/// `name: value` lines, as a head or a trailer section has them.
fn put_fields(buf: &mut Vec<u8>, fields: &http::HeaderMap) {
    for (name, value) in fields {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
}

/// The request on its way out: the encoded head, then the body framed by `content-length` or
/// chunked.
pub(super) struct Outgoing {
    pub(super) head: Vec<u8>,
    pub(super) head_sent: usize,
    queue: VecDeque<Bytes>,
    pub(super) body: Option<RequestBody>,
    chunked: bool,
}

impl Outgoing {
    pub(super) fn new(head: &Parts, body: RequestBody, mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.extend_from_slice(head.method.as_str().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(head.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        put_fields(&mut buf, &head.headers);
        let mut chunked = false;
        let body = match body {
            b if b.is_end_stream() => None,
            b => {
                // A client's `content-length` travels as it is (the downstream side holds the
                // body to it); otherwise an exact size becomes one, and anything else is chunked.
                if !head.headers.contains_key(header::CONTENT_LENGTH) {
                    match b.size_hint().exact() {
                        Some(n) => {
                            buf.extend_from_slice(b"content-length: ");
                            buf.extend_from_slice(n.to_string().as_bytes());
                            buf.extend_from_slice(b"\r\n");
                        }
                        None => {
                            buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
                            chunked = true;
                        }
                    }
                }
                Some(b)
            }
        };
        buf.extend_from_slice(b"\r\n");
        Outgoing { head: buf, head_sent: 0, queue: VecDeque::new(), body, chunked }
    }

    pub(super) fn done(&self) -> bool {
        self.head_sent == self.head.len() && self.queue.is_empty() && self.body.is_none()
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.queue.push_back(b);
        }
    }

    /// Writes what is queued and takes more of the body while there is room. True if it made
    /// progress (the caller loops).
    pub(super) fn poll_send(
        &mut self,
        io: &mut (impl AsyncWrite + Unpin),
        cx: &mut Context<'_>,
        written: &mut bool,
    ) -> Result<bool, H1Error> {
        let mut progress = false;
        while self.head_sent < self.head.len() {
            match Pin::new(&mut *io).poll_write(cx, &self.head[self.head_sent..]) {
                Poll::Ready(Ok(0)) => return Err(H1Error::Io(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *written = true;
                    progress = true;
                    self.head_sent += n;
                }
                Poll::Ready(Err(e)) if !*written && is_reset(&e) => {
                    return Err(H1Error::ClosedBeforeResponse)
                }
                Poll::Ready(Err(e)) => return Err(e.into()),
                Poll::Pending => return Ok(progress),
            }
        }
        loop {
            while !self.queue.is_empty() {
                let mut slices = [IoSlice::new(&[]); 16];
                let n = self.queue.iter().zip(slices.iter_mut()).map(|(b, s)| *s = IoSlice::new(b)).count();
                match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]) {
                    Poll::Ready(Ok(0)) => return Err(H1Error::Io(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(mut n)) => {
                        *written = true;
                        progress = true;
                        while n > 0 {
                            let front = &mut self.queue[0];
                            if n >= front.len() {
                                n -= front.len();
                                self.queue.pop_front();
                            } else {
                                front.advance(n);
                                n = 0;
                            }
                        }
                    }
                    Poll::Ready(Err(e)) if !*written && is_reset(&e) => {
                        return Err(H1Error::ClosedBeforeResponse)
                    }
                    Poll::Ready(Err(e)) => return Err(e.into()),
                    Poll::Pending => return Ok(progress),
                }
            }
            // Backpressure: the body is polled again only once the socket took all of the last
            // frame.
            let Some(body) = self.body.as_mut() else { return Ok(progress) };
            match Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Ok(progress),
                Poll::Ready(Some(Err(e))) => return Err(H1Error::RequestBody(e)),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if self.chunked => {
                        if !data.is_empty() {
                            self.push(Bytes::from(format!("{:x}\r\n", data.len())));
                            self.push(data);
                            self.push(Bytes::from_static(b"\r\n"));
                        }
                    }
                    Ok(data) => self.push(data),
                    Err(frame) => {
                        // Trailers: sent with a chunked body; a content-length one has no room.
                        if let (true, Ok(trailers)) = (self.chunked, frame.into_trailers()) {
                            let mut t = b"0\r\n".to_vec();
                            put_fields(&mut t, &trailers);
                            t.extend_from_slice(b"\r\n");
                            self.push(Bytes::from(t));
                            self.chunked = false;
                            self.body = None;
                        }
                    }
                },
                Poll::Ready(None) => {
                    if self.chunked {
                        self.push(Bytes::from_static(b"0\r\n\r\n"));
                    }
                    self.body = None;
                }
            }
            progress = true;
        }
    }
}
