/**
 * The normalized config model: the one shape every config source (native YAML, Kubernetes
 * resources, the typed policy API) is turned into, validated once, and handed to the Rust data
 * plane as JSON. The Rust side (`crates/meshproxy-core/src/config.rs`) deserializes exactly this
 * shape with serde (`camelCase`), so a field added here must be added there too.
 *
 * Every field is explicit here (defaults already applied), so the data plane never guesses.
 */

/** How a request's path is matched. `Prefix` matches on `/` segment boundaries. */
export type PathMatchType = 'Exact' | 'Prefix'

export interface PathMatch {
  type: PathMatchType
  /**
   * Always starts with `/`; already normalized (no dot segments or empty segments). An `Exact`
   * path may end with `/` (`/foo/` matches `/foo/`, not `/foo`); a `Prefix` path does not, as
   * `/foo/` and `/foo` match the same requests.
   */
  value: string
}

export interface HeaderMatch {
  /** Lowercase header name. */
  name: string
  /** Exact value. */
  value: string
}

export interface RouteModel {
  /** Unique per listener; used as the `route` label in metrics. */
  name: string
  /**
   * Hosts this route serves: exact lowercase names (`api.example.com`) or one-label wildcards
   * (`*.example.com`). Empty = any host (the default group).
   */
  hosts: string[]
  path: PathMatch
  /** Uppercase method names; empty = any method. */
  methods: string[]
  headers: HeaderMatch[]
  /** Name of a service in `services`. */
  service: string
  /** Time allowed for the upstream's response headers, in ms; 0 = no limit. Default 15000. */
  responseHeaderTimeoutMs: number
  /**
   * `CONNECT` requests (HTTP/1.1 `CONNECT host:port`, HTTP/2 `CONNECT` with only `:authority`)
   * matching this route — by their authority's host, with the path taken as `/` — are answered
   * 200 and tunnelled as opaque TCP to an endpoint of `service` chosen by its balancer (never to
   * the authority the client named). Without it they are refused: 403 `connect-refused`. Default
   * false.
   */
  allowConnect: boolean
}

export interface ListenerModel {
  name: string
  /** `host:port`, e.g. `127.0.0.1:4140`; port 0 picks an ephemeral port. */
  address: string
  /** What the listener speaks; see `ListenerProtocol`. Default `http`. */
  protocol: ListenerProtocol
  /**
   * Name of a service in `services` that opaque TCP connections are forwarded to. On an `http`
   * listener: connections whose first bytes are neither an HTTP/1.x request line nor the h2
   * preface, or that send nothing within `detectTimeoutMs` (server-speaks-first protocols such as
   * MySQL or SMTP); null = such connections are refused (non-HTTP bytes get the HTTP/1 parser's
   * 400, silence is closed after the header-read timeout). Required on a `tcp` listener, where
   * every connection goes to it. Default null.
   */
  tcpService: string | null
  /**
   * How long protocol detection waits for a client's first bytes before the connection is
   * treated as opaque TCP and sent to `tcpService`, in ms. Only used on an `http` listener with a
   * `tcpService`. Default 1000.
   */
  detectTimeoutMs: number
  /** Open downstream connections allowed; beyond it new connections are closed at once. Default 10000. */
  maxConnections: number
  /** Time allowed for a request head to arrive (slowloris), in ms. Default 10000. */
  headerReadTimeoutMs: number
  /** Idle keep-alive time of downstream connections, in ms. Default 60000. */
  idleTimeoutMs: number
  /** Request head limit in bytes (431 beyond). Default 65536. */
  maxHeaderBytes: number
  /** Request URI limit in bytes (414 beyond). Default 8192. */
  maxUriBytes: number
  /** Upgraded (WebSocket) and opaque TCP connections with no bytes either way for this long are closed, in ms. Default 300000. */
  tunnelIdleTimeoutMs: number
  /** Settings for downstream HTTP/2 (h2c) connections on this listener; see `Http2Model`. */
  http2: Http2Model
  /**
   * Whether the proxy adds the headers that record it and the client: on requests
   * `X-Forwarded-For` (the client's address, appended), `X-Forwarded-Proto` and
   * `X-Forwarded-Host` (when absent) and `Via` (appended); on responses `Via` (appended). false:
   * none are added, and those already present pass unchanged — e.g. between sidecars in a mesh,
   * where every hop would otherwise append its own, or to keep client addresses from backends.
   * Default true.
   */
  proxyHeaders: boolean
  /**
   * In file order; precedence is computed by the data plane (see README "Routing"). Ignored on a
   * `tcp` listener.
   */
  routes: RouteModel[]
}

/**
 * What a listener speaks:
 * - `http`: HTTP/1.x and h2c (prior knowledge), detected per connection from its first bytes;
 *   anything else goes to the listener's `tcpService` if it has one (the default);
 * - `tcp`: opaque TCP; every connection is forwarded to `tcpService` as is, no detection, no
 *   routes.
 */
