//! MeshProxy's lifecycle end to end: routing and reuse, reloads that fail or remove things,
//! endpoint sets swapped without recompiling, the filter verdicts, multi-thread runtimes.

use super::*;
use crate::config::testing::{listener, route, service};
use crate::config::PathMatchType::Prefix;
use crate::ProxyError;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use std::sync::atomic::AtomicU64;

/// A real HTTP/1.1 backend on an ephemeral port that counts the connections it accepts.
async fn backend(body: &'static str) -> (String, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let conns = Arc::new(AtomicU64::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from(
                        body,
                    ))))
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    (addr, conns)
}

async fn get(addr: &str, host: &str, path: &str) -> (u16, Option<String>, String) {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path).header("host", host).body(Empty::<bytes::Bytes>::new()).unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let err = resp.headers().get("meshproxy-error").map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, err, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn routes_reuses_connections_and_reports_no_route() {
    let (a, a_conns) = backend("from-a").await;
    let config = Config {
        listeners: vec![listener("127.0.0.1:0", vec![route("api", &["api.test"], Prefix, "/", "a")])],
        services: vec![service("a", &[&a])],
        admin: None,
        identity: None,
    };
    let proxy = MeshProxy::new(config).unwrap();
    let info = proxy.start().await.unwrap();
    let addr = info.listeners[0].local_address.clone();
    for _ in 0..50 {
        assert_eq!(get(&addr, "api.test", "/x").await, (200, None, "from-a".into()));
    }
    assert_eq!(a_conns.load(Ordering::Relaxed), 1, "50 sequential requests share one upstream connection");
    let (status, err, _) = get(&addr, "other.test", "/").await;
    assert_eq!((status, err.as_deref()), (404, Some("no-route")));
    proxy.close(Duration::from_secs(1)).await.unwrap();
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err(), "port released on close");
}

/// The endpoint addresses `stats()` lists.
async fn endpoint_addresses(proxy: &MeshProxy) -> Vec<String> {
    proxy.stats().await.endpoints.into_iter().map(|e| e.address).collect()
}

#[tokio::test]
async fn failed_reload_changes_nothing() {
    let (a, _) = backend("a").await;
    let occupied = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let unused = "127.0.0.1:9".to_owned();
    let cfg = |extra: Option<String>| {
        let mut listeners = vec![listener("127.0.0.1:0", vec![route("r", &[], Prefix, "/", "a")])];
        let mut services = vec![service("a", &[&a])];
        if let Some(addr) = extra {
            // A listener that cannot bind, with a route to a service whose endpoint is new.
            let mut l = listener(&addr, vec![route("new-route", &[], Prefix, "/", "b")]);
            l.name = "new-listener".into();
            listeners.push(l);
            services.push(service("b", &[&unused]));
        }
        Config { listeners, services, admin: None, identity: None }
    };
    let proxy = MeshProxy::new(cfg(None)).unwrap();
    let addr = proxy.start().await.unwrap().listeners[0].local_address.clone();
    assert_eq!(get(&addr, "h", "/").await.0, 200);
    let metrics_before = proxy.metrics_text();
    let err = proxy.reload(cfg(Some(occupied.local_addr().unwrap().to_string()))).await.unwrap_err();
    assert_eq!(err.code(), "MESHPROXY_BIND_FAILED");
    assert_eq!(
        endpoint_addresses(&proxy).await,
        vec![a.clone()],
        "the rejected config's endpoint is not listed"
    );
    let metrics_after = proxy.metrics_text();
    for name in ["new-route", "new-listener", "service=\"b\"", &unused] {
        assert!(!metrics_after.contains(name), "{name} appeared in /metrics after a failed reload");
    }
    // Only the reload-failure counter moved.
    let without_reloads = |m: &str| {
        m.lines().filter(|l| !l.starts_with("meshproxy_config_reload")).collect::<Vec<_>>().join("\n")
    };
    assert_eq!(without_reloads(&metrics_before), without_reloads(&metrics_after));
    assert_eq!(get(&addr, "h", "/").await.0, 200);
    assert_eq!(proxy.stats().await.listeners.len(), 1);
    proxy.close(Duration::from_millis(100)).await.unwrap();
}

