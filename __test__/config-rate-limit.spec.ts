/**
 * Rate limits in the config: the native `rateLimits` of routes and services (keys, overrides,
 * the burst's default, errors at their positions), the seed's `RateLimiter` and Linkerd's
 * `HTTPLocalRateLimitPolicy` onto the services they name, with warnings for what cannot apply.
 */
import { readFileSync } from 'node:fs'
import test from 'ava'
import { formatDiagnostic, loadConfigText } from '../ts/config/index.js'

const fixture = (name: string): string => readFileSync(new URL(`fixtures/${name}`, import.meta.url), 'utf8')
const OPTS = { file: 'c.yaml', defaultListen: '127.0.0.1:0', defaultAdmin: null }

test('native rateLimits: keys, overrides and the burst default (the rate) in the model', (t) => {
  const r = loadConfigText(
    `
listeners:
  - routes:
      - service: a
        rateLimits:
          - { name: total, rate: 100, burst: 10 }
          - { rate: 5, key: client, overrides: [{ value: 10.0.0.7, rate: 50 }] }
          - { rate: 5, key: { header: X-User }, maxKeys: 1000, global: null }
services:
  - name: a
    endpoints: [127.0.0.1:1]
    rateLimits: [{ rate: 7 }]
`,
    OPTS,
  )
  t.deepEqual(r.diagnostics.map(formatDiagnostic), [])
  t.deepEqual(r.config!.listeners[0]!.routes[0]!.rateLimits, [
    { name: 'total', rate: 100, burst: 10, key: 'none', header: null, overrides: [], maxKeys: 100000, global: null },
    { name: '', rate: 5, burst: 5, key: 'client', header: null, overrides: [{ value: '10.0.0.7', rate: 50, burst: 50 }], maxKeys: 100000, global: null },
    { name: '', rate: 5, burst: 5, key: 'header', header: 'x-user', overrides: [], maxKeys: 1000, global: null },
  ])
  t.deepEqual(r.config!.services[0]!.rateLimits, [{ name: '', rate: 7, burst: 7, key: 'none', header: null, overrides: [], maxKeys: 100000, global: null }])
})

test('native rateLimits: mistakes are errors at their positions with what is valid', (t) => {
  const r = loadConfigText(
    `
listeners:
  - routes:
      - service: a
        rateLimits:
          - { rate: 0 }
          - { rate: 5, key: bogus }
          - { rate: 5, overrides: [{ value: x, rate: 1 }] }
          - { rate: 5, key: client, overrides: [{ value: not-an-ip, rate: 1 }] }
          - { burst: 5 }
          - { rate: 5, brust: 6 }
services:
  - { name: a, endpoints: [127.0.0.1:1] }
`,
    OPTS,
  )
  t.deepEqual(r.diagnostics.map(formatDiagnostic), [
    'c.yaml:6:21: error: "rate" in rate limit of route "listener-0-route-0" must be between 1 and 1000000000, got 0',
    'c.yaml:7:29: error: unknown rate limit key "bogus" (valid keys: none, client, identity, { header: <name> })',
    'c.yaml:8:24: error: rate limit of route "listener-0-route-0": overrides need a key to match (add key: client, key: identity or key: { header: <name> })',
    'c.yaml:9:58: error: override "not-an-ip" is not an IP address (a limit keyed by client matches client IP addresses, e.g. 10.0.0.7)',
    'c.yaml:10:13: error: rate limit of route "listener-0-route-0" is missing required field "rate"',
    'c.yaml:11:24: error: unknown field "brust" in rate limit of route "listener-0-route-0" (valid fields: name, rate, burst, key, overrides, maxKeys, global)',
  ])
})