export type ListenerProtocol = 'http' | 'tcp'

/**
 * HTTP/2 settings of a listener, applied to downstream h2c connections (HTTP/1.1 connections on
 * the same listener are not affected). In native YAML they are written under the listener as
 * `http2: { maxConcurrentStreams, maxHeaderListSize, connectionWindowSize, streamWindowSize,
 * keepAliveInterval, keepAliveTimeout }`, the two times as durations (`20s`) or ms integers; every
 * field is optional there. Listeners built from Kubernetes resources or `configFromEndpoints` get
 * the defaults.
 */
export interface Http2Model {
  /**
   * SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients: requests one connection may have in
   * flight at once; further streams are refused until one ends. 1..4294967295. Default 100.
   */
  maxConcurrentStreams: number
  /**
   * SETTINGS_MAX_HEADER_LIST_SIZE: the largest request header block accepted, in bytes (431
   * beyond), counted as HTTP/2 does (name + value + 32 per field). At least 1024. Default 16384.
   */
  maxHeaderListSize: number
  /**
   * Flow-control window of the whole connection, in bytes: how much request body all streams
   * together may send before the proxy reads it. 65535..2147483647. Default 1048576 (1 MiB).
   */
  connectionWindowSize: number
  /**
   * Initial flow-control window of each stream, in bytes: how much of one request body may arrive
   * unread. 65535..2147483647. Default 262144 (256 KiB).
   */
  streamWindowSize: number
  /** Interval of the PING sent on a connection to detect dead peers, in ms; 0 = no pings. Default 20000. */
  keepAliveIntervalMs: number
  /** Time allowed for a PING's acknowledgement before the connection is closed, in ms; at least 1. Default 20000. */
  keepAliveTimeoutMs: number
}

/**
 * The protocol a service speaks to its endpoints:
 * - `http1`: HTTP/1.1, one request at a time per pooled connection (the default);
 * - `http2`: HTTP/2 over cleartext with prior knowledge (h2c, no upgrade), many requests
 *   multiplexed over few connections; needed for gRPC;
 * - `auto`: the version of the downstream request (HTTP/2 requests go upstream as h2c, HTTP/1.x
 *   ones as HTTP/1.1).
 */
export type UpstreamProtocol = 'http1' | 'http2' | 'auto'

export type BalancerModel =
  | { kind: 'round-robin' }
  | { kind: 'random' }
  /** Consistent hashing on exactly one key source; requests without the key go to a random endpoint. */
  | { kind: 'hash'; header?: string; cookie?: string; source?: boolean }

export interface EndpointModel {
  /** `ip:port` or `host:port` (resolved at connect time). */
  address: string
  /** Relative weight, integer 1..=1000. Default 1. */
  weight: number
}

export interface PoolModel {
  /** Idle keep-alive connections kept per endpoint and worker thread. Default 1000 (as many as may be in flight). */
  maxIdlePerEndpoint: number
  /** Idle connections are closed after this, in ms. Default 4000 (below Node's 5 s keepAliveTimeout). */
  idleTimeoutMs: number
}

export interface ServiceModel {
  name: string
  balancer: BalancerModel
  /** May be empty: routes to it answer 503 `no-endpoints`. */
  endpoints: EndpointModel[]
  /**
   * The protocol spoken to the endpoints (see `UpstreamProtocol`). Default `http1`. From
   * Kubernetes it follows the Service port's `appProtocol`: `kubernetes.io/h2c` and `grpc` give
   * `http2`; `http`, `kubernetes.io/ws` or none give `http1`.
   */
  protocol: UpstreamProtocol
  /** Upstream TCP connect timeout, in ms. Default 1000. */
  connectTimeoutMs: number
  /** Requests in flight per endpoint. Default 1000. */
  maxInflightPerEndpoint: number
  /** Requests waiting for an in-flight slot per endpoint; beyond it, 503 `overloaded`. Default 1000. */
  maxPendingPerEndpoint: number
  /**
   * HTTP/2 (`protocol` `http2`, or `auto` with HTTP/2 requests): requests multiplexed on one
   * upstream connection before another connection to the endpoint is opened; the endpoint's own
   * SETTINGS_MAX_CONCURRENT_STREAMS lowers it further. Unused for HTTP/1.1. 1..4294967295.
   * Default 100.
   */
  maxStreamsPerConnection: number
  pool: PoolModel
}

export interface AdminModel {
  /** `host:port` of the admin listener (`/live`, `/ready`, `/metrics`, `/config`). */
  address: string
}

export interface ConfigModel {
  listeners: ListenerModel[]
  services: ServiceModel[]
  /** null = no admin listener. */
  admin: AdminModel | null
}
