/**
 * Upstream failures become the proxy's own answers — 502 `upstream-connect` (refused),
 * 502 `upstream-reset` (connection dropped before a response), 504 `upstream-timeout` (route
 * timeout), 503 `no-endpoints` — and a response that breaks mid-body is aborted downstream, never
 * ended cleanly.
 */
import http from 'node:http'
import test from 'ava'
import { closedPort, onRequestHeads, startBackend } from './helpers/backend.js'
import { startTcpServer } from './helpers/tcp.js'
import { get, request } from './helpers/http.js'
import { simpleYaml, startProxy } from './helpers/proxy.js'

test('refused connection: 502 upstream-connect', async (t) => {
  const port0 = await closedPort()
  const { proxy, port } = await startProxy(t, simpleYaml([`127.0.0.1:${port0}`]))
  const res = await get(port, '/')
  t.is(res.status, 502)
  t.is(res.headers['meshproxy-error'], 'upstream-connect')
  const ep = (await proxy.stats()).endpoints[0]!
  t.is(ep.failures, 1)
  t.is(ep.openedConnections, 0)
})

test('backend destroys the socket after reading the request: 502 upstream-reset', async (t) => {
  const backend = await startBackend(t, 'rude', (req) => {
    req.socket.destroy()
  })
  const { port } = await startProxy(t, simpleYaml([backend.address]))
  const res = await get(port, '/')
  t.is(res.status, 502)
  t.is(res.headers['meshproxy-error'], 'upstream-reset')
  t.is(backend.requests.length, 1, 'a request that may have been processed is not retried')
  // A POST with a body too.
  const post = await request(port, { method: 'POST', path: '/', body: 'payload' })
  t.is(post.status, 502)
  t.is(post.headers['meshproxy-error'], 'upstream-reset')
})

test('backend never answers, route timeout 500ms: 504 upstream-timeout', async (t) => {
  const backend = await startBackend(t, 'silent', () => {
    /* never answers; the teardown closes the socket */
  })
  const { port } = await startProxy(t, simpleYaml([backend.address], { routeTimeout: '500ms' }))
  const res = await get(port, '/')
  t.is(res.status, 504)
  t.is(res.headers['meshproxy-error'], 'upstream-timeout')
  t.is(backend.requests.length, 1)
})

test('service without endpoints: 503 no-endpoints', async (t) => {
  const { port } = await startProxy(t, simpleYaml([]))
  const res = await get(port, '/anything')
  t.is(res.status, 503)
  t.is(res.headers['meshproxy-error'], 'no-endpoints')
})

interface Outcome {
  status: number
  body: string
  ended: boolean
  aborted: boolean
  error: string | null
}

/** A GET whose response is followed to its end, error or close, whichever comes. */
function follow(port: number): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: '/', agent: false }, (res) => {
      const out: Outcome = { status: res.statusCode ?? 0, body: '', ended: false, aborted: false, error: null }
      res.setEncoding('latin1')
      res.on('data', (c: string) => (out.body += c))
      res.on('end', () => (out.ended = true))
      res.on('aborted', () => (out.aborted = true))
      res.on('error', (e) => (out.error = e.message))
      res.on('close', () => setImmediate(() => resolve(out)))
    })
    req.on('error', reject)
    req.end()
  })
}

test('backend sends headers and part of a chunked body, then resets: the client sees an aborted response', async (t) => {
  const upstream = await startTcpServer(t, (socket) =>
    onRequestHeads(socket, () => {
      socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n')
      setTimeout(() => socket.destroy(), 100)
    }), { allowHalfOpen: false })
  const { port } = await startProxy(t, simpleYaml([upstream.address]))
  const out = await follow(port)
  t.is(out.status, 200)
  t.is(out.body, 'hello')
  t.false(out.ended, 'the response must not end cleanly')
  t.true(out.aborted || out.error !== null, `aborted=${out.aborted} error=${out.error}`)
})

test('backend sends fewer bytes than its Content-Length, then resets: the client sees an aborted response', async (t) => {
  const upstream = await startTcpServer(t, (socket) =>
    onRequestHeads(socket, () => {
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789')
      setTimeout(() => socket.destroy(), 100)
    }), { allowHalfOpen: false })
  const { port } = await startProxy(t, simpleYaml([upstream.address]))
  const out = await follow(port)
  t.is(out.status, 200)
  t.is(out.body, '0123456789')
  t.false(out.ended, 'the response must not end cleanly')
  t.true(out.aborted || out.error !== null, `aborted=${out.aborted} error=${out.error}`)
})

test('after upstream failures the proxy keeps serving', async (t) => {
  const bad = await closedPort()
  const good = await startBackend(t, 'good')
  const { port } = await startProxy(t, simpleYaml([`127.0.0.1:${bad}`, good.address]))
  const statuses: number[] = []
  for (let i = 0; i < 6; i++) statuses.push((await get(port, '/')).status)
  // Round-robin alternates: refused, ok, refused, ok, ...
  t.deepEqual(statuses, [502, 200, 502, 200, 502, 200])
  t.is(good.requests.length, 3)
})
