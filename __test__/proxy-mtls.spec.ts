/**
 * Automatic mTLS between meshproxies, end to end on 127.0.0.1: a Node HTTP/1.1 client → proxy A
 * (plain listener, a service with `identity`) → mTLS, HTTP/2 → proxy B (`mtls: required`) → a
 * Node HTTP/1.1 server. The applications see plain HTTP/1.1; the hop between the proxies is
 * multiplexed; each side checks the other's identity; a foreign anchor, a wrong identity, an
 * expired certificate, a client without one and a plaintext client are refused and counted; the identity
 * material rotates under load without a failed request.
 */
import http from 'node:http'
import http2 from 'node:http2'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import tls from 'node:tls'
import test from 'ava'
import { initIdentity, issueIdentity, type MeshProxyError } from '../ts/index.js'
import { startBackend, type SeenRequest } from './helpers/backend.js'
import { keepSending, rawRequest, sleep } from './helpers/http.js'
import { adminGet, inbound, issueExpired, makeMesh, metric, outbound } from './helpers/mesh.js'

/** An HTTP/1.1 request to `port` with its own agent; the status and body. */
function send(port: number, opts: { method?: string; path?: string; headers?: http.OutgoingHttpHeaders; body?: string | string[]; agent?: http.Agent } = {}): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: opts.method ?? 'GET', path: opts.path ?? '/', headers: opts.headers, agent: opts.agent ?? false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => (body += c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }))
    })
    req.on('error', reject)
    if (Array.isArray(opts.body)) for (const part of opts.body) req.write(part)
    else if (opts.body !== undefined) req.write(opts.body)
    req.end()
  })
}

/** An app that answers with what it saw: version, method, path, host, body, framing. */
async function echoApp(t: Parameters<typeof startBackend>[0], delayMs = 0) {
  return startBackend(t, 'app-b', (req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (c: string) => (body += c))
    req.on('end', () => {
      const framing = req.headers['transfer-encoding'] ?? (req.headers['content-length'] !== undefined ? `length ${req.headers['content-length']}` : 'none')
      setTimeout(() => res.end(JSON.stringify({ version: req.httpVersion, host: req.headers.host, body, framing, origProto: req.headers['meshproxy-orig-proto'] ?? null })), delayMs)
    })
  })
}

test('an HTTP/1.1 app reaches another through two proxies over mTLS and HTTP/2, and both apps see plain HTTP/1.1', async (t) => {
  const mesh = await makeMesh(t, ['web', 'orders'])
  const app = await echoApp(t, 30)
  const b = await inbound(t, mesh, 'orders', app.address)
  const a = await outbound(t, mesh, 'web', b.address, 'orders.shop')

  const fixed = await send(a.port, { method: 'POST', path: '/orders?id=1', headers: { host: 'orders.shop', 'content-type': 'text/plain', 'content-length': 12 }, body: 'twelve bytes' })
  t.is(fixed.status, 200)
  const seen = JSON.parse(fixed.body)
  t.is(seen.version, '1.1', 'app B gets HTTP/1.1')
  t.is(seen.host, 'orders.shop', 'with the Host app A sent')
  t.is(seen.body, 'twelve bytes')
  t.is(seen.framing, 'length 12', 'a Content-Length body keeps its length')
  t.is(seen.origProto, null, 'the marker between the proxies is removed')

  const chunked = await send(a.port, { method: 'POST', headers: { host: 'orders.shop' }, body: ['chunk one, ', 'chunk two'] })
  const c = JSON.parse(chunked.body)
  t.is(c.body, 'chunk one, chunk two')
  t.is(c.framing, 'chunked', 'a chunked body arrives chunked')
  t.is(c.version, '1.1')

  // Many requests at once from separate client connections: one connection between the proxies.
  const all = await Promise.all(Array.from({ length: 40 }, (_, i) => send(a.port, { path: `/n/${i}`, headers: { host: 'orders.shop' } })))
  t.true(all.every((r) => r.status === 200))
  const stats = await a.proxy.stats()
  const ep = stats.endpoints.find((e) => e.address === b.address)
  t.truthy(ep)
  t.is(ep!.openedConnections, 1, 'HTTP/2 between the proxies: every request on one connection')
  t.true(ep!.tls)
  const appConns = app.connections
  t.true(appConns > 1, `app B is served over HTTP/1.1 connections of its own (${appConns})`)
  const seenHeads: SeenRequest[] = app.requests
  t.false(seenHeads.some((r) => 'meshproxy-orig-proto' in r.headers))

  const bMetrics = await adminGet(b.adminPort, '/metrics')
  t.is(metric(bMetrics, 'meshproxy_tls_handshakes_total{listener="inbound"}'), 1)
})

