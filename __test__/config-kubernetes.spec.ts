import { readFileSync } from 'node:fs'
import test from 'ava'
import { formatDiagnostic, loadConfigFile, loadConfigText, type Diagnostic, type LoadResult } from '../ts/config/index.js'
import { DOCUMENTED_HTTP2_DEFAULTS } from './helpers/defaults.js'

const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url)
const SEED = readFileSync(fixture('seed-ingress.yaml'), 'utf8')
const SEED_FULL = readFileSync(fixture('seed-ingress-full.yaml'), 'utf8')

const errors = (r: LoadResult): Diagnostic[] => r.diagnostics.filter((d) => d.severity === 'error')
const warnings = (r: LoadResult): Diagnostic[] => r.diagnostics.filter((d) => d.severity === 'warning')
const endpointsOf = (r: LoadResult, service: string) =>
  r.config?.services.find((s) => s.name === service)?.endpoints.map((e) => e.address)

/** A minimal Ingress routing `/` of `host` to `service:port`. */
function ingress(name: string, backend: string, extra = ''): string {
  const [service, port] = backend.split(':')
  const portField = /^\d+$/.test(port ?? '') ? `number: ${port}` : `name: ${port}`
  return `apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: ${name}
${extra}spec:
  rules:
  - http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: ${service}
            port:
              ${portField}
`
}

const RATE_LIMITER = `
---
apiVersion: linkerd.io/v1alpha2
kind: RateLimiter
metadata:
  name: limit-service-a
spec:
  targetRef:
    kind: Service
    name: service-a
  limit: 100
`

test('seed Ingress alone loads with warnings for both backends', (t) => {
  const r = loadConfigText(SEED, { file: 'seed.yaml' })
  t.deepEqual(errors(r), [])
  t.not(r.config, null)
  const config = r.config!
  t.is(config.listeners.length, 1)
  t.like(config.listeners[0], { name: 'listener-0', address: '127.0.0.1:4140' })
  t.deepEqual(config.listeners[0]?.routes.map((x) => [x.name, x.hosts, x.path, x.service]), [
    ['ingress-0-0', ['service-a.example.com'], { type: 'Prefix', value: '/' }, 'service-a:80'],
    ['ingress-1-0', ['service-b.example.com'], { type: 'Prefix', value: '/' }, 'service-b:80'],
  ])
  t.deepEqual(config.services.map((s) => [s.name, s.endpoints, s.balancer.kind]), [
    ['service-a:80', [], 'round-robin'],
    ['service-b:80', [], 'round-robin'],
  ])
  t.deepEqual(warnings(r).map(formatDiagnostic), [
    'seed.yaml:15:11: warning: service "service-a:80" has no endpoints in this file (no Service "service-a"); routes to it answer 503 no-endpoints (add Service "service-a" and its EndpointSlices to the file)',
    'seed.yaml:25:11: warning: service "service-b:80" has no endpoints in this file (no Service "service-b"); routes to it answer 503 no-endpoints (add Service "service-b" and its EndpointSlices to the file)',
  ])
})

test('Kubernetes-derived listeners and services get the HTTP/2 and protocol defaults', (t) => {
  const config = loadConfigText(SEED).config!
  t.deepEqual(config.listeners[0]?.http2, DOCUMENTED_HTTP2_DEFAULTS)
  t.deepEqual(config.services.map((s) => [s.name, s.protocol, s.maxStreamsPerConnection]), [
    ['service-a:80', 'http1', 100],
    ['service-b:80', 'http1', 100],
  ])
})

/** A Service `name` with one port 80 (named "http"), with `appProtocol` when given. */
function serviceWith(name: string, appProtocol?: string, extraPorts = ''): string {
  const app = appProtocol === undefined ? '' : `, appProtocol: ${JSON.stringify(appProtocol)}`
  return `apiVersion: v1
kind: Service
metadata: { name: ${name} }
spec: { ports: [{ name: http, port: 80${app} }${extraPorts}] }
`
}

