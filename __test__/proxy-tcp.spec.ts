/**
 * Opaque TCP through meshproxy, on real sockets: `protocol: tcp` listeners, an `http` listener's
 * `tcpService` for non-HTTP clients and for server-speaks-first protocols (detect timeout),
 * half-close both ways, refusal without a tcpService, metrics, upstream connect failure and
 * closing the proxy with tunnels open.
 */
import { randomBytes } from 'node:crypto'
import test from 'ava'
import { closedPort, startBackend } from './helpers/backend.js'
import { h2connect, h2request } from './helpers/h2.js'
import { get, rawRequest, sleep, tryConnect } from './helpers/http.js'
import { startProxy } from './helpers/proxy.js'
import { Collector, echo, metricValue, peerGone, startTcpServer, tcpConnect, write } from './helpers/tcp.js'

/** One `protocol: tcp` listener forwarding to service `svc` over `endpoint`. */
function tcpYaml(endpoint: string, opts: { admin?: boolean; svc?: string } = {}): string {
  const svc = opts.svc ?? 'echo'
  return `
admin: ${opts.admin ? '127.0.0.1:0' : 'null'}
listeners:
  - name: tcp
    address: 127.0.0.1:0
    protocol: tcp
    tcpService: ${svc}
services:
  - name: ${svc}
    endpoints: [${endpoint}]
`
}

/** One `http` listener routing HTTP to `web`, with `tcpService` (when given) for the rest. */
function httpYaml(web: string, tcp: { endpoint: string; tcpService?: boolean; detectTimeout?: string }): string {
  const tcpService = tcp.tcpService ?? true
  return `
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0${tcpService ? '\n    tcpService: raw' : ''}${tcp.detectTimeout ? `\n    detectTimeout: ${tcp.detectTimeout}` : ''}
    routes:
      - name: all
        service: web
services:
  - name: web
    endpoints: [${web}]
  - name: raw
    endpoints: [${tcp.endpoint}]
`
}

test('tcp listener: bytes both ways, 5 MB of random binary data echoed exactly', async (t) => {
  const server = await startTcpServer(t, echo)
  const { port } = await startProxy(t, tcpYaml(server.address))
  const client = await tcpConnect(t, port)

  await write(client.socket, 'hello')
  await client.received.bytes(5)
  t.is(client.received.text(), 'hello')

  const big = randomBytes(5 * 1024 * 1024)
  client.socket.end(big)
  await client.received.end(30_000)
  t.is(client.received.length, 5 + big.length)
  t.true(client.received.data.subarray(5).equals(big), '5 MB came back byte for byte')
  await client.received.close()
  t.is(server.connections, 1)
})

test('half-close by the client: the server still replies after EOF, the client gets all of it', async (t) => {
  const reply = randomBytes(1024 * 1024)
  let sawEof = false
  let requestBytes = 0
  const server = await startTcpServer(t, (socket) => {
    socket.on('data', (c: Buffer) => (requestBytes += c.length))
    socket.on('end', () => {
      sawEof = true
      // Answer only after the EOF, a little later, to be sure the reply follows the half-close.
      setTimeout(() => socket.end(reply), 50)
    })
  })
  const { port } = await startProxy(t, tcpYaml(server.address))
  const client = await tcpConnect(t, port)

  const request = Buffer.alloc(100_000, 'q')
  client.socket.end(request)
  await client.received.end()
  t.true(sawEof, 'the server received the client FIN')
  t.is(requestBytes, request.length)
  t.is(client.received.length, reply.length)
  t.true(client.received.data.equals(reply), 'the whole reply arrived after the client half-closed')
  await client.received.close()
})

test('half-close by the server: the client keeps sending after EOF, the server gets all of it', async (t) => {
  let serverGot: Promise<Buffer> | undefined
  const server = await startTcpServer(t, (socket) => {
    const c = new Collector(socket)
    serverGot = c.end().then(() => c.data)
    socket.end('banner, then FIN\n')
  })
  const { port } = await startProxy(t, tcpYaml(server.address))
  const client = await tcpConnect(t, port)

  await client.received.end()
  t.is(client.received.text(), 'banner, then FIN\n')
  t.false(client.received.closed, 'the client side is still open for writing')

  const tail = randomBytes(256 * 1024)
  await write(client.socket, 'still sending 1\n')
  await sleep(50)
  await write(client.socket, 'still sending 2\n')
  client.socket.end(tail)
  t.truthy(serverGot)
  const got = await serverGot!
  t.is(got.length, 32 + tail.length)
  t.is(got.subarray(0, 32).toString(), 'still sending 1\nstill sending 2\n')
  t.true(got.subarray(32).equals(tail))
  await client.received.close()
})

