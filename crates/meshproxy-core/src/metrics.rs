//! Lock-free metrics and their Prometheus text exposition.
//!
//! Counters and histogram buckets are plain atomics reached through `Arc`s that the compiled
//! config holds, so recording a request is a few relaxed atomic adds and never takes a lock or
//! hashes a label set (prometheus-client's `Family` would, per request). The registry lock is taken
//! only when a config is compiled and when `/metrics` is scraped. Metric objects outlive reloads:
//! a route that survives a reload keeps counting where it was.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::ProxyError;
use crate::ratelimit::LimitMetrics;
use meshproxy_upstream::{HealthState, Sample};

pub mod mesh;
mod route;
mod tls;
pub use route::{parse_grpc_status, Protocol, RetryReason, RouteMetrics};
use route::{route_labels, RouteKey};
pub use tls::{PeerMetrics, TlsFailure, TlsMetrics};

/// Upper bounds of the latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Writes the family `name`'s series for one label set (`labels` without braces): the
    /// cumulative buckets, `+Inf`, the sum in seconds and the count.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Per listener: downstream connections and the errors the proxy answered itself.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub open: AtomicU64,
    /// Requests whose client went away before the response headers were sent.
    pub cancelled: AtomicU64,
    errors: [AtomicU64; ProxyError::ALL.len()],
    /// TLS handshakes and certificate reloads (listeners with `tls` only).
    pub tls: TlsMetrics,
}

