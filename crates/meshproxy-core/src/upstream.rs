//! The upstream types as this engine uses them: endpoints reached over plain TCP or TLS
//! ([`meshproxy_upstream::UpstreamConnector`], one per service, built at compile time), and the
//! HTTP/1.1 connection and body types over that connector's connections.

use meshproxy_upstream::endpoint::Conn;
use meshproxy_upstream::{UpstreamConnector, UpstreamError};

use crate::error::ProxyError;

/// The connector behind every endpoint: an enum (TCP or TLS), so every endpoint is one type and
/// a plaintext connection's reads and writes are a match away from the TCP stream's.
pub type Connector = UpstreamConnector;
pub type Endpoint = meshproxy_upstream::Endpoint<Connector>;
pub type Registry = meshproxy_upstream::Registry<Connector>;
/// An upstream connection, counted open on its endpoint.
pub type UpIo = Conn<Connector>;
/// An upstream response body (HTTP/1.1 read off `UpIo`, or an HTTP/2 stream).
pub type UpstreamIncoming = meshproxy_http::upstream_body::UpstreamIncoming<UpIo>;

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Overloaded => ProxyError::Overloaded,
            UpstreamError::Connect => ProxyError::UpstreamConnect,
        }
    }
}

/// What the client is told when an HTTP/1.1 exchange failed.
pub fn h1_error(e: &meshproxy_http::h1::H1Error) -> ProxyError {
    if e.is_client() {
        ProxyError::BadRequest
    } else if e.is_protocol() {
        ProxyError::UpstreamProtocol
    } else {
        ProxyError::UpstreamReset
    }
}
