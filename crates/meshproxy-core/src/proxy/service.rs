//! The request path, one future per request in explicit phases (see [`super`]): [`handle`]
//! runs them in order; each phase's decisions are plain functions, so the only awaits are a
//! filter that must wait (rare, boxed), the upstream attempt, and a `CONNECT` tunnel (rare,
//! boxed). Each nested `async fn` level would be a future of nearly the same size (kilobytes)
//! built and then copied into its parent's on every request (docs/performance.md).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use futures_util::future::Either;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::sync::watch;
use tokio::time::Instant;

use super::admit::{self, Kind};
use super::body::{Release, ResponseBody};
use super::idle::IdleClock;
use super::outcome::{self, Outcome};
use super::{connect, forward, rewrite, upgrade, websocket};
use crate::activity::{Activity, ActivityGuard};
use crate::balance::{hash_key_bytes, HashKey};
use crate::breaker::Admission;
use crate::compile::{Backend, ListenerRuntime, RouteRuntime};
use crate::config::UpstreamProtocol;
use crate::error::ProxyError;
use crate::filter::{self, Rejection, RequestCx, Step, Verdict};
use crate::metrics::{parse_grpc_status, PeerMetrics, Protocol};
use crate::policy::{self, BodyCheck};
use crate::ratelimit::GlobalCheck;
use crate::routing::RequestView;
use crate::state::Shared;
use crate::tcp::TcpUpstream;
use crate::upstream::{Endpoint, UpstreamIncoming};
use meshproxy_http::body::RequestBody;
use meshproxy_http::client_tunnel::ClientTunnel;
use meshproxy_http::headers::{self, Seen};
use meshproxy_http::Drain;

mod held;
mod retry;

use held::{holds, judge_head, respond_held, Held};

static ERROR_HEADER: header::HeaderName = header::HeaderName::from_static("meshproxy-error");
static GRPC_STATUS: header::HeaderName = header::HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: header::HeaderName = header::HeaderName::from_static("grpc-message");
/// Marks an HTTP/1.1 request carried over HTTP/2 between meshproxies; the receiving proxy
/// removes it (only from requests of an mTLS peer).
pub(crate) static ORIG_PROTO: header::HeaderName = header::HeaderName::from_static("meshproxy-orig-proto");

#[derive(Clone)]
pub struct ProxyService {
    ctx: Arc<ConnCtx>,
}

struct ConnCtx {
    shared: Arc<Shared>,
    drain: watch::Receiver<Drain>,
    listener_key: Arc<str>,
    client: SocketAddr,
    client_ip: HeaderValue,
    activity: Arc<Activity>,
    /// The connection came over TLS (`X-Forwarded-Proto: https`).
    tls: bool,
    /// The SPIFFE ID of the mTLS peer (a meshed listener): its requests may carry
    /// `meshproxy-orig-proto`.
    peer_id: Option<Arc<str>>,
    /// The responses counted for that identity (`meshproxy_peer_requests_total`).
    peer_metrics: Option<Arc<PeerMetrics>>,
}

impl ProxyService {
    pub fn new(
        shared: Arc<Shared>,
        listener_key: Arc<str>,
        client: SocketAddr,
        activity: Arc<Activity>,
        drain: watch::Receiver<Drain>,
        tls: bool,
        peer: Option<(Arc<str>, Arc<PeerMetrics>)>,
    ) -> Self {
        let client_ip =
            HeaderValue::from_str(&client.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        ProxyService {
            ctx: Arc::new(ConnCtx {
                shared,
                drain,
                listener_key,
                client,
                client_ip,
                activity,
                tls,
                peer_id: peer.as_ref().map(|(id, _)| id.clone()),
                peer_metrics: peer.map(|(_, m)| m),
            }),
        }
    }
}

/// The HTTP/2 server calls this, once per stream.
impl meshproxy_http::h2_server::Handler for ProxyService {
    type Body = ResponseBody;

