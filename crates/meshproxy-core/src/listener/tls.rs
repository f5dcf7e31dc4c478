//! The TLS handshake in front of protocol detection on a listener with `tls`: within the
//! header-read timeout, with the listener's config in force when the connection came (a
//! certificate reload affects only later handshakes). A client that speaks plaintext is refused:
//! its first byte is not a TLS handshake record, so no handshake starts; a plaintext HTTP/1
//! request gets a 400 `tls-required` in plaintext, anything else is closed. Each outcome is
//! counted on the listener (`meshproxy_tls_handshakes_total`,
//! `meshproxy_tls_handshake_failures_total{reason}`) and failures are logged at debug level. A
//! failed handshake's connection closes after its alert through [`linger_close`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::compile::ListenerRuntime;
use crate::error::ProxyError;
use crate::metrics::TlsFailure;
use meshproxy_tls::ServerTls;

/// The protocol the client chose by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alpn {
    H2,
    Http11,
}

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
pub(super) const HANDSHAKE_RECORD: u8 = 0x16;

/// Runs the server side of the handshake. None: it failed (counted, logged, the connection closed).
pub(super) async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &ServerTls,
    rt: &ListenerRuntime,
) -> Option<(TlsStream<TcpStream>, Option<Alpn>)> {
    let metrics = &rt.metrics.tls;
    let failed = |why: TlsFailure, detail: &dyn std::fmt::Display| {
        metrics.failed(why);
        tracing::debug!(listener = %rt.name, %peer, reason = why.as_str(), error = %detail, "TLS handshake failed");
    };
    let timeout = rt.limits.header_read_timeout;
    let config = tls.config();
    let handshake = async {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(0) => return Err((TlsFailure::Closed, "closed before a ClientHello".to_owned(), None)),
            Ok(_) if first[0] != HANDSHAKE_RECORD => {
                if first[0].is_ascii_uppercase() {
                    refuse_plaintext_http(stream).await;
                    rt.metrics.proxy_error(ProxyError::TlsRequired);
                }
                return Err((
                    TlsFailure::Plaintext,
                    format!("first byte {:#04x} is not a TLS record", first[0]),
                    None,
                ));
            }
            Ok(_) => {}
            Err(e) => return Err((TlsFailure::Closed, e.to_string(), None)),
        }
        // The connection comes back from a failed handshake (its alert sent) to be closed
        // gently: the client may have written more (early data, a pipelined request) that
        // closing unread would answer with a reset, which can discard the alert.
        TlsAcceptor::from(config)
            .accept(stream)
            .into_fallible()
            .await
            .map_err(|(e, io)| (classify(&e), e.to_string(), Some(io)))
    };
    let stream = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err((why, detail, io))) => {
            failed(why, &detail);
            if let Some(io) = io {
                linger_close(io).await;
            }
            return None;
        }
        Err(_) => {
            failed(TlsFailure::Timeout, &format_args!("no handshake within {timeout:?}"));
            return None;
        }
    };
    metrics.handshakes.fetch_add(1, Ordering::Relaxed);
    let alpn = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Some(Alpn::H2),
        Some(b"http/1.1") => Some(Alpn::Http11),
        _ => None,
    };
    Some((stream, alpn))
}

/// Why a handshake failed, from the error tokio-rustls returns (a `rustls::Error` inside an
/// `io::Error`, or the socket's own error).
pub(super) fn classify(e: &std::io::Error) -> TlsFailure {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::PeerIncompatible(_)) => TlsFailure::Incompatible,
        Some(rustls::Error::AlertReceived(_)) => TlsFailure::PeerAlert,
        Some(_) => TlsFailure::Protocol,
        None => match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe => TlsFailure::Closed,
            _ => TlsFailure::Protocol,
        },
    }
}

/// Answers a plaintext HTTP/1 request on a TLS port with 400 `tls-required` and closes: the
/// answer goes out at once, the write side is shut, and what the client sent is read and dropped
/// (briefly) so that closing does not reset the connection before the client reads the answer.
pub(super) async fn refuse_plaintext_http(mut stream: TcpStream) {
    let e = ProxyError::TlsRequired;
    let body = e.body();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\nmeshproxy-error: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        e.status().as_u16(),
        e.status().canonical_reason().unwrap_or(""),
        e.as_str(),
        body.len(),
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    linger_close(stream).await;
}

/// Closes a connection the proxy refused after writing its last words (an error response, a
/// TLS alert): its side first (FIN), then what the client still sends is read and dropped, for
/// up to 1 s and 64 KiB. Closing with unread bytes would reset the connection, and a reset can
/// discard those last words before the client reads them.
pub(super) async fn linger_close(mut stream: TcpStream) {
    use tokio::io::AsyncReadExt;
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}
