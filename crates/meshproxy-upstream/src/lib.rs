//! meshproxy's upstream side: endpoints and their registry, the connectors that open
//! connections, the pools that keep them (idle HTTP/1.1 connections, multiplexed HTTP/2 ones, one
//! set per worker thread), and the per-endpoint limits (in-flight permits with a bounded pending
//! queue), each endpoint's health (failure accrual, ejection, latency estimate, readiness) and
//! the active health-check probe, over plain TCP or TLS ([`tls`]).
//!
//! Who uses it: the engine (`meshproxy-core`), which compiles a config's services into endpoint
//! handles and sends each request's attempt through one. What it must not know: routes,
//! listeners, requests' meaning or the responses the proxy makes — it hands out connections and
//! permits, counts what happens to them, and reports [`UpstreamError`]s for the engine to answer.

pub mod check;
pub mod connect;
pub mod endpoint;
pub mod health;
pub mod pool;
pub mod tls;
pub mod worker;

pub use check::{CheckSpec, Probe, ProbeFailure, StatusSet};
pub use connect::{Alpn, ConnLimit, Connector, Counted, Target, TcpConnector};
pub use endpoint::{Checkout, Endpoint, EndpointSettings, Queued, Registry, Sample};
pub use health::{Accrual, Health, HealthState};
pub use tls::{MeshConnector, TlsConnector, TlsError, TlsSettings, UpstreamConnector, UpstreamIo};

/// Why an endpoint could not take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Its in-flight slots and pending queue are full.
    #[error("endpoint overloaded")]
    Overloaded,
    /// No connection could be opened (refused, timed out, or the TLS or HTTP/2 handshake failed).
    #[error("upstream connect failed")]
    Connect,
}
