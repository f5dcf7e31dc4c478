/**
 * TLS termination on a listener, end to end with real clients: curl (SNI picks the certificate,
 * ALPN), Node `https` (HTTP/1.1), `http2.connect` over TLS (ALPN h2), raw `tls.connect` (ALPN
 * choices, TLS 1.2 accepted, TLS 1.1 refused), a client trusting another CA refused, a plaintext
 * client refused cleanly, certificates reloaded from changed files while an open connection
 * keeps working, gRPC and WebSocket over TLS, and an Ingress with spec.tls and its Secret.
 */
import { execFile } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import http from 'node:http'
import http2 from 'node:http2'
import https from 'node:https'
import net from 'node:net'
import { join } from 'node:path'
import tls from 'node:tls'
import test, { type ExecutionContext } from 'ava'
import * as grpc from '@grpc/grpc-js'
import WebSocket from 'ws'
import { loadConfigText } from '../ts/index.js'
import { startBackend, type Backend } from './helpers/backend.js'
import { makeCa, type CertFiles, type TestCa } from './helpers/certs.js'
import { grpcEchoCaller, startGrpcEcho } from './helpers/grpc-echo.js'
import { sleep } from './helpers/http.js'
import { load, startProxy, type Started } from './helpers/proxy.js'
import { startWsBackend } from './helpers/ws.js'
import { runCli, spawnCli } from './helpers/cli.js'
import { echo, startTcpServer } from './helpers/tcp.js'

const WEB = 'web.example.com'
const API = 'api.example.com'

interface TlsSetup extends Started {
  ca: TestCa
  web: CertFiles
  api: CertFiles
  backend: Backend
}

/** A TLS listener with two certificates (web, api by SNI; web is the default) in front of one backend. */
async function tlsProxy(t: ExecutionContext, extra: { service?: string; backendAddress?: string; routes?: string; listener?: string } = {}): Promise<TlsSetup> {
  const ca = makeCa(t)
  const web = ca.issue('web', [WEB, `www.${WEB}`])
  const api = ca.issue('api', [API])
  const backend = await startBackend(t, 'b', (req, res) => {
    req.resume()
    req.on('end', () => res.end(`${req.httpVersion} ${req.headers['x-forwarded-proto']}`))
  })
  const yaml = `
admin: null
listeners:
  - name: web
    address: 127.0.0.1:0${extra.listener ?? ''}
    tls:
      certificates:
        - cert: web.crt
          key: web.key
        - cert: api.crt
          key: api.key
          hosts: [${API}]
    routes:${extra.routes ?? ''}
      - name: all
        service: s
services:
  - name: s
    endpoints: [${extra.backendAddress ?? backend.address}]
${extra.service ?? ''}`
  const model = load(yaml, { file: join(ca.dir, 'meshproxy.yaml') })
  const started = await startProxy(t, model)
  return { ...started, ca, web, api, backend }
}

function curl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('curl', ['-sS', '--max-time', '10', ...args], (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0
      resolve({ code, stdout, stderr })
    })
  })
}

function metric(text: string, line: string): number {
  const found = text.split('\n').find((l) => l.startsWith(`${line} `))
  return found === undefined ? Number.NaN : Number(found.slice(line.length + 1))
}

interface Handshake {
  alpn: string | false
  protocol: string | null
  cn: string
  socket: tls.TLSSocket
}

function handshake(port: number, opts: tls.ConnectionOptions): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ...opts }, () => {
      resolve({ alpn: socket.alpnProtocol ?? false, protocol: socket.getProtocol(), cn: String(socket.getPeerCertificate().subject?.CN ?? ''), socket })
    })
    socket.once('error', reject)
  })
}

function httpsGet(port: number, ca: string, servername: string, agent?: https.Agent): Promise<{ status: number; body: string; cn: string; headers: http.IncomingHttpHeaders; socket: tls.TLSSocket }> {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path: '/', ca, servername, headers: { host: servername }, ...(agent ? { agent } : {}) }, (res) => {
      // Taken now: a keep-alive socket is detached from the response once it ends.
      const socket = res.socket as tls.TLSSocket
      const cn = String(socket.getPeerCertificate().subject?.CN ?? '')
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => (body += c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, cn, headers: res.headers, socket }))
    })
    req.on('error', reject)
  })
}

