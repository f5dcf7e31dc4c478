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
  /** Always starts with `/`; already normalized (no dot segments, no trailing `/` unless `/`). */
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
}

export interface ListenerModel {
  name: string
  /** `host:port`, e.g. `127.0.0.1:4140`; port 0 picks an ephemeral port. */
  address: string
  protocol: 'http'
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
  /** In file order; precedence is computed by the data plane (see README "Routing"). */
  routes: RouteModel[]
}

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
  /** Idle keep-alive connections kept per endpoint. Default 64. */
  maxIdlePerEndpoint: number
  /** Idle connections are closed after this, in ms. Default 4000 (below Node's 5 s keepAliveTimeout). */
  idleTimeoutMs: number
}

export interface ServiceModel {
  name: string
  balancer: BalancerModel
  /** May be empty: routes to it answer 503 `no-endpoints`. */
  endpoints: EndpointModel[]
  /** Upstream TCP connect timeout, in ms. Default 1000. */
  connectTimeoutMs: number
  /** Requests in flight per endpoint. Default 1000. */
  maxInflightPerEndpoint: number
  /** Requests waiting for an in-flight slot per endpoint; beyond it, 503 `overloaded`. Default 1000. */
  maxPendingPerEndpoint: number
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