test('an h2c client\'s requests to a meshed HTTP/1.1 service share one HTTP/2 connection between the proxies, and the app sees HTTP/1.1', async (t) => {
  const mesh = await makeMesh(t, ['web', 'orders'])
  const app = await echoApp(t, 30)
  const b = await inbound(t, mesh, 'orders', app.address)
  const a = await outbound(t, mesh, 'web', b.address, 'orders.shop')
  const client = http2.connect(`http://127.0.0.1:${a.port}`)
  t.teardown(() => client.close())
  const one = (i: number) => new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = client.request({ ':method': 'POST', ':path': `/h2/${i}`, ':authority': 'orders.shop', 'content-type': 'text/plain' })
    let status = 0
    let body = ''
    req.setEncoding('utf8')
    req.on('response', (h) => (status = Number(h[':status'])))
    req.on('data', (c: string) => (body += c))
    req.on('end', () => resolve({ status, body }))
    req.on('error', reject)
    req.end(`body ${i}`)
  })
  const all = await Promise.all(Array.from({ length: 20 }, (_, i) => one(i)))
  t.true(all.every((r) => r.status === 200), JSON.stringify(all.filter((r) => r.status !== 200)))
  const seen = all.map((r) => JSON.parse(r.body) as { version: string; host: string; body: string; origProto: string | null })
  t.true(seen.every((s) => s.version === '1.1'), 'app B gets HTTP/1.1')
  t.true(seen.every((s, i) => s.body === `body ${i}` && s.host === 'orders.shop'))
  t.true(seen.every((s) => s.origProto === null), 'the marker between the proxies is removed')
  const ep = (await a.proxy.stats()).endpoints.find((e) => e.address === b.address)
  t.is(ep!.openedConnections, 1, 'HTTP/2 between the proxies: one connection for every stream')
})

test('an HTTP/1.0 client is carried as HTTP/1.x over mTLS, not upgraded to HTTP/2', async (t) => {
  const mesh = await makeMesh(t, ['web', 'orders'])
  const app = await echoApp(t)
  const b = await inbound(t, mesh, 'orders', app.address)
  const a = await outbound(t, mesh, 'web', b.address, 'orders.shop')
  const r = await rawRequest(a.port, 'GET /old HTTP/1.0\r\nHost: orders.shop\r\n\r\n')
  t.is(r.status, 200, r.raw)
  t.is(JSON.parse(r.body).origProto, null)
})

test('the outbound proxy refuses a peer that is not the identity its service names', async (t) => {
  const mesh = await makeMesh(t, ['web', 'orders'])
  const app = await echoApp(t)
  const b = await inbound(t, mesh, 'orders', app.address)
  const a = await outbound(t, mesh, 'web', b.address, 'spiffe://cluster.local/ns/shop/sa/billing')
  const r = await send(a.port, { headers: { host: 'billing' } })
  t.is(r.status, 502)
  t.is(r.headers['meshproxy-error'], 'upstream-connect')
  t.is(app.requests.length, 0)
  const m = await adminGet(a.adminPort, '/metrics')
  t.true(metric(m, 'meshproxy_mtls_connect_failures_total{service="peer",reason="wrong-identity"}') >= 1, m)
})

