//! `CONNECT` tunnels. A `CONNECT` (HTTP/1.1 `CONNECT host:port`, or HTTP/2 `CONNECT` with only
//! `:authority`) is routed by its authority's host like any request; only a route with
//! `allowConnect` opens a tunnel, and then to an endpoint its service's balancer picks, never to
//! the authority the client named — the proxy must not become an open proxy. The tunnel is
//! opaque TCP from there on (the same upstream side as a `tcp` listener's, [`TcpUpstream`]): the
//! service's TCP connection and byte counts, the listener's tunnel idle timeout, half-close
//! passed through.

use std::time::Duration;

use tokio::sync::watch;

use crate::activity::ActivityGuard;
use crate::tcp::TcpUpstream;
use meshproxy_http::client_tunnel::ClientTunnel;
use meshproxy_http::Drain;

/// Splices the client's side of the tunnel (once the 200 is sent) with the already connected
/// upstream.
pub fn splice(
    downstream: ClientTunnel,
    mut upstream: TcpUpstream,
    idle: Duration,
    drain: watch::Receiver<Drain>,
    busy: ActivityGuard,
) {
    tokio::spawn(async move {
        // An HTTP/2 client's tunnel is one stream: its connection is not idle while it is open.
        let _busy = busy;
        let mut down = match downstream.open().await {
            Ok(down) => down,
            Err(e) => return tracing::debug!(error = %e, "CONNECT handover failed"),
        };
        match upstream.relay(&mut down, idle, drain).await {
            Ok(bytes) => {
                tracing::debug!(endpoint = %upstream.endpoint().address, ?bytes, "CONNECT tunnel closed")
            }
            Err(e) => {
                tracing::debug!(endpoint = %upstream.endpoint().address, error = %e, "CONNECT tunnel ended with an error")
            }
        }
    });
}
