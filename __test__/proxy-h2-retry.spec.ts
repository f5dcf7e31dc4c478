/**
 * Retrying requests an HTTP/2 upstream never processed (RFC 9113 §8.7): a `REFUSED_STREAM` reset
 * or a GOAWAY below the stream's id lets the proxy re-send even a POST, once, on another
 * connection — counted in `meshproxy_upstream_retries_total`. A reset that does not prove the
 * request unprocessed, and a request whose body was already sent, are not retried.
 */
import http from 'node:http'
import http2 from 'node:http2'
import test, { type ExecutionContext } from 'ava'
import { listenH2 } from './helpers/h2.js'
import { load, startProxy } from './helpers/proxy.js'
import { metricValue } from './helpers/tcp.js'

const { NGHTTP2_REFUSED_STREAM, NGHTTP2_INTERNAL_ERROR, NGHTTP2_NO_ERROR } = http2.constants

type Failure = 'refuse' | 'goaway' | 'internal-error'

interface Backend {
  address: string
  /** Sessions (connections) accepted. */
  readonly sessions: number
  /** Requests answered, as `METHOD body`. */
  served: string[]
}

/**
 * An h2c server whose first stream fails as `failure` says, every later stream answered 200 with
 * the method and body it carried. `goaway` needs two streams in flight: Node cannot send a GOAWAY
 * whose last-stream-id is below every stream it has seen, so it holds the first stream until the
 * second arrives, sends GOAWAY naming the first as the last processed, and answers the first.
 */
async function startBackend(t: ExecutionContext, failure: Failure): Promise<Backend> {
  const server = http2.createServer()
  const served: string[] = []
  let failed = false
  let held: http2.ServerHttp2Stream | undefined
  const serve = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void => {
    let body = ''
    stream.on('data', (c: Buffer) => (body += c.toString()))
    stream.on('end', () => {
      served.push(`${String(headers[':method'])} ${body}`)
      stream.respond({ ':status': 200 })
      stream.end(`ok ${String(headers[':method'])}`)
    })
  }
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {})
    if (failed) return serve(stream, headers)
    if (failure === 'goaway') {
      if (!held) {
        held = stream
        serve(stream, headers)
        stream.pause()
        return
      }
      failed = true
      stream.session?.goaway(NGHTTP2_NO_ERROR, held.id)
      held.resume()
      return
    }
    failed = true
    stream.close(failure === 'refuse' ? NGHTTP2_REFUSED_STREAM : NGHTTP2_INTERNAL_ERROR)
  })
  const listening = await listenH2(t, server)
  return {
    address: listening.address,
    get sessions() {
      return listening.sessions
    },
    served,
  }
}

function config(endpoint: string) {
  return load(`
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes: [{ name: r, service: s }]
services:
  - name: s
    protocol: http2
    endpoints: [${endpoint}]
`)
}

function request(port: number, method: string, body?: string): Promise<{ status: number; body: string; error?: string }> {
  return new Promise((resolve, reject) => {
    const headers: http.OutgoingHttpHeaders = { 'content-length': String(Buffer.byteLength(body ?? '')) }
    const req = http.request({ host: '127.0.0.1', port, method, path: '/x', agent: false, headers }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => (text += c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text, error: res.headers['meshproxy-error'] as string | undefined }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

const retries = (metrics: string, endpoint: string) => metricValue(metrics, `meshproxy_upstream_retries_total{endpoint="${endpoint}"}`)

test('a POST refused with REFUSED_STREAM is retried once, on another connection', async (t) => {
  const backend = await startBackend(t, 'refuse')
  const { port, proxy } = await startProxy(t, config(backend.address))
  const res = await request(port, 'POST')
  t.is(res.status, 200)
  t.is(res.body, 'ok POST')
  t.deepEqual(backend.served, ['POST '], 'the POST was processed exactly once')
  t.is(backend.sessions, 2, 'the retry went to a new connection')
  t.is(retries(proxy.metrics(), backend.address), 1)
  t.is((await proxy.stats()).endpoints[0]!.retries, 1)
})

test('a POST above a GOAWAY’s last-stream-id is retried once, on another connection', async (t) => {
  const backend = await startBackend(t, 'goaway')
  const { port, proxy } = await startProxy(t, config(backend.address))
  // Both share the first upstream connection; the second is the one the GOAWAY leaves out.
  const [first, second] = await Promise.all([request(port, 'POST'), request(port, 'POST')])
  t.deepEqual([first.status, second.status], [200, 200])
  t.deepEqual(backend.served, ['POST ', 'POST '], 'each POST was processed exactly once')
  t.is(backend.sessions, 2)
  t.is(retries(proxy.metrics(), backend.address), 1)
})

test('a POST reset with INTERNAL_ERROR may have been processed: 502 upstream-reset, no retry', async (t) => {
  const backend = await startBackend(t, 'internal-error')
  const { port, proxy } = await startProxy(t, config(backend.address))
  const res = await request(port, 'POST')
  t.is(res.status, 502)
  t.is(res.error, 'upstream-reset')
  t.deepEqual(backend.served, [])
  t.is(retries(proxy.metrics(), backend.address), 0)
})

test('an idempotent GET reset with INTERNAL_ERROR is still retried', async (t) => {
  const backend = await startBackend(t, 'internal-error')
  const { port, proxy } = await startProxy(t, config(backend.address))
  const res = await request(port, 'GET')
  t.is(res.status, 200)
  t.deepEqual(backend.served, ['GET '])
  t.is(retries(proxy.metrics(), backend.address), 1)
})

test('a refused POST whose body was already sent upstream cannot be replayed: 502, no retry', async (t) => {
  const backend = await startBackend(t, 'refuse')
  const { port, proxy } = await startProxy(t, config(backend.address))
  const res = await request(port, 'POST', 'payload')
  t.is(res.status, 502)
  t.is(res.error, 'upstream-reset')
  t.deepEqual(backend.served, [])
  t.is(retries(proxy.metrics(), backend.address), 0)
  // The next POST goes through: the refusal was the backend's only one.
  const next = await request(port, 'POST', 'payload')
  t.is(next.body, 'ok POST')
  t.deepEqual(backend.served, ['POST payload'])
})
