/**
 * Defaults and limits of the config model, in one place so the YAML loader, the Kubernetes
 * translation, `configFromEndpoints` and `validateModel` cannot drift apart. The values are the
 * ones documented in `model.ts`.
 */
import type { BalancerModel, EndpointModel, ListenerModel, ListenerProtocol, RouteModel, ServiceModel, UpstreamProtocol } from './model.js'

export const DEFAULT_LISTEN = '127.0.0.1:4140'
export const DEFAULT_ADMIN = '127.0.0.1:4191'

export const LISTENER_DEFAULTS = {
  maxConnections: 10000,
  headerReadTimeoutMs: 10000,
  idleTimeoutMs: 60000,
  maxHeaderBytes: 65536,
  maxUriBytes: 8192,
  tunnelIdleTimeoutMs: 300000,
  detectTimeoutMs: 1000,
} as const

/** The values of `ListenerModel.protocol`, the default first. */
export const LISTENER_PROTOCOLS = ['http', 'tcp'] as const satisfies readonly ListenerProtocol[]

export function isListenerProtocol(v: unknown): v is ListenerProtocol {
  return (LISTENER_PROTOCOLS as readonly unknown[]).includes(v)
}

export const HTTP2_DEFAULTS = {
  maxConcurrentStreams: 100,
  maxHeaderListSize: 16384,
  connectionWindowSize: 1048576,
  streamWindowSize: 262144,
  keepAliveIntervalMs: 20000,
  keepAliveTimeoutMs: 20000,
} as const

export const ROUTE_DEFAULTS = { responseHeaderTimeoutMs: 15000 } as const

export const SERVICE_DEFAULTS = {
  connectTimeoutMs: 1000,
  maxInflightPerEndpoint: 1000,
  maxPendingPerEndpoint: 1000,
  maxStreamsPerConnection: 100,
} as const

/** The values of `ServiceModel.protocol`, the default first. */
export const UPSTREAM_PROTOCOLS = ['http1', 'http2', 'auto'] as const satisfies readonly UpstreamProtocol[]
export const DEFAULT_UPSTREAM_PROTOCOL: UpstreamProtocol = 'http1'

export function isUpstreamProtocol(v: unknown): v is UpstreamProtocol {
  return (UPSTREAM_PROTOCOLS as readonly unknown[]).includes(v)
}

// The idle cap matches the in-flight default: a smaller cap closes connections every time the
// concurrency to an endpoint exceeds it and reopens them a moment later (measured: 100 concurrent
// requests with a cap of 64 opened a new upstream connection every ~20 requests). Idle ones
// still close after the idle timeout.
export const POOL_DEFAULTS = { maxIdlePerEndpoint: 1000, idleTimeoutMs: 4000 } as const

export const WEIGHT_MIN = 1
export const WEIGHT_MAX = 1000

/**
 * Bounds of the numeric limits. The upper bound is u32::MAX so the value fits whatever integer
 * type the Rust side deserializes into. A zero is refused where its meaning is not documented
 * (zero connections, zero-length heads, instant timeouts would all just break traffic); the route
 * timeout documents 0 as "no limit", 0 idle/pending connections means "do not pool/queue", and
 * an HTTP/2 keep-alive interval of 0 means "no pings".
 */
export interface LimitSpec {
  min: number
  max: number
  duration: boolean
}

const U32_MAX = 4294967295
/** HTTP/2 flow-control windows: at least the protocol's initial 65535, at most 2^31-1 (RFC 9113 §6.9.1). */
const WINDOW: LimitSpec = { min: 65535, max: 2147483647, duration: false }
const count = (min: number): LimitSpec => ({ min, max: U32_MAX, duration: false })
const duration = (min: number): LimitSpec => ({ min, max: U32_MAX, duration: true })

export const LISTENER_LIMITS = {
  maxConnections: count(1),
  headerReadTimeoutMs: duration(1),
  idleTimeoutMs: duration(1),
  // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
  maxHeaderBytes: count(8192),
  maxUriBytes: count(1),
  tunnelIdleTimeoutMs: duration(1),
  detectTimeoutMs: duration(1),
} as const satisfies Record<keyof typeof LISTENER_DEFAULTS, LimitSpec>

export const HTTP2_LIMITS = {
  maxConcurrentStreams: count(1),
  maxHeaderListSize: count(1024),
  connectionWindowSize: WINDOW,
  streamWindowSize: WINDOW,
  // 0 turns keep-alive pings off.
  keepAliveIntervalMs: duration(0),
  keepAliveTimeoutMs: duration(1),
} as const satisfies Record<keyof typeof HTTP2_DEFAULTS, LimitSpec>

export const ROUTE_LIMITS = {
  responseHeaderTimeoutMs: duration(0),
} as const satisfies Record<keyof typeof ROUTE_DEFAULTS, LimitSpec>

export const SERVICE_LIMITS = {
  connectTimeoutMs: duration(1),
  maxInflightPerEndpoint: count(1),
  maxPendingPerEndpoint: count(0),
  maxStreamsPerConnection: count(1),
} as const satisfies Record<keyof typeof SERVICE_DEFAULTS, LimitSpec>

export const POOL_LIMITS = {
  maxIdlePerEndpoint: count(0),
  idleTimeoutMs: duration(1),
} as const satisfies Record<keyof typeof POOL_DEFAULTS, LimitSpec>

export function makeListener(name: string, address: string, routes: RouteModel[] = []): ListenerModel {
  return { name, address, protocol: 'http', tcpService: null, ...LISTENER_DEFAULTS, http2: { ...HTTP2_DEFAULTS }, proxyHeaders: true, routes }
}

/** A route matching every request (any host, any method, path prefix `/`). */
export function makeRoute(name: string, service: string): RouteModel {
  return {
    name,
    hosts: [],
    path: { type: 'Prefix', value: '/' },
    methods: [],
    headers: [],
    service,
    ...ROUTE_DEFAULTS,
    allowConnect: false,
  }
}

export function makeService(
  name: string,
  endpoints: EndpointModel[] = [],
  balancer: BalancerModel = { kind: 'round-robin' },
  protocol: UpstreamProtocol = DEFAULT_UPSTREAM_PROTOCOL,
): ServiceModel {
  return { name, balancer, endpoints, protocol, ...SERVICE_DEFAULTS, pool: { ...POOL_DEFAULTS } }
}
