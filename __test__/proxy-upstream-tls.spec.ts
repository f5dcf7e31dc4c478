/**
 * TLS origination through the real proxy to real Node TLS backends (`https`, `http2` secure
 * servers, gRPC with TLS credentials), with certificates made by the `openssl` CLI: verification
 * against a CA bundle and a server name, ALPN `h2` for HTTP/2 services, client certificates,
 * refusals that reach no backend (502 `upstream-connect`), plaintext and TLS services side by
 * side, pooled and resumed TLS connections, health checks over TLS, and the config's checks of
 * the `tls` block with file:line:col.
 */
import https from 'node:https'
import net from 'node:net'
import http2 from 'node:http2'
import type { TLSSocket } from 'node:tls'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import test from 'ava'
import type { ExecutionContext } from 'ava'
import * as grpc from '@grpc/grpc-js'
import { listen, startBackend } from './helpers/backend.js'
import { get, sleep } from './helpers/http.js'
import { load, startProxy } from './helpers/proxy.js'
import { metricValue } from './helpers/tcp.js'
import { makeUpstreamCerts, type UpstreamCerts } from './helpers/upstream-certs.js'
import { formatDiagnostic, loadConfigText } from '../ts/index.js'

interface Seen {
  url: string
  httpVersion: string
  /** `:scheme`, over HTTP/2. */
  scheme?: string | undefined
  servername: string | false | null | undefined
  alpn: string | false | null | undefined
  /** The client certificate's CN, when one was presented. */
  client: string | undefined
}

interface TlsBackend {
  address: string
  seen: Seen[]
  /** TLS connections accepted (handshakes completed). */
  connections: number
  /** Of those, sessions resumed. */
  resumed: number
}

function record(backend: TlsBackend, req: { url?: string; httpVersion: string; scheme?: string }, socket: TLSSocket): void {
  const peer = socket.getPeerCertificate()
  backend.seen.push({
    url: req.url ?? '',
    scheme: req.scheme,
    httpVersion: req.httpVersion,
    servername: socket.servername,
    alpn: socket.alpnProtocol,
    client: peer && peer.subject ? String(peer.subject.CN) : undefined,
  })
}

function track(t: ExecutionContext, server: https.Server | http2.Http2SecureServer, backend: TlsBackend): void {
  server.on('secureConnection', (socket: TLSSocket) => {
    backend.connections++
    if (socket.isSessionReused()) backend.resumed++
  })
  server.on('tlsClientError', () => {})
  t.teardown(() => new Promise<void>((done) => {
    ;(server as { closeAllConnections?: () => void }).closeAllConnections?.()
    server.close(() => done())
  }))
}

/** An HTTPS (HTTP/1.1) backend answering `name` and the request's URL; `close` ends each connection after its response. */
async function httpsBackend(
  t: ExecutionContext,
  certs: UpstreamCerts,
  opts: { clientAuth?: boolean; close?: boolean; name?: string } = {},
): Promise<TlsBackend> {
  const backend: TlsBackend = { address: '', seen: [], connections: 0, resumed: 0 }
  const server = https.createServer(
    {
      key: certs.pem.serverKey,
      cert: certs.pem.serverCert,
      ...(opts.clientAuth ? { ca: certs.pem.ca, requestCert: true, rejectUnauthorized: true } : {}),
    },
    (req, res) => {
      record(backend, req, req.socket as TLSSocket)
      req.resume()
      if (opts.close) res.setHeader('connection', 'close')
      res.end(`${opts.name ?? 'tls'} ${req.url}`)
    },
  )
  track(t, server, backend)
  backend.address = `127.0.0.1:${await listen(server)}`
  return backend
}

/** An HTTP/2 over TLS backend (no HTTP/1.1 fallback) answering the HTTP version, the ALPN protocol and `:scheme`. */
async function h2Backend(t: ExecutionContext, certs: UpstreamCerts): Promise<TlsBackend> {
  const backend: TlsBackend = { address: '', seen: [], connections: 0, resumed: 0 }
  const server = http2.createSecureServer({ key: certs.pem.serverKey, cert: certs.pem.serverCert }, (req, res) => {
    const socket = req.stream.session?.socket as TLSSocket
    record(backend, req, socket)
    req.resume()
    res.end(`h2 ${req.httpVersion} ${socket.alpnProtocol} ${req.scheme}`)
  })
  track(t, server, backend)
  backend.address = `127.0.0.1:${await listen(server)}`
  return backend
}

