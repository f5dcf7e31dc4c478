//! Phases 3 and 7: the filters a route applies to each request before a backend is chosen, and
//! to each response before it is sent. They are compiled per route into plain enums (no boxed
//! trait objects, no allocation per request) and run in order; a request filter's [`Verdict`]
//! lets the request continue, answers it at once, or — for the rare filter that must wait for
//! something (a global rate limit, a remote check) — hands back a boxed future to await.
//!
//! The filters: the proxy headers (`X-Forwarded-*` and `Via` on requests, `Via` on responses;
//! the listener's `proxyHeaders`), then a route's own — the Gateway API's header modifiers on
//! requests and responses, its URL rewrite and its redirect. Rate limits, authorization and policy
//! checks are further variants.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{HeaderMap, StatusCode};
use meshproxy_config::{HeaderModifierConfig, PathMatchType, RedirectConfig, RouteConfig, UrlRewriteConfig};
use meshproxy_http::headers::{self, Seen};
use meshproxy_route::path::Segments;

use crate::error::ProxyError;
use crate::Error;

pub mod authz;

/// What a request filter decides. The pipeline handles every verdict (its tests exercise each);
/// answering now is for filters that refuse (rate limits, authorization, policy), waiting for
/// those that must ask elsewhere (a global rate limit's Redis check).
#[cfg_attr(not(test), allow(dead_code))]
pub enum Verdict {
    Continue,
    /// Answer now with this error (the request goes no further).
    Respond(ProxyError),
    /// Answer now with this error and fields (and body) of the filter's own: a rate limit's
    /// `Retry-After`, a policy's messages (boxed: rare, and the common verdicts stay small).
    Reject(Box<Rejection>),
    /// Answer now with a redirect to this `Location` (the request goes no further).
    Redirect(StatusCode, HeaderValue),
    /// Decide once this resolves (boxed: only filters that must wait return it).
    Wait(Pin<Box<dyn Future<Output = Verdict> + Send>>),
}

/// A refusal that carries more than its [`ProxyError`]: the response is the error's (`local_error`
/// in `proxy/service/respond.rs`: status, `meshproxy-error`, gRPC status for gRPC clients) with
/// `headers` set over it and, for HTTP clients, `body` (UTF-8 text) instead of the error's text.
#[derive(Debug)]
pub struct Rejection {
    pub error: ProxyError,
    pub headers: HeaderMap,
    pub body: Option<bytes::Bytes>,
}

/// A filter on the way in, compiled per route.
#[derive(Debug)]
pub enum RequestFilter {
    /// The route's and its listener's authorization rules: first, before anything changes the
    /// request ([`authz`]).
    Authorize(Box<authz::Authz>),
    /// `X-Forwarded-For` (appended), `X-Forwarded-Proto` and `X-Forwarded-Host` (when absent)
    /// and `Via` (appended).
    ForwardedHeaders,
    /// The route's header changes.
    Headers(Box<HeaderEdit>),
    /// The route's host and path rewrite.
    Rewrite(Box<Rewrite>),
    /// The route's redirect: answers every request.
    Redirect(Box<Redirect>),
    /// The route's rate limits ([`crate::ratelimit`]): refuses a request one of them refuses.
    RateLimit(std::sync::Arc<crate::ratelimit::Limits>),
    /// A request-phase Rego policy: a violation refuses the request, 403 `forbidden` with the
    /// policy's messages ([`crate::policy`]).
    Policy(std::sync::Arc<crate::policy::Attached>),
    /// Waits this long, then continues: exercises the pipeline's waiting path in tests.
    #[cfg(test)]
    Delay(std::time::Duration),
    /// Answers at once: exercises the pipeline's early answer in tests.
    #[cfg(test)]
    Refuse(ProxyError),
    /// Answers at once with a field and a body of its own: exercises [`Rejection`] in tests.
    #[cfg(test)]
    RejectWith(ProxyError, &'static str, &'static str, &'static str),
}

/// A filter on the way out, compiled per route.
#[derive(Debug)]
pub enum ResponseFilter {
    /// `Via` (appended).
    Via,
    /// The route's header changes.
    Headers(Box<HeaderEdit>),
}

/// A header modifier: fields removed, then set (every value replaced), then added (appended).
/// Removal first, as Envoy orders them, so `remove` and `add` of one name replace it.
#[derive(Debug)]
pub struct HeaderEdit {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
}

impl HeaderEdit {
    fn compile(route: &str, c: &HeaderModifierConfig) -> Result<Option<Self>, Error> {
        if c.is_empty() {
            return Ok(None);
        }
        let pairs = |list: &[meshproxy_config::HeaderValueConfig]| {
            list.iter()
                .map(|h| Ok((header_name(route, &h.name)?, header_value(route, &h.value)?)))
                .collect::<Result<Box<[_]>, Error>>()
        };
        Ok(Some(HeaderEdit {
            remove: c.remove.iter().map(|n| header_name(route, n)).collect::<Result<_, _>>()?,
            set: pairs(&c.set)?,
            add: pairs(&c.add)?,
        }))
    }