test('curl: SNI picks the certificate per host, verified against the test CA, over HTTP/1.1 and h2', async (t) => {
  const p = await tlsProxy(t)
  for (const [host, cn] of [[WEB, WEB], [API, API], [`www.${WEB}`, WEB]] as const) {
    const r = await curl(['-v', '--http1.1', '--cacert', p.ca.cert, '--resolve', `${host}:${p.port}:127.0.0.1`, `https://${host}:${p.port}/`])
    t.is(r.code, 0, r.stderr)
    t.is(r.stdout, '1.1 https', 'the backend sees X-Forwarded-Proto: https')
    t.regex(r.stderr, new RegExp(`subject: CN=${cn.replaceAll('.', '\\.')}`), `${host} is served ${cn}'s certificate`)
    t.regex(r.stderr, /ALPN: server accepted http\/1\.1/)
  }
  const h2 = await curl(['-v', '--http2', '--cacert', p.ca.cert, '--resolve', `${API}:${p.port}:127.0.0.1`, `https://${API}:${p.port}/`])
  t.is(h2.code, 0, h2.stderr)
  t.regex(h2.stderr, /ALPN: server accepted h2/)
  t.regex(h2.stderr, /subject: CN=api\.example\.com/)
  t.is(h2.stdout, '1.1 https')
})

test('a redirect on a TLS listener keeps the https scheme of an HTTP/1.1 request', async (t) => {
  const p = await tlsProxy(t, { routes: '\n      - name: moved\n        match: { path: /old }\n        redirect: { path: /new }' })
  const r = await curl(['-i', '--http1.1', '--cacert', p.ca.cert, '--resolve', `${WEB}:${p.port}:127.0.0.1`, `https://${WEB}:${p.port}/old`])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, new RegExp(`^location: https://${WEB.replaceAll('.', '\\.')}:${p.port}/new\r$`, 'mi'))
})

test('Node https (HTTP/1.1) and http2.connect (ALPN h2) get answers over TLS', async (t) => {
  const p = await tlsProxy(t)
  const r = await httpsGet(p.port, p.ca.pem, WEB)
  t.is(r.status, 200)
  t.is(r.cn, WEB)
  t.is(r.socket.alpnProtocol, false, 'Node\'s https offers no ALPN: served after detection')
  const alpn = await httpsGet(p.port, p.ca.pem, WEB, new https.Agent({ ALPNProtocols: ['http/1.1'] } as https.AgentOptions))
  t.is(alpn.socket.alpnProtocol, 'http/1.1')
  t.is(alpn.body, '1.1 https')

  const session = http2.connect(`https://127.0.0.1:${p.port}`, { ca: p.ca.pem, servername: API })
  t.teardown(() => session.close())
  await new Promise<void>((resolve, reject) => {
    session.once('connect', () => resolve())
    session.once('error', reject)
  })
  t.is(session.alpnProtocol, 'h2')
  for (let i = 0; i < 3; i++) {
    const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = session.request({ ':path': `/${i}`, ':authority': API })
      let body = ''
      let status = 0
      req.setEncoding('utf8')
      req.on('response', (h) => (status = Number(h[':status'])))
      req.on('data', (c: string) => (body += c))
      req.on('end', () => resolve({ status, body }))
      req.on('error', reject)
      req.end()
    })
    t.is(status, 200)
    t.is(body, '1.1 https')
  }
  t.is(p.backend.requests.length, 5)
})