test('native rateLimits: global on Redis, its defaults in the model, mistakes at their positions', (t) => {
  const ok = loadConfigText(
    `
listeners:
  - routes:
      - service: a
        rateLimits:
          - { name: g, rate: 50, global: { redis: "redis://127.0.0.1:6379" } }
          - { name: h, rate: 50, key: client, global: { redis: "redis://:pw@redis.internal/2", failMode: closed, timeout: 200ms } }
services:
  - { name: a, endpoints: [127.0.0.1:1] }
`,
    OPTS,
  )
  t.deepEqual(ok.diagnostics.map(formatDiagnostic), [])
  t.deepEqual(
    ok.config!.listeners[0]!.routes[0]!.rateLimits.map((l) => l.global),
    [
      { redis: 'redis://127.0.0.1:6379', rls: null, domain: null, ca: null, cert: null, key: null, failMode: 'open', timeoutMs: 50 },
      { redis: 'redis://:pw@redis.internal/2', rls: null, domain: null, ca: null, cert: null, key: null, failMode: 'closed', timeoutMs: 200 },
    ],
  )
  const bad = loadConfigText(
    `
listeners:
  - routes:
      - service: a
        rateLimits:
          - { rate: 5, global: { redis: "unix:///run/redis.sock" } }
          - { rate: 5, global: { redis: "redis://10.0.0.5/x" } }
          - { rate: 5, global: { failMode: closed } }
          - { rate: 5, global: { redis: "redis://10.0.0.5", failMode: shut } }
          - { rate: 5, global: { redis: "redis://10.0.0.5", timeout: 0 } }
services:
  - { name: a, endpoints: [127.0.0.1:1] }
`,
    OPTS,
  )
  t.deepEqual(bad.diagnostics.map(formatDiagnostic), [
    'c.yaml:6:41: error: invalid "redis" in rate limit of route "listener-0-route-0" global: "unix:///run/redis.sock" is not a redis:// or rediss:// URL (e.g. redis://127.0.0.1:6379, redis://:password@redis.internal:6379/2 or rediss://redis.internal:6380 (TLS) (unix sockets are not supported))',
    'c.yaml:7:41: error: invalid "redis" in rate limit of route "listener-0-route-0" global: "redis://10.0.0.5/x": the path must be a database number (e.g. redis://127.0.0.1:6379, redis://:password@redis.internal:6379/2 or rediss://redis.internal:6380 (TLS))',
    'c.yaml:8:32: error: rate limit of route "listener-0-route-0" global is missing required field "redis" or "rls" (redis: redis://host:port (a shared Redis), or rls: host:port with domain: <name> (an Envoy rate limit service))',
    'c.yaml:9:71: error: unknown rate limit of route "listener-0-route-0" global failMode "shut" (valid fail modes: open, closed)',
    'c.yaml:10:70: error: "timeout" in rate limit of route "listener-0-route-0" global must be between 1ms and 10s, got 0ms (0 is not allowed here)',
  ])
})

test('native rateLimits: global through a rate limit service, in the model with its domain', (t) => {
  const r = loadConfigText(
    `
listeners:
  - routes:
      - service: a
        rateLimits:
          - { name: g, rate: 50, global: { rls: 127.0.0.1:8081, domain: mesh } }
          - { name: h, rate: 50, key: client, global: { rls: "http://ratelimit.infra:8081", domain: edge, failMode: closed, timeout: 200ms } }
          - { name: i, rate: 50, global: { rls: "https://ratelimit.infra:8443", domain: mesh } }
services:
  - { name: a, endpoints: [127.0.0.1:1] }
`,
    OPTS,
  )
  t.deepEqual(r.diagnostics.map(formatDiagnostic), [])
  t.deepEqual(
    r.config!.listeners[0]!.routes[0]!.rateLimits.map((l) => l.global),
    [
      { redis: null, rls: '127.0.0.1:8081', domain: 'mesh', ca: null, cert: null, key: null, failMode: 'open', timeoutMs: 50 },
      { redis: null, rls: 'http://ratelimit.infra:8081', domain: 'edge', ca: null, cert: null, key: null, failMode: 'closed', timeoutMs: 200 },
      { redis: null, rls: 'https://ratelimit.infra:8443', domain: 'mesh', ca: null, cert: null, key: null, failMode: 'open', timeoutMs: 50 },
    ],
  )
  const bad = loadConfigText(
    `
listeners:
  - routes:
      - service: a
        rateLimits:
          - { rate: 5, global: { redis: "redis://10.0.0.5", domain: mesh } }
          - { rate: 5, global: { rls: "https://10.0.0.5", domain: mesh } }
          - { rate: 5, global: { rls: "10.0.0.5:8081", domain: "" } }
services:
  - { name: a, endpoints: [127.0.0.1:1] }
`,
    OPTS,
  )
  t.deepEqual(bad.diagnostics.map(formatDiagnostic), [
    'c.yaml:6:61: error: rate limit of route "listener-0-route-0" global: "domain" is only used with "rls" (drop "domain", or write rls: host:port to use a rate limit service)',
    'c.yaml:7:39: error: invalid "rls" in rate limit of route "listener-0-route-0" global: "https://10.0.0.5" is not a rate limit service address (host:port or http://host:port (h2c), or https://host:port (TLS), e.g. 127.0.0.1:8081 or https://ratelimit.infra:8443)',
    'c.yaml:8:64: error: invalid "domain" in rate limit of route "listener-0-route-0" global: the domain is empty (the domain of the rate limit service\'s config, e.g. mesh)',
  ])
})

