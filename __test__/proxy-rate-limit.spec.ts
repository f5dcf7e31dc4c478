/**
 * Local rate limits through the real proxy: the seed's `RateLimiter` document, unchanged, limits
 * service-a and service-b behind the seed Ingress when run by the CLI; a route's limit keyed by a
 * header gives each value its own bucket (and an override its own rate); a flood of distinct keys
 * from wrk keeps the proxy's memory bounded. Real time on a shared 2-core machine: the counts are
 * checked against what the limit allows over the measured time, with loose tolerances.
 */
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { startBackends } from './helpers/backend.js'
import { rssBytes, startCliProxy } from './helpers/cli.js'
import { get, type Res } from './helpers/http.js'
import { startProxy } from './helpers/proxy.js'

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

test('the seed RateLimiter, unchanged, limits service-a to 100 req/s with a burst of 10 through the CLI', async (t) => {
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
  t.true(admitted >= Math.min(allowed * 0.7, admitted + limited), `admitted ${admitted} of ${allowed.toFixed(0)} allowed`)
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

test('a route limit keyed by a header gives each value its own bucket, an override its own rate', async (t) => {
  const b = await startBackends(t, ['a'])
  const { port } = await startProxy(
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
})

test('a flood of distinct client keys from wrk keeps the proxy\'s memory bounded', async (t) => {
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
          - { rate: 1000000, burst: 1000000, key: { header: x-user } }
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
  const r = spawnSync('wrk', ['-t1', '-c8', '-d4s', '-s', lua, `http://127.0.0.1:${p.port}/`], { encoding: 'utf8', timeout: 30_000 })
  t.is(r.status, 0, r.stderr)
  const requests = Number(/(\d+) requests in/.exec(r.stdout)?.[1] ?? 0)
  const after = await rssBytes(p.pid)
  const metrics = await get(p.adminPort, '/metrics')
  const keys = Number(/meshproxy_rate_limit_keys\{[^}]*\} (\d+)/.exec(metrics.body)?.[1] ?? -1)
  const grown = (after - before) / 1024 / 1024
  t.log(`${requests} requests with random keys: RSS ${(before / 1048576).toFixed(1)} → ${(after / 1048576).toFixed(1)} MiB, ${keys} keys after the last sweep`)
  t.true(requests > 1000, r.stdout)
  // The README's bound: a keyed limit at its default maxKeys (100,000) holds well under 16 MiB.
  t.true(grown < 32, `RSS grew ${grown.toFixed(1)} MiB`)
  t.true(keys <= 100_000, `${keys} keys`)
})
