//! The request path, one future per request in explicit phases (see [`super`]): [`handle`]
//! runs them in order; each phase's decisions are plain functions, so the only awaits are a
//! filter that must wait (rare, boxed), the upstream attempt, and a `CONNECT` tunnel (rare,
//! boxed). Each nested `async fn` level would be a future of nearly the same size (kilobytes)
//! built and then copied into its parent's on every request (docs/performance.md).
//!
//! Phases 4 and 5 are in [`select`], phases 7 and 8 and the responses the proxy makes itself in
//! [`respond`]; routes with retries or an idle timeout take [`retry`] for phases 4 to 6; response
//! policies that read the body hold the head in [`held`].

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
use super::body::ResponseBody;
use super::outcome::{self, Outcome};
use super::{connect, forward, rewrite, upgrade, websocket};
use crate::activity::{Activity, ActivityGuard};
use crate::compile::{Backend, ListenerRuntime, RouteRuntime};
use crate::error::ProxyError;
use crate::filter::{self, RequestCx, Step, Verdict};
use crate::metrics::{PeerMetrics, Protocol};
use crate::policy;
use crate::ratelimit::GlobalCheck;
use crate::routing::RequestView;
use crate::state::Shared;
use crate::tcp::TcpUpstream;
use crate::upstream::Endpoint;
use meshproxy_http::body::RequestBody;
use meshproxy_http::client_tunnel::ClientTunnel;
use meshproxy_http::headers::{self, Seen};
use meshproxy_http::Drain;

mod held;
mod respond;
mod retry;
mod select;

use held::{holds, respond_held};
use respond::{local_error, reject, respond, After};
use select::{admit, carried_as_h1, choose, endpoint_of, select, tls_to, Unchosen};

static GRPC_STATUS: header::HeaderName = header::HeaderName::from_static("grpc-status");
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
