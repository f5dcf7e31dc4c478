/**
 * HTTP/2 through meshproxy: h2c clients (prior knowledge) on the same port as HTTP/1.1, to
 * HTTP/1.1 and to HTTP/2 upstreams, with upstream stream multiplexing counted at the backend.
 */
import { createHash } from 'node:crypto'
import http from 'node:http'
import http2 from 'node:http2'
import test from 'ava'
import { startBackend } from './helpers/backend.js'
import { h2connect, h2request, listenH2, startH2Backend } from './helpers/h2.js'
import { load, startProxy } from './helpers/proxy.js'
import type { ConfigModel } from '../ts/index.js'

function config(endpoint: string, protocol: 'http1' | 'http2' | 'auto', hosts = '', pool = ''): ConfigModel {
  const model = load(`
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - name: r
        ${hosts ? `match: { host: "${hosts}" }` : ''}
        service: s
services:
  - name: s
    protocol: ${protocol}
    endpoints: [${endpoint}]
    ${pool ? `pool: ${pool}` : ''}
`)
  return model
}

function h1get(port: number, path: string): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => (body += c))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }))
      })
      .on('error', reject)
  })
}

test('h2c client → HTTP/1.1 backend, routed on :authority, same port as HTTP/1.1', async (t) => {
  const backend = await startBackend(t, 'h1')
  const { address, port } = await startProxy(t, config(backend.address, 'http1', 'api.test'))
  const session = h2connect(t, address)
  const res = await h2request(session, { ':path': '/x', ':authority': 'api.test' })
  t.is(res.status, 200)
  t.is(res.body, 'h1')
  t.is(res.headers['via'], '1.1 meshproxy')
  const seen = backend.requests[0]!
  t.is(seen.headers.host, 'api.test', 'the upstream HTTP/1.1 request carries :authority as Host')
  t.is(seen.headers.via, '2 meshproxy')
  const miss = await h2request(session, { ':path': '/x', ':authority': 'other.test' })
  t.is(miss.status, 404)
  t.is(miss.headers['meshproxy-error'], 'no-route')
  // HTTP/1.1 on the same listener still works.
  const h1 = await new Promise<number>((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/', headers: { host: 'api.test' }, agent: false }, (r) => {
      r.resume()
      resolve(r.statusCode ?? 0)
    }).on('error', reject)
  })
  t.is(h1, 200)
})

test('h2c client → HTTP/2 backend: POST bodies and 1,000 concurrent streams over few upstream connections', async (t) => {
  const backend = await startH2Backend(t, 'h2', { delayMs: 20 })
  const { address, proxy } = await startProxy(t, config(backend.address, 'http2'))
  const session = h2connect(t, address)
  const post = await h2request(session, { ':path': '/p', ':method': 'POST' }, 'hello')
  t.is(post.body, 'h2:5')
  const all = await Promise.all(Array.from({ length: 1000 }, (_, i) => h2request(session, { ':path': `/r${i}` })))
  t.true(all.every((r) => r.status === 200 && r.body === 'h2:0'))
  // Stream limit 100 per upstream connection: at most ceil(1000 / 100) + 1.
  t.true(backend.sessions <= 11, `backend saw ${backend.sessions} connections`)
  t.is(backend.streams, 1001)
  const stats = await proxy.stats()
  t.is(stats.endpoints[0]!.openedConnections, backend.sessions)
})

test('HTTP/1.1 client → HTTP/2 backend', async (t) => {
  const backend = await startH2Backend(t, 'h2')
  const { port } = await startProxy(t, config(backend.address, 'http2'))
  const res = await h1get(port, '/from-h1')
  t.is(res.status, 200)
  t.is(res.body, 'h2:0')
  t.is(res.headers['x-authority'], `127.0.0.1:${port}`, 'the Host header becomes :authority upstream')
  t.is(res.headers['via'], '2 meshproxy')
})

test('protocol auto keeps the downstream version', async (t) => {
  const backend = await startH2Backend(t, 'h2')
  const { address } = await startProxy(t, config(backend.address, 'auto'))
  const session = h2connect(t, address)
  const res = await h2request(session, { ':path': '/auto' })
  t.is(res.status, 200)
  t.is(res.body, 'h2:0')
  t.is(backend.streams, 1)
})

test('an h2 client resetting streams cancels the upstream streams and leaks nothing', async (t) => {
  const backend = await startH2Backend(t, 'slow', { delayMs: 60_000 })
  const { address, proxy } = await startProxy(t, config(backend.address, 'http2'))
  const session = h2connect(t, address)
  const reqs = Array.from({ length: 20 }, (_, i) => {
    const r = session.request({ ':path': `/slow${i}` })
    r.on('error', () => {})
    return r
  })
  // Other tests in this file run at the same time on 2 cores: wait for the streams, not a fixed time.
  for (let i = 0; i < 100 && backend.streams < 20; i++) await new Promise((r) => setTimeout(r, 50))
  t.is(backend.streams, 20)
  for (const r of reqs) r.close(0x8) // CANCEL
  let inflight = -1
  for (let i = 0; i < 50; i++) {
    await new Promise((r) => setTimeout(r, 50))
    inflight = (await proxy.stats()).endpoints[0]!.inflight
    if (inflight === 0) break
  }
  t.is(inflight, 0, 'every upstream stream was released')
  t.true(proxy.metrics().includes('meshproxy_requests_cancelled_total{listener="main"} 20\n'), 'each reset request is counted as cancelled')
})

