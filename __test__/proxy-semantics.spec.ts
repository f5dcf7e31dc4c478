/**
 * Cases 5 and 13: proxy header semantics (hop-by-hop headers stripped both ways, `TE: trailers`
 * kept, `x-forwarded-*` and `via` added, Host untouched), bodies passed through intact, and the
 * request limits (414 `uri-too-long`, 431 for an oversized head).
 */
import { createHash } from 'node:crypto'
import http from 'node:http'
import test from 'ava'
import { onRequestHeads, startBackend } from './helpers/backend.js'
import { startTcpServer } from './helpers/tcp.js'
import { get, rawRequest, request } from './helpers/http.js'
import { simpleYaml, startProxy } from './helpers/proxy.js'

test('request hop-by-hop headers are stripped; TE: trailers, Host and x-forwarded-*/via are right', async (t) => {
  const backend = await startBackend(t, 'a')
  const { port } = await startProxy(t, simpleYaml([backend.address]))
  const res = await rawRequest(
    port,
    'GET /hop HTTP/1.1\r\n' +
      'Host: svc.example.com:8080\r\n' +
      'Connection: x-secret, close\r\n' +
      'X-Secret: hidden\r\n' +
      'Keep-Alive: timeout=5\r\n' +
      'TE: trailers\r\n' +
      'Proxy-Connection: keep-alive\r\n' +
      'X-Kept: yes\r\n' +
      '\r\n',
  )
  t.is(res.status, 200)
  t.is(backend.requests.length, 1)
  const h = backend.requests[0]!.headers
  t.is(h['x-secret'], undefined, 'a header named by Connection is hop-by-hop')
  t.is(h['connection'], undefined)
  t.is(h['keep-alive'], undefined)
  t.is(h['proxy-connection'], undefined)
  t.is(h['te'], 'trailers')
  t.is(h['x-kept'], 'yes')
  t.is(h['host'], 'svc.example.com:8080', 'Host passes through untouched')
  t.is(h['x-forwarded-for'], '127.0.0.1')
  t.is(h['x-forwarded-proto'], 'http')
  t.is(h['x-forwarded-host'], 'svc.example.com:8080')
  t.is(h['via'], '1.1 meshproxy')
  t.is(backend.requests[0]!.url, '/hop')
})

test('TE other than trailers is dropped; TE listed in Connection still passes as trailers', async (t) => {
  const backend = await startBackend(t, 'a')
  const { port } = await startProxy(t, simpleYaml([backend.address]))
  t.is((await get(port, '/1', { te: 'gzip' })).status, 200)
  t.is((await get(port, '/2', { te: 'gzip, trailers', connection: 'te, close' })).status, 200)
  t.is(backend.requests[0]!.headers['te'], undefined)
  t.is(backend.requests[1]!.headers['te'], 'trailers')
})

test('x-forwarded-for is appended to; client x-forwarded-proto/host are kept; via appended', async (t) => {
  const backend = await startBackend(t, 'a')
  const { port } = await startProxy(t, simpleYaml([backend.address]))
  const res = await get(port, '/', {
    host: 'front.example.com',
    'x-forwarded-for': '10.0.0.1',
    'x-forwarded-proto': 'https',
    'x-forwarded-host': 'edge.example.com',
    via: '1.1 edge',
  })
  t.is(res.status, 200)
  const h = backend.requests[0]!.headers
  t.is(h['x-forwarded-for'], '10.0.0.1, 127.0.0.1')
  t.is(h['x-forwarded-proto'], 'https')
  t.is(h['x-forwarded-host'], 'edge.example.com')
  t.is(h['via'], '1.1 edge, 1.1 meshproxy')
  t.is(h['host'], 'front.example.com')
})