test('appProtocol of the Service port selects the upstream protocol', (t) => {
  const cases: Array<[string, string | undefined, string]> = [
    ['h2c', 'kubernetes.io/h2c', 'http2'],
    ['grpc', 'grpc', 'http2'],
    ['http', 'http', 'http1'],
    ['ws', 'kubernetes.io/ws', 'http1'],
    ['none', undefined, 'http1'],
  ]
  const text = cases.flatMap(([name, app]) => [ingress(`ing-${name}`, `${name}:80`), serviceWith(name, app)]).join('---\n')
  const r = loadConfigText(text)
  t.deepEqual(errors(r), [])
  // Known values (and none) are not warned about.
  t.deepEqual(warnings(r).filter((d) => d.message.includes('appProtocol')), [])
  t.deepEqual(r.config?.services.map((s) => [s.name, s.protocol]), cases.map(([name, , protocol]) => [`${name}:80`, protocol]))
})

test('an unknown appProtocol is a warning naming the port and the value; http1 is used', (t) => {
  // Reached by number and by name: two model services, one warning for the one port. The
  // unused port's appProtocol is not reported (only that the port is unused).
  const text = [
    ingress('by-number', 'web:80'),
    ingress('by-name', 'web:http'),
    serviceWith('web', 'kubernetes.io/wss', ', { name: admin, port: 9090, appProtocol: whatever }'),
  ].join('---\n')
  const r = loadConfigText(text, { file: 'k.yaml' })
  t.deepEqual(errors(r), [])
  t.deepEqual(r.config?.services.map((s) => [s.name, s.protocol]), [['web:80', 'http1'], ['web:http', 'http1']])
  const line = text.split('\n').findIndex((l) => l.includes('appProtocol')) + 1
  const column = (text.split('\n')[line - 1] ?? '').indexOf('"kubernetes.io/wss"') + 1
  const appWarnings = warnings(r).filter((d) => d.message.includes('appProtocol'))
  t.deepEqual(appWarnings.map(formatDiagnostic), [
    `k.yaml:${line}:${column}: warning: Service "web" port 80 ("http"): appProtocol "kubernetes.io/wss" is not known; using http1 (known values: kubernetes.io/h2c, grpc, http, kubernetes.io/ws)`,
  ])
  t.true(warnings(r).some((d) => d.message === 'Service port web:9090 ("admin") is not used by any Ingress backend'))
})

test('appProtocol must be a string', (t) => {
  const r = loadConfigText([ingress('ing', 'web:80'), serviceWith('web').replace('port: 80', 'port: 80, appProtocol: 2')].join('---\n'))
  t.is(r.config, null)
  t.is(errors(r)[0]?.message, '"appProtocol" in Service port must be a string, got number 2')
})

test('the seed RateLimiter beside the seed Ingress alone limits the services its backends make', (t) => {
  const r = loadConfigText(`${SEED}\n---\n${readFileSync(fixture('seed-ratelimiter.yaml'), 'utf8')}`, { file: 'seed.yaml' })
  t.deepEqual(errors(r), [])
  t.false(warnings(r).some((d) => d.message.startsWith('RateLimiter')))
  t.deepEqual(
    r.config!.services.map((s) => [s.name, s.rateLimits.map((l) => [l.name, l.rate, l.burst])]),
    [
      ['service-a:80', [['default', 100, 10]]],
      ['service-b:80', [['default', 100, 10]]],
    ],
  )
})

test('a RateLimiter of another shape than the seed\'s is an error naming the fields it takes', (t) => {
  const r = loadConfigText(SEED + RATE_LIMITER, { file: 'seed.yaml' })
  const line = (SEED + RATE_LIMITER).split('\n').indexOf('  targetRef:') + 1
  t.like(errors(r)[0], { line, column: 3, message: 'unknown field "targetRef" in RateLimiter spec', hint: 'valid fields: limits, global' })
})

test('full seed: Services and EndpointSlices resolve to endpoints', async (t) => {
  const r = await loadConfigFile(fileURLPath(fixture('seed-ingress-full.yaml')))
  t.deepEqual(r.diagnostics, [])
  // Named targetPort through two slices; the not-ready 127.0.0.2 is left out.
  t.deepEqual(endpointsOf(r, 'service-a:80'), ['127.0.0.1:18081', '127.0.0.1:18083'])
  // Numeric targetPort is the endpoint port.
  t.deepEqual(endpointsOf(r, 'service-b:80'), ['127.0.0.1:18082'])
  t.deepEqual(r.summary, { listeners: 1, routes: 2, services: 2, endpoints: 3 })
  t.true(r.config!.services.every((s) => s.endpoints.every((e) => e.weight === 1) && s.balancer.kind === 'round-robin'))
})

