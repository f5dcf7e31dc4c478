/**
 * Local rate limits through the real proxy: the seed's `RateLimiter` document, unchanged, limits
 * service-a and service-b behind the seed Ingress when run by the CLI; a route's limit keyed by a
 * header gives each value its own bucket (and an override its own rate); a flood of distinct keys
 * from wrk keeps the proxy's memory bounded. Real time on a shared 2-core machine: the counts are
 * checked against what the limit allows over the measured time, with loose tolerances.
 */
import { execFile, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import * as grpc from '@grpc/grpc-js'
import { startBackends } from './helpers/backend.js'
import { grpcEchoClient, startGrpcEcho } from './helpers/grpc-echo.js'
import { rssBytes, startCliProxy } from './helpers/cli.js'
import { get, type Res } from './helpers/http.js'
import { startProxy } from './helpers/proxy.js'
import { limitedEchoYaml } from './helpers/rate-limit.js'

const fixture = (name: string): string => readFileSync(new URL(`fixtures/${name}`, import.meta.url), 'utf8')

/** Sends requests with `concurrency` keep-alive connections for `ms`; the statuses seen and the time taken. */
async function flood(port: number, host: string, concurrency: number, ms: number): Promise<{ byStatus: Map<number, number>; elapsed: number; refused?: Res }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency })
  const byStatus = new Map<number, number>()
  let refused: Res | undefined
  const start = performance.now()
  const end = start + ms
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) {
        const res = await get(port, '/a', { host }, agent)
        byStatus.set(res.status, (byStatus.get(res.status) ?? 0) + 1)
        if (res.status === 429) refused ??= res
      }
    }),
  )
  const elapsed = (performance.now() - start) / 1000
  agent.destroy()
  return { byStatus, elapsed, refused }
}

test.serial('the seed RateLimiter, unchanged, limits service-a to 100 req/s with a burst of 10 through the CLI', async (t) => {
  const b = await startBackends(t, ['a1', 'b', 'a2'])
  const ingress = fixture('seed-ingress-full.yaml').replaceAll('18081', String(b.a1!.port)).replaceAll('18082', String(b.b!.port)).replaceAll('18083', String(b.a2!.port))
  const dir = mkdtempSync(join(tmpdir(), 'meshproxy-rl-'))
  const file = join(dir, 'seed.yaml')
  writeFileSync(file, `${ingress}\n---\n${fixture('seed-ratelimiter.yaml')}`)
  const p = await startCliProxy(t, ['-c', file])

  const { byStatus, elapsed, refused } = await flood(p.port, 'service-a.example.com', 16, 2000)
  const admitted = byStatus.get(200) ?? 0
  const limited = byStatus.get(429) ?? 0
  t.log(`service-a: ${admitted} admitted, ${limited} refused in ${elapsed.toFixed(2)} s`)
  t.deepEqual([...byStatus.keys()].filter((s) => s !== 200 && s !== 429), [], 'only 200 and 429')
  // The burst at once, then 100 a second: 10 + 100 × elapsed, within what a loaded machine does.
  const allowed = 10 + 100 * elapsed
  t.true(admitted <= allowed * 1.1 + 5, `admitted ${admitted} > ${allowed.toFixed(0)}`)
  t.true(limited > 0, 'the offered load went past the limit')
  // Under sustained overload the bucket is never idle: most of what it allows is admitted (a
  // stalled machine sends in bursts, and a burst past 10 is refused even below the rate).
  if (admitted + limited >= 3 * allowed) t.true(admitted >= allowed * 0.6, `admitted ${admitted} of ${allowed.toFixed(0)} allowed`)
  t.is(b.a1!.requests.length + b.a2!.requests.length, admitted, 'a refused request never reaches a backend')

  t.is(refused?.headers['meshproxy-error'], 'rate-limited')
  t.is(refused?.headers['retry-after'], '1')
  t.is(refused?.headers['ratelimit-policy'], '"default";q=100;w=1;meshproxy-burst=10')
  t.is(refused?.headers['ratelimit'], '"default";r=0;t=1')

  // service-b has a bucket of its own, untouched by service-a's traffic: its burst at once.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 10 })
  t.teardown(() => agent.destroy())
  const burst = await Promise.all(Array.from({ length: 10 }, () => get(p.port, '/b', { host: 'service-b.example.com' }, agent)))
  t.deepEqual(burst.map((r) => r.status), Array(10).fill(200))

  const metrics = await get(p.adminPort, '/metrics')
  t.regex(metrics.body, new RegExp(`meshproxy_rate_limited_total\\{listener="",route="",service="service-a:80",limit="default"\\} ${limited}\\b`))
})

test.serial('a route limit keyed by a header gives each value its own bucket, an override its own rate', async (t) => {
  const b = await startBackends(t, ['a'])
  const { port, proxy } = await startProxy(
    t,
    `
admin: null
listeners:
  - address: 127.0.0.1:0
    routes:
      - service: a
        rateLimits:
          - name: per-user
            rate: 1
            burst: 2
            key: { header: x-user }
            overrides: [{ value: vip, rate: 1, burst: 5 }]
services:
  - name: a
    endpoints: [127.0.0.1:${b.a!.port}]
`,
  )
  const admitted = async (user?: string): Promise<number> => {
    let n = 0
    for (let i = 0; i < 8; i++) {
      const res = await get(port, '/', user === undefined ? {} : { 'x-user': user })
      if (res.status === 200) n++
      else t.is(res.status, 429)
    }
    return n
  }
  // One a second refills: at most one more within the test's own time.
  t.true([2, 3].includes(await admitted('alice')))
  t.true([2, 3].includes(await admitted('bob')), 'another value, another bucket')
  t.true([5, 6].includes(await admitted('vip')), 'the override\'s burst')
  t.true([2, 3].includes(await admitted()), 'requests without the header share one bucket')
  const stats = await proxy.stats()
  t.is(stats.rateLimited, 32 - b.a!.requests.length, 'stats() counts the refusals')
})

