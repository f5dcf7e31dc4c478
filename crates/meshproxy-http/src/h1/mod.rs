//! HTTP/1.1 to upstreams: one request at a time on a pooled connection, driven by the request's
//! own task.
//!
//! hyper's client runs each connection as a task of its own and hands every request to it over
//! a channel, the response back over another, and the body through a third, with two task
//! switches per request (docs/performance.md has the measurement). Here the request's task writes
//! the head, reads the response head, and the response body reads the socket as the downstream
//! consumes it; an idle connection is a socket in the pool, with no task. Parsing is `httparse`'s
//! (the parser hyper uses); message framing follows RFC 9112 §6–7.
//!
//! The client is generic over its connection ([`Io`]): plain TCP today, TLS or an in-memory
//! duplex in tests. A connection whose exchange ended cleanly is handed to a [`Recycle`] hook
//! (the endpoint's pool); this module knows no endpoints.
//!
//! `request` encodes and sends the request, `response` parses heads and chunked framing (pure
//! functions over the read buffer), `body` reads the response body off the connection.
//!
//! While the response body is read, the rest of the request body is still sent (HTTP/1.1 is
//! full duplex, as hyper's client is): an upstream may answer before it has read the whole
//! request. A connection goes back to the pool only when both messages ended cleanly and the
//! upstream did not ask to close it.

mod body;
#[cfg(test)]
mod fuzz;
mod request;
mod response;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::BytesMut;
use http::header;
use http::request::Parts;
use http::{Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use body::H1Body;
use request::Outgoing;
use response::{parse_head, Framing, ResponseHead};

use crate::body::RequestBody;
use crate::detect::PrefixedIo;

/// A connection the HTTP/1.1 client can speak over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// True when an idle connection cannot carry a request: the peer closed it (EOF), reset it,
    /// or sent something unasked (a 408, say). Must not block, and should not make a system call
    /// unless the socket is readable.
    fn is_closed_idle(&self) -> bool;
}

impl Io for TcpStream {
    /// The readiness check is the reactor's state, no system call, unless it says readable.
    fn is_closed_idle(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            // Readiness can also be left over from the last read of the previous response.
            Poll::Ready(Ok(())) => {
                !matches!(self.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Poll::Ready(Err(_)) => true,
        }
    }
}

/// Where a connection goes when its exchange ended cleanly and it can carry another request.
pub trait Recycle<C: Io>: Send + Sync + 'static {
    fn recycle(&self, conn: H1Conn<C>);
}

/// A response head (status line and fields) larger than this is refused: hyper's client limit
/// was ~400 KB of buffer, nginx's `large_client_header_buffers` default is 4 × 8 KB.
const MAX_HEAD: usize = 64 * 1024;
/// Fields in a response head or a trailer section (hyper's limit).
const MAX_FIELDS: usize = 100;
/// How much room a read makes in the buffer, at first and at most.
const READ_SIZE: usize = 16 * 1024;
const MAX_READ_SIZE: usize = 256 * 1024;
/// A chunk-size line (with extensions) longer than this is malformed.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection before a response")]
    ClosedBeforeResponse,
    #[error("upstream closed the connection mid-response")]
    Incomplete,
    #[error("malformed response from upstream: {0}")]
    Malformed(&'static str),
    #[error("response head over {MAX_HEAD} bytes or {MAX_FIELDS} fields")]
    HeadTooLarge,
    #[error("request body failed: {0}")]
    RequestBody(crate::body::ClientBodyError),
    #[error("upstream answered 101 to a request that asked for no upgrade")]
    UnaskedUpgrade,
}

impl H1Error {
    /// True when the client, not the upstream, broke the exchange (bad framing of its request
    /// body, a body cut short): its request is malformed, whatever the upstream had read of it,
    /// and never the endpoint's failure.
    pub fn is_client(&self) -> bool {
        matches!(self, H1Error::RequestBody(_))
    }

    /// True when the upstream's response could not be parsed or framed (as opposed to the
    /// connection failing).
    pub fn is_protocol(&self) -> bool {
        matches!(self, H1Error::Malformed(_) | H1Error::HeadTooLarge | H1Error::UnaskedUpgrade)
    }
}

/// An HTTP/1.1 connection to an upstream, idle or carrying one exchange.
pub struct H1Conn<C> {
    io: C,
    /// Bytes read and not yet consumed.
    rbuf: BytesMut,
    /// The request head being written; kept between requests for its allocation.
    wbuf: Vec<u8>,
    read_size: usize,
}

