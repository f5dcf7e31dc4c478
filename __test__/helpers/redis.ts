/**
 * A real `redis-server` for a test: no persistence (`--save ""`, `--appendonly no`), its files in
 * a temp dir, on a free 127.0.0.1 port picked first (redis takes no port 0). `stop()` kills it
 * (SIGKILL: a crash, as a test of failure wants) and `start()` brings it back on the same port,
 * empty. Killed at the end of the test. A missing `redis-server` is the test's failure, never a
 * skip: `.ci/run` installs it, as the README's prerequisites say.
 *
 * With `tls`, the server speaks TLS only (`--tls-port`, `--port 0`) and its URL is `rediss://`;
 * it asks for no client certificate unless `tls.clients` is given, then it requires one signed by
 * `tls.clients.ca` (`--tls-auth-clients yes`, and the readiness probe shows the one given there); with `password`, it requires AUTH (`--requirepass`) and the URL carries
 * the password (`redis://:PASSWORD@…`).
 */
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import net from 'node:net'
import tls from 'node:tls'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { ExecutionContext } from 'ava'
import { closedPort } from './backend.js'
import { restartable } from './restartable.js'

function redisServer(): string | undefined {
  const r = spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' })
  const path = r.stdout.trim()
  return r.status === 0 && path !== '' ? path : undefined
}

export interface Redis {
  port: number
  /** `redis://127.0.0.1:PORT` (`rediss://` with TLS, `:PASSWORD@` with a password). */
  url: string
  /** Kills the server (SIGKILL) and waits for it to exit. */
  stop(): Promise<void>
  /** Starts it again on the same port and waits until it accepts connections. */
  start(): Promise<void>
}

export interface RedisOptions {
  /** PEM files of the server's certificate (for 127.0.0.1) and key. */
  tls?: { cert: string; key: string; clients?: { ca: string; cert: string; key: string } }
  password?: string
}

export async function startRedis(t: ExecutionContext, opts: RedisOptions = {}): Promise<Redis> {
  const bin = redisServer()
  if (!bin) throw new Error('redis-server is not installed: apt-get install redis-server (.ci/run installs it)')
  const dir = mkdtempSync(join(tmpdir(), 'meshproxy-redis-'))
  const port = await closedPort()
  const ports = opts.tls
    ? ['--port', '0', '--tls-port', String(port), '--tls-cert-file', opts.tls.cert, '--tls-key-file', opts.tls.key, ...(opts.tls.clients ? ['--tls-auth-clients', 'yes', '--tls-ca-cert-file', opts.tls.clients.ca] : ['--tls-auth-clients', 'no'])]
    : ['--port', String(port)]
  const auth = opts.password === undefined ? [] : ['--requirepass', opts.password]
  const { start, stop } = restartable(t, {
    what: `redis-server on ${port}`,
    bin,
    args: () => [...ports, ...auth, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--logfile', ''],
    ready: () => pong(port, opts.tls && (opts.tls.clients ?? {})),
    within: 10_000,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  })
  await start()
  const userinfo = opts.password === undefined ? '' : `:${encodeURIComponent(opts.password)}@`
  return { port, url: `${opts.tls ? 'rediss' : 'redis'}://${userinfo}127.0.0.1:${port}`, stop, start }
}

/**
 * Whether a Redis server answers PING on `port` (with `overTls`, over TLS, unverified: this only
 * waits for the server to be up, showing the client certificate given there, if any); `-NOAUTH`
 * from one that requires a password counts.
 */
function pong(port: number, overTls: { cert?: string; key?: string } | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    const client = overTls?.cert && overTls.key ? { cert: readFileSync(overTls.cert), key: readFileSync(overTls.key) } : {}
    const s = overTls ? tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ...client }) : net.connect(port, '127.0.0.1')
    let got = ''
    const done = (ok: boolean): void => {
      s.destroy()
      resolve(ok)
    }
    s.setTimeout(1000, () => done(false))
    s.on('error', () => done(false))
    s.on(overTls ? 'secureConnect' : 'connect', () => s.write('PING\r\n'))
    s.on('data', (d) => {
      got += d.toString()
      if (got.includes('\r\n')) done(got.startsWith('+PONG') || got.startsWith('-NOAUTH'))
    })
  })
}
