//! Phases 7 and 8, and the responses the proxy makes itself. [`respond`] turns the upstream's
//! answer (or its failure) into the downstream response: response policies on the head, the
//! hop-by-hop fields removed, an upgrade or a WebSocket handshake handed over, the route's
//! response filters, and a body that releases the connection and the endpoint's slots when it
//! ends. [`local_error`], [`Meta::fail`], [`reject`] and a routed request's `fail`, `reject` and
//! `redirect` are the responses made without an upstream answer. Each observes the request's
//! outcome once ([`outcome`]).
//!
//! Used by [`super`] (the admit and route phases, the request filters, the CONNECT tunnel and
//! `handle`'s attempt), by [`super::retry`] (the last attempt's answer) and by [`super::held`]
//! (after reading the body ahead). It takes what the attempt gave and does not know how the
//! backend and the endpoint were chosen, whether an attempt was retried, or how the request was
//! sent.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode, Version};

use super::held::{judge_head, Held};
use super::{ConnCtx, Meta, RoutedRequest, GRPC_STATUS};
use crate::activity::ActivityGuard;
use crate::breaker::Admission;
use crate::compile::{Backend, RouteRuntime};
use crate::error::ProxyError;
use crate::filter::{self, Rejection};
use crate::metrics::parse_grpc_status;
use crate::policy::{self, BodyCheck};
use crate::proxy::admit::Kind;
use crate::proxy::body::{Release, ResponseBody};
use crate::proxy::idle::IdleClock;
use crate::proxy::outcome::{self, Outcome};
use crate::proxy::{forward, upgrade, websocket};
use crate::upstream::{Endpoint, UpstreamIncoming};
use meshproxy_http::client_tunnel::ClientTunnel;
use meshproxy_http::headers;

static ERROR_HEADER: header::HeaderName = header::HeaderName::from_static("meshproxy-error");
static GRPC_MESSAGE: header::HeaderName = header::HeaderName::from_static("grpc-message");

/// What shapes the response once the upstream answers.
pub(super) struct After {
    pub(super) kind: Kind,
    pub(super) downstream_upgrade: Option<ClientTunnel>,
    pub(super) ws_key: Option<HeaderValue>,
    pub(super) activity: ActivityGuard,
    /// The exchange's idle clock when the route has an idle timeout, and whether the client
    /// can be sent gRPC trailers ([`idle_clock`]).
    pub(super) idle: Option<(Arc<IdleClock>, bool)>,
    /// The request's attributes, for response policies that read them ([`policy`]).
    pub(super) request: Option<meshproxy_policy::Value>,
}

/// The idle clock of a request on `route`, when the route has an idle timeout and the request is
/// a plain exchange (upgrades, WebSockets and tunnels keep the listener's `tunnelIdleTimeout`);
/// with whether an idle response may end with gRPC trailers: a gRPC client over HTTP/2 (an
/// HTTP/1.1 client may not take trailers at all).
pub(super) fn idle_clock(
    route: &RouteRuntime,
    kind: &Kind,
    grpc: bool,
    version: Version,
) -> Option<(Arc<IdleClock>, bool)> {
    let timeout = route.idle_timeout?;
    matches!(kind, Kind::Plain)
        .then(|| (Arc::new(IdleClock::new(timeout)), grpc && version == Version::HTTP_2))
}