test('a foreign trust anchor is refused both ways, and so are an expired client certificate, a client without one and a plaintext client', async (t) => {
  const mesh = await makeMesh(t, ['web', 'orders'])
  const foreign = await makeMesh(t, ['web', 'orders'])
  const app = await echoApp(t)
  const b = await inbound(t, mesh, 'orders', app.address)
  const fakeB = await inbound(t, foreign, 'orders', app.address)

  // Our web refuses a server from another anchor (same names, same trust domain).
  const a = await outbound(t, mesh, 'web', fakeB.address, 'orders.shop')
  const r = await send(a.port, { headers: { host: 'orders' } })
  t.is(r.status, 502)
  t.true(metric(await adminGet(a.adminPort, '/metrics'), 'meshproxy_mtls_connect_failures_total{service="peer",reason="untrusted"}') >= 1)

  // B refuses a client whose certificate comes from another anchor, even one that trusts B.
  const ca = readFileSync(join(mesh.dir, 'ca.crt'), 'utf8')
  const asForeign = { cert: readFileSync(join(foreign.dir, 'web.shop.crt')), key: readFileSync(join(foreign.dir, 'web.shop.key')) }
  const refused = await tlsExchange(b.port, { ca, servername: 'orders.shop.serviceaccount.identity.cluster.local', ...asForeign })
  t.false(refused.ok, 'no answer to a foreign client')
  const expired = await tlsExchange(b.port, { ca, servername: 'orders.shop.serviceaccount.identity.cluster.local', ...issueExpired(mesh, 'web') })
  t.false(expired.ok, 'no answer to a client whose certificate of our anchor has expired')
  const anonymous = await tlsExchange(b.port, { ca, servername: 'orders.shop.serviceaccount.identity.cluster.local' })
  t.false(anonymous.ok, 'no answer without a client certificate')
  // The same client with a certificate of our anchor is served.
  const ours = await tlsExchange(b.port, { ca, servername: 'orders.shop.serviceaccount.identity.cluster.local', cert: readFileSync(join(mesh.dir, 'web.shop.crt')), key: readFileSync(join(mesh.dir, 'web.shop.key')) })
  t.true(ours.ok, ours.text)

  const plain = await rawRequest(b.port, 'GET / HTTP/1.1\r\nHost: orders\r\n\r\n')
  t.is(plain.status, 400)
  t.is(plain.headers['meshproxy-error'], 'tls-required')
  await sleep(50)
  const m = await adminGet(b.adminPort, '/metrics')
  t.is(metric(m, 'meshproxy_tls_handshake_failures_total{listener="inbound",reason="untrusted"}'), 1, m)
  t.is(metric(m, 'meshproxy_tls_handshake_failures_total{listener="inbound",reason="expired"}'), 1)
  t.is(metric(m, 'meshproxy_tls_handshake_failures_total{listener="inbound",reason="no-client-certificate"}'), 1)
  t.is(metric(m, 'meshproxy_tls_handshake_failures_total{listener="inbound",reason="plaintext"}'), 1)
  t.is(app.requests.length, 1, 'only the client of our anchor reached the app')
})

test('a peer that refuses this proxy\'s certificate after the TLS 1.3 handshake is a 502 upstream-connect, counted as peer-refused', async (t) => {
  const mesh = await makeMesh(t, ['orders'])
  // web's proxy trusts both anchors, so it accepts B; its own certificate comes from the
  // foreign anchor, which B does not trust. With TLS 1.3, B refuses it after web's side of
  // the handshake is done: the refusal is the first record web reads.
  const foreign = await makeMesh(t, ['web'])
  writeFileSync(join(foreign.dir, 'ca.crt'), readFileSync(join(foreign.dir, 'ca.crt'), 'utf8') + readFileSync(join(mesh.dir, 'ca.crt'), 'utf8'))
  const app = await echoApp(t)
  const b = await inbound(t, mesh, 'orders', app.address)
  const a = await outbound(t, foreign, 'web', b.address, 'orders.shop')
  // The refusal may reach web's proxy as the alert it reads, or as its request's write failing
  // because B has closed: either way it is the same answer and count.
  const answers = new Set<string>()
  for (let i = 0; i < 10; i++) {
    const r = await send(a.port, { headers: { host: 'orders' } })
    answers.add(`${r.status} ${String(r.headers['meshproxy-error'])}`)
  }
  t.deepEqual([...answers], ['502 upstream-connect'])
  t.true(metric(await adminGet(a.adminPort, '/metrics'), 'meshproxy_mtls_connect_failures_total{service="peer",reason="peer-refused"}') >= 10)
  await sleep(50)
  t.true(metric(await adminGet(b.adminPort, '/metrics'), 'meshproxy_tls_handshake_failures_total{listener="inbound",reason="untrusted"}') >= 3)
  t.is(app.requests.length, 0, 'nothing reached the app')
})