#[tokio::test]
async fn a_reload_that_removes_a_route_and_endpoint_removes_their_series_after_draining() {
    let (a, _) = backend("a").await;
    let (b, _) = backend("b").await;
    let both = Config {
        listeners: vec![listener(
            "127.0.0.1:0",
            vec![route("to-a", &["a.test"], Prefix, "/", "a"), route("to-b", &["b.test"], Prefix, "/", "b")],
        )],
        services: vec![service("a", &[&a]), service("b", &[&b])],
        admin: None,
        identity: None,
    };
    let proxy = MeshProxy::new(both.clone()).unwrap();
    let addr = proxy.start().await.unwrap().listeners[0].local_address.clone();
    assert_eq!(get(&addr, "a.test", "/").await, (200, None, "a".into()));
    assert_eq!(get(&addr, "b.test", "/").await, (200, None, "b".into()));
    let requests = proxy.stats().await.requests;
    assert!(proxy.metrics_text().contains("route=\"to-b\""));

    let mut only_a = both;
    only_a.listeners[0].routes.truncate(1);
    only_a.services.truncate(1);
    proxy.reload(only_a).await.unwrap();
    assert_eq!(endpoint_addresses(&proxy).await, vec![a.clone()], "the removed endpoint goes at once");
    assert!(proxy.metrics_text().contains("route=\"to-b\""), "kept while requests drain");
    tokio::time::pause();
    tokio::time::advance(RETIRE_GRACE + Duration::from_secs(1)).await;
    tokio::time::resume();
    let mut text = proxy.metrics_text();
    for _ in 0..100 {
        if !text.contains("route=\"to-b\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        text = proxy.metrics_text();
    }
    assert!(!text.contains("route=\"to-b\""), "series of the removed route pruned:\n{text}");
    assert!(text.contains("route=\"to-a\""));
    assert_eq!(proxy.stats().await.requests, requests, "pruning keeps the request total");
    proxy.close(Duration::from_millis(100)).await.unwrap();
}

#[tokio::test]
async fn a_services_endpoints_are_replaced_without_recompiling_its_routes() {
    let (a, _) = backend("a").await;
    let (b, _) = backend("b").await;
    let proxy = MeshProxy::new(crate::config::testing::all_to(&a)).unwrap();
    let addr = proxy.start().await.unwrap().listeners[0].local_address.clone();
    assert_eq!(get(&addr, "h", "/").await.2, "a");
    let before = proxy.shared.snapshot().load_full();
    let to_b = [EndpointConfig { address: b.clone(), weight: 1 }];
    proxy.update_endpoints("s", &to_b).await.unwrap();
    assert!(Arc::ptr_eq(&before, &proxy.shared.snapshot().load_full()), "the same compiled routes");
    for _ in 0..3 {
        assert_eq!(get(&addr, "h", "/").await.2, "b");
    }
    assert_eq!(endpoint_addresses(&proxy).await, vec![b.clone()], "the old endpoint drained away");
    let err = proxy.update_endpoints("nope", &to_b).await.unwrap_err();
    assert_eq!(err.code(), "MESHPROXY_INVALID_CONFIG");
    // The config decides again at the next reload.
    proxy.reload(crate::config::testing::all_to(&a)).await.unwrap();
    assert_eq!(get(&addr, "h", "/").await.2, "a");
    proxy.close(Duration::from_millis(100)).await.unwrap();
}

/// A backend that answers with the `x-forwarded-for` it received.
async fn echo_forwarded_for() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                        let xff = req.headers().get("x-forwarded-for").map(|v| v.as_bytes().to_vec());
                        let body = xff.unwrap_or_else(|| b"none".to_vec());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from(
                            body,
                        ))))
                    });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

