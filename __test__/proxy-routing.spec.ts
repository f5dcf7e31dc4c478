/**
 * The routing table through the real proxy — host groups (exact, one-label wildcard,
 * default), Exact vs Prefix, longest prefix on segment boundaries, method and header matches,
 * dot segments, and 404 `no-route`.
 */
import test, { type ExecutionContext } from 'ava'
import { startBackends, type Backend } from './helpers/backend.js'
import { get, rawRequest, request } from './helpers/http.js'
import { startProxy } from './helpers/proxy.js'

const NAMES = ['api', 'wild', 'root', 'foo', 'fooExact', 'fooBar', 'post', 'canary', 'admin', 'public'] as const
type Name = (typeof NAMES)[number]

async function setup(t: ExecutionContext): Promise<{ port: number; backends: Record<Name, Backend> }> {
  const backends = (await startBackends(t, [...NAMES])) as Record<Name, Backend>
  const services = NAMES.map((n) => `  - name: ${n}\n    endpoints: [${backends[n].address}]`).join('\n')
  const { port } = await startProxy(
    t,
    `
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - name: root
        service: root
      - name: api
        match: { host: api.example.com }
        service: api
      - name: wild
        match: { host: "*.example.com" }
        service: wild
      - name: foo
        match: { path: /foo }
        service: foo
      - name: foo-exact
        match: { path: /foo, pathType: Exact }
        service: fooExact
      - name: foo-bar
        match: { path: /foo/bar }
        service: fooBar
      - name: post
        match: { path: /m, method: POST }
        service: post
      - name: canary
        match: { path: /h, headers: { X-Canary: "1" } }
        service: canary
      - name: admin
        match: { path: /admin }
        service: admin
      - name: public
        match: { path: /public }
        service: public
services:
${services}
`,
  )
  return { port, backends }
}

/** Which backend answered (its name is the body); fails on a non-200. */
async function who(t: ExecutionContext, port: number, path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<string> {
  const res = await request(port, { path, headers: { host: 'plain.test', ...headers }, method })
  t.is(res.status, 200, `${method} ${path} ${JSON.stringify(headers)}: ${res.body}`)
  return res.body
}

test('host: exact group beats wildcard beats default; wildcard is one label', async (t) => {
  const { port } = await setup(t)
  t.is(await who(t, port, '/', { host: 'api.example.com' }), 'api')
  t.is(await who(t, port, '/x', { host: 'API.Example.com:8080' }), 'api', 'host matched case-insensitively, port ignored')
  // The exact-host group wins even when the default group has a longer path match.
  t.is(await who(t, port, '/foo', { host: 'api.example.com' }), 'api')
  t.is(await who(t, port, '/', { host: 'web.example.com' }), 'wild')
  t.is(await who(t, port, '/foo/bar', { host: 'web.example.com' }), 'wild')
  t.is(await who(t, port, '/', { host: 'a.b.example.com' }), 'root', '*.example.com covers one label only')
  t.is(await who(t, port, '/', { host: 'example.com' }), 'root')
  t.is(await who(t, port, '/', { host: 'other.org' }), 'root')
})

test('path: Exact beats Prefix, longest prefix wins on segment boundaries', async (t) => {
  const { port } = await setup(t)
  t.is(await who(t, port, '/foo'), 'fooExact')
  t.is(await who(t, port, '/foo/'), 'foo', 'Exact /foo does not match /foo/')
  t.is(await who(t, port, '/foo/x'), 'foo')
  t.is(await who(t, port, '/foo/bar'), 'fooBar')
  t.is(await who(t, port, '/foo/bar/baz?q=1'), 'fooBar')
  t.is(await who(t, port, '/foobar'), 'root', '/foo does not match /foobar')
  t.is(await who(t, port, '/foo/barbaz'), 'foo', '/foo/bar does not match /foo/barbaz')
  t.is(await who(t, port, '/'), 'root')
})

test('method and header matches', async (t) => {
  const { port, backends } = await setup(t)
  t.is(await who(t, port, '/m', {}, 'POST'), 'post')
  t.is(await who(t, port, '/m', {}, 'GET'), 'root')
  t.is(await who(t, port, '/m/sub', {}, 'POST'), 'post')
  t.is(await who(t, port, '/h', { 'x-canary': '1' }), 'canary')
  t.is(await who(t, port, '/h', { 'x-canary': '2' }), 'root')
  t.is(await who(t, port, '/h'), 'root')
  t.is(backends.post.requests.length, 2)
  t.is(backends.canary.requests.length, 1)
})

test('dot segments are resolved before matching and forwarding: /a/../admin is routed and sent as /admin', async (t) => {
  const { port, backends } = await setup(t)
  // http.request sends the path exactly as given.
  t.is(await who(t, port, '/a/../admin'), 'admin')
  t.is(await who(t, port, '/public/../admin/x'), 'admin')
  t.is(await who(t, port, '/public/%2e%2e/admin'), 'admin')
  t.is(await who(t, port, '/public/%2E./admin'), 'admin')
  t.is(await who(t, port, '/public/./x'), 'public')
  // And over a raw socket, byte for byte.
  const raw = await rawRequest(port, 'GET /public/../admin HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n')
  t.is(raw.status, 200)
  t.is(raw.body, 'admin')
  t.is(backends.admin.requests.length, 5)
  // The backend gets the path the routes matched, query kept, so it cannot resolve the dot
  // segments into something else.
  t.deepEqual(
    backends.admin.requests.map((r) => r.url),
    ['/admin', '/admin/x', '/admin', '/admin', '/admin'],
  )
  t.is(await who(t, port, '/public//x/./y?a=/../b'), 'public')
  t.is(backends.public.requests.at(-1)?.url, '/public/x/y?a=/../b', 'empty and dot segments go; the query is not a path')
  t.is(await who(t, port, '/public/.well-known/%2ex'), 'public')
  t.is(backends.public.requests.at(-1)?.url, '/public/.well-known/%2ex', 'a normal path is forwarded byte for byte')
  t.deepEqual(
    backends.public.requests.map((r) => r.url),
    ['/public/x', '/public/x/y?a=/../b', '/public/.well-known/%2ex'],
  )
})

test('absolute-form request URI: routed by its authority, forwarded in origin-form', async (t) => {
  const { port, backends } = await setup(t)
  const raw = await rawRequest(port, 'GET http://api.example.com/foo/bar?x=1 HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n')
  t.is(raw.status, 200)
  t.is(raw.body, 'api')
  t.is(backends.api.requests[0]!.url, '/foo/bar?x=1')
  t.is(backends.api.requests[0]!.headers['host'], 'api.example.com')
})

test('no matching route: 404 with meshproxy-error: no-route, nothing forwarded', async (t) => {
  const backends = await startBackends(t, ['only'])
  const { port } = await startProxy(
    t,
    `
admin: null
listeners:
  - address: 127.0.0.1:0
    routes:
      - match: { host: only.example.com, path: /app }
        service: only
services:
  - name: only
    endpoints: [${backends.only!.address}]
`,
  )
  const miss = async (path: string, host: string): Promise<void> => {
    const res = await get(port, path, { host })
    t.is(res.status, 404, `${host}${path}`)
    t.is(res.headers['meshproxy-error'], 'no-route', `${host}${path}`)
  }
  await miss('/', 'only.example.com')
  await miss('/application', 'only.example.com')
  await miss('/app', 'other.example.com')
  await miss('/app', 'x.only.example.com')
  t.is(backends.only!.requests.length, 0)
  const hit = await get(port, '/app/x', { host: 'only.example.com' })
  t.is(hit.status, 200)
  t.is(hit.body, 'only')
})
