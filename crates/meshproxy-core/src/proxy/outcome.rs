//! One outcome per request, made in one place: what the client was answered (the upstream's
//! status, or the error the proxy answered itself), whether an endpoint was tried and on a
//! reused connection, and how long until the response head. Everything that learns from a
//! request reads it here: the listener's and route's metrics, the endpoint's counters, and the
//! endpoint's health (failure accrual and the latency estimate), classified by the service's
//! failure policy.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::compile::{Backend, ListenerRuntime, RouteRuntime};
use crate::error::ProxyError;
use crate::metrics::{PeerMetrics, Protocol};
use crate::upstream::Endpoint;

/// How one request ended, as of its response head.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The status the client is answered with (for gRPC, HTTP's: 200 carrying a `grpc-status`).
    pub status: StatusCode,
    /// Set when the proxy answered itself.
    pub error: Option<ProxyError>,
    /// `grpc-status` when the head carries it (a trailers-only response, or one the proxy made);
    /// a streamed gRPC response's status arrives in its trailers and is counted there.
    pub grpc: Option<u8>,
    /// The request went out on a connection that had carried an earlier one.
    pub reused: bool,
    /// From the request's arrival to its response head.
    pub latency: Duration,
    pub protocol: Protocol,
}

impl Outcome {
    /// True when the endpoint is to blame: it could not be reached, reset the exchange, timed
    /// out, or answered something unusable. Client errors (bad framing, a client going away) and
    /// the proxy's own limits never count against an endpoint.
    pub fn endpoint_failed(&self) -> bool {
        matches!(
            self.error,
            Some(
                ProxyError::UpstreamConnect
                    | ProxyError::UpstreamReset
                    | ProxyError::UpstreamTimeout
                    | ProxyError::UpstreamHandshake
                    | ProxyError::UpstreamProtocol
            )
        )
    }

    /// True when the request reached the endpoint (it was sent, whatever came back).
    pub fn sent(&self) -> bool {
        !matches!(self.error, Some(ProxyError::Overloaded | ProxyError::UpstreamConnect))
    }
}

/// Reads one outcome into every place that learns from it. `target` is the backend and the
/// endpoint the request was sent to (or meant for).
#[inline]
pub fn observe(
    outcome: &Outcome,
    listener: &ListenerRuntime,
    peer: Option<&PeerMetrics>,
    route: Option<&RouteRuntime>,
    target: Option<(&Backend, &Endpoint)>,
) {
    observe_head(outcome, listener, peer, route, target, false, false);
}

/// As [`observe`]; with `deferred`, the endpoint's verdict on a response that is no failure by
/// its head waits for the body's end ([`BodyVerdict`]); with `classified`, a policy found the
/// response a failure of its endpoint (as a status in `failureStatuses` is).
#[inline]
pub fn observe_head(
    outcome: &Outcome,
    listener: &ListenerRuntime,
    peer: Option<&PeerMetrics>,
    route: Option<&RouteRuntime>,
    target: Option<(&Backend, &Endpoint)>,
    deferred: bool,
    classified: bool,
) {
    // Compiled out of release builds (`release_max_level_debug`): a developer's view of every
    // outcome.
    tracing::trace!(
        status = outcome.status.as_u16(),
        error = outcome.error.map(ProxyError::as_str),
        reused = outcome.reused,
        latency_us = outcome.latency.as_micros() as u64,
        "request outcome"
    );
    if let Some(e) = outcome.error {
        listener.metrics.proxy_error(e);
    }
    if let Some(p) = peer {
        p.record(outcome.status.as_u16(), outcome.latency);
    }
    if let Some(r) = route {
        r.metrics.record(outcome.protocol, outcome.status.as_u16(), outcome.latency);
        if let Some(code) = outcome.grpc {
            r.metrics.grpc_code(code);
        }
    }
    if let Some((backend, ep)) = target {
        observe_attempt(outcome, backend, ep, deferred, classified);
    }
}

/// The endpoint's verdict on a response whose head is no failure, given when its body ends: a
/// `grpc-status` in the trailers in the service's failure set (or none at all on a gRPC
/// response), or the upstream failing mid-body, is a failure; a body that ends well a success.
/// A body the client abandons says nothing of the endpoint and gives no verdict.
pub struct BodyVerdict {
    backend: Arc<Backend>,
    endpoint: Arc<Endpoint>,
    grpc: bool,
}

/// The verdict to wait for, when the service ejects endpoints on failures and the head is no
/// failure: only then can the body's end change what the endpoint is told.
pub fn defer_verdict(
    outcome: &Outcome,
    backend: &Arc<Backend>,
    endpoint: &Arc<Endpoint>,
    grpc: bool,
) -> Option<BodyVerdict> {
    if backend.failure.accrual.is_none() || outcome.error.is_some() {
        return None;
    }
    let head_failed = backend.failure.response_failed(outcome.status.as_u16(), outcome.grpc);
    defer_judged(outcome, backend, endpoint, grpc, head_failed)
}

