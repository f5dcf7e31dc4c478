/**
 * Linkerd's policy annotations on a Kubernetes Service load as Linkerd reads them: failure accrual
 * on the service, retries and the request and idle timeouts on every route to it (an HTTPRoute's
 * own annotations override the Service's); bad values are errors
 * with their position, other `*.linkerd.io` annotations warnings. One test sends real traffic
 * through a proxy built from such manifests.
 */
import test from 'ava'
import { formatDiagnostic, loadConfigText, type LoadResult } from '../ts/config/index.js'
import { startBackend, type Handler } from './helpers/backend.js'
import { request } from './helpers/http.js'
import { startProxy } from './helpers/proxy.js'

/** An Ingress to Service `web` port 80, the Service with `annotations`, and its EndpointSlice. */
function manifests(annotations: string, endpoints: Array<{ ip: string; port: number }> = [{ ip: '10.0.0.1', port: 8080 }]): string {
  const ports = [...new Set(endpoints.map((e) => e.port))]
  return `apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
spec:
  rules:
  - http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: web
            port:
              number: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
${annotations.replace(/^/gm, '    ')}
spec:
  ports:
  - name: http
    port: 80
    targetPort: http
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels:
    kubernetes.io/service-name: web
ports:
- name: http
  port: ${ports[0]}
endpoints:
${endpoints.map((e) => `- addresses: ["${e.ip}"]`).join('\n')}
`
}

const diagnostics = (r: LoadResult): string[] => r.diagnostics.map(formatDiagnostic)

test('failure accrual, retries and the request timeout come from the Service annotations', (t) => {
  const r = loadConfigText(
    manifests(`balancer.linkerd.io/failure-accrual: consecutive
balancer.linkerd.io/failure-accrual-consecutive-max-failures: "5"
balancer.linkerd.io/failure-accrual-consecutive-min-penalty: 2s
balancer.linkerd.io/failure-accrual-consecutive-max-penalty: 30s
balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio: "0.25"
retry.linkerd.io/http: 5xx,429
retry.linkerd.io/limit: "2"
retry.linkerd.io/timeout: 300ms
timeout.linkerd.io/request: 10s`),
    { file: 'k.yaml' },
  )
  t.deepEqual(diagnostics(r), [])
  const service = r.config!.services[0]!
  t.deepEqual(service.failureAccrual, { consecutiveFailures: 5, minPenaltyMs: 2000, maxPenaltyMs: 30000, jitterPercent: 25, maxEjectionPercent: 50 })
  const route = r.config!.listeners[0]!.routes[0]!
  t.is(route.responseHeaderTimeoutMs, 10000)
  t.deepEqual(route.retry, { limit: 2, http: '429,500-599', grpc: '', timeoutMs: 300, nonIdempotent: false, budgetPercent: 20, budgetMinPerSecond: 10 })
})

test('timeout.linkerd.io/response bounds each request to a backend: each attempt when the route retries, else the request when tighter', (t) => {
  const route = (annotations: string) => {
    const r = loadConfigText(manifests(annotations), { file: 'k.yaml' })
    t.deepEqual(diagnostics(r), [])
    return r.config!.listeners[0]!.routes[0]!
  }
  const once = route('timeout.linkerd.io/response: 2s')
  t.deepEqual([once.responseHeaderTimeoutMs, once.retry], [2000, null])
  t.is(route('timeout.linkerd.io/request: 1s\ntimeout.linkerd.io/response: 2s').responseHeaderTimeoutMs, 1000, 'the request timeout stays when tighter')
  const retried = route('retry.linkerd.io/http: 5xx\ntimeout.linkerd.io/request: 10s\ntimeout.linkerd.io/response: 500ms')
  t.deepEqual([retried.responseHeaderTimeoutMs, retried.retry?.timeoutMs], [10000, 500])
})

/** An HTTPRoute sending to Service `web` port 80: GAMMA (its parent is `web`) or Gateway-parented. */
function httpRoute(name: string, parent: 'gamma' | 'gateway', annotations = ''): string {
  const parentRef = parent === 'gamma' ? '{ name: web, kind: Service, group: core, port: 80 }' : '{ name: edge }'
  const meta = annotations === '' ? `{ name: ${name} }` : `{ name: ${name}, annotations: { ${annotations} } }`
  return `---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: ${meta}
spec:
  parentRefs: [${parentRef}]
  rules:
  - matches: [{ path: { type: PathPrefix, value: /api } }]
    backendRefs: [{ name: web, port: 80 }]
`
}

