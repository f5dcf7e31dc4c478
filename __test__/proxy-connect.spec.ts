/**
 * `CONNECT` tunnels allowed by a route (`allowConnect`): HTTP/1.1 `CONNECT host:port` and HTTP/2
 * `CONNECT` with `:authority`, matched by host, tunnelled to an endpoint of the route's service
 * (never to the authority the client named), bytes both ways with TCP metrics; refused with 403
 * `connect-refused` everywhere else.
 */
import http from 'node:http'
import type net from 'node:net'
import test, { type ExecutionContext } from 'ava'
import { startBackend } from './helpers/backend.js'
import { h2connect, h2request } from './helpers/h2.js'
import { load, startProxy } from './helpers/proxy.js'
import { Collector, echo, metricValue, startTcpServer, write } from './helpers/tcp.js'

async function setup(t: ExecutionContext) {
  const tcp = await startTcpServer(t, echo)
  // A server the client names in its authority: a tunnel must never reach it.
  const bystander = await startTcpServer(t, echo)
  const web = await startBackend(t, 'web')
  const started = await startProxy(
    t,
    load(`
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - name: tunnel
        match: { host: db.internal }
        service: echo
        allowConnect: true
      - name: empty
        match: { host: nowhere.internal }
        service: none
        allowConnect: true
      - name: web
        service: web
services:
  - name: echo
    endpoints: [${tcp.address}]
  - name: none
    endpoints: []
  - name: web
    endpoints: [${web.address}]
`),
  )
  return { ...started, tcp, bystander, web }
}

interface Connected {
  status: number
  headers: http.IncomingHttpHeaders
  socket: net.Socket
  received: Collector
}

function connect(port: number, authority: string): Promise<Connected> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'CONNECT', path: authority, agent: false })
    req.on('connect', (res: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
      const received = new Collector(socket)
      if (head.length > 0) socket.unshift(head)
      resolve({ status: res.statusCode ?? 0, headers: res.headers, socket, received })
    })
    req.on('response', (res: http.IncomingMessage) => {
      res.resume()
      resolve({ status: res.statusCode ?? 0, headers: res.headers, socket: res.socket, received: new Collector(res.socket) })
    })
    req.on('error', reject)
    req.end()
  })
}

test('HTTP/1.1 CONNECT to an allowed host: 200, bytes both ways to the service endpoint, half-close, TCP metrics', async (t) => {
  const { port, proxy, tcp, bystander } = await setup(t)
  // The authority names the bystander's port; the route's service decides where the tunnel goes.
  const c = await connect(port, `db.internal:${bystander.port}`)
  t.teardown(() => c.socket.destroy())
  t.is(c.status, 200)
  await write(c.socket, 'ping')
  await c.received.includes('ping')
  const big = Buffer.alloc(1024 * 1024, 'x')
  await write(c.socket, big)
  await c.received.bytes(4 + big.length)
  c.socket.end()
  await c.received.end()
  t.is(c.received.length, 4 + big.length)
  t.is(tcp.connections, 1)
  t.is(bystander.connections, 0, 'no connection to the authority the client named')
  const metrics = proxy.metrics()
  t.is(metricValue(metrics, 'meshproxy_tcp_connections_total{service="echo"}'), 1)
  t.is(metricValue(metrics, 'meshproxy_tcp_bytes_total{service="echo",direction="in"}'), 4 + big.length)
  t.is(metricValue(metrics, 'meshproxy_tcp_bytes_total{service="echo",direction="out"}'), 4 + big.length)
  t.is(metricValue(metrics, 'meshproxy_requests_total{listener="main",route="tunnel",service="echo",status_class="2xx"}'), 1)
})

test('HTTP/1.1 CONNECT refused: a route without allowConnect, or an IP authority, is 403 connect-refused and opens nothing', async (t) => {
  const { port, tcp, bystander, web, proxy } = await setup(t)
  for (const authority of ['web.test:443', `127.0.0.1:${bystander.port}`]) {
    const c = await connect(port, authority)
    c.socket.destroy()
    t.is(c.status, 403, authority)
    t.is(c.headers['meshproxy-error'], 'connect-refused', authority)
  }
  t.is(tcp.connections + bystander.connections + web.connections, 0)
  t.is(metricValue(proxy.metrics(), 'meshproxy_proxy_errors_total{listener="main",error="connect-refused"}'), 2)
})

test('CONNECT to an allowed route whose service has no endpoints: 503 no-endpoints', async (t) => {
  const { port } = await setup(t)
  const c = await connect(port, 'nowhere.internal:1')
  c.socket.destroy()
  t.is(c.status, 503)
  t.is(c.headers['meshproxy-error'], 'no-endpoints')
})

test('HTTP/2 CONNECT with :authority: a tunnel on one stream, other streams keep working; refused ones get 403', async (t) => {
  const { address, tcp, bystander, proxy } = await setup(t)
  const session = h2connect(t, address)
  const stream = session.request({ ':method': 'CONNECT', ':authority': `db.internal:${bystander.port}` }, { endStream: false })
  const status = await new Promise<number>((resolve, reject) => {
    stream.once('response', (h) => resolve(Number(h[':status'])))
    stream.once('error', reject)
  })
  t.is(status, 200)
  const chunks: Buffer[] = []
  const ended = new Promise<void>((resolve) => stream.on('end', () => resolve()))
  stream.on('data', (c: Buffer) => chunks.push(c))
  stream.write('hello over h2')
  // A normal request on the same connection while the tunnel is open.
  const other = await h2request(session, { ':path': '/', ':authority': 'web.test' })
  t.is(other.status, 200)
  t.is(other.body, 'web')
  stream.end()
  await ended
  t.is(Buffer.concat(chunks).toString(), 'hello over h2', 'echoed, then the backend’s FIN ended the stream')
  t.is(tcp.connections, 1)
  t.is(bystander.connections, 0)

  const refused = await h2request(session, { ':method': 'CONNECT', ':authority': 'web.test:443' })
  t.is(refused.status, 403)
  t.is(refused.headers['meshproxy-error'], 'connect-refused')
  t.is(metricValue(proxy.metrics(), 'meshproxy_tcp_bytes_total{service="echo",direction="in"}'), 'hello over h2'.length)
})
