//! The normalized config model, deserialized from the JSON the TypeScript side produces. Its
//! fields are declared in the TypeScript field table (`ts/config/model.ts`); `schema_agreement`
//! tests that these structs read exactly what that table generates
//! (`schema/config-model.schema.json`), so a field added here must be added there too. Every field
//! is explicit: defaults are applied once, in TypeScript, so the data plane never guesses.
//!
//! Who uses it: every other meshproxy crate (the engine compiles it into a snapshot; routing
//! reads route matches; the binding parses it). What it must not know: sockets, tokio, the
//! request path — it is plain data with serde, so that it can be read, tested and exported on
//! its own. Semantic checks that the compilers rely on are repeated where they compile.

use serde::{Deserialize, Serialize};

mod security;

use security::redacted_url;
pub use security::{
    redact_url, IdentityConfig, MtlsMode, TlsCertificateConfig, TlsConfig, UpstreamTlsConfig,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub services: Vec<ServiceConfig>,
    pub admin: Option<AdminConfig>,
    /// This proxy's mesh identity (for `mtls` listeners and meshed services); none when null.
    #[serde(default)]
    pub identity: Option<IdentityConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminConfig {
    pub address: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and h2c, detected per connection; other traffic goes to `tcp_service` if set.
    Http,
    /// Opaque TCP: every connection is forwarded to `tcp_service`, no detection.
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub address: String,
    pub protocol: ListenerProtocol,
    pub max_connections: u32,
    pub header_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_header_bytes: u32,
    pub max_uri_bytes: u32,
    /// Where non-HTTP connections go (every connection on a `tcp` listener); None = refused.
    #[serde(default)]
    pub tcp_service: Option<String>,
    /// How long protocol detection waits for the client's first bytes before treating the
    /// connection as opaque TCP (server-speaks-first protocols send nothing).
    #[serde(default = "default_detect_timeout")]
    pub detect_timeout_ms: u64,
    /// Upgraded (WebSocket) and TCP connections with no bytes either way for this long are closed.
    #[serde(default = "default_tunnel_idle")]
    pub tunnel_idle_timeout_ms: u64,
    /// Settings for downstream HTTP/2 (h2c) connections on this listener.
    #[serde(default)]
    pub http2: Http2Config,
    /// Whether requests get `X-Forwarded-For`/`-Proto`/`-Host` and `Via`, and responses `Via`
    /// (proxy/headers.rs).
    #[serde(default = "default_proxy_headers")]
    pub proxy_headers: bool,
    /// Who may send requests through this listener's routes (after each route's own rules).
    #[serde(default)]
    pub authorization: AuthorizationConfig,
    /// TLS termination: every connection's TLS handshake first; None = plaintext.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Mesh mTLS with the proxy's identity (`Config::identity`).
    #[serde(default)]
    pub mtls: MtlsMode,
    pub routes: Vec<RouteConfig>,
}

/// A listener's authorization: its rules (tried after a route's own, first match wins), then
/// `default` for a request no rule matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AuthorizationConfig {
    pub default: AuthorizationAction,
    pub rules: Vec<AuthorizationRule>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum AuthorizationAction {
    #[default]
    Allow,
    Deny,
}

/// One authorization rule: it matches a request when every condition it has holds (an empty
/// list is no condition), and then decides it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRule {
    pub action: AuthorizationAction,
    /// Client networks in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), normalized.
    pub networks: Vec<String>,
    pub methods: Vec<String>,
    /// The request path, matched as routes match it.
    pub path: PathMatch,
    /// Headers that must have exactly these values, all of them.
    pub headers: Vec<HeaderMatch>,
    /// mTLS peer identities (`sa.ns`, a SPIFFE ID, or `*` for any authenticated peer).
    #[serde(default)]
    pub identities: Vec<String>,
}

