/**
 * Test upstreams: real Node HTTP (or raw TCP) servers on 127.0.0.1 ephemeral ports that count the
 * connections they accept and record the requests they see.
 */
import http from 'node:http'
import net from 'node:net'
import type { ExecutionContext } from 'ava'

export interface SeenRequest {
  method: string
  url: string
  headers: http.IncomingHttpHeaders
  rawHeaders: string[]
}

export interface Backend {
  name: string
  port: number
  /** `127.0.0.1:PORT` */
  address: string
  server: http.Server
  /** Connections accepted so far. */
  readonly connections: number
  /** Requests seen, in arrival order. */
  requests: SeenRequest[]
  close(): Promise<void>
}

export type Handler = (req: http.IncomingMessage, res: http.ServerResponse, backend: Backend) => void

/** Answers 200 with the backend's name as body and in `x-backend`. */
export const nameHandler: Handler = (req, res, backend) => {
  req.resume()
  req.on('end', () => {
    res.setHeader('x-backend', backend.name)
    res.setHeader('content-type', 'text/plain')
    res.end(backend.name)
  })
}

export interface BackendOptions {
  /** Passed to the server; Node's default is 5000. */
  keepAliveTimeout?: number
  /** Node's default is 16 KiB. */
  maxHeaderSize?: number
}

/** Starts a backend and registers its close as a teardown of `t`. */
export async function startBackend(
  t: ExecutionContext,
  name: string,
  handler: Handler = nameHandler,
  opts: BackendOptions = {},
): Promise<Backend> {
  const server = http.createServer(opts.maxHeaderSize !== undefined ? { maxHeaderSize: opts.maxHeaderSize } : {})
  if (opts.keepAliveTimeout !== undefined) server.keepAliveTimeout = opts.keepAliveTimeout
  let connections = 0
  const backend: Backend = {
    name,
    port: 0,
    address: '',
    server,
    get connections() {
      return connections
    },
    requests: [],
    close: () => closeServer(server),
  }
  server.on('connection', () => {
    connections += 1
  })
  server.on('request', (req, res) => {
    backend.requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders })
    handler(req, res, backend)
  })
  const port = await listen(server)
  backend.port = port
  backend.address = `127.0.0.1:${port}`
  t.teardown(() => backend.close())
  return backend
}

export async function startBackends(t: ExecutionContext, names: string[], handler?: Handler): Promise<Record<string, Backend>> {
  const out: Record<string, Backend> = {}
  for (const n of names) out[n] = await startBackend(t, n, handler)
  return out
}

/** Calls `onHead(socket, head)` for each request head that arrives (bodies are not expected). */
export function onRequestHeads(socket: net.Socket, onHead: (head: string) => void): void {
  let buf = ''
  socket.setEncoding('latin1')
  socket.on('data', (chunk: string) => {
    buf += chunk
    let i
    while ((i = buf.indexOf('\r\n\r\n')) !== -1) {
      const head = buf.slice(0, i)
      buf = buf.slice(i + 4)
      onHead(head)
    }
  })
}

export function listen(server: net.Server, port = 0): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject)
      resolve((server.address() as net.AddressInfo).port)
    })
  })
}

export function closeServer(server: http.Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      server.closeAllConnections()
      resolve()
      return
    }
    server.close(() => resolve())
    server.closeAllConnections()
  })
}

/**
 * A 127.0.0.1 port with nothing listening on it: one below Linux's ephemeral range (32768 and
 * up), found free by binding it and released. Servers the tests start on port 0 get ephemeral
 * ports, so no concurrent test can take this one over (a released ephemeral port could be handed
 * to another test's server, which would then answer for "nothing listening").
 */
export async function closedPort(): Promise<number> {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 12000)
    const s = net.createServer()
    const bound = await new Promise<boolean>((resolve) => {
      s.once('error', () => resolve(false))
      s.listen(port, '127.0.0.1', () => resolve(true))
    })
    if (!bound) continue
    await new Promise<void>((resolve) => s.close(() => resolve()))
    return port
  }
}

/** Occupies a 127.0.0.1 port until the test ends. */
export async function occupiedPort(t: ExecutionContext): Promise<number> {
  const s = net.createServer((c) => c.destroy())
  const port = await listen(s)
  t.teardown(() => new Promise<void>((resolve) => s.close(() => resolve())))
  return port
}

/** How many requests each backend saw, by name. */
export function counts(backends: Record<string, Backend>): Record<string, number> {
  return Object.fromEntries(Object.entries(backends).map(([k, b]) => [k, b.requests.length]))
}