    fn apply(&self, h: &mut HeaderMap) {
        for name in &self.remove {
            h.remove(name);
        }
        for (name, value) in &self.set {
            h.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            h.append(name.clone(), value.clone());
        }
    }
}

/// How a rewrite or a redirect changes the path.
#[derive(Debug)]
enum PathEdit {
    /// The whole path.
    Full(Box<str>),
    /// The route's matched prefix, `segments` long (normalized, as the routing table matched it),
    /// replaced by `with` (no trailing `/`; empty for the root).
    Prefix { segments: usize, with: Box<str> },
}

impl PathEdit {
    fn compile(
        route: &RouteConfig,
        full: Option<&String>,
        prefix: Option<&String>,
    ) -> Result<Option<Self>, Error> {
        match (full, prefix) {
            (None, None) => Ok(None),
            (Some(p), None) => Ok(Some(PathEdit::Full(p.as_str().into()))),
            (None, Some(with)) => {
                if route.path.kind != PathMatchType::Prefix {
                    return Err(Error::Config(format!(
                        "route {:?}: a prefix replacement needs a Prefix path match",
                        route.name
                    )));
                }
                let segments = Segments::parse(&route.path.value).len();
                Ok(Some(PathEdit::Prefix { segments, with: with.trim_end_matches('/').into() }))
            }
            (Some(_), Some(_)) => Err(Error::Config(format!(
                "route {:?}: a path and a prefix replacement are exclusive",
                route.name
            ))),
        }
    }

    /// The new path for `path` (the request's, without its query).
    fn apply(&self, path: &str) -> String {
        match self {
            PathEdit::Full(p) => p.to_string(),
            PathEdit::Prefix { segments, with } => {
                let segs = Segments::parse(path);
                let mut out = String::with_capacity(path.len() + with.len());
                out.push_str(with);
                for i in *segments..segs.len() {
                    out.push('/');
                    out.push_str(segs.get(i).unwrap_or_default());
                }
                if out.is_empty() || (segs.trailing_slash && segs.len() > *segments) {
                    out.push('/');
                }
                out
            }
        }
    }
}

/// The path-and-query `edit` makes of `uri`'s (the query kept).
fn edited_path(edit: &PathEdit, uri: &Uri) -> Result<PathAndQuery, ProxyError> {
    let mut p = edit.apply(uri.path());
    if let Some(q) = uri.query() {
        p.push('?');
        p.push_str(q);
    }
    PathAndQuery::from_maybe_shared(p).map_err(|_| ProxyError::BadRequest)
}

/// The Gateway API's URL rewrite: the host and path the upstream sees.
#[derive(Debug)]
pub struct Rewrite {
    host: Option<(HeaderValue, Authority)>,
    path: Option<PathEdit>,
}

impl Rewrite {
    fn compile(route: &RouteConfig, c: &UrlRewriteConfig) -> Result<Self, Error> {
        let host = match &c.host {
            None => None,
            Some(h) => {
                let authority = Authority::try_from(h.as_str()).map_err(|_| {
                    Error::Config(format!("route {:?}: invalid rewrite host {h:?}", route.name))
                })?;
                Some((header_value(&route.name, h)?, authority))
            }
        };
        Ok(Rewrite { host, path: PathEdit::compile(route, c.path.as_ref(), c.prefix.as_ref())? })
    }

    fn apply(&self, cx: &mut RequestCx<'_>) -> Result<(), ProxyError> {
        let head = &mut *cx.head;
        if self.host.is_none() && self.path.is_none() {
            return Ok(());
        }
        let path = match &self.path {
            Some(edit) => Some(edited_path(edit, &head.uri)?),
            None => None,
        };
        let mut parts = std::mem::take(&mut head.uri).into_parts();
        if let Some((value, authority)) = &self.host {
            // An absolute target's authority is the host the upstream sees (`:authority` over
            // HTTP/2); a `Host` field is set either way, so an origin-form request carries it.
            if parts.authority.is_some() {
                parts.authority = Some(authority.clone());
            }
            head.headers.insert(header::HOST, value.clone());
            cx.seen.host = true;
        }
        if path.is_some() {
            parts.path_and_query = path;
        }
        head.uri = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest)?;
        Ok(())
    }
}