/// Starts a proxy whose one route runs `filters` (before the built-in ones) on requests.
async fn with_request_filters(
    backend: &str,
    filters: Vec<crate::filter::RequestFilter>,
) -> (MeshProxy, String) {
    let proxy = MeshProxy::new(crate::config::testing::all_to(backend)).unwrap();
    let addr = proxy.start().await.unwrap().listeners[0].local_address.clone();
    let shared = &proxy.shared;
    let mut snapshot = Snapshot::compile(
        crate::config::testing::all_to(backend),
        shared.registry(),
        shared.metrics(),
        shared.stores(),
        None,
    )
    .unwrap();
    let key: Box<str> = "127.0.0.1:0".into();
    let listener = Arc::get_mut(snapshot.listeners.get_mut(&key).unwrap()).unwrap();
    let route = &mut listener.routes[0];
    let mut all = filters;
    all.extend(std::mem::take(&mut route.request_filters).into_vec());
    route.request_filters = all.into_boxed_slice();
    snapshot.commit(shared.registry(), shared.metrics());
    shared.snapshot().store(Arc::new(snapshot));
    (proxy, addr)
}

#[tokio::test]
async fn a_filter_that_waits_holds_the_request_then_the_remaining_filters_run() {
    use crate::filter::RequestFilter;
    let backend = echo_forwarded_for().await;
    let (proxy, addr) =
        with_request_filters(&backend, vec![RequestFilter::Delay(Duration::from_millis(150))]).await;
    let start = Instant::now();
    let (status, err, body) = get(&addr, "h", "/").await;
    assert_eq!((status, err), (200, None));
    assert!(start.elapsed() >= Duration::from_millis(150), "the request waited for the filter");
    assert_eq!(body, "127.0.0.1", "the filter after the waiting one (forwarded headers) ran");
    proxy.close(Duration::from_millis(100)).await.unwrap();
}

#[tokio::test]
async fn a_filter_that_answers_stops_the_request_before_any_endpoint() {
    use crate::filter::RequestFilter;
    let backend = echo_forwarded_for().await;
    let (proxy, addr) =
        with_request_filters(&backend, vec![RequestFilter::Refuse(ProxyError::ConnectRefused)]).await;
    let (status, err, _) = get(&addr, "h", "/").await;
    assert_eq!((status, err.as_deref()), (403, Some("connect-refused")));
    let stats = proxy.stats().await;
    assert_eq!(stats.endpoints[0].requests, 0, "never sent");
    assert_eq!(stats.requests, 1, "answered and counted on the route");
    proxy.close(Duration::from_millis(100)).await.unwrap();
}

#[tokio::test]
async fn a_rejection_answers_with_its_own_fields_and_body() {
    use crate::filter::RequestFilter;
    let backend = echo_forwarded_for().await;
    let reject = RequestFilter::RejectWith(ProxyError::RateLimited, "retry-after", "3", "slow down\n");
    let (proxy, addr) = with_request_filters(&backend, vec![reject]).await;
    let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/").header("host", "h").body(Empty::<bytes::Bytes>::new()).unwrap();
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["meshproxy-error"], "rate-limited");
    assert_eq!(resp.headers().get_all("retry-after").iter().collect::<Vec<_>>(), ["3", "second"]);
    assert_eq!(resp.headers()["content-length"], "10");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "slow down\n");
    assert_eq!(proxy.stats().await.endpoints[0].requests, 0, "never sent");
    proxy.close(Duration::from_millis(100)).await.unwrap();
}

/// An embedder's multi-thread runtime: HTTP/2 streams run as tasks of their own (the
/// current-thread path runs them inside the connection's task, which the JS tests cover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_streams_on_a_multi_thread_runtime() {
    let (a, _) = backend("from-a").await;
    let proxy = MeshProxy::new(crate::config::testing::all_to(&a)).unwrap();
    let addr = proxy.start().await.unwrap().listeners[0].local_address.clone();
    let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (client, conn) = h2::client::handshake(s).await.unwrap();
    tokio::spawn(conn);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..50 {
        let mut client = client.clone();
        calls.spawn(async move {
            client = client.ready().await.unwrap();
            let req = http::Request::get(format!("http://h.test/{i}")).body(()).unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            let resp = resp.await.unwrap();
            let status = resp.status();
            let mut body = resp.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            (status, bytes)
        });
    }
    while let Some(r) = calls.join_next().await {
        let (status, body) = r.unwrap();
        assert_eq!((status.as_u16(), body.as_slice()), (200, &b"from-a"[..]));
    }
    proxy.close(Duration::from_millis(100)).await.unwrap();
}

