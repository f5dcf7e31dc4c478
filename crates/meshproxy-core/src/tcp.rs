//! Opaque TCP forwarding: one upstream connection per downstream connection, to an endpoint the
//! service's balancer picks (a `hash` balancer hashes the client address here; header and cookie
//! keys do not exist in TCP, so those fall back to random), spliced with half-close handling and
//! an idle timeout, bytes counted per service.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::balance::{hash_key_bytes, HashKey};
use crate::compile::ServiceRuntime;
use crate::listener::Drain;
use crate::tunnel;

pub async fn forward<IO>(
    mut downstream: IO,
    peer: SocketAddr,
    service: &ServiceRuntime,
    idle: Duration,
    drain: watch::Receiver<Drain>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let hash = match service.balancer.hash_key() {
        Some(HashKey::Source) => Some(match peer.ip() {
            std::net::IpAddr::V4(ip) => hash_key_bytes(&ip.octets()),
            std::net::IpAddr::V6(ip) => hash_key_bytes(&ip.octets()),
        }),
        _ => None,
    };
    let Some(endpoint) = service.balancer.pick(hash).and_then(|i| service.endpoints.get(i)) else {
        tracing::debug!(%peer, service = %service.name, "no endpoints for a TCP connection; closing");
        return;
    };
    let mut upstream = match endpoint.connect_tcp().await {
        Ok(s) => s,
        Err(_) => {
            tracing::debug!(%peer, endpoint = %endpoint.address, "TCP upstream connect failed; closing");
            return;
        }
    };
    let m = &service.tcp;
    m.connections.fetch_add(1, Ordering::Relaxed);
    m.open.fetch_add(1, Ordering::Relaxed);
    let result = tunnel::splice(&mut downstream, &mut upstream, idle, drain, &m.bytes).await;
    m.open.fetch_sub(1, Ordering::Relaxed);
    endpoint.open.fetch_sub(1, Ordering::Relaxed);
    if let Err(e) = result {
        tracing::debug!(%peer, endpoint = %endpoint.address, error = %e, "TCP connection ended with an error");
    }
}