/// HTTP/2 settings a production proxy sets on purpose (defaults in [`Http2Config::default`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http2Config {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    pub connection_window_size: u32,
    pub stream_window_size: u32,
    /// PING interval on idle-looking connections; 0 = off.
    pub keep_alive_interval_ms: u64,
    /// How long to wait for the PING's ACK before closing the connection.
    pub keep_alive_timeout_ms: u64,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: 100,
            max_header_list_size: 16 * 1024,
            connection_window_size: 1024 * 1024,
            stream_window_size: 256 * 1024,
            keep_alive_interval_ms: 20_000,
            keep_alive_timeout_ms: 20_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub enum PathMatchType {
    Exact,
    Prefix,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub kind: PathMatchType,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    pub hosts: Vec<String>,
    pub path: PathMatch,
    pub methods: Vec<String>,
    pub headers: Vec<HeaderMatch>,
    pub service: String,
    pub response_header_timeout_ms: u64,
    /// An exchange with no bytes moving either way for this long is ended; 0 = none.
    #[serde(default)]
    pub idle_timeout_ms: u64,
    /// `CONNECT` requests matching this route (by their authority's host) are tunnelled over TCP
    /// to an endpoint of `service`; without it they are refused (403).
    #[serde(default)]
    pub allow_connect: bool,
    /// Retries of failed attempts; none when null.
    pub retry: Option<RetryConfig>,
    /// A traffic split over services by weight; empty = every request to `service`.
    pub backends: Vec<BackendRefConfig>,
    /// Query parameters that must have exactly these values, all of them.
    pub query_params: Vec<QueryParamMatch>,
    /// Cookies that must have exactly these values, all of them.
    pub cookies: Vec<CookieMatch>,
    /// Header changes on each request before it is sent.
    pub request_headers: HeaderModifierConfig,
    /// Header changes on each response before it is returned.
    pub response_headers: HeaderModifierConfig,
    /// The request's host and path as the upstream sees them; none when null.
    pub rewrite: Option<UrlRewriteConfig>,
    /// Answers every request of the route with a redirect (no backend); none when null.
    pub redirect: Option<RedirectConfig>,
    /// Authorization rules tried before the listener's.
    #[serde(default)]
    pub authorization: Vec<AuthorizationRule>,
    /// Local rate limits on the route's requests, all of which must admit a request.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitConfig>,
    /// Rego policies checked on the route's requests or responses, in order.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum RateLimitKey {
    /// One bucket for every request.
    None,
    /// A bucket per client IP address.
    Client,
    /// A bucket per value of the request header `header`.
    Header,
    /// A bucket per mTLS peer identity (its SPIFFE ID); requests without one share a bucket.
    Identity,
}

/// A local rate limit (GCRA): `rate` requests per second, `burst` of them at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The `limit` label of its metrics and the policy name in `RateLimit-Policy`; "" = `limit-<n>`.
    pub name: String,
    pub rate: u32,
    pub burst: u32,
    pub key: RateLimitKey,
    /// The header keyed on (lowercase) when `key` is `header`.
    pub header: Option<String>,
    /// Key values with a rate and burst of their own.
    pub overrides: Vec<RateLimitOverrideConfig>,
    /// Distinct keys tracked at once; beyond, new keys share one overflow bucket.
    pub max_keys: u32,
    /// Also counted across proxies, on a shared Redis or by a rate limit service; none when null.
    pub global: Option<GlobalRateLimitConfig>,
}

/// Where and how a rate limit is also counted across proxies: a GCRA on a shared Redis, or
/// Envoy's rate limit service (`ShouldRateLimit` over gRPC). Exactly one of `redis` and `rls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalRateLimitConfig {
    /// `redis://` or `rediss://` (TLS) `[user:password@]host:port[/db]`. Written out with its
    /// password as `***` (the admin `/config` shows the model).
    #[serde(serialize_with = "redacted_url")]
    pub redis: Option<String>,
    /// A rate limit service, `host:port` or `http://host:port` (h2c), or `https://host:port`
    /// (TLS, ALPN `h2`).
    pub rls: Option<String>,
    /// The rate limit service's domain; required with `rls`.
    pub domain: Option<String>,
    /// A PEM bundle of the CA certificates trusted for a `rediss://` server or an `https://` rate
    /// limit service, as resolved; none = the system's trusted roots.
    pub ca: Option<String>,
    /// A PEM client certificate (chain) presented to a `rediss://` server or an `https://` rate
    /// limit service, as resolved; with `key`.
    pub cert: Option<String>,
    /// The PEM private key of `cert`, as resolved.
    pub key: Option<String>,
    /// What a request gets when the server (Redis or the rate limit service) does not answer in
    /// time.
    pub fail_mode: RateLimitFailMode,
    /// Time allowed for one check.
    pub timeout_ms: u64,
}

