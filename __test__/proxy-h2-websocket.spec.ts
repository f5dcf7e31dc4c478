/**
 * WebSocket over HTTP/2 (RFC 8441) through meshproxy: a `node:http2` client opens the WebSocket
 * with an extended CONNECT and speaks hand-encoded frames on the stream; the backend is a real
 * `ws` WebSocketServer reached over HTTP/1.1, so the proxy translates the handshake both ways.
 * Also: a refused upgrade is passed back, a backend that does not complete the handshake is a
 * 502, and a plain HTTP/2 CONNECT without `:protocol` is still refused.
 */
import http2 from 'node:http2'
import test, { type ExecutionContext } from 'ava'
import { h2connect, h2request } from './helpers/h2.js'
import { load, startProxy } from './helpers/proxy.js'
import { startWsBackend } from './helpers/ws.js'
import { metricValue } from './helpers/tcp.js'
import { FrameReader, OP, clientFrame, closePayload } from './helpers/wsframe.js'

function config(backend: string, protocol: 'http1' | 'http2' = 'http1') {
  return load(`
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - name: ws
        match: { host: ws.test, path: /chat, method: GET }
        service: s
services:
  - name: s
    protocol: ${protocol}
    endpoints: [${backend}]
`)
}

/** A session whose SETTINGS from the proxy have arrived (extended CONNECT needs them). */
async function session(t: ExecutionContext, address: string): Promise<http2.ClientHttp2Session> {
  const s = h2connect(t, address)
  await new Promise<void>((resolve) => s.once('remoteSettings', () => resolve()))
  return s
}

interface Opened {
  status: number
  headers: http2.IncomingHttpHeaders
  stream: http2.ClientHttp2Stream
  frames: FrameReader
}