fn limit(rate: u32, burst: u32) -> crate::config::RateLimitConfig {
    crate::config::RateLimitConfig {
        name: "total".into(),
        rate,
        burst,
        key: crate::config::RateLimitKey::None,
        header: None,
        overrides: vec![],
        max_keys: 100_000,
        global: None,
    }
}

#[tokio::test]
async fn a_service_limit_applies_to_the_requests_a_split_sends_it_and_never_reaches_an_endpoint() {
    let (a, _) = backend("a").await;
    let (b, _) = backend("b").await;
    let mut split = route("r", &[], Prefix, "/", "a");
    split.backends = vec![
        crate::config::BackendRefConfig { service: "a".into(), weight: 1 },
        crate::config::BackendRefConfig { service: "b".into(), weight: 1 },
    ];
    let mut limited = service("a", &[&a]);
    // A burst of 3, then one a second.
    limited.rate_limits = vec![limit(1, 3)];
    let config = Config {
        listeners: vec![listener("127.0.0.1:0", vec![split])],
        services: vec![limited, service("b", &[&b])],
        admin: None,
        identity: None,
    };
    let proxy = MeshProxy::new(config).unwrap();
    let addr = proxy.start().await.unwrap().listeners[0].local_address.clone();
    let mut seen = std::collections::HashMap::<(u16, String), u32>::new();
    for _ in 0..200 {
        let (status, err, body) = get(&addr, "h", "/").await;
        let what = if status == 429 { err.unwrap_or_default() } else { body };
        *seen.entry((status, what)).or_default() += 1;
    }
    // Within the test's few seconds, `a` admits its burst and about one a second more.
    let to_a = seen.get(&(200, "a".into())).copied().unwrap_or(0);
    assert!((3..=8).contains(&to_a), "{seen:?}");
    let refused = seen.get(&(429, "rate-limited".into())).copied().unwrap_or(0);
    assert!(refused > 50, "half the split goes to a, most of it refused: {seen:?}");
    assert!(seen.get(&(200, "b".into())).copied().unwrap_or(0) > 50, "b has no limit: {seen:?}");
    let a_requests: u64 =
        proxy.stats().await.endpoints.iter().filter(|e| e.address == a).map(|e| e.requests).sum();
    assert_eq!(a_requests, u64::from(to_a), "a refused request never reaches a's endpoint");
    let text = proxy.metrics_text();
    let line = format!(
        "meshproxy_rate_limited_total{{listener=\"\",route=\"\",service=\"a\",limit=\"total\"}} {refused}"
    );
    assert!(text.contains(&line), "{line} in\n{text}");
    proxy.close(Duration::from_millis(100)).await.unwrap();
}

#[tokio::test]
async fn a_route_limit_answers_429_with_retry_after_and_the_ratelimit_fields() {
    let (a, _) = backend("a").await;
    let mut r = route("r", &[], Prefix, "/", "a");
    r.rate_limits = vec![limit(1, 2)];
    let config = Config {
        listeners: vec![listener("127.0.0.1:0", vec![r])],
        services: vec![service("a", &[&a])],
        admin: None,
        identity: None,
    };
    let proxy = MeshProxy::new(config).unwrap();
    let addr = proxy.start().await.unwrap().listeners[0].local_address.clone();
    assert_eq!(get(&addr, "h", "/").await.0, 200);
    assert_eq!(get(&addr, "h", "/").await.0, 200);
    let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/").header("host", "h").body(Empty::<bytes::Bytes>::new()).unwrap();
    let resp = client.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["meshproxy-error"], "rate-limited");
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.headers()["ratelimit-policy"], "\"total\";q=1;w=1;meshproxy-burst=2");
    assert_eq!(resp.headers()["ratelimit"], "\"total\";r=0;t=1");
    let stats = proxy.stats().await;
    assert_eq!(stats.endpoints[0].requests, 2, "the refused request was never sent");
    assert_eq!(stats.rate_limited, 1);
    proxy.close(Duration::from_millis(100)).await.unwrap();
}
