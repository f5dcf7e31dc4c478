/**
 * Authorization through the real proxy: clients on 127.0.0.1 against rules on their network
 * (denied by 127.0.0.0/8, allowed by it, or by a listener's default), the method, the path and
 * header values; a route's rules before its listener's; a denied request answered 403 `forbidden`
 * (gRPC: PERMISSION_DENIED) that never reaches a backend or counts against an endpoint; an IPv6
 * client on [::1]. Other source addresses (IPv4-mapped, other networks) are the Rust unit tests'
 * (filter/authz.rs).
 */
import http from 'node:http'
import test from 'ava'
import * as grpc from '@grpc/grpc-js'
import { startBackend } from './helpers/backend.js'
import { connectOnce, request } from './helpers/http.js'
import { load, startProxy } from './helpers/proxy.js'
import type { MeshProxyError } from '../ts/index.js'

const metricValue = (text: string, series: string): number => {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return line === undefined ? 0 : Number(line.slice(series.length + 1))
}

/**
 * A config of one listener, `name` on `address`, with `fields` (its authorization and routes, YAML
 * indented as a listener's fields), in front of service `app` at `appAddress`.
 */
function appYaml(appAddress: string, fields: string, { name = 'main', address = '127.0.0.1:0' } = {}): string {
  return `
admin: null
listeners:
  - name: ${name}
    address: ${address}${fields}
services:
  - { name: app, endpoints: [${appAddress}] }
`
}

test('a rule denying 127.0.0.0/8 answers 403 forbidden and the backend never sees the request; allowing it lets it through', async (t) => {
  const app = await startBackend(t, 'app')
  const { port, proxy } = await startProxy(
    t,
    appYaml(
      app.address,
      `
    authorization:
      rules:
        - { action: deny, networks: [127.0.0.0/8], path: /private }
    routes:
      - { name: private, match: { path: /private }, service: app }
      - name: partner
        match: { path: /partner }
        service: app
        authorization:
          - { action: allow, networks: [127.0.0.0/8] }
          - { action: deny }
      - name: elsewhere
        match: { path: /elsewhere }
        service: app
        authorization:
          - { action: allow, networks: [10.0.0.0/8, "2001:db8::/32"] }
          - { action: deny }
      - { name: public, service: app }`,
    ),
  )
  const denied = await request(port, { path: '/private/report' })
  t.is(denied.status, 403)
  t.is(denied.headers['meshproxy-error'], 'forbidden')
  t.is((await request(port, { path: '/elsewhere' })).status, 403, 'a client outside the allowed networks')
  t.is(app.requests.length, 0, 'no denied request reached the backend')
  t.is((await request(port, { path: '/partner/x' })).status, 200, 'a client inside the allowed network')
  t.is((await request(port, { path: '/public' })).status, 200, 'no rule: the default allows')
  t.is(app.requests.length, 2)
  const metrics = proxy.metrics()
  t.is(metricValue(metrics, 'meshproxy_proxy_errors_total{listener="main",error="forbidden"}'), 2)
  t.is(metricValue(metrics, 'meshproxy_requests_total{listener="main",route="private",service="app",status_class="4xx"}'), 1)
  t.is(metricValue(metrics, `meshproxy_upstream_requests_total{endpoint="${app.address}"}`), 2, 'denials never count against the endpoint')
  t.is(metricValue(metrics, `meshproxy_upstream_failures_total{endpoint="${app.address}"}`), 0)
})