/// What a global rate limit does when its server does not answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum RateLimitFailMode {
    /// The request is admitted by the local limit alone.
    #[default]
    Open,
    /// The request is refused (503 `rate-limit-unavailable`).
    Closed,
}

/// A key value (a client IP address, or a header value) with its own rate and burst.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitOverrideConfig {
    pub value: String,
    pub rate: u32,
    pub burst: u32,
}

/// A Rego policy attached to a route or a service (see the model's `Policy` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    /// The `.rego` file, as resolved by the loader: what diagnostics name.
    pub file: String,
    /// Its Rego source.
    pub source: String,
    /// The rule evaluated in the module's package.
    pub rule: String,
    pub phase: PolicyPhase,
    pub action: PolicyAction,
    pub on_error: PolicyOnError,
    pub body: PolicyBody,
    pub max_body_bytes: u32,
    pub timeout_ms: u64,
}

/// When a policy is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum PolicyPhase {
    #[default]
    Response,
    Request,
}

/// What a violation does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum PolicyAction {
    /// The response is its endpoint's failure.
    #[default]
    Classify,
    /// The client is refused.
    Deny,
    /// The response passes with a warning.
    Warn,
}

/// What a policy that fails to evaluate counts as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum PolicyOnError {
    /// A violation.
    #[default]
    Closed,
    /// A pass.
    Open,
}

/// Whether the response body is read for a policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum PolicyBody {
    /// When the policy's source names `body`.
    #[default]
    Auto,
    Read,
    Skip,
}

/// A query parameter whose first occurrence must have exactly this value (both compared
/// after percent-decoding, case-sensitively).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct QueryParamMatch {
    pub name: String,
    pub value: String,
}

/// A cookie (of the request's `Cookie` fields) whose first occurrence must have exactly this value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CookieMatch {
    pub name: String,
    pub value: String,
}

/// A header field written by a header modifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HeaderValueConfig {
    pub name: String,
    pub value: String,
}

/// The Gateway API's header modifier: fields removed, then set (replacing every value), then
/// added (appended to any present).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HeaderModifierConfig {
    pub set: Vec<HeaderValueConfig>,
    pub add: Vec<HeaderValueConfig>,
    pub remove: Vec<String>,
}

impl HeaderModifierConfig {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// The Gateway API's URL rewrite: the host and path the upstream is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct UrlRewriteConfig {
    /// Replaces the request's host (`Host`, or the authority of an absolute target).
    pub host: Option<String>,
    /// Replaces the whole path (the query is kept).
    pub path: Option<String>,
    /// Replaces the part of the path the route's `Prefix` match matched.
    pub prefix: Option<String>,
}

/// The Gateway API's request redirect: the route answers with `Location` built from the request
/// and these replacements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectConfig {
    /// `http` or `https`; null = the request's.
    pub scheme: Option<String>,
    /// null = the request's host.
    pub host: Option<String>,
    /// 0 = the scheme's well-known port when `scheme` is given, else the request's port.
    pub port: u32,
    /// Replaces the whole path.
    pub path: Option<String>,
    /// Replaces the part of the path the route's `Prefix` match matched.
    pub prefix: Option<String>,
    /// 301, 302, 303, 307 or 308.
    pub status_code: u32,
}

/// One side of a route's traffic split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRefConfig {
    pub service: String,
    /// Relative share; 0 = none.
    pub weight: u32,
}

