//! Compiles a [`Config`] into the immutable [`Snapshot`] the data path reads: routing tables,
//! balancers and endpoint handles, resolved once so a request only does lookups. A snapshot is
//! swapped in atomically on reload; requests in flight keep the one they started with.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderName;
use rustc_hash::FxHashMap;

use crate::balance::{Balancer, Cost, Distribution, HashKey, P2c, Ring, RoundRobin, WeightedRandom};
use crate::breaker::Breaker;
use crate::classify::{FailurePolicy, RetryPolicy, StatusSet};
use crate::config::{
    BalancerConfig, Config, EndpointConfig, HealthCheckConfig, Http2Config, IdentityConfig, ListenerConfig,
    ListenerProtocol, MtlsMode, RouteConfig, ServiceConfig, UpstreamProtocol,
};
use crate::filter::authz::Authz;
use crate::filter::{self, RequestFilter, ResponseFilter};
use crate::metrics::{ListenerMetrics, MetricSet, Metrics, RouteMetrics, ServiceMetrics};
use crate::policy::{self, ResponsePolicies};
use crate::ratelimit::{Limits, Stores};
use crate::routing::RouteTable;
use crate::upstream::{Connector, Endpoint, Registry};
use crate::Error;
use meshproxy_tls::mesh::{IdentitySource, MeshIdentity, WorkloadId};
use meshproxy_upstream::pool::PoolSettings;
use meshproxy_upstream::{CheckSpec, ConnLimit, EndpointSettings, Probe};

#[cfg(test)]
mod fuzz;

/// The largest endpoint weight (the TypeScript field table's bound for `endpoints[].weight`).
const MAX_ENDPOINT_WEIGHT: u32 = 1000;

pub struct Snapshot {
    pub config: Arc<Config>,
    /// Keyed by the listener's configured address (its identity across reloads). Looked up on
    /// every request, with keys only the config sets: FxHash, not SipHash.
    pub listeners: FxHashMap<Box<str>, Arc<ListenerRuntime>>,
    /// Every service, by name.
    pub backends: HashMap<Box<str>, Arc<Backend>>,
    /// Every route's and service's rate limits, for housekeeping ([`Limits::sweep`]).
    pub rate_limits: Vec<Arc<Limits>>,
    /// Settings this config gives each endpoint, applied only once it is swapped in.
    endpoint_settings: Vec<(Arc<Endpoint>, EndpointSettings)>,
    /// The metric series this config counts into, published once it is swapped in.
    metric_set: MetricSet,
    /// This proxy's mesh identity (kept across reloads while its files' place stays the same).
    pub identity: Option<Arc<MeshIdentity>>,
}

pub struct ListenerRuntime {
    pub name: Box<str>,
    pub protocol: ListenerProtocol,
    /// Where opaque (non-HTTP) connections go.
    pub tcp_service: Option<Arc<Backend>>,
    pub table: RouteTable,
    pub routes: Vec<RouteRuntime>,
    pub limits: ListenerLimits,
    pub metrics: Arc<ListenerMetrics>,
    /// TLS termination in front of protocol detection; None = plaintext.
    pub tls: Option<Arc<meshproxy_tls::ServerTls>>,
    /// Mesh mTLS in front of protocol detection; None = no mTLS.
    pub mtls: Option<Arc<Mtls>>,
}

/// A listener's mesh mTLS: this proxy's identity, and whether plaintext is served too.
pub struct Mtls {
    pub identity: Arc<MeshIdentity>,
    /// `permissive`: a connection that does not start with a TLS handshake is served as plaintext.
    pub permissive: bool,
}

#[derive(Debug, Clone)]
pub struct ListenerLimits {
    pub http2: meshproxy_http::h2_server::Settings,
    pub detect_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
}

