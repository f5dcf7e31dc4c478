/**
 * A route's `idleTimeout`: an exchange during which no bytes move either way for that long is
 * ended. Before the response head the client gets 504 `upstream-timeout` (gRPC: DEADLINE_EXCEEDED)
 * and the attempt is a timeout (counted against the endpoint, retried when the route retries);
 * after it the response is cut short (HTTP/1.1: the connection closes before the message's end;
 * HTTP/2: the stream is reset; gRPC over HTTP/2: DEADLINE_EXCEEDED trailers), and the upstream's
 * connection or stream is dropped. Bytes moving more often than the timeout keep an exchange
 * alive however long it lasts. Real node:http, node:http2 and grpc-js peers on 127.0.0.1; the
 * timeout is 300 ms and the bounds are loose (≥ 250 ms, < 2 s) for a loaded machine.
 */
import test from 'ava'
import http from 'node:http'
import http2 from 'node:http2'
import * as grpc from '@grpc/grpc-js'
import WebSocket from 'ws'
import { startBackend, type Backend, type Handler } from './helpers/backend.js'
import { listenH2 } from './helpers/h2.js'
import { request, sleep } from './helpers/http.js'
import { startProxy } from './helpers/proxy.js'
import { startWsBackend } from './helpers/ws.js'

const IDLE_MS = 300
const MIN_MS = 250
const MAX_MS = 2000

/** One route with `idleTimeout: 300ms` (and `extra` route fields) to `endpoints`. */
function yaml(endpoints: string[], extra = '', protocol = 'http1'): string {
  return `
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - name: r
        service: s
        idleTimeout: ${IDLE_MS}ms
        timeout: 10s
${extra.replace(/^/gm, '        ')}
services:
  - name: s
    protocol: ${protocol}
    endpoints: [${endpoints.join(', ')}]
`
}

/** Writes the head and `first`, then nothing more; records when the upstream response closed. */
function stallAfter(first: string, closed: { at: number }): Handler {
  return (req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.write(first)
    res.on('close', () => (closed.at = Date.now()))
  }
}

interface Cut {
  status: number
  body: string
  /** From the last byte received to the response's failure. */
  idleMs: number
  error: string
}

/** GET through the proxy over HTTP/1.1, expecting the response to be cut short. */
function getCut(port: number): Promise<Cut> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent: false }, (res) => {
      let body = ''
      let last = Date.now()
      res.on('data', (c: Buffer) => {
        body += c.toString()
        last = Date.now()
      })
      res.on('end', () => reject(new Error(`the response ended cleanly: ${JSON.stringify(body)}`)))
      res.on('aborted', () => resolve({ status: res.statusCode ?? 0, body, idleMs: Date.now() - last, error: 'aborted' }))
      res.on('error', (e) => resolve({ status: res.statusCode ?? 0, body, idleMs: Date.now() - last, error: e.message }))
    })
    req.on('error', reject)
  })
}

const metric = (text: string, name: string, labels: string): number => {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels))
  return line ? Number(line.split(' ').pop()) : 0
}

test('HTTP/1.1: a response that stalls after its head is cut short one idle timeout after its last byte, and the upstream connection is dropped', async (t) => {
  const closed = { at: 0 }
  const backend = await startBackend(t, 'stall', stallAfter('first bytes', closed))
  const { port, proxy } = await startProxy(t, yaml([backend.address]))
  const cut = await getCut(port)
  t.is(cut.status, 200)
  t.is(cut.body, 'first bytes')
  t.true(cut.idleMs >= MIN_MS && cut.idleMs < MAX_MS, `cut after ${cut.idleMs} ms of silence`)
  for (let i = 0; i < 40 && closed.at === 0; i++) await sleep(25)
  t.not(closed.at, 0, 'the upstream connection was closed, not pooled mid-message')
  const stats = (await proxy.stats()).endpoints.find((e) => e.address === backend.address)!
  t.is(stats.idleConnections, 0)
})

