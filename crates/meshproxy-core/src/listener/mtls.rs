//! Mesh mTLS in front of protocol detection on a listener with `mtls`: the handshake presents
//! this proxy's identity certificate (whatever the SNI) and requires a client certificate from
//! the trust anchors, within the header-read timeout, with the identity material in force when
//! the connection came. The client's SPIFFE ID (its certificate's URI SAN) is the connection's
//! peer identity, on a resumed session too (a stateless ticket carries the client's chain; a
//! resumed session whose client certificate has expired since is refused). On `required`,
//! plaintext is refused as on a TLS listener (an HTTP/1 request gets 400 `tls-required`); on
//! `permissive`, a connection whose first byte is not a TLS handshake record is served as
//! plaintext, without a peer identity. Failures are counted by reason (`untrusted`, `expired`,
//! `no-client-certificate`, ...) and logged.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::HandshakeKind;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::tls::{linger_close, refuse_plaintext_http, Alpn, HANDSHAKE_RECORD};
use crate::compile::{ListenerRuntime, Mtls};
use crate::error::ProxyError;
use crate::metrics::TlsFailure;
use meshproxy_tls::mesh::{chain_current, spiffe_id_of, PeerFailure};

pub(super) enum Accepted {
    /// An authenticated peer: the stream, the ALPN protocol, the peer's SPIFFE ID.
    Mesh(Box<TlsStream<TcpStream>>, Option<Alpn>, Arc<str>),
    /// Plaintext on a permissive listener.
    Plain(TcpStream),
    Refused,
}

pub(super) async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    mtls: &Mtls,
    rt: &ListenerRuntime,
) -> Accepted {
    let metrics = &rt.metrics.tls;
    let failed = |why: TlsFailure, detail: &dyn std::fmt::Display| {
        metrics.failed(why);
        tracing::info!(listener = %rt.name, %peer, reason = why.as_str(), error = %detail, "mTLS handshake refused");
    };
    let timeout = rt.limits.header_read_timeout;
    let config = mtls.identity.material().server().clone();
    let handshake = async {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(0) => return Err(Err((TlsFailure::Closed, "closed before a ClientHello".to_owned(), None))),
            Ok(_) if first[0] != HANDSHAKE_RECORD => {
                if mtls.permissive {
                    return Err(Ok(stream));
                }
                if first[0].is_ascii_uppercase() {
                    refuse_plaintext_http(stream).await;
                    rt.metrics.proxy_error(ProxyError::TlsRequired);
                }
                return Err(Err((
                    TlsFailure::Plaintext,
                    format!("first byte {:#04x} is not a TLS record on an mtls: required listener", first[0]),
                    None,
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(Err((TlsFailure::Closed, e.to_string(), None))),
        }
        // The connection comes back from a failed handshake (its alert sent) to be closed
        // gently: a client that refused nothing yet may have written its first request.
        TlsAcceptor::from(config).accept(stream).into_fallible().await.map_err(|(e, io)| {
            let why = classify(&e);
            Err((why, e.to_string(), Some(io)))
        })
    };
    let stream = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(Ok(plain))) => return Accepted::Plain(plain),
        Ok(Err(Err((why, detail, io)))) => {
            failed(why, &detail);
            if let Some(io) = io {
                linger_close(io).await;
            }
            return Accepted::Refused;
        }
        Err(_) => {
            failed(TlsFailure::Timeout, &format_args!("no handshake within {timeout:?}"));
            return Accepted::Refused;
        }
    };
    let conn = stream.get_ref().1;
    let chain = conn.peer_certificates().unwrap_or_default();
    let Some(id) = chain.first().and_then(|c| spiffe_id_of(c.as_ref())) else {
        // The anchors issued it, but it names no workload: not a mesh peer.
        failed(TlsFailure::BadCertificate, &"the client certificate has no SPIFFE ID");
        return Accepted::Refused;
    };
    // A resumed session's chain comes from its ticket, verified when the session was made.
    if conn.handshake_kind() == Some(HandshakeKind::Resumed) && !chain_current(chain, SystemTime::now()) {
        failed(
            TlsFailure::Expired,
            &format_args!("{id}: the resumed session's client certificate has expired"),
        );
        return Accepted::Refused;
    }
    metrics.handshakes.fetch_add(1, Ordering::Relaxed);
    let alpn = match conn.alpn_protocol() {
        Some(b"h2") => Some(Alpn::H2),
        Some(b"http/1.1") => Some(Alpn::Http11),
        _ => None,
    };
    tracing::debug!(
        listener = %rt.name,
        %peer,
        peer_id = %id,
        ?alpn,
        version = ?conn.protocol_version(),
        suite = ?conn.negotiated_cipher_suite().map(|s| s.suite()),
        kind = ?conn.handshake_kind(),
        "mTLS peer authenticated"
    );
    Accepted::Mesh(Box::new(stream), alpn, id.into())
}

/// Why an mTLS handshake failed: the peer's certificate (untrusted, expired, missing, bad), or
/// what a TLS listener reports for the rest.
fn classify(e: &std::io::Error) -> TlsFailure {
    match PeerFailure::of_io(e) {
        Some(PeerFailure::Untrusted) => TlsFailure::Untrusted,
        Some(PeerFailure::Expired) => TlsFailure::Expired,
        Some(PeerFailure::NoClientCertificate) => TlsFailure::NoClientCertificate,
        Some(PeerFailure::BadCertificate | PeerFailure::WrongIdentity) => TlsFailure::BadCertificate,
        _ => super::tls::classify(e),
    }
}
