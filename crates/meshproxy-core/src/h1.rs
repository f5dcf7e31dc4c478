//! HTTP/1.1 to upstreams: one request at a time on a pooled connection, driven by the request's
//! own task.
//!
//! hyper's client runs each connection as a task of its own and hands every request to it over
//! a channel, the response back over another, and the body through a third, with two task
//! switches per request. Replacing it took an HTTP/1.1 request from 34,854 to 28,910
//! instructions end to end under callgrind (−17 %; h2c → HTTP/1.1 −12 %). Here the request's task writes the head, reads the
//! response head, and the response body reads the socket as the downstream consumes it; an idle
//! connection is a socket in the pool, with no task. Parsing is `httparse`'s (the parser hyper
//! uses); message framing follows RFC 9112 §6–7.
//!
//! While the response body is read, the rest of the request body is still sent (HTTP/1.1 is
//! full duplex, as hyper's client is): an upstream may answer before it has read the whole
//! request. A connection goes back to the pool only when both messages ended cleanly and the
//! upstream did not ask to close it.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::endpoint::{ConnCount, Endpoint};
use crate::pool::Reusable;
use crate::proxy::body::UpstreamBody;

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
    RequestBody(hyper::Error),
    #[error("upstream answered 101 to a request that asked for no upgrade")]
    UnaskedUpgrade,
}

impl H1Error {
    /// What the client is told (the `meshproxy-error` header).
    pub fn proxy_error(&self) -> crate::error::ProxyError {
        use crate::error::ProxyError;
        match self {
            H1Error::Malformed(_) | H1Error::HeadTooLarge | H1Error::UnaskedUpgrade => {
                ProxyError::UpstreamProtocol
            }
            H1Error::Io(_)
            | H1Error::ClosedBeforeResponse
            | H1Error::Incomplete
            | H1Error::RequestBody(_) => ProxyError::UpstreamReset,
        }
    }
}

/// An HTTP/1.1 connection to an upstream, idle or carrying one exchange.
pub struct H1Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed.
    rbuf: BytesMut,
    /// The request head being written; kept between requests for its allocation.
    wbuf: Vec<u8>,
    read_size: usize,
    /// Counts the connection as open on its endpoint until it is dropped.
    _count: ConnCount,
}

impl Reusable for H1Conn {
    /// An idle connection has nothing to say: if it is readable, the upstream closed it (EOF) or
    /// sent something unasked (a 408, say); either way it cannot carry a request. The readiness
    /// check is the reactor's state, no system call, unless it says readable.
    fn is_closed(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            // Readiness can also be left over from the last read of the previous response.
            Poll::Ready(Ok(())) => {
                !matches!(self.io.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Poll::Ready(Err(_)) => true,
        }
    }

    fn is_ready(&self) -> bool {
        true
    }
}

/// What a failed exchange leaves for a retry on a fresh connection.
pub struct Failed {
    pub error: H1Error,
    /// The request body, when no byte of the request reached the socket (it can be re-sent
    /// whatever its method).
    pub unsent: Option<UpstreamBody>,
    /// True when the connection ended (EOF or reset) before any byte of a response: with an
    /// empty body and an idempotent method the request may be re-sent (RFC 9110 §9.2.2).
    pub no_response: bool,
}

impl H1Conn {
    pub fn new(io: TcpStream, count: ConnCount) -> Self {
        H1Conn { io, rbuf: BytesMut::new(), wbuf: Vec::new(), read_size: READ_SIZE, _count: count }
    }