test('timeout.linkerd.io/idle sets the idleTimeout of the routes to the Service; an HTTPRoute\'s own overrides it', (t) => {
  const routes = (text: string): Array<[string, number]> => {
    const r = loadConfigText(text, { file: 'k.yaml' })
    t.deepEqual(r.diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic), [])
    return r.config!.listeners[0]!.routes.map((x) => [x.name, x.idleTimeoutMs])
  }
  t.deepEqual(routes(manifests('timeout.linkerd.io/idle: 30s')), [['web-0-0', 30000]], 'the Ingress route to the Service')
  t.deepEqual(routes(manifests('timeout.linkerd.io/request: 10s')), [['web-0-0', 0]], 'none without the annotation')
  // A Gateway-parented HTTPRoute to the Service: its own annotation, else the Service's.
  const gateway = routes(manifests('timeout.linkerd.io/idle: 30s') + httpRoute('own', 'gateway', 'timeout.linkerd.io/idle: 500ms') + httpRoute('inherits', 'gateway'))
  t.deepEqual(gateway.filter(([n]) => n !== 'web-0-0'), [['own-0-0', 500], ['inherits-0-0', 30000]])
  // A GAMMA route on the Service: the parent Service's, else the route's own.
  t.deepEqual(routes(manifests('timeout.linkerd.io/idle: 30s') + httpRoute('canary', 'gamma')), [['web-0-0/canary-0-0', 30000]])
  t.deepEqual(routes(manifests('timeout.linkerd.io/idle: 30s') + httpRoute('canary', 'gamma', 'timeout.linkerd.io/idle: 2s')), [['web-0-0/canary-0-0', 2000]])
  t.deepEqual(routes(manifests('retry.linkerd.io/http: 5xx') + httpRoute('canary', 'gamma', 'timeout.linkerd.io/idle: 2s')), [['web-0-0/canary-0-0', 2000]], 'on the route alone')
  // A bad value is an error at its position.
  const bad = loadConfigText(manifests('timeout.linkerd.io/idle: soon'), { file: 'k.yaml' })
  t.is(bad.config, null)
  t.deepEqual(
    bad.diagnostics.filter((d) => d.severity === 'error').map((d) => `${d.line}:${d.column} ${d.message}`),
    ['22:30 invalid annotation timeout.linkerd.io/idle: "soon" is not a duration'],
  )
})

test('Linkerd defaults: consecutive accrual alone is 7 failures; grpc retries alone retry no HTTP status', (t) => {
  const r = loadConfigText(manifests('balancer.linkerd.io/failure-accrual: consecutive\nretry.linkerd.io/grpc: unavailable'))
  t.deepEqual(diagnostics(r), [])
  t.is(r.config!.services[0]!.failureAccrual.consecutiveFailures, 7)
  t.like(r.config!.listeners[0]!.routes[0]!.retry, { limit: 1, http: '', grpc: 'unavailable' })
  const none = loadConfigText(manifests('example.com/owner: team-a'))
  t.is(none.config!.listeners[0]!.routes[0]!.retry, null)
  t.is(none.config!.services[0]!.failureAccrual.consecutiveFailures, 0)
})

test('bad annotation values are errors with their position; unknown Linkerd annotations are warnings', (t) => {
  const bad = loadConfigText(manifests('balancer.linkerd.io/failure-accrual: exponential\nretry.linkerd.io/http: 5xxx\nretry.linkerd.io/limit: "0"\ntimeout.linkerd.io/request: "10"'), { file: 'k.yaml' })
  t.is(bad.config, null)
  t.deepEqual(
    bad.diagnostics.filter((d) => d.severity === 'error').map((d) => `${d.line}:${d.column} ${d.message}`),
    [
      '22:42 invalid annotation balancer.linkerd.io/failure-accrual: "exponential" is not a failure-accrual kind',
      '23:28 invalid annotation retry.linkerd.io/http: "5xxx" is not a status, range or class',
      '24:29 invalid annotation retry.linkerd.io/limit: "0" is not a whole number between 1 and 10',
      '25:33 invalid annotation timeout.linkerd.io/request: duration "10" has no unit',
    ],
  )
  const odd = loadConfigText(
    manifests('linkerd.io/inject: enabled\nconfig.linkerd.io/skip-outbound-ports: "25"\nretry.linkerd.io/limit: "3"\nbalancer.linkerd.io/failure-accrual-consecutive-max-failures: "3"'),
    { file: 'k.yaml' },
  )
  t.not(odd.config, null)
  t.deepEqual(
    odd.diagnostics.map((d) => `${d.severity} ${d.line}:${d.column} ${d.message}`),
    [
      'warning 22:5 Service "web": annotation linkerd.io/inject is ignored (meshproxy does not use it)',
      'warning 23:5 Service "web": annotation config.linkerd.io/skip-outbound-ports is ignored (meshproxy does not use it)',
      'warning 24:5 Service "web": retry.linkerd.io/limit without retry.linkerd.io/http or retry.linkerd.io/grpc retries nothing',
      'warning 25:5 Service "web": balancer.linkerd.io/failure-accrual-consecutive-max-failures has no effect without balancer.linkerd.io/failure-accrual: consecutive',
    ],
  )
})

test('real traffic: retry.linkerd.io/http on the Service retries a 503 on the other endpoint', async (t) => {
  const answer = (status: number): Handler => (req, res, b) => {
    req.resume()
    req.on('end', () => {
      res.statusCode = status
      res.end(b.name)
    })
  }
  // Both endpoints on 127.0.0.1, on different ports: two slices, one port each.
  const bad = await startBackend(t, 'bad', answer(503))
  const good = await startBackend(t, 'good', answer(200))
  const base = manifests('retry.linkerd.io/http: 5xx', [{ ip: '127.0.0.1', port: bad.port }])
  const second = `---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-2
  labels:
    kubernetes.io/service-name: web
ports:
- name: http
  port: ${good.port}
endpoints:
- addresses: ["127.0.0.1"]
`
  const r = loadConfigText(base + second, { listenOverride: '127.0.0.1:0', defaultAdmin: null })
  t.deepEqual(r.diagnostics.filter((d) => d.severity === 'error'), [])
  t.deepEqual(r.config!.services[0]!.endpoints.map((e) => e.address).sort(), [bad.address, good.address].sort())
  const { port } = await startProxy(t, r.config!)
  for (let i = 0; i < 4; i++) t.is((await request(port, { path: '/' })).body, 'good')
  t.true(bad.requests.length >= 1, 'the bad endpoint was tried')
})