test('http listener with tcpService: non-HTTP clients go to the TCP server, HTTP still routes', async (t) => {
  const web = await startBackend(t, 'web')
  const raw = await startTcpServer(t, echo)
  const { port, address } = await startProxy(t, httpYaml(web.address, { endpoint: raw.address }))

  // A TLS ClientHello-like binary start.
  const hello = Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]), randomBytes(4096)])
  const tls = await tcpConnect(t, port)
  await write(tls.socket, hello)
  await tls.received.bytes(hello.length)
  t.true(tls.received.data.equals(hello), 'binary bytes echoed by the TCP server')

  const line = await tcpConnect(t, port)
  await write(line.socket, 'HELLO\r\n')
  await line.received.includes('HELLO\r\n')
  await write(line.socket, 'MORE\r\n')
  await line.received.includes('MORE\r\n')
  t.is(line.received.text(), 'HELLO\r\nMORE\r\n')
  t.is(raw.connections, 2)

  // The same listener still serves HTTP/1.1 and h2c to its route.
  const res = await get(port, '/x')
  t.is(res.status, 200)
  t.is(res.body, 'web')
  const session = h2connect(t, address)
  const h2 = await h2request(session, { ':path': '/h2' })
  t.is(h2.status, 200)
  t.is(h2.body, 'web')
  t.deepEqual(web.requests.map((r) => r.url), ['/x', '/h2'])
  t.is(raw.connections, 2, 'HTTP connections did not reach the TCP server')
})

test('server-speaks-first: a silent client gets the banner after the detect timeout, then talks', async (t) => {
  const web = await startBackend(t, 'web')
  const smtp = await startTcpServer(t, (socket) => {
    socket.write('220 smtp ready\r\n')
    let buf = ''
    socket.setEncoding('latin1')
    socket.on('data', (s: string) => {
      buf += s
      let i
      while ((i = buf.indexOf('\r\n')) !== -1) {
        const cmd = buf.slice(0, i)
        buf = buf.slice(i + 2)
        if (cmd === 'QUIT') socket.end('221 bye\r\n')
        else socket.write(`250 ok ${cmd}\r\n`)
      }
    })
  })
  const { port } = await startProxy(t, httpYaml(web.address, { endpoint: smtp.address, detectTimeout: '300ms' }))
  const client = await tcpConnect(t, port)
  await client.received.includes('220 smtp ready\r\n', 5000)
  const waited = client.elapsed()
  t.true(waited >= 250, `banner arrived after ${Math.round(waited)} ms, before the 300 ms detect timeout`)
  t.true(waited < 2000, `banner took ${Math.round(waited)} ms`)
  t.is(smtp.connections, 1)

  // "EHLO me" would look like an HTTP request line; after detection it is just bytes.
  await write(client.socket, 'EHLO me\r\n')
  await client.received.includes('250 ok EHLO me\r\n')
  await write(client.socket, 'QUIT\r\n')
  await client.received.end()
  t.is(client.received.text(), '220 smtp ready\r\n250 ok EHLO me\r\n221 bye\r\n')
  t.is(web.requests.length, 0)
})

test('http listener without tcpService: non-HTTP bytes get 400 and reach no backend', async (t) => {
  const web = await startBackend(t, 'web')
  const raw = await startTcpServer(t, echo)
  const { port } = await startProxy(t, httpYaml(web.address, { endpoint: raw.address, tcpService: false }))

  const binary = await rawRequest(port, Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x68, 0x65, 0x6c, 0x6c, 0x6f]))
  t.is(binary.status, 400, `raw response: ${JSON.stringify(binary.raw)}`)
  const text = await rawRequest(port, 'HELLO\r\n')
  t.is(text.status, 400, `raw response: ${JSON.stringify(text.raw)}`)
  t.is(web.connections, 0)
  t.is(raw.connections, 0)
  // HTTP on the same listener works.
  t.is((await get(port, '/')).status, 200)
})