test('a listener that denies by default refuses every request no rule allows', async (t) => {
  const app = await startBackend(t, 'app')
  const loopbackOnly = await startProxy(
    t,
    appYaml(
      app.address,
      `
    authorization:
      default: deny
      rules: [{ action: allow, networks: [127.0.0.0/8, "::1"] }]
    routes: [{ service: app }]`,
      { name: 'loopback-only' },
    ),
  )
  const closed = await startProxy(
    t,
    appYaml(
      app.address,
      `
    authorization: { default: deny }
    routes:
      - { name: all, service: app }
      - { name: health, match: { path: /healthz, pathType: Exact }, service: app, authorization: [{ action: allow, methods: GET }] }`,
      { name: 'closed' },
    ),
  )
  t.is((await request(loopbackOnly.port, { path: '/a' })).status, 200)
  const refused = await request(closed.port, { path: '/a' })
  t.is(refused.status, 403)
  t.is(refused.headers['meshproxy-error'], 'forbidden')
  t.is((await request(closed.port, { path: '/healthz' })).status, 200, 'a route\'s allow rule comes before the listener\'s default')
  t.is((await request(closed.port, { path: '/healthz', method: 'POST' })).status, 403)
  t.deepEqual(app.requests.map((r) => `${r.method} ${r.url}`), ['GET /a', 'GET /healthz'])
})

test('method, path and header conditions, first match wins, before redirects and header changes', async (t) => {
  const app = await startBackend(t, 'app')
  const { port } = await startProxy(
    t,
    appYaml(
      app.address,
      `
    authorization:
      rules:
        - { action: deny, methods: [DELETE] }
    routes:
      - name: admin
        match: { path: /admin }
        service: app
        requestHeaders: { set: { x-role: admin } }
        authorization:
          - { action: allow, headers: { x-role: admin }, methods: [GET, DELETE] }
          - { action: deny, path: /admin/users, methods: POST }
          - { action: deny, headers: { x-role: guest } }
      - name: old
        match: { path: /old }
        redirect: { path: /new }
        authorization: [{ action: deny, headers: { x-role: guest } }]
      - { name: rest, service: app }`,
    ),
  )
  const status = async (method: string, path: string, headers: http.OutgoingHttpHeaders = {}) => (await request(port, { method, path, headers })).status
  t.is(await status('POST', '/admin/users'), 403, 'method and path both match')
  t.is(await status('POST', '/admin/x/../users/7'), 403, 'dot segments cannot slip past a path')
  t.is(await status('POST', '/admin/usersx'), 200, 'a prefix matches whole segments')
  t.is(await status('GET', '/admin/users'), 200, 'another method')
  t.is(await status('GET', '/admin', { 'x-role': 'guest' }), 403, 'a header value')
  t.is(await status('DELETE', '/admin/users', { 'x-role': 'admin' }), 200, 'the route\'s allow matches first, before the listener\'s deny')
  t.is(await status('DELETE', '/admin/users', { 'x-role': 'guest' }), 403, 'the header rules see the client\'s headers, not the route\'s changes')
  t.is(await status('DELETE', '/other'), 403, 'the listener\'s rule on a route without rules')
  t.is(await status('GET', '/old/page', { 'x-role': 'guest' }), 403, 'a redirecting route is authorized first')
  t.is(await status('GET', '/old/page'), 302)
})

test('a CONNECT tunnel is authorized as its route\'s requests are', async (t) => {
  const app = await startBackend(t, 'app')
  const { port } = await startProxy(
    t,
    appYaml(
      app.address,
      `
    routes:
      - name: tunnel
        match: { host: db.internal }
        service: app
        allowConnect: true
        authorization: [{ action: deny, networks: [127.0.0.0/8] }]`,
    ),
  )
  const res = await connectOnce(port, 'db.internal:5432')
  t.is(res.statusCode, 403)
  t.is(res.headers['meshproxy-error'], 'forbidden')
  t.is(app.connections, 0, 'no tunnel was opened')
})