    fn call(
        &self,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
        let ctx = self.ctx.clone();
        async move {
            match handle(ctx, req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    }
}

/// hyper's HTTP/1.1 server calls this.
impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        meshproxy_http::box_built_in_place(|| handle(self.ctx.clone(), req.map(RequestBody::Http1)))
    }
}

/// A response the proxy makes itself: short body, `meshproxy-error` header. gRPC clients get
/// what gRPC expects instead of a bare HTTP error: HTTP 200 with `grpc-status` and
/// `grpc-message` in a trailers-only response, so the client library reports UNAVAILABLE,
/// DEADLINE_EXCEEDED, … rather than a protocol error.
pub fn local_error(e: ProxyError, grpc: bool, activity: Option<ActivityGuard>) -> Response<ResponseBody> {
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

/// One request, start to response head, in phases: 1 admit, 2 route, 3 request filters, 4 choose
/// a backend, 5 choose an endpoint, 6 the attempt, 7 response filters, 8 respond. Every request's
/// outcome is observed once ([`outcome::observe`]).
async fn handle(ctx: Arc<ConnCtx>, req: Request<RequestBody>) -> Result<Response<ResponseBody>, Infallible> {
    let activity = ctx.activity.begin();
    // Holding the snapshot for the whole request: a reload mid-request does not change its route.
    let snapshot = ctx.shared.snapshot().load_full();
    let Some(listener) = snapshot.listeners.get(&*ctx.listener_key) else {
        return Ok(local_error(ProxyError::ShuttingDown, admit::is_grpc(&req), Some(activity)));
    };
    // If the client goes away before the response headers, the server drops this future: count it.
    let cancelled = CancelGuard(Some(&listener.metrics.cancelled));
    let resp = 'respond: {
        // 1, 2: admit and route.
        let mut routed = match route(&ctx, listener, req, activity) {
            Routed::Answered(resp) => break 'respond *resp,
            Routed::Connect(tunnel) => break 'respond Box::pin(tunnel.run()).await,
            Routed::Http(r) => r,
        };
        // 3: request filters.
        let mut from = 0;
        let mut waiting: Option<Pin<Box<dyn Future<Output = Verdict> + Send>>> = None;
        loop {
            if let Some(fut) = waiting.take() {
                match fut.await {
                    Verdict::Continue => {}
                    Verdict::Respond(e) => break 'respond routed.fail(e),
                    Verdict::Reject(r) => break 'respond routed.reject(*r),
                    Verdict::Redirect(status, location) => break 'respond routed.redirect(status, location),
                    Verdict::Wait(again) => {
                        waiting = Some(again);
                        continue;
                    }
                }
            }
            let mut cx = RequestCx {
                head: &mut routed.head,
                seen: &mut routed.seen,
                client: ctx.client,
                client_ip: &ctx.client_ip,
                tls: ctx.tls,
                peer_id: ctx.peer_id.as_deref(),
            };
            match filter::run_request(&routed.route.request_filters, from, &mut cx) {
                Step::Done => break,
                Step::Respond(e) => break 'respond routed.fail(e),
                Step::Reject(r) => break 'respond routed.reject(*r),
                Step::Redirect(status, location) => break 'respond routed.redirect(status, location),
                Step::Wait(fut, next) => {
                    waiting = Some(fut);
                    from = next;
                }
            }
        }
        // A route with retries or an idle timeout takes its own (boxed) path for phases 4 to 6:
        // never an upgrade, a tunnel or a WebSocket; retried only for a method the policy allows.
        if routed.route.attempts_boxed && matches!(routed.kind, Kind::Plain) {
            let (head, grpc) = (&routed.head, routed.meta.grpc);
            let policy = routed.route.retry.as_deref().filter(|p| p.allows(&head.method, grpc));
            if policy.is_some() || routed.route.idle_timeout.is_some() {
                break 'respond meshproxy_http::box_built_in_place(|| retry::run(&ctx, routed, policy)).await;
            }
        }
        // 4, 5: backend and endpoint; then the request in the endpoint's form.
        let (backend, endpoint, h2) = match select(&ctx, &routed).await {
            Ok(chosen) => chosen,
            Err(Unchosen::NoEndpoints | Unchosen::Global(..)) => {
                break 'respond routed.fail(ProxyError::NoEndpoints)
            }
            Err(Unchosen::Limited(r)) => break 'respond routed.reject(*r),
        };
        // The routed request's fields are used where they are, not moved out: the head is
        // rewritten in place and an HTTP/1.1 endpoint is sent it borrowed.
        let route = routed.route;
        let request = route.keeps_request.then(|| policy::request_value(&routed.head));
        let tls = h2.then(|| tls_to(&endpoint));
        if let Err(e) = rewrite::head_in_place(&mut routed.head, routed.seen.host, &endpoint.address, tls) {
            break 'respond routed.fail(e);
        }
        let body = rewrite::upstream_body(routed.body);
        let head = &mut routed.head;
        if carried_as_h1(backend, h2) {
            head.headers.insert(ORIG_PROTO.clone(), HeaderValue::from_static("HTTP/1.1"));
        }
        let ws_key = match &routed.kind {
            Kind::Upgrade(token) => {
                upgrade::restore(&mut head.headers, token.clone());
                None
            }
            Kind::WebSocketH2 => {
                head.method = Method::GET;
                Some(websocket::to_http1_handshake(&mut head.headers))
            }
            _ => None,
        };
        let (kind, downstream_upgrade, activity) = (routed.kind, routed.downstream_upgrade, routed.activity);
        let after = After { kind, downstream_upgrade, ws_key, activity, idle: None, request };
        // 6: the attempt. Pinned where it is built and raced with the timer in place:
        // `tokio::time::timeout(t, attempt)` moves this (large) future into its own, a memcpy of
        // its whole size on every request.
        let mut attempt = std::pin::pin!(async {
            let permit = admit(backend, &endpoint).await?;
            // One future awaited at one point: awaited in two branches, the two send futures
            // would be laid out side by side in this one instead of overlapping.
            let send = if h2 {
                Either::Left(forward::send_h2(&endpoint, rewrite::take_request(head, body)))
            } else {
                Either::Right(forward::send_borrowed(&endpoint, head, body))
            };
            let sent = send.await?;
            Ok::<_, ProxyError>((sent, permit))
        });
        let result = match route.response_header_timeout {
            Some(t) => {
                let mut timer = std::pin::pin!(tokio::time::sleep(t));
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = attempt.as_mut().poll(cx) {
                        return Poll::Ready(r);
                    }
                    timer.as_mut().poll(cx).map(|()| Err(ProxyError::UpstreamTimeout))
                })
                .await
            }
            None => attempt.await,
        };
        // 7, 8: response filters, respond (a policy that reads the body may hold the head).
        if holds(route, backend) {
            break 'respond Box::pin(respond_held(
                &ctx,
                &routed.meta,
                route,
                (backend, &endpoint),
                after,
                result,
            ))
            .await;
        }
        respond(&ctx, &routed.meta, route, (backend, &endpoint), after, result, None)
    };
    cancelled.disarm();
    Ok(resp)
}