impl ListenerMetrics {
    pub fn proxy_error(&self, e: ProxyError) {
        self.errors[e as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Per service: opaque TCP connections and the bytes they moved; requests its circuit breaker
/// refused.
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    pub connections: AtomicU64,
    pub open: AtomicU64,
    /// Client → upstream and upstream → client, counted as they move.
    pub bytes: meshproxy_http::tunnel::Counters,
    /// Refused by the breaker's `maxRequests`, by its `maxPendingRequests`.
    pub overflow_requests: AtomicU64,
    pub overflow_pending: AtomicU64,
    /// The breaker's `maxConnections`: the service's open upstream connections, and the ones it
    /// refused (kept across reloads with the series).
    pub connection_limit: Arc<meshproxy_upstream::ConnLimit>,
}

/// (name, type, help, value getter) of a simple metric family.
type Family<T, V> = (&'static str, &'static str, &'static str, fn(&T) -> V);

#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<RouteKey, Arc<RouteMetrics>>>,
    listeners: Mutex<BTreeMap<String, Arc<ListenerMetrics>>>,
    tcp: Mutex<BTreeMap<String, Arc<ServiceMetrics>>>,
    /// Rate limits' counters, by their labels ([`Metrics::rate_limit`]).
    rate_limits: Mutex<BTreeMap<String, Arc<LimitMetrics>>>,
    policies: Mutex<BTreeMap<PolicyKey, Arc<PolicyMetrics>>>,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Requests answered on routes whose series were pruned.
    retired_requests: AtomicU64,
}

fn lookup<K: Ord + Clone, V: Default>(
    map: &Mutex<BTreeMap<K, Arc<V>>>,
    set: &mut Vec<(K, Arc<V>)>,
    key: K,
) -> Arc<V> {
    if let Some((_, v)) = set.iter().find(|(k, _)| *k == key) {
        return v.clone();
    }
    let v = map.lock().get(&key).cloned().unwrap_or_default();
    set.push((key, v.clone()));
    v
}

fn install<K: Ord + Clone, V>(map: &Mutex<BTreeMap<K, Arc<V>>>, set: &[(K, Arc<V>)]) {
    let mut map = map.lock();
    for (k, v) in set {
        map.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

fn retain<K: Ord, V>(map: &Mutex<BTreeMap<K, Arc<V>>>, set: &[(K, Arc<V>)]) {
    let keep: std::collections::BTreeSet<&K> = set.iter().map(|(k, _)| k).collect();
    map.lock().retain(|k, _| keep.contains(k));
}

/// The metric objects one compiled config uses, keyed as `/metrics` labels them. A compile only
/// looks existing objects up (a route that survives a reload keeps counting where it was) and
/// makes new ones for itself; they join [`Metrics`] when the config is swapped in
/// ([`Metrics::install`]), so a config that fails to compile or bind changes no series.
#[derive(Default)]
pub struct MetricSet {
    routes: Vec<(RouteKey, Arc<RouteMetrics>)>,
    listeners: Vec<(String, Arc<ListenerMetrics>)>,
    tcp: Vec<(String, Arc<ServiceMetrics>)>,
    rate_limits: Vec<(String, Arc<LimitMetrics>)>,
    policies: Vec<(PolicyKey, Arc<PolicyMetrics>)>,
}

/// A policy's series: what it is attached to (`route:<listener>/<route>` or
/// `service:<name>`), its file and its action.
type PolicyKey = (String, String, &'static str);

/// One attached policy's counts ([`crate::policy`]).
#[derive(Default)]
pub struct PolicyMetrics {
    pub evaluations: AtomicU64,
    pub violations: AtomicU64,
    pub errors: AtomicU64,
}

impl Metrics {
    pub fn route(
        &self,
        set: &mut MetricSet,
        listener: &str,
        route: &str,
        service: &str,
    ) -> Arc<RouteMetrics> {
        let key = (listener.to_owned(), route.to_owned(), service.to_owned());
        lookup(&self.routes, &mut set.routes, key)
    }

    pub fn tcp(&self, set: &mut MetricSet, service: &str) -> Arc<ServiceMetrics> {
        lookup(&self.tcp, &mut set.tcp, service.to_owned())
    }

    pub fn listener(&self, set: &mut MetricSet, name: &str) -> Arc<ListenerMetrics> {
        lookup(&self.listeners, &mut set.listeners, name.to_owned())
    }

    /// The counters of rate limit `limit` of a route (`listener`, `route`) or of a service
    /// (`service`, the others empty).
    pub fn rate_limit(
        &self,
        set: &mut MetricSet,
        listener: &str,
        route: &str,
        service: &str,
        limit: &str,
    ) -> Arc<LimitMetrics> {
        let labels = format!("{},limit=\"{}\"", route_labels(listener, route, service), esc(limit));
        lookup(&self.rate_limits, &mut set.rate_limits, labels)
    }

    pub fn policy(
        &self,
        set: &mut MetricSet,
        owner: &str,
        file: &str,
        action: &'static str,
    ) -> Arc<PolicyMetrics> {
        lookup(&self.policies, &mut set.policies, (owner.to_owned(), file.to_owned(), action))
    }

    /// Adds a swapped-in config's series (those it shares with the current ones are the same
    /// objects already).
    pub fn install(&self, set: &MetricSet) {
        install(&self.routes, &set.routes);
        install(&self.listeners, &set.listeners);
        install(&self.tcp, &set.tcp);
        install(&self.rate_limits, &set.rate_limits);
        install(&self.policies, &set.policies);
    }

    /// Drops the series `set` (the config now in use) does not have: removed routes, listeners
    /// and services. Called once requests on the old config have drained, so their last counts
    /// are scraped first; what a pruned route answered stays in [`Metrics::total_requests`].
    pub fn prune(&self, set: &MetricSet) {
        let mut routes = self.routes.lock();
        let keep: std::collections::BTreeSet<&RouteKey> = set.routes.iter().map(|(k, _)| k).collect();
        let mut retired = 0;
        routes.retain(|k, m| {
            let kept = keep.contains(k);
            if !kept {
                retired += m.answered();
            }
            kept
        });
        self.retired_requests.fetch_add(retired, Ordering::Relaxed);
        drop(routes);
        retain(&self.listeners, &set.listeners);
        retain(&self.tcp, &set.tcp);
        retain(&self.rate_limits, &set.rate_limits);
        retain(&self.policies, &set.policies);
    }

    /// Total requests answered (from upstream or by the proxy), for `stats()`.
    pub fn total_requests(&self) -> u64 {
        let routes: u64 = self.routes.lock().values().map(|m| m.answered()).sum();
        routes + self.retired_requests.load(Ordering::Relaxed)
    }

    pub fn render(&self, endpoints: &[Sample]) -> String {
        let mut out = String::with_capacity(4096);
        route::render(&mut out, &self.routes.lock());

        let listeners = self.listeners.lock();
        header(
            &mut out,
            "meshproxy_proxy_errors_total",
            "counter",
            "Responses the proxy made itself, by reason (the meshproxy-error header).",
        );
        for (l, m) in listeners.iter() {
            for e in ProxyError::ALL {
                let v = m.errors[e as usize].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "meshproxy_proxy_errors_total{{listener=\"{}\",error=\"{}\"}} {v}",
                    esc(l),
                    e.as_str()
                );
            }
        }
        let gauges: [Family<ListenerMetrics, u64>; 4] = [
            ("meshproxy_downstream_connections_open", "gauge", "Open downstream connections.", |m| {
                m.open.load(Ordering::Relaxed)
            }),
            (
                "meshproxy_downstream_connections_accepted_total",
                "counter",
                "Downstream connections accepted.",
                |m| m.accepted.load(Ordering::Relaxed),
            ),
            (
                "meshproxy_downstream_connections_rejected_total",
                "counter",
                "Downstream connections refused at the connection cap.",
                |m| m.rejected.load(Ordering::Relaxed),
            ),
            (
                "meshproxy_requests_cancelled_total",
                "counter",
                "Requests whose client went away (or reset the stream) before the response headers.",
                |m| m.cancelled.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, get) in gauges {
            header(&mut out, name, kind, help);
            for (l, m) in listeners.iter() {
                let _ = writeln!(out, "{name}{{listener=\"{}\"}} {}", esc(l), get(m));
            }
        }
        tls::render(&mut out, listeners.iter());
        drop(listeners);

        let eps: [Family<Sample, u64>; 10] = [
            ("meshproxy_upstream_connections_open", "gauge", "Open upstream connections.", |e| e.open),
            (
                "meshproxy_upstream_connections_opened_total",
                "counter",
                "Upstream connections opened (compare with requests to see reuse).",
                |e| e.opened,
            ),
            ("meshproxy_upstream_connections_idle", "gauge", "Idle pooled upstream connections.", |e| {
                e.idle as u64
            }),
            ("meshproxy_upstream_requests_inflight", "gauge", "Requests in flight to the endpoint.", |e| {
                e.inflight
            }),
            ("meshproxy_upstream_requests_total", "counter", "Requests sent to the endpoint.", |e| {
                e.requests
            }),
            (
                "meshproxy_upstream_failures_total",
                "counter",
                "Requests to the endpoint that failed: connect errors, resets, timeouts, unusable answers, and responses its service counts as failures (failureStatuses, failureGrpcStatuses).",
                |e| e.failures,
            ),
            (
                "meshproxy_upstream_retries_total",
                "counter",
                "Requests re-sent once after a failure that left them unprocessed or safe to repeat (stale pooled connection, HTTP/2 REFUSED_STREAM or GOAWAY).",
                |e| e.retries,
            ),
            (
                "meshproxy_upstream_ejected",
                "gauge",
                "1 while the endpoint is ejected by failure accrual (or probing after its penalty), else 0.",
                |e| u64::from(matches!(e.state, HealthState::Ejected { .. } | HealthState::Probing)),
            ),
            (
                "meshproxy_upstream_ready",
                "gauge",
                "1 while the endpoint passes its active health check (or has none), 0 while it is unready.",
                |e| u64::from(e.ready),
            ),
            (
                "meshproxy_upstream_ejections_total",
                "counter",
                "Times failure accrual ejected the endpoint.",
                |e| e.ejections,
            ),
        ];
        for (name, kind, help, get) in eps {
            header(&mut out, name, kind, help);
            for e in endpoints {
                // A TLS endpoint is labelled so, apart from a plaintext one at the same address.
                let tls = if e.tls { ",tls=\"true\"" } else { "" };
                let _ = writeln!(out, "{name}{{endpoint=\"{}\"{tls}}} {}", esc(&e.address), get(e));
            }
        }
        let tcp = self.tcp.lock();
        header(
            &mut out,
            "meshproxy_tcp_connections_total",
            "counter",
            "Opaque TCP connections forwarded, by service.",
        );
        for (s, m) in tcp.iter() {
            let _ = writeln!(
                out,
                "meshproxy_tcp_connections_total{{service=\"{}\"}} {}",
                esc(s),
                m.connections.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "meshproxy_tcp_connections_open",
            "gauge",
            "Open opaque TCP connections, by service.",
        );
        for (s, m) in tcp.iter() {
            let _ = writeln!(
                out,
                "meshproxy_tcp_connections_open{{service=\"{}\"}} {}",
                esc(s),
                m.open.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "meshproxy_circuit_breaker_overflows_total",
            "counter",
            "Requests a service's circuit breaker refused (503 overloaded), by the limit they hit (a refused connection for `connections`).",
        );
        for (s, m) in tcp.iter() {
            let limits = [
                ("requests", m.overflow_requests.load(Ordering::Relaxed)),
                ("pending", m.overflow_pending.load(Ordering::Relaxed)),
                ("connections", m.connection_limit.overflows()),
            ];
            for (limit, v) in limits {
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "meshproxy_circuit_breaker_overflows_total{{service=\"{}\",limit=\"{limit}\"}} {v}",
                        esc(s)
                    );
                }
            }
        }
        header(
            &mut out,
            "meshproxy_tcp_bytes_total",
            "counter",
            "Bytes through opaque TCP connections: in = client to upstream, out = upstream to client.",
        );
        for (s, m) in tcp.iter() {
            let (i, o) = (m.bytes.a_to_b.load(Ordering::Relaxed), m.bytes.b_to_a.load(Ordering::Relaxed));
            let _ = writeln!(out, "meshproxy_tcp_bytes_total{{service=\"{}\",direction=\"in\"}} {i}", esc(s));
            let _ =
                writeln!(out, "meshproxy_tcp_bytes_total{{service=\"{}\",direction=\"out\"}} {o}", esc(s));
        }
        drop(tcp);
        self.render_rate_limits(&mut out);
        header(&mut out, "meshproxy_config_reloads_total", "counter", "Successful config reloads.");
        let _ = writeln!(out, "meshproxy_config_reloads_total {}", self.reloads.load(Ordering::Relaxed));
        header(&mut out, "meshproxy_config_reload_failures_total", "counter", "Refused config reloads.");
        let _ = writeln!(
            out,
            "meshproxy_config_reload_failures_total {}",
            self.reload_failures.load(Ordering::Relaxed)
        );
        self.render_policies(&mut out);
        out
    }

    fn render_policies(&self, out: &mut String) {
        let policies = self.policies.lock();
        if policies.is_empty() {
            return;
        }
        type Family = (&'static str, &'static str, fn(&PolicyMetrics) -> &AtomicU64);
        let families: [Family; 3] = [
            (
                "meshproxy_policy_evaluations_total",
                "Rego policy evaluations, by what the policy is attached to, its file and its action.",
                |m| &m.evaluations,
            ),
            (
                "meshproxy_policy_violations_total",
                "Evaluations that found a violation (or failed, with onError: closed).",
                |m| &m.violations,
            ),
            (
                "meshproxy_policy_errors_total",
                "Evaluations that failed: a runtime error, or past the policy's timeout.",
                |m| &m.errors,
            ),
        ];
        for (name, help, counter) in families {
            header(out, name, "counter", help);
            for ((owner, file, action), m) in policies.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{owner=\"{}\",policy=\"{}\",action=\"{action}\"}} {}",
                    label(owner),
                    label(file),
                    counter(m).load(Ordering::Relaxed)
                );
            }
        }
    }
}

/// A label value escaped as the exposition format asks (`\\`, `\"`, newlines).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// Requests refused by the rate limits of the current config's routes and services.
    /// TLS handshakes completed and failed, over every listener.
    pub fn tls_handshakes(&self) -> (u64, u64) {
        let listeners = self.listeners.lock();
        let ok = listeners.values().map(|m| m.tls.handshakes.load(Ordering::Relaxed)).sum();
        let failed = listeners.values().flat_map(|m| TlsFailure::ALL.map(|why| m.tls.failures(why))).sum();
        (ok, failed)
    }

    pub fn rate_limited(&self) -> u64 {
        self.rate_limits.lock().values().map(|m| m.rejected.load(Ordering::Relaxed)).sum()
    }

    fn render_rate_limits(&self, out: &mut String) {
        let limits = self.rate_limits.lock();
        let families: [Family<LimitMetrics, u64>; 4] = [
            (
                "meshproxy_rate_limited_total",
                "counter",
                "Requests a rate limit refused (429 rate-limited), by limit: a route's (listener, route) or a service's (service).",
                |m| m.rejected.load(Ordering::Relaxed),
            ),
            (
                "meshproxy_rate_limit_keys",
                "gauge",
                "Keys a keyed rate limit tracks (as of its last sweep).",
                |m| m.keys.load(Ordering::Relaxed),
            ),
            (
                "meshproxy_rate_limit_overflow_total",
                "counter",
                "Requests of new keys a keyed rate limit counted in its shared overflow bucket (its maxKeys reached).",
                |m| m.overflowed.load(Ordering::Relaxed),
            ),
            (
                "meshproxy_rate_limit_fallback_total",
                "counter",
                "Requests a global rate limit got no answer from Redis for in time, handled by its failMode (open: admitted by the local limit alone; closed: 503 rate-limit-unavailable).",
                |m| m.fallback.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, get) in families {
            header(out, name, kind, help);
            for (labels, m) in limits.iter() {
                let _ = writeln!(out, "{name}{{{labels}}} {}", get(m));
            }
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_counts_and_buckets() {
        let m = Metrics::default();
        let mut set = MetricSet::default();
        let r = m.route(&mut set, "web", "api", "svc");
        r.record(Protocol::Http1, 200, Duration::from_millis(3));
        r.record(Protocol::Grpc, 503, Duration::from_millis(30));
        r.grpc_status(b"14");
        m.listener(&mut set, "web").proxy_error(ProxyError::NoRoute);
        assert_eq!(m.render(&[]).lines().filter(|l| l.contains("route=")).count(), 0, "unpublished");
        m.install(&set);
        let text = m.render(&[]);
        assert!(text.contains(
            "meshproxy_requests_total{listener=\"web\",route=\"api\",service=\"svc\",status_class=\"2xx\"} 1"
        ));
        assert!(text.contains("status_class=\"5xx\"} 1"));
        assert!(text.contains("le=\"0.005\"} 1\n"));
        assert!(text.contains("le=\"+Inf\"} 2\n"));
        assert!(text.contains("meshproxy_proxy_errors_total{listener=\"web\",error=\"no-route\"} 1"));
        assert!(text.contains("protocol=\"grpc\"} 1\n"));
        assert!(text.contains("grpc_status=\"14\"} 1\n"));
        assert_eq!(m.total_requests(), 2);
        let mut next = MetricSet::default();
        assert!(Arc::ptr_eq(&r, &m.route(&mut next, "web", "api", "svc")), "metrics survive recompiles");
    }
}
