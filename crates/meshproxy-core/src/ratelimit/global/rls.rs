//! A client of Envoy's rate limit service (`envoy.service.ratelimit.v3.RateLimitService`), as
//! envoyproxy/ratelimit and Limitador serve it: `ShouldRateLimit` over gRPC on one multiplexed
//! HTTP/2 connection per server, h2c, or TLS with ALPN `h2` for an `https://` address (the
//! upstream [`TlsConnector`]: rustls with ring, verified against a CA bundle or the system roots).
//!
//! The messages are the protobuf ones of `envoy/service/ratelimit/v3/rls.proto` and
//! `envoy/extensions/common/ratelimit/v3/ratelimit.proto`, derived with prost by hand (the fields
//! the proxy sends and reads; a decoder skips the others). A limit's request is the same for
//! every request but for the key entry's value, so its bytes are laid out once, when the limit is
//! compiled ([`Template`]), and a request writes only the key value and the lengths around it,
//! into one gRPC message (the 5-byte prefix: uncompressed, big-endian length).
//!
//! The connection is made for the first check, on the runtime that runs it, by a task of its own
//! (a check that times out while it connects does not cancel the connect), and driven by another;
//! every check opens a stream on it, so checks at once never wait for each other's answers. It
//! is made again when it ends (the server closed it, went away, sent GOAWAY): one connect at a
//! time, and after a failed connect none for 50 ms, doubling to at most 1 s, so a server that is
//! down costs no connect per request.
//!
//! Who uses it: [`super::Store`], whose fail-mode machinery (probe, warnings) wraps each check.
//! What it must not know: limits, routes, the HTTP request — it takes an encoded request and
//! answers admit, refuse (with the wait) or fail.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use meshproxy_upstream::{Alpn, Connector, Target, TcpConnector, TlsConnector, TlsSettings, UpstreamIo};
use parking_lot::Mutex;
use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message;

/// The largest response message read (envoyproxy/ratelimit's are a few hundred bytes).
const MAX_RESPONSE: usize = 64 * 1024;

/// The wait a refusal without `duration_until_reset` gets.
const DEFAULT_WAIT: Duration = Duration::from_secs(1);