/** A certificate serial as hex, lowercase, without leading zeros (as OpenSSL prints it). */
const hex = (s: string): string => s.toLowerCase().replace(/^0+/, '')

/** A TLS client that sends one HTTP/1.1 request; ok when an HTTP response came back. */
function tlsExchange(port: number, opts: tls.ConnectionOptions): Promise<{ ok: boolean; text: string; serial: string }> {
  return new Promise((resolve) => {
    let text = ''
    let serial = ''
    const socket = tls.connect({ host: '127.0.0.1', port, ALPNProtocols: ['http/1.1'], ...opts }, () => {
      serial = hex(String(socket.getPeerCertificate().serialNumber ?? ''))
      socket.write('GET / HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n')
    })
    socket.setEncoding('utf8')
    socket.on('data', (c: string) => (text += c))
    socket.on('error', (e) => (text += `error: ${e.message}`))
    socket.on('close', () => resolve({ ok: text.startsWith('HTTP/1.1 200'), text, serial }))
  })
}

test('/identity shows the proxy\'s identity, its certificate and anchors; its expiry is a gauge', async (t) => {
  const mesh = await makeMesh(t, ['orders'])
  const app = await echoApp(t)
  const b = await inbound(t, mesh, 'orders', app.address)
  const id = JSON.parse(await adminGet(b.adminPort, '/identity'))
  t.is(id.id, 'spiffe://cluster.local/ns/shop/sa/orders')
  t.is(id.trustDomain, 'cluster.local')
  t.is(id.anchors.length, 1)
  t.regex(id.anchors[0].subject, /root\.cluster\.local/)
  const notAfter = id.certificate.notAfterUnix as number
  t.true(notAfter > Date.now() / 1000 && notAfter < Date.now() / 1000 + 2 * 86400)
  const m = await adminGet(b.adminPort, '/metrics')
  t.is(metric(m, 'meshproxy_identity_certificate_expiry_timestamp_seconds{id="spiffe://cluster.local/ns/shop/sa/orders"}'), notAfter)
})

test('certificates and anchors rotate under load with no failed request; new handshakes show the new certificate', async (t) => {
  const mesh = await makeMesh(t, ['web', 'orders'])
  const app = await echoApp(t)
  const b = await inbound(t, mesh, 'orders', app.address)
  // Short-lived pooled connections, so new handshakes happen during the run.
  const a = await outbound(t, mesh, 'web', b.address, 'orders.shop', { service: '\n    pool: { idleTimeout: 100ms }' })
  const clientCert = () => ({ ca: readFileSync(join(mesh.dir, 'ca.crt'), 'utf8'), servername: 'orders.shop.serviceaccount.identity.cluster.local', cert: readFileSync(join(mesh.dir, 'web.shop.crt')), key: readFileSync(join(mesh.dir, 'web.shop.key')) })
  const before = await tlsExchange(b.port, clientCert())
  t.true(before.ok, before.text)

  const sending = keepSending(4, async () => {
    const r = await send(a.port, { headers: { host: 'orders' } })
    return { status: r.status, error: r.headers['meshproxy-error'] as string | undefined }
  })
  const waitForSerial = async (previous: string): Promise<string> => {
    for (let i = 0; i < 60; i++) {
      const s = hex(JSON.parse(await adminGet(b.adminPort, '/identity')).certificate.serial as string)
      if (s !== previous) return s
      await sleep(100)
    }
    return previous
  }
  await sleep(300)
  // 1: both workloads' certificates reissued on disk.
  await issueIdentity(mesh.dir, 'orders', { namespace: 'shop' })
  await issueIdentity(mesh.dir, 'web', { namespace: 'shop' })
  const second = await waitForSerial(before.serial)
  t.not(second, before.serial, 'B took its new certificate')
  await sleep(400)
  const afterReissue = await tlsExchange(b.port, clientCert())
  t.true(afterReissue.ok, afterReissue.text)
  t.is(afterReissue.serial, second, 'a new handshake presents the new certificate')
  // 2: an anchor rotation: ca.crt holds both anchors, then certificates of the new one.
  const rotated = await initIdentity(mesh.dir, { trustDomain: 'cluster.local', existing: 'rotate' })
  t.is(rotated.bundle, 2)
  await sleep(700)
  await issueIdentity(mesh.dir, 'orders', { namespace: 'shop' })
  await issueIdentity(mesh.dir, 'web', { namespace: 'shop' })
  const third = await waitForSerial(second)
  t.not(third, second)
  await sleep(700)
  await sending.stop()
  const { ok, failed } = sending
  t.deepEqual(failed, [], 'no request failed during the rotations')
  t.true(ok > 20, `requests went through (${ok})`)
  const id = JSON.parse(await adminGet(b.adminPort, '/identity'))
  t.is(id.anchors.length, 2, 'both anchors trusted')
  const last = await tlsExchange(b.port, clientCert())
  t.true(last.ok, last.text)
  t.is(last.serial, third)
})