test('the seed RateLimiter loads verbatim onto the services built from the Services it names', (t) => {
  const r = loadConfigText(`${fixture('seed-ingress-full.yaml')}\n---\n${fixture('seed-ratelimiter.yaml')}`, OPTS)
  t.deepEqual(r.diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic), [])
  const limits = Object.fromEntries(r.config!.services.map((s) => [s.name, s.rateLimits]))
  const seed = [{ name: 'default', rate: 100, burst: 10, key: 'none', header: null, overrides: [], maxKeys: 100000, global: null }]
  t.deepEqual(limits, { 'service-a:80': seed, 'service-b:80': seed })
})

test('a RateLimiter with spec.global counts every limit on Redis; a limit\'s own global replaces it, global: null keeps it local', (t) => {
  const r = loadConfigText(
    `services:
  - { name: service-a, endpoints: [127.0.0.1:1] }
  - { name: service-b, endpoints: [127.0.0.1:2] }
  - { name: service-c, endpoints: [127.0.0.1:3] }
---
apiVersion: linkerd.io/v1alpha2
kind: RateLimiter
metadata:
  name: default
spec:
  global: { redis: "redis://:pw@10.0.0.5:6379", failMode: closed, timeout: 20ms }
  limits:
  - service: service-a
    rate: 100
    burst: 10
  - service: service-b
    rate: 100
    global: { redis: "redis://10.0.0.6" }
  - service: service-c
    rate: 100
    global: null
`,
    OPTS,
  )
  t.deepEqual(r.diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic), [])
  const shared = { redis: 'redis://:pw@10.0.0.5:6379', rls: null, domain: null, ca: null, cert: null, key: null, failMode: 'closed', timeoutMs: 20 }
  t.deepEqual(
    r.config!.services.map((s) => s.rateLimits.map((l) => [l.name, l.rate, l.burst, l.global])),
    [[['default', 100, 10, shared]], [['default', 100, 100, { redis: 'redis://10.0.0.6', rls: null, domain: null, ca: null, cert: null, key: null, failMode: 'open', timeoutMs: 50 }]], [['default', 100, 100, null]]],
  )
})

test('a RateLimiter\'s global mistakes are errors at their positions', (t) => {
  const r = loadConfigText(
    `services:
  - { name: service-a, endpoints: [127.0.0.1:1] }
---
apiVersion: linkerd.io/v1alpha2
kind: RateLimiter
metadata: { name: rl }
spec:
  global: { redis: "redis://10.0.0.5", failMode: shut, ttl: 1 }
  limits:
  - service: service-a
    rate: 100
    global: { redis: "redis://10.0.0.5", ca: ca.pem }
  - service: service-a
    rate: 100
    global: { failMode: open }
`,
    OPTS,
  )
  t.deepEqual(r.diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic), [
    'c.yaml:8:50: error: unknown RateLimiter spec global failMode "shut" (valid fail modes: open, closed)',
    'c.yaml:8:56: error: unknown field "ttl" in RateLimiter spec global (valid fields: redis, rls, domain, ca, cert, key, failMode, timeout)',
    'c.yaml:12:46: error: RateLimiter "rl" limit global: a CA bundle is only used with TLS, and "redis://10.0.0.5" is not a rediss:// URL (write rediss://host:port to reach Redis over TLS, or drop "ca")',
    'c.yaml:15:13: error: RateLimiter "rl" limit global is missing required field "redis" or "rls" (redis: redis://host:port (a shared Redis), or rls: host:port with domain: <name> (an Envoy rate limit service))',
  ])
  t.is(r.config, null)
})

test('a RateLimiter naming a Service not in the config is a warning at its name', (t) => {
  const r = loadConfigText(fixture('seed-ratelimiter.yaml'), OPTS)
  t.deepEqual(r.diagnostics.map(formatDiagnostic), [
    'c.yaml:7:14: warning: RateLimiter "default" limits Service "default/service-a", which is not in this config; it limits nothing (add the Service (with an Ingress or HTTPRoute that sends to it), or a native service of that name)',
    'c.yaml:10:14: warning: RateLimiter "default" limits Service "default/service-b", which is not in this config; it limits nothing (add the Service (with an Ingress or HTTPRoute that sends to it), or a native service of that name)',
  ])
  t.truthy(r.config)
})

test('a RateLimiter also limits a native service of the name it gives', (t) => {
  const r = loadConfigText(`services:\n  - { name: service-a, endpoints: [127.0.0.1:1] }\n---\n${fixture('seed-ratelimiter.yaml')}`, OPTS)
  t.deepEqual(r.config!.services[0]!.rateLimits.map((l) => [l.rate, l.burst]), [[100, 10]])
})