/// The Gateway API's request redirect.
#[derive(Debug)]
pub struct Redirect {
    /// `http` or `https`; None = the request's.
    scheme: Option<&'static str>,
    host: Option<Box<str>>,
    /// 0 = derived: the scheme's default when `scheme` is set, else the request's.
    port: u16,
    path: Option<PathEdit>,
    status: StatusCode,
}

impl Redirect {
    fn compile(route: &RouteConfig, c: &RedirectConfig) -> Result<Self, Error> {
        let bad = |what: String| Error::Config(format!("route {:?}: redirect {what}", route.name));
        let scheme = match c.scheme.as_deref() {
            None => None,
            Some("http") => Some("http"),
            Some("https") => Some("https"),
            Some(other) => return Err(bad(format!("scheme {other:?} is neither http nor https"))),
        };
        let status = match c.status_code {
            301 | 302 | 303 | 307 | 308 => {
                StatusCode::from_u16(c.status_code as u16).map_err(|_| bad("status".into()))?
            }
            other => return Err(bad(format!("status {other} is not 301, 302, 303, 307 or 308"))),
        };
        let port = u16::try_from(c.port).map_err(|_| bad(format!("port {} is out of range", c.port)))?;
        if let Some(h) = &c.host {
            Authority::try_from(h.as_str()).map_err(|_| bad(format!("host {h:?} is not a host name")))?;
        }
        let path = PathEdit::compile(route, c.path.as_ref(), c.prefix.as_ref())?;
        Ok(Redirect { scheme, host: c.host.as_deref().map(Into::into), port, path, status })
    }

    /// The `Location` for a request: each part the redirect does not replace is the request's.
    /// `tls`: the request came over TLS, its scheme when its target names none (HTTP/1.1).
    fn location(&self, head: &http::request::Parts, tls: bool) -> Result<HeaderValue, ProxyError> {
        let request_scheme = match head.uri.scheme_str() {
            Some("https") => "https",
            None if tls => "https",
            _ => "http",
        };
        let scheme = self.scheme.unwrap_or(request_scheme);
        let authority = match head.uri.authority() {
            Some(a) => a.as_str(),
            None => head.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(""),
        };
        let (request_host, request_port) = split_port(authority);
        let host = self.host.as_deref().unwrap_or(request_host);
        if host.is_empty() {
            return Err(ProxyError::BadRequest);
        }
        let port = match (self.port, self.scheme) {
            (0, Some(_)) => None,
            (0, None) => request_port,
            (p, _) => Some(p),
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let mut location = format!("{scheme}://{host}");
        if let Some(p) = port.filter(|p| *p != default_port) {
            let _ = write!(location, ":{p}");
        }
        match &self.path {
            Some(edit) => location.push_str(edited_path(edit, &head.uri)?.as_str()),
            None => location.push_str(head.uri.path_and_query().map_or("/", |p| p.as_str())),
        }
        HeaderValue::from_str(&location).map_err(|_| ProxyError::BadRequest)
    }
}

/// `host[:port]` (an IPv6 literal keeps its brackets); a port that is not a number is ignored.
fn split_port(authority: &str) -> (&str, Option<u16>) {
    let colon = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => i,
        _ => return (authority, None),
    };
    (&authority[..colon], authority[colon + 1..].parse().ok())
}

fn header_name(route: &str, name: &str) -> Result<HeaderName, Error> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| Error::Config(format!("route {route:?}: invalid header name {name:?}")))
}

fn header_value(route: &str, value: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(value)
        .map_err(|_| Error::Config(format!("route {route:?}: invalid header value {value:?}")))
}

/// What a request filter may read and change: the request head (hop-by-hop fields already
/// removed), what one scan of its field names found, and the client (its address, and its IP as
/// a field value for `X-Forwarded-For`).
pub struct RequestCx<'a> {
    pub head: &'a mut http::request::Parts,
    pub seen: &'a mut Seen,
    /// Read by the filters keyed by client (rate limits, authorization).
    pub client: std::net::SocketAddr,
    pub client_ip: &'a HeaderValue,
    /// The request came over TLS: `X-Forwarded-Proto` says `https`.
    pub tls: bool,
    /// The SPIFFE ID of the mTLS peer the request came from (a meshed listener); None otherwise.
    pub peer_id: Option<&'a str>,
}