struct CancelGuard<'a>(Option<&'a std::sync::atomic::AtomicU64>);

impl CancelGuard<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if let Some(counter) = self.0 {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// What every outcome of one request needs for its metrics and its error shape.
struct Meta<'a> {
    listener: &'a ListenerRuntime,
    /// The counters of the connection's mTLS peer identity, if it has one.
    peer: Option<&'a PeerMetrics>,
    start: Instant,
    grpc: bool,
    protocol: Protocol,
}

impl Meta<'_> {
    /// A proxy-made error response, its outcome observed.
    fn fail(
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

/// Where phases 1 and 2 leave a request.
// The large variant is the common one: boxing it would allocate on every request.
#[allow(clippy::large_enum_variant)]
enum Routed<'a> {
    /// Answered without an upstream (an error, or a refusal). Boxed, as `Connect` is: both are
    /// rare, and the common variant is returned by value on every request.
    Answered(Box<Response<ResponseBody>>),
    Connect(Box<Tunnel<'a>>),
    Http(RoutedRequest<'a>),
}

/// A request admitted and routed, its hop-by-hop fields removed.
struct RoutedRequest<'a> {
    meta: Meta<'a>,
    route: &'a RouteRuntime,
    kind: Kind,
    head: Parts,
    body: RequestBody,
    /// One scan of the head's field names, after hop-by-hop removal.
    seen: Seen,
    downstream_upgrade: Option<ClientTunnel>,
    activity: ActivityGuard,
}

impl RoutedRequest<'_> {
    fn fail(self, e: ProxyError) -> Response<ResponseBody> {
        self.meta.fail(e, Some(self.route), None, self.activity)
    }

    /// A filter's refusal with fields of its own ([`Rejection`]), its outcome observed.
    #[cold]
    fn reject(self, r: Rejection) -> Response<ResponseBody> {
        reject(self.meta, self.route, self.activity, r)
    }

    /// The route's redirect, its outcome observed; the route's response filters run on it.
    fn redirect(self, status: StatusCode, location: HeaderValue) -> Response<ResponseBody> {
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

/// A refusal with fields of its own ([`Rejection`]: a filter's, a service's rate limit), its
/// outcome observed (against no endpoint).
#[cold]
fn reject(
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

/// What shapes the response once the upstream answers.
struct After {
    kind: Kind,
    downstream_upgrade: Option<ClientTunnel>,
    ws_key: Option<HeaderValue>,
    activity: ActivityGuard,
    /// The exchange's idle clock when the route has an idle timeout, and whether the client
    /// can be sent gRPC trailers ([`idle_clock`]).
    idle: Option<(Arc<IdleClock>, bool)>,
    /// The request's attributes, for response policies that read them ([`policy`]).
    request: Option<meshproxy_policy::Value>,
}

/// The idle clock of a request on `route`, when the route has an idle timeout and the request is
/// a plain exchange (upgrades, WebSockets and tunnels keep the listener's `tunnelIdleTimeout`);
/// with whether an idle response may end with gRPC trailers: a gRPC client over HTTP/2 (an
/// HTTP/1.1 client may not take trailers at all).
fn idle_clock(
    route: &RouteRuntime,
    kind: &Kind,
    grpc: bool,
    version: Version,
) -> Option<(Arc<IdleClock>, bool)> {
    let timeout = route.idle_timeout?;
    matches!(kind, Kind::Plain)
        .then(|| (Arc::new(IdleClock::new(timeout)), grpc && version == Version::HTTP_2))
}

/// A `CONNECT` a route allows: a TCP tunnel to the endpoint its balancer picks.
struct Tunnel<'a> {
    ctx: &'a ConnCtx,
    meta: Meta<'a>,
    route: &'a RouteRuntime,
    backend: &'a Backend,
    /// None while `check` is pending: its endpoint is chosen once it admits the tunnel.
    endpoint: Option<Arc<Endpoint>>,
    /// The service's global rate limits, when it has them.
    check: Option<GlobalCheck>,
    req: Request<RequestBody>,
    activity: ActivityGuard,
}

impl Tunnel<'_> {
    async fn run(self) -> Response<ResponseBody> {
        let Tunnel { ctx, meta, route, backend, endpoint, check, mut req, activity } = self;
        if let Some(check) = check {
            if let Err(r) = check.await {
                return reject(meta, route, activity, *r);
            }
        }
        let endpoint = match endpoint.map_or_else(|| endpoint_of(ctx, backend, req.headers()), Ok) {
            Ok(e) => e,
            Err(_) => return meta.fail(ProxyError::NoEndpoints, Some(route), None, activity),
        };
        let upstream = match TcpUpstream::connect(&endpoint, &backend.tcp).await {
            Ok(u) => u,
            Err(e) => return meta.fail(e, Some(route), Some((backend, &endpoint)), activity),
        };
        let downstream = ClientTunnel::take(&mut req);
        let outcome = Outcome {
            status: StatusCode::OK,
            error: None,
            grpc: None,
            reused: false,
            latency: meta.start.elapsed(),
            protocol: meta.protocol,
        };
        outcome::observe(&outcome, meta.listener, meta.peer, Some(route), Some((backend, &endpoint)));
        connect::splice(
            downstream,
            upstream,
            meta.listener.limits.tunnel_idle_timeout,
            ctx.drain.clone(),
            activity,
        );
        Response::new(ResponseBody::empty(None))
    }
}

/// Phases 1 and 2: what the request is, whether it is well-formed, and its route. A routed
/// request leaves with its hop-by-hop fields removed (they are this hop's, whatever filters and
/// the upstream do next).
fn route<'a>(
    ctx: &'a ConnCtx,
    listener: &'a ListenerRuntime,
    req: Request<RequestBody>,
    activity: ActivityGuard,
) -> Routed<'a> {
    let grpc = admit::is_grpc(&req);
    let kind = admit::classify(&req);
    let protocol = admit::protocol(&req, &kind, grpc);
    let meta = Meta { listener, peer: ctx.peer_metrics.as_deref(), start: Instant::now(), grpc, protocol };
    if matches!(kind, Kind::OtherProtocol) {
        return Routed::Answered(Box::new(meta.fail(ProxyError::ConnectRefused, None, None, activity)));
    }
    let Ok(host) = admit::request_host(&req) else {
        return Routed::Answered(Box::new(meta.fail(ProxyError::BadRequest, None, None, activity)));
    };
    if admit::uri_len(req.uri()) > listener.limits.max_uri_bytes {
        return Routed::Answered(Box::new(meta.fail(ProxyError::UriTooLong, None, None, activity)));
    }
    if matches!(kind, Kind::Connect) {
        // A CONNECT names only an authority: routes match it by host, as if its path were `/`.
        let route = find_route(listener, host, &req, &Method::CONNECT, "/");
        let Some(route) = route.filter(|r| r.allow_connect) else {
            return Routed::Answered(Box::new(meta.fail(ProxyError::ConnectRefused, route, None, activity)));
        };
        if !filter::authz::allows_connect(&route.request_filters, ctx.client, ctx.peer_id.as_deref(), &req) {
            return Routed::Answered(Box::new(meta.fail(ProxyError::Forbidden, Some(route), None, activity)));
        }
        let (backend, endpoint, check) = match choose(ctx, route, req.headers(), true) {
            Ok((backend, endpoint)) => (backend, Some(endpoint), None),
            Err(Unchosen::Global(backend, check)) => (backend, None, Some(check)),
            Err(Unchosen::NoEndpoints) => {
                return Routed::Answered(Box::new(meta.fail(
                    ProxyError::NoEndpoints,
                    Some(route),
                    None,
                    activity,
                )))
            }
            Err(Unchosen::Limited(r)) => {
                return Routed::Answered(Box::new(reject(meta, route, activity, *r)))
            }
        };
        return Routed::Connect(Box::new(Tunnel {
            ctx,
            meta,
            route,
            backend,
            endpoint,
            check,
            req,
            activity,
        }));
    }
    // An extended CONNECT is a GET in everything but its framing.
    let route_method = if matches!(kind, Kind::WebSocketH2) { &Method::GET } else { req.method() };
    let Some(route) = find_route(listener, host, &req, route_method, req.uri().path()) else {
        return Routed::Answered(Box::new(meta.fail(ProxyError::NoRoute, None, None, activity)));
    };
    let mut req = req;
    let downstream_upgrade = match kind {
        Kind::Upgrade(_) | Kind::WebSocketH2 => Some(ClientTunnel::take(&mut req)),
        _ => None,
    };
    let (mut head, body) = req.into_parts();
    if let Some(uri) = admit::normalized_uri(&head.uri) {
        head.uri = uri;
    }
    let seen = headers::scan(&head.headers);
    let seen = headers::strip_seen(&mut head.headers, seen);
    if ctx.peer_id.is_some() {
        from_mesh_h2(&mut head);
    }
    // `Expect: 100-continue` is answered by this proxy (hyper sends the 100 when the body is
    // first read, i.e. when the upstream is ready for it), so it does not travel further.
    if seen.expect {
        head.headers.remove(header::EXPECT);
    }
    Routed::Http(RoutedRequest { meta, route, kind, head, body, seen, downstream_upgrade, activity })
}

