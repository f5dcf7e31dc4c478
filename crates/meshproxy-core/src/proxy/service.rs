//! The per-connection hyper service: one call per request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use futures_util::future::Either;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::{Release, ResponseBody};
use super::{connect, forward, upgrade, websocket};
use crate::balance::{hash_key_bytes, HashKey};
use crate::compile::{ListenerRuntime, RouteRuntime};
use crate::config::UpstreamProtocol;
use crate::error::ProxyError;
use crate::listener::{Activity, ActivityGuard};
use crate::metrics::Protocol;
use crate::server::Shared;
use crate::tcp::TcpUpstream;
use crate::upstream::{Endpoint, UpstreamIncoming};
use meshproxy_http::body::RequestBody;
use meshproxy_http::client_tunnel::ClientTunnel;
use meshproxy_http::headers;
use meshproxy_http::Drain;
use meshproxy_upstream::pool::multiplexed::StreamSlot;
use tokio::sync::{watch, OwnedSemaphorePermit};

static ERROR_HEADER: header::HeaderName = header::HeaderName::from_static("meshproxy-error");
static GRPC_STATUS: header::HeaderName = header::HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: header::HeaderName = header::HeaderName::from_static("grpc-message");

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
}

impl ProxyService {
    pub fn new(
        shared: Arc<Shared>,
        listener_key: Arc<str>,
        client: SocketAddr,
        activity: Arc<Activity>,
        drain: watch::Receiver<Drain>,
    ) -> Self {
        let client_ip =
            HeaderValue::from_str(&client.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        ProxyService { ctx: Arc::new(ConnCtx { shared, drain, listener_key, client, client_ip, activity }) }
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

fn is_grpc(req: &Request<RequestBody>) -> bool {
    req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// One request, start to response head. Routing and checks are plain functions (`plan`,
/// `finish`); the only awaits are the upstream attempt and the rare CONNECT tunnel (boxed). Each
/// nested `async fn` level would be a future of nearly the same size (kilobytes) built and then
/// copied into its parent's on every request (docs/performance.md).
async fn handle(ctx: Arc<ConnCtx>, req: Request<RequestBody>) -> Result<Response<ResponseBody>, Infallible> {
    let activity = ctx.activity.begin();
    // Holding the snapshot for the whole request: a reload mid-request does not change its route.
    let snapshot = ctx.shared.snapshot.load_full();
    let Some(listener) = snapshot.listeners.get(&*ctx.listener_key) else {
        return Ok(local_error(ProxyError::ShuttingDown, is_grpc(&req), Some(activity)));
    };
    // If the client goes away before the response headers, the server drops this future: count it.
    let cancelled = CancelGuard(Some(&listener.metrics.cancelled));
    let resp = match plan(&ctx, listener, req, activity) {
        Planned::Done(resp) => resp,
        Planned::Connect(tunnel) => Box::pin(tunnel.run()).await,
        Planned::Forward(Forward { meta, route, endpoint, h2, upstream_req, after }) => {
            // Pinned where it is built and raced with the timer in place: `tokio::time::timeout(t,
            // attempt)` moves this (large) future into its own, a memcpy of its whole size on
            // every request.
            let mut attempt = std::pin::pin!(async {
                let permit = endpoint.acquire().await?;
                // One future awaited at one point: awaited in two branches, the two send futures
                // were laid out side by side in this one instead of overlapping.
                let send = if h2 {
                    Either::Left(forward::send_h2(endpoint, upstream_req))
                } else {
                    Either::Right(forward::send(endpoint, upstream_req))
                };
                let (resp, stream) = send.await?;
                Ok::<_, ProxyError>((resp, stream, permit))
            });
            let result = match route.response_header_timeout {
                Some(t) => {
                    let mut timer = std::pin::pin!(tokio::time::sleep(t));
                    std::future::poll_fn(|cx| {
                        if let Poll::Ready(r) = attempt.as_mut().poll(cx) {
                            return Poll::Ready(r);
                        }
                        timer.as_mut().poll(cx).map(|()| Err(endpoint.failed(ProxyError::UpstreamTimeout)))
                    })
                    .await
                }
                None => attempt.await,
            };
            finish(&ctx, &meta, route, endpoint, after, result)
        }
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

/// What a request asks of the proxy beyond forwarding it.
enum Kind {
    Plain,
    /// HTTP/1.1 `Upgrade`, with its token.
    Upgrade(HeaderValue),
    /// HTTP/2 extended CONNECT for a WebSocket (RFC 8441).
    WebSocketH2,
    /// `CONNECT` to an authority: a TCP tunnel if a route allows it.
    Connect,
    /// Extended CONNECT for a protocol other than WebSocket, which the proxy cannot translate.
    OtherProtocol,
}

fn classify(req: &Request<RequestBody>) -> Kind {
    if req.method() == Method::CONNECT {
        return match req.extensions().get::<h2::ext::Protocol>() {
            None => Kind::Connect,
            Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => Kind::WebSocketH2,
            Some(_) => Kind::OtherProtocol,
        };
    }
    match upgrade::requested(req.version(), req.headers()) {
        Some(token) => Kind::Upgrade(token),
        None => Kind::Plain,
    }
}

/// What every outcome of one request needs for its metrics and its error shape.
struct Meta<'a> {
    listener: &'a ListenerRuntime,
    start: Instant,
    grpc: bool,
    protocol: Protocol,
}

impl Meta<'_> {
    /// A proxy-made error response, counted on the listener and (when routed) on the route.
    fn fail(
        &self,
        e: ProxyError,
        route: Option<&RouteRuntime>,
        activity: ActivityGuard,
    ) -> Response<ResponseBody> {
        self.listener.metrics.proxy_error(e);
        if let Some(r) = route {
            // A gRPC client sees HTTP 200 and a grpc-status; count what it saw.
            let status = if self.grpc { 200 } else { e.status().as_u16() };
            r.metrics.record(self.protocol, status, self.start.elapsed());
            if self.grpc {
                r.metrics.grpc_status(e.grpc_status().as_bytes());
            }
        }
        local_error(e, self.grpc, Some(activity))
    }
}

enum Planned<'a> {
    /// Answered without an upstream (an error, or a refusal).
    Done(Response<ResponseBody>),
    Connect(Box<Tunnel<'a>>),
    Forward(Forward<'a>),
}

/// A request routed to an endpoint, ready to send.
struct Forward<'a> {
    meta: Meta<'a>,
    route: &'a RouteRuntime,
    endpoint: &'a Arc<Endpoint>,
    h2: bool,
    upstream_req: Request<RequestBody>,
    after: After,
}

/// What shapes the response once the upstream answers.
struct After {
    kind: Kind,
    downstream_upgrade: Option<ClientTunnel>,
    ws_key: Option<HeaderValue>,
    activity: ActivityGuard,
}

/// A `CONNECT` a route allows: a TCP tunnel to the endpoint its balancer picks.
struct Tunnel<'a> {
    ctx: &'a ConnCtx,
    meta: Meta<'a>,
    route: &'a RouteRuntime,
    endpoint: &'a Arc<Endpoint>,
    req: Request<RequestBody>,
    activity: ActivityGuard,
}

impl Tunnel<'_> {
    async fn run(self) -> Response<ResponseBody> {
        let Tunnel { ctx, meta, route, endpoint, mut req, activity } = self;
        let upstream = match TcpUpstream::connect(endpoint, &route.service.tcp).await {
            Ok(u) => u,
            Err(e) => return meta.fail(e, Some(route), activity),
        };
        let downstream = ClientTunnel::take(&mut req);
        route.metrics.record(meta.protocol, 200, meta.start.elapsed());
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

/// Everything before the upstream: checks, route, endpoint, the upstream request.
fn plan<'a>(
    ctx: &'a ConnCtx,
    listener: &'a ListenerRuntime,
    req: Request<RequestBody>,
    activity: ActivityGuard,
) -> Planned<'a> {
    let grpc = is_grpc(&req);
    let kind = classify(&req);
    let protocol = if grpc {
        Protocol::Grpc
    } else if matches!(kind, Kind::Upgrade(_) | Kind::WebSocketH2) {
        Protocol::Ws
    } else if req.version() == Version::HTTP_2 {
        Protocol::H2
    } else {
        Protocol::Http1
    };
    let meta = Meta { listener, start: Instant::now(), grpc, protocol };
    if matches!(kind, Kind::OtherProtocol) {
        return Planned::Done(meta.fail(ProxyError::ConnectRefused, None, activity));
    }
    let Ok(host) = request_host(&req) else {
        return Planned::Done(meta.fail(ProxyError::BadRequest, None, activity));
    };
    if uri_len(req.uri()) > listener.limits.max_uri_bytes {
        return Planned::Done(meta.fail(ProxyError::UriTooLong, None, activity));
    }
    if matches!(kind, Kind::Connect) {
        // A CONNECT names only an authority: routes match it by host, as if its path were `/`.
        let route = find_route(listener, host, &req, &Method::CONNECT, "/");
        let Some(route) = route.filter(|r| r.allow_connect) else {
            return Planned::Done(meta.fail(ProxyError::ConnectRefused, route, activity));
        };
        let service = &route.service;
        let hash = service.balancer.hash_key().and_then(|k| request_hash(k, &req, ctx.client));
        let Some(endpoint) = service.balancer.pick(hash).and_then(|i| service.endpoints.get(i)) else {
            return Planned::Done(meta.fail(ProxyError::NoEndpoints, Some(route), activity));
        };
        return Planned::Connect(Box::new(Tunnel { ctx, meta, route, endpoint, req, activity }));
    }
    // An extended CONNECT is a GET in everything but its framing.
    let route_method = if matches!(kind, Kind::WebSocketH2) { &Method::GET } else { req.method() };
    let Some(route) = find_route(listener, host, &req, route_method, req.uri().path()) else {
        return Planned::Done(meta.fail(ProxyError::NoRoute, None, activity));
    };
    let service = &route.service;
    let hash = service.balancer.hash_key().and_then(|k| request_hash(k, &req, ctx.client));
    let Some(endpoint) = service.balancer.pick(hash).and_then(|i| service.endpoints.get(i)) else {
        return Planned::Done(meta.fail(ProxyError::NoEndpoints, Some(route), activity));
    };

    // Upgrades exist only in HTTP/1.1, whatever the service's protocol (see `websocket` for
    // extended CONNECT).
    let h2 = matches!(kind, Kind::Plain)
        && match service.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Auto => req.version() == Version::HTTP_2,
        };
    let mut req = req;
    let downstream_upgrade = match kind {
        Kind::Upgrade(_) | Kind::WebSocketH2 => Some(ClientTunnel::take(&mut req)),
        _ => None,
    };
    let mut upstream_req =
        match prepare_request(req, &ctx.client_ip, &endpoint.address, h2, listener.proxy_headers) {
            Ok(r) => r,
            Err(e) => return Planned::Done(meta.fail(e, Some(route), activity)),
        };
    let ws_key = match &kind {
        Kind::Upgrade(token) => {
            upgrade::restore(upstream_req.headers_mut(), token.clone());
            None
        }
        Kind::WebSocketH2 => {
            *upstream_req.method_mut() = Method::GET;
            Some(websocket::to_http1_handshake(upstream_req.headers_mut()))
        }
        _ => None,
    };
    let after = After { kind, downstream_upgrade, ws_key, activity };
    Planned::Forward(Forward { meta, route, endpoint, h2, upstream_req, after })
}

/// The downstream response from the upstream's answer (or failure).
fn finish(
    ctx: &ConnCtx,
    meta: &Meta<'_>,
    route: &RouteRuntime,
    endpoint: &Arc<Endpoint>,
    after: After,
    result: Result<(Response<UpstreamIncoming>, Option<StreamSlot>, OwnedSemaphorePermit), ProxyError>,
) -> Response<ResponseBody> {
    let After { kind, downstream_upgrade, ws_key, activity } = after;
    let (resp, stream, permit) = match result {
        Ok(r) => r,
        Err(e) => return meta.fail(e, Some(route), activity),
    };
    let handshake = ws_key.as_ref().map(|key| websocket::judge(resp.status(), resp.headers(), key));
    if handshake == Some(websocket::Answer::Broken) {
        tracing::debug!(endpoint = %endpoint.address, status = %resp.status(), "upstream did not accept the translated WebSocket handshake");
        drop((resp, stream, permit));
        return meta.fail(endpoint.failed(ProxyError::UpstreamHandshake), Some(route), activity);
    }
    let accepted = handshake == Some(websocket::Answer::Accepted);
    let status = if accepted { StatusCode::OK } else { resp.status() };
    route.metrics.record(meta.protocol, status.as_u16(), meta.start.elapsed());
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
    if meta.listener.proxy_headers {
        parts.headers.append(header::VIA, headers::via(parts.version));
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
    let release = Release { _stream: stream, _permit: permit };
    let grpc_metrics = if meta.grpc {
        match parts.headers.get(&GRPC_STATUS) {
            // Trailers-only response: the status is in the headers.
            Some(code) => {
                route.metrics.grpc_status(code.as_bytes());
                None
            }
            None => Some(route.metrics.clone()),
        }
    } else {
        None
    };
    Response::from_parts(parts, ResponseBody::upstream(body, release, activity, grpc_metrics))
}

/// The host a request is routed on: the target's authority when it has one (absolute form, and
/// every HTTP/2 request), else its one `Host` field. `Err` for a malformed request, which gets
/// 400 and is never forwarded (RFC 9112 §3.2): an HTTP/1.1 request with neither, more than one
/// `Host` field line, or an invalid `Host` value; and an HTTP/2 request whose `Host` names another
/// authority than `:authority` (RFC 9113 §8.3.1), since the proxy routes on one and a backend
/// might route on the other. An HTTP/1.1 absolute-form target wins over a differing `Host`, which
/// the upstream request replaces (RFC 9112 §3.2.2, see `prepare_request`).
///
/// The request-smuggling shapes of the body framing are handled by hyper's parser before we see
/// the request: `Transfer-Encoding` with `Content-Length` drops the latter (the body is framed by
/// chunks, as §6.3 requires of an intermediary), conflicting `Content-Length`s and a non-chunked
/// final coding are 400s.
fn request_host(req: &Request<RequestBody>) -> Result<Option<&str>, ()> {
    let mut fields = req.headers().get_all(header::HOST).into_iter();
    let host = fields.next();
    if fields.next().is_some() {
        return Err(());
    }
    let host = match host {
        Some(h) if valid_host(h.as_bytes()) => Some(h),
        Some(_) => return Err(()),
        None => None,
    };
    match (req.uri().authority(), host) {
        (Some(a), Some(h)) if req.version() == Version::HTTP_2 => {
            if h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
                Ok(Some(a.as_str()))
            } else {
                Err(())
            }
        }
        (Some(a), _) => Ok(Some(a.as_str())),
        // Checked by `valid_host`: visible ASCII only.
        (None, Some(h)) => Ok(h.to_str().ok().filter(|h| !h.is_empty())),
        (None, None) if req.version() == Version::HTTP_11 => Err(()),
        (None, None) => Ok(None),
    }
}

/// A `Host` value as RFC 9110 §7.2 allows it: `uri-host [ ":" port ]`, where a host is a
/// registered name or IPv4 address (unreserved, percent-encoded and sub-delims characters) or a
/// bracketed IP literal, and a port is digits; empty when the target has no authority. Anything
/// else (spaces, `/`, `@` userinfo, `?`, `#`, controls, non-ASCII, a second `:`) could be read
/// differently by the backend.
fn valid_host(v: &[u8]) -> bool {
    const fn reg_name() -> [bool; 256] {
        let mut t = [false; 256];
        let allowed = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=";
        let mut i = 0;
        while i < allowed.len() {
            t[allowed[i] as usize] = true;
            i += 1;
        }
        t
    }
    static REG_NAME: [bool; 256] = reg_name();
    let (name, port, literal) = if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|&b| b == b']') else { return false };
        let port = match &v[end + 1..] {
            [] => &[][..],
            [b':', port @ ..] => port,
            _ => return false,
        };
        (&v[1..end], port, true)
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i + 1..], false),
            None => (v, &[][..], false),
        }
    };
    name.iter().all(|&b| REG_NAME[b as usize] || (literal && b == b':'))
        && port.iter().all(u8::is_ascii_digit)
}