const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// `envoy.service.ratelimit.v3.RateLimitRequest`, as prost encodes it: the reference the tests
/// hold [`Template`]'s bytes to.
#[cfg(test)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor` (its entries), for the tests.
#[cfg(test)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry`, for the tests.
#[cfg(test)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse` (its code and statuses).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitResponse {
    #[prost(enumeration = "Code", tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Code {
    Unknown = 0,
    Ok = 1,
    OverLimit = 2,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.DescriptorStatus` (its code, remaining count and
/// time until the window resets).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorStatus {
    #[prost(enumeration = "Code", tag = "1")]
    pub code: i32,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// Why a rate limit service gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum RlsError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("not connecting: the last connect failed less than {0:?} ago")]
    Backoff(Duration),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("HTTP status {0} (not a gRPC server?)")]
    Status(http::StatusCode),
    #[error("gRPC status {code}: {message}")]
    Grpc { code: String, message: String },
    #[error("invalid response: {0}")]
    Invalid(String),
    #[error("overall_code UNKNOWN: the service could not decide")]
    Unknown,
}

/// A `ShouldRateLimit` request for one descriptor of `entries` counting one hit, as a gRPC
/// message, encoded by prost: what [`Template`] writes by hand, byte for byte.
#[cfg(test)]
pub fn encode(domain: &str, entries: Vec<Entry>) -> Bytes {
    let request = RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: vec![RateLimitDescriptor { entries }],
        hits_addend: 1,
    };
    let len = request.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    // Encoding into a buffer with room for it cannot fail.
    let _ = request.encode(&mut out);
    out.freeze()
}

/// One limit's `ShouldRateLimit` requests, laid out once: `domain`, one descriptor whose fixed
/// entries come first and whose key entry (for a keyed limit) comes last, `hits_addend` 1. A
/// request writes only the key entry and the lengths that depend on it ([`Template::encode`]);
/// the bytes are prost's for the same message (an empty string field is left out, as proto3
/// does).
#[derive(Debug)]
pub struct Template {
    /// Field 1, the domain, with its tag and length.
    domain: Box<[u8]>,
    /// The descriptor's fixed entries (field 1 of the descriptor, each with its tag and length).
    fixed: Box<[u8]>,
    /// The key entry's key as an `Entry` field (tag, length, text); none for an unkeyed limit.
    key: Option<Box<[u8]>>,
}

/// Field 3, `hits_addend: 1`.
const HITS_ADDEND_ONE: [u8; 2] = [0x18, 1];

/// A length-delimited field's tag byte (wire type 2) for field numbers below 16.
const fn delimited(field: u8) -> u8 {
    field << 3 | 2
}

/// Appends field `field` holding `bytes` (tag, length, bytes); nothing for an empty string, as
/// proto3 leaves a default value out.
fn put_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    out.push(delimited(field));
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// An `Entry` message, as a field of its descriptor (tag and length first).
fn entry_field(out: &mut Vec<u8>, key: &str, value: &str) {
    let mut entry = Vec::with_capacity(key.len() + value.len() + 4);
    put_field(&mut entry, 1, key.as_bytes());
    put_field(&mut entry, 2, value.as_bytes());
    out.push(delimited(1));
    encode_varint(entry.len() as u64, out);
    out.extend_from_slice(&entry);
}

impl Template {
    /// The requests of `domain` whose descriptor starts with the entries `fixed` and, with
    /// `key`, ends with an entry of that key and the request's value.
    pub fn new(domain: &str, fixed: &[(&str, &str)], key: Option<&str>) -> Self {
        let mut head = Vec::new();
        put_field(&mut head, 1, domain.as_bytes());
        let mut entries = Vec::new();
        for (k, v) in fixed {
            entry_field(&mut entries, k, v);
        }
        let key = key.map(|k| {
            let mut field = Vec::new();
            put_field(&mut field, 1, k.as_bytes());
            field.into_boxed_slice()
        });
        Template { domain: head.into(), fixed: entries.into(), key }
    }

    /// The gRPC message of a request whose key entry has `value` (ignored by an unkeyed limit).
    pub fn encode(&self, value: &str) -> Bytes {
        // The key entry: the key field, then the value field unless the value is empty.
        let entry_len = self.key.as_ref().map(|key| {
            key.len()
                + if value.is_empty() { 0 } else { 1 + encoded_len_varint(value.len() as u64) + value.len() }
        });
        let descriptor_len = self.fixed.len() + entry_len.map_or(0, |n| 1 + encoded_len_varint(n as u64) + n);
        let message_len = self.domain.len()
            + 1
            + encoded_len_varint(descriptor_len as u64)
            + descriptor_len
            + HITS_ADDEND_ONE.len();
        let mut out = BytesMut::with_capacity(5 + message_len);
        out.put_u8(0);
        out.put_u32(message_len as u32);
        out.put_slice(&self.domain);
        out.put_u8(delimited(2));
        encode_varint(descriptor_len as u64, &mut out);
        out.put_slice(&self.fixed);
        if let (Some(key), Some(entry_len)) = (&self.key, entry_len) {
            out.put_u8(delimited(1));
            encode_varint(entry_len as u64, &mut out);
            out.put_slice(key);
            if !value.is_empty() {
                out.put_u8(delimited(2));
                encode_varint(value.len() as u64, &mut out);
                out.put_slice(value.as_bytes());
            }
        }
        out.put_slice(&HITS_ADDEND_ONE);
        debug_assert_eq!(out.len(), 5 + message_len);
        out.freeze()
    }
}

/// The response in one gRPC message `frame` (prefix included): `None` to admit, else the wait
/// until the refusing window resets.
pub fn decode(frame: &[u8]) -> Result<Option<Duration>, RlsError> {
    let invalid = |s: &str| RlsError::Invalid(s.to_owned());
    let (prefix, message) = frame.split_at_checked(5).ok_or_else(|| invalid("no gRPC message"))?;
    if prefix[0] != 0 {
        return Err(invalid("a compressed message (none was asked for)"));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if message.len() != len {
        return Err(RlsError::Invalid(format!(
            "a message of {} bytes where the prefix says {len}",
            message.len()
        )));
    }
    let response = RateLimitResponse::decode(message).map_err(|e| RlsError::Invalid(e.to_string()))?;
    verdict(&response)
}

fn verdict(response: &RateLimitResponse) -> Result<Option<Duration>, RlsError> {
    match Code::try_from(response.overall_code) {
        Ok(Code::Ok) => Ok(None),
        Ok(Code::OverLimit) => {
            let reset = response
                .statuses
                .iter()
                .filter(|s| s.code == Code::OverLimit as i32)
                .find_map(|s| s.duration_until_reset)
                .map(|d| {
                    Duration::from_secs(d.seconds.max(0) as u64) + Duration::from_nanos(d.nanos.max(0) as u64)
                });
            Ok(Some(reset.filter(|d| !d.is_zero()).unwrap_or(DEFAULT_WAIT)))
        }
        _ => Err(RlsError::Unknown),
    }
}

/// One rate limit service and its connection.
pub struct Rls {
    /// `host:port`.
    target: Target,
    /// For an `https://` address: TLS with ALPN `h2`, the name verified being the host's.
    tls: Option<TlsConnector>,
    uri: http::Uri,
    conn: std::sync::Arc<Mutex<Option<Conn>>>,
    connecting: tokio::sync::Mutex<Backoff>,
}

