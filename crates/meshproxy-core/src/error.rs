//! Errors: [`Error`] for the embedding API (config, bind, lifecycle), each with a stable `code`
//! that the N-API binding passes on to JavaScript; [`ProxyError`] for the responses the proxy
//! makes itself, each with its status and `meshproxy-error` value.

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the proxy is not running")]
    NotRunning,
    #[error("the proxy is already running")]
    AlreadyRunning,
    #[error("the proxy is closed")]
    Closed,
    /// A TLS listener's certificates cannot be used (the message names the file).
    #[error("listener {listener:?}: TLS: {source}")]
    Tls {
        listener: String,
        #[source]
        source: meshproxy_tls::TlsError,
    },
    /// The proxy's mesh identity cannot be used (the message names the file).
    #[error("identity: {0}")]
    Identity(#[source] meshproxy_tls::TlsError),
}

impl From<meshproxy_config::ModelError> for Error {
    fn from(e: meshproxy_config::ModelError) -> Self {
        Error::Config(e.to_string())
    }
}

impl From<meshproxy_route::RouteError> for Error {
    fn from(e: meshproxy_route::RouteError) -> Self {
        Error::Config(e.to_string())
    }
}

impl Error {
    /// Stable machine-readable code, surfaced as the JS error's `code`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Config(_) => "MESHPROXY_INVALID_CONFIG",
            Error::Bind { .. } => "MESHPROXY_BIND_FAILED",
            Error::NotRunning => "MESHPROXY_NOT_RUNNING",
            Error::AlreadyRunning => "MESHPROXY_ALREADY_RUNNING",
            Error::Closed => "MESHPROXY_CLOSED",
            Error::Tls { .. } => "MESHPROXY_TLS_INVALID",
            Error::Identity(_) => "MESHPROXY_IDENTITY_INVALID",
        }
    }
}

/// Why the proxy answered a request itself instead of forwarding the upstream's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    NoRoute,
    NoEndpoints,
    UpstreamConnect,
    UpstreamReset,
    UpstreamTimeout,
    /// The upstream did not complete the WebSocket handshake an HTTP/2 client's extended
    /// CONNECT was translated into (no 101, or a wrong `Sec-WebSocket-Accept`).
    UpstreamHandshake,
    /// The upstream's HTTP/1.1 response could not be parsed or framed (malformed status line or
    /// fields, conflicting lengths, a head over 64 KiB, a 101 nobody asked for).
    UpstreamProtocol,
    Overloaded,
    UriTooLong,
    BadRequest,
    ShuttingDown,
    ConnectRefused,
    /// A rate limit refused the request (429; the limiter adds `Retry-After` and the
    /// `RateLimit-Policy`/`RateLimit` fields).
    RateLimited,
    /// A global rate limit with `failMode: closed` got no answer from Redis in time (503,
    /// `Retry-After: 1`).
    RateLimitUnavailable,
    /// An authorization rule or a request-phase policy denied the request (403).
    Forbidden,
    /// The upstream's response violated a policy whose action is `deny` (502).
    PolicyViolation,
    /// A plaintext HTTP/1 request on a TLS listener (400, then the connection closes).
    TlsRequired,
}