test('tls.connect: ALPN h2 or http/1.1 as offered, none falls back to detection; TLS 1.2 accepted, TLS 1.1 refused', async (t) => {
  const p = await tlsProxy(t)
  const both = await handshake(p.port, { ca: p.ca.pem, servername: WEB, ALPNProtocols: ['h2', 'http/1.1'] })
  t.is(both.alpn, 'h2')
  both.socket.destroy()
  const h1 = await handshake(p.port, { ca: p.ca.pem, servername: WEB, ALPNProtocols: ['http/1.1'] })
  t.is(h1.alpn, 'http/1.1')
  h1.socket.destroy()

  // No ALPN: the decrypted bytes go through protocol detection, as on a plaintext port.
  const none = await handshake(p.port, { ca: p.ca.pem, servername: WEB })
  t.is(none.alpn, false)
  const answer = await new Promise<string>((resolve) => {
    let got = ''
    none.socket.setEncoding('latin1')
    none.socket.on('data', (c: string) => (got += c))
    none.socket.on('end', () => resolve(got))
    none.socket.write(`GET / HTTP/1.1\r\nhost: ${WEB}\r\nconnection: close\r\n\r\n`)
  })
  t.regex(answer, /^HTTP\/1\.1 200 /)
  t.true(answer.endsWith('1.1 https'))

  const v12 = await handshake(p.port, { ca: p.ca.pem, servername: API, maxVersion: 'TLSv1.2' })
  t.is(v12.protocol, 'TLSv1.2')
  t.is(v12.cn, API)
  v12.socket.destroy()
  const v13 = await handshake(p.port, { ca: p.ca.pem, servername: API })
  t.is(v13.protocol, 'TLSv1.3')
  v13.socket.destroy()

  // SECLEVEL=0 lets this OpenSSL client offer TLS 1.1 at all; the refusal is the proxy's.
  const old = await t.throwsAsync(handshake(p.port, { ca: p.ca.pem, servername: WEB, minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' }))
  t.regex(String((old as NodeJS.ErrnoException).code ?? old?.message), /PROTOCOL_VERSION|WRONG_VERSION|UNSUPPORTED_PROTOCOL|HANDSHAKE_FAILURE/i)
  const text = p.proxy.metrics()
  t.true(metric(text, 'meshproxy_tls_handshake_failures_total{listener="web",reason="incompatible"}') >= 1, 'counted as incompatible')
  // Complete on the proxy's side for sure: the one that carried a request, and TLS 1.2 (whose
  // server Finished comes last). The clients that closed right after a TLS 1.3 handshake may be
  // counted as closed before the proxy read their Finished.
  t.true(metric(text, 'meshproxy_tls_handshakes_total{listener="web"}') >= 2)
})

test('a refused handshake closes after its alert without a reset, though the client wrote more after its ClientHello', async (t) => {
  const p = await tlsProxy(t)
  // A ClientHello the proxy refuses (TLS 1.1 only), as OpenSSL writes it, caught by a local server.
  const hello = await new Promise<Buffer>((resolve, reject) => {
    const catcher = net.createServer((s) => s.once('data', (c: Buffer) => { resolve(c); s.destroy(); catcher.close() }))
    catcher.listen(0, '127.0.0.1', () => {
      const { port } = catcher.address() as net.AddressInfo
      tls.connect({ host: '127.0.0.1', port, servername: WEB, minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' }).on('error', () => {})
    })
    catcher.on('error', reject)
  })
  t.is(hello[0], 0x16)
  // The hello and 40 KB more at once: more than the handshake reads, so some is still unread when
  // the proxy gives up. Closed over unread bytes, the connection would be reset (the kernel
  // answers a close with unread data by RST), and a reset can discard the alert before the client
  // reads it. Closed gently, it is only half-closed: the client can still write and end its side.
  const got = await new Promise<{ bytes: Buffer; error?: string }>((resolve) => {
    const chunks: Buffer[] = []
    let error: string | undefined
    const s = net.connect({ port: p.port, host: '127.0.0.1', allowHalfOpen: true }, () => s.write(Buffer.concat([hello, Buffer.alloc(40_000, 0x17)])))
    s.on('data', (c: Buffer) => chunks.push(c))
    s.on('end', () => s.end('the client has the last word'))
    s.on('error', (e: NodeJS.ErrnoException) => (error = e.code))
    s.on('close', () => resolve({ bytes: Buffer.concat(chunks), error }))
  })
  t.is(got.error, undefined, 'not reset')
  t.is(got.bytes[0], 0x15, 'a TLS alert record')
  t.is(got.bytes[got.bytes.length - 1], 40, 'handshake_failure: no version in common')
  t.is(metric(p.proxy.metrics(), 'meshproxy_tls_handshake_failures_total{listener="web",reason="incompatible"}'), 1)
})

test('a client trusting another CA refuses the certificate; curl\'s alert is counted', async (t) => {
  const p = await tlsProxy(t)
  const other = makeCa(t, 'another CA')
  const err = await t.throwsAsync(httpsGet(p.port, other.pem, WEB))
  t.regex(String((err as NodeJS.ErrnoException).code), /UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT|SELF_SIGNED/)
  const before = metric(p.proxy.metrics(), 'meshproxy_tls_handshake_failures_total{listener="web",reason="peer-alert"}')
  const r = await curl(['--cacert', other.cert, '--resolve', `${WEB}:${p.port}:127.0.0.1`, `https://${WEB}:${p.port}/`])
  t.is(r.code, 60, `curl: peer certificate cannot be authenticated (${r.stderr})`)
  t.is(p.backend.requests.length, 0, 'nothing reached the backend')
  // The failure is counted once the proxy reads the alert.
  let after = before
  for (let i = 0; i < 50 && after === before; i++) {
    await sleep(20)
    after = metric(p.proxy.metrics(), 'meshproxy_tls_handshake_failures_total{listener="web",reason="peer-alert"}')
  }
  t.is(after, before + 1)
})

test('a plaintext client on the TLS port is refused: HTTP/1 gets 400 tls-required, other bytes a closed connection', async (t) => {
  const p = await tlsProxy(t)
  const res = await new Promise<{ status: number; error: string | undefined; body: string }>((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port: p.port, path: '/', headers: { host: WEB } }, (r) => {
        let body = ''
        r.setEncoding('utf8')
        r.on('data', (c: string) => (body += c))
        r.on('end', () => resolve({ status: r.statusCode ?? 0, error: r.headers['meshproxy-error'] as string | undefined, body }))
      })
      .on('error', reject)
  })
  t.is(res.status, 400)
  t.is(res.error, 'tls-required')
  t.regex(res.body, /TLS/)

  const closed = await new Promise<string>((resolve) => {
    const s = net.connect(p.port, '127.0.0.1', () => s.write('\x00\x01garbage'))
    let got = ''
    s.on('data', (c) => (got += c.toString('latin1')))
    s.on('close', () => resolve(got))
    s.on('error', () => {})
  })
  t.is(closed, '', 'closed without an answer')
  t.is(p.backend.requests.length, 0)
  const text = p.proxy.metrics()
  t.is(metric(text, 'meshproxy_tls_handshake_failures_total{listener="web",reason="plaintext"}'), 2)
  t.is(metric(text, 'meshproxy_proxy_errors_total{listener="web",error="tls-required"}'), 1)
  const stats = await p.proxy.stats()
  t.is(stats.tlsHandshakeFailures, 2)
  t.is(stats.tlsHandshakes, 0)
})

test('a client that starts no handshake is closed after the header-read timeout, counted as a timeout', async (t) => {
  const p = await tlsProxy(t, { listener: '\n    headerReadTimeout: 200ms' })
  const closed = await new Promise<boolean>((resolve) => {
    const s = net.connect(p.port, '127.0.0.1')
    s.on('close', () => resolve(true))
    s.on('error', () => {})
    s.resume()
  })
  t.true(closed)
  t.is(metric(p.proxy.metrics(), 'meshproxy_tls_handshake_failures_total{listener="web",reason="timeout"}'), 1)
})

test('changed certificate files are served to new handshakes while an open keep-alive connection keeps working; a bad change keeps the old certificate', async (t) => {
  const p = await tlsProxy(t)
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  const first = await httpsGet(p.port, p.ca.pem, WEB, agent)
  t.is(first.cn, WEB)
  const serial = first.socket.getPeerCertificate().serialNumber

  p.ca.issue('web', [WEB, `www.${WEB}`], { cn: `${WEB} renewed` })
  let cn = ''
  for (let i = 0; i < 100 && cn !== `${WEB} renewed`; i++) {
    await sleep(50)
    const h = await handshake(p.port, { ca: p.ca.pem, servername: WEB })
    cn = h.cn
    h.socket.destroy()
  }
  t.is(cn, `${WEB} renewed`, 'a new handshake gets the new certificate')

  const again = await httpsGet(p.port, p.ca.pem, WEB, agent)
  t.is(again.status, 200)
  t.is(again.socket, first.socket, 'the same keep-alive connection')
  t.is(again.socket.getPeerCertificate().serialNumber, serial, 'still on the certificate it was opened with')

  // A broken file: logged and refused; the renewed certificate keeps serving. (A failure may
  // already be counted: the tick can see the new certificate before its new key.)
  const failed = (): number => metric(p.proxy.metrics(), 'meshproxy_tls_certificate_reloads_total{listener="web",result="failed"}')
  const before = failed()
  writeFileSync(p.web.cert, 'not a certificate\n')
  let failures = before
  for (let i = 0; i < 100 && failures === before; i++) {
    await sleep(50)
    failures = failed()
  }
  t.is(failures, before + 1)
  const h = await handshake(p.port, { ca: p.ca.pem, servername: WEB })
  t.is(h.cn, `${WEB} renewed`)
  h.socket.destroy()
  t.true(metric(p.proxy.metrics(), 'meshproxy_tls_certificate_reloads_total{listener="web",result="ok"}') >= 1)
})

test('gRPC over TLS with @grpc/grpc-js', async (t) => {
  const { port } = await startGrpcEcho(t, { prefix: 'echo:' })
  const p = await tlsProxy(t, { backendAddress: `127.0.0.1:${port}`, service: '    protocol: http2' })
  const call = grpcEchoCaller(t, `127.0.0.1:${p.port}`, grpc.credentials.createSsl(Buffer.from(p.ca.pem)), {
    'grpc.ssl_target_name_override': API,
    'grpc.default_authority': API,
  })
  const reply = await call(Buffer.from('hi'))
  t.is(reply.toString(), 'echo:hi')
})

test('WebSocket over TLS with ws', async (t) => {
  const wsBackend = await startWsBackend(t)
  const p = await tlsProxy(t, { backendAddress: wsBackend.address })
  // ws hands its options to https.request, which passes servername on to tls.connect.
  const options: WebSocket.ClientOptions & Pick<tls.ConnectionOptions, 'servername'> = { ca: p.ca.pem, servername: WEB, headers: { host: WEB } }
  const ws = new WebSocket(`wss://127.0.0.1:${p.port}/chat`, options)
  t.teardown(() => ws.terminate())
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve())
    ws.once('error', reject)
  })
  const echoed = new Promise<string>((resolve) => ws.once('message', (d) => resolve(d.toString())))
  ws.send('over tls')
  t.is(await echoed, 'echo:over tls')
  t.is(wsBackend.upgrades[0]?.['x-forwarded-proto'], 'https')
})