pub struct RouteRuntime {
    /// The backends requests are split over: the route's service, or its weighted `backends`.
    /// None for a route that redirects (its requests go to no backend).
    pub backends: Option<Distribution<Arc<Backend>>>,
    /// None = no limit.
    pub response_header_timeout: Option<Duration>,
    /// How long an exchange may go without bytes moving either way ([`crate::proxy::idle`]);
    /// None = no limit.
    pub idle_timeout: Option<Duration>,
    /// `CONNECT` to this route's service is tunnelled instead of refused.
    pub allow_connect: bool,
    pub metrics: Arc<RouteMetrics>,
    /// Run in order on each request before a backend is chosen, and on each response head.
    pub request_filters: Box<[RequestFilter]>,
    pub response_filters: Box<[ResponseFilter]>,
    /// Retries of failed attempts (boxed: most routes have none).
    pub retry: Option<Box<RetryPolicy>>,
    /// Its attempts take the boxed path (`proxy::service::retry`): it has retries or an idle
    /// timeout. One test on the plain path for both.
    pub attempts_boxed: bool,
    /// The route's response-phase Rego policies ([`crate::policy`]).
    pub policies: Option<Arc<ResponsePolicies>>,
    /// Response policies (the route's or a backend's) read the request's attributes: they are
    /// kept before the request is sent.
    pub keeps_request: bool,
}

/// A service as routes reach it. Its endpoints, with the balancer built for them, are one
/// [`EndpointSet`] swapped on its own: discovery can change a service's endpoints without
/// recompiling the routes that use it.
pub struct Backend {
    pub name: Box<str>,
    pub tcp: Arc<ServiceMetrics>,
    pub protocol: UpstreamProtocol,
    /// What this service's endpoints are given (pools, limits, timeouts).
    pub settings: EndpointSettings,
    /// What counts as an endpoint's failure, and what a failure does.
    pub failure: FailurePolicy,
    /// The active health check of its endpoints, if it has one ([`crate::checks`]).
    pub check: Option<Arc<CheckSpec>>,
    /// Service-wide limits on requests ([`crate::breaker`]).
    pub breaker: Option<Arc<Breaker>>,
    /// Rate limits on every request sent to the service, checked once it is chosen.
    pub rate_limits: Option<Arc<Limits>>,
    /// Rego policies on every response from its endpoints ([`crate::policy`]).
    pub policies: Option<Arc<ResponsePolicies>>,
    /// How its endpoints' connections are opened (plain TCP, or TLS built from its `tls` once
    /// per compile); with the address, an endpoint's key in the registry.
    pub connector: Connector,
    /// A meshed HTTP/1.1 service: its plain HTTP/1.1 requests travel over HTTP/2 to the peer
    /// proxy, marked with `meshproxy-orig-proto` ([`crate::proxy`]).
    pub mesh_h2: bool,
    endpoints: ArcSwap<EndpointSet>,
}

/// A service's endpoints and the balancer compiled for them (same order).
pub struct EndpointSet {
    balancer: Balancer,
    endpoints: Vec<Arc<Endpoint>>,
}

impl Backend {
    /// The current endpoint set, for the time it takes to choose one.
    #[inline]
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    /// Replaces the endpoint set; requests already sent keep their endpoint.
    pub fn swap_endpoints(&self, set: EndpointSet) {
        self.endpoints.store(Arc::new(set));
    }
}

impl EndpointSet {
    pub fn hash_key(&self) -> Option<&HashKey> {
        self.balancer.hash_key()
    }

    /// The balancer's choice among the available endpoints (see [`Balancer::select`]).
    #[inline]
    pub fn select(&self, hash: Option<u64>) -> Option<&Arc<Endpoint>> {
        self.balancer.select(&self.endpoints, hash).and_then(|i| self.endpoints.get(i))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints.iter()
    }

    /// Whether one more of these endpoints may be ejected under `accrual`'s cap.
    pub fn may_eject(&self, accrual: &meshproxy_upstream::Accrual) -> bool {
        let ejected = self.endpoints.iter().filter(|e| e.health.is_ejected()).count();
        ejected < accrual.max_ejected(self.endpoints.len())
    }
}