/// The open connection's number (counted from 1) and sender.
type Conn = (u64, SendRequest<Bytes>);

#[derive(Default)]
struct Backoff {
    made: u64,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
    /// The connect under way. It is a task of its own, so a check whose timeout expires while
    /// it waits does not cancel it: a service slower to reach than a check's `timeout` is
    /// connected all the same, and later checks wait for this connect instead of starting more.
    pending: Option<tokio::task::JoinHandle<Result<(), RlsError>>>,
}

impl Rls {
    /// The service at `addr` (`host:port`, `http://host:port` or `https://host:port`), not yet
    /// connected; an `https://` one is verified against the PEM bundle at `ca`, else the system
    /// roots, and shown the PEM client certificate and key of `client`, if any (which only
    /// `https://` may name).
    pub fn new(
        addr: &str,
        ca: Option<&std::path::Path>,
        client: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self, String> {
        let (host_port, _, tls) = parse_addr(addr)?;
        let tls = match (tls, ca, client) {
            (false, Some(_), _) => {
                return Err(format!(
                    "a CA bundle is only used with TLS, and {addr:?} is not an https:// address"
                ))
            }
            (false, None, Some(_)) => {
                return Err(format!(
                    "a client certificate is only used with TLS, and {addr:?} is not an https:// address"
                ))
            }
            (false, None, None) => None,
            (true, ca, client) => Some(
                TlsConnector::new(&TlsSettings {
                    server_name: None,
                    ca: ca.map(Into::into),
                    client_auth: client.map(|(cert, key)| (cert.into(), key.into())),
                })
                .map_err(|e| e.to_string())?,
            ),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let uri = format!("{scheme}://{host_port}{PATH}").parse::<http::Uri>().map_err(|e| e.to_string())?;
        Ok(Rls {
            target: Target::new(host_port),
            tls,
            uri,
            conn: Default::default(),
            connecting: Default::default(),
        })
    }

    /// Whether `other` reaches the service the same way: TLS or not, the same trust and the same
    /// client certificate (by the files' contents). A reload that keeps it keeps the connection.
    pub fn same_transport(&self, other: &Rls) -> bool {
        self.target.address == other.target.address && self.tls == other.tls
    }

    /// The open connection's sender, connecting first when there is none.
    async fn sender(&self) -> Result<Conn, RlsError> {
        if let Some(s) = self.conn.lock().clone() {
            return Ok(s);
        }
        let mut backoff = self.connecting.lock().await;
        // Made while this check waited for another's connect.
        if let Some(s) = self.conn.lock().clone() {
            return Ok(s);
        }
        let now = tokio::time::Instant::now();
        if let Some(at) = backoff.retry_at.filter(|at| now < *at) {
            return Err(RlsError::Backoff(at - now));
        }
        let state = &mut *backoff;
        let pending = state.pending.get_or_insert_with(|| {
            state.made += 1;
            tokio::spawn(connect(self.target.clone(), self.tls.clone(), &self.conn, state.made))
        });
        // Awaited in place: a check cancelled here leaves the task (and its handle) running.
        let result = match pending.await {
            Ok(r) => r,
            Err(e) => Err(RlsError::Connect(std::io::Error::other(format!("the connect task ended: {e}")))),
        };
        backoff.pending = None;
        match result.and_then(|()| {
            self.conn.lock().clone().ok_or_else(|| {
                RlsError::Connect(std::io::Error::other("the connection closed as soon as it was made"))
            })
        }) {
            Ok(s) => {
                backoff.failures = 0;
                backoff.retry_at = None;
                Ok(s)
            }
            Err(e) => {
                let delay =
                    Duration::from_millis(50u64 << backoff.failures.min(5)).min(Duration::from_secs(1));
                backoff.failures = backoff.failures.saturating_add(1);
                backoff.retry_at = Some(tokio::time::Instant::now() + delay);
                Err(e)
            }
        }
    }

    /// A connection of its own to the service, TCP and TLS, kept by nobody: to learn why
    /// connecting fails after a check timed out (a connect the check's timeout cut short says
    /// nothing).
    pub fn try_connect(&self) -> impl std::future::Future<Output = Result<(), RlsError>> + Send + 'static {
        let (target, tls) = (self.target.clone(), self.tls.clone());
        async move { open(&target, tls.as_ref()).await.map(drop) }
    }

    /// Forgets connection `number` after an error on it.
    fn drop_conn(&self, number: u64) {
        let mut slot = self.conn.lock();
        if slot.as_ref().is_some_and(|(n, _)| *n == number) {
            *slot = None;
        }
    }

    /// Asks the service about `request` (from [`encode`]): `None` admits, else the wait.
    pub async fn check(&self, request: Bytes) -> Result<Option<Duration>, RlsError> {
        let (number, sender) = self.sender().await?;
        let result = self.call(sender, request).await;
        if let Err(RlsError::H2(e)) = &result {
            if e.is_io() || e.is_go_away() || e.reason().is_some_and(|_| !e.is_remote()) {
                self.drop_conn(number);
            }
        }
        result
    }

    async fn call(&self, sender: SendRequest<Bytes>, request: Bytes) -> Result<Option<Duration>, RlsError> {
        let mut sender = sender.ready().await?;
        let mut req = http::Request::new(());
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.uri.clone();
        let headers = req.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        let (response, mut stream) = sender.send_request(req, false)?;
        stream.send_data(request, true)?;
        let response = response.await?;
        if response.status() != http::StatusCode::OK {
            return Err(RlsError::Status(response.status()));
        }
        let (parts, mut body) = response.into_parts();
        // A trailers-only response: the status is in the headers.
        if parts.headers.contains_key("grpc-status") {
            grpc_status(&parts.headers)?;
            return Err(RlsError::Invalid("no message".into()));
        }
        let mut frame = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if frame.len() + chunk.len() > MAX_RESPONSE {
                return Err(RlsError::Invalid(format!("a response over {MAX_RESPONSE} bytes")));
            }
            frame.extend_from_slice(&chunk);
        }
        match body.trailers().await? {
            Some(trailers) => grpc_status(&trailers)?,
            None => return Err(RlsError::Invalid("no grpc-status".into())),
        }
        decode(&frame)
    }
}