test('a denied gRPC call gets PERMISSION_DENIED with meshproxy-error, and the server is never called', async (t) => {
  const passthrough = (b: Buffer) => b
  const definition = {
    Get: { path: '/test.Store/Get', requestStream: false, responseStream: false, requestSerialize: passthrough, requestDeserialize: passthrough, responseSerialize: passthrough, responseDeserialize: passthrough },
    Put: { path: '/test.Store/Put', requestStream: false, responseStream: false, requestSerialize: passthrough, requestDeserialize: passthrough, responseSerialize: passthrough, responseDeserialize: passthrough },
  } satisfies grpc.ServiceDefinition
  let calls = 0
  const server = new grpc.Server()
  const answer = (_call: unknown, cb: grpc.sendUnaryData<Buffer>) => {
    calls += 1
    cb(null, Buffer.from('ok'))
  }
  server.addService(definition, { Get: answer, Put: answer })
  const backendPort = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  )
  t.teardown(() => server.forceShutdown())
  const { address } = await startProxy(
    t,
    `
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    authorization:
      default: deny
      rules:
        - { action: allow, networks: [127.0.0.0/8], path: /test.Store/Get, pathType: Exact }
    routes:
      - { name: grpc, match: { path: /test.Store }, service: store }
services:
  - { name: store, protocol: http2, endpoints: [127.0.0.1:${backendPort}] }
`,
  )
  const Client = grpc.makeGenericClientConstructor(definition, 'Store')
  const client = new Client(address, grpc.credentials.createInsecure()) as InstanceType<typeof Client> & Record<string, (...a: unknown[]) => unknown>
  t.teardown(() => client.close())
  const call = (name: string) =>
    new Promise<Buffer>((resolve, reject) =>
      client[name]!(Buffer.from('x'), new grpc.Metadata(), {}, (err: grpc.ServiceError | null, res: Buffer) => (err ? reject(err) : resolve(res))),
    )
  t.is((await call('Get')).toString(), 'ok')
  const err = await t.throwsAsync<grpc.ServiceError>(call('Put'))
  t.is(err?.code, grpc.status.PERMISSION_DENIED)
  t.deepEqual(err?.metadata.get('meshproxy-error'), ['forbidden'])
  t.is(calls, 1, 'only the allowed call reached the server')
})

test('an IPv6 client is matched by IPv6 networks, never by IPv4 ones', async (t) => {
  const app = await startBackend(t, 'app')
  const { port } = await startProxy(
    t,
    appYaml(
      app.address,
      `
    authorization:
      default: deny
      rules:
        - { action: allow, networks: [127.0.0.0/8, "::ffff:0:0/96"], path: /v4-only }
        - { action: allow, networks: ["::1"], path: /v6 }
    routes: [{ service: app }]`,
      { name: 'v6', address: '"[::1]:0"' },
    ),
  )
  const get = (path: string) =>
    new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = http.get({ host: '::1', port, path, agent: false }, (res) => {
        res.resume()
        res.on('end', () => resolve(res))
      })
      req.on('error', reject)
    })
  t.is((await get('/v6/x')).statusCode, 200)
  const refused = await get('/v4-only')
  t.is(refused.statusCode, 403, '::1 is in neither 127.0.0.0/8 nor the IPv4-mapped range')
  t.is(refused.headers['meshproxy-error'], 'forbidden')
  t.deepEqual(app.requests.map((r) => r.url), ['/v6/x'])
})

test('a reload changes the rules at once; a bad rule is refused and the running rules stay', async (t) => {
  const app = await startBackend(t, 'app')
  const yaml = (action: string, network: string) =>
    appYaml(
      app.address,
      `
    authorization: { rules: [{ action: ${action}, networks: ["${network}"] }] }
    routes: [{ service: app }]`,
    )
  const { port, proxy } = await startProxy(t, yaml('allow', '127.0.0.1'))
  t.is((await request(port)).status, 200)
  // The same listener (keyed by its configured address, 127.0.0.1:0) with other rules.
  const denying = load(yaml('deny', '127.0.0.0/8'))
  await proxy.reload(denying)
  t.is((await request(port)).status, 403, 'the new rules apply to the next request')
  const broken = structuredClone(denying)
  broken.listeners[0]!.authorization.rules[0]!.networks = ['10.0.0.0/33']
  const err = await t.throwsAsync<MeshProxyError>(proxy.reload(broken))
  t.is(err?.code, 'MESHPROXY_INVALID_CONFIG')
  t.regex(err?.message ?? '', /10\.0\.0\.0\/33/)
  t.is((await request(port)).status, 403, 'the running rules are kept')
})
