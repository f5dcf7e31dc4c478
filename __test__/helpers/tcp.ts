/**
 * Raw TCP peers for the opaque-TCP tests: an upstream server that may keep half-open sockets
 * (`allowHalfOpen`), a client connection, and a `Collector` that gathers what a socket receives
 * and lets a test wait for a number of bytes, a text, the peer's EOF or the close.
 */
import net from 'node:net'
import type { ExecutionContext } from 'ava'
import { listen } from './backend.js'

export interface TcpServer {
  port: number
  /** `127.0.0.1:PORT` */
  address: string
  /** Connections accepted so far. */
  readonly connections: number
  /** Sockets accepted and not yet closed. */
  readonly open: ReadonlySet<net.Socket>
  close(): Promise<void>
}

export interface TcpServerOptions {
  /** Keep writing after the client's FIN (Node's default ends the socket at once). Default true. */
  allowHalfOpen?: boolean
}

/** A TCP server on 127.0.0.1:0; `onConnection` gets every accepted socket. Closed at teardown. */
export async function startTcpServer(
  t: ExecutionContext,
  onConnection: (socket: net.Socket) => void,
  opts: TcpServerOptions = {},
): Promise<TcpServer> {
  const open = new Set<net.Socket>()
  let connections = 0
  const server = net.createServer({ allowHalfOpen: opts.allowHalfOpen ?? true }, (socket) => {
    connections += 1
    open.add(socket)
    socket.on('close', () => open.delete(socket))
    socket.on('error', () => {})
    onConnection(socket)
  })
  const port = await listen(server)
  let closing: Promise<void> | undefined
  const close = (): Promise<void> => {
    closing ??= new Promise<void>((resolve) => {
      server.close(() => resolve())
      for (const s of open) s.destroy()
    })
    return closing
  }
  t.teardown(close)
  return {
    port,
    address: `127.0.0.1:${port}`,
    get connections() {
      return connections
    },
    open,
    close,
  }
}

/** Writes back everything it reads; ends its side after the client's EOF. */
export function echo(socket: net.Socket): void {
  socket.pipe(socket)
}

/** Everything a socket has received, and waiting for more of it. */
export class Collector {
  private readonly chunks: Buffer[] = []
  private waiters: Array<() => void> = []
  length = 0
  /** The peer's FIN arrived. */
  ended = false
  closed = false
  error: string | undefined

  constructor(readonly socket: net.Socket) {
    socket.on('data', (c: Buffer) => {
      this.chunks.push(c)
      this.length += c.length
      this.notify()
    })
    socket.on('end', () => {
      this.ended = true
      this.notify()
    })
    socket.on('error', (e: NodeJS.ErrnoException) => {
      this.error = e.code ?? e.message
      this.notify()
    })
    socket.on('close', () => {
      this.closed = true
      this.notify()
    })
  }

  get data(): Buffer {
    if (this.chunks.length > 1) {
      const all = Buffer.concat(this.chunks)
      this.chunks.length = 0
      this.chunks.push(all)
    }
    return this.chunks[0] ?? Buffer.alloc(0)
  }

  text(): string {
    return this.data.toString('latin1')
  }

  private notify(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) w()
  }

  /** Resolves when `done()` holds; rejects after `ms` (or when the socket closes first) naming `what`. */
  waitFor(done: () => boolean, what: string, ms = 10_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`timed out after ${ms} ms waiting for ${what}; got ${this.length} bytes (ended: ${this.ended}, closed: ${this.closed}, error: ${this.error ?? 'none'}): ${JSON.stringify(this.text().slice(0, 200))}`))
      }, ms)
      const check = (): void => {
        if (done()) {
          clearTimeout(timer)
          resolve()
        } else if (this.closed) {
          clearTimeout(timer)
          reject(new Error(`socket closed while waiting for ${what}; got ${this.length} bytes (ended: ${this.ended}, error: ${this.error ?? 'none'}): ${JSON.stringify(this.text().slice(0, 200))}`))
        } else this.waiters.push(check)
      }
      check()
    })
  }

  /** At least `n` bytes received. */
  bytes(n: number, ms?: number): Promise<void> {
    return this.waitFor(() => this.length >= n, `${n} bytes`, ms)
  }

  /** The received text contains `s`. */
  includes(s: string, ms?: number): Promise<void> {
    return this.waitFor(() => this.text().includes(s), JSON.stringify(s), ms)
  }

  /** The peer's EOF; everything it sent is in `data` then. */
  end(ms?: number): Promise<void> {
    return this.waitFor(() => this.ended, 'EOF', ms)
  }

  /** The socket fully closed (either way: EOF, reset or destroy). */
  close(ms = 10_000): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.closed) return resolve()
      const timer = setTimeout(() => reject(new Error(`socket not closed within ${ms} ms (got ${this.length} bytes, ended: ${this.ended})`)), ms)
      this.socket.once('close', () => {
        clearTimeout(timer)
        resolve()
      })
    })
  }
}

export interface TcpClient {
  socket: net.Socket
  received: Collector
  /** ms since the connection was established. */
  elapsed(): number
}

/** A connected client to 127.0.0.1:port (half-open allowed), destroyed at teardown. */
export function tcpConnect(t: ExecutionContext, port: number): Promise<TcpClient> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true })
    const received = new Collector(socket)
    t.teardown(() => {
      socket.destroy()
    })
    socket.once('error', reject)
    socket.once('connect', () => {
      socket.off('error', reject)
      const at = performance.now()
      resolve({ socket, received, elapsed: () => performance.now() - at })
    })
  })
}

/**
 * After the peer's EOF: resolves once the peer has dropped the connection entirely (not just
 * half-closed it), seen as our writes being refused (EPIPE/ECONNRESET) and the socket closing.
 * Resolves with the error code seen.
 */
export async function peerGone(client: TcpClient, ms = 3000): Promise<string> {
  const { socket, received } = client
  await received.end(ms)
  const deadline = performance.now() + ms
  while (!received.closed && performance.now() < deadline) {
    if (!socket.destroyed) socket.write('x', () => {})
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  if (!received.closed) throw new Error(`peer half-closed but still accepts writes after ${ms} ms`)
  return received.error ?? 'closed'
}

/** Writes `data` and resolves once it has been handed to the kernel. */
export function write(socket: net.Socket, data: string | Buffer): Promise<void> {
  return new Promise((resolve, reject) => socket.write(data, (err) => (err ? reject(err) : resolve())))
}

/** The value of one Prometheus sample (`name{labels} value`), or undefined when absent. */
export function metricValue(text: string, sample: string): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith(`${sample} `)) return Number(line.slice(sample.length + 1))
  }
  return undefined
}
