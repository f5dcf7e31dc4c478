/**
 * HTTP/2 test peers: an h2c (cleartext, prior knowledge) Node server that counts its sessions,
 * a small client helper over one `node:http2` session, and the check that a proxy still serves a
 * well-behaved client.
 */
import http2 from 'node:http2'
import type { AddressInfo } from 'node:net'
import type { ExecutionContext } from 'ava'

export interface H2Backend {
  address: string
  readonly sessions: number
  readonly streams: number
  server: http2.Http2Server
}

/** An h2c server answering `name` (and echoing the request body length) on every stream. */
/**
 * Listens on an ephemeral 127.0.0.1 port and counts the server's sessions; at teardown, closes
 * it and destroys the sessions still open (`close()` alone waits for them).
 */
export async function listenH2(t: ExecutionContext, server: http2.Http2Server): Promise<{ address: string; readonly sessions: number }> {
  let sessions = 0
  const open = new Set<http2.ServerHttp2Session>()
  server.on('session', (s) => {
    sessions += 1
    open.add(s)
    s.on('close', () => open.delete(s))
    s.on('error', () => {})
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        for (const s of open) s.destroy()
      }),
  )
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    get sessions() {
      return sessions
    },
  }
}

export async function startH2Backend(t: ExecutionContext, name: string, opts: { delayMs?: number } = {}): Promise<H2Backend> {
  const server = http2.createServer()
  let streams = 0
  server.on('stream', (stream, headers) => {
    streams += 1
    let n = 0
    stream.on('data', (c: Buffer) => (n += c.length))
    stream.on('end', () => {
      const answer = () => {
        if (stream.destroyed) return
        stream.respond({ ':status': 200, 'x-backend': name, 'x-via': String(headers['via'] ?? ''), 'x-authority': String(headers[':authority'] ?? '') })
        stream.end(`${name}:${n}`)
      }
      if (opts.delayMs) setTimeout(answer, opts.delayMs)
      else answer()
    })
    stream.on('error', () => {})
  })
  const listening = await listenH2(t, server)
  return {
    address: listening.address,
    get sessions() {
      return listening.sessions
    },
    get streams() {
      return streams
    },
    server,
  }
}

export interface H2Response {
  status: number
  headers: http2.IncomingHttpHeaders
  body: string
  /** The trailer section, when the response had one. */
  trailers?: http2.IncomingHttpHeaders
}

/** One request on an existing session. */
export function h2request(
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  body?: string,
): Promise<H2Response> {
  return new Promise((resolve, reject) => {
    const req = session.request(headers, { endStream: body === undefined })
    let status = 0
    let resHeaders: http2.IncomingHttpHeaders = {}
    const chunks: Buffer[] = []
    req.on('response', (h) => {
      status = Number(h[':status'])
      resHeaders = h
    })
    let trailers: http2.IncomingHttpHeaders | undefined
    req.on('trailers', (h) => (trailers = h))
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => resolve({ status, headers: resHeaders, body: Buffer.concat(chunks).toString(), ...(trailers ? { trailers } : {}) }))
    req.on('error', reject)
    if (body !== undefined) req.end(body)
  })
}

/** An h2c client session to `address`, closed at teardown. */
export function h2connect(t: ExecutionContext, address: string): http2.ClientHttp2Session {
  const session = http2.connect(`http://${address}`)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  return session
}

/** One request from a well-behaved h2c client on a new session to `port`: the proxy answers 200. */
export async function stillServes(t: ExecutionContext, port: number): Promise<void> {
  const other = http2.connect(`http://127.0.0.1:${port}`)
  t.teardown(() => other.destroy())
  const status = await new Promise<number>((resolve, reject) => {
    const req = other.request({ ':path': '/after' })
    req.on('response', (h) => resolve(Number(h[':status'])))
    req.on('error', reject)
    req.end()
  })
  t.is(status, 200)
}
