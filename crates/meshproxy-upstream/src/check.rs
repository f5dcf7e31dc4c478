//! Active health checks: one probe of an endpoint, on a connection of its own (never a pooled
//! one, so a probe neither waits behind requests nor leaves a connection in a state a request
//! could inherit), bounded by the check's timeout.
//!
//! - TCP: the connect succeeds.
//! - HTTP/1.1: `GET <path>` with `connection: close`; the response head's status is expected.
//! - HTTP/2 (h2c prior knowledge, for services spoken to over HTTP/2): the same request as one
//!   stream; the connection is closed after it.
//!
//! The connection comes from the endpoint's connector, so a TLS service is probed over TLS
//! (offering `h2` or `http/1.1` by ALPN as its requests do).
//!
//! Only the response head is read; a body is left unread and the connection closed. Whoever
//! schedules probes (the engine, per service) feeds the results to [`crate::Health::probed`].

use std::fmt;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::connect::{Alpn, Connector};
use crate::endpoint::Endpoint;

/// The largest response head a probe reads before calling the endpoint broken.
const MAX_HEAD: usize = 16 * 1024;

/// A set of HTTP statuses (100..=599) as bits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusSet([u64; 10]);

impl StatusSet {
    /// Reads the model's form: comma-separated codes and `lo-hi` ranges (`429,500-599`); `""`
    /// is the empty set. The TypeScript side normalizes
    /// Linkerd's syntax (`5xx`) into this.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut set = StatusSet::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (lo, hi) = item.split_once('-').unwrap_or((item, item));
            let code = |t: &str| t.trim().parse::<u16>().ok().filter(|c| (100..=599).contains(c));
            let (Some(lo), Some(hi)) = (code(lo), code(hi)) else {
                return Err(format!("{item:?} is not a status or a range of statuses in 100..599"));
            };
            if lo > hi {
                return Err(format!("status range {item:?} is backwards"));
            }
            for c in lo..=hi {
                set.0[usize::from(c / 64)] |= 1 << (c % 64);
            }
        }
        Ok(set)
    }

    #[inline]
    pub fn contains(&self, status: u16) -> bool {
        self.0.get(usize::from(status / 64)).is_some_and(|w| w & (1 << (status % 64)) != 0)
    }
}

/// What a probe sends, and what passes.
#[derive(Debug, Clone)]
pub enum Probe {
    /// A TCP connect.
    Tcp,
    /// An HTTP `GET` of `target`, over HTTP/2 when `h2`; passes when the status is `expected`.
    Http { target: Box<str>, h2: bool, expected: StatusSet },
}

/// A service's health check.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// Why a probe failed (logged when it changes the endpoint's readiness).
#[derive(Debug)]
pub enum ProbeFailure {
    Connect(std::io::Error),
    Timeout,
    Status(u16),
    /// The endpoint closed, reset, or answered something that is not an HTTP response.
    Protocol(String),
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeFailure::Connect(e) => write!(f, "connect failed: {e}"),
            ProbeFailure::Timeout => f.write_str("no answer within the timeout"),
            ProbeFailure::Status(s) => write!(f, "unexpected status {s}"),
            ProbeFailure::Protocol(m) => write!(f, "{m}"),
        }
    }
}

impl<C: Connector> Endpoint<C> {
    /// Probes this endpoint once as `spec` says.
    pub async fn probe(&self, spec: &CheckSpec) -> Result<(), ProbeFailure> {
        match tokio::time::timeout(spec.timeout, self.probe_inner(&spec.probe)).await {
            Ok(result) => result,
            Err(_) => Err(ProbeFailure::Timeout),
        }
    }

    async fn probe_inner(&self, probe: &Probe) -> Result<(), ProbeFailure> {
        let alpn = match probe {
            Probe::Tcp => Alpn::Opaque,
            Probe::Http { h2: true, .. } => Alpn::H2,
            Probe::Http { h2: false, .. } => Alpn::Http1,
        };
        let io = self.connector.connect(&self.target, alpn).await.map_err(ProbeFailure::Connect)?;
        let Probe::Http { target, h2, expected } = probe else { return Ok(()) };
        let status = if *h2 { self.status_h2(io, target).await? } else { self.status_h1(io, target).await? };
        if expected.contains(status) {
            Ok(())
        } else {
            Err(ProbeFailure::Status(status))
        }
    }