impl Snapshot {
    /// Compiles `config` against the endpoints and metric series of the running one, changing
    /// neither: new endpoints and series are this snapshot's own until [`Snapshot::commit`].
    /// Global rate limits take their Redis servers from `stores` (the proxy's, kept across reloads).
    ///
    /// `previous`: the identity of the running snapshot; kept (its files read again) when the
    /// config names the same files, so endpoints keyed by it keep their pools.
    pub fn compile(
        config: Config,
        registry: &Registry,
        metrics: &Metrics,
        stores: &Stores,
        previous: Option<&Arc<MeshIdentity>>,
    ) -> Result<Self, Error> {
        let identity = compile_identity(config.identity.as_ref(), previous)?;
        let mut services = HashMap::new();
        let mut endpoint_settings: Vec<(Arc<Endpoint>, EndpointSettings)> = Vec::new();
        let mut metric_set = MetricSet::default();
        let mut rate_limits = Vec::new();
        for s in &config.services {
            if services.contains_key(s.name.as_str()) {
                return Err(Error::Config(format!("duplicate service {:?}", s.name)));
            }
            let service = compile_service(
                s,
                registry,
                &endpoint_settings,
                metrics,
                &mut metric_set,
                stores,
                identity.as_ref(),
            )?;
            rate_limits.extend(service.rate_limits.clone());
            endpoint_settings
                .extend(service.endpoints().iter().map(|e| (e.clone(), service.settings.clone())));
            services.insert(s.name.as_str(), Arc::new(service));
        }
        let mut listeners = FxHashMap::default();
        for l in &config.listeners {
            let runtime = compile_listener(
                l,
                &services,
                metrics,
                &mut metric_set,
                &mut rate_limits,
                stores,
                identity.as_ref(),
            )?;
            if listeners.insert(l.address.as_str().into(), Arc::new(runtime)).is_some() {
                return Err(Error::Config(format!("duplicate listener address {:?}", l.address)));
            }
        }
        let backends = services.into_iter().map(|(name, b)| (name.into(), b)).collect();
        Ok(Snapshot {
            config: Arc::new(config),
            listeners,
            backends,
            rate_limits,
            endpoint_settings,
            metric_set,
            identity,
        })
    }

    /// Makes this snapshot's endpoints and series the proxy's: registers them, gives every
    /// endpoint this config's settings (when two services share an endpoint, the later
    /// service's settings win) and drops the endpoints no longer used. Call once it is swapped
    /// in; series it no longer has are pruned later ([`Snapshot::prune_metrics`]).
    pub fn commit(&self, registry: &Registry, metrics: &Metrics) {
        registry.adopt(self.endpoint_settings.iter().map(|(e, _)| e));
        for (endpoint, settings) in &self.endpoint_settings {
            endpoint.update(settings.clone());
        }
        let used = self.endpoint_keys();
        registry.retain(|address, connector| used.contains(&(address, connector)));
        metrics.install(&self.metric_set);
    }

    /// Drops the metric series of routes, listeners and services this snapshot does not have.
    pub fn prune_metrics(&self, metrics: &Metrics) {
        metrics.prune(&self.metric_set);
    }

    /// The endpoints this snapshot uses, by address and connector (the registry drops the others).
    pub fn endpoint_keys(&self) -> std::collections::HashSet<(&str, &Connector)> {
        self.endpoint_settings.iter().map(|(e, _)| (&*e.address, e.connector())).collect()
    }

    /// The servers this snapshot's global rate limits use: Redis URLs, and rate limit services as
    /// `rls:<address>`, each with its TLS files (CA bundle, client certificate and key).
    pub fn global_servers(
        &self,
    ) -> std::collections::HashSet<(std::borrow::Cow<'_, str>, crate::ratelimit::TlsFiles<'_>)> {
        let routes = self.config.listeners.iter().flat_map(|l| l.routes.iter().flat_map(|r| &r.rate_limits));
        let services = self.config.services.iter().flat_map(|s| &s.rate_limits);
        routes
            .chain(services)
            .filter_map(|l| l.global.as_ref())
            .filter_map(|g| match (&g.redis, &g.rls) {
                (Some(url), _) => Some((url.as_str().into(), crate::ratelimit::TlsFiles::of(g))),
                (None, Some(addr)) => Some((format!("rls:{addr}").into(), crate::ratelimit::TlsFiles::of(g))),
                (None, None) => None,
            })
            .collect()
    }
}

/// Route `r`'s backends: its service alone, or its split by weight (a zero weight takes no
/// requests).
fn route_backends(
    r: &RouteConfig,
    service: Arc<Backend>,
    services: &HashMap<&str, Arc<Backend>>,
) -> Result<Distribution<Arc<Backend>>, Error> {
    if r.backends.is_empty() {
        return Ok(Distribution::One(service));
    }
    let mut split = Vec::with_capacity(r.backends.len());
    for b in r.backends.iter().filter(|b| b.weight > 0) {
        let backend = services.get(b.service.as_str()).cloned().ok_or_else(|| {
            Error::Config(format!("route {:?}: backend names an undefined service {:?}", r.name, b.service))
        })?;
        split.push((backend, b.weight));
    }
    Distribution::new(split)
        .ok_or_else(|| Error::Config(format!("route {:?}: every backend has weight 0", r.name)))
}