/// What a failed exchange leaves for a retry on a fresh connection.
pub struct Failed {
    pub error: H1Error,
    /// The request body, when no byte of the request reached the socket (it can be re-sent
    /// whatever its method).
    pub unsent: Option<RequestBody>,
    /// True when the connection ended (EOF or reset) before any byte of a response: with an
    /// empty body and an idempotent method the request may be re-sent (RFC 9110 §9.2.2).
    pub no_response: bool,
}

impl<C: Io> H1Conn<C> {
    pub fn new(io: C) -> Self {
        H1Conn { io, rbuf: BytesMut::new(), wbuf: Vec::new(), read_size: READ_SIZE }
    }

    /// True when this idle connection cannot carry a request (see [`Io::is_closed_idle`]).
    pub fn is_closed(&self) -> bool {
        self.io.is_closed_idle()
    }

    /// Sends one request and waits for its final response head (1xx other than 101 are
    /// skipped). The connection travels with the response body, which hands it to `recycle`
    /// when both messages have ended and it can be reused.
    pub async fn send(
        mut self,
        head: &Parts,
        body: RequestBody,
        recycle: Arc<dyn Recycle<C>>,
    ) -> Result<Response<H1Body<C>>, Failed> {
        self.read_size = READ_SIZE;
        let mut out = Outgoing::new(head, body, std::mem::take(&mut self.wbuf));
        let mut written = false;
        let resp = std::future::poll_fn(|cx| self.poll_exchange(cx, &mut out, &mut written)).await;
        let resp = match resp {
            Ok(r) => r,
            Err(error) => {
                let no_response = matches!(error, H1Error::ClosedBeforeResponse);
                let unsent = if written { None } else { Some(out.body.take().unwrap_or(RequestBody::Empty)) };
                return Err(Failed { error, unsent, no_response });
            }
        };
        let ResponseHead { response, framing, keep_alive } = resp;
        if out.head_sent == out.head.len() {
            self.wbuf = std::mem::take(&mut out.head);
            out.head_sent = 0;
        }
        let framing = if head.method == Method::HEAD { Framing::Done } else { framing };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // Looked up only here: a 101 is rare, every request would pay for it up front.
            if !head.headers.contains_key(header::UPGRADE) {
                return Err(Failed { error: H1Error::UnaskedUpgrade, unsent: None, no_response: false });
            }
            return Ok(response.map(|()| H1Body::upgraded(self)));
        }
        let reusable = keep_alive && !matches!(framing, Framing::Eof);
        let out = (!out.done()).then(|| Box::new(out));
        Ok(response.map(|()| H1Body::reading(self, framing, out, reusable, recycle)))
    }

    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Outgoing,
        written: &mut bool,
    ) -> Poll<Result<ResponseHead, H1Error>> {
        loop {
            let wrote = out.poll_send(&mut self.io, cx, written)?;
            // Read whatever the upstream has said, even mid-request: it may answer early.
            match parse_head(&mut self.rbuf)? {
                Some(head)
                    if head.response.status().is_informational()
                        && head.response.status() != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    continue
                }
                Some(head) => return Poll::Ready(Ok(head)),
                None => {}
            }
            if self.rbuf.len() > MAX_HEAD {
                return Poll::Ready(Err(H1Error::HeadTooLarge));
            }
            match self.poll_read(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(if self.rbuf.is_empty() {
                        H1Error::ClosedBeforeResponse
                    } else {
                        H1Error::Incomplete
                    }))
                }
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) if self.rbuf.is_empty() && is_reset(&e) => {
                    return Poll::Ready(Err(H1Error::ClosedBeforeResponse))
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending if wrote => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
    )
}

impl<C: Io> H1Conn<C> {
    /// Reads what the socket has into `rbuf`. The room offered grows while reads fill it (a
    /// large body then takes fewer, larger reads, as hyper's adaptive buffer did) and starts
    /// small again for each response.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.rbuf.reserve(self.read_size);
        let room = self.rbuf.capacity() - self.rbuf.len();
        // Reading into spare room lets tokio see a short read and skip the next, empty one.
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf))?;
        if n == room {
            self.read_size = (self.read_size * 2).min(MAX_READ_SIZE);
        }
        Poll::Ready(Ok(n))
    }
}

/// An upgraded connection, the tunnel's now: the bytes read past the 101's head come first.
pub struct Upgraded<C> {
    pub io: PrefixedIo<C>,
}

impl<C: Io> H1Conn<C> {
    fn into_upgraded(self) -> Upgraded<C> {
        Upgraded { io: PrefixedIo::new(self.rbuf.freeze(), self.io) }
    }
}
