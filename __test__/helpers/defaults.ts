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
})
