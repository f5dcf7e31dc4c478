//! Per (listener, route, service): responses by status class and by protocol, gRPC statuses,
//! retries and latency to response headers ([`RouteMetrics`]), and their Prometheus families.
//! The request path records into a route's object through the `Arc` its compiled route holds
//! ([`crate::compile`]); [`super::Metrics`] keeps the objects by their labels and calls
//! [`render`] under its lock. Nothing here knows how routes are compiled, reloaded or pruned.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{esc, header, Histogram};

/// What a request was, for the per-protocol counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1 = 0,
    H2 = 1,
    Grpc = 2,
    /// An HTTP/1.1 Upgrade (WebSocket).
    Ws = 3,
}

impl Protocol {
    const ALL: [Protocol; 4] = [Protocol::Http1, Protocol::H2, Protocol::Grpc, Protocol::Ws];

    fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::Grpc => "grpc",
            Protocol::Ws => "ws",
        }
    }
}

/// gRPC status codes 0 (OK) … 16 (UNAUTHENTICATED).
const GRPC_CODES: usize = 17;

/// Per (listener, route, service): responses by status class and by protocol, gRPC statuses,
/// and latency to response headers.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// Index 0 = 1xx … 4 = 5xx.
    status: [AtomicU64; 5],
    protocol: [AtomicU64; 4],
    grpc_status: [AtomicU64; GRPC_CODES],
    latency: Histogram,
    /// Retries sent, by [`RetryReason`].
    retries: [AtomicU64; RetryReason::ALL.len()],
    /// Retries the budget refused.
    retries_over_budget: AtomicU64,
}

/// Why an attempt was retried (the `reason` label of `meshproxy_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    Status,
    GrpcStatus,
    Connect,
    Reset,
    Timeout,
}

impl RetryReason {
    pub const ALL: [RetryReason; 5] = [
        RetryReason::Status,
        RetryReason::GrpcStatus,
        RetryReason::Connect,
        RetryReason::Reset,
        RetryReason::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Status => "status",
            RetryReason::GrpcStatus => "grpc-status",
            RetryReason::Connect => "connect",
            RetryReason::Reset => "reset",
            RetryReason::Timeout => "timeout",
        }
    }
}

impl RouteMetrics {
    pub fn record(&self, protocol: Protocol, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.status[class].fetch_add(1, Ordering::Relaxed);
        self.protocol[protocol as usize].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(elapsed);
    }

    pub fn retried(&self, reason: RetryReason) {
        self.retries[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn retry_over_budget(&self) {
        self.retries_over_budget.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a gRPC status as sent in `grpc-status` (trailers, or a trailers-only response).
    pub fn grpc_status(&self, value: &[u8]) {
        if let Some(code) = parse_grpc_status(value) {
            self.grpc_code(code);
        }
    }

    /// Counts a gRPC status code (0 … 16; others are ignored).
    pub fn grpc_code(&self, code: u8) {
        if let Some(counter) = self.grpc_status.get(usize::from(code)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Responses counted, over every status class.
    pub(super) fn answered(&self) -> u64 {
        self.status.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// A `grpc-status` value as a code, if it is one.
pub fn parse_grpc_status(value: &[u8]) -> Option<u8> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A route's series: its listener, route and service names.
pub(super) type RouteKey = (String, String, String);

/// The labels of a route's series: `listener="…",route="…",service="…"`.
pub(super) fn route_labels(listener: &str, route: &str, service: &str) -> String {
    format!("listener=\"{}\",route=\"{}\",service=\"{}\"", esc(listener), esc(route), esc(service))
}

/// Writes the route families of `routes`.
pub(super) fn render(out: &mut String, routes: &BTreeMap<RouteKey, Arc<RouteMetrics>>) {
    header(
        out,
        "meshproxy_requests_total",
        "counter",
        "Responses sent downstream, by route, service and status class.",
    );
    for ((l, r, s), m) in routes.iter() {
        for (i, c) in m.status.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "meshproxy_requests_total{{listener=\"{}\",route=\"{}\",service=\"{}\",status_class=\"{}xx\"}} {v}",
                esc(l),
                esc(r),
                esc(s),
                i + 1
            );
        }
    }
    header(
        out,
        "meshproxy_requests_by_protocol_total",
        "counter",
        "Responses sent downstream, by protocol (http1, h2, grpc, ws).",
    );
    for ((l, r, s), m) in routes.iter() {
        for p in Protocol::ALL {
            let v = m.protocol[p as usize].load(Ordering::Relaxed);
            let labels = route_labels(l, r, s);
            let _ = writeln!(
                out,
                "meshproxy_requests_by_protocol_total{{{labels},protocol=\"{}\"}} {v}",
                p.as_str()
            );
        }
    }
    header(
        out,
        "meshproxy_grpc_responses_total",
        "counter",
        "gRPC responses by grpc-status (the codes seen so far).",
    );
    for ((l, r, s), m) in routes.iter() {
        for (code, c) in m.grpc_status.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            if v > 0 {
                let labels = route_labels(l, r, s);
                let _ =
                    writeln!(out, "meshproxy_grpc_responses_total{{{labels},grpc_status=\"{code}\"}} {v}");
            }
        }
    }
    header(out, "meshproxy_retries_total", "counter", "Attempts retried, by why the previous one failed.");
    for ((l, r, s), m) in routes.iter() {
        for reason in RetryReason::ALL {
            let v = m.retries[reason as usize].load(Ordering::Relaxed);
            if v > 0 {
                let labels = route_labels(l, r, s);
                let _ =
                    writeln!(out, "meshproxy_retries_total{{{labels},reason=\"{}\"}} {v}", reason.as_str());
            }
        }
    }
    header(
        out,
        "meshproxy_retries_over_budget_total",
        "counter",
        "Retries not sent because the route's retry budget was spent.",
    );
    for ((l, r, s), m) in routes.iter() {
        let labels = route_labels(l, r, s);
        let _ = writeln!(
            out,
            "meshproxy_retries_over_budget_total{{{labels}}} {}",
            m.retries_over_budget.load(Ordering::Relaxed)
        );
    }
    header(out, "meshproxy_response_latency_seconds", "histogram", "Time from request to response headers.");
    for ((l, r, s), m) in routes.iter() {
        m.latency.render(out, "meshproxy_response_latency_seconds", &route_labels(l, r, s));
    }
}
