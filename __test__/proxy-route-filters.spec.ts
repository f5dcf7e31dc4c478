/**
 * A route's filters through the real proxy, from the native YAML and from Gateway API HTTPRoute
 * filters as written: header changes on requests and responses, a URL rewrite of host and path,
 * a redirect answered without any backend, and query-parameter matches.
 */
import test from 'ava'
import { startBackend, type Handler } from './helpers/backend.js'
import { h2connect, h2request } from './helpers/h2.js'
import { request } from './helpers/http.js'
import { startProxy } from './helpers/proxy.js'
import { loadConfigText } from '../ts/index.js'
import { k8sService as service } from './helpers/k8s.js'

/** Echoes what arrived: method, target, host and the headers the test asks about. */
const echo: Handler = (req, res, backend) => {
  req.resume()
  req.on('end', () => {
    res.setHeader('x-backend', backend.name)
    res.setHeader('x-upstream-only', 'secret')
    res.setHeader('x-version', 'v1')
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ backend: backend.name, url: req.url, host: req.headers.host, headers: req.headers }))
  })
}

interface Echo {
  backend: string
  url: string
  host: string
  headers: Record<string, string | string[]>
}

const native = (app: string, debug: string): string => `
admin: null
listeners:
  - address: 127.0.0.1:0
    routes:
      - name: api
        match: { path: /api }
        service: app
        requestHeaders:
          set: { x-env: prod }
          add: { x-tag: added }
          remove: [x-internal, x-forwarded-for]
        responseHeaders:
          set: { x-version: v2 }
          add: { x-served-by: meshproxy }
          remove: [x-upstream-only]
        rewrite: { host: backend.internal, prefix: /v2 }
      - name: debug
        match: { path: /api, query: { debug: "on" } }
        service: debug
      - name: moved
        match: { path: /old }
        redirect: { scheme: https, host: new.example, prefix: /new, statusCode: 301 }
        responseHeaders: { set: { cache-control: no-store } }
      - name: maintenance
        match: { path: /shop, pathType: Exact }
        redirect: { path: /maintenance }
services:
  - { name: app, endpoints: [${app}] }
  - { name: debug, endpoints: [${debug}] }
`

test('header changes apply to requests and responses, after the proxy headers and over the upstream\'s', async (t) => {
  const app = await startBackend(t, 'app', echo)
  const debug = await startBackend(t, 'debug', echo)
  const { port } = await startProxy(t, native(app.address, debug.address))
  const res = await request(port, { path: '/api/users', headers: { host: 'shop.example', 'x-env': 'dev', 'x-tag': 'client', 'x-internal': '1' } })
  t.is(res.status, 200)
  const seen = JSON.parse(res.body) as Echo
  t.is(seen.headers['x-env'], 'prod', 'set replaces the client\'s value')
  t.is(seen.headers['x-tag'], 'client, added', 'add appends to it')
  t.is(seen.headers['x-internal'], undefined, 'remove drops it')
  t.is(seen.headers['x-forwarded-for'], undefined, 'the route has the last word over the proxy headers')
  t.is(seen.headers['x-forwarded-host'], 'shop.example', 'the proxy headers record the client\'s host, before the rewrite')
  t.is(res.headers['x-version'], 'v2')
  t.is(res.headers['x-served-by'], 'meshproxy')
  t.is(res.headers['x-upstream-only'], undefined)
})

test('a rewrite replaces the host and the matched prefix, keeping the query, over HTTP/1.1 and HTTP/2', async (t) => {
  const app = await startBackend(t, 'app', echo)
  const debug = await startBackend(t, 'debug', echo)
  const { port, address } = await startProxy(t, native(app.address, debug.address))
  const h1 = JSON.parse((await request(port, { path: '/api/users?page=2', headers: { host: 'shop.example' } })).body) as Echo
  t.deepEqual([h1.url, h1.host], ['/v2/users?page=2', 'backend.internal'])
  const root = JSON.parse((await request(port, { path: '/api', headers: { host: 'shop.example' } })).body) as Echo
  t.is(root.url, '/v2')
  const session = h2connect(t, address)
  const h2 = await h2request(session, { ':method': 'GET', ':path': '/api/a/b?x=1', ':authority': 'shop.example:8080' })
  const seen = JSON.parse(h2.body) as Echo
  t.deepEqual([h2.status, seen.url, seen.host], [200, '/v2/a/b?x=1', 'backend.internal'])
})

