/**
 * The upstream HTTP/1.1 client (crates/meshproxy-core/src/h1.rs) against raw TCP upstreams that
 * answer exactly what each case needs: message framing (RFC 9112 §6.3), 1xx, HEAD/204/304,
 * close-delimited bodies, malformed and oversized responses, early answers, and unasked bytes on
 * an idle pooled connection. Each case checks what the client gets and whether the upstream
 * connection was reused (counted at the upstream).
 */
import http from 'node:http'
import net from 'node:net'
import test from 'ava'
import type { ExecutionContext } from 'ava'
import { h2connect, h2request } from './helpers/h2.js'
import { rawRequest, request } from './helpers/http.js'
import { simpleYaml, startProxy } from './helpers/proxy.js'
import { startTcpServer } from './helpers/tcp.js'

/**
 * An upstream that reads each request head (and a `content-length` body) and answers it with
 * `answer(n)`, n counting requests on that connection from 0. A function answer may write
 * itself; returning a string writes it.
 */
async function rawUpstream(t: ExecutionContext, answer: (n: number, head: string, socket: net.Socket) => string | void) {
  return startTcpServer(t, (socket) => {
    let buf = Buffer.alloc(0)
    let n = 0
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk])
      for (;;) {
        const end = buf.indexOf('\r\n\r\n')
        if (end < 0) return
        const head = buf.subarray(0, end).toString('latin1')
        const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0)
        if (buf.length < end + 4 + length) return
        buf = buf.subarray(end + 4 + length)
        const out = answer(n++, head, socket)
        if (typeof out === 'string') socket.write(out)
      }
    })
  })
}

const agent = () => new http.Agent({ keepAlive: true, maxSockets: 1 })

test('close-delimited body (no length): delivered whole, and the connection is not reused', async (t) => {
  const up = await rawUpstream(t, (n, _h, s) => {
    s.end(`HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nbody ${n} until close`)
  })
  const { port } = await startProxy(t, simpleYaml([up.address]))
  const a = await request(port, { path: '/1' })
  const b = await request(port, { path: '/2' })
  t.deepEqual([a.status, a.body, b.status, b.body], [200, 'body 0 until close', 200, 'body 0 until close'])
  t.is(up.connections, 2)
})

test('1xx responses before the final one are skipped; the connection is reused', async (t) => {
  const up = await rawUpstream(t, (n) =>
    'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n' +
    `HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nfinal${n}`,
  )
  const { port } = await startProxy(t, simpleYaml([up.address]))
  const a = await request(port, { path: '/1' })
  const b = await request(port, { path: '/2' })
  t.deepEqual([a.status, a.body, b.status, b.body], [200, 'final0', 200, 'final1'])
  t.is(up.connections, 1)
})

test('HEAD, 204 and 304 carry no body whatever their content-length says; the connection is reused', async (t) => {
  const up = await rawUpstream(t, (n, head) => {
    if (head.startsWith('HEAD')) return 'HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n'
    if (n === 1) return 'HTTP/1.1 204 No Content\r\n\r\n'
    if (n === 2) return 'HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\netag: "x"\r\n\r\n'
    return 'HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlast'
  })
  const { port } = await startProxy(t, simpleYaml([up.address]))
  const a = agent()
  const head = await request(port, { method: 'HEAD', path: '/h', agent: a })
  t.is(head.status, 200)
  t.is(head.headers['content-length'], '1000')
  t.is((await request(port, { path: '/204', agent: a })).status, 204)
  t.is((await request(port, { path: '/304', agent: a })).status, 304)
  const last = await request(port, { path: '/last', agent: a })
  t.deepEqual([last.status, last.body], [200, 'last'])
  t.is(up.connections, 1)
  a.destroy()
})

test('chunked response with extensions and trailers: body intact, trailers to an HTTP/2 client', async (t) => {
  const up = await rawUpstream(
    t,
    () =>
      'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n' +
      '5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-sum: 11\r\n\r\n',
  )
  const { port } = await startProxy(t, simpleYaml([up.address]))
  const session = h2connect(t, `127.0.0.1:${port}`)
  const res = await h2request(session, { ':path': '/t' })
  t.is(res.status, 200)
  t.is(res.body, 'hello world')
  t.is(res.trailers?.['x-sum'], '11')
  const again = await h2request(session, { ':path': '/t2' })
  t.is(again.body, 'hello world')
  t.is(up.connections, 1, 'a chunked response that ended cleanly leaves the connection reusable')
})