/** A proxy with one route per entry (`/<name>` prefix) to a service of that name. */
function yaml(services: Record<string, { endpoints: string[]; extra?: string }>): string {
  const names = Object.keys(services)
  return `
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:${names.map((n) => `\n      - name: ${n}\n        match: { path: /${n} }\n        service: ${n}`).join('')}
services:${names
    .map((n) => {
      const s = services[n]!
      return `\n  - name: ${n}\n    endpoints: [${s.endpoints.join(', ')}]${s.extra ?? ''}`
    })
    .join('')}
`
}

const tls = (lines: Record<string, string>) =>
  `\n    tls:${Object.entries(lines)
    .map(([k, v]) => `\n      ${k}: ${JSON.stringify(v)}`)
    .join('')}`

test('an HTTP/1.1 service over TLS is verified against the CA bundle and sent the server name', async (t) => {
  const certs = makeUpstreamCerts(t)
  const b = await httpsBackend(t, certs)
  const { port } = await startProxy(t, yaml({ pay: { endpoints: [b.address], extra: tls({ serverName: 'payments.internal', ca: certs.ca }) } }))
  const res = await get(port, '/pay/1')
  t.is(res.status, 200, res.body)
  t.is(res.body, 'tls /pay/1')
  t.is(b.seen.length, 1)
  t.is(b.seen[0]?.servername, 'payments.internal', 'SNI is the configured server name')
  t.is(b.seen[0]?.alpn, 'http/1.1', 'ALPN offered http/1.1')
})

test('without a serverName the endpoint\'s IP address is verified against the certificate', async (t) => {
  const certs = makeUpstreamCerts(t)
  const b = await httpsBackend(t, certs)
  const { port } = await startProxy(t, yaml({ pay: { endpoints: [b.address], extra: tls({ ca: certs.ca }) } }))
  const res = await get(port, '/pay')
  t.is(res.status, 200, res.body)
  t.is(b.seen[0]?.servername, false, 'no SNI for an IP address')
})

test('an http2 service over TLS agrees h2 by ALPN', async (t) => {
  const certs = makeUpstreamCerts(t)
  const b = await h2Backend(t, certs)
  const { port } = await startProxy(t, yaml({ grpcish: { endpoints: [b.address], extra: `\n    protocol: http2${tls({ serverName: 'localhost', ca: certs.ca })}` } }))
  const res = await get(port, '/grpcish')
  t.is(res.status, 200, res.body)
  t.is(res.body, 'h2 2.0 h2 https', 'HTTP/2, agreed by ALPN, with :scheme https')
  t.is(b.seen[0]?.httpVersion, '2.0')
  t.is(b.seen[0]?.servername, 'localhost')
})

test('an http2 service whose TLS endpoint does not agree to h2 is a connect failure', async (t) => {
  const certs = makeUpstreamCerts(t)
  const b = await httpsBackend(t, certs)
  const { port } = await startProxy(t, yaml({ pay: { endpoints: [b.address], extra: `\n    protocol: http2${tls({ ca: certs.ca })}` } }))
  const res = await get(port, '/pay')
  t.is(res.status, 502)
  t.is(res.headers['meshproxy-error'], 'upstream-connect')
  t.is(b.seen.length, 0)
})

test('an endpoint certificate from an unknown CA is refused: 502 upstream-connect, and the backend sees no request', async (t) => {
  const certs = makeUpstreamCerts(t)
  const b = await httpsBackend(t, certs)
  const { proxy, port } = await startProxy(t, yaml({ pay: { endpoints: [b.address], extra: tls({ ca: certs.otherCa }) } }))
  const res = await get(port, '/pay')
  t.is(res.status, 502)
  t.is(res.headers['meshproxy-error'], 'upstream-connect')
  t.is(b.seen.length, 0)
  const ep = (await proxy.stats()).endpoints.find((e) => e.address === b.address)
  t.is(ep?.failures, 1, 'the handshake failure counts as the endpoint\'s failure')
})

test('without a ca the system roots verify, and refuse a private CA\'s certificate', async (t) => {
  const certs = makeUpstreamCerts(t)
  const b = await httpsBackend(t, certs)
  const { port } = await startProxy(t, yaml({ pay: { endpoints: [b.address], extra: tls({ serverName: 'payments.internal' }) } }))
  const res = await get(port, '/pay')
  t.is(res.status, 502)
  t.is(res.headers['meshproxy-error'], 'upstream-connect')
  t.is(b.seen.length, 0)
})