/// Phases 4 and 5: the backend (a weighted choice when a route splits its traffic) and the
/// endpoint (the backend's balancer over its current endpoint set); whether the request goes
/// over HTTP/2. `None` when the backend has no endpoints.
async fn select<'a>(
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

/// A request from a meshed peer that was HTTP/1.1 before the peer proxy carried it over HTTP/2
/// (`meshproxy-orig-proto: HTTP/1.1`, removed here) is an HTTP/1.1 request again: an `auto`
/// service gets it as HTTP/1.1, as the application sent it.
#[cold]
fn from_mesh_h2(head: &mut Parts) {
    if head.version != Version::HTTP_2 {
        return;
    }
    if let Some(v) = head.headers.remove(&ORIG_PROTO) {
        if v == "HTTP/1.1" {
            head.version = Version::HTTP_11;
        }
    }
}

/// Whether a plain request of `version` goes to `backend` over HTTP/2: a meshed HTTP/1.1
/// service takes HTTP/1.1 and HTTP/2 requests over HTTP/2 (multiplexed between the proxies),
/// HTTP/1.0 ones as they are.
fn speaks_h2(backend: &Backend, version: Version) -> bool {
    match backend.protocol {
        UpstreamProtocol::Http1 => {
            backend.mesh_h2 && (version == Version::HTTP_11 || version == Version::HTTP_2)
        }
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Auto => version == Version::HTTP_2,
    }
}