test('a redirect is answered by the proxy: no backend sees it, the query is kept, the route\'s response headers apply', async (t) => {
  const app = await startBackend(t, 'app', echo)
  const debug = await startBackend(t, 'debug', echo)
  const { port } = await startProxy(t, native(app.address, debug.address))
  const moved = await request(port, { path: '/old/page?id=7', headers: { host: 'shop.example:8080' } })
  t.is(moved.status, 301)
  t.is(moved.headers.location, 'https://new.example/new/page?id=7')
  t.is(moved.headers['cache-control'], 'no-store')
  t.is(moved.headers['meshproxy-error'], undefined, 'a redirect is not an error')
  t.is(moved.body, '')
  const kept = await request(port, { path: '/shop?x', headers: { host: 'shop.example:8080' } })
  t.deepEqual([kept.status, kept.headers.location], [302, 'http://shop.example:8080/maintenance?x'])
  t.is(app.requests.length + debug.requests.length, 0)
})

test('a query-parameter match picks its route; other values and other parameters do not', async (t) => {
  const app = await startBackend(t, 'app', echo)
  const debug = await startBackend(t, 'debug', echo)
  const { port } = await startProxy(t, native(app.address, debug.address))
  const backendOf = async (path: string) => (JSON.parse((await request(port, { path })).body) as Echo).backend
  t.is(await backendOf('/api/x?debug=on'), 'debug')
  t.is(await backendOf('/api/x?a=1&debug=%6Fn'), 'debug', 'compared decoded')
  t.is(await backendOf('/api/x?debug=off'), 'app')
  t.is(await backendOf('/api/x?debug=off&debug=on'), 'app', 'the first occurrence counts')
  t.is(await backendOf('/api/x'), 'app')
})

/** As the Gateway API documents these filters. */
const HTTP_ROUTE = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: shop }
spec:
  hostnames: [shop.example.com]
  rules:
  - matches:
    - path: { type: PathPrefix, value: /store }
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{ name: x-env, value: prod }]
        add: [{ name: x-tag, value: gateway }]
        remove: [x-internal]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{ name: x-served-by, value: meshproxy }]
    - type: URLRewrite
      urlRewrite:
        hostname: store.internal
        path: { type: ReplacePrefixMatch, replacePrefixMatch: /shop }
    backendRefs: [{ name: app, port: 80 }]
  - matches:
    - path: { type: PathPrefix, value: /store }
      queryParams: [{ type: Exact, name: beta, value: "1" }]
    backendRefs: [{ name: beta, port: 80 }]
  - matches:
    - path: { type: PathPrefix, value: /legacy }
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
        path: { type: ReplaceFullPath, replaceFullPath: /store }
        statusCode: 301
`

test('HTTPRoute filters and queryParams as the Gateway API writes them', async (t) => {
  const app = await startBackend(t, 'app', echo)
  const beta = await startBackend(t, 'beta', echo)
  const r = loadConfigText(`${HTTP_ROUTE}${service('app', app.port)}${service('beta', beta.port)}`, { listenOverride: '127.0.0.1:0', defaultAdmin: null })
  t.deepEqual(r.diagnostics, [])
  const { port } = await startProxy(t, r.config!)
  const host = 'shop.example.com'
  const res = await request(port, { path: '/store/cart?item=3', headers: { host, 'x-internal': '1' } })
  const seen = JSON.parse(res.body) as Echo
  t.deepEqual([seen.backend, seen.url, seen.host], ['app', '/shop/cart?item=3', 'store.internal'])
  t.deepEqual([seen.headers['x-env'], seen.headers['x-tag'], seen.headers['x-internal']], ['prod', 'gateway', undefined])
  t.is(res.headers['x-served-by'], 'meshproxy')
  t.is((JSON.parse((await request(port, { path: '/store/cart?beta=1', headers: { host } })).body) as Echo).backend, 'beta')
  const moved = await request(port, { path: '/legacy/a?b=2', headers: { host } })
  t.deepEqual([moved.status, moved.headers.location], [301, 'https://shop.example.com/store?b=2'])
  t.is(app.requests.length + beta.requests.length, 2)
})
