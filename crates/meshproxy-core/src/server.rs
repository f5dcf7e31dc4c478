//! [`MeshProxy`]: the embeddable proxy — start, reload, stats, close. Runs on whatever tokio
//! runtime calls it (the N-API binding gives it a dedicated one).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::compile::Snapshot;
use crate::config::{Config, EndpointConfig};
use crate::listener;
use crate::metrics::Metrics;
use crate::state::Shared;
use crate::upstream::Registry;
use crate::{admin, Error};
use meshproxy_http::Drain;

/// How long what a reload removed (a listener's connections, metric series) is kept draining.
const RETIRE_GRACE: Duration = Duration::from_secs(10);

struct RunningListener {
    name: String,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    drain: watch::Sender<Drain>,
}

struct RunningAdmin {
    address: String,
    local: SocketAddr,
    stop: watch::Sender<bool>,
}

struct Running {
    listeners: HashMap<Box<str>, RunningListener>,
    admin: Option<RunningAdmin>,
    reaper: JoinHandle<()>,
}

enum State {
    Created,
    Running(Running),
    Closed,
}

pub struct MeshProxy {
    shared: Arc<Shared>,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerInfo {
    pub name: String,
    /// As configured.
    pub address: String,
    /// As bound (the real port when the configured one was 0).
    pub local_address: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StartInfo {
    pub listeners: Vec<ListenerInfo>,
    pub admin: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStats {
    pub address: String,
    pub open_connections: u64,
    pub opened_connections: u64,
    pub idle_connections: usize,
    pub inflight: u64,
    pub requests: u64,
    pub failures: u64,
    /// Requests re-sent once (see `meshproxy_upstream_retries_total`).
    pub retries: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub state: &'static str,
    pub ready: bool,
    pub downstream_connections: usize,
    pub requests: u64,
    pub reloads: u64,
    pub listeners: Vec<ListenerInfo>,
    pub admin: Option<String>,
    pub endpoints: Vec<EndpointStats>,
    /// Per worker thread, in order.
    pub workers: Vec<WorkerStats>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStats {
    /// Downstream connections the accept loop has dealt to this worker.
    pub connections: u64,
}

async fn bind(address: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(address).await.map_err(|source| Error::Bind { address: address.to_owned(), source })
}

impl MeshProxy {
    /// Compiles the config; nothing is bound until [`MeshProxy::start`]. Connections are served
    /// on the runtime that calls `start` (any flavor).
    pub fn new(config: Config) -> Result<Self, Error> {
        Self::with_workers(config, Vec::new())
    }

    /// Like [`MeshProxy::new`], with accepted connections dealt round-robin to `workers`
    /// (current-thread runtimes, [`crate::workers::Workers::handles`]); call `start` on the
    /// first of them.
    pub fn with_workers(config: Config, workers: Vec<tokio::runtime::Handle>) -> Result<Self, Error> {
        let registry = Registry::new(workers.len(), crate::upstream::Connector::default());
        let metrics = Metrics::default();
        let snapshot = Snapshot::compile(config, &registry, &metrics)?;
        snapshot.commit(&registry, &metrics);
        let shared = Arc::new(Shared::new(snapshot, registry, metrics, workers));
        Ok(MeshProxy { shared, state: Mutex::new(State::Created) })
    }

    /// Binds every listener (all or nothing) and starts serving.
    pub async fn start(&self) -> Result<StartInfo, Error> {
        let mut state = self.state.lock().await;
        match *state {
            State::Created => {}
            State::Running(_) => return Err(Error::AlreadyRunning),
            State::Closed => return Err(Error::Closed),
        }
        let snapshot = self.shared.snapshot().load_full();
        let mut running = Running { listeners: HashMap::new(), admin: None, reaper: self.spawn_reaper() };
        let bound = match self.bind_new(&snapshot.config, &running).await {
            Ok(b) => b,
            Err(e) => {
                running.reaper.abort();
                return Err(e);
            }
        };
        self.launch(&mut running, bound);
        self.shared.set_ready(true);
        let info = info(&running);
        *state = State::Running(running);
        Ok(info)
    }

    /// Swaps in a new config atomically. A config that does not compile, or a new listener that
    /// cannot be bound, changes nothing. Listeners that remain keep their sockets, endpoints that
    /// remain keep their pooled connections, requests in flight finish on the old version.
    pub async fn reload(&self, config: Config) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        let result = self.reload_locked(&mut state, config).await;
        let counter = if result.is_ok() {
            &self.shared.metrics().reloads
        } else {
            &self.shared.metrics().reload_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn reload_locked(&self, state: &mut State, config: Config) -> Result<(), Error> {
        if matches!(state, State::Closed) {
            return Err(Error::Closed);
        }
        let snapshot = Arc::new(Snapshot::compile(config, self.shared.registry(), self.shared.metrics())?);
        if let State::Running(running) = state {
            let bound = self.bind_new(&snapshot.config, running).await?;
            self.shared.snapshot().store(snapshot.clone());
            let removed: Vec<Box<str>> =
                running.listeners.keys().filter(|k| !snapshot.listeners.contains_key(*k)).cloned().collect();
            for key in removed {
                if let Some(l) = running.listeners.remove(&key) {
                    retire_listener(l, RETIRE_GRACE);
                }
            }
            if let Some(admin) = running.admin.take() {
                if snapshot.config.admin.as_ref().is_some_and(|a| a.address == admin.address) {
                    running.admin = Some(admin);
                } else {
                    let _ = admin.stop.send(true);
                }
            }
            self.launch(running, bound);
        } else {
            self.shared.snapshot().store(snapshot.clone());
        }
        snapshot.commit(self.shared.registry(), self.shared.metrics());
        // The series of removed routes, listeners and services go once requests on the old
        // config have drained (the same grace a removed listener gets), so their last counts
        // can still be scraped.
        let shared = Arc::downgrade(&self.shared);
        let at = Instant::now() + RETIRE_GRACE;
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(shared) = shared.upgrade() {
                shared.snapshot().load().prune_metrics(shared.metrics());
            }
        });
        Ok(())
    }

    /// Replaces one service's endpoints without recompiling routes (service discovery between
    /// reloads): the new set gets the service's balancer and endpoint settings, endpoints it
    /// keeps keep their pooled connections, endpoints it drops drain, and requests in flight keep
    /// their endpoint. The next reload's config decides again.
    pub async fn update_endpoints(&self, service: &str, endpoints: &[EndpointConfig]) -> Result<(), Error> {
        let _serialized = self.state.lock().await;
        if let Some(bad) = endpoints.iter().find(|e| e.address.is_empty()) {
            return Err(Error::Config(format!(
                "service {service:?}: an endpoint address is empty ({bad:?})"
            )));
        }
        let snapshot = self.shared.snapshot().load_full();
        let (Some(backend), Some(config)) =
            (snapshot.backends.get(service), snapshot.config.services.iter().find(|s| s.name == service))
        else {
            return Err(Error::Config(format!("no service {service:?}")));
        };
        let registry = self.shared.registry();
        let set = crate::compile::compile_endpoint_set(config, endpoints, registry, &[], backend.settings)?;
        registry.adopt(set.iter());
        for ep in set.iter() {
            ep.update(backend.settings);
        }
        backend.swap_endpoints(set);
        let used: std::collections::HashSet<Box<str>> = snapshot
            .backends
            .values()
            .flat_map(|b| b.endpoints().iter().map(|e| e.address.clone()).collect::<Vec<_>>())
            .collect();
        registry.retain(|addr| used.contains(addr));
        Ok(())
    }

    /// Stops accepting, turns `/ready` to 503, lets in-flight requests finish (keep-alive clients
    /// are told `Connection: close`), and after `grace` closes whatever is left. Idempotent.
    pub async fn close(&self, grace: Duration) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        let running = match std::mem::replace(&mut *state, State::Closed) {
            State::Running(r) => r,
            State::Created | State::Closed => return Ok(()),
        };
        self.shared.set_ready(false);
        for l in running.listeners.values() {
            let _ = l.stop.send(true);
            let _ = l.drain.send(Drain::Graceful);
        }
        let deadline = Instant::now() + grace;
        while self.shared.open_connections().load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for l in running.listeners.values() {
            let _ = l.drain.send(Drain::Force);
        }
        let forced = Instant::now() + Duration::from_secs(1);
        while self.shared.open_connections().load(Ordering::Acquire) > 0 && Instant::now() < forced {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(admin) = running.admin {
            let _ = admin.stop.send(true);
        }
        running.reaper.abort();
        self.shared.registry().clear_idle();
        Ok(())
    }

    pub async fn stats(&self) -> Stats {
        let state = self.state.lock().await;
        let (name, listeners, admin) = match &*state {
            State::Created => ("created", vec![], None),
            State::Running(r) => {
                let i = info(r);
                ("running", i.listeners, i.admin)
            }
            State::Closed => ("closed", vec![], None),
        };
        drop(state);
        let s = &self.shared;
        Stats {
            state: name,
            ready: s.is_ready(),
            downstream_connections: s.open_connections().load(Ordering::Acquire),
            requests: s.metrics().total_requests(),
            reloads: s.metrics().reloads.load(Ordering::Relaxed),
            listeners,
            admin,
            endpoints: s
                .registry()
                .samples()
                .into_iter()
                .map(|e| EndpointStats {
                    address: e.address,
                    open_connections: e.open,
                    opened_connections: e.opened,
                    idle_connections: e.idle,
                    inflight: e.inflight,
                    requests: e.requests,
                    failures: e.failures,
                    retries: e.retries,
                })
                .collect(),
            workers: s.dealt().map(|connections| WorkerStats { connections }).collect(),
        }
    }

    /// The `/metrics` text, also for embedders without an admin listener.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics().render(&self.shared.registry().samples())
    }

    fn spawn_reaper(&self) -> JoinHandle<()> {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                match shared.upgrade() {
                    Some(s) => s.registry().reap_idle(),
                    None => return,
                }
            }
        })
    }

    /// Binds what `config` needs that `running` does not have yet.
    async fn bind_new(&self, config: &Config, running: &Running) -> Result<Bound, Error> {
        let mut bound = Bound::default();
        for l in &config.listeners {
            if !running.listeners.contains_key(l.address.as_str()) {
                bound.listeners.push((l.address.clone(), l.name.clone(), bind(&l.address).await?));
            }
        }
        if let Some(a) = &config.admin {
            if running.admin.as_ref().is_none_or(|r| r.address != a.address) {
                bound.admin = Some((a.address.clone(), bind(&a.address).await?));
            }
        }
        Ok(bound)
    }

    fn launch(&self, running: &mut Running, bound: Bound) {
        for (address, name, listener) in bound.listeners {
            let local = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            let (stop, stop_rx) = watch::channel(false);
            let (drain, drain_rx) = watch::channel(Drain::Run);
            let key: Arc<str> = address.as_str().into();
            tokio::spawn(listener::accept_loop(listener, key, self.shared.clone(), stop_rx, drain_rx));
            tracing::info!(listener = %name, %local, "listening");
            running.listeners.insert(address.into(), RunningListener { name, local, stop, drain });
        }
        // Listener names may change on reload while the socket stays.
        let snapshot = self.shared.snapshot().load();
        for (key, l) in running.listeners.iter_mut() {
            if let Some(rt) = snapshot.listeners.get(key) {
                l.name = rt.name.to_string();
            }
        }
        if let Some((address, listener)) = bound.admin {
            let local = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            let (stop, stop_rx) = watch::channel(false);
            tokio::spawn(admin::serve(listener, self.shared.clone(), stop_rx));
            running.admin = Some(RunningAdmin { address, local, stop });
        }
    }
}

