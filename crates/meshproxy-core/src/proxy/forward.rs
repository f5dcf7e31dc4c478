//! Sending one request to one endpoint, with the single retry that keep-alive pooling needs: a
//! request that failed on a *reused* connection because the peer had closed it is re-sent once
//! on a fresh connection when that is safe — nothing was sent yet (hyper hands the request back),
//! or the method is idempotent and the body empty (the request is rebuilt). This is the stale
//! keep-alive race behind Node backends (`keepAliveTimeout` 5 s) that otherwise shows as a 502.
//! That race needs a connection that sat idle up to the peer's keep-alive timeout, so the copy a
//! rebuild needs is only made for connections idle at least [`REPLAY_AFTER_IDLE`]: under load
//! connections are idle for microseconds, and the copy was ~3 % of the instructions per request.
//! HTTP/2 adds the failures that prove a request was never processed (RFC 9113 §8.7), after which
//! any method may be re-sent.

use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::endpoint::Endpoint;
use crate::error::ProxyError;
use crate::proxy::body::{Upstream, UpstreamBody};

fn idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Below every keep-alive timeout in common use (1 s and up; Node 5 s, nginx 75 s).
pub const REPLAY_AFTER_IDLE: std::time::Duration = std::time::Duration::from_millis(250);

/// A copy of an empty-bodied request's head, kept only while a reused connection might fail.
struct Replay(Method, http::Uri, http::Version, http::HeaderMap);

impl Replay {
    fn of(req: &Request<UpstreamBody>) -> Self {
        Replay(req.method().clone(), req.uri().clone(), req.version(), req.headers().clone())
    }

    fn into_request(self) -> Request<UpstreamBody> {
        let mut req = Request::new(UpstreamBody::Empty);
        *req.method_mut() = self.0;
        *req.uri_mut() = self.1;
        *req.version_mut() = self.2;
        *req.headers_mut() = self.3;
        req
    }
}

pub async fn send(
    ep: &Arc<Endpoint>,
    req: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Upstream), ProxyError> {
    let mut conn = ep.checkout().await?;
    let reused = conn.idle.is_some();
    let replay = (conn.idle.is_some_and(|idle| idle >= REPLAY_AFTER_IDLE)
        && matches!(req.body(), UpstreamBody::Empty)
        && idempotent(req.method()))
    .then(|| Replay::of(&req));
    ep.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match conn.sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, Upstream::Http1(conn.sender))),
        Err(mut err) => {
            let retry = match (err.take_message(), replay) {
                (Some(unsent), _) => Some(unsent),
                (None, Some(head)) => Some(head.into_request()),
                (None, None) => None,
            };
            match retry {
                Some(req) if reused => {
                    tracing::debug!(endpoint = %ep.address, error = %err.error(), "stale pooled connection; retrying on a fresh one");
                    ep.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut fresh = Box::pin(ep.connect()).await?;
                    match fresh.send_request(req).await {
                        Ok(resp) => Ok((resp, Upstream::Http1(fresh))),
                        Err(e) => {
                            tracing::debug!(endpoint = %ep.address, error = %e, "upstream request failed");
                            Err(ep.failed(ProxyError::UpstreamReset))
                        }
                    }
                }
                _ => {
                    tracing::debug!(endpoint = %ep.address, error = %err.error(), "upstream request failed");
                    Err(ep.failed(ProxyError::UpstreamReset))
                }
            }
        }
    }
}

/// Sends one request as a stream on a shared HTTP/2 connection. A request that fails before its
/// response headers is re-sent once, on another connection, when that is safe: hyper handed it
/// back unsent; or its body is empty and either the method is idempotent or the peer proved it
/// never processed the stream — a `REFUSED_STREAM` reset, or a GOAWAY whose last-stream-id is
/// below the stream's (RFC 9113 §8.7: such requests may be retried whatever their method). The
/// common case is a peer's GOAWAY (nginx sends one after `keepalive_requests`). A body that was
/// already handed to the connection cannot be replayed, so such requests are not retried.
pub async fn send_h2(
    ep: &Arc<Endpoint>,
    mut req: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Upstream), ProxyError> {
    to_h2(&mut req)?;
    ep.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let replay = matches!(req.body(), UpstreamBody::Empty).then(|| Replay::of(&req));
    let (mut handle, slot) = ep.checkout_h2().await?;
    match handle.sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, Upstream::Http2(slot))),
        Err(mut err) => {
            drop(slot);
            let unprocessed = never_processed(err.error());
            let retry = match (err.take_message(), replay) {
                (Some(unsent), _) => unsent,
                (None, Some(head)) if unprocessed || idempotent(&head.0) => head.into_request(),
                (None, _) => {
                    tracing::debug!(endpoint = %ep.address, error = %err.error(), "upstream h2 request failed");
                    return Err(ep.failed(ProxyError::UpstreamReset));
                }
            };
            tracing::debug!(endpoint = %ep.address, error = %err.error(), unprocessed, "upstream h2 request failed; retrying once on another connection");
            ep.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (mut other, slot) = ep.checkout_h2_avoiding(Some(&handle)).await?;
            match other.sender.send_request(retry).await {
                Ok(resp) => Ok((resp, Upstream::Http2(slot))),
                Err(e) => {
                    tracing::debug!(endpoint = %ep.address, error = %e, "upstream h2 request failed");
                    Err(ep.failed(ProxyError::UpstreamReset))
                }
            }
        }
    }
}

/// True when the peer told us it never processed the stream: it reset it with `REFUSED_STREAM`,
/// or sent a GOAWAY whose last-stream-id excludes it (h2 fails exactly those streams with a
/// remote GOAWAY error; streams the peer kept fail later with an I/O error, if at all).
fn never_processed(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && ((h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)) || h2.is_go_away());
        }
        source = e.source();
    }
    false
}

/// HTTP/2 carries the target as `:scheme` and `:authority`, not `Host`. A request that came in
/// absolute (HTTP/2, or HTTP/1.1 absolute-form) already has them; an origin-form one gets its
/// `Host` as the authority.
fn to_h2(req: &mut Request<UpstreamBody>) -> Result<(), ProxyError> {
    *req.version_mut() = http::Version::HTTP_2;
    let host = req.headers_mut().remove(http::header::HOST);
    if req.uri().authority().is_some() {
        return Ok(());
    }
    let host = host.ok_or(ProxyError::BadRequest)?;
    let authority = http::uri::Authority::try_from(host.as_bytes()).map_err(|_| ProxyError::BadRequest)?;
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest)?;
    Ok(())
}