/// Whether `endpoint` is reached over TLS (an HTTP/2 request's `:scheme` is then `https`).
pub(crate) fn tls_to(endpoint: &crate::upstream::Endpoint) -> bool {
    matches!(endpoint.connector(), crate::upstream::Connector::Tls(_))
}

/// Whether a request going over HTTP/2 (`h2`) to `backend` is one for a meshed HTTP/1.1
/// service: it is marked `meshproxy-orig-proto: HTTP/1.1`, so the peer proxy serves it to its
/// application as HTTP/1.1, whatever version the client spoke.
pub(crate) fn carried_as_h1(backend: &Backend, h2: bool) -> bool {
    h2 && backend.mesh_h2
}

/// Why [`choose`] gave no endpoint.
enum Unchosen<'a> {
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
fn choose<'a>(
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
async fn choose_after<'a>(
    ctx: &ConnCtx,
    backend: &'a Arc<Backend>,
    check: GlobalCheck,
    headers: &http::HeaderMap,
) -> Result<(&'a Arc<Backend>, Arc<Endpoint>), Unchosen<'a>> {
    check.await.map_err(Unchosen::Limited)?;
    Ok((backend, endpoint_of(ctx, backend, headers)?))
}

/// One of `backend`'s endpoints, by its balancer.
fn endpoint_of<'a>(
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
fn admit<'a>(
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

/// Phases 7 and 8: the downstream response from the upstream's answer (or failure), its
/// outcome observed.
fn respond(
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

fn find_route<'a>(
    listener: &'a ListenerRuntime,
    host: Option<&str>,
    req: &Request<RequestBody>,
    method: &Method,
    path: &str,
) -> Option<&'a RouteRuntime> {
    let view = RequestView { host, path, query: req.uri().query(), method, headers: req.headers() };
    let i = listener.table.find(&view)?;
    listener.routes.get(i)
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