test('h2c client and HTTP/2 upstream: a stalled response body resets the client\'s stream and the upstream\'s', async (t) => {
  let upstreamReset = -1
  const server = http2.createServer()
  server.on('stream', (stream) => {
    stream.on('close', () => (upstreamReset = stream.rstCode))
    stream.respond({ ':status': 200 })
    stream.write('first bytes')
  })
  const { address } = await listenH2(t, server)
  const { port } = await startProxy(t, yaml([address], '', 'http2'))
  const session = http2.connect(`http://127.0.0.1:${port}`)
  t.teardown(() => session.destroy())
  const result = await new Promise<{ status: number; body: string; rst: number; idleMs: number }>((resolve) => {
    const req = session.request({ ':path': '/' })
    let status = 0
    let body = ''
    let last = Date.now()
    req.on('response', (h) => (status = Number(h[':status'])))
    req.on('data', (c: Buffer) => {
      body += c.toString()
      last = Date.now()
    })
    req.on('error', () => {})
    req.on('close', () => resolve({ status, body, rst: req.rstCode ?? 0, idleMs: Date.now() - last }))
    req.end()
  })
  t.is(result.status, 200)
  t.is(result.body, 'first bytes')
  t.is(result.rst, http2.constants.NGHTTP2_INTERNAL_ERROR, 'the stream is reset, not ended')
  t.true(result.idleMs >= MIN_MS && result.idleMs < MAX_MS, `reset after ${result.idleMs} ms of silence`)
  for (let i = 0; i < 40 && upstreamReset === -1; i++) await sleep(25)
  t.is(upstreamReset, http2.constants.NGHTTP2_CANCEL, 'the upstream stream was cancelled')
})

test('an upstream that never answers is 504 upstream-timeout after the idle timeout, well before the route timeout, and counts against the endpoint', async (t) => {
  const hang = await startBackend(t, 'hang', (req) => req.resume())
  const { port, proxy } = await startProxy(t, yaml([hang.address]))
  const started = Date.now()
  const res = await request(port, { path: '/' })
  const took = Date.now() - started
  t.is(res.status, 504)
  t.is(res.headers['meshproxy-error'], 'upstream-timeout')
  t.true(took >= MIN_MS && took < MAX_MS, `answered after ${took} ms (route timeout 10 s)`)
  const text = proxy.metrics()
  t.is(metric(text, 'meshproxy_proxy_errors_total', 'error="upstream-timeout"'), 1)
  t.is(metric(text, 'meshproxy_requests_total', 'route="r",service="s",status_class="5xx"'), 1)
  const stats = (await proxy.stats()).endpoints.find((e) => e.address === hang.address)!
  t.is(stats.failures, 1)
})

test('an idle attempt is retried as a timeout when the route retries', async (t) => {
  const hang = await startBackend(t, 'hang', (req) => req.resume())
  const good = await startBackend(t, 'good')
  const { port, proxy } = await startProxy(t, yaml([hang.address, good.address], 'retry: { limit: 1 }'))
  // Round-robin over two: of two requests' first attempts, at least one goes to the hanging
  // endpoint, and each attempt there idles and is retried on the other.
  const statuses = [(await request(port, { path: '/' })).status, (await request(port, { path: '/' })).status]
  t.deepEqual(statuses, [200, 200])
  t.true(hang.requests.length >= 1)
  t.is(metric(proxy.metrics(), 'meshproxy_retries_total', 'reason="timeout"'), hang.requests.length)
})

test('a response trickling bytes more often than the idle timeout completes, however long it takes', async (t) => {
  const backend: Backend = await startBackend(t, 'trickle', (req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'text/plain' })
    let n = 0
    const timer = setInterval(() => {
      res.write(`${n} `)
      if (++n === 12) {
        clearInterval(timer)
        res.end('done')
      }
    }, 100)
    res.on('close', () => clearInterval(timer))
  })
  const { port } = await startProxy(t, yaml([backend.address]))
  const started = Date.now()
  const res = await request(port, { path: '/' })
  t.is(res.status, 200)
  t.is(res.body, '0 1 2 3 4 5 6 7 8 9 10 11 done')
  t.true(Date.now() - started >= 4 * IDLE_MS, 'it lasted several idle timeouts')
})