test('placeholder ports can be rewritten', (t) => {
  const r = loadConfigText(SEED_FULL.replaceAll('18081', '30001').replaceAll('18082', '30002'))
  t.deepEqual(endpointsOf(r, 'service-a:80'), ['127.0.0.1:30001', '127.0.0.1:18083'])
  t.deepEqual(endpointsOf(r, 'service-b:80'), ['127.0.0.1:30002'])
})

test('backend by port name; unnamed single port; IPv6 slices; missing ready condition counts as ready', (t) => {
  const text = `${ingress('ing', 'web:http')}---
apiVersion: v1
kind: Service
metadata: { name: web }
spec: { ports: [{ name: http, port: 80, targetPort: web-port }] }
---
${ingress('ing2', 'api:8080')}---
apiVersion: v1
kind: Service
metadata: { name: api }
spec: { ports: [{ port: 8080 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-1, labels: { kubernetes.io/service-name: web } }
addressType: IPv6
ports: [{ name: http, port: 9000 }]
endpoints: [{ addresses: ["::1"] }, { addresses: ["fe80::2"], conditions: { ready: false } }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: api-1, labels: { kubernetes.io/service-name: api } }
addressType: IPv4
ports: [{ port: 8080 }]
endpoints: [{ addresses: [10.0.0.1, 10.0.0.2], conditions: { ready: true } }]
`
  const r = loadConfigText(text)
  t.deepEqual(errors(r), [])
  t.deepEqual(endpointsOf(r, 'web:http'), ['[::1]:9000'])
  t.deepEqual(endpointsOf(r, 'api:8080'), ['10.0.0.1:8080', '10.0.0.2:8080'])
})

test('Service without a matching port is an error listing its ports', (t) => {
  const r = loadConfigText(`${ingress('ing', 'web:81')}---
apiVersion: v1
kind: Service
metadata: { name: web }
spec: { ports: [{ name: http, port: 80 }, { port: 9090, name: metrics }] }
`)
  t.is(r.config, null)
  t.like(errors(r)[0], { line: 15, column: 23, message: 'Service "web" has no port 81', hint: 'ports of Service "web": 80 ("http"), 9090 ("metrics")' })
})

test('unused Service ports and Services without slices are warnings', (t) => {
  const r = loadConfigText(`${ingress('ing', 'web:80')}---
apiVersion: v1
kind: Service
metadata: { name: web }
spec: { ports: [{ name: http, port: 80 }, { port: 9090, name: metrics }] }
`)
  t.not(r.config, null)
  t.deepEqual(warnings(r).map((d) => d.message), [
    'service "web:80" has no endpoints in this file (no EndpointSlice for Service "web"); routes to it answer 503 no-endpoints',
    'Service port web:9090 ("metrics") is not used by any Ingress backend',
  ])
})

test('slices whose endpoints are all not ready leave the service empty, with a warning', (t) => {
  const r = loadConfigText(`${ingress('ing', 'web:80')}---
apiVersion: v1
kind: Service
metadata: { name: web }
spec: { ports: [{ port: 80, targetPort: 8080 }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: web-1, labels: { kubernetes.io/service-name: web } }
addressType: IPv4
ports: [{ port: 8080 }]
endpoints: [{ addresses: [10.0.0.1], conditions: { ready: false } }]
`)
  t.deepEqual(endpointsOf(r, 'web:80'), [])
  t.regex(warnings(r)[0]?.message ?? '', /no ready endpoints/)
})

test('Ingresses of another class are skipped; ours and no class are served', (t) => {
  const nginx = ingress('other', 'x:80', '  annotations: { kubernetes.io/ingress.class: nginx }\n')
  const viaSpec = ingress('spec-class', 'y:80').replace('spec:\n', 'spec:\n  ingressClassName: traefik\n')
  const ours = ingress('ours', 'z:80').replace('spec:\n', 'spec:\n  ingressClassName: meshproxy\n')
  const r = loadConfigText([nginx, viaSpec, ours, ingress('none', 'w:80')].join('---\n'))
  t.not(r.config, null)
  t.deepEqual(r.config?.listeners[0]?.routes.map((x) => x.name), ['ours-0-0', 'none-0-0'])
  const skipped = warnings(r).filter((d) => d.message.includes('not served by meshproxy'))
  t.deepEqual(skipped.map((d) => d.message), [
    'Ingress "other" has class "nginx", which is not served by meshproxy; skipped',
    'Ingress "spec-class" has class "traefik", which is not served by meshproxy; skipped',
  ])
})