test('an endpoint certificate not valid for the server name is refused', async (t) => {
  const certs = makeUpstreamCerts(t)
  const b = await httpsBackend(t, certs)
  const { port } = await startProxy(t, yaml({ pay: { endpoints: [b.address], extra: tls({ serverName: 'ledger.internal', ca: certs.ca }) } }))
  const res = await get(port, '/pay')
  t.is(res.status, 502)
  t.is(res.headers['meshproxy-error'], 'upstream-connect')
  t.is(b.seen.length, 0)
})

test('a backend requiring a client certificate is served with one and refuses the proxy without', async (t) => {
  const certs = makeUpstreamCerts(t)
  const b = await httpsBackend(t, certs, { clientAuth: true })
  const { port } = await startProxy(
    t,
    yaml({
      with: { endpoints: [b.address], extra: tls({ ca: certs.ca, cert: certs.clientCert, key: certs.clientKey }) },
      without: { endpoints: [b.address], extra: tls({ ca: certs.ca }) },
    }),
  )
  const ok = await get(port, '/with')
  t.is(ok.status, 200, ok.body)
  t.is(b.seen[0]?.client, 'meshproxy client')
  const refused = await get(port, '/without')
  t.is(refused.status, 502)
  // TLS 1.3: the backend checks the client certificate after the handshake, so its refusal
  // arrives as an alert on the first read.
  t.is(refused.headers['meshproxy-error'], 'upstream-reset')
  t.is(b.seen.length, 1, 'the backend saw only the request with a certificate')
})

test('a plaintext and a TLS service on one proxy both work', async (t) => {
  const certs = makeUpstreamCerts(t)
  const secure = await httpsBackend(t, certs, { name: 'secure' })
  const plain = await startBackend(t, 'plain')
  const { port } = await startProxy(
    t,
    yaml({ secure: { endpoints: [secure.address], extra: tls({ ca: certs.ca }) }, plain: { endpoints: [plain.address] } }),
  )
  for (let i = 0; i < 3; i++) {
    const [s, p] = await Promise.all([get(port, '/secure'), get(port, '/plain')])
    t.is(s.body, 'secure /secure')
    t.is(p.body, 'plain')
  }
  t.is(secure.seen.length, 3)
  t.is(plain.requests.length, 3)
})

test('a plaintext and a TLS service naming one address are two endpoints, with two metric series', async (t) => {
  const certs = makeUpstreamCerts(t)
  const b = await httpsBackend(t, certs)
  const { proxy, port, adminPort } = await startProxy(
    t,
    yaml({ secure: { endpoints: [b.address], extra: tls({ ca: certs.ca }) }, plain: { endpoints: [b.address] } }).replace('admin: null', 'admin: 127.0.0.1:0'),
  )
  t.is((await get(port, '/secure')).status, 200)
  t.is((await get(port, '/plain')).status, 502, 'plaintext to a TLS port fails: no TLS connection is lent to it')
  t.is((await get(port, '/secure')).status, 200)
  t.is(b.seen.length, 2)
  t.is(b.connections, 1, 'the TLS requests shared one pooled connection')
  const endpoints = (await proxy.stats()).endpoints.filter((e) => e.address === b.address)
  t.deepEqual(endpoints.map((e) => [e.tls, e.openedConnections]).sort(), [[false, 1], [true, 1]])
  const metrics = (await get(adminPort, '/metrics')).body
  t.is(metricValue(metrics, `meshproxy_upstream_connections_opened_total{endpoint="${b.address}",tls="true"}`), 1)
  t.is(metricValue(metrics, `meshproxy_upstream_connections_opened_total{endpoint="${b.address}"}`), 1)
})

test('TLS connections to an endpoint are pooled: many requests, few handshakes', async (t) => {
  const certs = makeUpstreamCerts(t)
  const b = await httpsBackend(t, certs)
  const { port } = await startProxy(t, yaml({ pay: { endpoints: [b.address], extra: tls({ ca: certs.ca }) } }))
  const chains = 4
  const perChain = 15
  await Promise.all(
    Array.from({ length: chains }, async () => {
      for (let i = 0; i < perChain; i++) t.is((await get(port, '/pay')).status, 200)
    }),
  )
  t.is(b.seen.length, chains * perChain)
  t.true(b.connections <= chains, `${b.connections} TLS connections for ${chains} concurrent request chains`)
})