test('proxyHeaders: false adds no x-forwarded-* or via either way; those sent pass unchanged', async (t) => {
  const backend = await startBackend(t, 'a', (req, res) => {
    req.resume()
    res.setHeader('via', '1.1 origin')
    res.end('ok')
  })
  const yaml = simpleYaml([backend.address]).replace('    address: 127.0.0.1:0\n', '    address: 127.0.0.1:0\n    proxyHeaders: false\n')
  const { port } = await startProxy(t, yaml)
  const plain = await get(port, '/', { host: 'front.example.com' })
  t.is(plain.status, 200)
  t.is(plain.headers['via'], '1.1 origin', 'the response Via as the backend sent it')
  const h = backend.requests[0]!.headers
  for (const name of ['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'via']) t.is(h[name], undefined, name)
  t.is(h['host'], 'front.example.com')
  await get(port, '/', { 'x-forwarded-for': '10.0.0.1', via: '1.1 edge' })
  t.is(backend.requests[1]!.headers['x-forwarded-for'], '10.0.0.1')
  t.is(backend.requests[1]!.headers['via'], '1.1 edge')
})

test('response hop-by-hop headers from the backend are stripped; via added', async (t) => {
  const upstream = await startTcpServer(t, (socket) =>
    onRequestHeads(socket, () => {
      socket.write(
        'HTTP/1.1 200 OK\r\n' +
          'Content-Length: 2\r\n' +
          'Connection: x-resp-secret, keep-alive\r\n' +
          'X-Resp-Secret: hidden\r\n' +
          'Keep-Alive: timeout=30\r\n' +
          'Proxy-Connection: keep-alive\r\n' +
          'X-Resp-Kept: yes\r\n' +
          '\r\n' +
          'ok',
      )
    }), { allowHalfOpen: false })
  const { port } = await startProxy(t, simpleYaml([upstream.address]))
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  const res = await get(port, '/', {}, agent)
  t.is(res.status, 200)
  t.is(res.body, 'ok')
  t.is(res.headers['x-resp-secret'], undefined)
  t.is(res.headers['keep-alive'], undefined)
  t.is(res.headers['proxy-connection'], undefined)
  t.false(/x-resp-secret/i.test(res.headers['connection'] ?? ''), `connection: ${res.headers['connection']}`)
  t.is(res.headers['x-resp-kept'], 'yes')
  t.is(res.headers['via'], '1.1 meshproxy')
})

test('request and response bodies pass through intact (content-length and chunked)', async (t) => {
  const backend = await startBackend(t, 'echo', (req, res) => {
    const hash = createHash('sha256')
    let n = 0
    req.on('data', (c: Buffer) => {
      hash.update(c)
      n += c.length
    })
    req.on('end', () => {
      res.setHeader('x-te', String(req.headers['transfer-encoding']))
      res.setHeader('x-cl', String(req.headers['content-length']))
      res.end(`${n}:${hash.digest('hex')}`)
    })
  })
  const { port } = await startProxy(t, simpleYaml([backend.address]))
  const body = Buffer.alloc(1024 * 1024 + 7)
  for (let i = 0; i < body.length; i++) body[i] = (i * 31) & 0xff
  const expected = `${body.length}:${createHash('sha256').update(body).digest('hex')}`
  const withLength = await request(port, { method: 'POST', path: '/', body, headers: { 'content-length': body.length } })
  t.is(withLength.status, 200)
  t.is(withLength.body, expected)
  t.is(withLength.headers['x-cl'], String(body.length))
  // Chunked upload.
  const chunked = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'PUT', path: '/', agent: false }, (res) => {
      let s = ''
      res.setEncoding('utf8').on('data', (c: string) => (s += c))
      res.on('end', () => resolve({ status: res.statusCode!, body: s }))
    })
    req.on('error', reject)
    for (let off = 0; off < body.length; off += 100_000) req.write(body.subarray(off, off + 100_000))
    req.end()
  })
  t.is(chunked.status, 200)
  t.is(chunked.body, expected)
  t.is(backend.requests[1]!.headers['transfer-encoding'], 'chunked')
})

test('a URI longer than 8 KiB is answered 414 uri-too-long and not forwarded', async (t) => {
  const backend = await startBackend(t, 'a')
  const { port } = await startProxy(t, simpleYaml([backend.address]))
  const long = `/${'x'.repeat(8200)}`
  const res = await get(port, long)
  t.is(res.status, 414)
  t.is(res.headers['meshproxy-error'], 'uri-too-long')
  // At the limit it is still fine.
  const atLimit = await get(port, `/${'y'.repeat(8191)}`)
  t.is(atLimit.status, 200)
  t.is(backend.requests.length, 1)
  t.is(backend.requests[0]!.url.length, 8192)
})