test.serial('a flood of distinct client keys from wrk keeps the proxy\'s memory bounded', async (t) => {
  const wrk = spawnSync('wrk', ['--version'], { encoding: 'utf8' })
  if (wrk.error) {
    t.log('wrk is not installed (.ci/run installs it); nothing to drive the flood with')
    t.pass()
    return
  }
  const b = await startBackends(t, ['a'])
  const dir = mkdtempSync(join(tmpdir(), 'meshproxy-rl-'))
  const file = join(dir, 'flood.yaml')
  writeFileSync(
    file,
    `
listeners:
  - routes:
      - service: a
        rateLimits:
          # One request a second per key: each random key stays tracked for a second.
          - { rate: 1, burst: 1, key: { header: x-user } }
services:
  - name: a
    endpoints: [127.0.0.1:${b.a!.port}]
`,
  )
  const lua = join(dir, 'keys.lua')
  writeFileSync(lua, 'math.randomseed(os.time())\nrequest = function()\n  return wrk.format("GET", "/", { ["x-user"] = tostring(math.random(1, 1000000000)) })\nend\n')
  const p = await startCliProxy(t, ['-c', file])
  // Warm up (the first requests map the addon's pages), then measure from there.
  for (let i = 0; i < 50; i++) await get(p.port, '/', { 'x-user': `warm-${i}` })
  const before = await rssBytes(p.pid)
  // Not spawnSync: the backend answers on this process's event loop.
  const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) =>
    execFile('wrk', ['-t1', '-c8', '-d4s', '-s', lua, `http://127.0.0.1:${p.port}/`], { timeout: 30_000 }, (e, stdout, stderr) => resolve({ status: e ? (typeof e.code === 'number' ? e.code : 1) : 0, stdout, stderr })),
  )
  t.is(r.status, 0, r.stderr)
  const requests = Number(/(\d+) requests in/.exec(r.stdout)?.[1] ?? 0)
  const after = await rssBytes(p.pid)
  const metrics = await get(p.adminPort, '/metrics')
  const keys = Number(/meshproxy_rate_limit_keys\{[^}]*\} (\d+)/.exec(metrics.body)?.[1] ?? -1)
  const admitted = requests - Number(/Non-2xx or 3xx responses: (\d+)/.exec(r.stdout)?.[1] ?? 0)
  const grown = (after - before) / 1024 / 1024
  t.log(`${requests} requests with random keys (${admitted} admitted): RSS ${(before / 1048576).toFixed(1)} → ${(after / 1048576).toFixed(1)} MiB, ${keys} keys after the last sweep`)
  t.true(requests > 1000, r.stdout)
  t.true(admitted > requests * 0.9, 'random keys are new keys, each with its own bucket')
  // The README's bound: a keyed limit at its default maxKeys (100,000) holds well under 16 MiB.
  t.true(grown < 32, `RSS grew ${grown.toFixed(1)} MiB`)
  t.true(keys <= 100_000, `${keys} keys`)
})

test.serial('a gRPC client over the limit gets RESOURCE_EXHAUSTED, and the call never reaches the server', async (t) => {
  const echo = await startGrpcEcho(t)
  const { address } = await startProxy(t, limitedEchoYaml(echo.port, '[{ rate: 1, burst: 2 }]'))
  const call = grpcEchoClient(t, address)
  const results = []
  for (let i = 0; i < 5; i++) results.push(await call())
  const codes = results.map((e) => e?.code ?? grpc.status.OK)
  t.true(codes.filter((c) => c === grpc.status.OK).length <= 3, JSON.stringify(codes))
  t.true(codes.filter((c) => c === grpc.status.RESOURCE_EXHAUSTED).length >= 2, JSON.stringify(codes))
  t.is(echo.calls(), codes.filter((c) => c === grpc.status.OK).length, 'refused calls never reach the server')
  const refused = results.find((e) => e?.code === grpc.status.RESOURCE_EXHAUSTED)
  t.deepEqual(refused?.metadata.get('meshproxy-error'), ['rate-limited'])
})

test.serial('a request the route\'s authorization refuses never uses up its rate limit', async (t) => {
  const b = await startBackends(t, ['a'])
  const { port } = await startProxy(
    t,
    `
admin: null
listeners:
  - address: 127.0.0.1:0
    routes:
      - service: a
        authorization: [{ action: deny, headers: { x-role: guest } }]
        rateLimits: [{ rate: 1, burst: 1 }]
services:
  - name: a
    endpoints: [127.0.0.1:${b.a!.port}]
`,
  )
  for (let i = 0; i < 5; i++) {
    const res = await get(port, '/', { 'x-role': 'guest' })
    t.is(res.status, 403)
    t.is(res.headers['meshproxy-error'], 'forbidden')
  }
  t.is((await get(port, '/')).status, 200, 'the burst of 1 is still there')
  const next = await get(port, '/')
  t.is(next.status, 429)
  t.is(b.a!.requests.length, 1)
})
