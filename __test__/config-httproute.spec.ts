/**
 * Gateway API HTTPRoute (and Linkerd's policy.linkerd.io/v1beta3 of the same shape) loads as
 * written: hostnames, path/header/method matches, weighted backendRefs, timeouts.request, and
 * Linkerd's annotations on the route; what is not implemented yet is refused at its position.
 * One test sends real traffic through the routes. GAMMA routes (a Service parent) are composed
 * with the Ingress paths and mesh routes that reach their Service; real traffic through them is
 * in proxy-gamma-routes.spec.ts.
 */
import test from 'ava'
import { formatDiagnostic, loadConfigText, type LoadResult, type RouteModel } from '../ts/config/index.js'
import { startBackend } from './helpers/backend.js'
import { request } from './helpers/http.js'
import { startProxy } from './helpers/proxy.js'
import { k8sService as service } from './helpers/k8s.js'


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
  // Linkerd's timeout.linkerd.io/response on the route is the same limit; backendRequest overrides it.
  const annotated = load(ROUTE().replace('    retry.linkerd.io/http: 5xx\n', '    retry.linkerd.io/http: 5xx\n    timeout.linkerd.io/response: 400ms\n'))
  t.deepEqual([annotated.responseHeaderTimeoutMs, annotated.retry?.timeoutMs], [5000, 400])
  const both = load(ROUTE().replace('    retry.linkerd.io/http: 5xx\n', '    retry.linkerd.io/http: 5xx\n    timeout.linkerd.io/response: 400ms\n').replace('timeouts: { request: 5s }', 'timeouts: { request: 5s, backendRequest: 300ms }'))
  t.is(both.retry?.timeoutMs, 300)
})

test('what is not supported, and a backendRequest over the request timeout, are refused at their positions', (t) => {
  const errors = (text: string): string[] =>
    loadConfigText(text, { file: 'h.yaml' }).diagnostics.filter((d) => d.severity === 'error').map((d) => `${d.line}:${d.column} ${d.message}`)
  const base = ROUTE()
  t.deepEqual(errors(base.replace('method: GET', 'method: GET\n      queryParams: [{ type: RegularExpression, name: a, value: "b.*" }]')), ['15:29 HTTPRoute "shop": only Exact query param matches are supported'])
  t.deepEqual(errors(base.replace('{ type: PathPrefix, value: /api }\n      headers', '{ type: RegularExpression, value: "/a.*" }\n      headers')), ['12:21 HTTPRoute "shop": RegularExpression path matches are not supported'])
  t.deepEqual(errors(base.replace('  - backendRefs: [{ name: stable, port: 80 }]', '  - backendRefs: [{ name: stable, port: 80 }]\n    filters: [{ type: RequestMirror, requestMirror: { backendRef: { name: stable, port: 80 } } }]')), ['23:23 HTTPRoute "shop" rule 2: the RequestMirror filter is not supported'])
  t.deepEqual(errors(base.replace('timeouts: { request: 5s }', 'timeouts: { request: 1s, backendRequest: 2s }')), ['21:46 HTTPRoute "shop" rule 1: timeouts.backendRequest (2000 ms) is longer than timeouts.request (1000 ms)'])
})

/** An Ingress sending host shop.example.com, paths `paths` (Prefix), to Service `backend` port 80. */
const ingress = (backend: string, paths: string[] = ['/'], defaultBackend?: string): string => `---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: web }
spec:${defaultBackend ? `\n  defaultBackend: { service: { name: ${defaultBackend}, port: { number: 80 } } }` : ''}
  rules:
  - host: shop.example.com
    http:
      paths:${paths.map((p) => `\n      - { path: ${p}, pathType: Prefix, backend: { service: { name: ${backend}, port: { number: 80 } } } }`).join('')}
`

/** A GAMMA route on Service shop: x-canary: 1 to shop-canary, /api/v2 to shop-v2, the rest 50/50. */
const GAMMA = `---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: canary }
spec:
  parentRefs: [{ name: shop, kind: Service, group: core, port: 80 }]
  rules:
  - matches: [{ headers: [{ name: x-canary, value: "1" }] }]
    backendRefs: [{ name: shop-canary, port: 80 }]
  - matches: [{ path: { type: PathPrefix, value: /api/v2 } }, { path: { type: PathPrefix, value: /admin } }]
    backendRefs: [{ name: shop-v2, port: 80 }]
    timeouts: { request: 2s }
  - backendRefs: [{ name: shop, port: 80, weight: 50 }, { name: shop-canary, port: 80, weight: 50 }]
`
const SERVICES = `${service('shop', 9001)}${service('shop-canary', 9002)}${service('shop-v2', 9003)}`
const summary = (routes: RouteModel[]) => routes.map((x) => [x.name, x.hosts, `${x.path.type} ${x.path.value}`, x.headers.map((h) => `${h.name}=${h.value}`), x.backends.length > 0 ? x.backends.map((b) => `${b.service}*${b.weight}`) : [x.service], x.responseHeaderTimeoutMs])
const errorsAndWarnings = (r: LoadResult) => r.diagnostics.map((d) => `${d.severity} ${d.line}:${d.column} ${d.message}`)