test('trailers on an HTTP/1.1 chunked response reach HTTP/2 and HTTP/1.1 clients', async (t) => {
  const backend = await startBackend(t, 'trailers', (req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum' })
    res.write('part one,')
    res.addTrailers({ 'x-checksum': 'abc123' })
    res.end('part two')
  })
  const { address, port } = await startProxy(t, config(backend.address, 'http1'))
  const session = h2connect(t, address)
  const trailers = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const req = session.request({ ':path': '/t', te: 'trailers' })
    req.on('trailers', (h) => resolve(h))
    req.on('error', reject)
    req.on('end', () => setTimeout(() => reject(new Error('ended without trailers')), 100))
    req.resume()
  })
  t.is(trailers['x-checksum'], 'abc123')
  const h1 = await new Promise<Record<string, string | undefined>>((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/t', headers: { te: 'trailers' }, agent: false }, (res) => {
        res.resume()
        res.on('end', () => resolve(res.trailers))
      })
      .on('error', reject)
  })
  t.is(h1['x-checksum'], 'abc123')
})

/** Deterministic bytes, so both ends can compare digests (a 4093-byte unit: no alignment with frames). */
function pattern(size: number): Buffer {
  const unit = Buffer.alloc(4093)
  for (let i = 0; i < unit.length; i++) unit[i] = (i * 31) & 0xff
  return Buffer.alloc(size, unit)
}
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

test('HTTP/2 upstream: 8 MiB each way through flow-control windows smaller than the bodies', async (t) => {
  // Node's default stream window is 64 KiB: the upload must wait for the backend's
  // WINDOW_UPDATEs; the download (over the proxy's 2 MiB stream window) needs the proxy to give
  // back window as the client reads.
  const big = pattern(8 * 1024 * 1024)
  const server = http2.createServer()
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {})
    if (headers[':path'] === '/download') {
      stream.respond({ ':status': 200, 'content-length': String(big.length) })
      stream.end(big)
      return
    }
    const hash = createHash('sha256')
    let n = 0
    stream.on('data', (c: Buffer) => {
      hash.update(c)
      n += c.length
    })
    stream.on('end', () => {
      stream.respond({ ':status': 200 })
      stream.end(`${n}:${hash.digest('hex')}`)
    })
  })
  const backend = await listenH2(t, server)
  const { port } = await startProxy(t, config(backend.address, 'http2'))

  const upload = await new Promise<string>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: '/upload', method: 'POST', agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (c: string) => (body += c)).on('end', () => resolve(body))
    })
    req.on('error', reject)
    req.end(big) // no Content-Length known upstream: chunked downstream, DATA frames upstream
  })
  t.is(upload, `${big.length}:${sha(big)}`)

  const download = await new Promise<{ status: number; length: string | undefined; body: Buffer }>((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/download', agent: false }, (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, length: res.headers['content-length'], body: Buffer.concat(chunks) }))
      })
      .on('error', reject)
  })
  t.is(download.status, 200)
  t.is(download.length, String(big.length), 'the length the upstream announced is passed on')
  t.is(download.body.length, big.length)
  t.is(sha(download.body), sha(big))
})

test('an idle upstream HTTP/2 connection is closed after the pool idle timeout; the next request opens another', async (t) => {
  const backend = await startH2Backend(t, 'h2')
  let closed = 0
  backend.server.on('session', (s) => s.on('close', () => (closed += 1)))
  const { port, proxy } = await startProxy(t, config(backend.address, 'http2', '', '{ idleTimeout: 300ms }'))
  t.is((await h1get(port, '/one')).body, 'h2:0')
  t.is(backend.sessions, 1)
  // Reaped within idle timeout + one reaper tick (500 ms); the backend sees the connection end.
  for (let i = 0; i < 40 && closed === 0; i++) await new Promise((r) => setTimeout(r, 50))
  t.is(closed, 1, 'the backend saw the idle connection close')
  t.is((await proxy.stats()).endpoints[0]!.openConnections, 0)
  t.is((await h1get(port, '/two')).body, 'h2:0')
  t.is(backend.sessions, 2)
})

// Each worker thread is an event loop of its own; with 2, connections are dealt to both and
// each keeps its own upstream pools. (An embedder's multi-thread runtime is covered in Rust.)
for (const workers of [1, 2]) {
  test(`${workers} worker thread(s): 500 concurrent h2c streams to an HTTP/1.1 and an HTTP/2 backend, and a reset mid-flight`, async (t) => {
    const h1 = await startBackend(t, 'h1')
    const h2 = await startH2Backend(t, 'h2', { delayMs: 5 })
    const model = load(`
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - { name: one, match: { path: /one }, service: one }
      - { name: two, service: two }
services:
  - { name: one, protocol: http1, endpoints: [${h1.address}] }
  - { name: two, protocol: http2, endpoints: [${h2.address}] }
`)
    const { address, proxy } = await startProxy(t, model, {}, { workers })
    const session = h2connect(t, address)
    const all = await Promise.all(
      Array.from({ length: 500 }, (_, i) => h2request(session, { ':path': i % 2 ? '/one/x' : `/two/${i}` }, i % 5 ? undefined : 'body')),
    )
    t.true(all.every((r, i) => r.status === 200 && r.body === (i % 2 ? 'h1' : `h2:${i % 5 ? 0 : 4}`)))
    // A stream the client resets mid-flight leaves nothing in flight, and the connection serves on
    // (that the reset cancels the upstream stream is the 'resetting streams' test's assertion).
    const slow = session.request({ ':path': '/two/slow' })
    slow.on('error', () => {})
    await new Promise((r) => setTimeout(r, 2))
    slow.close(0x8)
    t.is((await h2request(session, { ':path': '/one/after' })).status, 200)
    let inflight = -1
    for (let i = 0; i < 50 && inflight !== 0; i++) {
      await new Promise((r) => setTimeout(r, 20))
      inflight = (await proxy.stats()).endpoints.reduce((n, e) => n + e.inflight, 0)
    }
    t.is(inflight, 0)
  })
}
