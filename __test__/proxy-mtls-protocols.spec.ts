/**
 * What travels over the mTLS hop between two meshproxies besides plain HTTP/1.1: gRPC with
 * @grpc/grpc-js (a `protocol: http2` meshed service), a WebSocket with ws (an HTTP/1.1 upgrade,
 * which stays HTTP/1.1 on its mTLS connection), and the peer identity the inbound side's
 * authorization rules and rate limits keyed by identity see; opaque TCP between a tcp listener
 * and the peer's tcpService; a Kubernetes Service annotated `meshproxy.io/identity` is meshed.
 */
import http from 'node:http'
import test from 'ava'
import WebSocket from 'ws'
import { loadConfigText } from '../ts/index.js'
import { startBackend } from './helpers/backend.js'
import { grpcEchoCaller, startGrpcEcho } from './helpers/grpc-echo.js'
import { adminGet, inbound, makeMesh, metric, outbound } from './helpers/mesh.js'
import { startProxy } from './helpers/proxy.js'
import { echo, startTcpServer, tcpConnect, write } from './helpers/tcp.js'
import { startWsBackend } from './helpers/ws.js'

function get(port: number, host: string): Promise<{ status: number; body: string; error: string | undefined }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/', headers: { host }, agent: false }, (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => (body += c))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, error: res.headers['meshproxy-error'] as string | undefined }))
      })
      .on('error', reject)
  })
}

test('gRPC with @grpc/grpc-js over the mesh hop', async (t) => {
  const { port } = await startGrpcEcho(t, { prefix: 'echo:' })
  const mesh = await makeMesh(t, ['web', 'echo'])
  const b = await inbound(t, mesh, 'echo', `127.0.0.1:${port}`, { service: '\n    protocol: http2' })
  const a = await outbound(t, mesh, 'web', b.address, 'echo.shop', { service: '\n    protocol: http2' })
  const call = grpcEchoCaller(t, `127.0.0.1:${a.port}`)
  const replies = await Promise.all(['a', 'b', 'c'].map((s) => call(Buffer.from(s))))
  t.deepEqual(replies.map(String), ['echo:a', 'echo:b', 'echo:c'])
  const ep = (await a.proxy.stats()).endpoints.find((e) => e.address === b.address)
  t.is(ep?.openedConnections, 1)
})

test('a WebSocket through the mesh stays HTTP/1.1 on an mTLS connection', async (t) => {
  const wsBackend = await startWsBackend(t)
  const mesh = await makeMesh(t, ['web', 'chat'])
  const b = await inbound(t, mesh, 'chat', wsBackend.address)
  const a = await outbound(t, mesh, 'web', b.address, 'chat.shop')
  const ws = new WebSocket(`ws://127.0.0.1:${a.port}/chat`, { headers: { host: 'chat.shop' } })
  t.teardown(() => ws.terminate())
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve())
    ws.once('error', reject)
  })
  const echoed = new Promise<string>((resolve) => ws.once('message', (d) => resolve(d.toString())))
  ws.send('over mtls')
  t.is(await echoed, 'echo:over mtls')
  t.is(wsBackend.upgrades[0]?.host, 'chat.shop')
  t.is(wsBackend.upgrades[0]?.['meshproxy-orig-proto'], undefined)
  t.is(metric(await adminGet(b.adminPort, '/metrics'), 'meshproxy_tls_handshakes_total{listener="inbound"}'), 1)
})

test('the inbound side\'s authorization sees the peer\'s identity; permissive serves plaintext without one', async (t) => {
  const mesh = await makeMesh(t, ['web', 'billing', 'orders'])
  const app = await startBackend(t, 'orders-app', (_req, res) => res.end('ok'))
  const rules = `
    authorization:
      default: deny
      rules:
        - action: allow
          identities: [web.shop]`
  const b = await inbound(t, mesh, 'orders', app.address, { mtls: 'permissive', listener: rules })
  const web = await outbound(t, mesh, 'web', b.address, 'orders.shop')
  const billing = await outbound(t, mesh, 'billing', b.address, 'spiffe://cluster.local/ns/shop/sa/orders')
  const asWeb = await get(web.port, 'orders')
  t.is(asWeb.status, 200)
  t.is(asWeb.body, 'ok')
  const asBilling = await get(billing.port, 'orders')
  t.is(asBilling.status, 403, 'billing.shop is authenticated but not allowed')
  t.is(asBilling.error, 'forbidden')
  // Plaintext on the permissive port: served, without an identity, so no identity rule matches.
  const plain = await get(b.port, 'orders')
  t.is(plain.status, 403)
  t.is(app.requests.length, 1)
})

