//! Sending one request to one endpoint, with the single retry that keep-alive pooling needs: a
//! request that failed on a *reused* connection because the peer had closed it is re-sent once
//! on a fresh connection when that is safe — no byte of it was sent (the body is still whole),
//! or the connection ended before any response, the body is empty and the method idempotent.
//! This is the stale keep-alive race behind Node backends (`keepAliveTimeout` 5 s) that
//! otherwise shows as a 502. That race needs a connection that sat idle up to the peer's
//! keep-alive timeout, so the second case is only retried for connections idle at least
//! [`REPLAY_AFTER_IDLE`]. HTTP/2 adds the failures that prove a request was never processed
//! (RFC 9113 §8.7), after which any method may be re-sent.

use std::borrow::Borrow;
use std::future::Future;
use std::sync::Arc;

use http::{Method, Request, Response};
use http_body::Body as _;

use crate::error::ProxyError;
use crate::upstream::{h1_error, Endpoint, UpstreamIncoming};
use meshproxy_http::body::{pipe_to_h2, H2Body, RequestBody};
use meshproxy_http::h1::Failed;
use meshproxy_http::h2_client::{H2Handle, H2Sender};
use meshproxy_upstream::pool::multiplexed::StreamSlot;
use meshproxy_upstream::tls::refused_our_certificate;
use meshproxy_upstream::Checkout;

/// A response; for HTTP/2 the stream slot it holds on its connection until it ends; and whether
/// the connection had carried an earlier request.
pub type Sent = (Response<UpstreamIncoming>, Option<StreamSlot>, bool);

/// Methods whose requests may be repeated with the same effect (RFC 9110 §9.2.2).
pub(crate) fn idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Below every keep-alive timeout in common use (1 s and up; Node 5 s, nginx 75 s).
pub const REPLAY_AFTER_IDLE: std::time::Duration = std::time::Duration::from_millis(250);

/// A copy of an HTTP/2 request's head: h2 takes the head by value, and a retry needs it again.
struct Replay(Method, http::Uri, http::Version, http::HeaderMap);

impl Replay {
    fn of(req: &Request<RequestBody>) -> Self {
        Replay(req.method().clone(), req.uri().clone(), req.version(), req.headers().clone())
    }

    fn into_request<B>(self, body: B) -> Request<B> {
        let mut req = Request::new(body);
        *req.method_mut() = self.0;
        *req.uri_mut() = self.1;
        *req.version_mut() = self.2;
        *req.headers_mut() = self.3;
        req
    }
}

/// Sends one request to an HTTP/1.1 endpoint.
pub fn send(
    ep: &Arc<Endpoint>,
    req: Request<RequestBody>,
) -> impl Future<Output = Result<Sent, ProxyError>> + Send + '_ {
    let (head, body) = req.into_parts();
    send_h1(ep, head, body)
}

/// [`send`] with the head borrowed, for a caller that keeps it: the plain path (the head stays in
/// the request's state, unmoved) and a route's retries (which may send it again). It
/// must already be in the endpoint's form (origin-form target, `Host`; see `rewrite`; its version
/// is not read: the head goes as HTTP/1.1). It is encoded from the reference, so nothing is copied.
pub fn send_borrowed<'a>(
    ep: &'a Arc<Endpoint>,
    head: &'a http::request::Parts,
    body: RequestBody,
) -> impl Future<Output = Result<Sent, ProxyError>> + Send + 'a {
    send_h1(ep, head, body)
}

async fn send_h1<H: Borrow<http::request::Parts>>(
    ep: &Arc<Endpoint>,
    head: H,
    body: RequestBody,
) -> Result<Sent, ProxyError> {
    let head = head.borrow();
    let empty = body.is_end_stream();
    let Checkout { conn, idle } = ep.checkout().await?;
    // The head is encoded from a reference, so a retry has it without a copy.
    let Failed { error, unsent, no_response } = match conn.send(head, body, ep.clone()).await {
        Ok(resp) => return Ok((resp.map(UpstreamIncoming::H1), None, idle.is_some())),
        Err(failed) => failed,
    };
    if error.is_client() {
        // The upstream connection is dropped, which aborts the request there.
        tracing::debug!(endpoint = %ep.address, %error, "client request body failed; upstream request aborted");
        return Err(h1_error(&error));
    }
    let retry = match (idle, unsent) {
        (Some(_), Some(body)) => Some(body),
        (Some(idle), None)
            if no_response && idle >= REPLAY_AFTER_IDLE && idempotent(&head.method) && empty =>
        {
            Some(RequestBody::Empty)
        }
        _ => None,
    };
    let Some(body) = retry else {
        tracing::debug!(endpoint = %ep.address, %error, "upstream request failed");
        return Err(h1_error(&error));
    };
    tracing::debug!(endpoint = %ep.address, %error, "stale pooled connection; retrying on a fresh one");
    ep.count_retry();
    // Boxed, as the other rare paths: inline, a second exchange's state would size every
    // request's future (built and moved on every request) to hold it.
    Box::pin(retry_h1(ep, head, body)).await
}

async fn retry_h1(
    ep: &Arc<Endpoint>,
    head: &http::request::Parts,
    body: RequestBody,
) -> Result<Sent, ProxyError> {
    let fresh = ep.connect().await?;
    match fresh.send(head, body, ep.clone()).await {
        Ok(resp) => Ok((resp.map(UpstreamIncoming::H1), None, false)),
        Err(Failed { error, .. }) => {
            tracing::debug!(endpoint = %ep.address, %error, "upstream request failed");
            Err(h1_error(&error))
        }
    }
}