test('a reload keeps pooled TLS connections when the TLS settings are the same, and opens new ones when the server name changes', async (t) => {
  const certs = makeUpstreamCerts(t)
  const b = await httpsBackend(t, certs)
  const config = (serverName: string) => load(yaml({ pay: { endpoints: [b.address], extra: tls({ serverName, ca: certs.ca }) } }))
  const { proxy, port } = await startProxy(t, config('payments.internal'))
  t.is((await get(port, '/pay')).status, 200)
  t.is(b.connections, 1)
  await proxy.reload(config('payments.internal'))
  t.is((await get(port, '/pay')).status, 200)
  t.is(b.connections, 1, 'same settings: the pooled connection is reused')
  await proxy.reload(config('localhost'))
  t.is((await get(port, '/pay')).status, 200)
  t.is(b.connections, 2, 'another server name: a new connection')
  t.deepEqual(b.seen.map((s) => s.servername), ['payments.internal', 'payments.internal', 'localhost'])
})

test('a TCP service over TLS: the proxy wraps the client\'s bytes in TLS (no ALPN)', async (t) => {
  const certs = makeUpstreamCerts(t)
  const b = await httpsBackend(t, certs, { name: 'opaque' })
  const { port } = await startProxy(
    t,
    `
admin: null
listeners:
  - name: tcp
    address: 127.0.0.1:0
    protocol: tcp
    tcpService: secure
services:
  - name: secure
    endpoints: [${b.address}]${tls({ serverName: 'payments.internal', ca: certs.ca })}
`,
  )
  const reply = await new Promise<string>((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.end('GET /raw HTTP/1.1\r\nhost: payments.internal\r\nconnection: close\r\n\r\n'))
    let text = ''
    socket.setEncoding('utf8')
    socket.on('data', (d: string) => (text += d))
    socket.on('end', () => resolve(text))
    socket.on('error', reject)
  })
  t.regex(reply, /^HTTP\/1\.1 200/)
  t.true(reply.endsWith('opaque /raw'), reply)
  t.is(b.seen[0]?.servername, 'payments.internal')
  t.is(b.seen[0]?.alpn, false, 'opaque bytes offer no ALPN protocol')
})

test('new TLS connections resume the session of an earlier one', async (t) => {
  const certs = makeUpstreamCerts(t)
  // Each response closes its connection, so every request needs a new one.
  const b = await httpsBackend(t, certs, { close: true })
  const { port } = await startProxy(t, yaml({ pay: { endpoints: [b.address], extra: tls({ ca: certs.ca }) } }))
  for (let i = 0; i < 5; i++) {
    t.is((await get(port, '/pay')).status, 200)
    await sleep(20)
  }
  t.is(b.connections, 5)
  t.true(b.resumed >= 3, `${b.resumed} of ${b.connections} handshakes resumed`)
})

test('health checks of a TLS service go over TLS', async (t) => {
  const certs = makeUpstreamCerts(t)
  const b = await httpsBackend(t, certs)
  const { proxy } = await startProxy(
    t,
    yaml({ pay: { endpoints: [b.address], extra: `${tls({ serverName: 'payments.internal', ca: certs.ca })}\n    healthCheck: { path: /healthz, interval: 300ms, timeout: 250ms }` } }),
  )
  const until = Date.now() + 5000
  while (b.seen.length === 0 && Date.now() < until) await sleep(20)
  t.is(b.seen[0]?.url, '/healthz')
  t.is(b.seen[0]?.servername, 'payments.internal')
  const ep = (await proxy.stats()).endpoints.find((e) => e.address === b.address)
  t.is(ep?.state, 'healthy')
})

test('health checks of an http2 TLS service are HTTP/2 streams with :scheme https', async (t) => {
  const certs = makeUpstreamCerts(t)
  const b = await h2Backend(t, certs)
  const { proxy } = await startProxy(
    t,
    yaml({ pay: { endpoints: [b.address], extra: `\n    protocol: http2${tls({ serverName: 'payments.internal', ca: certs.ca })}\n    healthCheck: { path: /healthz, interval: 300ms, timeout: 250ms }` } }),
  )
  const until = Date.now() + 5000
  while (b.seen.length === 0 && Date.now() < until) await sleep(20)
  t.like(b.seen[0], { url: '/healthz', httpVersion: '2.0', alpn: 'h2', scheme: 'https' })
  const ep = (await proxy.stats()).endpoints.find((e) => e.address === b.address)
  t.is(ep?.state, 'healthy')
})

