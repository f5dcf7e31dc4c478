//! The routing table: compiled once per config, then matched per request without allocating.
//!
//! Who uses it: the engine (`meshproxy-core`) compiles one table per listener and asks it for a
//! route index per request. What it must not know: endpoints, balancing, sockets or what happens
//! to a request after it is matched — it maps (host, path, query, method, headers, cookies) to an
//! index, purely.
//!
//! Precedence (documented in the README): the request's host selects candidate groups in the
//! order exact host, then the one-label `*.suffix` wildcard, then routes without hosts; the first
//! group with a matching route wins. Within a group: an `Exact` path beats any `Prefix`, a longer
//! prefix (in segments) beats a shorter one, then a route matching on the method, then the one
//! with more header (and cookie) matches, then with more query-parameter matches, then file order
//! (the Gateway API's order for HTTPRoute rules, cookies counted as headers).

pub mod path;

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use meshproxy_config::RouteConfig;
pub use path::PathMatcher;
use path::Segments;

/// A route the table cannot compile (the TypeScript validator reports these first, with file
/// positions; this is the data plane's own check).
#[derive(Debug, thiserror::Error)]
#[error("route {route:?}: {problem}")]
pub struct RouteError {
    pub route: String,
    pub problem: String,
}

/// Longest host name we try to match (DNS names are at most 253 bytes).
const MAX_HOST: usize = 255;

#[derive(Debug)]
struct CompiledRoute {
    /// Index into the listener's route list (the caller's payload).
    index: usize,
    path: PathMatcher,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
    query: Vec<(Box<str>, Box<str>)>,
    cookies: Vec<(Box<str>, Box<str>)>,
}

/// What a route matches a request on, borrowed from the request.
pub struct RequestView<'a> {
    /// `Host` or the target's authority, any case, maybe with a port.
    pub host: Option<&'a str>,
    /// The raw path, without the query.
    pub path: &'a str,
    /// The raw query, without the `?`.
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

impl CompiledRoute {
    fn matches(&self, segs: &Segments<'_>, req: &RequestView<'_>) -> bool {
        let (method, headers) = (req.method, req.headers);
        if !self.path.matches(segs) {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        if !self.headers.iter().all(|(name, value)| headers.get_all(name).iter().any(|v| v == value)) {
            return false;
        }
        if !self.cookies.iter().all(|(name, value)| cookie(headers, name) == Some(value.as_bytes())) {
            return false;
        }
        self.query.is_empty()
            || self.query.iter().all(|(name, value)| first_query_value(req.query, name, value))
    }

    fn precedence_key(&self) -> (bool, usize, bool, usize, usize, usize) {
        // Sorted ascending, so "better" must compare smaller.
        (
            !self.path.exact,
            usize::MAX - self.path.segments.len(),
            self.methods.is_empty(),
            usize::MAX - (self.headers.len() + self.cookies.len()),
            usize::MAX - self.query.len(),
            self.index,
        )
    }
}

/// The value of the first cookie named `name` in the request's `Cookie` fields (`a=1; b=2`), as
/// sent (a quoted value keeps its quotes). Used by routes and by the cookie-hashing balancer.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(http::header::COOKIE).iter().flat_map(|v| v.as_bytes().split(|b| *b == b';')).find_map(
        |pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        },
    )
}

/// Whether the first `name` parameter of `query` has the value `want`, both decoded as a form
/// (percent escapes, `+` as a space). A parameter repeated in the request is judged by its first
/// occurrence, as the Gateway API recommends.
fn first_query_value(query: Option<&str>, name: &str, want: &str) -> bool {
    let Some(query) = query else { return false };
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).is_some_and(|(_, v)| v == want)
}

#[derive(Debug, Default)]
struct Group {
    routes: Vec<CompiledRoute>,
}

impl Group {
    fn find(&self, segs: &Segments<'_>, req: &RequestView<'_>) -> Option<usize> {
        self.routes.iter().find(|r| r.matches(segs, req)).map(|r| r.index)
    }
}

/// A compiled, immutable routing table for one listener.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, Group>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, Group>,
    default: Group,
}

impl RouteTable {
    pub fn compile(routes: &[RouteConfig]) -> Result<Self, RouteError> {
        let mut table = RouteTable::default();
        for (index, r) in routes.iter().enumerate() {
            let compiled = || compile_route(index, r);
            if r.hosts.is_empty() {
                table.default.routes.push(compiled()?);
            }
            for host in &r.hosts {
                let host = host.to_ascii_lowercase();
                let group = match host.strip_prefix("*.") {
                    Some(suffix) => table.wildcard.entry(suffix.into()).or_default(),
                    None => table.exact.entry(host.into()).or_default(),
                };
                group.routes.push(compiled()?);
            }
        }
        let groups = table.exact.values_mut().chain(table.wildcard.values_mut());
        for g in groups.chain(std::iter::once(&mut table.default)) {
            g.routes.sort_by_key(CompiledRoute::precedence_key);
        }
        Ok(table)
    }

