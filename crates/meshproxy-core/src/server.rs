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

use crate::checks::Checks;
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
    /// The running config's active health checks (aborted when replaced or dropped).
    checks: Checks,
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
    /// Its connections are TLS (a service's `tls`); one address can have a plaintext and a TLS endpoint.
    pub tls: bool,
    pub open_connections: u64,
    pub opened_connections: u64,
    pub idle_connections: usize,
    pub inflight: u64,
    pub requests: u64,
    pub failures: u64,
    /// Requests re-sent once (see `meshproxy_upstream_retries_total`).
    pub retries: u64,
    /// `healthy`, `ejected`, `probing` or `unready`.
    pub state: &'static str,
    /// While ejected: milliseconds until a probe may go.
    pub ejected_for_ms: Option<u64>,
    /// Times failure accrual ejected it.
    pub ejections: u64,
    /// The peak-EWMA latency estimate (milliseconds) `p2c-ewma` balances on.
    pub latency_ms: f64,
}

impl From<meshproxy_upstream::Sample> for EndpointStats {
    fn from(e: meshproxy_upstream::Sample) -> Self {
        EndpointStats {
            address: e.address,
            tls: e.tls,
            open_connections: e.open,
            opened_connections: e.opened,
            idle_connections: e.idle,
            inflight: e.inflight,
            requests: e.requests,
            failures: e.failures,
            retries: e.retries,
            state: e.state.as_str(),
            ejected_for_ms: match e.state {
                meshproxy_upstream::HealthState::Ejected { remaining } => Some(remaining.as_millis() as u64),
                _ => None,
            },
            ejections: e.ejections,
            latency_ms: e.latency_ms,
        }
    }
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
    /// Requests the rate limits of the config in force refused (429 `rate-limited`).
    pub rate_limited: u64,
    /// TLS handshakes completed on the listeners with `tls`, and failed (any reason).
    pub tls_handshakes: u64,
    pub tls_handshake_failures: u64,
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
        let registry = Registry::new(workers.len());
        let metrics = Metrics::default();
        let stores = crate::ratelimit::Stores::default();
        let snapshot = Snapshot::compile(config, &registry, &metrics, &stores, None)?;
        snapshot.commit(&registry, &metrics);
        let shared = Arc::new(Shared::new(snapshot, registry, metrics, stores, workers));
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
        let mut running = Running {
            listeners: HashMap::new(),
            admin: None,
            reaper: self.spawn_reaper(),
            checks: Checks::default(),
        };
        let bound = match self.bind_new(&snapshot.config, &running).await {
            Ok(b) => b,
            Err(e) => {
                running.reaper.abort();
                return Err(e);
            }
        };
        self.launch(&mut running, bound);
        running.checks = Checks::start(&snapshot);
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
        let previous = self.shared.snapshot().load().identity.clone();
        let snapshot = Arc::new(Snapshot::compile(
            config,
            self.shared.registry(),
            self.shared.metrics(),
            self.shared.stores(),
            previous.as_ref(),
        )?);
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
        self.shared.stores().retain(&snapshot.global_servers());
        if let State::Running(running) = state {
            running.checks = Checks::start(&snapshot);
        }
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
        let set = crate::compile::compile_endpoint_set(
            config,
            endpoints,
            registry,
            &[],
            &backend.connector,
            backend.settings.clone(),
        )?;
        registry.adopt(set.iter());
        for ep in set.iter() {
            ep.update(backend.settings.clone());
        }
        backend.swap_endpoints(set);
        let used: std::collections::HashSet<(Box<str>, crate::upstream::Connector)> = snapshot
            .backends
            .values()
            .flat_map(|b| {
                b.endpoints().iter().map(|e| (e.address.clone(), e.connector().clone())).collect::<Vec<_>>()
            })
            .collect();
        registry.retain(|address, connector| used.contains(&(address.into(), connector.clone())));
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
        let (tls_handshakes, tls_handshake_failures) = s.metrics().tls_handshakes();
        Stats {
            state: name,
            ready: s.is_ready(),
            downstream_connections: s.open_connections().load(Ordering::Acquire),
            requests: s.metrics().total_requests(),
            reloads: s.metrics().reloads.load(Ordering::Relaxed),
            listeners,
            admin,
            endpoints: s.registry().samples().into_iter().map(EndpointStats::from).collect(),
            workers: s.dealt().map(|connections| WorkerStats { connections }).collect(),
            rate_limited: s.metrics().rate_limited(),
            tls_handshakes,
            tls_handshake_failures,
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
                    Some(s) => {
                        s.registry().reap_idle();
                        // Rate limits drop the keys whose buckets are full again.
                        let snapshot = s.snapshot().load_full();
                        for limits in &snapshot.rate_limits {
                            limits.sweep();
                        }
                        // Certificate files that changed on disk are read in again (off the
                        // runtime's threads: file reads and key parsing).
                        if snapshot.identity.is_some()
                            || snapshot
                                .listeners
                                .values()
                                .any(|l| l.tls.as_ref().is_some_and(|t| t.watches_files()))
                        {
                            let _ = tokio::task::spawn_blocking(move || reload_certificates(&snapshot)).await;
                        }
                    }
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

/// Rebuilds the TLS config of each listener whose certificate files changed; a bad new
/// certificate is logged and the one in force keeps serving.
fn reload_certificates(snapshot: &crate::compile::Snapshot) {
    if let Some(identity) = &snapshot.identity {
        match identity.reload_if_changed() {
            None => {}
            Some(Ok(())) => {
                let info = &identity.material().info;
                tracing::info!(id = %info.id.spiffe(), serial = %info.serial, anchors = info.anchors.len(), "mesh identity reloaded from changed files");
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "changed mesh identity files refused; the identity in force keeps serving");
            }
        }
        match identity.renew_if_due(std::time::SystemTime::now()) {
            None => {}
            Some(Ok(())) => {
                let info = &identity.material().info;
                tracing::info!(id = %info.id.spiffe(), serial = %info.serial, not_after = %httpdate::fmt_http_date(info.not_after), "mesh identity certificate renewed");
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, retry_in = ?meshproxy_tls::mesh::RENEW_RETRY, "mesh identity renewal failed; the certificate in force keeps serving");
            }
        }
    }
    for l in snapshot.listeners.values() {
        let Some(tls) = &l.tls else { continue };
        match tls.reload_if_changed() {
            None => {}
            Some(Ok(())) => {
                l.metrics.tls.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(listener = %l.name, "TLS certificates reloaded from changed files");
            }
            Some(Err(e)) => {
                l.metrics.tls.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(listener = %l.name, error = %e, "changed TLS certificates refused; the previous ones keep serving");
            }
        }
    }
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
mod tests;
