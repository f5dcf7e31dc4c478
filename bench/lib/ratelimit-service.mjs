// `bench:ci --rls`: a real envoyproxy/ratelimit (Envoy's rate limit service) for the proxy's
// global limit to ask. The binary is the tests' own: the version pinned in
// __test__/helpers/ratelimit-service.ts, built with Go into .cache/tools/ on first use (its
// helper is TypeScript, loaded here through tsx), so the bench and the tests run one build.
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { start } from './procs.mjs'
import { freePorts } from './targets.mjs'

/**
 * The service's config for the bench's limit (`per-client`, keyed by client address, on every
 * route or service): any route or service name, each client address its own count of 10^9 a
 * second, so no request is refused.
 */
export const BENCH_RLS_CONFIG = `domain: bench
descriptors:
${['route', 'service']
  .map(
    (scope) => `  - key: ${scope}
    descriptors:
      - key: limit
        value: per-client
        descriptors:
          - key: remote_address
            rate_limit: { unit: second, requests_per_unit: 1000000000 }
`,
  )
  .join('')}`

/** The tests' helper (TypeScript, through tsx): the pinned binary, the environment it runs with, its health check. */
async function testHelper(repoDir) {
  const { tsImport } = await import('tsx/esm/api')
  const helper = pathToFileURL(join(repoDir, '__test__', 'helpers', 'ratelimit-service.ts')).href
  return tsImport(helper, import.meta.url)
}

/** The path of the envoyproxy/ratelimit binary, built first (a few minutes of Go) if the cache does not have it. */
export async function ratelimitBinary(repoDir) {
  return (await testHelper(repoDir)).ratelimitBinary()
}

/**
 * Starts the service on free 127.0.0.1 ports against the Redis on `redisPort`, its runtime folder
 * under `workDir`, and waits until its health check answers (config loaded, Redis reached).
 * Returns its gRPC address (`127.0.0.1:PORT`) and the process (stopped by the bench's stopAll).
 */
export async function startRateLimitService(repoDir, workDir, redisPort) {
  const bin = await ratelimitBinary(repoDir)
  const root = join(workDir, 'ratelimit-runtime')
  mkdirSync(join(root, 'ratelimit', 'config'), { recursive: true })
  writeFileSync(join(root, 'ratelimit', 'config', 'config.yaml'), BENCH_RLS_CONFIG)
  const [httpPort, grpcPort, debugPort] = await freePorts(3)
  const { ratelimitEnv, healthy } = await testHelper(repoDir)
  const env = ratelimitEnv(redisPort, root, { http: httpPort, grpc: grpcPort, debug: debugPort })
  const child = start('envoy-ratelimit', bin, [], { env })
  const deadline = Date.now() + 30_000
  while (!(await healthy(httpPort))) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`envoyproxy/ratelimit exited (${child.exitCode ?? child.signalCode}):\n${child.err}`)
    if (Date.now() > deadline) throw new Error(`envoyproxy/ratelimit: no healthy /healthcheck on ${httpPort} within 30 s:\n${child.err}`)
    await new Promise((r) => setTimeout(r, 100))
  }
  return { address: `127.0.0.1:${grpcPort}`, child }
}
