//! Phases 4 to 6 for a route with retries or an idle timeout. With retries, the request body is
//! read ahead (up to [`MAX_REPLAY`]) so it can be sent again; each attempt picks a backend and
//! an endpoint (another endpoint than the last where the backend has one) and is bounded by the
//! policy's attempt timeout and what is left of the route's timeout; an attempt that fails in a
//! way the policy retries, while attempts and the route's budget last, is observed against its
//! endpoint and dropped, and the next one goes. The last attempt's answer is the response,
//! observed once as the request's outcome. Without retries (a route with only an idle timeout,
//! or a method its policy does not retry) there is one attempt, its body streamed as it comes.
//! An idle timeout's clock ([`crate::proxy::idle`]) is stamped by the request body and every
//! attempt's response, and races each attempt with the route's other timeouts.
//!
//! Routes with neither never come here: their request future stays as small as it is, with no
//! idle clock.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use futures_util::future::Either;

use http::header::HeaderValue;
use http::Response;
use http_body::Body as _;
use meshproxy_http::body::{Buffered, RequestBody};
use tokio::time::Instant;
use tower::retry::budget::Budget;

use super::respond::{idle_clock, respond, After};
use super::select::{admit, carried_as_h1, choose, choose_after, speaks_h2, tls_to, Unchosen};
use super::{holds, respond_held, ConnCtx, RoutedRequest, GRPC_STATUS};
use crate::breaker::Admission;
use crate::classify::RetryPolicy;
use crate::error::ProxyError;
use crate::metrics::{parse_grpc_status, RetryReason};
use crate::proxy::body::ResponseBody;
use crate::proxy::forward;
use crate::proxy::idle;
use crate::proxy::outcome::{self, Outcome};
use crate::proxy::rewrite;
use crate::upstream::Endpoint;

/// The largest request body kept to be sent again; a longer one is sent once, not retried.
pub(super) const MAX_REPLAY: usize = 64 * 1024;

/// Why an attempt's result should be retried under `policy`, if it should.
fn retry_reason(
    policy: &RetryPolicy,
    result: &Result<(forward::Sent, Admission), ProxyError>,
    grpc: bool,
) -> Option<RetryReason> {
    match result {
        Err(ProxyError::UpstreamConnect) => Some(RetryReason::Connect),
        Err(ProxyError::UpstreamReset) => Some(RetryReason::Reset),
        Err(ProxyError::UpstreamTimeout) => Some(RetryReason::Timeout),
        Err(_) => None,
        Ok(((resp, _, _), _)) => {
            if policy.statuses.contains(resp.status().as_u16()) {
                return Some(RetryReason::Status);
            }
            let code =
                grpc.then(|| resp.headers().get(&GRPC_STATUS).and_then(|v| parse_grpc_status(v.as_bytes())));
            code.flatten().filter(|c| policy.grpc.contains(*c)).map(|_| RetryReason::GrpcStatus)
        }
    }
}