const b64 = (s: string): string => Buffer.from(s).toString('base64')

function ingressYaml(secretName: string, secret: string, backendPort: number): string {
  return `apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: ingress
  annotations:
    kubernetes.io/ingress.class: linkerd
spec:
  tls:
  - hosts: [service-a.example.com]
    secretName: ${secretName}
  rules:
  - host: service-a.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: service-a
            port:
              number: 80
---
apiVersion: v1
kind: Service
metadata:
  name: service-a
spec:
  ports:
  - port: 80
    targetPort: ${backendPort}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: service-a-1
  labels:
    kubernetes.io/service-name: service-a
addressType: IPv4
ports:
- port: ${backendPort}
endpoints:
- addresses: [127.0.0.1]
  conditions:
    ready: true
${secret}`
}

test('an Ingress with spec.tls and its kubernetes.io/tls Secret serves its host over TLS; a missing Secret is an error at secretName', async (t) => {
  const ca = makeCa(t)
  const files = ca.issue('a', ['service-a.example.com'])
  const { readFileSync } = await import('node:fs')
  const backend = await startBackend(t, 'a')
  const secret = `---
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata:
  name: service-a-tls
data:
  tls.crt: ${b64(readFileSync(files.cert, 'utf8'))}
  tls.key: ${b64(readFileSync(files.key, 'utf8'))}
`
  const model = load(ingressYaml('service-a-tls', secret, backend.port), { defaultListen: '127.0.0.1:0', defaultAdmin: null })
  t.is(model.listeners[0]?.tls?.certificates.length, 1)
  t.deepEqual(model.listeners[0]?.tls?.certificates[0]?.hosts, ['service-a.example.com'])
  const p = await startProxy(t, model)
  const r = await curl(['-v', '--cacert', ca.cert, '--resolve', `service-a.example.com:${p.port}:127.0.0.1`, `https://service-a.example.com:${p.port}/x`])
  t.is(r.code, 0, r.stderr)
  t.is(r.stdout, 'a')
  t.regex(r.stderr, /subject: CN=service-a\.example\.com/)

  const missing = loadConfigText(ingressYaml('nope', secret, backend.port), { file: 'ingress.yaml', defaultListen: '127.0.0.1:0' })
  t.is(missing.config, null)
  const e = missing.diagnostics.find((d) => d.severity === 'error' && d.message.includes('Secret'))
  t.truthy(e)
  t.is(e?.line, 10, 'at secretName')
  t.regex(e?.message ?? '', /Secret "default\/nope".*not in this file/)
})

