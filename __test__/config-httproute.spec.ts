/**
 * Gateway API HTTPRoute (and Linkerd's policy.linkerd.io/v1beta3 of the same shape) loads as
 * written: hostnames, path/header/method matches, weighted backendRefs, timeouts.request, and
 * Linkerd's annotations on the route; what is not implemented yet is refused at its position.
 * One test sends real traffic through the routes.
 */
import test from 'ava'
import { formatDiagnostic, loadConfigText } from '../ts/config/index.js'
import { startBackend } from './helpers/backend.js'
import { request } from './helpers/http.js'
import { startProxy } from './helpers/proxy.js'

/** A Service `name` with one port 80 → `port` on 127.0.0.1, and its EndpointSlice. */
const service = (name: string, port: number): string => `---
apiVersion: v1
kind: Service
metadata: { name: ${name} }
spec:
  ports: [{ name: http, port: 80, targetPort: http }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: ${name}-1, labels: { kubernetes.io/service-name: ${name} } }
ports: [{ name: http, port: ${port} }]
endpoints: [{ addresses: ["127.0.0.1"] }]
`

const ROUTE = (apiVersion = 'gateway.networking.k8s.io/v1') => `apiVersion: ${apiVersion}
kind: HTTPRoute
metadata:
  name: shop
  annotations:
    retry.linkerd.io/http: 5xx
spec:
  parentRefs: [{ name: edge }]
  hostnames: [shop.example.com]
  rules:
  - matches:
    - path: { type: PathPrefix, value: /api }
      headers: [{ name: x-beta, value: "1" }]
      method: GET
    backendRefs: [{ name: beta, port: 80 }]
  - matches:
    - path: { type: PathPrefix, value: /api }
    backendRefs:
    - { name: stable, port: 80, weight: 3 }
    - { name: beta, port: 80, weight: 1 }
    timeouts: { request: 5s }
  - backendRefs: [{ name: stable, port: 80 }]
`

test('an HTTPRoute becomes routes: matches, weighted backendRefs, timeouts, route annotations', (t) => {
  for (const api of ['gateway.networking.k8s.io/v1', 'policy.linkerd.io/v1beta3']) {
    const r = loadConfigText(`${ROUTE(api)}${service('stable', 9001)}${service('beta', 9002)}`, { file: 'h.yaml' })
    t.deepEqual(r.diagnostics.map(formatDiagnostic), [], api)
    const routes = r.config!.listeners[0]!.routes
    t.deepEqual(
      routes.map((x) => [x.name, x.hosts, x.path, x.headers, x.methods, x.service, x.backends, x.responseHeaderTimeoutMs, x.retry?.http]),
      [
        ['shop-0-0', ['shop.example.com'], { type: 'Prefix', value: '/api' }, [{ name: 'x-beta', value: '1' }], ['GET'], 'beta:80', [], 15000, '500-599'],
        ['shop-1-0', ['shop.example.com'], { type: 'Prefix', value: '/api' }, [], [], 'stable:80', [{ service: 'stable:80', weight: 3 }, { service: 'beta:80', weight: 1 }], 5000, '500-599'],
        ['shop-2-0', ['shop.example.com'], { type: 'Prefix', value: '/' }, [], [], 'stable:80', [], 15000, '500-599'],
      ],
      api,
    )
  }
})

test('real traffic through HTTPRoute rules: header pin, weighted split, catch-all', async (t) => {
  const stable = await startBackend(t, 'stable')
  const beta = await startBackend(t, 'beta')
  const r = loadConfigText(`${ROUTE()}${service('stable', stable.port)}${service('beta', beta.port)}`, { listenOverride: '127.0.0.1:0', defaultAdmin: null })
  const { port } = await startProxy(t, r.config!)
  const host = 'shop.example.com'
  t.is((await request(port, { path: '/api/x', headers: { host, 'x-beta': '1' } })).body, 'beta')
  t.is((await request(port, { path: '/', headers: { host } })).body, 'stable')
  const n = 400
  const seen = { stable: 0, beta: 0 } as Record<string, number>
  for (let i = 0; i < n; i++) seen[(await request(port, { path: '/api/x', headers: { host } })).body]! += 1
  t.true(Math.abs(seen.beta! / n - 0.25) < 0.1, `beta's share of the 3:1 split: ${JSON.stringify(seen)}`)
  t.is((await request(port, { path: '/', headers: { host: 'other.example.com' } })).status, 404)
})

test('timeouts.backendRequest bounds each attempt of a retried route, or the one attempt of a route without retries', (t) => {
  const load = (text: string) => loadConfigText(`${text}${service('stable', 9001)}${service('beta', 9002)}`).config!.listeners[0]!.routes[1]!
  const retried = load(ROUTE().replace('timeouts: { request: 5s }', 'timeouts: { request: 5s, backendRequest: 300ms }'))
  t.deepEqual([retried.responseHeaderTimeoutMs, retried.retry?.timeoutMs], [5000, 300])
  const once = load(ROUTE().replace('    retry.linkerd.io/http: 5xx\n', '    example.com/x: y\n').replace('timeouts: { request: 5s }', 'timeouts: { backendRequest: 300ms }'))
  t.deepEqual([once.responseHeaderTimeoutMs, once.retry], [300, null])
})

test('what is not supported yet, and a backendRequest over the request timeout, are refused at their positions', (t) => {
  const errors = (text: string): string[] =>
    loadConfigText(text, { file: 'h.yaml' }).diagnostics.filter((d) => d.severity === 'error').map((d) => `${d.line}:${d.column} ${d.message}`)
  const base = ROUTE()
  t.deepEqual(errors(base.replace('method: GET', 'method: GET\n      queryParams: [{ name: a, value: b }]')), ['15:7 HTTPRoute "shop": queryParams matches are not supported yet'])
  t.deepEqual(errors(base.replace('{ type: PathPrefix, value: /api }\n      headers', '{ type: RegularExpression, value: "/a.*" }\n      headers')), ['12:21 HTTPRoute "shop": RegularExpression path matches are not supported'])
  t.deepEqual(errors(base.replace('  - backendRefs: [{ name: stable, port: 80 }]', '  - backendRefs: [{ name: stable, port: 80 }]\n    filters: [{ type: RequestHeaderModifier }]')), ['23:5 HTTPRoute "shop" rule 2: filters are not supported yet'])
  t.deepEqual(errors(base.replace('parentRefs: [{ name: edge }]', 'parentRefs: [{ name: stable, kind: Service, group: core }]')), ['8:38 HTTPRoute "shop": a Service parent (GAMMA) is not supported yet'])
  t.deepEqual(errors(base.replace('timeouts: { request: 5s }', 'timeouts: { request: 1s, backendRequest: 2s }')), ['21:46 HTTPRoute "shop" rule 1: timeouts.backendRequest (2000 ms) is longer than timeouts.request (1000 ms)'])
})
