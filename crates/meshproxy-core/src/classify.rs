//! What counts as an endpoint's failure, per service: the HTTP statuses and gRPC statuses it
//! configures (plus the failures the proxy sees itself: connect errors, resets, timeouts), and
//! what follows from one (failure accrual). Compiled from the model's normalized strings into
//! bit sets, so classifying a response is two bit tests.

use crate::error::Error;
use meshproxy_upstream::Accrual;
use std::time::Duration;

pub use meshproxy_upstream::StatusSet;
use tower::retry::budget::TpsBudget;

/// gRPC status names as the model writes them, by code.
const GRPC_NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid-argument",
    "deadline-exceeded",
    "not-found",
    "already-exists",
    "permission-denied",
    "resource-exhausted",
    "failed-precondition",
    "aborted",
    "out-of-range",
    "unimplemented",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

/// A set of gRPC status codes (0..=16) as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcSet(u32);

impl GrpcSet {
    /// Reads the model's form: comma-separated kebab-case names (`unavailable,internal`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut set = 0u32;
        for name in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some(code) = GRPC_NAMES.iter().position(|n| *n == name) else {
                return Err(format!("{name:?} is not a gRPC status name (valid: {})", GRPC_NAMES.join(", ")));
            };
            set |= 1 << code;
        }
        Ok(GrpcSet(set))
    }

    #[inline]
    pub fn contains(&self, code: u8) -> bool {
        code < 32 && self.0 & (1 << code) != 0
    }
}

/// A service's failure policy.
#[derive(Debug, Clone, Default)]
pub struct FailurePolicy {
    pub statuses: StatusSet,
    pub grpc: GrpcSet,
    /// Consecutive-failure ejection; None = off.
    pub accrual: Option<Accrual>,
    /// The balancer reads latency estimates (`p2c-ewma`), so responses feed them.
    pub track_latency: bool,
}

impl FailurePolicy {
    pub fn compile(s: &meshproxy_config::ServiceConfig) -> Result<Self, Error> {
        let bad = |what: &str, e: String| Error::Config(format!("service {:?}: {what}: {e}", s.name));
        let a = &s.failure_accrual;
        let accrual = (a.consecutive_failures > 0).then(|| Accrual {
            consecutive_failures: a.consecutive_failures,
            min_penalty: Duration::from_millis(a.min_penalty_ms.max(1)),
            max_penalty: Duration::from_millis(a.max_penalty_ms.max(a.min_penalty_ms).max(1)),
            jitter: f64::from(a.jitter_percent.min(100)) / 100.0,
            max_ejection_percent: a.max_ejection_percent.min(100),
        });
        Ok(FailurePolicy {
            statuses: StatusSet::parse(&s.failure_statuses).map_err(|e| bad("failureStatuses", e))?,
            grpc: GrpcSet::parse(&s.failure_grpc_statuses).map_err(|e| bad("failureGrpcStatuses", e))?,
            accrual,
            track_latency: matches!(s.balancer, meshproxy_config::BalancerConfig::P2cEwma),
        })
    }

    /// Whether anything reads an endpoint's successes and failures beyond its counters.
    #[inline]
    pub fn tracks_health(&self) -> bool {
        self.accrual.is_some() || self.track_latency
    }

    /// Whether a response the endpoint gave counts as its failure.
    #[inline]
    pub fn response_failed(&self, status: u16, grpc: Option<u8>) -> bool {
        self.statuses.contains(status) || grpc.is_some_and(|c| self.grpc.contains(c))
    }
}

/// A route's retries, compiled from its `retry`.
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub limit: u32,
    pub statuses: StatusSet,
    pub grpc: GrpcSet,
    /// One attempt's response-header timeout.
    pub attempt_timeout: Option<Duration>,
    pub non_idempotent: bool,
    /// Shared by every request of the route (Linkerd's budget: a share of requests plus a floor
    /// per second, over 10 s).
    pub budget: TpsBudget,
}

impl RetryPolicy {
    pub fn compile(route: &str, r: &meshproxy_config::RetryConfig) -> Result<Self, Error> {
        let bad = |what: &str, e: String| Error::Config(format!("route {route:?}: retry {what}: {e}"));
        Ok(RetryPolicy {
            limit: r.limit.clamp(1, 10),
            statuses: StatusSet::parse(&r.http).map_err(|e| bad("http", e))?,
            grpc: GrpcSet::parse(&r.grpc).map_err(|e| bad("grpc", e))?,
            attempt_timeout: (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms)),
            non_idempotent: r.non_idempotent,
            budget: TpsBudget::new(
                Duration::from_secs(10),
                r.budget_min_per_second,
                r.budget_percent.min(1000) as f32 / 100.0,
            ),
        })
    }

    /// Whether a request with `method` (a gRPC call or not) may be sent more than once.
    pub fn allows(&self, method: &http::Method, grpc: bool) -> bool {
        grpc || self.non_idempotent || crate::proxy::idempotent(method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_sets_are_read_by_name() {
        let g = GrpcSet::parse("unknown,deadline-exceeded,internal,unavailable").unwrap();
        assert_eq!((0..=16).filter(|&c| g.contains(c)).collect::<Vec<u8>>(), [2, 4, 13, 14]);
        assert!(!g.contains(200));
        assert!(GrpcSet::parse("UNAVAILABLE").is_err());
    }
}