test('a request body trickling more often than the idle timeout keeps the exchange alive before the response head', async (t) => {
  const backend = await startBackend(t, 'sink', (req, res) => {
    let got = 0
    req.on('data', (c: Buffer) => (got += c.length))
    req.on('end', () => res.end(`got ${got}`))
  })
  const { port } = await startProxy(t, yaml([backend.address]))
  const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/', agent: false }, (r) => {
      let body = ''
      r.on('data', (c: Buffer) => (body += c.toString()))
      r.on('end', () => resolve({ status: r.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    let n = 0
    const timer = setInterval(() => {
      req.write('0123456789')
      if (++n === 12) {
        clearInterval(timer)
        req.end()
      }
    }, 100)
  })
  t.deepEqual(res, { status: 200, body: 'got 120' })
})

test('a WebSocket through the route keeps the listener\'s tunnel idle timeout: quiet for several idle timeouts, it still works', async (t) => {
  const { address: backend } = await startWsBackend(t)
  const { address } = await startProxy(t, yaml([backend]))
  const ws = new WebSocket(`ws://${address}/`)
  t.teardown(() => ws.terminate())
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve())
    ws.once('error', reject)
  })
  let closed = false
  ws.on('close', () => (closed = true))
  await sleep(4 * IDLE_MS)
  t.false(closed)
  const reply = new Promise<string>((resolve) => ws.once('message', (d) => resolve(String(d))))
  ws.send('still here')
  t.is(await reply, 'echo:still here')
})

// gRPC

const passthrough = (b: Buffer): Buffer => b
const method = (name: string, responseStream: boolean) => ({
  path: `/test.Idle/${name}`,
  requestStream: false,
  responseStream,
  requestSerialize: passthrough,
  requestDeserialize: passthrough,
  responseSerialize: passthrough,
  responseDeserialize: passthrough,
})
const definition = { Hang: method('Hang', false), StallStream: method('StallStream', true) } satisfies grpc.ServiceDefinition
const Client = grpc.makeGenericClientConstructor(definition, 'Idle')
type IdleClient = InstanceType<typeof Client> & Record<string, (...args: unknown[]) => unknown>

async function grpcProxy(t: import('ava').ExecutionContext): Promise<IdleClient> {
  const server = new grpc.Server()
  server.addService(definition, {
    // Never answers.
    Hang: () => {},
    // One message, then silence.
    StallStream: (call: grpc.ServerWritableStream<Buffer, Buffer>) => call.write(Buffer.from('first')),
  })
  const upstream = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  )
  t.teardown(() => server.forceShutdown())
  const { address } = await startProxy(t, yaml([`127.0.0.1:${upstream}`], '', 'http2'))
  const client = new Client(address, grpc.credentials.createInsecure()) as IdleClient
  t.teardown(() => client.close())
  return client
}

test('gRPC: a call with no answer ends DEADLINE_EXCEEDED after the idle timeout', async (t) => {
  const client = await grpcProxy(t)
  const started = Date.now()
  const err = await new Promise<grpc.ServiceError>((resolve, reject) =>
    client['Hang']!(Buffer.from('x'), (e: grpc.ServiceError | null) => (e ? resolve(e) : reject(new Error('answered')))),
  )
  const took = Date.now() - started
  t.is(err.code, grpc.status.DEADLINE_EXCEEDED)
  t.deepEqual(err.metadata.get('meshproxy-error'), ['upstream-timeout'])
  t.true(took >= MIN_MS && took < MAX_MS, `ended after ${took} ms`)
})

test('gRPC: a server stream that stalls after a message ends with DEADLINE_EXCEEDED trailers, not a reset', async (t) => {
  const client = await grpcProxy(t)
  const received: string[] = []
  let last = Date.now()
  const err = await new Promise<grpc.ServiceError>((resolve, reject) => {
    const call = client['StallStream']!(Buffer.from('x')) as grpc.ClientReadableStream<Buffer>
    call.on('data', (b: Buffer) => {
      received.push(b.toString())
      last = Date.now()
    })
    call.on('error', resolve)
    call.on('end', () => reject(new Error('ended without an error')))
  })
  const idle = Date.now() - last
  t.deepEqual(received, ['first'])
  t.is(err.code, grpc.status.DEADLINE_EXCEEDED, err.details)
  t.regex(err.details, /idle/)
  t.deepEqual(err.metadata.get('meshproxy-error'), ['upstream-timeout'])
  t.true(idle >= MIN_MS && idle < MAX_MS, `ended after ${idle} ms of silence`)
})