test('http listener without tcpService: a silent client is closed after the header-read timeout', async (t) => {
  const web = await startBackend(t, 'web')
  const raw = await startTcpServer(t, echo)
  const yaml = httpYaml(web.address, { endpoint: raw.address, tcpService: false }).replace('    routes:', '    headerReadTimeout: 400ms\n    routes:')
  const { port } = await startProxy(t, yaml)
  const client = await tcpConnect(t, port)
  await client.received.end(5000)
  const waited = client.elapsed()
  t.true(waited >= 350, `closed after ${Math.round(waited)} ms, before the 400 ms header-read timeout`)
  t.true(waited < 3000, `closed after ${Math.round(waited)} ms`)
  t.is(client.received.length, 0)
  t.is(raw.connections, 0)
  t.is(web.connections, 0)
})

test('metrics: tcp connections and the bytes the client sent, per service', async (t) => {
  const server = await startTcpServer(t, echo)
  const { port, adminPort } = await startProxy(t, tcpYaml(server.address, { admin: true, svc: 'db' }))
  const client = await tcpConnect(t, port)
  const sent = Buffer.concat([Buffer.from('hello '), randomBytes(12345)])
  client.socket.end(sent)
  await client.received.end()
  t.is(client.received.length, sent.length)
  await client.received.close()

  // The proxy finishes its side of the tunnel a moment after the client's close.
  let metrics = ''
  for (let i = 0; i < 100; i++) {
    metrics = (await get(adminPort, '/metrics')).body
    if (metricValue(metrics, 'meshproxy_tcp_connections_open{service="db"}') === 0) break
    await sleep(20)
  }
  t.is(metricValue(metrics, 'meshproxy_tcp_connections_open{service="db"}'), 0)
  t.true((metricValue(metrics, 'meshproxy_tcp_connections_total{service="db"}') ?? 0) >= 1, metrics)
  t.is(metricValue(metrics, 'meshproxy_tcp_bytes_total{service="db",direction="in"}'), sent.length)
  t.is(metricValue(metrics, 'meshproxy_tcp_bytes_total{service="db",direction="out"}'), sent.length)
})

test('upstream connect failure: the client connection is closed promptly', async (t) => {
  const dead = `127.0.0.1:${await closedPort()}`
  const viaTcp = await startProxy(t, tcpYaml(dead))
  const a = await tcpConnect(t, viaTcp.port)
  await a.received.end(3000)
  t.true(a.elapsed() < 2000, `closed after ${Math.round(a.elapsed())} ms`)
  t.is(a.received.length, 0)
  t.regex(await peerGone(a), /EPIPE|ECONNRESET|closed/)

  // The same through an http listener's tcpService.
  const web = await startBackend(t, 'web')
  const viaHttp = await startProxy(t, httpYaml(web.address, { endpoint: dead }))
  const b = await tcpConnect(t, viaHttp.port)
  await write(b.socket, '\x00\x01binary')
  await b.received.end(3000)
  t.true(b.elapsed() < 2000, `closed after ${Math.round(b.elapsed())} ms`)
  t.is(b.received.length, 0)
  t.regex(await peerGone(b), /EPIPE|ECONNRESET|closed/)
})

test('close({ graceMs: 200 }) ends open TCP connections and resolves', async (t) => {
  const server = await startTcpServer(t, echo)
  const { proxy, port } = await startProxy(t, tcpYaml(server.address))
  const clients = await Promise.all([0, 1, 2].map(() => tcpConnect(t, port)))
  for (const [i, c] of clients.entries()) {
    await write(c.socket, `ping ${i}`)
    await c.received.includes(`ping ${i}`)
  }
  t.is(server.open.size, 3)

  const started = performance.now()
  await proxy.close({ graceMs: 200 })
  const took = performance.now() - started
  t.true(took < 3000, `close took ${Math.round(took)} ms`)
  // Each client sees the proxy's FIN, and the proxy holds nothing of the connection any more.
  const gone = await Promise.all(clients.map((c) => peerGone(c)))
  for (const g of gone) t.regex(g, /EPIPE|ECONNRESET|closed/)
  t.log(`close took ${Math.round(took)} ms; client sockets: ${gone.join(', ')}`)
  // The upstream side of every tunnel is closed too.
  for (let i = 0; i < 100 && server.open.size > 0; i++) await sleep(20)
  t.is(server.open.size, 0)
  // And nothing listens any more.
  t.is(await tryConnect(port), 'ECONNREFUSED')
})