pub(super) async fn run(
    ctx: &ConnCtx,
    routed: RoutedRequest<'_>,
    policy: Option<&RetryPolicy>,
) -> Response<ResponseBody> {
    let RoutedRequest { meta, route, kind, head, body, seen, downstream_upgrade, activity } = routed;
    if let Some(p) = policy {
        p.budget.deposit();
    }
    let request = route.keeps_request.then(|| crate::policy::request_value(&head));
    let idle = idle_clock(route, &kind, meta.grpc, head.version);
    let body = match &idle {
        Some((clock, _)) => body.watched(clock),
        None => body,
    };
    // A request without a body (most that are retried) has nothing to read ahead: each attempt
    // is sent without one.
    let bodiless = body.is_end_stream();
    let mut body = if bodiless {
        None
    } else if policy.is_none() {
        // One attempt: the body is sent as it comes, nothing read ahead.
        Some(Buffered::unread(body))
    } else {
        match Buffered::read(body, MAX_REPLAY).await {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::debug!(error = %e, "client request body failed while read ahead for retries");
                return meta.fail(ProxyError::BadRequest, Some(route), None, activity);
            }
        }
    };
    let deadline = route.response_header_timeout.map(|t| meta.start + t);
    let mut last: Option<Arc<Endpoint>> = None;
    let mut attempt = 0;
    loop {
        // Another endpoint than the last, where the balancer offers one in a few draws.
        // The service's rate limits count the request once, at its first attempt; retries are
        // bounded by the route's retry budget.
        let mut picked = match choose(ctx, route, &head.headers, attempt == 0) {
            Err(Unchosen::Global(backend, check)) => choose_after(ctx, backend, check, &head.headers).await,
            chosen => chosen,
        };
        for _ in 0..3 {
            match (&picked, &last) {
                (Ok((_, ep)), Some(prev)) if Arc::ptr_eq(ep, prev) => {
                    picked = choose(ctx, route, &head.headers, false)
                }
                _ => break,
            }
        }
        let (backend, endpoint) = match picked {
            Ok(chosen) => chosen,
            Err(Unchosen::NoEndpoints | Unchosen::Global(..)) => {
                return meta.fail(ProxyError::NoEndpoints, Some(route), None, activity)
            }
            Err(Unchosen::Limited(r)) => return super::reject(meta, route, activity, *r),
        };
        let h2 = speaks_h2(backend, head.version);
        // The body for this attempt: none, or a replay while the whole body was read; otherwise
        // it goes once, and this attempt is the last.
        let (this_body, replayable) = if bodiless {
            (RequestBody::Empty, true)
        } else {
            match body.as_ref().and_then(Buffered::replay) {
                Some(b) => (b, true),
                None => (body.take().map_or(RequestBody::Empty, Buffered::into_body), false),
            }
        };
        // An HTTP/1.1 endpoint is sent the request's own head, borrowed, when it is in the
        // endpoint's form already (an origin-form target and its `Host`): no attempt copies it.
        // Otherwise each attempt has its own copy, rewritten for its endpoint.
        let borrowed = !h2 && seen.host && head.uri.authority().is_none();
        let (upstream_req, this_body) = if borrowed {
            (None, this_body)
        } else {
            match rewrite::to_upstream(
                head.clone(),
                this_body,
                seen.host,
                &endpoint.address,
                h2.then(|| tls_to(&endpoint)),
            ) {
                Ok(mut r) => {
                    if carried_as_h1(backend, h2) {
                        r.headers_mut()
                            .insert(super::ORIG_PROTO.clone(), HeaderValue::from_static("HTTP/1.1"));
                    }
                    (Some(r), RequestBody::Empty)
                }
                Err(e) => return meta.fail(e, Some(route), None, activity),
            }
        };
        let now = Instant::now();
        let limit = match (policy.and_then(|p| p.attempt_timeout).map(|t| now + t), deadline) {
            (Some(a), Some(d)) => Some(a.min(d)),
            (a, d) => a.or(d),
        };
        // Each attempt's idle time starts when it does.
        let clock = idle.as_ref().map(|(c, _)| &**c);
        if let Some(c) = clock {
            c.touch();
        }
        // Pinned where it is built and raced with the timer in place, as the plain path does:
        // moving the attempt (kilobytes) into a `Timeout` would copy it on every attempt.
        let mut send = std::pin::pin!(async {
            let permit = admit(backend, &endpoint).await?;
            let send = match upstream_req {
                None => Either::Left(forward::send_borrowed(&endpoint, &head, this_body)),
                Some(req) if h2 => Either::Right(Either::Left(forward::send_h2(&endpoint, req))),
                Some(req) => Either::Right(Either::Right(forward::send(&endpoint, req))),
            };
            Ok::<_, ProxyError>((send.await?, permit))
        });
        let result = match idle::earliest(limit, clock) {
            Some(at) => {
                let mut timer = std::pin::pin!(tokio::time::sleep_until(at));
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = send.as_mut().poll(cx) {
                        return Poll::Ready(r);
                    }
                    idle::poll_expired(timer.as_mut(), limit, clock, cx)
                        .map(|()| Err(ProxyError::UpstreamTimeout))
                })
                .await
            }
            None => send.await,
        };
        // No policy (a route with only an idle timeout): one attempt, never retried.
        let reason = policy.and_then(|p| retry_reason(p, &result, meta.grpc));
        // The clock is read only for an attempt that may be retried.
        let retry = reason.filter(|_| {
            replayable
                && policy.is_some_and(|p| attempt < p.limit)
                && deadline.is_none_or(|d| Instant::now() < d)
        });
        let over_budget = retry.is_some() && policy.is_some_and(|p| !p.budget.withdraw());
        if over_budget {
            route.metrics.retry_over_budget();
        }
        let Some(reason) = retry.filter(|_| !over_budget) else {
            let after = After { kind, downstream_upgrade, ws_key: None, activity, idle, request };
            if holds(route, backend) {
                return respond_held(ctx, &meta, route, (backend, &endpoint), after, result).await;
            }
            return respond(ctx, &meta, route, (backend, &endpoint), after, result, None);
        };
        // The failed attempt counts against its endpoint; its answer (and connection) is dropped.
        let (status, error, grpc) = match &result {
            Ok(((resp, _, _), _)) => (
                resp.status(),
                None,
                resp.headers().get(&GRPC_STATUS).and_then(|v| parse_grpc_status(v.as_bytes())),
            ),
            Err(e) => (e.status(), Some(*e), None),
        };
        let attempt_outcome =
            Outcome { status, error, grpc, reused: false, latency: now.elapsed(), protocol: meta.protocol };
        outcome::observe_endpoint(&attempt_outcome, backend, &endpoint);
        drop(result);
        route.metrics.retried(reason);
        tracing::debug!(endpoint = %endpoint.address, reason = reason.as_str(), attempt, "retrying");
        last = Some(endpoint.clone());
        attempt += 1;
    }
}
