/**
 * The listener HTTP/2 defaults as the README documents them. Written out here, not imported from
 * `ts/config/defaults.ts`, so that changing a default without changing the docs fails the tests.
 */
export const DOCUMENTED_HTTP2_DEFAULTS = {
  maxConcurrentStreams: 100,
  maxHeaderListSize: 16384,
  connectionWindowSize: 1048576,
  streamWindowSize: 262144,
  keepAliveIntervalMs: 20000,
  keepAliveTimeoutMs: 20000,
}

/** A route's filter and extra-match fields as the model defaults them: none set. */
export const ROUTE_FILTER_DEFAULTS = () => ({
  queryParams: [],
  cookies: [],
  requestHeaders: { set: [], add: [], remove: [] },
  responseHeaders: { set: [], add: [], remove: [] },
  rewrite: null,
  redirect: null,
  authorization: [],
  rateLimits: [],
  policies: [],
})

/**
 * A listener's fields as the model defaults them, all but its `name`, `address` and `routes`:
 * HTTP, its limits and timeouts, no TLS, authorization allowing all. Written out, as above, so
 * that a changed default fails the tests that expect it.
 */
export const LISTENER_DEFAULTS = () => ({
  protocol: 'http',
  tcpService: null,
  detectTimeoutMs: 1000,
  maxConnections: 10000,
  headerReadTimeoutMs: 10000,
  idleTimeoutMs: 60000,
  maxHeaderBytes: 65536,
  maxUriBytes: 8192,
  tunnelIdleTimeoutMs: 300000,
  http2: DOCUMENTED_HTTP2_DEFAULTS,
  proxyHeaders: true,
  authorization: { default: 'allow', rules: [] },
  tls: null,
  mtls: 'off',
})

/** A route's fields as the model defaults them, all but its `name` and `service`: a catch-all. */
export const ROUTE_DEFAULTS = () => ({
  hosts: [],
  path: { type: 'Prefix', value: '/' },
  methods: [],
  headers: [],
  responseHeaderTimeoutMs: 15000,
  idleTimeoutMs: 0,
  allowConnect: false,
  retry: null,
  ...ROUTE_FILTER_DEFAULTS(),
  backends: [],
})

/** A service's fields as the model defaults them, all but its `name`, `balancer` and `endpoints`. */
export const SERVICE_DEFAULTS = () => ({
  protocol: 'http1',
  connectTimeoutMs: 1000,
  maxInflightPerEndpoint: 1000,
  maxPendingPerEndpoint: 1000,
  maxStreamsPerConnection: 100,
  pool: { maxIdlePerEndpoint: 1000, idleTimeoutMs: 4000 },
  failureStatuses: '500-599',
  failureGrpcStatuses: 'unknown,deadline-exceeded,internal,unavailable',
  failureAccrual: { consecutiveFailures: 0, minPenaltyMs: 1000, maxPenaltyMs: 60000, jitterPercent: 50, maxEjectionPercent: 50 },
  circuitBreaker: null,
  healthCheck: null,
  rateLimits: [],
  policies: [],
  tls: null,
  identity: null,
})