test('a GAMMA route replaces the Ingress route to its Service: one route per rule match, under the Ingress host and the narrower path', (t) => {
  const r = loadConfigText(`${ingress('shop', ['/api'])}${GAMMA}${SERVICES}`, { file: 'g.yaml' })
  t.deepEqual(errorsAndWarnings(r), [])
  t.deepEqual(summary(r.config!.listeners[0]!.routes), [
    ['web-0-0/canary-1-0', ['shop.example.com'], 'Prefix /api/v2', [], ['shop-v2:80'], 2000],
    ['web-0-0/canary-0-0', ['shop.example.com'], 'Prefix /api', ['x-canary=1'], ['shop-canary:80'], 15000],
    ['web-0-0/canary-2-0', ['shop.example.com'], 'Prefix /api', [], ['shop:80*50', 'shop-canary:80*50'], 15000],
  ], 'the /admin match shares no path with the Ingress path /api: left out')
  t.deepEqual(r.config!.services.map((s) => [s.name, s.endpoints.map((e) => e.address)]), [
    ['shop-canary:80', ['127.0.0.1:9002']],
    ['shop-v2:80', ['127.0.0.1:9003']],
    ['shop:80', ['127.0.0.1:9001']],
  ], 'a backendRef to the parent Service itself is its endpoints')
})

test('on an outbound listener a GAMMA route replaces the mesh route of its Service, for every name of the Service', (t) => {
  const r = loadConfigText(`listeners: [{ name: out, address: 127.0.0.1:0, mode: outbound }]\n${GAMMA}${SERVICES}`, { file: 'g.yaml' })
  t.deepEqual(errorsAndWarnings(r), [])
  const names = ['shop', 'shop.default', 'shop.default.svc', 'shop.default.svc.cluster.local']
  t.deepEqual(summary(r.config!.listeners[0]!.routes.filter((x) => x.name.startsWith('mesh-shop-80'))), [
    ['mesh-shop-80/canary-1-0', names, 'Prefix /api/v2', [], ['shop-v2:80'], 2000],
    ['mesh-shop-80/canary-1-1', names, 'Prefix /admin', [], ['shop-v2:80'], 2000],
    ['mesh-shop-80/canary-0-0', names, 'Prefix /', ['x-canary=1'], ['shop-canary:80'], 15000],
    ['mesh-shop-80/canary-2-0', names, 'Prefix /', [], ['shop:80*50', 'shop-canary:80*50'], 15000],
  ])
  t.deepEqual(r.config!.listeners[0]!.routes.filter((x) => !x.name.startsWith('mesh-shop-80')).map((x) => x.name), ['mesh-shop-canary-80', 'mesh-shop-v2-80'], 'the backends keep their own mesh routes')
})