/// Phases 7 and 8: the downstream response from the upstream's answer (or failure), its
/// outcome observed.
pub(super) fn respond(
    ctx: &ConnCtx,
    meta: &Meta<'_>,
    route: &RouteRuntime,
    (backend, endpoint): (&Arc<Backend>, &Arc<Endpoint>),
    after: After,
    result: Result<(forward::Sent, Admission), ProxyError>,
    held: Option<Held>,
) -> Response<ResponseBody> {
    let After { kind, downstream_upgrade, ws_key, activity, idle, request } = after;
    let ((resp, stream, reused), permit) = match result {
        Ok(r) => r,
        Err(e) => return meta.fail(e, Some(route), Some((backend, endpoint)), activity),
    };
    let handshake = ws_key.as_ref().map(|key| websocket::judge(resp.status(), resp.headers(), key));
    if handshake == Some(websocket::Answer::Broken) {
        tracing::debug!(endpoint = %endpoint.address, status = %resp.status(), "upstream did not accept the translated WebSocket handshake");
        drop((resp, stream, permit));
        return meta.fail(ProxyError::UpstreamHandshake, Some(route), Some((backend, endpoint)), activity);
    }
    let accepted = handshake == Some(websocket::Answer::Accepted);
    let status = if accepted { StatusCode::OK } else { resp.status() };
    // Trailers-only gRPC response: the status is in the headers.
    let grpc = if meta.grpc {
        resp.headers().get(&GRPC_STATUS).map(|v| parse_grpc_status(v.as_bytes()))
    } else {
        None
    };
    // 7: response policies, on the head (and on the body when it was held or is empty). Out of
    // line: a response without policies pays one check.
    let mut judged =
        if matches!(kind, Kind::Plain) && (route.policies.is_some() || backend.policies.is_some()) {
            Some(judge_head(
                route,
                backend,
                request.as_ref(),
                status,
                resp.headers(),
                resp.body().is_end_stream(),
                held.as_ref(),
            ))
        } else {
            None
        };
    let failed_by_policy = judged.as_ref().is_some_and(|j| j.verdicts.failed);
    if let Some(messages) = judged.as_mut().and_then(|j| j.verdicts.denied.take()) {
        drop((resp, stream, permit));
        let mut denied =
            meta.fail(ProxyError::PolicyViolation, Some(route), Some((backend, endpoint)), activity);
        if !meta.grpc {
            let body = policy::messages_body(&messages);
            denied.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            let activity = denied.body_mut().take_activity();
            *denied.body_mut() = ResponseBody::local_owned(body, activity);
        }
        return denied;
    }
    let outcome = Outcome {
        status,
        error: None,
        grpc: grpc.flatten(),
        reused,
        latency: meta.start.elapsed(),
        protocol: meta.protocol,
    };
    // The body is still to come: when the service ejects on failures, a gRPC status in the
    // trailers or a body cut short (or a policy judging the body) may yet make this response
    // the endpoint's failure.
    let streams = matches!(kind, Kind::Plain) && !resp.body().is_end_stream();
    let verdict = if streams && !failed_by_policy {
        outcome::defer_verdict(&outcome, backend, endpoint, meta.grpc)
    } else {
        None
    };
    outcome::observe_head(
        &outcome,
        meta.listener,
        meta.peer,
        Some(route),
        Some((backend, endpoint)),
        verdict.is_some(),
        failed_by_policy,
    );
    let (mut parts, mut body) = resp.into_parts();
    // A 101 hands over the upstream connection (HTTP/1.1: upgrades never go over HTTP/2).
    let tunnel = match (downstream_upgrade, &mut body) {
        (Some(downstream), UpstreamIncoming::H1(b)) => b.take_upgraded().map(|up| (downstream, up)),
        _ => None,
    };
    // An HTTP/1.1 client's 101 keeps its Upgrade (hop-by-hop, but this hop carries it).
    let token = match kind {
        Kind::Upgrade(_) if tunnel.is_some() => parts.headers.get(header::UPGRADE).cloned(),
        _ => None,
    };
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(token) = token {
        upgrade::restore(&mut parts.headers, token);
    }
    if accepted {
        parts.status = status;
        websocket::to_h2_accepted(&mut parts.headers);
    }
    filter::run_response(&route.response_filters, &mut parts);
    if let Some(j) = judged.as_ref().filter(|j| !j.verdicts.warnings.is_empty()) {
        parts.headers.insert(policy::WARNING_HEADER.clone(), policy::warning_value(&j.verdicts.warnings));
    }
    if let Some((downstream, upstream_io)) = tunnel {
        // The tunnel outlives this request; its connection is not pooled again.
        drop((stream, permit));
        upgrade::splice(
            downstream,
            upstream_io,
            meta.listener.limits.tunnel_idle_timeout,
            ctx.drain.clone(),
            Some(activity),
        );
        return Response::from_parts(parts, ResponseBody::empty(None));
    }
    let release = Release { _stream: stream, _slots: permit };
    // A streamed gRPC response's status comes in its trailers: the body counts it.
    let grpc_metrics = (meta.grpc && grpc.is_none()).then(|| route.metrics.clone());
    // A response of announced length cut short is broken whatever follows: no trailers then.
    let idle = idle
        .map(|(clock, trailers)| (clock, trailers && !parts.headers.contains_key(header::CONTENT_LENGTH)));
    let mut body = ResponseBody::upstream(body, release, activity, grpc_metrics, verdict, idle);
    if judged.as_ref().is_some_and(|j| j.copies && !j.verdicts.failed) {
        let head_failed = backend.failure.response_failed(status.as_u16(), outcome.grpc);
        let head = (status.as_u16(), parts.headers.clone());
        let lists = [route.policies.clone(), backend.policies.clone()];
        body.set_check(Box::new(BodyCheck::new(lists, request, head, endpoint.clone(), head_failed)));
    }
    if let Some(h) = held {
        body = ResponseBody::replay(h.frames, body);
    }
    Response::from_parts(parts, body)
}

