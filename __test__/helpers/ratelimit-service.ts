/**
 * A real envoyproxy/ratelimit (Envoy's rate limit service: `ShouldRateLimit` over gRPC, counts
 * on Redis, fixed windows) for a test: built with Go at a pinned version on first use
 * ([`goTool`]), started on free 127.0.0.1 ports against the given Redis, with `config` (one
 * YAML file in the service's own format) in a temp runtime folder. `stop()` kills it (SIGKILL)
 * and `start()` brings it back on the same ports ([`restartable`]). Killed at the end of the test.
 *
 * With `tls`, its gRPC port speaks TLS only (`GRPC_SERVER_USE_TLS`, with the given PEM certificate
 * and key; Go's gRPC server agrees to `h2` by ALPN); with `tls.clientCa` too, it requires a client
 * certificate signed by that CA (`GRPC_CLIENT_TLS_CACERT`). The health check stays plain HTTP.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { ExecutionContext } from 'ava'
import { closedPort } from './backend.js'
import { goTool } from './go-tool.js'
import { restartable } from './restartable.js'

export const RATELIMIT_PACKAGE = 'github.com/envoyproxy/ratelimit/src/service_cmd'
export const RATELIMIT_VERSION = 'v1.4.1-0.20260122083618-3fb702589d36'

/** The path of the envoyproxy/ratelimit binary, built first if the cache does not have it. */
export function ratelimitBinary(): Promise<string> {
  return goTool({ name: 'envoy-ratelimit', pkg: RATELIMIT_PACKAGE, version: RATELIMIT_VERSION, bin: 'service_cmd', purpose: 'the global rate limit tests (rls)' })
}

/**
 * The environment envoyproxy/ratelimit runs with here (the tests' and `bench:ci --rls`'s): its
 * three ports on 127.0.0.1, counts on the Redis at `redisPort`, its config read once from
 * `<root>/ratelimit/config/`, no statsd; with `tls`, TLS on its gRPC port.
 */
export function ratelimitEnv(
  redisPort: number,
  root: string,
  ports: { http: number; grpc: number; debug: number },
  tls?: { cert: string; key: string; clientCa?: string },
): NodeJS.ProcessEnv {
  return {
    ...process.env,
    USE_STATSD: 'false',
    REDIS_SOCKET_TYPE: 'tcp',
    REDIS_URL: `127.0.0.1:${redisPort}`,
    RUNTIME_ROOT: root,
    RUNTIME_SUBDIRECTORY: 'ratelimit',
    RUNTIME_WATCH_ROOT: 'false',
    HOST: '127.0.0.1',
    GRPC_HOST: '127.0.0.1',
    DEBUG_HOST: '127.0.0.1',
    PORT: String(ports.http),
    GRPC_PORT: String(ports.grpc),
    DEBUG_PORT: String(ports.debug),
    LOG_LEVEL: 'warn',
    ...(tls ? { GRPC_SERVER_USE_TLS: 'true', GRPC_SERVER_TLS_CERT: tls.cert, GRPC_SERVER_TLS_KEY: tls.key } : {}),
    ...(tls?.clientCa ? { GRPC_CLIENT_TLS_CACERT: tls.clientCa } : {}),
  }
}

export interface RateLimitService {
  /** `127.0.0.1:PORT`, its gRPC address. */
  address: string
  stop(): Promise<void>
  start(): Promise<void>
}

export interface RateLimitServiceOptions {
  /** PEM files of the gRPC server's certificate and key, and of the CA its clients' certificates must chain to. */
  tls?: { cert: string; key: string; clientCa?: string }
}

export async function startRateLimitService(t: ExecutionContext, redisPort: number, config: string, opts: RateLimitServiceOptions = {}): Promise<RateLimitService> {
  const bin = await ratelimitBinary()
  const dir = mkdtempSync(join(tmpdir(), 'meshproxy-ratelimit-'))
  mkdirSync(join(dir, 'ratelimit', 'config'), { recursive: true })
  writeFileSync(join(dir, 'ratelimit', 'config', 'config.yaml'), config)
  const [httpPort, grpcPort, debugPort] = [await closedPort(), await closedPort(), await closedPort()]
  const env = ratelimitEnv(redisPort, dir, { http: httpPort, grpc: grpcPort, debug: debugPort }, opts.tls)
  const { start, stop } = restartable(t, {
    what: 'envoyproxy/ratelimit',
    bin,
    args: () => [],
    env,
    ready: () => healthy(httpPort),
    within: 15_000,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  })
  await start()
  return { address: `127.0.0.1:${grpcPort}`, stop, start }
}

/** Whether the service's `/healthcheck` answers 200 (it has loaded its config and reached Redis). */
export function healthy(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/healthcheck', timeout: 1000 }, (res) => {
      res.resume()
      resolve(res.statusCode === 200)
    })
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(false))
  })
}
