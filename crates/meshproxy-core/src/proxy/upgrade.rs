//! HTTP/1.1 `Upgrade` (WebSocket and friends): the request's `Upgrade`/`Connection: upgrade`
//! travel upstream; if the upstream answers 101, both sides are handed over (the client's
//! connection by hyper, or its HTTP/2 stream for a WebSocket over HTTP/2; the upstream's by
//! [`meshproxy_http::h1`]) and bytes are spliced both ways until either side closes (half-closes
//! propagate) or the tunnel is idle for the listener's tunnel idle timeout. Any other answer is
//! passed back as it is.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use tokio::sync::watch;

use crate::activity::ActivityGuard;
use crate::upstream::UpIo;
use meshproxy_http::client_tunnel::ClientTunnel;
use meshproxy_http::h1::Upgraded;
use meshproxy_http::{tunnel, Drain};

/// The `Upgrade` token of an HTTP/1.1 upgrade request (`Connection` must name `upgrade`).
pub fn requested(version: http::Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != http::Version::HTTP_11 {
        return None;
    }
    let upgrade = headers.get(header::UPGRADE)?;
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    named.then(|| upgrade.clone())
}

/// Puts the upgrade back after hop-by-hop stripping (it is hop-by-hop, but this hop carries it).
pub fn restore(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::UPGRADE, upgrade);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Splices the two upgraded connections once both handovers complete. `busy` keeps a
/// multiplexed (HTTP/2) downstream connection out of its idle timeout while the tunnel, one of
/// its streams, is open.
pub fn splice(
    downstream: ClientTunnel,
    mut upstream: Upgraded<UpIo>,
    idle: Duration,
    drain: watch::Receiver<Drain>,
    busy: Option<ActivityGuard>,
) {
    tokio::spawn(async move {
        let _busy = busy;
        let mut down = match downstream.open().await {
            Ok(down) => down,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade handover failed");
                return;
            }
        };
        match tunnel::splice(&mut down, &mut upstream.io, idle, drain, &tunnel::Counters::default()).await {
            Ok(bytes) => tracing::debug!(?bytes, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        }
    });
}