impl RequestFilter {
    fn apply(&self, cx: &mut RequestCx<'_>) -> Verdict {
        match self {
            RequestFilter::Authorize(authz) => authz.verdict(cx),
            RequestFilter::ForwardedHeaders => {
                // The host the client asked for: the target's authority, else its `Host`.
                let host = match cx.head.uri.authority() {
                    Some(a) => HeaderValue::from_str(a.as_str()).ok(),
                    None if cx.seen.host => cx.head.headers.get(header::HOST).cloned(),
                    None => None,
                };
                let version = cx.head.version;
                headers::add_forwarded(&mut cx.head.headers, *cx.seen, cx.client_ip, host, version, cx.tls);
                Verdict::Continue
            }
            RequestFilter::Headers(edit) => {
                edit.apply(&mut cx.head.headers);
                Verdict::Continue
            }
            RequestFilter::Rewrite(rewrite) => match rewrite.apply(cx) {
                Ok(()) => Verdict::Continue,
                Err(e) => Verdict::Respond(e),
            },
            RequestFilter::Redirect(redirect) => match redirect.location(cx.head, cx.tls) {
                Ok(location) => Verdict::Redirect(redirect.status, location),
                Err(e) => Verdict::Respond(e),
            },
            RequestFilter::RateLimit(limits) => match limits.check(&cx.head.headers, cx.client, cx.peer_id) {
                Ok(()) => match limits.global(&cx.head.headers, cx.client, cx.peer_id) {
                    None => Verdict::Continue,
                    Some(check) => Verdict::Wait(Box::pin(async move {
                        match check.await {
                            Ok(()) => Verdict::Continue,
                            Err(r) => Verdict::Reject(r),
                        }
                    })),
                },
                Err(denied) => Verdict::Reject(Box::new(limits.rejection(denied))),
            },
            RequestFilter::Policy(p) => match p.judge(crate::policy::request_input(cx.head)) {
                None => Verdict::Continue,
                Some(messages) => Verdict::Reject(Box::new(Rejection {
                    error: ProxyError::Forbidden,
                    headers: HeaderMap::new(),
                    body: Some(crate::policy::messages_body(&messages)),
                })),
            },
            #[cfg(test)]
            RequestFilter::Delay(d) => {
                let d = *d;
                Verdict::Wait(Box::pin(async move {
                    tokio::time::sleep(d).await;
                    Verdict::Continue
                }))
            }
            #[cfg(test)]
            RequestFilter::Refuse(e) => Verdict::Respond(*e),
            #[cfg(test)]
            RequestFilter::RejectWith(error, name, value, body) => {
                let mut headers = HeaderMap::new();
                headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
                headers.append(HeaderName::from_static(name), HeaderValue::from_static("second"));
                let body = Some(bytes::Bytes::from_static(body.as_bytes()));
                Verdict::Reject(Box::new(Rejection { error: *error, headers, body }))
            }
        }
    }
}

/// Where running a route's request filters stopped.
pub enum Step {
    /// All passed.
    Done,
    Respond(ProxyError),
    Reject(Box<Rejection>),
    Redirect(StatusCode, HeaderValue),
    /// Await the future, then (if it says continue) run the filters from `resume_at`.
    Wait(Pin<Box<dyn Future<Output = Verdict> + Send>>, usize),
}

/// Runs `filters[from..]` in order until one does not continue.
#[inline]
pub fn run_request(filters: &[RequestFilter], from: usize, cx: &mut RequestCx<'_>) -> Step {
    for (i, f) in filters.iter().enumerate().skip(from) {
        match f.apply(cx) {
            Verdict::Continue => {}
            Verdict::Respond(e) => return Step::Respond(e),
            Verdict::Reject(r) => return Step::Reject(r),
            Verdict::Redirect(status, location) => return Step::Redirect(status, location),
            Verdict::Wait(fut) => return Step::Wait(fut, i + 1),
        }
    }
    Step::Done
}