test('HTTPLocalRateLimitPolicy: total, a bucket per client identity with ServiceAccount overrides, Linkerd\'s burst, a Server target skipped', (t) => {
  const policy = `
apiVersion: policy.linkerd.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: { name: web-rl, namespace: shop }
spec:
  targetRef: { group: core, kind: Service, name: service-a, namespace: default }
  total: { requestsPerSecond: 100 }
  identity: { requestsPerSecond: 20 }
  overrides:
  - requestsPerSecond: 50
    clientRefs: [{ kind: ServiceAccount, namespace: default, name: special-client }, { kind: ServiceAccount, name: web }]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: { name: server-rl }
spec:
  targetRef: { group: policy.linkerd.io, kind: Server, name: web-http }
  total: { requestsPerSecond: 100 }
---
apiVersion: policy.linkerd.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: { name: only-overrides }
spec:
  targetRef: { group: core, kind: Service, name: service-b }
  overrides:
  - requestsPerSecond: 5
    clientRefs: [{ kind: ServiceAccount, name: batch }]
`
  const r = loadConfigText(`${fixture('seed-ingress-full.yaml')}\n---${policy}`, { ...OPTS, file: 'p.yaml' })
  t.deepEqual(r.diagnostics.filter((d) => d.severity === 'error'), [])
  const a = r.config!.services.find((s) => s.name === 'service-a:80')!
  t.deepEqual(a.rateLimits.map((l) => [l.name, l.rate, l.burst, l.key, l.overrides]), [
    ['total', 100, 100, 'none', []],
    ['identity', 20, 20, 'identity', [{ value: 'special-client.default', rate: 50, burst: 50 }, { value: 'web.shop', rate: 50, burst: 50 }]],
  ])
  // Overrides alone: other clients are not limited per identity.
  const b = r.config!.services.find((s) => s.name === 'service-b:80')!
  t.deepEqual(b.rateLimits.map((l) => [l.name, l.rate, l.key, l.overrides]), [
    ['identity', 1_000_000_000, 'identity', [{ value: 'batch.default', rate: 5, burst: 5 }]],
  ])
  const warnings = r.diagnostics.filter((d) => d.severity === 'warning').map(formatDiagnostic).filter((w) => w.includes('HTTPLocalRateLimitPolicy'))
  t.is(warnings.length, 1, warnings.join('\n'))
  t.regex(warnings[0]!, /^p\.yaml:\d+:\d+: warning: HTTPLocalRateLimitPolicy "server-rl" targets Server "web-http": meshproxy does not model Servers/)
})

test('HTTPLocalRateLimitPolicy errors: identity or an override over total, a clientRef that is not a ServiceAccount, a client in two overrides', (t) => {
  const policy = `
apiVersion: policy.linkerd.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: { name: bad }
spec:
  targetRef: { group: core, kind: Service, name: service-a }
  total: { requestsPerSecond: 10 }
  identity: { requestsPerSecond: 20 }
  overrides:
  - requestsPerSecond: 30
    clientRefs: [{ kind: ServiceAccount, name: a }]
  - requestsPerSecond: 5
    clientRefs: [{ kind: Pod, name: p }, { kind: ServiceAccount, name: a }]
`
  const r = loadConfigText(`${fixture('seed-ingress-full.yaml')}\n---${policy}`, { ...OPTS, file: 'p.yaml' })
  const errors = r.diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic)
  t.is(errors.length, 4, errors.join('\n'))
  t.regex(errors[0]!, /identity\.requestsPerSecond \(20\) is greater than total\.requestsPerSecond \(10\)/)
  t.regex(errors[1]!, /an override's requestsPerSecond \(30\) is greater than total\.requestsPerSecond \(10\)/)
  t.regex(errors[2]!, /clientRefs kind "Pod" is not supported/)
  t.regex(errors[3]!, /ServiceAccount default\/a is in two overrides/)
})

test('two rate limits of one name (written, or the default limit-<n>) are an error at the second', (t) => {
  const r = loadConfigText(
    `
services:
  - name: a
    endpoints: [127.0.0.1:1]
    rateLimits:
      - { rate: 1 }
      - { name: limit-1, rate: 2 }
`,
    OPTS,
  )
  t.deepEqual(r.diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic), [
    'c.yaml:7:17: error: service "a" has two rate limits named "limit-1" (each limit of a route or service needs its own name (its metrics label and RateLimit-Policy name))',
  ])
})