test('meshproxy check and run take the Ingress with spec.tls and its Secret; a Secret of another type is an error at secretName', async (t) => {
  const ca = makeCa(t)
  const files = ca.issue('a', ['service-a.example.com'])
  const backend = await startBackend(t, 'a')
  const { readFileSync } = await import('node:fs')
  // stringData: the PEM as text.
  const indent = (pem: string): string => pem.trim().split('\n').map((l) => `    ${l}`).join('\n')
  const secret = (type: string): string => `---
apiVersion: v1
kind: Secret
type: ${type}
metadata:
  name: service-a-tls
stringData:
  tls.crt: |
${indent(readFileSync(files.cert, 'utf8'))}
  tls.key: |
${indent(readFileSync(files.key, 'utf8'))}
`
  const good = join(ca.dir, 'ingress.yaml')
  writeFileSync(good, ingressYaml('service-a-tls', secret('kubernetes.io/tls'), backend.port))
  const checked = await runCli(t, ['check', good])
  t.is(checked.code, 0, checked.stderr)

  const opaque = join(ca.dir, 'opaque.yaml')
  writeFileSync(opaque, ingressYaml('service-a-tls', secret('Opaque'), backend.port))
  const refused = await runCli(t, ['check', opaque])
  t.is(refused.code, 1)
  t.true(refused.stderr.includes(`${opaque}:10:17: error: Secret "default/service-a-tls" named by Ingress "ingress" has type Opaque`), refused.stderr)

  const cli = spawnCli(t, ['run', '-c', good, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'])
  const [, port] = await cli.waitForStdout(/listening on https:\/\/127\.0\.0\.1:(\d+)/)
  const r = await curl(['--cacert', ca.cert, '--resolve', `service-a.example.com:${port}:127.0.0.1`, `https://service-a.example.com:${port}/`])
  t.is(r.code, 0, r.stderr)
  t.is(r.stdout, 'a')
})

test('a tcp listener with tls forwards the decrypted bytes to its tcpService', async (t) => {
  const ca = makeCa(t)
  ca.issue('db', ['db.example.com'])
  const upstream = await startTcpServer(t, echo)
  const model = load(
    `admin: null
listeners:
  - name: db
    address: 127.0.0.1:0
    protocol: tcp
    tcpService: db
    tls:
      certificates: [{ cert: db.crt, key: db.key }]
services:
  - name: db
    endpoints: [${upstream.address}]
`,
    { file: join(ca.dir, 'meshproxy.yaml') },
  )
  const p = await startProxy(t, model)
  const h = await handshake(p.port, { ca: ca.pem, servername: 'db.example.com' })
  const sent = '\x00binary\xffok'
  const echoed = new Promise<string>((resolve) => {
    let got = ''
    h.socket.setEncoding('latin1')
    h.socket.on('data', (c: string) => {
      got += c
      if (got.length >= sent.length) resolve(got)
    })
  })
  h.socket.write(Buffer.from(sent, 'latin1'))
  t.is(await echoed, sent)
  h.socket.destroy()
})

test('bad TLS files are errors at their place: a missing file, a file without PEM, a key of another certificate', (t) => {
  const ca = makeCa(t)
  ca.issue('web', [WEB])
  ca.issue('api', [API])
  writeFileSync(join(ca.dir, 'junk.pem'), 'hello\n')
  const yaml = (cert: string, key: string): string => `listeners:
  - name: web
    tls:
      certificates:
        - cert: ${cert}
          key: ${key}
    routes: []
`
  const file = join(ca.dir, 'meshproxy.yaml')
  // The value of `cert:` starts at 5:17, that of `key:` at 6:16.
  const cases: Array<[string, string, RegExp, number, number]> = [
    ['nope.crt', 'web.key', /cannot read TLS certificate file ".*nope\.crt": no such file/, 5, 17],
    ['junk.pem', 'web.key', /junk\.pem" holds no PEM certificate/, 5, 17],
    ['web.crt', 'junk.pem', /junk\.pem" holds no PEM private key/, 6, 16],
    ['web.crt', 'api.key', /private key ".*api\.key" does not belong to the certificate ".*web\.crt"/, 6, 16],
  ]
  for (const [cert, key, message, line, column] of cases) {
    const r = loadConfigText(yaml(cert, key), { file })
    t.is(r.config, null, `${cert} + ${key}`)
    const e = r.diagnostics.find((d) => d.severity === 'error')
    t.regex(e?.message ?? '', message)
    t.is(e?.file, file)
    t.is(e?.line, line)
    t.is(e?.column, column)
  }
  const none = loadConfigText(`listeners:\n  - name: web\n    tls: {}\n    routes: []\n`, { file })
  t.regex(none.diagnostics.find((d) => d.severity === 'error')?.message ?? '', /TLS listener "web" has no certificate/)
})
