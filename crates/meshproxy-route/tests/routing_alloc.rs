//! Matching a request against a compiled routing table allocates nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use http::{HeaderMap, HeaderValue, Method};
use meshproxy_config::{HeaderMatch, PathMatchType, QueryParamMatch, RouteConfig};
use meshproxy_route::{RequestView, RouteTable};

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: delegates every call unchanged to the system allocator; only counts calls in a
// thread-local (const-initialized, so touching it never allocates).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn route(name: &str, hosts: &[&str], kind: PathMatchType, path: &str) -> RouteConfig {
    meshproxy_config::testing::route(name, hosts, kind, path, "s")
}

#[test]
fn matching_allocates_nothing() {
    let mut canary = route("canary", &["api.example.com"], PathMatchType::Prefix, "/v1");
    canary.headers.push(HeaderMatch { name: "x-canary".into(), value: "1".into() });
    canary.methods.push("GET".into());
    let mut debug = route("debug", &["api.example.com"], PathMatchType::Prefix, "/v1/debug");
    debug.query_params.push(QueryParamMatch { name: "debug".into(), value: "on".into() });
    let table = RouteTable::compile(&[
        route("default", &[], PathMatchType::Prefix, "/"),
        route("wild", &["*.example.com"], PathMatchType::Prefix, "/static"),
        route("exact", &["api.example.com"], PathMatchType::Exact, "/v1/users"),
        canary,
        debug,
    ])
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-canary", HeaderValue::from_static("1"));
    // A query parameter compared without escapes decodes without allocating.
    let cases = [
        ("API.Example.com:8080", "/v1/users", None, Some(2)),
        ("api.example.com", "/v1/other/../users", None, Some(2)),
        ("api.example.com", "/v1/debug", Some("debug=off"), Some(3)),
        ("api.example.com", "/v1/debug/x", Some("x=1&debug=on"), Some(4)),
        ("cdn.example.com", "/static/a.css", None, Some(1)),
        ("elsewhere.org", "/a/b/c/%2e%2e/d", None, Some(0)),
    ];
    let mut found = Vec::with_capacity(cases.len());
    let before = ALLOCS.with(Cell::get);
    for (host, path, query, _) in cases {
        let view = RequestView { host: Some(host), path, query, method: &Method::GET, headers: &headers };
        found.push(table.find(&view));
    }
    let after = ALLOCS.with(Cell::get);
    assert_eq!(after - before, 0, "route matching allocated");
    let expected: Vec<_> = cases.iter().map(|c| c.3).collect();
    assert_eq!(found, expected);
}