function openWebSocket(s: http2.ClientHttp2Session, path = '/chat', extra: http2.OutgoingHttpHeaders = {}): Promise<Opened> {
  return new Promise((resolve, reject) => {
    const stream = s.request(
      { ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': path, ':authority': 'ws.test', 'sec-websocket-version': '13', ...extra },
      { endStream: false },
    )
    const frames = new FrameReader(stream)
    stream.on('error', reject)
    stream.once('response', (headers) => resolve({ status: Number(headers[':status']), headers, stream, frames }))
  })
}

test('the proxy advertises SETTINGS_ENABLE_CONNECT_PROTOCOL on h2c connections', async (t) => {
  const backend = await startWsBackend(t)
  const { address } = await startProxy(t, config(backend.address))
  const s = await session(t, address)
  t.true(s.remoteSettings.enableConnectProtocol)
})

test('extended CONNECT → HTTP/1.1 WebSocket: 200, subprotocol, messages both ways, close codes', async (t) => {
  const backend = await startWsBackend(t)
  const { address, proxy } = await startProxy(t, config(backend.address))
  const s = await session(t, address)
  const ws = await openWebSocket(s, '/chat', { 'sec-websocket-protocol': 'chat, superchat' })
  t.is(ws.status, 200)
  t.is(ws.headers['sec-websocket-protocol'], 'chat', 'the subprotocol the backend chose reaches the client')
  t.is(ws.headers['sec-websocket-accept'], undefined, 'the accept value belongs to the translated hop')

  // The backend saw a real HTTP/1.1 handshake with a fresh key and the client's subprotocols.
  const seen = backend.upgrades[0]!
  t.is(seen.upgrade, 'websocket')
  t.regex(String(seen.connection), /upgrade/i)
  t.is(seen['sec-websocket-version'], '13')
  t.is(Buffer.from(String(seen['sec-websocket-key']), 'base64').length, 16)
  t.is(seen['sec-websocket-protocol'], 'chat, superchat')
  t.is(seen.host, 'ws.test')

  ws.stream.write(clientFrame(OP.text, 'hello'))
  let f = await ws.frames.next()
  t.deepEqual([f.opcode, f.payload.toString()], [OP.text, 'echo:hello'])

  const big = Buffer.alloc(200_000, 7)
  big[12345] = 42
  ws.stream.write(clientFrame(OP.binary, big))
  f = await ws.frames.next()
  t.is(f.opcode, OP.binary)
  t.true(f.payload.equals(big), 'a 200 kB binary message comes back intact')

  // A server-initiated close passes its code and reason.
  ws.stream.write(clientFrame(OP.text, 'close:4001'))
  f = await ws.frames.next()
  t.is(f.opcode, OP.close)
  t.is(f.payload.readUInt16BE(0), 4001)
  t.is(f.payload.subarray(2).toString(), 'bye')
  ws.stream.end(clientFrame(OP.close, closePayload(4001)))
  await new Promise<void>((resolve) => ws.stream.once('close', () => resolve()))

  // A second WebSocket on the same session; this time the client closes.
  const second = await openWebSocket(s)
  t.is(second.status, 200)
  t.is(second.headers['sec-websocket-protocol'], undefined)
  second.stream.write(clientFrame(OP.text, 'again'))
  t.is((await second.frames.next()).payload.toString(), 'echo:again')
  second.stream.write(clientFrame(OP.close, closePayload(1000, 'done')))
  f = await second.frames.next()
  t.is(f.opcode, OP.close)
  t.is(f.payload.readUInt16BE(0), 1000, 'the backend answers the client close')

  const metrics = proxy.metrics()
  t.is(metricValue(metrics, 'meshproxy_requests_by_protocol_total{listener="main",route="ws",service="s",protocol="ws"}'), 2)
  t.is(metricValue(metrics, 'meshproxy_requests_total{listener="main",route="ws",service="s",status_class="2xx"}'), 2)
})

test('an http2 service gets the WebSocket as an HTTP/1.1 upgrade too', async (t) => {
  const backend = await startWsBackend(t)
  const { address } = await startProxy(t, config(backend.address, 'http2'))
  const ws = await openWebSocket(await session(t, address))
  t.is(ws.status, 200)
  ws.stream.write(clientFrame(OP.text, 'x'))
  t.is((await ws.frames.next()).payload.toString(), 'echo:x')
})

test('a refused upgrade is passed back with its status, headers and body', async (t) => {
  const backend = await startWsBackend(t, 'refuse')
  const { address } = await startProxy(t, config(backend.address))
  const ws = await openWebSocket(await session(t, address))
  t.is(ws.status, 403)
  t.is(ws.headers['x-refused'], 'yes')
  t.is(ws.headers['meshproxy-error'], undefined, 'the refusal is the backend’s, not the proxy’s')
  const body = await new Promise<string>((resolve) => {
    let text = ''
    ws.stream.on('data', (c: Buffer) => (text += c.toString()))
    ws.stream.on('end', () => resolve(text))
  })
  t.is(body, 'no way')
  t.is(backend.upgrades.length, 1)
})

test('a backend that answers the handshake without 101 is a 502 upstream-handshake, not a tunnel', async (t) => {
  const backend = await startWsBackend(t, 'plain')
  const { address, proxy } = await startProxy(t, config(backend.address))
  const ws = await openWebSocket(await session(t, address))
  t.is(ws.status, 502)
  t.is(ws.headers['meshproxy-error'], 'upstream-handshake')
  t.is(metricValue(proxy.metrics(), 'meshproxy_proxy_errors_total{listener="main",error="upstream-handshake"}'), 1)
})

test('routing as GET: no route for the path is a 404; other :protocol values and plain CONNECT are refused', async (t) => {
  const backend = await startWsBackend(t)
  const { address } = await startProxy(t, config(backend.address))
  const s = await session(t, address)
  const miss = await openWebSocket(s, '/other')
  t.is(miss.status, 404)
  t.is(miss.headers['meshproxy-error'], 'no-route')

  const other = await new Promise<http2.IncomingHttpHeaders & http2.IncomingHttpStatusHeader>((resolve, reject) => {
    const stream = s.request({ ':method': 'CONNECT', ':protocol': 'webtransport', ':scheme': 'http', ':path': '/chat', ':authority': 'ws.test' }, { endStream: false })
    stream.on('error', reject)
    stream.once('response', resolve)
  })
  t.is(other[':status'], 403)
  t.is(other['meshproxy-error'], 'connect-refused')

  const plain = await h2request(s, { ':method': 'CONNECT', ':authority': 'ws.test:443' })
  t.is(plain.status, 403)
  t.is(plain.headers['meshproxy-error'], 'connect-refused')
  t.is(backend.upgrades.length, 0, 'nothing reached the backend')
})