fn compile_listener(
    l: &ListenerConfig,
    services: &HashMap<&str, Arc<Backend>>,
    metrics: &Metrics,
    metric_set: &mut MetricSet,
    rate_limits: &mut Vec<Arc<Limits>>,
    stores: &Stores,
    identity: Option<&Arc<MeshIdentity>>,
) -> Result<ListenerRuntime, Error> {
    let routes = l
        .routes
        .iter()
        .map(|r| {
            let backends = if r.redirect.is_some() {
                None
            } else {
                let service = services.get(r.service.as_str()).cloned().ok_or_else(|| {
                    Error::Config(format!("route {:?} names an undefined service {:?}", r.name, r.service))
                })?;
                Some(route_backends(r, service, services)?)
            };
            let (request_filters, response_filters) = filter::compile(l.proxy_headers, r)?;
            let policy_owner = format!("route:{}/{}", l.name, r.name);
            let (request_policies, policies) =
                policy::compile(&policy_owner, &r.policies, true, metrics, metric_set)?;
            let keeps_request = policies.is_some()
                || match &backends {
                    None => false,
                    Some(Distribution::One(b)) => b.policies.is_some(),
                    Some(Distribution::Weighted { items, .. }) => items.iter().any(|b| b.policies.is_some()),
                };
            let owner = format!("route {:?}", r.name);
            let clock = governor::clock::DefaultClock::default();
            let scope = format!("route:{}", r.name);
            let limits = Limits::compile(&owner, &scope, &r.rate_limits, &clock, stores, |limit| {
                metrics.rate_limit(metric_set, &l.name, &r.name, "", limit)
            })?
            .map(Arc::new);
            rate_limits.extend(limits.clone());
            let authz = Authz::compile(&r.name, &r.authorization, &l.authorization)?;
            // In order: authorization, the rate limits, the request policies (they judge the
            // request as the client sent it), then the route's other filters. A request refused
            // early costs nothing more, and a Rego evaluation is behind the limits.
            let request_filters: Box<[RequestFilter]> = authz
                .map(|a| RequestFilter::Authorize(Box::new(a)))
                .into_iter()
                .chain(limits.map(RequestFilter::RateLimit))
                .chain(request_policies.into_iter().map(RequestFilter::Policy))
                .chain(request_filters.into_vec())
                .collect();
            let retry =
                r.retry.as_ref().map(|c| RetryPolicy::compile(&r.name, c).map(Box::new)).transpose()?;
            Ok(RouteRuntime {
                backends,
                policies,
                keeps_request,
                request_filters,
                response_filters,
                response_header_timeout: (r.response_header_timeout_ms > 0)
                    .then(|| Duration::from_millis(r.response_header_timeout_ms)),
                idle_timeout: (r.idle_timeout_ms > 0).then(|| Duration::from_millis(r.idle_timeout_ms)),
                allow_connect: r.allow_connect,
                metrics: metrics.route(metric_set, &l.name, &r.name, &r.service),
                attempts_boxed: retry.is_some() || r.idle_timeout_ms > 0,
                retry,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let tcp_service = match &l.tcp_service {
        Some(name) => Some(services.get(name.as_str()).cloned().ok_or_else(|| {
            Error::Config(format!("listener {:?}: tcpService names an undefined service {name:?}", l.name))
        })?),
        None if l.protocol == ListenerProtocol::Tcp => {
            return Err(Error::Config(format!("listener {:?}: a tcp listener needs a tcpService", l.name)))
        }
        None => None,
    };
    let tls = l.tls.as_ref().map(|t| compile_tls(&l.name, t)).transpose()?;
    let mtls = match (l.mtls, identity) {
        (MtlsMode::Off, _) => None,
        (_, None) => {
            return Err(Error::Config(format!(
                "listener {:?}: mtls needs the proxy's identity (top-level identity)",
                l.name
            )))
        }
        (_, Some(_)) if tls.is_some() => {
            return Err(Error::Config(format!("listener {:?}: mtls and tls together", l.name)))
        }
        (mode, Some(identity)) => {
            Some(Arc::new(Mtls { identity: identity.clone(), permissive: mode == MtlsMode::Permissive }))
        }
    };
    let listener_metrics = metrics.listener(metric_set, &l.name);
    listener_metrics.tls.enabled.store(tls.is_some() || mtls.is_some(), std::sync::atomic::Ordering::Relaxed);
    Ok(ListenerRuntime {
        name: l.name.as_str().into(),
        protocol: l.protocol,
        tls,
        mtls,
        tcp_service,
        table: RouteTable::compile(&l.routes)?,
        routes,
        limits: ListenerLimits {
            http2: h2_settings(&l.http2),
            detect_timeout: Duration::from_millis(l.detect_timeout_ms.max(1)),
            tunnel_idle_timeout: Duration::from_millis(l.tunnel_idle_timeout_ms.max(1)),
            max_connections: l.max_connections as usize,
            header_read_timeout: Duration::from_millis(l.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(l.idle_timeout_ms),
            max_header_bytes: l.max_header_bytes as usize,
            max_uri_bytes: l.max_uri_bytes as usize,
        },
        metrics: listener_metrics,
    })
}

/// A listener's certificates, read from their files (or inline PEM) now.
fn compile_tls(listener: &str, c: &crate::config::TlsConfig) -> Result<Arc<meshproxy_tls::ServerTls>, Error> {
    use meshproxy_tls::{CertificateSpec, PemSource};
    let source = |file: &Option<String>, pem: &Option<String>, part: &str, origin: &str| match (pem, file) {
        (Some(pem), _) => Ok(PemSource::Inline { pem: pem.clone(), origin: format!("{origin} {part}") }),
        (None, Some(file)) => Ok(PemSource::File(file.into())),
        (None, None) => Err(Error::Config(format!("listener {listener:?}: a TLS certificate has no {part}"))),
    };
    let specs = c
        .certificates
        .iter()
        .map(|cert| {
            let origin = if cert.origin.is_empty() { "inline PEM" } else { cert.origin.as_str() };
            Ok(CertificateSpec {
                cert: source(&cert.cert, &cert.cert_pem, "certificate", origin)?,
                key: source(&cert.key, &cert.key_pem, "key", origin)?,
                hosts: cert.hosts.clone(),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    meshproxy_tls::ServerTls::load(specs)
        .map(Arc::new)
        .map_err(|source| Error::Tls { listener: listener.to_owned(), source })
}

fn h2_settings(c: &Http2Config) -> meshproxy_http::h2_server::Settings {
    meshproxy_http::h2_server::Settings {
        max_concurrent_streams: c.max_concurrent_streams,
        max_header_list_size: c.max_header_list_size,
        connection_window_size: c.connection_window_size,
        stream_window_size: c.stream_window_size,
        keep_alive_interval_ms: c.keep_alive_interval_ms,
        keep_alive_timeout_ms: c.keep_alive_timeout_ms,
    }
}

/// What a service gives its endpoints; `connections` is the service's bound on open upstream
/// connections (kept across reloads), applied when its circuit breaker sets `maxConnections`.
fn endpoint_settings(s: &ServiceConfig, connections: &Arc<ConnLimit>) -> EndpointSettings {
    let max_connections = s.circuit_breaker.as_ref().map_or(0, |c| c.max_connections);
    EndpointSettings {
        pool: PoolSettings {
            max_idle: s.pool.max_idle_per_endpoint as usize,
            idle_timeout: Duration::from_millis(s.pool.idle_timeout_ms),
        },
        connect_timeout: Duration::from_millis(s.connect_timeout_ms.max(1)),
        max_inflight: s.max_inflight_per_endpoint.max(1),
        max_pending: s.max_pending_per_endpoint,
        max_streams: s.max_streams_per_connection.max(1),
        connections: (max_connections > 0).then(|| (connections.clone(), max_connections as usize)),
    }
}

fn compile_service(
    s: &ServiceConfig,
    registry: &Registry,
    staged: &[(Arc<Endpoint>, EndpointSettings)],
    metrics: &Metrics,
    metric_set: &mut MetricSet,
    stores: &Stores,
    identity: Option<&Arc<MeshIdentity>>,
) -> Result<Backend, Error> {
    let service_metrics = metrics.tcp(metric_set, &s.name);
    let settings = endpoint_settings(s, &service_metrics.connection_limit);
    let connector = match &s.identity {
        Some(expected) => compile_mesh_connector(s, expected, identity)?,
        None => compile_connector(s)?,
    };
    let set = compile_endpoint_set(s, &s.endpoints, registry, staged, &connector, settings.clone())?;
    Ok(Backend {
        name: s.name.as_str().into(),
        tcp: service_metrics.clone(),
        protocol: s.protocol,
        settings,
        failure: FailurePolicy::compile(s)?,
        check: s.health_check.as_ref().map(|c| compile_check(s, c)).transpose()?.map(Arc::new),
        rate_limits: Limits::compile(
            &format!("service {:?}", s.name),
            &format!("service:{}", s.name),
            &s.rate_limits,
            &governor::clock::DefaultClock::default(),
            stores,
            |limit| metrics.rate_limit(metric_set, "", "", &s.name, limit),
        )?
        .map(Arc::new),
        breaker: s
            .circuit_breaker
            .as_ref()
            .map(|c| Arc::new(Breaker::new(c.max_requests, c.max_pending_requests, service_metrics))),
        policies: policy::compile(&format!("service:{}", s.name), &s.policies, false, metrics, metric_set)?.1,
        mesh_h2: s.identity.is_some() && s.protocol == UpstreamProtocol::Http1,
        connector,
        endpoints: ArcSwap::from_pointee(set),
    })
}

/// The proxy's identity for this config: the running one when the config names the same files
/// (read again now: a reload takes rotated files; unreadable ones keep the material in force),
/// else loaded anew (any problem is an error).
fn compile_identity(
    c: Option<&IdentityConfig>,
    previous: Option<&Arc<MeshIdentity>>,
) -> Result<Option<Arc<MeshIdentity>>, Error> {
    let Some(c) = c else { return Ok(None) };
    let source = IdentitySource {
        dir: c.dir.clone().into(),
        name: c.name.clone(),
        namespace: c.namespace.clone(),
        self_issue: c.self_issue.then(|| std::time::Duration::from_millis(c.lifetime_ms)),
    };
    if let Some(p) = previous.filter(|p| *p.source() == source) {
        if let Err(e) = p.reload() {
            tracing::warn!(error = %e, "identity files refused on reload; the identity in force keeps serving");
        }
        return Ok(Some(p.clone()));
    }
    let identity = MeshIdentity::load(source).map_err(Error::Identity)?;
    tracing::info!(id = %identity.material().info.id.spiffe(), "mesh identity loaded");
    Ok(Some(Arc::new(identity)))
}

/// A meshed service's connector: mTLS to peers of identity `expected` (`sa.ns` in this proxy's
/// trust domain, or a SPIFFE ID), presenting this proxy's identity.
fn compile_mesh_connector(
    s: &ServiceConfig,
    expected: &str,
    identity: Option<&Arc<MeshIdentity>>,
) -> Result<Connector, Error> {
    let Some(identity) = identity else {
        return Err(Error::Config(format!(
            "service {:?}: identity needs the proxy's own identity (top-level identity)",
            s.name
        )));
    };
    if s.tls.is_some() {
        return Err(Error::Config(format!("service {:?}: identity and tls together", s.name)));
    }
    let td = identity.material().info.id.trust_domain.clone();
    let peer = WorkloadId::parse(expected, &td).ok_or_else(|| {
        Error::Config(format!(
            "service {:?}: identity {expected:?} is neither <sa>.<namespace> nor spiffe://<td>/ns/<ns>/sa/<sa>",
            s.name
        ))
    })?;
    let connector = meshproxy_upstream::MeshConnector::new(&s.name, &peer, identity.clone())
        .map_err(|e| Error::Config(format!("service {:?}: identity: {e}", s.name)))?;
    Ok(Connector::Mesh(connector))
}

/// Service `s`'s connector: TLS as its `tls` says (files read and checked now), else plain TCP.
fn compile_connector(s: &ServiceConfig) -> Result<Connector, Error> {
    let Some(tls) = &s.tls else { return Ok(Connector::Tcp) };
    let client_auth = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some((cert.into(), key.into())),
        (None, None) => None,
        _ => {
            return Err(Error::Config(format!(
                "service {:?}: tls needs both cert and key for a client certificate",
                s.name
            )))
        }
    };
    let settings = meshproxy_upstream::TlsSettings {
        server_name: tls.server_name.clone(),
        ca: tls.ca.as_ref().map(Into::into),
        client_auth,
    };
    let connector = meshproxy_upstream::TlsConnector::new(&settings)
        .map_err(|e| Error::Config(format!("service {:?}: tls: {e}", s.name)))?;
    Ok(Connector::Tls(connector))
}

/// Service `s`'s health check `c`: an HTTP probe when it has a path (over HTTP/2 for an
/// `http2` service), else a TCP connect.
fn compile_check(s: &ServiceConfig, c: &HealthCheckConfig) -> Result<CheckSpec, Error> {
    let bad = |what: &str| Error::Config(format!("service {:?}: invalid healthCheck {what}", s.name));
    let probe = match &c.path {
        None => Probe::Tcp,
        Some(path) => {
            if !path.starts_with('/') || path.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
                return Err(bad(&format!("path {path:?}")));
            }
            Probe::Http {
                target: path.as_str().into(),
                h2: s.protocol == UpstreamProtocol::Http2,
                expected: StatusSet::parse(&c.expected_statuses)
                    .map_err(|e| bad(&format!("expectedStatuses: {e}")))?,
            }
        }
    };
    if c.interval_ms == 0 || c.timeout_ms == 0 || c.healthy_threshold == 0 || c.unhealthy_threshold == 0 {
        return Err(bad("(interval, timeout and thresholds must be at least 1)"));
    }
    Ok(CheckSpec {
        probe,
        interval: Duration::from_millis(c.interval_ms),
        timeout: Duration::from_millis(c.timeout_ms.min(c.interval_ms)),
        healthy_threshold: c.healthy_threshold,
        unhealthy_threshold: c.unhealthy_threshold,
    })
}

/// `endpoints` as service `s`'s endpoint set: the registered endpoint for each address reached
/// through `connector` (or one named earlier in `staged`, or a new one with `settings`) and `s`'s
/// balancer over them.
pub fn compile_endpoint_set(
    s: &ServiceConfig,
    endpoints: &[EndpointConfig],
    registry: &Registry,
    staged: &[(Arc<Endpoint>, EndpointSettings)],
    connector: &Connector,
    settings: EndpointSettings,
) -> Result<EndpointSet, Error> {
    // The validator's bound, repeated: round-robin precomputes one cycle of the weights' sum.
    if let Some(e) = endpoints.iter().find(|e| !(1..=MAX_ENDPOINT_WEIGHT).contains(&e.weight)) {
        return Err(Error::Config(format!(
            "service {:?}: endpoint {:?} has weight {}; a weight is 1 to {MAX_ENDPOINT_WEIGHT}",
            s.name, e.address, e.weight
        )));
    }
    // An address named earlier in this config, reached the same way, is the same endpoint.
    let mut handles: Vec<Arc<Endpoint>> = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        let earlier = staged
            .iter()
            .map(|(ep, _)| ep)
            .chain(&handles)
            .find(|ep| *ep.address == *e.address && ep.connector() == connector);
        let ep = match earlier {
            Some(ep) => ep.clone(),
            None => registry.lookup_or_new(&e.address, connector, settings.clone()),
        };
        handles.push(ep);
    }
    let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
    let balancer = match &s.balancer {
        BalancerConfig::RoundRobin => Balancer::RoundRobin(RoundRobin::new(&weights)),
        BalancerConfig::Random => Balancer::Random(WeightedRandom::new(&weights)),
        BalancerConfig::LeastRequest => Balancer::P2c(P2c::new(&weights, Cost::Load)),
        BalancerConfig::P2cEwma => Balancer::P2c(P2c::new(&weights, Cost::PeakEwma)),
        BalancerConfig::Hash { header, cookie, source } => {
            let key = match (header, cookie, source) {
                (Some(h), None, None | Some(false)) => {
                    HashKey::Header(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                        Error::Config(format!("service {:?}: invalid hash header {h:?}", s.name))
                    })?)
                }
                (None, Some(c), None | Some(false)) => HashKey::Cookie(c.as_str().into()),
                (None, None, _) => HashKey::Source,
                _ => {
                    return Err(Error::Config(format!(
                        "service {:?}: a hash balancer takes exactly one of header, cookie or source",
                        s.name
                    )))
                }
            };
            let ids: Vec<(&str, u32)> = endpoints.iter().map(|e| (e.address.as_str(), e.weight)).collect();
            Balancer::Hash { key, ring: Ring::new(&ids), fallback: WeightedRandom::new(&weights) }
        }
    };
    Ok(EndpointSet { balancer, endpoints: handles })
}