    /// Finds the route for a request.
    pub fn find(&self, req: &RequestView<'_>) -> Option<usize> {
        let segs = Segments::parse(req.path);
        let mut buf = [0u8; MAX_HOST];
        if let Some(host) = req.host.and_then(|h| lowercase_host(h, &mut buf)) {
            if let Some(found) = self.exact.get(host).and_then(|g| g.find(&segs, req)) {
                return Some(found);
            }
            if let Some((_, suffix)) = host.split_once('.') {
                if let Some(found) = self.wildcard.get(suffix).and_then(|g| g.find(&segs, req)) {
                    return Some(found);
                }
            }
        }
        self.default.find(&segs, req)
    }
}

/// Strips the port and a trailing dot and lowercases into `buf`, without allocating.
fn lowercase_host<'b>(host: &str, buf: &'b mut [u8; MAX_HOST]) -> Option<&'b str> {
    let name = if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port.
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_HOST {
        return None;
    }
    let out = &mut buf[..bytes.len()];
    out.copy_from_slice(bytes);
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

fn compile_route(index: usize, r: &RouteConfig) -> Result<CompiledRoute, RouteError> {
    let bad = |problem: String| RouteError { route: r.name.clone(), problem };
    let path = PathMatcher::compile(&r.path).map_err(bad)?;
    let methods = r
        .methods
        .iter()
        .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| bad(format!("invalid method {m:?}"))))
        .collect::<Result<_, _>>()?;
    let headers = r
        .headers
        .iter()
        .map(|h| {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| bad(format!("invalid header name {:?}", h.name)))?;
            let value = HeaderValue::from_str(&h.value)
                .map_err(|_| bad(format!("invalid header value {:?}", h.value)))?;
            Ok((name, value))
        })
        .collect::<Result<_, RouteError>>()?;
    let query = r.query_params.iter().map(|q| (q.name.as_str().into(), q.value.as_str().into())).collect();
    let cookies = r.cookies.iter().map(|c| (c.name.as_str().into(), c.value.as_str().into())).collect();
    Ok(CompiledRoute { index, path, methods, headers, query, cookies })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshproxy_config::testing::route;
    use meshproxy_config::{CookieMatch, HeaderMatch, PathMatchType::*, QueryParamMatch};

    fn find(t: &RouteTable, host: &str, path: &str) -> Option<usize> {
        t.find(&view(Some(host), path, None, &Method::GET, &HeaderMap::new()))
    }

    fn view<'a>(
        host: Option<&'a str>,
        path: &'a str,
        query: Option<&'a str>,
        method: &'a Method,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView { host, path, query, method, headers }
    }

    #[test]
    fn host_precedence_exact_then_wildcard_then_default() {
        let t = RouteTable::compile(&[
            route("default", &[], Prefix, "/", "s"),
            route("wild", &["*.example.com"], Prefix, "/", "s"),
            route("exact", &["api.example.com"], Prefix, "/", "s"),
        ])
        .unwrap();
        assert_eq!(find(&t, "api.example.com", "/"), Some(2));
        assert_eq!(find(&t, "API.Example.com:8080", "/x"), Some(2));
        assert_eq!(find(&t, "web.example.com", "/"), Some(1));
        // One label only, as in Ingress.
        assert_eq!(find(&t, "a.b.example.com", "/"), Some(0));
        assert_eq!(find(&t, "example.com", "/"), Some(0));
        assert_eq!(find(&t, "other.org.", "/"), Some(0));
    }

    #[test]
    fn falls_through_to_less_specific_host_groups() {
        let t = RouteTable::compile(&[
            route("api", &["api.example.com"], Prefix, "/api", "s"),
            route("default", &[], Prefix, "/", "s"),
        ])
        .unwrap();
        assert_eq!(find(&t, "api.example.com", "/api/v1"), Some(0));
        assert_eq!(find(&t, "api.example.com", "/other"), Some(1));
    }

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins_on_segments() {
        let t = RouteTable::compile(&[
            route("root", &[], Prefix, "/", "s"),
            route("foo", &[], Prefix, "/foo", "s"),
            route("foobar", &[], Prefix, "/foo/bar", "s"),
            route("exact", &[], Exact, "/foo", "s"),
        ])
        .unwrap();
        assert_eq!(find(&t, "h", "/foo"), Some(3));
        assert_eq!(find(&t, "h", "/foo/"), Some(1));
        assert_eq!(find(&t, "h", "/foo/bar/baz"), Some(2));
        assert_eq!(find(&t, "h", "/foobar"), Some(0), "prefix matches on segment boundaries");
        assert_eq!(find(&t, "h", "/foo/x/../bar"), Some(2));
    }

    #[test]
    fn dot_segments_cannot_bypass_rules() {
        let t = RouteTable::compile(&[
            route("public", &[], Prefix, "/public", "s"),
            route("admin", &[], Prefix, "/admin", "s"),
        ])
        .unwrap();
        assert_eq!(find(&t, "h", "/public/../admin"), Some(1));
        assert_eq!(find(&t, "h", "/public/%2e%2e/admin/x"), Some(1));
        assert_eq!(find(&t, "h", "/nothing"), None);
    }

    #[test]
    fn more_matchers_then_file_order() {
        let mut canary = route("canary", &[], Prefix, "/", "s");
        canary.headers.push(HeaderMatch { name: "x-canary".into(), value: "1".into() });
        let mut post = route("post", &[], Prefix, "/", "s");
        post.methods.push("POST".into());
        let t = RouteTable::compile(&[
            route("first", &[], Prefix, "/", "s"),
            route("second", &[], Prefix, "/", "s"),
            canary,
            post,
        ])
        .unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(t.find(&view(None, "/", None, &Method::GET, &h)), Some(0));
        assert_eq!(t.find(&view(None, "/", None, &Method::POST, &h)), Some(3));
        h.insert("x-canary", HeaderValue::from_static("1"));
        assert_eq!(t.find(&view(None, "/", None, &Method::GET, &h)), Some(2));
        // A method match outranks header matches (the Gateway API's order).
        assert_eq!(t.find(&view(None, "/", None, &Method::POST, &h)), Some(3));
    }

    #[test]
    fn query_params_match_their_first_decoded_value() {
        let mut debug = route("debug", &[], Prefix, "/", "s");
        debug.query_params.push(QueryParamMatch { name: "debug".into(), value: "on".into() });
        let mut spaced = route("spaced", &[], Prefix, "/", "s");
        spaced.query_params.push(QueryParamMatch { name: "user name".into(), value: "a&b".into() });
        let t = RouteTable::compile(&[route("all", &[], Prefix, "/", "s"), debug, spaced]).unwrap();
        let h = HeaderMap::new();
        let q = |query| t.find(&view(None, "/x", query, &Method::GET, &h));
        assert_eq!(q(None), Some(0));
        assert_eq!(q(Some("debug=on")), Some(1));
        assert_eq!(q(Some("a=1&debug=on&b")), Some(1));
        assert_eq!(q(Some("debug=off&debug=on")), Some(0), "only the first occurrence counts");
        assert_eq!(q(Some("debug=ON")), Some(0), "values are case-sensitive");
        assert_eq!(q(Some("Debug=on")), Some(0), "names are case-sensitive");
        assert_eq!(q(Some("d%65bug=o%6E")), Some(1), "percent escapes are decoded");
        assert_eq!(q(Some("user+name=a%26b")), Some(2), "`+` is a space, %26 an ampersand");
    }

    #[test]
    fn cookie_matches_take_the_first_cookie_of_that_name() {
        let mut beta = route("beta", &[], Prefix, "/", "s");
        beta.cookies.push(CookieMatch { name: "channel".into(), value: "beta".into() });
        let t = RouteTable::compile(&[route("all", &[], Prefix, "/", "s"), beta]).unwrap();
        let find = |cookies: &[&'static str]| {
            let mut h = HeaderMap::new();
            for c in cookies {
                h.append(http::header::COOKIE, HeaderValue::from_static(c));
            }
            t.find(&view(None, "/", None, &Method::GET, &h))
        };
        assert_eq!(find(&[]), Some(0));
        assert_eq!(find(&["channel=beta"]), Some(1));
        assert_eq!(find(&["a=1;channel = beta ; b=2"]), Some(1));
        assert_eq!(find(&["session=x", "channel=beta"]), Some(1), "every Cookie field counts");
        assert_eq!(find(&["channel=stable; channel=beta"]), Some(0), "only the first occurrence counts");
        assert_eq!(find(&["xchannel=beta"]), Some(0));
        assert_eq!(find(&["channel=Beta"]), Some(0), "values are case-sensitive");
    }

    #[test]
    fn query_matches_rank_below_header_matches() {
        let mut by_header = route("header", &[], Prefix, "/", "s");
        by_header.headers.push(HeaderMatch { name: "x-a".into(), value: "1".into() });
        let mut by_query = route("query", &[], Prefix, "/", "s");
        by_query.query_params.push(QueryParamMatch { name: "a".into(), value: "1".into() });
        let t = RouteTable::compile(&[by_query, by_header]).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        assert_eq!(t.find(&view(None, "/", Some("a=1"), &Method::GET, &h)), Some(1));
        assert_eq!(t.find(&view(None, "/", Some("a=1"), &Method::GET, &HeaderMap::new())), Some(0));
    }
}