test('config errors: mtls without identity, identity with tls, bad identity names, missing files', async (t) => {
  const { loadConfigText } = await import('../ts/index.js')
  const mesh = await makeMesh(t, ['web'])
  const errors = (yaml: string) => loadConfigText(yaml, { file: join(mesh.dir, 'mesh.yaml') }).diagnostics.filter((d) => d.severity === 'error').map((d) => `${d.line}:${d.column} ${d.message}`)
  t.deepEqual(errors(`
listeners:
  - name: in
    address: 127.0.0.1:0
    mtls: required
    routes: []
`), ['5:11 listener "in" has mtls: required but the config has no identity'])
  const e = errors(`
identity: { dir: ., name: web, namespace: shop }
listeners: []
services:
  - name: s
    endpoints: [127.0.0.1:1]
    identity: orders.shop
    tls: { serverName: orders }
  - name: t
    endpoints: [127.0.0.1:1]
    identity: Orders
`)
  t.is(e.length, 2, e.join('\n'))
  t.regex(e[0]!, /^7:15 service "s" has both identity and tls/)
  t.regex(e[1]!, /^11:15 invalid "identity" in service: identity "Orders" is neither/)
  const missing = errors(`
identity:
  dir: ./nowhere
  name: web
  namespace: shop
listeners: []
`)
  t.is(missing.length, 3, missing.join('\n'))
  t.regex(missing[0]!, /^3:8 identity: cannot read ".*nowhere\/ca\.crt": no such file/)
  const unknown = errors(`
identity:
  dir: .
  name: orders
  namespace: shop
listeners: []
`)
  t.is(unknown.length, 2, unknown.join('\n'))
  t.regex(unknown[0]!, /^4:9 identity: cannot read ".*orders\.shop\.crt"/)
  const mode = errors(`
identity: { dir: ., name: web, namespace: shop }
listeners:
  - address: 127.0.0.1:0
    mtls: strict
`)
  t.regex(mode[0]!, /^5:11 unknown listener mtls "strict"/)
})

test('a proxy whose identity files do not load does not start', async (t) => {
  const mesh = await makeMesh(t, ['web'])
  const { Proxy } = await import('../ts/index.js')
  // The key of another workload beside web's certificate: refused by the data plane.
  await issueIdentity(mesh.dir, 'orders', { namespace: 'shop' })
  const { copyFileSync } = await import('node:fs')
  copyFileSync(join(mesh.dir, 'orders.shop.key'), join(mesh.dir, 'web.shop.key'))
  const model = (await import('./helpers/proxy.js')).load(`
identity: { dir: ${mesh.dir}, name: web, namespace: shop }
admin: null
listeners:
  - address: 127.0.0.1:0
    mtls: required
    routes: []
`)
  const err = await t.throwsAsync(async () => {
    const p = new Proxy(model)
    t.teardown(() => p.close({ graceMs: 0 }))
    await p.start()
  })
  t.is((err as MeshProxyError).code, 'MESHPROXY_IDENTITY_INVALID', err?.message)
})