/// A route's retries (see the model's `Retry` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConfig {
    pub limit: u32,
    /// Statuses retried, as normalized ranges (`500-599`).
    pub http: String,
    /// `grpc-status` values retried, kebab-case names.
    pub grpc: String,
    /// One attempt's response-header timeout; 0 = none.
    pub timeout_ms: u64,
    pub non_idempotent: bool,
    pub budget_percent: u32,
    pub budget_min_per_second: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BalancerConfig {
    RoundRobin,
    Random,
    /// Of two endpoints drawn at random, the one with fewer requests in flight.
    LeastRequest,
    /// Of two endpoints drawn at random, the one with the lower peak-EWMA latency times
    /// (requests in flight + 1).
    P2cEwma,
    Hash {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        header: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cookie: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<bool>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub address: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolConfig {
    pub max_idle_per_endpoint: u32,
    pub idle_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub balancer: BalancerConfig,
    pub endpoints: Vec<EndpointConfig>,
    pub connect_timeout_ms: u64,
    pub max_inflight_per_endpoint: u32,
    pub max_pending_per_endpoint: u32,
    pub pool: PoolConfig,
    /// The protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// HTTP/2: streams per upstream connection before another is opened (also bounded by the
    /// peer's SETTINGS_MAX_CONCURRENT_STREAMS).
    #[serde(default = "default_max_streams")]
    pub max_streams_per_connection: u32,
    /// HTTP statuses that count as the endpoint's failure, as normalized ranges: `429,500-599`.
    pub failure_statuses: String,
    /// `grpc-status` values that count as the endpoint's failure, kebab-case names:
    /// `unknown,deadline-exceeded,internal,unavailable`.
    pub failure_grpc_statuses: String,
    pub failure_accrual: FailureAccrualConfig,
    /// Active health checks; none when null.
    pub health_check: Option<HealthCheckConfig>,
    /// Service-wide limits; none when null.
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Local rate limits on every request sent to the service, whichever route sends it.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitConfig>,
    /// Rego policies checked on every response from the service's endpoints.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// TLS to the endpoints; none = plaintext.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    /// The endpoints are meshed peers of this workload identity (`sa.ns` or a SPIFFE ID): mTLS.
    #[serde(default)]
    pub identity: Option<String>,
}

/// Service-wide limits on requests in flight and waiting (0 = no limit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    pub max_requests: u32,
    pub max_pending_requests: u32,
    /// Open upstream connections to the service's endpoints at once.
    pub max_connections: u32,
}

/// Active health checks of a service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// The request target of an HTTP probe; none = a TCP connect probe.
    pub path: Option<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// The statuses of a passing HTTP probe, as normalized ranges: `200-399`.
    pub expected_statuses: String,
}

/// Consecutive-failure ejection (0 failures = off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailureAccrualConfig {
    pub consecutive_failures: u32,
    pub min_penalty_ms: u64,
    pub max_penalty_ms: u64,
    pub jitter_percent: u32,
    pub max_ejection_percent: u32,
}

impl Default for FailureAccrualConfig {
    /// Off; the penalties are Linkerd's defaults.
    fn default() -> Self {
        FailureAccrualConfig {
            consecutive_failures: 0,
            min_penalty_ms: 1_000,
            max_penalty_ms: 60_000,
            jitter_percent: 50,
            max_ejection_percent: 50,
        }
    }
}

fn default_detect_timeout() -> u64 {
    1_000
}

fn default_tunnel_idle() -> u64 {
    300_000
}

fn default_proxy_headers() -> bool {
    true
}

fn default_max_streams() -> u32 {
    100
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// h2c with prior knowledge: many requests multiplexed over few connections.
    Http2,
    /// The downstream request's version.
    Auto,
}