/// Connects to the service as connection `number`, and puts it in `slot` (while the service's
/// store still exists), where the next check finds it; the connection's task empties the slot
/// when it ends, so that the check after connects again.
fn connect(
    target: Target,
    tls: Option<TlsConnector>,
    slot: &std::sync::Arc<Mutex<Option<Conn>>>,
    number: u64,
) -> impl std::future::Future<Output = Result<(), RlsError>> + Send + 'static {
    let slot = std::sync::Arc::downgrade(slot);
    async move {
        let io = open(&target, tls.as_ref()).await?;
        let (sender, connection) = h2::client::Builder::new().handshake::<_, Bytes>(io).await?;
        let ended = slot.clone();
        tokio::spawn(async move {
            let _ = connection.await;
            if let Some(slot) = ended.upgrade() {
                let mut slot = slot.lock();
                if slot.as_ref().is_some_and(|(n, _)| *n == number) {
                    *slot = None;
                }
            }
        });
        if let Some(slot) = slot.upgrade() {
            *slot.lock() = Some((number, sender));
        }
        Ok(())
    }
}

/// A TCP connection to `target`, with TLS over it when `tls` is given (the peer must agree to
/// `h2`).
async fn open(target: &Target, tls: Option<&TlsConnector>) -> Result<UpstreamIo, RlsError> {
    let tcp = TcpConnector.connect(target, Alpn::H2).await.map_err(RlsError::Connect)?;
    Ok(match tls {
        None => UpstreamIo::Tcp(tcp),
        Some(tls) => UpstreamIo::Tls(Box::new(
            tls.handshake_unlogged(tcp, target, Alpn::H2).await.map_err(RlsError::Tls)?,
        )),
    })
}