/// The length of the request target as `Uri`'s `Display` writes it, without writing it: HTTP/2
/// requests are absolute, and formatting each one to a `String` was ~4 % of the h2 hot path.
fn uri_len(uri: &Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + "://".len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let query = uri.query().map_or(0, |q| q.len() + 1);
    scheme + authority + uri.path().len() + query
}

fn find_route<'a>(
    listener: &'a ListenerRuntime,
    host: Option<&str>,
    req: &Request<RequestBody>,
    method: &Method,
    path: &str,
) -> Option<&'a RouteRuntime> {
    let i = listener.table.find(host, path, method, req.headers())?;
    listener.routes.get(i)
}

fn request_hash(key: &HashKey, req: &Request<RequestBody>, client: SocketAddr) -> Option<u64> {
    match key {
        HashKey::Header(name) => req.headers().get(name).map(|v| hash_key_bytes(v.as_bytes())),
        HashKey::Cookie(name) => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == &**name).then(|| hash_key_bytes(v.as_bytes()))
            }),
        HashKey::Source => Some(match client.ip() {
            std::net::IpAddr::V4(ip) => hash_key_bytes(&ip.octets()),
            std::net::IpAddr::V6(ip) => hash_key_bytes(&ip.octets()),
        }),
    }
}

/// Turns the downstream request into the upstream one: proxy headers, and for an HTTP/1.1
/// upstream an origin-form URI with `Host` (an HTTP/2 upstream keeps an absolute URI, which
/// `forward::send_h2` sends as `:scheme`/`:authority`).
fn prepare_request(
    req: Request<RequestBody>,
    client_ip: &HeaderValue,
    upstream_authority: &str,
    h2: bool,
    proxy_headers: bool,
) -> Result<Request<RequestBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let seen = headers::scan(&parts.headers);
    // An absolute-form target's authority replaces a `Host` the client sent (RFC 9112 §3.2.2).
    let host = if seen.host && parts.uri.authority().is_none() {
        // Only x-forwarded-host reads it.
        proxy_headers.then(|| parts.headers.get(header::HOST).cloned()).flatten()
    } else {
        // Absolute-form (`GET http://host/path`, and every HTTP/2 request): the authority is the
        // host (x-forwarded-host reads it). HTTP/1.0 clients may send neither; the upstream
        // request is HTTP/1.1, which requires a Host, so it names the endpoint.
        let host = parts.uri.authority().map_or(upstream_authority, |a| a.as_str());
        let host = HeaderValue::from_str(host).map_err(|_| ProxyError::BadRequest)?;
        // An HTTP/2 upstream takes the authority as `:authority`, not as a `Host` (`to_h2`).
        if !h2 || parts.uri.authority().is_none() {
            parts.headers.insert(header::HOST, host.clone());
        }
        Some(host)
    };
    if !h2 && parts.uri.authority().is_some() {
        // Origin form from the parts already parsed (no re-parse, no copy of the path).
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = None;
        uri.authority = None;
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        parts.uri = Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest)?;
    }
    let seen = headers::strip_seen(&mut parts.headers, seen);
    // `Expect: 100-continue` is answered by this proxy (hyper sends the 100 when the body is
    // first read, i.e. when the upstream is ready for it), so it does not travel further.
    if seen.expect {
        parts.headers.remove(header::EXPECT);
    }
    if proxy_headers {
        headers::add_forwarded(&mut parts.headers, seen, client_ip, host, parts.version);
    }
    parts.version = Version::HTTP_11;
    let body = if body.is_end_stream() { RequestBody::Empty } else { body };
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_as_rfc_9110_allows_them() {
        for ok in
            ["", "example.com", "Example.COM:8080", "a-b_c~d%20", "127.0.0.1:80", "[::1]", "[::1]:443", "h:"]
        {
            assert!(valid_host(ok.as_bytes()), "{ok:?} is valid");
        }
        for bad in [
            "a b",
            "a/b",
            "user@host",
            "host?x",
            "host#x",
            "a:b:c",
            "host:http",
            "[::1",
            "[::1]x",
            "x[::1]",
            "host\t",
            "h\u{e9}",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} is invalid");
        }
    }

    #[test]
    fn uri_len_is_the_displayed_length() {
        for s in [
            "/",
            "/a/b?x=1&y",
            "http://example.com",
            "http://example.com/",
            "https://example.com:8443/p?q",
            "example.com:443",
            "*",
            "http://[::1]:80/x?",
        ] {
            let uri: Uri = s.parse().unwrap();
            assert_eq!(uri_len(&uri), uri.to_string().len(), "{s}");
        }
    }
}