#[derive(Default)]
struct Bound {
    listeners: Vec<(String, String, TcpListener)>,
    admin: Option<(String, TcpListener)>,
}

fn info(r: &Running) -> StartInfo {
    let mut listeners: Vec<ListenerInfo> = r
        .listeners
        .iter()
        .map(|(addr, l)| ListenerInfo {
            name: l.name.clone(),
            address: addr.to_string(),
            local_address: l.local.to_string(),
        })
        .collect();
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    StartInfo { listeners, admin: r.admin.as_ref().map(|a| a.local.to_string()) }
}

/// A listener dropped by a reload: stop accepting now, drain its connections, force after grace.
fn retire_listener(l: RunningListener, grace: Duration) {
    let _ = l.stop.send(true);
    let _ = l.drain.send(Drain::Graceful);
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let _ = l.drain.send(Drain::Force);
    });
}

#[cfg(test)]
mod tests {
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
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
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
        };
        let proxy = MeshProxy::new(config).unwrap();
        let info = proxy.start().await.unwrap();
        let addr = info.listeners[0].local_address.clone();
        for _ in 0..50 {
            assert_eq!(get(&addr, "api.test", "/x").await, (200, None, "from-a".into()));
        }
        assert_eq!(
            a_conns.load(Ordering::Relaxed),
            1,
            "50 sequential requests share one upstream connection"
        );
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
            Config { listeners, services, admin: None }
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
                vec![
                    route("to-a", &["a.test"], Prefix, "/", "a"),
                    route("to-b", &["b.test"], Prefix, "/", "b"),
                ],
            )],
            services: vec![service("a", &[&a]), service("b", &[&b])],
            admin: None,
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
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                bytes::Bytes::from(body),
                            )))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
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
        let mut snapshot =
            Snapshot::compile(crate::config::testing::all_to(backend), shared.registry(), shared.metrics())
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
}