    async fn status_h1(&self, mut io: C::Io, target: &str) -> Result<u16, ProbeFailure> {
        let request = format!(
            "GET {target} HTTP/1.1\r\nhost: {}\r\nuser-agent: meshproxy-health-check\r\nconnection: close\r\n\r\n",
            self.address
        );
        io.write_all(request.as_bytes())
            .await
            .map_err(|e| ProbeFailure::Protocol(format!("write failed: {e}")))?;
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            let n = io
                .read_buf(&mut buf)
                .await
                .map_err(|e| ProbeFailure::Protocol(format!("read failed: {e}")))?;
            if n == 0 {
                return Err(ProbeFailure::Protocol("closed before a response".into()));
            }
            // Interim (1xx) responses are skipped: the final one decides.
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let code = response.code.unwrap_or(0);
                        if (100..200).contains(&code) && code != 101 {
                            let _ = buf.split_to(len);
                            continue;
                        }
                        return Ok(code);
                    }
                    Ok(httparse::Status::Partial) => break,
                    Err(e) => return Err(ProbeFailure::Protocol(format!("malformed response: {e}"))),
                }
            }
            if buf.len() > MAX_HEAD {
                return Err(ProbeFailure::Protocol("response head too large".into()));
            }
        }
    }

    async fn status_h2(&self, io: C::Io, target: &str) -> Result<u16, ProbeFailure> {
        let protocol = |e: h2::Error| ProbeFailure::Protocol(format!("HTTP/2: {e}"));
        let (mut client, connection) = h2::client::handshake(io).await.map_err(protocol)?;
        // The connection is driven alongside the request and dropped with it. `:scheme` says
        // what the connection is, as the proxied requests' does.
        let scheme = if self.connector.is_tls() { "https" } else { "http" };
        let request = http::Request::get(format!("{scheme}://{}{target}", self.address))
            .header(http::header::USER_AGENT, "meshproxy-health-check")
            .body(())
            .map_err(|e| ProbeFailure::Protocol(format!("request: {e}")))?;
        let exchange = async {
            let (response, _) = client.send_request(request, true).map_err(protocol)?;
            response.await.map_err(protocol)
        };
        tokio::pin!(connection);
        tokio::select! {
            response = exchange => Ok(response?.status().as_u16()),
            ended = &mut connection => Err(match ended {
                Ok(()) => ProbeFailure::Protocol("HTTP/2 connection closed before a response".into()),
                Err(e) => protocol(e),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::TcpConnector;
    use tokio::net::TcpListener;

    fn spec(probe: Probe) -> CheckSpec {
        CheckSpec {
            probe,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }

    fn http(target: &str) -> Probe {
        Probe::Http { target: target.into(), h2: false, expected: StatusSet::parse("200-399").unwrap() }
    }

    fn endpoint(address: &str) -> Endpoint {
        Endpoint::new(address, crate::endpoint::tests::settings(), 1, TcpConnector)
    }

    /// A server that answers each connection's first request with `answer` and records the
    /// request head.
    async fn answering(answer: &'static str) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        (address, rx)
    }

    #[test]
    fn status_sets_hold_their_codes_and_ranges_only() {
        let s = StatusSet::parse("429,500-504").unwrap();
        assert!(s.contains(429) && s.contains(500) && s.contains(504));
        assert!(
            !s.contains(505) && !s.contains(428) && !s.contains(200) && !s.contains(0) && !s.contains(9999)
        );
        assert_eq!(StatusSet::parse("").unwrap(), StatusSet::default());
        assert!(StatusSet::parse("5xx").is_err(), "the model holds normalized ranges");
        assert!(StatusSet::parse("600").is_err());
        assert!(StatusSet::parse("504-500").is_err());
    }

    #[tokio::test]
    async fn http_probe_sends_get_with_host_and_close_and_passes_on_an_expected_status() {
        let (address, mut heads) =
            answering("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").await;
        let ep = endpoint(&address);
        ep.probe(&spec(http("/healthz?full=1"))).await.unwrap();
        let head = heads.recv().await.unwrap();
        assert!(head.starts_with("GET /healthz?full=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("host: {address}\r\n")), "{head}");
        assert!(head.contains("connection: close\r\n"), "{head}");
    }

    #[tokio::test]
    async fn http_probe_fails_on_an_unexpected_status_garbage_or_silence() {
        let (address, _h) = answering("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        assert!(matches!(endpoint(&address).probe(&spec(http("/"))).await, Err(ProbeFailure::Status(503))));
        let (address, _h) = answering("SSH-2.0-OpenSSH\r\n").await;
        assert!(matches!(endpoint(&address).probe(&spec(http("/"))).await, Err(ProbeFailure::Protocol(_))));
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = silent.local_addr().unwrap().to_string();
        assert!(matches!(endpoint(&address).probe(&spec(http("/"))).await, Err(ProbeFailure::Timeout)));
        drop(silent);
    }

    #[tokio::test]
    async fn tcp_probe_passes_on_connect_and_fails_when_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        endpoint(&address).probe(&spec(Probe::Tcp)).await.unwrap();
        drop(listener);
        assert!(matches!(endpoint(&address).probe(&spec(Probe::Tcp)).await, Err(ProbeFailure::Connect(_))));
    }
}