/// [`defer_verdict`] for a head already judged: `head_failed` when it is a failure.
pub fn defer_judged(
    outcome: &Outcome,
    backend: &Arc<Backend>,
    endpoint: &Arc<Endpoint>,
    grpc: bool,
    head_failed: bool,
) -> Option<BodyVerdict> {
    (backend.failure.accrual.is_some() && outcome.error.is_none() && !head_failed).then(|| BodyVerdict {
        backend: backend.clone(),
        endpoint: endpoint.clone(),
        grpc: grpc && outcome.grpc.is_none(),
    })
}

impl BodyVerdict {
    /// The body ended: `grpc_status` from its trailers; `broken` when the upstream failed
    /// mid-body (a reset, a connection closed early) or a policy found the response a failure.
    pub fn end(self, grpc_status: Option<u8>, broken: bool) {
        let failure = &self.backend.failure;
        let failed = broken || (self.grpc && grpc_status.is_none_or(|c| failure.grpc.contains(c)));
        let ep = &self.endpoint;
        if failed {
            ep.count_failure();
        }
        health_verdict(&self.backend, ep, failed);
    }
}

/// What one attempt tells the endpoint it went to: its counters and its health. Every attempt
/// of a retried request is observed here; the request as a whole once, by [`observe`].
#[inline]
pub fn observe_endpoint(outcome: &Outcome, backend: &Backend, ep: &Endpoint) {
    observe_attempt(outcome, backend, ep, false, false);
}

/// [`observe_endpoint`]; with `deferred`, a success is not told to the endpoint's health yet;
/// with `classified`, the response is a failure by a policy's verdict.
#[inline]
fn observe_attempt(outcome: &Outcome, backend: &Backend, ep: &Endpoint, deferred: bool, classified: bool) {
    if outcome.sent() {
        ep.count_request();
    }
    // An answer the endpoint gave is its failure by the service's policy; one the proxy made
    // is when the endpoint caused it.
    let failed = match outcome.error {
        None => classified || backend.failure.response_failed(outcome.status.as_u16(), outcome.grpc),
        Some(_) => outcome.endpoint_failed(),
    };
    if failed {
        ep.count_failure();
    }
    if backend.failure.tracks_health() {
        health(outcome, backend, ep, failed, deferred);
    }
}

/// Feeds the endpoint's health: failures toward ejection, answers toward readmission and the
/// latency estimate. The proxy's own refusals and the client's errors say nothing of the
/// endpoint and are left out.
fn health(outcome: &Outcome, backend: &Backend, ep: &Endpoint, failed: bool, deferred: bool) {
    if failed || (outcome.error.is_none() && !deferred) {
        health_verdict(backend, ep, failed);
    }
    if outcome.error.is_none() && backend.failure.track_latency {
        ep.health.observe_latency(outcome.latency);
    }
}

/// A failure toward ejection (or a failed probe), or a success that readmits and restarts the
/// count.
fn health_verdict(backend: &Backend, ep: &Endpoint, failed: bool) {
    if failed {
        let accrual = backend.failure.accrual.as_ref();
        let ejected = ep.health.failed(accrual, || accrual.is_some_and(|a| backend.endpoints().may_eject(a)));
        if let Some(penalty) = ejected {
            tracing::warn!(
                service = %backend.name,
                endpoint = %ep.address,
                failures = ep.health.consecutive_failures(),
                penalty_ms = penalty.as_millis() as u64,
                "endpoint ejected"
            );
        }
    } else {
        ep.health.succeeded();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(error: Option<ProxyError>) -> Outcome {
        Outcome {
            status: error.map_or(StatusCode::OK, ProxyError::status),
            error,
            grpc: None,
            reused: false,
            latency: Duration::ZERO,
            protocol: Protocol::Http1,
        }
    }

    #[test]
    fn only_the_endpoints_own_failures_count_against_it() {
        for e in ProxyError::ALL {
            let blamed = matches!(
                e,
                ProxyError::UpstreamConnect
                    | ProxyError::UpstreamReset
                    | ProxyError::UpstreamTimeout
                    | ProxyError::UpstreamHandshake
                    | ProxyError::UpstreamProtocol
            );
            assert_eq!(with(Some(e)).endpoint_failed(), blamed, "{e:?}");
        }
        assert!(!with(None).endpoint_failed());
        assert!(!with(Some(ProxyError::BadRequest)).endpoint_failed(), "bad framing is the client's");
        assert!(!with(Some(ProxyError::Overloaded)).sent(), "refused before it was sent");
        assert!(with(Some(ProxyError::UpstreamReset)).sent());
    }
}
