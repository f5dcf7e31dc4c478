/**
 * Shared pieces of the rate limit specs (local, on Redis, through envoyproxy/ratelimit, plain and
 * TLS): the YAML of a listener whose routes each carry one limit, of a limited gRPC service and of
 * a route's bad limits for `meshproxy check`, two proxies on one config with a keep-alive agent, a burst through both
 * at once, a route's counters in a proxy's metrics, envoyproxy/ratelimit on a Redis of its own,
 * and the wait that keeps a test's requests in one fixed per-minute window.
 */
import http from 'node:http'
import type { ExecutionContext } from 'ava'
import type { LoadOptions } from '../../ts/index.js'
import { get, sleep, type Res } from './http.js'
import { startProxy, type Started } from './proxy.js'
import { startRateLimitService, type RateLimitService, type RateLimitServiceOptions } from './ratelimit-service.js'
import { startRedis } from './redis.js'

/** How many of `rs` have `status`. */
export const count = (rs: Res[], status: number): number => rs.filter((r) => r.status === status).length

/** A route of [`limitedRoutesYaml`]. */
export interface LimitedRoute {
  name: string
  /** The path prefix it matches; none: every path. */
  path?: string
  /** Its one rate limit, a YAML flow mapping: `{ name: total, rate: 10, global: { … } }`. */
  limit: string
}

/**
 * A config of one listener `main` on 127.0.0.1:0 whose `routes` each send to service `a` (its one
 * endpoint 127.0.0.1:`backendPort`) under one rate limit; an admin listener on 127.0.0.1:0 with
 * `admin`, else none.
 */
export function limitedRoutesYaml(backendPort: number, routes: LimitedRoute[], opts: { admin?: boolean } = {}): string {
  const route = (r: LimitedRoute): string => `
      - name: ${r.name}${r.path === undefined ? '' : `\n        match: { path: ${r.path} }`}
        service: a
        rateLimits:
          - ${r.limit}`
  return `
admin: ${opts.admin ? '127.0.0.1:0' : 'null'}
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:${routes.map(route).join('')}
services:
  - name: a
    endpoints: [127.0.0.1:${backendPort}]
`
}

/**
 * A config with one route (to service `a`, endpoint 127.0.0.1:1) whose rate limits are `limits`,
 * YAML flow mappings one a line: the first on line 6, at column 13, for `meshproxy check`'s
 * positions.
 */
export function routeLimitsYaml(limits: string[]): string {
  return `listeners:
  - address: 127.0.0.1:0
    routes:
      - service: a
        rateLimits:
${limits.map((l) => `          - ${l}\n`).join('')}services:
  - name: a
    endpoints: [127.0.0.1:1]
`
}

/**
 * A config of one listener on 127.0.0.1:0 that routes everything to service `echo` (HTTP/2, the
 * gRPC echo server on 127.0.0.1:`echoPort`), whose rate limits are `rateLimits` (a YAML flow
 * sequence).
 */
export function limitedEchoYaml(echoPort: number, rateLimits: string): string {
  return `
admin: null
listeners:
  - address: 127.0.0.1:0
    routes: [{ service: echo }]
services:
  - name: echo
    protocol: http2
    endpoints: [127.0.0.1:${echoPort}]
    rateLimits: ${rateLimits}
`
}

/** Two proxies started one after the other on one config (`loadOpts`: e.g. the file it is read as). */
export async function twoProxies(t: ExecutionContext, yaml: string, loadOpts: LoadOptions = {}): Promise<[Started, Started]> {
  return [await startProxy(t, yaml, loadOpts), await startProxy(t, yaml, loadOpts)]
}

/** A keep-alive agent of up to `maxSockets` connections, destroyed at the end of the test. */
export function keepAliveAgent(t: ExecutionContext, maxSockets: number): http.Agent {
  const agent = new http.Agent({ keepAlive: true, maxSockets })
  t.teardown(() => agent.destroy())
  return agent
}

/** `n` GETs of `path` through each of two proxies (`path2` through the second), all at once. */
export function throughBoth(agent: http.Agent, [p1, p2]: [Started, Started], n: number, path: string, path2 = path): Promise<Res[]> {
  return Promise.all([...Array.from({ length: n }, () => get(p1.port, path, {}, agent)), ...Array.from({ length: n }, () => get(p2.port, path2, {}, agent))])
}

/** Counter `name` of route `route` on listener `main` in a proxy's metrics text; NaN when it is not there. */
export function routeCounter(metrics: string, name: string, route: string): number {
  return Number(new RegExp(`${name}\\{listener="main",route="${route}"[^}]*\\} (\\d+)`).exec(metrics)?.[1])
}

/**
 * Waits until the current minute has at least 15 s left, so a test's requests share one of
 * envoyproxy/ratelimit's fixed per-minute windows.
 */
export async function awayFromTheMinutesEnd(): Promise<void> {
  const left = 60_000 - (Date.now() % 60_000)
  if (left < 15_000) await sleep(left + 100)
}

/** A new `redis-server` ([`startRedis`]) and envoyproxy/ratelimit with `config` counting on it. */
export async function startRateLimitServiceOnRedis(t: ExecutionContext, config: string, opts: RateLimitServiceOptions = {}): Promise<RateLimitService> {
  const redis = await startRedis(t)
  return startRateLimitService(t, redis.port, config, opts)
}