test('a Gateway-parented HTTPRoute sends to the Service\'s endpoints: a GAMMA route on that Service does not apply to it', (t) => {
  const gateway = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: edge }
spec:
  parentRefs: [{ name: edge }]
  hostnames: [shop.example.com]
  rules:
  - backendRefs: [{ name: shop, port: 80 }]
`
  const r = loadConfigText(`${gateway}${GAMMA}${SERVICES}`, { file: 'g.yaml' })
  t.deepEqual(r.config!.listeners[0]!.routes.map((x) => [x.name, x.hosts, x.service, x.backends]), [['edge-0-0', ['shop.example.com'], 'shop:80', []]])
  t.deepEqual(errorsAndWarnings(r).slice(0, 1), ['warning 14:16 HTTPRoute "canary" is attached to Service "shop", but no Ingress sends to it and no listener has mode: outbound; it routes nothing'])
})

test('the retries and timeout of a GAMMA rule: the route\'s Linkerd annotations, else its parent Service\'s, and timeouts.request over both', (t) => {
  const annotated = SERVICES.replace('metadata: { name: shop }', 'metadata: { name: shop, annotations: { retry.linkerd.io/http: 5xx, timeout.linkerd.io/request: 7s } }')
  const routes = (gamma: string) => loadConfigText(`${ingress('shop')}${gamma}${annotated}`).config!.listeners[0]!.routes.map((x) => [x.name, x.retry?.http ?? null, x.responseHeaderTimeoutMs])
  t.deepEqual(routes(GAMMA), [
    ['web-0-0/canary-1-0', '500-599', 2000],
    ['web-0-0/canary-1-1', '500-599', 2000],
    ['web-0-0/canary-0-0', '500-599', 7000],
    ['web-0-0/canary-2-0', '500-599', 7000],
  ], 'the parent Service\'s annotations, not those of shop-canary or shop-v2')
  t.deepEqual(routes(GAMMA.replace('metadata: { name: canary }', 'metadata: { name: canary, annotations: { retry.linkerd.io/http: "503" } }')).map((x) => x[1]), ['503', '503', '503', '503'])
})

test('a GAMMA parentRef: group core or "", port or sectionName narrow it to one Service port, the namespace defaults to the route\'s', (t) => {
  const twoPorts = SERVICES.replace('ports: [{ name: http, port: 80, targetPort: http }]', 'ports: [{ name: http, port: 80, targetPort: http }, { name: admin, port: 81, targetPort: http }]')
  const ingress81 = ingress('shop').replace('port: { number: 80 }', 'port: { number: 81 }')
  const first = (parent: string, ing = ingress('shop')) => loadConfigText(`${ing}${GAMMA.replace('{ name: shop, kind: Service, group: core, port: 80 }', parent)}${twoPorts}`).config!.listeners[0]!.routes[0]!.name
  t.is(first('{ name: shop, kind: Service, group: "" }'), 'web-0-0/canary-1-0')
  t.is(first('{ name: shop, namespace: default, kind: Service, group: core }', ingress81), 'web-0-0/canary-1-0', 'no port: every port of the Service')
  t.is(first('{ name: shop, kind: Service, group: core, port: 80 }', ingress81), 'web-0-0', 'port 80 only: the Ingress to port 81 keeps its route')
  t.is(first('{ name: shop, kind: Service, group: core, sectionName: admin }', ingress81), 'web-0-0/canary-1-0')
})

test('GAMMA diagnostics: a wrong group, a missing Service or port, a consumer route, hostnames, an unreachable parent', (t) => {
  const diags = (text: string) => errorsAndWarnings(loadConfigText(text, { file: 'g.yaml' }))
  const withParent = (parent: string, extra = '') => `${ingress('shop')}${GAMMA.replace('{ name: shop, kind: Service, group: core, port: 80 }', parent).replace('spec:\n  parentRefs', `spec:${extra}\n  parentRefs`)}${SERVICES}`
  t.deepEqual(diags(withParent('{ name: shop, kind: Service }')).slice(0, 1), ['error 16:36 HTTPRoute "canary": parentRef kind Service with no group (gateway.networking.k8s.io by default) names no Service'])
  t.deepEqual(diags(withParent('{ name: shop, kind: Service, group: gateway.networking.k8s.io }')).slice(0, 1), ['error 16:52 HTTPRoute "canary": parentRef kind Service with group "gateway.networking.k8s.io" names no Service'])
  t.deepEqual(diags(withParent('{ name: shop, kind: Service, group: core, port: 8080 }')).slice(0, 1), ['error 16:64 HTTPRoute "canary": Service "shop" has no port 8080'])
  t.deepEqual(diags(withParent('{ name: shopp, kind: Service, group: core }')).slice(0, 1), ['warning 16:16 HTTPRoute "canary" is attached to Service "default/shopp", which is not in this file; it routes nothing for it'])
  t.deepEqual(diags(withParent('{ name: shop, namespace: shop, kind: Service, group: core }')).slice(0, 1), [
    'warning 16:41 HTTPRoute "canary" in namespace "default" is a consumer route of Service "shop/shop", which applies only to clients in namespace "default"; meshproxy cannot tell its clients\' namespaces apart, so it is skipped',
  ])
  t.deepEqual(diags(withParent('{ name: shop, kind: Service, group: core }', '\n  hostnames: [shop.example.com]')), ['warning 16:3 HTTPRoute "canary": hostnames are ignored for a Service parent'])
  const port = loadConfigText(withParent('{ name: shop, kind: Service, group: core, port: 8080 }'), { file: 'g.yaml' }).diagnostics[0]
  t.is(port?.hint, 'ports of Service "shop": 80 ("http")')
})

test('where the flat table cannot keep the two levels exact, check says so at the GAMMA route', (t) => {
  // An Ingress defaultBackend catches what the GAMMA rules leave, instead of a 404.
  const noCatchAll = GAMMA.replace(/  - backendRefs: \[\{ name: shop, port: 80, weight: 50 \}.*\n/, '')
  t.deepEqual(errorsAndWarnings(loadConfigText(`${ingress('shop', ['/'], 'shop-v2')}${noCatchAll}${SERVICES}`, { file: 'g.yaml' })), [
    'warning 13:1 requests through Ingress "web" path shop.example.com/ to Service "default/shop" port 80 ("http") that match no rule of its HTTPRoutes go to route "web-default" instead of being rejected (404)',
  ])
  // /api/v2 of the GAMMA route outranks the Ingress's own /api path to another Service.
  const other = ingress('shop', ['/']).replace('      paths:', '      paths:\n      - { path: /api, pathType: Prefix, backend: { service: { name: shop-v2, port: { number: 80 } } } }')
  t.deepEqual(errorsAndWarnings(loadConfigText(`${other}${GAMMA}${SERVICES}`, { file: 'g.yaml' })), [
    'warning 21:15 Ingress "web" path shop.example.com/ sends to Service "default/shop" port 80 ("http"), whose HTTPRoute "canary" match canary-1-0 is more specific than route "web-0-0": requests matching both go to "web-0-1/canary-1-0", though "web-0-0" outranks Ingress "web" path shop.example.com/',
  ])
  // A longer path outranks the matchers in GAMMA; under an Ingress path longer than both, only
  // the matchers are left to order them (a method match first).
  const inverted = `---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: canary }