/// `Ok` for `grpc-status: 0`, else the status and its message.
fn grpc_status(headers: &http::HeaderMap) -> Result<(), RlsError> {
    let text = |name: &str| headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match text("grpc-status").as_deref() {
        Some("0") => Ok(()),
        Some(code) => {
            Err(RlsError::Grpc { code: code.to_owned(), message: text("grpc-message").unwrap_or_default() })
        }
        None => Err(RlsError::Invalid("no grpc-status".into())),
    }
}

/// `host:port` of `addr` (`host:port`, `http://host:port` or `https://host:port`, with an
/// optional trailing `/`), its port, and whether it is reached over TLS (`https://`).
pub fn parse_addr(addr: &str) -> Result<(&str, u16, bool), String> {
    let hint = "write host:port or http://host:port (h2c), or https://host:port (TLS), e.g. 127.0.0.1:8081";
    let (rest, tls) = match addr.strip_prefix("https://") {
        Some(rest) => (rest, true),
        None => (addr.strip_prefix("http://").unwrap_or(addr), false),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let invalid = || format!("{addr:?} is not a rate limit service address ({hint})");
    if rest.contains(['/', '?', '#', '@']) || rest.contains("://") {
        return Err(invalid());
    }
    let (host, port) = rest.rsplit_once(':').ok_or_else(invalid)?;
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && !host.contains(':'),
    };
    let port = port.parse::<u16>().ok().filter(|p| *p != 0);
    match (host_ok, port) {
        (true, Some(port)) => Ok((rest, port, tls)),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn entry(key: &str, value: &str) -> Entry {
        Entry { key: key.into(), value: value.into() }
    }

    #[test]
    fn a_request_is_one_grpc_message_with_the_proto_field_numbers() {
        let frame = Template::new("mesh", &[("route", "api"), ("limit", "total")], None).encode("");
        assert_eq!(frame[0], 0, "uncompressed");
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len, frame.len() - 5);
        // domain = 1 ("mesh"), descriptors = 2 { entries = 1 { key = 1, value = 2 } }, hits_addend = 3.
        let expected: &[u8] = &[
            0x0a, 4, b'm', b'e', b's', b'h', //
            0x12, 30, //
            0x0a, 12, 0x0a, 5, b'r', b'o', b'u', b't', b'e', 0x12, 3, b'a', b'p', b'i', //
            0x0a, 14, 0x0a, 5, b'l', b'i', b'm', b'i', b't', 0x12, 5, b't', b'o', b't', b'a', b'l', //
            0x18, 1,
        ];
        assert_eq!(&frame[5..], expected);
        let back = RateLimitRequest::decode(&frame[5..]).unwrap();
        assert_eq!(back.descriptors[0].entries[1], entry("limit", "total"));
        assert_eq!(back.hits_addend, 1);
    }

    pub(in crate::ratelimit) fn framed(response: &RateLimitResponse) -> Vec<u8> {
        let body = response.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn ok_admits_and_over_limit_waits_until_the_window_resets() {
        let ok = RateLimitResponse { overall_code: Code::Ok as i32, statuses: vec![] };
        assert_eq!(decode(&framed(&ok)).unwrap(), None);
        let status = |code: Code, secs: i64| DescriptorStatus {
            code: code as i32,
            limit_remaining: 0,
            duration_until_reset: Some(ProtoDuration { seconds: secs, nanos: 500_000_000 }),
        };
        let over = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![status(Code::Ok, 40), status(Code::OverLimit, 2)],
        };
        assert_eq!(
            decode(&framed(&over)).unwrap(),
            Some(Duration::from_millis(2500)),
            "the refusing status's reset"
        );
        let bare = RateLimitResponse { overall_code: Code::OverLimit as i32, statuses: vec![] };
        assert_eq!(decode(&framed(&bare)).unwrap(), Some(DEFAULT_WAIT));
        let unknown = RateLimitResponse { overall_code: 0, statuses: vec![] };
        assert!(matches!(decode(&framed(&unknown)), Err(RlsError::Unknown)));
    }

    #[test]
    fn a_malformed_frame_is_an_error_not_an_answer() {
        let ok = framed(&RateLimitResponse { overall_code: 1, statuses: vec![] });
        assert!(matches!(decode(&ok[..3]), Err(RlsError::Invalid(_))));
        assert!(matches!(decode(&ok[..ok.len() - 1]), Err(RlsError::Invalid(_))));
        let mut compressed = ok.clone();
        compressed[0] = 1;
        assert!(matches!(decode(&compressed), Err(RlsError::Invalid(_))));
        assert!(matches!(decode(&[0, 0, 0, 0, 2, 0xff, 0xff]), Err(RlsError::Invalid(_))));
    }

    #[test]
    fn a_template_writes_what_prost_encodes_for_every_key_value() {
        let fixed = [("route", "api"), ("limit", "total")];
        let unkeyed = Template::new("mesh", &fixed, None);
        let expected = encode("mesh", vec![entry("route", "api"), entry("limit", "total")]);
        assert_eq!(unkeyed.encode(""), expected);
        assert_eq!(unkeyed.encode("ignored"), expected, "an unkeyed limit has no key entry");
        let keyed = Template::new("mesh", &fixed, Some("x-user"));
        // Values around the one-byte varint's end (127) move every enclosing length to two bytes.
        for len in [0, 1, 5, 100, 117, 118, 127, 128, 200, 20_000] {
            let value = "v".repeat(len);
            let prost =
                encode("mesh", vec![entry("route", "api"), entry("limit", "total"), entry("x-user", &value)]);
            assert_eq!(keyed.encode(&value), prost, "a value of {len} bytes");
        }
        let long = "d".repeat(300);
        let wide = Template::new(&long, &[("service", "echo"), ("limit", "")], Some("remote_address"));
        let prost = encode(
            &long,
            vec![entry("service", "echo"), entry("limit", ""), entry("remote_address", "10.0.0.7")],
        );
        assert_eq!(wide.encode("10.0.0.7"), prost, "a long domain, an empty fixed value");
    }

    #[test]
    fn addresses_are_host_port_with_an_optional_http_or_https_scheme() {
        assert_eq!(parse_addr("127.0.0.1:8081").unwrap(), ("127.0.0.1:8081", 8081, false));
        assert_eq!(
            parse_addr("http://ratelimit.infra:8081/").unwrap(),
            ("ratelimit.infra:8081", 8081, false)
        );
        assert_eq!(parse_addr("[::1]:8081").unwrap(), ("[::1]:8081", 8081, false));
        assert_eq!(parse_addr("https://ratelimit.infra:8443").unwrap(), ("ratelimit.infra:8443", 8443, true));
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "host:port",
            ":8081",
            "http://h:1/path",
            "https://h",
            "redis://h:1",
            "::1:8081",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ca_bundle_is_refused_without_tls_and_read_with_it() {
        let e = Rls::new("127.0.0.1:8081", Some(std::path::Path::new("/ca.pem")), None).err().unwrap();
        assert!(e.contains("only used with TLS") && e.contains("not an https:// address"), "{e}");
        let e = Rls::new("https://127.0.0.1:8081", Some(std::path::Path::new("/nonexistent/ca.pem")), None)
            .err()
            .unwrap();
        assert!(e.contains("cannot read /nonexistent/ca.pem"), "{e}");
        let plain = Rls::new("http://127.0.0.1:8081", None, None).unwrap();
        assert!(plain.tls.is_none());
        assert!(plain.same_transport(&Rls::new("127.0.0.1:8081", None, None).unwrap()));
    }
}