    /// Sends one request and waits for its final response head (1xx other than 101 are
    /// skipped). The connection travels with the response body, which returns it to `ep`'s
    /// pool when both messages have ended and it can be reused.
    pub async fn send(
        mut self,
        head: &Parts,
        body: UpstreamBody,
        ep: &Arc<Endpoint>,
    ) -> Result<Response<H1Body>, Failed> {
        let upgrade = head.headers.contains_key(header::UPGRADE);
        self.read_size = READ_SIZE;
        let mut out = Outgoing::new(head, body, std::mem::take(&mut self.wbuf));
        let mut written = false;
        let resp = std::future::poll_fn(|cx| self.poll_exchange(cx, &mut out, &mut written)).await;
        let resp = match resp {
            Ok(r) => r,
            Err(error) => {
                let no_response = matches!(error, H1Error::ClosedBeforeResponse);
                let unsent =
                    if written { None } else { Some(out.body.take().unwrap_or(UpstreamBody::Empty)) };
                return Err(Failed { error, unsent, no_response });
            }
        };
        let ResponseHead { mut response, framing, keep_alive } = resp;
        if out.head_sent == out.head.len() {
            self.wbuf = std::mem::take(&mut out.head);
            out.head_sent = 0;
        }
        let framing = if head.method == Method::HEAD { Framing::Done } else { framing };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if !upgrade {
                return Err(Failed { error: H1Error::UnaskedUpgrade, unsent: None, no_response: false });
            }
            // The connection is the tunnel's now; what was read past the head is the peer's
            // first tunnel bytes.
            let body = H1Body { state: BodyState::Upgraded(self), out: None, reusable: false, ep: None };
            *response.body_mut() = body;
            return Ok(response);
        }
        let reusable = keep_alive && !matches!(framing, Framing::Eof);
        let out = (!out.done()).then(|| Box::new(out));
        let mut body =
            H1Body { state: BodyState::Reading(self, framing), out, reusable, ep: Some(ep.clone()) };
        body.settle();
        *response.body_mut() = body;
        Ok(response)
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

impl H1Conn {
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

/// The request on its way out: the encoded head, then the body framed by `content-length` or
/// chunked.
struct Outgoing {
    head: Vec<u8>,
    head_sent: usize,
    queue: VecDeque<Bytes>,
    body: Option<UpstreamBody>,
    chunked: bool,
}

impl Outgoing {
    fn new(head: &Parts, body: UpstreamBody, mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.extend_from_slice(head.method.as_str().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(head.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &head.headers {
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        let mut chunked = false;
        let body = match body {
            UpstreamBody::Empty => None,
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

    fn done(&self) -> bool {
        self.head_sent == self.head.len() && self.queue.is_empty() && self.body.is_none()
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.queue.push_back(b);
        }
    }

    /// Writes what is queued and takes more of the body while there is room. True if it made
    /// progress (the caller loops).
    fn poll_send(
        &mut self,
        io: &mut TcpStream,
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
                            for (name, value) in &trailers {
                                t.extend_from_slice(name.as_str().as_bytes());
                                t.extend_from_slice(b": ");
                                t.extend_from_slice(value.as_bytes());
                                t.extend_from_slice(b"\r\n");
                            }
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

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

struct ResponseHead {
    response: Response<H1Body>,
    framing: Framing,
    keep_alive: bool,
}

/// Parses a response head off the front of `buf`, if it is all there.
fn parse_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, H1Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Uninitialized: zeroing room for MAX_FIELDS fields on every response costs more than the
    // parse of a typical head.
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return Err(H1Error::HeadTooLarge)
        }
        Err(_) => return Err(H1Error::Malformed("status line or header field")),
    };
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let status =
        parsed.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(H1Error::Malformed("status code"))?;
    // Names and values become slices of the head's bytes once it is split off: no copies.
    let base = buf.as_ptr() as usize;
    let mut spans = [[0u32; 4]; MAX_FIELDS];
    let count = parsed.headers.len();
    for (span, f) in spans.iter_mut().zip(parsed.headers.iter()) {
        let (name, value) = (f.name.as_ptr() as usize - base, f.value.as_ptr() as usize - base);
        // The head is at most MAX_HEAD bytes plus one read, far below u32::MAX.
        *span = [name as u32, f.name.len() as u32, value as u32, f.value.len() as u32];
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let (mut length, mut chunked, mut coded) = (None::<u64>, false, false);
    let (mut close, mut keep_alive) = (false, false);
    for &[name_at, name_len, at, len] in &spans[..count] {
        let (name_at, at) = (name_at as usize, at as usize);
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len as usize])
            .map_err(|_| H1Error::Malformed("header field name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(at..at + len as usize))
            .map_err(|_| H1Error::Malformed("header field value"))?;
        if name == header::CONTENT_LENGTH {
            let n = parse_length(value.as_bytes()).ok_or(H1Error::Malformed("content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Malformed("conflicting content-length"));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            coded = true;
            // Only the last coding decides whether the body is chunked.
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            // Framing is this hop's business: the field goes no further.
            continue;
        } else if name == header::CONNECTION {
            let mut names_fields = false;
            for token in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let (c, k) =
                    (token.eq_ignore_ascii_case(b"close"), token.eq_ignore_ascii_case(b"keep-alive"));
                close |= c;
                keep_alive |= k;
                names_fields |= !(c || k || token.is_empty());
            }
            // Hop-by-hop either way; kept only when it names fields that the downstream side's
            // stripping must remove too (the usual `keep-alive` costs nothing further).
            if !names_fields {
                continue;
            }
        } else if name.as_str() == "keep-alive" {
            continue;
        }
        headers.append(name, value);
    }
    let no_body =
        status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Done
    } else if coded {
        // A transfer coding overrides content-length, which must not travel on (a message with
        // both is a smuggling attempt or a broken sender).
        headers.remove(header::CONTENT_LENGTH);
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Eof
        }
    } else {
        match length {
            Some(0) => Framing::Done,
            Some(n) => Framing::Length(n),
            None => Framing::Eof,
        }
    };
    // Both a coding and a length: the framing is suspect, so the connection is not reused.
    let suspect = coded && length.is_some();
    let keep_alive = !(close || suspect) && (version == Version::HTTP_11 || keep_alive);
    let mut response = Response::new(H1Body::empty());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(ResponseHead { response, framing, keep_alive }))
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

enum BodyState {
    Reading(H1Conn, Framing),
    Upgraded(H1Conn),
    Done,
}

/// A response body read off its connection as the downstream asks for it. When it ends cleanly
/// (and the request has been sent in full) the connection goes back to the pool; if it is
/// dropped early or fails, the connection closes.
pub struct H1Body {
    state: BodyState,
    /// The rest of the request body, still being sent (boxed: rare, and large).
    out: Option<Box<Outgoing>>,
    reusable: bool,
    ep: Option<Arc<Endpoint>>,
}

impl H1Body {
    fn empty() -> Self {
        H1Body { state: BodyState::Done, out: None, reusable: false, ep: None }
    }

    /// The connection of a 101 response, with any bytes already read past its head.
    pub fn take_upgraded(&mut self) -> Option<H1Conn> {
        match std::mem::replace(&mut self.state, BodyState::Done) {
            BodyState::Upgraded(conn) => Some(conn),
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
            if let Some(ep) = self.ep.take() {
                ep.checkin(conn);
            }
        }
    }

    /// Sends more of the request body, if some is left.
    fn poll_send_rest(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        let (Some(out), BodyState::Reading(conn, _)) = (self.out.as_mut(), &mut self.state) else {
            return Poll::Ready(Ok(()));
        };
        let mut written = true;
        out.poll_send(&mut conn.io, cx, &mut written)?;
        if out.done() {
            self.out = None;
        }
        Poll::Ready(Ok(()))
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
        if let Poll::Ready(Err(e)) = self.poll_send_rest(cx) {
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

enum Decoded {
    Frame(Frame<Bytes>),
    /// The last chunk and an empty trailer section: the body is complete.
    End,
    NeedMore,
}

/// Decodes chunked framing off the front of `buf`: the next data or trailers frame, the end,
/// or that more bytes are needed.
fn decode_chunked(buf: &mut BytesMut, state: &mut Chunk) -> Result<Decoded, H1Error> {
    loop {
        match state {
            Chunk::Size => {
                let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                    return if buf.len() > MAX_CHUNK_LINE {
                        Err(H1Error::Malformed("chunk size line"))
                    } else {
                        Ok(Decoded::NeedMore)
                    };
                };
                let line = &buf[..eol];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                // Extensions (`;name=value`) are allowed and ignored.
                let digits = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
                if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
                    return Err(H1Error::Malformed("chunk size"));
                }
                let size = digits
                    .iter()
                    .fold(0u64, |n, &d| (n << 4) | u64::from((d as char).to_digit(16).unwrap_or(0)));
                buf.advance(eol + 1);
                *state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                if *left == 0 {
                    *state = Chunk::DataEnd;
                }
                return Ok(Decoded::Frame(Frame::data(buf.split_to(n).freeze())));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    if buf.first().is_some_and(|&b| b != b'\r' && b != b'\n') {
                        return Err(H1Error::Malformed("chunk data end"));
                    }
                    if buf.first() == Some(&b'\n') {
                        buf.advance(1);
                        *state = Chunk::Size;
                        continue;
                    }
                    return Ok(Decoded::NeedMore);
                }
                match &buf[..2] {
                    b"\r\n" => buf.advance(2),
                    [b'\n', _] => buf.advance(1),
                    _ => return Err(H1Error::Malformed("chunk data end")),
                }
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") || buf.starts_with(b"\n") {
                    buf.advance(if buf[0] == b'\r' { 2 } else { 1 });
                    return Ok(Decoded::End);
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                return match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for f in fields.iter() {
                            let name = HeaderName::from_bytes(f.name.as_bytes())
                                .map_err(|_| H1Error::Malformed("trailer field name"))?;
                            let value = HeaderValue::from_bytes(f.value)
                                .map_err(|_| H1Error::Malformed("trailer field value"))?;
                            trailers.append(name, value);
                        }
                        buf.advance(len);
                        crate::proxy::headers::strip_hop_by_hop(&mut trailers);
                        Ok(Decoded::Frame(Frame::trailers(trailers)))
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => Ok(Decoded::NeedMore),
                    Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                        Err(H1Error::HeadTooLarge)
                    }
                    Err(_) => Err(H1Error::Malformed("trailer section")),
                };
            }
        }
    }
}

/// An upgraded connection is the tunnel's: the bytes read past the 101's head come first.
impl AsyncRead for H1Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.rbuf.is_empty() {
            let n = this.rbuf.len().min(buf.remaining());
            buf.put_slice(&this.rbuf[..n]);
            this.rbuf.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for H1Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>, bool), H1Error> {
        let mut buf = BytesMut::new();
        let mut state = Chunk::Size;
        let (mut data, mut trailers, mut done) = (Vec::new(), None, false);
        // Fed a byte at a time: every split point must decode the same.
        for &b in input {
            buf.extend_from_slice(&[b]);
            while !done {
                match decode_chunked(&mut buf, &mut state)? {
                    Decoded::Frame(frame) => match frame.into_data() {
                        Ok(d) => data.extend_from_slice(&d),
                        Err(f) => (trailers, done) = (f.into_trailers().ok(), true),
                    },
                    Decoded::End => done = true,
                    Decoded::NeedMore => break,
                }
            }
        }
        Ok((data, trailers, done))
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let (data, trailers, done) =
            chunks(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\nx-t: a\r\n\r\n").unwrap();
        assert_eq!(data, b"hello world");
        assert!(done);
        let t = trailers.unwrap();
        assert_eq!(t.get("grpc-status").unwrap(), "0");
        assert_eq!(t.get("x-t").unwrap(), "a");
        let (data, trailers, done) = chunks(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!(data, b"0123456789");
        assert!(done && trailers.is_none());
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [&b"x\r\n"[..], b"5\r\nhelloXX", b"\r\n", b"fffffffffffffffff\r\n"] {
            assert!(chunks(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn head(raw: &[u8]) -> Result<Option<ResponseHead>, H1Error> {
        parse_head(&mut BytesMut::from(raw))
    }

    #[test]
    fn framing_and_keep_alive_follow_rfc_9112() {
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        let h = head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
        assert!(!h.keep_alive && h.response.headers().get("content-length").is_none());
        let h = head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, Framing::Eof);
        let h = head(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h =
            head(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n").unwrap().unwrap();
        assert!(h.keep_alive);
        let h = head(b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, Framing::Done);
        let h = head(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Eof, false));
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n").unwrap().is_none(), "partial");
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n").is_err());
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").is_err());
        assert!(head(b"HTTX/1.1 200 OK\r\n\r\n").is_err());
    }
}