spec:
  parentRefs: [{ name: shop, kind: Service, group: core }]
  rules:
  - matches: [{ path: { type: PathPrefix, value: /api/v2 }, headers: [{ name: x-a, value: "1" }] }]
    backendRefs: [{ name: shop-v2, port: 80 }]
  - matches: [{ path: { type: PathPrefix, value: /api }, method: GET }]
    backendRefs: [{ name: shop-canary, port: 80 }]
  - backendRefs: [{ name: shop, port: 80 }]
`
  t.deepEqual(errorsAndWarnings(loadConfigText(`${ingress('shop', ['/api/v2/x'])}${inverted}${SERVICES}`, { file: 'g.yaml' })), [
    'warning 20:15 HTTPRoute "canary": under Ingress "web" path shop.example.com/api/v2/x, requests matching both canary-0-0 and canary-1-0 go to canary-1-0 (its method, header or query matches rank higher), though canary-0-0 takes precedence (its path is longer or Exact)',
  ])
})

test('under an Ingress path narrower than its GAMMA matches, a match an earlier one covers is left out: it never serves there', (t) => {
  const r = loadConfigText(`${ingress('shop', ['/api/v2/x'])}${GAMMA}${SERVICES}`, { file: 'g.yaml' })
  t.deepEqual(errorsAndWarnings(r), [])
  t.deepEqual(summary(r.config!.listeners[0]!.routes), [['web-0-0/canary-1-0', ['shop.example.com'], 'Prefix /api/v2/x', [], ['shop-v2:80'], 2000]])
})

test('HTTPRoute filters the Gateway API refuses are errors at their positions', (t) => {
  const errors = (rule: string): string[] =>
    loadConfigText(`apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: { name: shop }\nspec:\n  rules:\n${rule}`, { file: 'h.yaml' })
      .diagnostics.filter((d) => d.severity === 'error').map((d) => `${d.line}:${d.column} ${d.message}`)
  t.deepEqual(errors('  - filters: [{ type: RequestRedirect, requestRedirect: { scheme: https } }]\n    backendRefs: [{ name: a, port: 80 }]'), [
    '7:5 HTTPRoute "shop" rule 0 redirects, so its backendRefs would never be used',
  ])
  t.deepEqual(errors('  - filters: [{ type: RequestRedirect, requestRedirect: { scheme: https } }, { type: URLRewrite, urlRewrite: { hostname: x.example } }]'), [
    '6:5 HTTPRoute "shop" rule 0 has both RequestRedirect and URLRewrite',
  ])
  t.deepEqual(
    errors('  - matches: [{ path: { type: Exact, value: /a } }]\n    filters: [{ type: URLRewrite, urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /b } } }]\n    backendRefs: [{ name: a, port: 80 }]'),
    ['6:15 HTTPRoute "shop" rule 0: ReplacePrefixMatch needs PathPrefix matches, and this one is Exact'],
  )
  t.deepEqual(errors('  - filters: [{ type: RequestHeaderModifier, requestHeaderModifier: { set: [{ name: X-A, value: "1" }, { name: x-a, value: "2" }] } }]\n    backendRefs: [{ name: a, port: 80 }]'), [
    '6:112 HTTPRoute "shop" rule 0: header "x-a" is listed twice',
  ])
  t.deepEqual(errors('  - filters: [{ type: URLRewrite, urlRewrite: { hostname: x.example } }, { type: URLRewrite, urlRewrite: { hostname: y.example } }]\n    backendRefs: [{ name: a, port: 80 }]'), [
    '6:82 HTTPRoute "shop" rule 0: filter URLRewrite is given twice',
  ])
  t.deepEqual(errors('  - backendRefs: [{ name: a, port: 80, filters: [{ type: RequestHeaderModifier, requestHeaderModifier: { remove: [x] } }] }]'), [
    '6:40 HTTPRoute "shop" rule 0: filters on a backendRef are not supported',
  ])
})
