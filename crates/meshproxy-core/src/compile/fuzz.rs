//! Property tests over the config compiler (the project's fuzz target for it): a model whose
//! strings are arbitrary — the TypeScript validator normally stands in front, but an embedder
//! in Rust or a future source may not — compiles to a snapshot or to an error, never a panic.

use proptest::prelude::*;

use super::Snapshot;
use crate::config::{testing, CookieMatch, EndpointConfig, HeaderMatch, PathMatchType, QueryParamMatch};
use crate::metrics::Metrics;
use crate::ratelimit::Stores;
use crate::upstream::Registry;

/// Text that is often almost valid: fragments of the real syntax mixed with arbitrary characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[/a-z*.:0-9-]{0,20}",
        Just(String::new()),
        Just("*.".to_string()),
        Just("500-599,429".to_string()),
        Just("127.0.0.1:0".to_string()),
        Just("[::1]:80".to_string()),
    ]
}

proptest! {
    #[test]
    fn a_model_of_arbitrary_strings_compiles_or_is_refused_without_panicking(
        path in text(),
        exact in any::<bool>(),
        hosts in proptest::collection::vec(text(), 0..3),
        methods in proptest::collection::vec(text(), 0..3),
        header in proptest::option::of((text(), text())),
        query in proptest::option::of((text(), text())),
        cookie in proptest::option::of((text(), text())),
        endpoints in proptest::collection::vec((text(), prop_oneof![9 => 1u32..=1000, 1 => any::<u32>()]), 0..3),
        statuses in text(),
        grpc_statuses in text(),
        service in prop_oneof![Just("s".to_string()), text()],
    ) {
        let mut config = testing::all_to("127.0.0.1:1");
        let route = &mut config.listeners[0].routes[0];
        route.path.kind = if exact { PathMatchType::Exact } else { PathMatchType::Prefix };
        route.path.value = path;
        route.hosts = hosts;
        route.methods = methods;
        route.service = service;
        if let Some((name, value)) = header {
            route.headers.push(HeaderMatch { name, value });
        }
        if let Some((name, value)) = query {
            route.query_params.push(QueryParamMatch { name, value });
        }
        if let Some((name, value)) = cookie {
            route.cookies.push(CookieMatch { name, value });
        }
        let s = &mut config.services[0];
        s.endpoints.extend(endpoints.into_iter().map(|(address, weight)| EndpointConfig { address, weight }));
        s.failure_statuses = statuses;
        s.failure_grpc_statuses = grpc_statuses;
        let registry = Registry::new(1);
        let _ = Snapshot::compile(config, &registry, &Metrics::default(), &Stores::default(), None);
    }
}