test('a request head over 64 KiB is answered 431', async (t) => {
  // The backend accepts big heads itself (Node's default limit is 16 KiB).
  const backend = await startBackend(t, 'a', undefined, { maxHeaderSize: 256 * 1024 })
  const { port } = await startProxy(t, simpleYaml([backend.address]))
  // One write of ~72 KiB: ten 7 KiB headers.
  let head = 'GET / HTTP/1.1\r\nHost: big.test\r\nConnection: close\r\n'
  for (let i = 0; i < 10; i++) head += `X-Big-${i}: ${'v'.repeat(7 * 1024)}\r\n`
  head += '\r\n'
  t.true(head.length > 64 * 1024)
  const res = await rawRequest(port, head)
  t.is(res.status, 431, `raw response: ${JSON.stringify(res.raw.slice(0, 200))} error=${res.error}`)
  t.is(backend.requests.length, 0)
  // A head just under the limit goes through.
  const ok = await get(port, '/', { 'x-big': 'v'.repeat(60 * 1024) })
  t.is(ok.status, 200)
  t.is(backend.requests.length, 1)
  t.is(backend.requests[0]!.headers['x-big']!.length, 60 * 1024)
})

test('a request head far over the limit (200 KiB) is answered 431 and not forwarded', async (t) => {
  const backend = await startBackend(t, 'a', undefined, { maxHeaderSize: 1024 * 1024 })
  const { port } = await startProxy(t, simpleYaml([backend.address]))
  const head = `GET / HTTP/1.1\r\nHost: big.test\r\nConnection: close\r\nX-Big: ${'v'.repeat(200 * 1024)}\r\n\r\n`
  const res = await rawRequest(port, head)
  t.is(res.status, 431, `raw response: ${JSON.stringify(res.raw.slice(0, 200))} error=${res.error}`)
  t.is(backend.requests.length, 0)
})

test('a configured maxHeaderBytes of 16 KiB: a 17 KiB head gets 431, a 15 KiB head passes', async (t) => {
  const backend = await startBackend(t, 'a', undefined, { maxHeaderSize: 256 * 1024 })
  const yaml = simpleYaml([backend.address]).replace('    address: 127.0.0.1:0\n', '    address: 127.0.0.1:0\n    maxHeaderBytes: 16384\n')
  const { port } = await startProxy(t, yaml)
  const head = (kib: number): string => `GET / HTTP/1.1\r\nHost: big.test\r\nConnection: close\r\nX-Big: ${'v'.repeat(kib * 1024 - 60)}\r\n\r\n`
  const over = await rawRequest(port, head(17))
  t.is(over.status, 431)
  const under = await rawRequest(port, head(15))
  t.is(under.status, 200)
  t.is(backend.requests.length, 1)
})

test('HTTP/1.1 without Host: 400 bad-request; CONNECT: 403 connect-refused; neither forwarded', async (t) => {
  const backend = await startBackend(t, 'a')
  const { port } = await startProxy(t, simpleYaml([backend.address]))
  const noHost = await rawRequest(port, 'GET / HTTP/1.1\r\nConnection: close\r\n\r\n')
  t.is(noHost.status, 400)
  t.is(noHost.headers['meshproxy-error'], 'bad-request')
  const connect = await rawRequest(port, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n')
  t.is(connect.status, 403)
  t.is(connect.headers['meshproxy-error'], 'connect-refused')
  t.is(backend.requests.length, 0)
})

test('HTTP/1.0 without Host is valid and is forwarded as a valid HTTP/1.1 request (with a Host)', async (t) => {
  // Node's server rejects HTTP/1.1 requests without Host (400), as RFC 9112 §3.2 requires.
  const backend = await startBackend(t, 'a')
  const { port } = await startProxy(t, simpleYaml([backend.address]))
  const http10 = await rawRequest(port, 'GET /old HTTP/1.0\r\n\r\n')
  t.is(http10.headers['meshproxy-error'], undefined)
  t.is(http10.status, 200, `raw response: ${JSON.stringify(http10.raw.slice(0, 300))}`)
  t.is(http10.body, 'a')
  t.is(backend.requests.length, 1)
  t.truthy(backend.requests[0]?.headers['host'], 'the upstream HTTP/1.1 request carries a Host')
})
