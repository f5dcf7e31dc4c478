//! Opaque TCP forwarding: one upstream connection per downstream connection, to an endpoint the
//! service's balancer picks (a `hash` balancer hashes the client address here; header and cookie
//! keys do not exist in TCP, so those fall back to random), spliced with half-close handling and
//! an idle timeout, bytes counted per service. `CONNECT` tunnels use the same upstream side
//! ([`TcpUpstream`]).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::balance::{hash_key_bytes, HashKey};
use crate::compile::Backend;
use crate::error::ProxyError;
use crate::metrics::ServiceMetrics;
use crate::upstream::{Endpoint, UpIo};
use meshproxy_http::tunnel;
use meshproxy_http::Drain;

/// The upstream side of an opaque TCP session: a connected socket, counted as one of the
/// service's TCP connections and open tunnels and as open at the endpoint until it is dropped,
/// however the session ends.
pub struct TcpUpstream {
    stream: UpIo,
    endpoint: Arc<Endpoint>,
    metrics: Arc<ServiceMetrics>,
}

impl TcpUpstream {
    pub async fn connect(
        endpoint: &Arc<Endpoint>,
        metrics: &Arc<ServiceMetrics>,
    ) -> Result<Self, ProxyError> {
        let stream = endpoint.connect_opaque().await?;
        metrics.connections.fetch_add(1, Ordering::Relaxed);
        metrics.open.fetch_add(1, Ordering::Relaxed);
        Ok(TcpUpstream { stream, endpoint: endpoint.clone(), metrics: metrics.clone() })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Splices `downstream` with this connection, counting bytes for the service.
    pub async fn relay<IO>(
        &mut self,
        downstream: &mut IO,
        idle: Duration,
        drain: watch::Receiver<Drain>,
    ) -> io::Result<tunnel::Moved>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        tunnel::splice(downstream, &mut self.stream, idle, drain, &self.metrics.bytes).await
    }
}

impl Drop for TcpUpstream {
    fn drop(&mut self) {
        self.metrics.open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn forward<IO>(
    mut downstream: IO,
    peer: SocketAddr,
    service: &Backend,
    idle: Duration,
    drain: watch::Receiver<Drain>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let set = service.endpoints();
    let hash = match set.hash_key() {
        Some(HashKey::Source) => Some(match peer.ip() {
            std::net::IpAddr::V4(ip) => hash_key_bytes(&ip.octets()),
            std::net::IpAddr::V6(ip) => hash_key_bytes(&ip.octets()),
        }),
        _ => None,
    };
    let Some(endpoint) = set.select(hash).cloned() else {
        tracing::debug!(%peer, service = %service.name, "no endpoints for a TCP connection; closing");
        return;
    };
    drop(set);
    let mut upstream = match TcpUpstream::connect(&endpoint, &service.tcp).await {
        Ok(u) => u,
        Err(_) => {
            endpoint.count_failure();
            tracing::debug!(%peer, endpoint = %endpoint.address, "TCP upstream connect failed; closing");
            return;
        }
    };
    if let Err(e) = upstream.relay(&mut downstream, idle, drain).await {
        tracing::debug!(%peer, endpoint = %endpoint.address, error = %e, "TCP connection ended with an error");
    }
}
