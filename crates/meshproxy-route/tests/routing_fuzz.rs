//! Property tests over the routing table (the project's fuzz target for the route matcher): any
//! request a client can send — host, path, query, method and headers of arbitrary text — is
//! matched without a panic, and path matching keeps the Gateway API's meaning at any depth.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use meshproxy_config::{CookieMatch, HeaderMatch, PathMatchType, QueryParamMatch, RouteConfig};
use meshproxy_route::{RequestView, RouteTable};
use proptest::prelude::*;

fn route(name: &str, hosts: &[&str], kind: PathMatchType, path: &str) -> RouteConfig {
    meshproxy_config::testing::route(name, hosts, kind, path, "s")
}

fn table() -> RouteTable {
    let mut canary = route("canary", &["api.example.com"], PathMatchType::Prefix, "/v1");
    canary.headers.push(HeaderMatch { name: "x-canary".into(), value: "1".into() });
    canary.methods.push("POST".into());
    canary.cookies.push(CookieMatch { name: "user".into(), value: "test".into() });
    let mut debug = route("debug", &["api.example.com"], PathMatchType::Prefix, "/v1/debug");
    debug.query_params.push(QueryParamMatch { name: "debug".into(), value: "on".into() });
    RouteTable::compile(&[
        route("wild", &["*.example.com"], PathMatchType::Prefix, "/static"),
        route("exact", &["api.example.com"], PathMatchType::Exact, "/v1/users"),
        canary,
        debug,
        route("default", &[], PathMatchType::Prefix, "/"),
    ])
    .unwrap()
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::CONNECT),
        "[A-Z]{1,10}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap_or(Method::GET)),
    ]
}

/// A path of segments from a small alphabet, so that they often share prefixes.
fn segments() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("ab".to_string()), "[a-c]{1,3}"],
        0..6,
    )
}

proptest! {
    #[test]
    fn any_request_is_routed_without_panicking(
        host in proptest::option::of(".{0,300}"),
        path in ".{0,300}",
        query in proptest::option::of(".{0,100}"),
        method in method(),
        fields in proptest::collection::vec(("[a-z-]{1,12}", "[ -~]{0,40}"), 0..8),
    ) {
        let mut headers = HeaderMap::new();
        for (n, v) in &fields {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(v)) {
                headers.append(n, v);
            }
        }
        let t = table();
        let found = t.find(&RequestView { host: host.as_deref(), path: &path, query: query.as_deref(), method: &method, headers: &headers });
        // The catch-all `/` prefix route takes what nothing else does, whenever the path is one.
        if path.starts_with('/') {
            prop_assert!(found.is_some());
        }
    }

    #[test]
    fn a_prefix_matches_whole_segments_only(prefix in segments(), path in segments(), trailing in any::<bool>()) {
        let prefix_path = format!("/{}", prefix.join("/"));
        let t = RouteTable::compile(&[route("p", &[], PathMatchType::Prefix, &prefix_path)]).unwrap();
        let mut request_path = format!("/{}", path.join("/"));
        if trailing && !path.is_empty() {
            request_path.push('/');
        }
        let headers = HeaderMap::new();
        let view = RequestView { host: None, path: &request_path, query: None, method: &Method::GET, headers: &headers };
        prop_assert_eq!(t.find(&view).is_some(), path.starts_with(&prefix), "{} under {}", request_path, prefix_path);
    }

    #[test]
    fn an_exact_route_beats_any_prefix_on_its_own_path(path in segments(), cut in 0usize..6) {
        let exact = format!("/{}", path.join("/"));
        let prefix = format!("/{}", path[..cut.min(path.len())].join("/"));
        let t = RouteTable::compile(&[
            route("prefix", &[], PathMatchType::Prefix, &prefix),
            route("exact", &[], PathMatchType::Exact, &exact),
        ])
        .unwrap();
        let headers = HeaderMap::new();
        let view = RequestView { host: Some("any.example"), path: &exact, query: None, method: &Method::GET, headers: &headers };
        prop_assert_eq!(t.find(&view), Some(1));
    }
}