/// A JSON document that is not a valid config model.
#[derive(Debug, thiserror::Error)]
#[error("invalid config model: {0}")]
pub struct ModelError(#[from] serde_json::Error);

impl Config {
    /// Parses the normalized JSON model.
    pub fn from_json(json: &str) -> Result<Self, ModelError> {
        Ok(serde_json::from_str(json)?)
    }
}

/// Small configs for other crates' tests (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::*;

    pub fn service(name: &str, endpoints: &[&str]) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            balancer: BalancerConfig::RoundRobin,
            endpoints: endpoints.iter().map(|a| EndpointConfig { address: (*a).into(), weight: 1 }).collect(),
            connect_timeout_ms: 1000,
            max_inflight_per_endpoint: 1000,
            max_pending_per_endpoint: 1000,
            pool: PoolConfig { max_idle_per_endpoint: 1000, idle_timeout_ms: 4000 },
            protocol: UpstreamProtocol::Http1,
            max_streams_per_connection: 100,
            failure_statuses: "500-599".into(),
            failure_grpc_statuses: "unknown,deadline-exceeded,internal,unavailable".into(),
            failure_accrual: FailureAccrualConfig::default(),
            health_check: None,
            tls: None,
            identity: None,
            circuit_breaker: None,
            rate_limits: vec![],
            policies: Vec::new(),
        }
    }

    pub fn route(name: &str, hosts: &[&str], kind: PathMatchType, path: &str, service: &str) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            hosts: hosts.iter().map(|h| (*h).into()).collect(),
            path: PathMatch { kind, value: path.into() },
            methods: vec![],
            headers: vec![],
            service: service.into(),
            response_header_timeout_ms: 15_000,
            idle_timeout_ms: 0,
            allow_connect: false,
            retry: None,
            backends: vec![],
            query_params: vec![],
            cookies: vec![],
            request_headers: HeaderModifierConfig::default(),
            response_headers: HeaderModifierConfig::default(),
            rewrite: None,
            redirect: None,
            rate_limits: vec![],
            authorization: vec![],
            policies: Vec::new(),
        }
    }

    pub fn listener(address: &str, routes: Vec<RouteConfig>) -> ListenerConfig {
        ListenerConfig {
            name: "main".into(),
            address: address.into(),
            protocol: ListenerProtocol::Http,
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_header_bytes: 65_536,
            max_uri_bytes: 8_192,
            tcp_service: None,
            detect_timeout_ms: 1_000,
            tunnel_idle_timeout_ms: 300_000,
            http2: Http2Config::default(),
            proxy_headers: true,
            authorization: AuthorizationConfig::default(),
            tls: None,
            mtls: MtlsMode::Off,
            routes,
        }
    }

    /// Every request on an ephemeral port to one endpoint (service `s`, round-robin, HTTP/1.1).
    pub fn all_to(endpoint: &str) -> Config {
        Config {
            listeners: vec![listener("127.0.0.1:0", vec![route("r", &[], PathMatchType::Prefix, "/", "s")])],
            services: vec![service("s", &[endpoint])],
            admin: None,
            identity: None,
        }
    }
}

#[cfg(test)]
mod schema_agreement;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_private_key_is_written_out_redacted() {
        let c = TlsCertificateConfig {
            cert: None,
            key: None,
            cert_pem: Some("-----BEGIN CERTIFICATE-----".into()),
            key_pem: Some("-----BEGIN PRIVATE KEY-----secret".into()),
            origin: "Secret default/web".into(),
            hosts: vec![],
        };
        let json = serde_json::to_string(&c).expect("serializes");
        assert!(json.contains(r#""keyPem":"<redacted>""#), "{json}");
        assert!(!json.contains("secret"), "{json}");
        let files = TlsCertificateConfig { key_pem: None, cert_pem: None, ..c };
        assert!(serde_json::to_string(&files).expect("serializes").contains(r#""keyPem":null"#));
    }

    #[test]
    fn a_redis_password_is_written_out_redacted() {
        for (url, shown) in [
            ("rediss://:s3cret@redis.internal:6380/2", "rediss://:***@redis.internal:6380/2"),
            ("redis://app:s3cret@10.0.0.5", "redis://app:***@10.0.0.5"),
            ("redis://s3cret@10.0.0.5", "redis://***@10.0.0.5"),
            ("redis://:p@ss:w0rd@host", "redis://:***@host"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://host/1?a=b@c", "redis://host/1?a=b@c"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
        let g = GlobalRateLimitConfig {
            redis: Some("rediss://:s3cret@127.0.0.1:6380".into()),
            rls: None,
            domain: None,
            ca: None,
            cert: None,
            key: None,
            fail_mode: RateLimitFailMode::Open,
            timeout_ms: 50,
        };
        let json = serde_json::to_string(&g).expect("serializes");
        assert!(json.contains(r#""redis":"rediss://:***@127.0.0.1:6380""#), "{json}");
    }
}