test('gRPC over TLS to a @grpc/grpc-js server', async (t) => {
  const certs = makeUpstreamCerts(t)
  const passthrough = (b: Buffer) => b
  const definition = {
    Echo: { path: '/test.Echo/Echo', requestStream: false, responseStream: false, requestSerialize: passthrough, requestDeserialize: passthrough, responseSerialize: passthrough, responseDeserialize: passthrough },
  } satisfies grpc.ServiceDefinition
  const server = new grpc.Server()
  server.addService(definition, {
    Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, done: grpc.sendUnaryData<Buffer>) => done(null, Buffer.concat([Buffer.from('echo '), call.request])),
  })
  const credentials = grpc.ServerCredentials.createSsl(null, [{ cert_chain: certs.pem.serverCert, private_key: certs.pem.serverKey }], false)
  const grpcPort = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', credentials, (e, p) => (e ? reject(e) : resolve(p))))
  t.teardown(() => server.forceShutdown())
  const { port } = await startProxy(
    t,
    `
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - { name: all, service: echo }
services:
  - name: echo
    protocol: http2
    endpoints: [127.0.0.1:${grpcPort}]${tls({ serverName: 'localhost', ca: certs.ca })}
`,
  )
  const Client = grpc.makeGenericClientConstructor(definition, 'Echo')
  const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as {
    Echo: (req: Buffer, cb: (e: grpc.ServiceError | null, r?: Buffer) => void) => void
    close: () => void
  }
  t.teardown(() => client.close())
  const reply = await new Promise<Buffer>((resolve, reject) => client.Echo(Buffer.from('hi'), (e, r) => (e || !r ? reject(e) : resolve(r))))
  t.is(reply.toString(), 'echo hi')
})

test('a service\'s tls block is checked with file:line:col: unreadable files, non-PEM content, a key that is not the certificate\'s, a cert without key', (t) => {
  const certs = makeUpstreamCerts(t)
  const file = join(certs.dir, 'mesh.yaml')
  writeFileSync(join(certs.dir, 'notes.txt'), 'not a certificate\n')
  const text = `services:
  - name: a
    endpoints: [127.0.0.1:9443]
    tls:
      ca: missing.crt
  - name: b
    endpoints: [127.0.0.1:9443]
    tls:
      ca: notes.txt
      cert: client.crt
      key: server.key
  - name: c
    endpoints: [127.0.0.1:9443]
    tls: { cert: client.crt }
  - name: d
    endpoints: [127.0.0.1:9443]
    tls: { serverName: "*.internal" }
`
  const r = loadConfigText(text, { file })
  const lines = r.diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic)
  t.falsy(r.config)
  const has = (at: string, what: RegExp) => t.true(lines.some((l) => l.includes(at) && what.test(l)), `${at} ${what}:\n${lines.join('\n')}`)
  has('mesh.yaml:5:11', /cannot read tls ca ".*missing\.crt": no such file/)
  has('mesh.yaml:9:11', /notes\.txt" holds no PEM certificate/)
  has('mesh.yaml:11:12', /is not the private key of cert/)
  has('mesh.yaml:14:', /tls has a cert but no key/)
  has('mesh.yaml:17:', /server name "\*\.internal" is a wildcard/)
})

test('a service\'s tls block loads into the model with paths resolved against the YAML file', (t) => {
  const certs = makeUpstreamCerts(t)
  const file = join(certs.dir, 'mesh.yaml')
  const r = loadConfigText(
    `services:\n  - name: a\n    endpoints: [127.0.0.1:9443]\n    tls: { serverName: Payments.Internal, ca: ca.crt, cert: client.crt, key: client.key }\n  - name: b\n    endpoints: [127.0.0.1:80]\n`,
    { file },
  )
  t.deepEqual(r.diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic), [])
  t.deepEqual(r.config?.services[0]?.tls, { serverName: 'payments.internal', ca: certs.ca, cert: certs.clientCert, key: certs.clientKey })
  t.is(r.config?.services[1]?.tls, null)
})
