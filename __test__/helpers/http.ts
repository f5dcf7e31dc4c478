/** Client side of the tests: node:http requests and raw-socket requests to 127.0.0.1. */
import http from 'node:http'
import net from 'node:net'

export interface Res {
  status: number
  headers: http.IncomingHttpHeaders
  rawHeaders: string[]
  body: string
}

export interface ReqOptions {
  path?: string
  method?: string
  headers?: http.OutgoingHttpHeaders
  body?: string | Buffer
  /** Default: no agent (a fresh connection per request). */
  agent?: http.Agent | false
}

/** One request to 127.0.0.1:port; the path is sent exactly as given. */
export function request(port: number, opts: ReqOptions = {}): Promise<Res> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        method: opts.method ?? 'GET',
        path: opts.path ?? '/',
        headers: opts.headers ?? {},
        agent: opts.agent ?? false,
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('error', reject)
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks).toString('utf8') }),
        )
      },
    )
    req.on('error', reject)
    req.end(opts.body)
  })
}

export function get(port: number, path = '/', headers: http.OutgoingHttpHeaders = {}, agent?: http.Agent): Promise<Res> {
  return request(port, { path, headers, ...(agent ? { agent } : {}) })
}

export interface RawRes {
  /** Everything the server sent. */
  raw: string
  status: number
  /** Lowercase names; repeated headers joined with ", ". */
  headers: Record<string, string>
  body: string
  /** A socket error seen (e.g. ECONNRESET), if any. */
  error?: string
}

/** Writes `data` on a fresh connection and reads until the server closes it. */
export function rawRequest(port: number, data: string | Buffer): Promise<RawRes> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    const chunks: Buffer[] = []
    let error: string | undefined
    socket.on('data', (c: Buffer) => chunks.push(c))
    socket.on('error', (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message
    })
    socket.on('close', () => {
      const raw = Buffer.concat(chunks).toString('latin1')
      if (raw.length === 0 && error) {
        reject(new Error(`raw request failed before any response: ${error}`))
        return
      }
      resolve({ ...parseRaw(raw), ...(error ? { error } : {}) })
    })
    socket.write(data)
  })
}

export function parseRaw(raw: string): RawRes {
  const end = raw.indexOf('\r\n\r\n')
  const head = end === -1 ? raw : raw.slice(0, end)
  const [statusLine = '', ...lines] = head.split('\r\n')
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0)
  const headers: Record<string, string> = {}
  for (const line of lines) {
    const i = line.indexOf(':')
    if (i <= 0) continue
    const name = line.slice(0, i).trim().toLowerCase()
    const value = line.slice(i + 1).trim()
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value
  }
  return { raw, status, headers, body: end === -1 ? '' : raw.slice(end + 4) }
}

/** Resolves with the connect error code, or null if the connection succeeded (then closed). */
export function tryConnect(port: number): Promise<string | null> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1')
    s.on('connect', () => {
      s.destroy()
      resolve(null)
    })
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message))
  })
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Calls `send` `n` times in all, from `concurrency` loops each awaiting its previous call. */
export async function inParallel(concurrency: number, n: number, send: () => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next++ < n) await send()
    }),
  )
}

/**
 * An HTTP/1.1 `CONNECT authority` through the proxy on `port`: the response, refusals too (Node
 * reports each answer to a CONNECT as `connect`; a `response` is taken as well); a tunnel's
 * socket is closed.
 */
export function connectOnce(port: number, authority: string): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'CONNECT', path: authority, agent: false })
    req.on('connect', (res: http.IncomingMessage, socket: net.Socket) => {
      socket.destroy()
      resolve(res)
    })
    req.on('response', (res: http.IncomingMessage) => {
      res.resume()
      resolve(res)
    })
    req.on('error', reject)
    req.end()
  })
}

/** Requests sent by [`keepSending`] until `stop()`. */
export interface Sending {
  /** How many were answered 200. */
  readonly ok: number
  /** Each other answer (`status meshproxy-error`) and each error thrown, in order. */
  readonly failed: string[]
  /** Lets each loop finish its request in flight and resolves when all have. */
  stop(): Promise<void>
}

/**
 * Runs `loops` loops that each send one request at a time with `send` (its status and
 * `meshproxy-error`), `pauseMs` apart (none: the next at once), until `stop()`.
 */
export function keepSending(loops: number, send: () => Promise<{ status: number; error?: string | undefined }>, pauseMs = 0): Sending {
  let running = true
  let ok = 0
  const failed: string[] = []
  const loop = async (): Promise<void> => {
    while (running) {
      try {
        const r = await send()
        if (r.status === 200) ok++
        else failed.push(`${r.status} ${r.error ?? ''}`)
      } catch (e) {
        failed.push(String(e))
      }
      if (pauseMs > 0) await sleep(pauseMs)
    }
  }
  const all = Promise.all(Array.from({ length: loops }, loop))
  return {
    get ok() {
      return ok
    },
    failed,
    async stop() {
      running = false
      await all
    },
  }
}