/// Sends one request as a stream on a shared HTTP/2 connection. A request that fails before its
/// response headers is re-sent once, on another connection, when that is safe: it never reached
/// the connection (closed or going away); or its body is empty and either the method is
/// idempotent or the peer proved it never processed the stream — a `REFUSED_STREAM` reset, or a
/// GOAWAY whose last-stream-id is below the stream's (RFC 9113 §8.7: such requests may be
/// retried whatever their method). The common case is a peer's GOAWAY (nginx sends one after
/// `keepalive_requests`). A body already handed to the stream cannot be replayed, so such
/// requests are not retried. The request is in the HTTP/2 form already (`rewrite::to_upstream`).
pub async fn send_h2(ep: &Arc<Endpoint>, req: Request<RequestBody>) -> Result<Sent, ProxyError> {
    // h2 takes the head by value; a retry needs it again.
    let replay = Replay::of(&req);
    let (parts, body) = req.into_parts();
    let (mut handle, slot, reused) = ep.checkout_h2().await?;
    let failure = match exchange(&mut handle.sender, Request::from_parts(parts, ()), body).await {
        Ok(resp) => return Ok((resp, Some(slot), reused)),
        Err(f) => f,
    };
    drop(slot);
    let (err, body) = match failure {
        // A meshed peer that refuses this proxy's certificate refuses every connection alike.
        H2Failure::Unsent(err, _) | H2Failure::Sent(err, _) if refused_our_certificate(&err) => {
            return Err(ProxyError::UpstreamConnect);
        }
        H2Failure::Unsent(err, body) => (err, body),
        H2Failure::Sent(err, true) if never_processed(&err) || idempotent(&replay.0) => {
            (err, RequestBody::Empty)
        }
        // Reset by this side: the client's request body broke off (`pipe_to_h2` cancels the
        // stream), a malformed request rather than the endpoint's failure.
        H2Failure::Sent(err, _) if err.is_reset() && !err.is_remote() => {
            tracing::debug!(endpoint = %ep.address, error = %err, "client request body failed; upstream stream cancelled");
            return Err(ProxyError::BadRequest);
        }
        H2Failure::Sent(err, _) => {
            tracing::debug!(endpoint = %ep.address, error = %err, "upstream h2 request failed");
            return Err(ProxyError::UpstreamReset);
        }
    };
    tracing::debug!(endpoint = %ep.address, error = %err, "upstream h2 request failed; retrying once on another connection");
    ep.count_retry();
    // Boxed for the reason given in `send`.
    Box::pin(retry_h2(ep, &handle, replay, body)).await
}

async fn retry_h2(
    ep: &Arc<Endpoint>,
    failed_on: &H2Handle,
    replay: Replay,
    body: RequestBody,
) -> Result<Sent, ProxyError> {
    let (mut other, slot, reused) = ep.checkout_h2_avoiding(Some(failed_on)).await?;
    match exchange(&mut other.sender, replay.into_request(()), body).await {
        Ok(resp) => Ok((resp, Some(slot), reused)),
        Err(H2Failure::Unsent(e, _) | H2Failure::Sent(e, _)) => {
            tracing::debug!(endpoint = %ep.address, error = %e, "upstream h2 request failed");
            Err(if refused_our_certificate(&e) {
                ProxyError::UpstreamConnect
            } else {
                ProxyError::UpstreamReset
            })
        }
    }
}

enum H2Failure {
    /// Never handed to the connection: safe to send elsewhere, and the body is still whole.
    Unsent(h2::Error, RequestBody),
    /// Sent (with an empty body when true); the error tells whether the peer processed it.
    Sent(h2::Error, bool),
}

/// One request/response exchange on an HTTP/2 connection, awaited in the caller's task.
async fn exchange(
    sender: &mut H2Sender,
    head: Request<()>,
    body: RequestBody,
) -> Result<Response<UpstreamIncoming>, H2Failure> {
    if let Err(e) = std::future::poll_fn(|cx| sender.poll_ready(cx)).await {
        return Err(H2Failure::Unsent(e, body));
    }
    let empty = body.is_end_stream();
    let (response, tx) = match sender.send_request(head, empty) {
        Ok(sent) => sent,
        Err(e) => return Err(H2Failure::Unsent(e, body)),
    };
    if !empty {
        // The client's body broke off: the upstream must not take it as complete.
        tokio::spawn(pipe_to_h2(body, tx, |_| h2::Reason::CANCEL));
    }
    match response.await {
        Ok(resp) => {
            let (parts, recv) = resp.into_parts();
            let body = H2Body::new(recv, &parts.headers);
            Ok(Response::from_parts(parts, UpstreamIncoming::H2(body)))
        }
        Err(e) => Err(H2Failure::Sent(e, empty)),
    }
}

/// True when the peer told us it never processed the stream: it reset it with `REFUSED_STREAM`,
/// or sent a GOAWAY whose last-stream-id excludes it (h2 fails exactly those streams with a
/// remote GOAWAY error; streams the peer kept fail later with an I/O error, if at all).
fn never_processed(e: &h2::Error) -> bool {
    e.is_remote() && ((e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM)) || e.is_go_away())
}