test('a rate limit keyed by identity gives each mTLS peer its own bucket; plaintext clients share one', async (t) => {
  const mesh = await makeMesh(t, ['web', 'billing', 'orders'])
  const app = await startBackend(t, 'orders-app', (_req, res) => res.end('ok'))
  // Rate 1/s: within the test, each bucket admits its burst and then refuses.
  const limit = `
    rateLimits:
      - name: per-peer
        rate: 1
        burst: 2
        key: identity
        overrides: [{ value: billing.shop, rate: 1, burst: 4 }]`
  const b = await inbound(t, mesh, 'orders', app.address, { mtls: 'permissive', service: limit })
  const web = await outbound(t, mesh, 'web', b.address, 'orders.shop')
  const billing = await outbound(t, mesh, 'billing', b.address, 'orders.shop')
  const statuses = async (port: number, n: number): Promise<number[]> => {
    const out: number[] = []
    for (let i = 0; i < n; i++) out.push((await get(port, 'orders')).status)
    return out
  }
  t.deepEqual(await statuses(web.port, 3), [200, 200, 429], 'web.shop: its burst of 2')
  t.deepEqual(await statuses(billing.port, 5), [200, 200, 200, 200, 429], 'billing.shop: its override, a burst of 4')
  t.deepEqual(await statuses(b.port, 3), [200, 200, 429], 'plaintext on the permissive port: one shared bucket')
  t.is(app.requests.length, 8)
})

test('a Kubernetes Service annotated meshproxy.io/identity is a meshed service', async (t) => {
  const mesh = await makeMesh(t, ['web'])
  const r = loadConfigText(`
identity: { dir: ${mesh.dir}, name: web, namespace: shop }
---
apiVersion: v1
kind: Service
metadata:
  name: orders
  namespace: shop
  annotations:
    meshproxy.io/identity: orders-sa
spec:
  ports: [{ port: 80 }]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: i, namespace: shop }
spec:
  defaultBackend: { service: { name: orders, port: { number: 80 } } }
`, { file: 'k8s.yaml' })
  t.truthy(r.config, JSON.stringify(r.diagnostics))
  const service = r.config?.services.find((s) => s.name.startsWith('orders'))
  t.is(service?.identity, 'orders-sa.shop', 'meshed as the service account in the Service\'s namespace')
  const bad = loadConfigText(`
apiVersion: v1
kind: Service
metadata:
  name: orders
  annotations: { meshproxy.io/identity: Orders_SA }
spec:
  ports: [{ port: 80 }]
`, { file: 'k8s.yaml' })
  t.regex(bad.diagnostics.map((d) => `${d.line}:${d.column} ${d.message}`).join('\n'), /^6:41 annotation meshproxy\.io\/identity "Orders_SA" is not a service account name/m)
})

test('opaque TCP crosses the mesh hop over mTLS: a tcp listener, a meshed service, the peer\'s mtls listener and its tcpService', async (t) => {
  const mesh = await makeMesh(t, ['web', 'orders'])
  const server = await startTcpServer(t, echo)
  const b = await startProxy(t, `
admin: 127.0.0.1:0
identity: { dir: ${mesh.dir}, name: orders, namespace: shop }
listeners:
  - name: inbound
    address: 127.0.0.1:0
    protocol: tcp
    mtls: required
    tcpService: app
services:
  - name: app
    endpoints: [${server.address}]
`)
  const a = await startProxy(t, `
identity: { dir: ${mesh.dir}, name: web, namespace: shop }
listeners:
  - name: outbound
    address: 127.0.0.1:0
    protocol: tcp
    tcpService: peer
services:
  - name: peer
    endpoints: [${b.address}]
    identity: orders.shop
`)
  const client = await tcpConnect(t, a.port)
  // Bytes that are not HTTP, both ways, then a half-close that crosses both proxies.
  const payload = Buffer.from(Array.from({ length: 64 * 1024 }, (_, i) => i % 251))
  await write(client.socket, payload)
  await client.received.bytes(payload.length)
  t.true(client.received.data.equals(payload), 'the echo came back whole through both proxies')
  client.socket.end()
  await client.received.end()
  t.is(server.connections, 1)
  const metrics = await adminGet(b.adminPort, '/metrics')
  t.is(metric(metrics, 'meshproxy_tls_handshakes_total{listener="inbound"}'), 1, 'the hop was one mTLS handshake')
  // A plaintext client on B's tcp listener is refused, never forwarded.
  const plain = await tcpConnect(t, b.port)
  await write(plain.socket, 'not TLS\n')
  await plain.received.close()
  t.is(server.connections, 1, 'nothing reached the app')
})
