//! Phases 4 and 5: the backend (a weighted choice when a route splits its traffic) and the
//! endpoint (the backend's balancer, hashing the request when it asks to), the chosen service's
//! rate limits checked on the way, and whether the request then goes over HTTP/2, over TLS, or
//! marked as a meshed HTTP/1.1 request; with the slots a request holds at its endpoint while in
//! flight ([`admit`]).
//!
//! Used by [`super`] (`handle`, and the route phase for a `CONNECT`) and by [`super::retry`],
//! which chooses again for each attempt. It does not build or send the request, and answers no
//! request itself: a refusal comes back as [`Unchosen`] for the caller to respond with.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::Either;
use http::Version;

use super::{ConnCtx, RoutedRequest};
use crate::balance::{hash_key_bytes, HashKey};
use crate::breaker::Admission;
use crate::compile::{Backend, RouteRuntime};
use crate::config::UpstreamProtocol;
use crate::error::ProxyError;
use crate::filter::Rejection;
use crate::proxy::admit::Kind;
use crate::ratelimit::GlobalCheck;
use crate::upstream::Endpoint;

/// Phases 4 and 5: the backend (a weighted choice when a route splits its traffic) and the
/// endpoint (the backend's balancer over its current endpoint set); whether the request goes
/// over HTTP/2. `None` when the backend has no endpoints.
pub(super) async fn select<'a>(
    ctx: &ConnCtx,
    routed: &RoutedRequest<'a>,
) -> Result<(&'a Arc<Backend>, Arc<Endpoint>, bool), Unchosen<'a>> {
    let (backend, endpoint) = match choose(ctx, routed.route, &routed.head.headers, true) {
        Err(Unchosen::Global(backend, check)) => {
            choose_after(ctx, backend, check, &routed.head.headers).await?
        }
        chosen => chosen?,
    };
    // Upgrades exist only in HTTP/1.1, whatever the service's protocol (see `websocket` for
    // extended CONNECT).
    let h2 = matches!(routed.kind, Kind::Plain) && speaks_h2(backend, routed.head.version);
    Ok((backend, endpoint, h2))
}

/// Whether a plain request of `version` goes to `backend` over HTTP/2: a meshed HTTP/1.1
/// service takes HTTP/1.1 and HTTP/2 requests over HTTP/2 (multiplexed between the proxies),
/// HTTP/1.0 ones as they are.
pub(super) fn speaks_h2(backend: &Backend, version: Version) -> bool {
    match backend.protocol {
        UpstreamProtocol::Http1 => {
            backend.mesh_h2 && (version == Version::HTTP_11 || version == Version::HTTP_2)
        }
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Auto => version == Version::HTTP_2,
    }
}

/// Whether `endpoint` is reached over TLS (an HTTP/2 request's `:scheme` is then `https`).
pub(super) fn tls_to(endpoint: &crate::upstream::Endpoint) -> bool {
    matches!(endpoint.connector(), crate::upstream::Connector::Tls(_))
}

/// Whether a request going over HTTP/2 (`h2`) to `backend` is one for a meshed HTTP/1.1
/// service: it is marked `meshproxy-orig-proto: HTTP/1.1`, so the peer proxy serves it to its
/// application as HTTP/1.1, whatever version the client spoke.
pub(super) fn carried_as_h1(backend: &Backend, h2: bool) -> bool {
    h2 && backend.mesh_h2
}

/// Why [`choose`] gave no endpoint.
pub(super) enum Unchosen<'a> {
    /// The backend has none (or the route has no backend).
    NoEndpoints,
    /// The chosen service's rate limits refused the request.
    Limited(Box<Rejection>),
    /// The chosen service's local rate limits admitted the request and its global ones must be
    /// awaited: [`choose_after`] the check gives the endpoint.
    Global(&'a Arc<Backend>, GlobalCheck),
}

/// A backend of `route` and one of its endpoints, by the backend's balancer (hashing the
/// request when it asks to). With `limit`, the chosen service's rate limits are checked first: a
/// request they refuse goes to no endpoint.
pub(super) fn choose<'a>(
    ctx: &ConnCtx,
    route: &'a RouteRuntime,
    headers: &http::HeaderMap,
    limit: bool,
) -> Result<(&'a Arc<Backend>, Arc<Endpoint>), Unchosen<'a>> {
    let backend = route.backends.as_ref().ok_or(Unchosen::NoEndpoints)?.pick();
    if let Some(limits) = backend.rate_limits.as_ref().filter(|_| limit) {
        if let Err(denied) = limits.check(headers, ctx.client, ctx.peer_id.as_deref()) {
            return Err(Unchosen::Limited(Box::new(limits.rejection(denied))));
        }
        if let Some(check) = limits.global(headers, ctx.client, ctx.peer_id.as_deref()) {
            return Err(Unchosen::Global(backend, check));
        }
    }
    Ok((backend, endpoint_of(ctx, backend, headers)?))
}

/// [`choose`]'s end once a service's global rate limits are checked: the endpoint, or the
/// refusal.
pub(super) async fn choose_after<'a>(
    ctx: &ConnCtx,
    backend: &'a Arc<Backend>,
    check: GlobalCheck,
    headers: &http::HeaderMap,
) -> Result<(&'a Arc<Backend>, Arc<Endpoint>), Unchosen<'a>> {
    check.await.map_err(Unchosen::Limited)?;
    Ok((backend, endpoint_of(ctx, backend, headers)?))
}

/// One of `backend`'s endpoints, by its balancer.
pub(super) fn endpoint_of<'a>(
    ctx: &ConnCtx,
    backend: &Backend,
    headers: &http::HeaderMap,
) -> Result<Arc<Endpoint>, Unchosen<'a>> {
    let set = backend.endpoints();
    let hash = set.hash_key().and_then(|k| request_hash(k, headers, ctx.client));
    let endpoint = set.select(hash).ok_or(Unchosen::NoEndpoints)?.clone();
    // An ejected endpoint whose penalty is over gets this request as its probe.
    endpoint.health.sending();
    Ok(endpoint)
}

/// The slots a request to `endpoint` of `backend` holds while in flight: the endpoint's, and the
/// service's when it has a circuit breaker. A free slot without a breaker (the common case) is
/// taken at once, with no future to build and poll.
pub(super) fn admit<'a>(
    backend: &'a Backend,
    endpoint: &'a Endpoint,
) -> Either<
    std::future::Ready<Result<Admission, ProxyError>>,
    impl Future<Output = Result<Admission, ProxyError>> + 'a,
> {
    if backend.breaker.is_none() {
        if let Some(permit) = endpoint.try_acquire() {
            return Either::Left(std::future::ready(Ok(Admission { _permit: permit, _breaker: None })));
        }
    }
    Either::Right(async move {
        match &backend.breaker {
            None => Ok(Admission { _permit: endpoint.acquire().await?, _breaker: None }),
            Some(b) => b.admit(endpoint).await,
        }
    })
}

fn request_hash(key: &HashKey, headers: &http::HeaderMap, client: SocketAddr) -> Option<u64> {
    match key {
        HashKey::Header(name) => headers.get(name).map(|v| hash_key_bytes(v.as_bytes())),
        HashKey::Cookie(name) => crate::routing::cookie(headers, name).map(hash_key_bytes),
        HashKey::Source => Some(match client.ip() {
            std::net::IpAddr::V4(ip) => hash_key_bytes(&ip.octets()),
            std::net::IpAddr::V6(ip) => hash_key_bytes(&ip.octets()),
        }),
    }
}