/// Runs a route's response filters on a response head (hop-by-hop fields already removed).
#[inline]
pub fn run_response(filters: &[ResponseFilter], head: &mut http::response::Parts) {
    for f in filters {
        match f {
            ResponseFilter::Via => {
                let via = headers::via(head.version);
                head.headers.append(header::VIA, via);
            }
            ResponseFilter::Headers(edit) => edit.apply(&mut head.headers),
        }
    }
}

/// A route's request and response filters, in order.
pub type Filters = (Box<[RequestFilter]>, Box<[ResponseFilter]>);

/// A route's filters: the proxy headers when the listener adds them, then the route's own, so
/// the route has the last word on a header. A redirecting route has only its redirect on the way
/// in (nothing is forwarded) and only its own header changes on the way out.
pub fn compile(proxy_headers: bool, route: &RouteConfig) -> Result<Filters, Error> {
    let mut request = Vec::new();
    let mut response = Vec::new();
    let response_edit = HeaderEdit::compile(&route.name, &route.response_headers)?;
    if let Some(redirect) = &route.redirect {
        request.push(RequestFilter::Redirect(Box::new(Redirect::compile(route, redirect)?)));
        response.extend(response_edit.map(|e| ResponseFilter::Headers(Box::new(e))));
        return Ok((request.into(), response.into()));
    }
    if proxy_headers {
        request.push(RequestFilter::ForwardedHeaders);
        response.push(ResponseFilter::Via);
    }
    if let Some(edit) = HeaderEdit::compile(&route.name, &route.request_headers)? {
        request.push(RequestFilter::Headers(Box::new(edit)));
    }
    if let Some(rewrite) = &route.rewrite {
        request.push(RequestFilter::Rewrite(Box::new(Rewrite::compile(route, rewrite)?)));
    }
    response.extend(response_edit.map(|e| ResponseFilter::Headers(Box::new(e))));
    Ok((request.into(), response.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshproxy_config::testing::route;
    use meshproxy_config::HeaderValueConfig;

    fn head(uri: &str, host: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn prefix_route(path: &str) -> RouteConfig {
        route("r", &[], PathMatchType::Prefix, path, "s")
    }

    #[test]
    fn prefix_replacement_follows_the_gateway_api_table() {
        let edit = |prefix: &str, with: &str, path: &str| {
            PathEdit::compile(&prefix_route(prefix), None, Some(&with.to_string()))
                .unwrap()
                .unwrap()
                .apply(path)
        };
        assert_eq!(edit("/foo", "/xyz", "/foo/bar"), "/xyz/bar");
        assert_eq!(edit("/foo", "/xyz", "/foo"), "/xyz");
        assert_eq!(edit("/foo", "/xyz/", "/foo/bar"), "/xyz/bar");
        assert_eq!(edit("/foo", "/", "/foo/bar"), "/bar");
        assert_eq!(edit("/foo", "/", "/foo"), "/");
        assert_eq!(edit("/", "/foo", "/bar"), "/foo/bar");
        assert_eq!(edit("/foo/bar", "/baz", "/foo/bar/x/"), "/baz/x/");
        // The path as the routing table saw it: dot segments removed.
        assert_eq!(edit("/foo", "/xyz", "/foo/a/../b"), "/xyz/b");
    }

    #[test]
    fn prefix_replacement_needs_a_prefix_match() {
        let exact = route("r", &[], PathMatchType::Exact, "/foo", "s");
        assert!(PathEdit::compile(&exact, None, Some(&"/x".to_string())).is_err());
    }

    #[test]
    fn header_edit_removes_then_sets_then_adds() {
        let pair = |n: &str, v: &str| HeaderValueConfig { name: n.into(), value: v.into() };
        let edit = HeaderEdit::compile(
            "r",
            &HeaderModifierConfig {
                set: vec![pair("x-env", "prod")],
                add: vec![pair("x-tag", "b"), pair("x-gone", "new")],
                remove: vec!["x-gone".into()],
            },
        )
        .unwrap()
        .unwrap();
        let mut h = HeaderMap::new();
        h.append("x-env", HeaderValue::from_static("dev"));
        h.append("x-env", HeaderValue::from_static("test"));
        h.append("x-tag", HeaderValue::from_static("a"));
        h.append("x-gone", HeaderValue::from_static("old"));
        edit.apply(&mut h);
        assert_eq!(h.get_all("x-env").iter().collect::<Vec<_>>(), ["prod"]);
        assert_eq!(h.get_all("x-tag").iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(h.get_all("x-gone").iter().collect::<Vec<_>>(), ["new"]);
        assert!(HeaderEdit::compile("r", &HeaderModifierConfig::default()).unwrap().is_none());
    }

    fn redirect(c: RedirectConfig, route_path: &str) -> Redirect {
        Redirect::compile(&prefix_route(route_path), &c).unwrap()
    }

    fn config() -> RedirectConfig {
        RedirectConfig { scheme: None, host: None, port: 0, path: None, prefix: None, status_code: 302 }
    }

    #[test]
    fn redirect_keeps_what_it_does_not_replace() {
        let to_https = redirect(RedirectConfig { scheme: Some("https".into()), ..config() }, "/");
        let loc = |r: &Redirect, h: http::request::Parts| r.location(&h, false).unwrap();
        // A new scheme without a port: the scheme's default, left out.
        assert_eq!(loc(&to_https, head("/a?b=1", Some("shop.example:8080"))), "https://shop.example/a?b=1");
        let same = redirect(RedirectConfig { host: Some("new.example".into()), ..config() }, "/");
        // Same scheme: the request's port is kept, the default one left out.
        assert_eq!(loc(&same, head("/a", Some("old.example:8080"))), "http://new.example:8080/a");
        assert_eq!(loc(&same, head("/a", Some("old.example:80"))), "http://new.example/a");
        // An absolute target (or HTTP/2 `:authority`) names the host.
        assert_eq!(loc(&same, head("http://old.example:81/a", None)), "http://new.example:81/a");
        let ported = redirect(RedirectConfig { port: 8443, scheme: Some("https".into()), ..config() }, "/");
        assert_eq!(loc(&ported, head("/", Some("h"))), "https://h:8443/");
        let moved =
            redirect(RedirectConfig { prefix: Some("/v2".into()), status_code: 301, ..config() }, "/v1");
        assert_eq!(moved.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            loc(&moved, head("/v1/users?id=7", Some("[::1]:8080"))),
            "http://[::1]:8080/v2/users?id=7"
        );
        let full = redirect(RedirectConfig { path: Some("/maintenance".into()), ..config() }, "/");
        assert_eq!(loc(&full, head("/any/thing?x", Some("h"))), "http://h/maintenance?x");
        // No host to keep: the request is refused rather than redirected nowhere.
        assert!(same.location(&head("/a", None), false).is_ok());
        assert_eq!(to_https.location(&head("/a", None), false), Err(ProxyError::BadRequest));
        // Over TLS, an origin-form target's scheme is https (its port kept, the default left out).
        assert_eq!(
            same.location(&head("/a", Some("old.example:8443")), true).unwrap(),
            "https://new.example:8443/a"
        );
        assert_eq!(
            same.location(&head("/a", Some("old.example:443")), true).unwrap(),
            "https://new.example/a"
        );
    }

    #[test]
    fn redirect_refuses_what_the_gateway_api_does_not_allow() {
        let r = prefix_route("/");
        assert!(Redirect::compile(&r, &RedirectConfig { status_code: 200, ..config() }).is_err());
        assert!(Redirect::compile(&r, &RedirectConfig { scheme: Some("ftp".into()), ..config() }).is_err());
        assert!(Redirect::compile(&r, &RedirectConfig { port: 70000, ..config() }).is_err());
    }

    #[test]
    fn rewrite_replaces_host_and_path_keeping_the_query() {
        let r = prefix_route("/api");
        let rewrite = Rewrite::compile(
            &r,
            &UrlRewriteConfig { host: Some("backend.internal".into()), path: None, prefix: Some("/".into()) },
        )
        .unwrap();
        let ip = HeaderValue::from_static("127.0.0.1");
        let client = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
        let mut h = head("/api/users?page=2", None);
        let mut seen = Seen::default();
        rewrite
            .apply(&mut RequestCx {
                head: &mut h,
                seen: &mut seen,
                client,
                client_ip: &ip,
                tls: false,
                peer_id: None,
            })
            .unwrap();
        assert_eq!(h.uri, "/users?page=2");
        assert_eq!(h.headers[header::HOST], "backend.internal");
        assert!(seen.host, "the upstream request keeps the rewritten Host");
        let mut h2 = head("http://front.example/api", None);
        rewrite
            .apply(&mut RequestCx {
                head: &mut h2,
                seen: &mut seen,
                client,
                client_ip: &ip,
                tls: false,
                peer_id: None,
            })
            .unwrap();
        assert_eq!(h2.uri, "http://backend.internal/");
    }
}
