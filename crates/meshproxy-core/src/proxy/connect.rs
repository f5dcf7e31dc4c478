//! `CONNECT` tunnels. A `CONNECT` (HTTP/1.1 `CONNECT host:port`, or HTTP/2 `CONNECT` with only
//! `:authority`) is routed by its authority's host like any request; only a route with
//! `allowConnect` opens a tunnel, and then to an endpoint its service's balancer picks, never to
//! the authority the client named — the proxy must not become an open proxy. The tunnel is
//! opaque TCP from there on: the TCP connection and byte counts of the service, the listener's
//! tunnel idle timeout, half-close passed through.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::endpoint::Endpoint;
use crate::listener::{ActivityGuard, Drain};
use crate::metrics::TcpMetrics;
use crate::tunnel;

/// Splices the client's side of the tunnel (once hyper hands it over, after the 200 is sent)
/// with the already connected upstream socket.
pub fn splice(
    downstream: OnUpgrade,
    mut upstream: TcpStream,
    endpoint: Arc<Endpoint>,
    tcp: Arc<TcpMetrics>,
    idle: Duration,
    drain: watch::Receiver<Drain>,
    busy: ActivityGuard,
) {
    let m = tcp;
    m.connections.fetch_add(1, Ordering::Relaxed);
    m.open.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        // An HTTP/2 client's tunnel is one stream: its connection is not idle while it is open.
        let _busy = busy;
        match downstream.await {
            Ok(down) => {
                let mut down = TokioIo::new(down);
                match tunnel::splice(&mut down, &mut upstream, idle, drain, &m.bytes).await {
                    Ok(bytes) => {
                        tracing::debug!(endpoint = %endpoint.address, ?bytes, "CONNECT tunnel closed")
                    }
                    Err(e) => {
                        tracing::debug!(endpoint = %endpoint.address, error = %e, "CONNECT tunnel ended with an error")
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT handover failed"),
        }
        m.open.fetch_sub(1, Ordering::Relaxed);
        endpoint.open.fetch_sub(1, Ordering::Relaxed);
    });
}