/// A response the proxy makes itself: short body, `meshproxy-error` header. gRPC clients get
/// what gRPC expects instead of a bare HTTP error: HTTP 200 with `grpc-status` and
/// `grpc-message` in a trailers-only response, so the client library reports UNAVAILABLE,
/// DEADLINE_EXCEEDED, … rather than a protocol error.
pub(super) fn local_error(
    e: ProxyError,
    grpc: bool,
    activity: Option<ActivityGuard>,
) -> Response<ResponseBody> {
    if grpc {
        let mut resp = Response::new(ResponseBody::empty(activity));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(GRPC_STATUS.clone(), HeaderValue::from_static(e.grpc_status()));
        h.insert(GRPC_MESSAGE.clone(), HeaderValue::from_static(e.grpc_message()));
        h.insert(ERROR_HEADER.clone(), HeaderValue::from_static(e.as_str()));
        return resp;
    }
    let mut resp = Response::new(ResponseBody::local(e.body(), activity));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    // Set here: the HTTP/2 server does not derive it from the body's size, as hyper does.
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(e.body().len()));
    h.insert(ERROR_HEADER.clone(), HeaderValue::from_static(e.as_str()));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

impl Meta<'_> {
    /// A proxy-made error response, its outcome observed.
    pub(super) fn fail(
        &self,
        e: ProxyError,
        route: Option<&RouteRuntime>,
        target: Option<(&Backend, &Endpoint)>,
        activity: ActivityGuard,
    ) -> Response<ResponseBody> {
        // A gRPC client sees HTTP 200 and a grpc-status; count what it saw.
        let (status, grpc) = if self.grpc {
            (StatusCode::OK, parse_grpc_status(e.grpc_status().as_bytes()))
        } else {
            (e.status(), None)
        };
        let outcome = Outcome {
            status,
            error: Some(e),
            grpc,
            reused: false,
            latency: self.start.elapsed(),
            protocol: self.protocol,
        };
        outcome::observe(&outcome, self.listener, self.peer, route, target);
        local_error(e, self.grpc, Some(activity))
    }
}

/// A refusal with fields of its own ([`Rejection`]: a filter's, a service's rate limit), its
/// outcome observed (against no endpoint).
#[cold]
pub(super) fn reject(
    meta: Meta<'_>,
    route: &RouteRuntime,
    activity: ActivityGuard,
    r: Rejection,
) -> Response<ResponseBody> {
    let grpc = meta.grpc;
    let mut resp = meta.fail(r.error, Some(route), None, activity);
    if let Some(body) = r.body.filter(|_| !grpc) {
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let activity = resp.body_mut().take_activity();
        *resp.body_mut() = ResponseBody::local_owned(body, activity);
    }
    let h = resp.headers_mut();
    let mut last = None;
    for (name, value) in r.headers {
        // `None` after the first value of a name: append to the field just replaced.
        match name {
            Some(n) => {
                h.insert(n.clone(), value);
                last = Some(n);
            }
            None => {
                if let Some(n) = &last {
                    h.append(n.clone(), value);
                }
            }
        }
    }
    resp
}

impl RoutedRequest<'_> {
    pub(super) fn fail(self, e: ProxyError) -> Response<ResponseBody> {
        self.meta.fail(e, Some(self.route), None, self.activity)
    }

    /// A filter's refusal with fields of its own ([`Rejection`]), its outcome observed.
    #[cold]
    pub(super) fn reject(self, r: Rejection) -> Response<ResponseBody> {
        reject(self.meta, self.route, self.activity, r)
    }

    /// The route's redirect, its outcome observed; the route's response filters run on it.
    pub(super) fn redirect(self, status: StatusCode, location: HeaderValue) -> Response<ResponseBody> {
        let outcome = Outcome {
            status,
            error: None,
            grpc: None,
            reused: false,
            latency: self.meta.start.elapsed(),
            protocol: self.meta.protocol,
        };
        outcome::observe(&outcome, self.meta.listener, self.meta.peer, Some(self.route), None);
        let mut resp = Response::new(ResponseBody::empty(Some(self.activity)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::LOCATION, location);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let (mut parts, body) = resp.into_parts();
        filter::run_response(&self.route.response_filters, &mut parts);
        Response::from_parts(parts, body)
    }
}