test('transfer-encoding and content-length together: chunked wins, the length is dropped, the connection is not reused', async (t) => {
  const up = await rawUpstream(t, () => 'HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n')
  const { port } = await startProxy(t, simpleYaml([up.address]))
  const res = await request(port)
  t.is(res.status, 200)
  t.is(res.body, 'abcd')
  t.is(res.headers['content-length'], undefined)
  await request(port)
  t.is(up.connections, 2)
})

for (const [name, response] of [
  ['garbage instead of a status line', 'SSH-2.0-OpenSSH_9.2\r\n\r\n'],
  ['conflicting content-lengths', 'HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd'],
  ['a negative content-length', 'HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n'],
  ['a 101 to a request that asked for no upgrade', 'HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n'],
  ['a response head over 64 KiB', `HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(70_000)}\r\ncontent-length: 0\r\n\r\n`],
] as const) {
  test(`malformed upstream response (${name}): 502 upstream-protocol`, async (t) => {
    const up = await rawUpstream(t, () => response)
    const { port } = await startProxy(t, simpleYaml([up.address]))
    const res = await request(port)
    t.is(res.status, 502)
    t.is(res.headers['meshproxy-error'], 'upstream-protocol')
  })
}

test('an upstream that closes mid-body: the client sees an aborted response, never a complete one', async (t) => {
  const up = await rawUpstream(t, (_n, _h, s) => {
    s.write('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b')
    setTimeout(() => s.destroy(), 50)
  })
  const { port } = await startProxy(t, simpleYaml([up.address]))
  const res = await rawRequest(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
  t.is(res.status, 200)
  t.true(res.body.length < 100, 'the connection closed short of the announced length')
})

test('an early answer (413 before the request body): passed back, the connection not reused', async (t) => {
  const up = await startTcpServer(t, (socket) => {
    let head = ''
    socket.on('data', (c: Buffer) => {
      if (head.includes('\r\n\r\n')) return
      head += c.toString('latin1')
      if (!head.includes('\r\n\r\n')) return
      // It reads no more: the rest of the body stays in flight (more than the socket buffers hold).
      socket.pause()
      socket.write('HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!')
    })
  })
  const { port } = await startProxy(t, simpleYaml([up.address]))
  const res = await request(port, { method: 'POST', path: '/upload', body: Buffer.alloc(32 << 20, 7) })
  t.is(res.status, 413)
  t.is(res.body, 'too big!')
  const next = await request(port, { method: 'POST', path: '/upload', body: 'small' })
  t.is(next.status, 413)
  t.is(up.connections, 2, 'the first connection still had request body in flight: closed, not pooled')
})

test('bytes an idle pooled connection receives unasked (a 408): the next request goes on a fresh connection', async (t) => {
  const sockets: net.Socket[] = []
  const up = await rawUpstream(t, (n, _h, s) => {
    sockets.push(s)
    return `HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nr${n}`
  })
  const { port } = await startProxy(t, simpleYaml([up.address]))
  t.is((await request(port)).body, 'r0')
  sockets[0]!.write('HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n')
  await new Promise((r) => setTimeout(r, 100))
  const res = await request(port)
  t.deepEqual([res.status, res.body], [200, 'r0'])
  t.is(up.connections, 2)
})

test('a request body of unknown length goes upstream chunked, with the HTTP/2 client’s trailers', async (t) => {
  let seen = ''
  const up = await startTcpServer(t, (socket) => {
    socket.on('data', (c: Buffer) => {
      seen += c.toString('latin1')
      if (seen.endsWith('\r\n\r\n') && /\r\n0\r\n/.test(seen)) socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok')
    })
  })
  const { port } = await startProxy(t, simpleYaml([up.address]))
  const session = h2connect(t, `127.0.0.1:${port}`)
  const stream = session.request({ ':method': 'POST', ':path': '/up', te: 'trailers' }, { waitForTrailers: true })
  stream.on('wantTrailers', () => stream.sendTrailers({ 'x-digest': 'abc' }))
  stream.write('part one, ')
  stream.end('part two')
  const status = await new Promise<number>((resolve, reject) => {
    stream.on('response', (h) => resolve(Number(h[':status'])))
    stream.on('error', reject)
  })
  stream.resume()
  t.is(status, 200)
  t.regex(seen, /\r\ntransfer-encoding: chunked\r\n/)
  t.regex(seen, /part one, /)
  t.regex(seen, /\r\n0\r\nx-digest: abc\r\n\r\n$/)
})