test('defaultBackend becomes a catch-all route after the other routes', (t) => {
  const text = `apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: ing }
spec:
  defaultBackend: { service: { name: fallback, port: { number: 80 } } }
  rules:
  - host: A.example.com
    http:
      paths:
      - { path: /api/, pathType: Exact, backend: { service: { name: api, port: { number: 80 } } } }
      - { pathType: ImplementationSpecific, backend: { service: { name: api, port: { number: 80 } } } }
---
${ingress('second', 'web:80')}`
  const r = loadConfigText(text)
  t.deepEqual(errors(r), [])
  const routes = r.config!.listeners[0]!.routes
  t.deepEqual(routes.map((x) => [x.name, x.hosts, x.path.type, x.path.value, x.service]), [
    ['ing-0-0', ['a.example.com'], 'Exact', '/api/', 'api:80'],
    ['ing-0-1', ['a.example.com'], 'Prefix', '/', 'api:80'],
    ['second-0-0', [], 'Prefix', '/', 'web:80'],
    ['ing-default', [], 'Prefix', '/', 'fallback:80'],
  ])
  t.deepEqual(r.config!.services.map((s) => s.name), ['api:80', 'fallback:80', 'web:80'])
})

test('Ingress routes join the first native listener; native routes can use Ingress services', (t) => {
  const text = `${ingress('ing', 'web:80')}---
listeners:
  - name: main
    address: 0.0.0.0:8080
    routes: [{ name: native, match: { path: /x }, service: "web:80" }]
  - name: second
    address: 0.0.0.0:8081
    routes: [{ service: "web:80" }]
`
  const r = loadConfigText(text)
  t.deepEqual(errors(r), [])
  t.deepEqual(r.config?.listeners.map((l) => [l.name, l.routes.map((x) => x.name)]), [
    ['main', ['native', 'ing-0-0']],
    ['second', ['second-route-0']],
  ])
})

test('malformed Ingress fields are errors with positions', (t) => {
  const text = `apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: bad }
spec:
  rules:
  - host: "foo.com:80"
    http:
      paths:
      - { path: /, backend: { service: { name: a, port: { number: 80 } } } }
      - { path: /, pathType: Regex, backend: { service: { name: a, port: { number: 80 } } } }
      - { path: x, pathType: Prefix, backend: { service: { name: a, port: { number: 80, name: http } } } }
`
  const r = loadConfigText(text)
  t.is(r.config, null)
  t.deepEqual(errors(r).map((d) => `${d.line}:${d.column} ${d.message}`), [
    '6:11 invalid Ingress host: host "foo.com:80" must not include a port',
    '9:9 Ingress path is missing required field "pathType"',
    '10:30 unknown pathType "Regex"',
    '11:17 invalid Ingress path: path "x" does not start with "/"',
    '11:75 Ingress backend service port needs exactly one of "number" and "name"',
  ])
})

test('kubernetes documents of unsupported versions, kinds and lists', (t) => {
  const text = `apiVersion: extensions/v1beta1
kind: Ingress
metadata: { name: old }
---
apiVersion: v1
kind: ConfigMap
metadata: { name: cm }
---
apiVersion: v1
kind: List
items:
- ${ingress('listed', 'web:80').trimEnd().replaceAll('\n', '\n  ')}
`
  const r = loadConfigText(text)
  t.deepEqual(errors(r), [])
  const msgs = warnings(r).map((d) => d.message)
  t.true(msgs.includes('Ingress in extensions/v1beta1 is not supported; skipped'))
  t.true(msgs.includes('ConfigMap is not supported yet; skipped'))
  t.deepEqual(r.config?.listeners[0]?.routes.map((x) => x.name), ['listed-0-0'])
})

function fileURLPath(url: URL): string {
  return decodeURIComponent(url.pathname)
}