impl ProxyError {
    pub const ALL: [ProxyError; 17] = [
        ProxyError::NoRoute,
        ProxyError::NoEndpoints,
        ProxyError::UpstreamConnect,
        ProxyError::UpstreamReset,
        ProxyError::UpstreamTimeout,
        ProxyError::UpstreamHandshake,
        ProxyError::UpstreamProtocol,
        ProxyError::Overloaded,
        ProxyError::UriTooLong,
        ProxyError::BadRequest,
        ProxyError::ShuttingDown,
        ProxyError::ConnectRefused,
        ProxyError::RateLimited,
        ProxyError::RateLimitUnavailable,
        ProxyError::Forbidden,
        ProxyError::PolicyViolation,
        ProxyError::TlsRequired,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoints
            | ProxyError::Overloaded
            | ProxyError::ShuttingDown
            | ProxyError::RateLimitUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect
            | ProxyError::UpstreamReset
            | ProxyError::UpstreamHandshake
            | ProxyError::UpstreamProtocol
            | ProxyError::PolicyViolation => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::BadRequest | ProxyError::TlsRequired => StatusCode::BAD_REQUEST,
            ProxyError::ConnectRefused | ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `meshproxy-error` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no-route",
            ProxyError::NoEndpoints => "no-endpoints",
            ProxyError::UpstreamConnect => "upstream-connect",
            ProxyError::UpstreamReset => "upstream-reset",
            ProxyError::UpstreamTimeout => "upstream-timeout",
            ProxyError::UpstreamHandshake => "upstream-handshake",
            ProxyError::UpstreamProtocol => "upstream-protocol",
            ProxyError::Overloaded => "overloaded",
            ProxyError::UriTooLong => "uri-too-long",
            ProxyError::BadRequest => "bad-request",
            ProxyError::ShuttingDown => "shutting-down",
            ProxyError::ConnectRefused => "connect-refused",
            ProxyError::RateLimited => "rate-limited",
            ProxyError::RateLimitUnavailable => "rate-limit-unavailable",
            ProxyError::Forbidden => "forbidden",
            ProxyError::PolicyViolation => "policy-violation",
            ProxyError::TlsRequired => "tls-required",
        }
    }

    /// The gRPC status code a gRPC client gets for this failure (grpc/doc/statuscodes.md).
    pub fn grpc_status(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "12",                               // UNIMPLEMENTED
            ProxyError::UpstreamTimeout => "4",                        // DEADLINE_EXCEEDED
            ProxyError::ConnectRefused | ProxyError::Forbidden => "7", // PERMISSION_DENIED
            ProxyError::RateLimited => "8",                            // RESOURCE_EXHAUSTED
            ProxyError::UriTooLong | ProxyError::BadRequest | ProxyError::TlsRequired => "13", // INTERNAL
            ProxyError::NoEndpoints
            | ProxyError::UpstreamConnect
            | ProxyError::UpstreamReset
            | ProxyError::UpstreamHandshake
            | ProxyError::UpstreamProtocol
            | ProxyError::PolicyViolation
            | ProxyError::Overloaded
            | ProxyError::RateLimitUnavailable
            | ProxyError::ShuttingDown => "14", // UNAVAILABLE (as HTTP 502/503 map to gRPC)
        }
    }

    /// `grpc-message`: the body's text, which is printable ASCII without `%` (no
    /// percent-encoding needed).
    pub fn grpc_message(self) -> &'static str {
        self.body().trim_end_matches('\n')
    }

    /// Short human-readable body.
    pub fn body(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "meshproxy: no route matches this request\n",
            ProxyError::NoEndpoints => "meshproxy: the service has no endpoints\n",
            ProxyError::UpstreamConnect => "meshproxy: could not connect to the upstream\n",
            ProxyError::UpstreamReset => "meshproxy: the upstream connection failed\n",
            ProxyError::UpstreamTimeout => "meshproxy: the upstream did not answer in time\n",
            ProxyError::UpstreamHandshake => {
                "meshproxy: the upstream did not accept the WebSocket handshake\n"
            }
            ProxyError::UpstreamProtocol => "meshproxy: the upstream sent a malformed response\n",
            ProxyError::Overloaded => "meshproxy: too many requests in flight to the upstream\n",
            ProxyError::UriTooLong => "meshproxy: request URI too long\n",
            ProxyError::BadRequest => "meshproxy: malformed request\n",
            ProxyError::ShuttingDown => "meshproxy: the proxy is shutting down\n",
            ProxyError::ConnectRefused => "meshproxy: CONNECT is not allowed here\n",
            ProxyError::RateLimited => "meshproxy: rate limit exceeded\n",
            ProxyError::RateLimitUnavailable => "meshproxy: the global rate limit could not be checked\n",
            ProxyError::Forbidden => "meshproxy: forbidden by policy\n",
            ProxyError::PolicyViolation => "meshproxy: the upstream's response violated a policy\n",
            ProxyError::TlsRequired => "meshproxy: this port speaks TLS; use https\n",
        }
    }
}
