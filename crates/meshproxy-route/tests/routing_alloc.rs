//! Matching a request against a compiled routing table allocates nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use http::{HeaderMap, HeaderValue, Method};
use meshproxy_config::{HeaderMatch, PathMatch, PathMatchType, RouteConfig};
use meshproxy_route::RouteTable;

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
    RouteConfig {
        name: name.into(),
        hosts: hosts.iter().map(|h| (*h).into()).collect(),
        path: PathMatch { kind, value: path.into() },
        methods: vec![],
        headers: vec![],
        service: "s".into(),
        response_header_timeout_ms: 0,
        allow_connect: false,
        retry: None,
        backends: vec![],
    }
}

#[test]
fn matching_allocates_nothing() {
    let mut canary = route("canary", &["api.example.com"], PathMatchType::Prefix, "/v1");
    canary.headers.push(HeaderMatch { name: "x-canary".into(), value: "1".into() });
    canary.methods.push("GET".into());
    let table = RouteTable::compile(&[
        route("default", &[], PathMatchType::Prefix, "/"),
        route("wild", &["*.example.com"], PathMatchType::Prefix, "/static"),
        route("exact", &["api.example.com"], PathMatchType::Exact, "/v1/users"),
        canary,
    ])
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-canary", HeaderValue::from_static("1"));
    let cases = [
        ("API.Example.com:8080", "/v1/users", Some(2)),
        ("api.example.com", "/v1/other/../users", Some(2)),
        ("api.example.com", "/v1/x", Some(3)),
        ("cdn.example.com", "/static/a.css", Some(1)),
        ("elsewhere.org", "/a/b/c/%2e%2e/d", Some(0)),
    ];
    let mut found = Vec::with_capacity(cases.len());
    let before = ALLOCS.with(Cell::get);
    for (host, path, _) in cases {
        found.push(table.find(Some(host), path, &Method::GET, &headers));
    }
    let after = ALLOCS.with(Cell::get);
    assert_eq!(after - before, 0, "route matching allocated");
    let expected: Vec<_> = cases.iter().map(|c| c.2).collect();
    assert_eq!(found, expected);
}
