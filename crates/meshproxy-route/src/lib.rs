//! The routing table: compiled once per config, then matched per request without allocating.
//!
//! Who uses it: the engine (`meshproxy-core`) compiles one table per listener and asks it for a
//! route index per request. What it must not know: endpoints, balancing, sockets or what happens
//! to a request after it is matched — it maps (host, path, method, headers) to an index, purely.
//!
//! Precedence (documented in the README): the request's host selects candidate groups in the
//! order exact host, then the one-label `*.suffix` wildcard, then routes without hosts; the first
//! group with a matching route wins. Within a group: an `Exact` path beats any `Prefix`, a longer
//! prefix (in segments) beats a shorter one, then the route with more matchers (methods, headers),
//! then file order.

pub mod path;

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use meshproxy_config::{PathMatchType, RouteConfig};
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
    exact: bool,
    segments: Vec<Box<str>>,
    trailing_slash: bool,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl CompiledRoute {
    fn matches(&self, segs: &Segments<'_>, method: &Method, headers: &HeaderMap) -> bool {
        if self.exact {
            if segs.len() != self.segments.len() || segs.trailing_slash != self.trailing_slash {
                return false;
            }
        } else if segs.len() < self.segments.len() {
            return false;
        }
        for (i, want) in self.segments.iter().enumerate() {
            if segs.get(i) != Some(&**want) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        self.headers.iter().all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }

    fn precedence_key(&self) -> (bool, usize, usize, usize) {
        // Sorted ascending, so "better" must compare smaller.
        (
            !self.exact,
            usize::MAX - self.segments.len(),
            usize::MAX - (self.methods.len().min(1) + self.headers.len()),
            self.index,
        )
    }
}

#[derive(Debug, Default)]
struct Group {
    routes: Vec<CompiledRoute>,
}

impl Group {
    fn find(&self, segs: &Segments<'_>, method: &Method, headers: &HeaderMap) -> Option<usize> {
        self.routes.iter().find(|r| r.matches(segs, method, headers)).map(|r| r.index)
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

    /// Finds the route for a request: `host` as sent (Host header or URI authority, any case,
    /// maybe with a port), the raw path (without query).
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<usize> {
        let segs = Segments::parse(path);
        let mut buf = [0u8; MAX_HOST];
        if let Some(host) = host.and_then(|h| lowercase_host(h, &mut buf)) {
            if let Some(found) = self.exact.get(host).and_then(|g| g.find(&segs, method, headers)) {
                return Some(found);
            }
            if let Some((_, suffix)) = host.split_once('.') {
                if let Some(found) = self.wildcard.get(suffix).and_then(|g| g.find(&segs, method, headers)) {
                    return Some(found);
                }
            }
        }
        self.default.find(&segs, method, headers)
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
    if !r.path.value.starts_with('/') {
        return Err(bad(format!("path {:?} must start with '/'", r.path.value)));
    }
    let segs = Segments::parse(&r.path.value);
    let segments = (0..segs.len()).filter_map(|i| segs.get(i)).map(Box::<str>::from).collect();
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
    Ok(CompiledRoute {
        index,
        exact: r.path.kind == PathMatchType::Exact,
        segments,
        trailing_slash: segs.trailing_slash,
        methods,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshproxy_config::testing::route;
    use meshproxy_config::{HeaderMatch, PathMatchType::*};

    fn find(t: &RouteTable, host: &str, path: &str) -> Option<usize> {
        t.find(Some(host), path, &Method::GET, &HeaderMap::new())
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
        assert_eq!(t.find(None, "/", &Method::GET, &h), Some(0));
        assert_eq!(t.find(None, "/", &Method::POST, &h), Some(3));
        h.insert("x-canary", HeaderValue::from_static("1"));
        assert_eq!(t.find(None, "/", &Method::GET, &h), Some(2));
    }
}
