/**
 * The benchmark harness's own moving parts, so `npm test` catches a broken bench before a bench
 * run does: the Node peer proxies forward real traffic round-robin over keep-alive connections,
 * the parsers read real tool output shapes, the targets check reads medians the way the issue
 * states its targets, and the chart renders headless.
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import http from 'node:http'
import { once } from 'node:events'
import { startBackends } from './helpers/backend.js'
import { ROOT } from './helpers/cli.js'
// @ts-expect-error: plain ESM modules of the bench, no type declarations
import { parseStubStatus, parseWrk } from '../bench/lib/parse.mjs'
// @ts-expect-error: plain ESM module of the bench
import { checkTargets, aggregate, markdown } from '../bench/lib/report.mjs'
// @ts-expect-error: plain ESM module of the bench
import { SCENARIOS } from '../bench/lib/targets.mjs'
// @ts-expect-error: plain ESM module of the bench
import { renderChart } from '../bench/lib/chart.mjs'

async function freePort(): Promise<number> {
  const s = http.createServer()
  s.listen(0, '127.0.0.1')
  await once(s, 'listening')
  const port = (s.address() as { port: number }).port
  s.close()
  return port
}

for (const peer of ['http-proxy', 'undici']) {
  test(`bench peer ${peer}: forwards round-robin over keep-alive upstream connections`, async (t) => {
    const backends = await startBackends(t, ['a', 'b'])
    const port = await freePort()
    const child = spawn(process.execPath, [`bench/peers/${peer}.mjs`, '--listen', `127.0.0.1:${port}`, '--to', `${backends.a.address},${backends.b.address}`], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    t.teardown(() => child.kill('SIGKILL'))
    let out = ''
    child.stdout.setEncoding('utf8').on('data', (d) => (out += d))
    while (!/listening/.test(out)) {
      if (child.exitCode !== null) return t.fail(`${peer} exited ${child.exitCode}`)
      await new Promise((r) => setTimeout(r, 20))
    }
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    t.teardown(() => agent.destroy())
    const bodies: string[] = []
    let lastVia: string | undefined
    for (let i = 0; i < 20; i++) {
      const res = await new Promise<http.IncomingMessage>((resolve, reject) => http.get({ host: '127.0.0.1', port, path: '/x', agent }, resolve).on('error', reject))
      let body = ''
      res.setEncoding('utf8').on('data', (d) => (body += d))
      await once(res, 'end')
      t.is(res.statusCode, 200)
      lastVia = res.headers.via
      bodies.push(body)
    }
    t.is(bodies.filter((b) => b === 'a').length, 10)
    t.is(bodies.filter((b) => b === 'b').length, 10)
    // Keep-alive upstream: 20 sequential requests over one client connection need at most one
    // connection per backend.
    t.true(backends.a.connections <= 1 && backends.b.connections <= 1, `upstream connections a=${backends.a.connections} b=${backends.b.connections}`)
    // The forwarding headers meshproxy adds, added by every peer so all do the same work.
    const seen = backends.a.requests[0].headers
    t.is(seen['x-forwarded-for'], '127.0.0.1')
    t.is(seen['x-forwarded-proto'], 'http')
    t.is(seen['x-forwarded-host'], `127.0.0.1:${port}`)
    t.regex(String(seen.via), /^1\.1 /)
    t.true(String(lastVia).endsWith(`1.1 ${peer}`), `response Via: ${lastVia}`)
  })
}

test('parsers read nginx stub_status and wrk --latency output', (t) => {
  const s = parseStubStatus('Active connections: 3 \nserver accepts handled requests\n 17 17 4242 \nReading: 0 Writing: 1 Waiting: 2 \n')
  t.deepEqual(s, { accepts: 17, handled: 17, requests: 4242, active: 3 })
  t.throws(() => parseStubStatus('<html>404</html>'))
  const w = parseWrk(`Running 2s test @ http://127.0.0.1:1/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms  500.00us   9.99ms   90.00%
    Req/Sec    23.40k     1.00k   25.00k    70.00%
  Latency Distribution
     50%    2.04ms
     75%    2.30ms
     90%    2.60ms
     99%    4.62ms
  46800 requests in 2.00s, 5.00MB read
  Non-2xx or 3xx responses: 3
Requests/sec:  23400.00
Transfer/sec:      2.50MB
`)
  t.is(w.requests, 46800)
  t.is(w.rps, 23400)
  t.is(w.latencyMs.p99, 4.62)
  t.is(w.non2xx3xx, 3)
})

/** A synthetic run: 3 reps per target, figures chosen so each target is clearly met or not. */
function syntheticResult() {
  const runs: object[] = []
  const rec = (scenario: string, target: string, rep: number, rps: number, extra: object = {}) =>
    runs.push({ scenario, workers: 1, target, rep, load: { rps, latencyMs: { p50: 1, p99: 2 }, noise: { noisy: false } }, cpuPer10k: 0.3, peakRssKb: 60 * 1024, upstream: { reuse: 0.9995 }, ...extra })
  for (let rep = 0; rep < 3; rep++) {
    rec('http1', 'direct', rep, 60000)
    rec('http1', 'meshproxy', rep, 30000 + rep, { rate: { latencyMs: { p50: 0.9, p99: 2.0, max: 3 }, noise: { noisy: false } } })
    rec('http1', 'haproxy', rep, 24000, { peakRssKb: 15 * 1024, cpuPer10k: 0.35, rate: { latencyMs: { p50: 1.0, p99: 2.5, max: 3 }, noise: { noisy: false } } })
    rec('http1', 'nginx', rep, 26000, { rate: { latencyMs: { p50: 1.0, p99: 2.2, max: 3 }, noise: { noisy: false } } })
  }
  const config = { workers: [1], reps: 3, scenarios: ['http1'], commands: { wrk: 'wrk', h2c: 'h2load', idle: 'idle', rate: 'h2load --rps' } }
  const aggregates = [aggregate(runs, { name: 'http1', ...SCENARIOS.http1 }, ['direct', 'meshproxy', 'haproxy', 'nginx'], 1)]
  return {
    date: '2026-11-26T00:00:00.000Z',
    config,
    versions: { cpuModel: 'test cpu', cores: 2, gitCommit: '0'.repeat(40) },
    bare: { nodeKb: 40 * 1024, nodeAddonKb: 45 * 1024 },
    flags: [],
    skipped: [],
    steal: { max: 0, mean: 0, redone: 0, noisy: 0 },
    otherLoad: { max: 0, mean: 0, before: 0 },
    aggregates,
    runs,
  } as Record<string, unknown> & { aggregates: unknown[] }
}

test('targets check: medians against the issue targets, met and not met', (t) => {
  const result = syntheticResult()
  const targets = checkTargets(result) as { what: string; met: boolean | null; value: number | null }[]
  const get = (prefix: string) => targets.find((x) => x.what.startsWith(prefix))!
  t.true(get('http1 throughput, meshproxy ÷ haproxy').met) // 30001 / 24000 = 1.25
  t.false(get('http1 throughput, meshproxy ÷ nginx').met) // 30001 / 26000 = 1.15
  t.is(get('h2c throughput').met, null) // scenario not run: n/a, not a failure
  t.true(get('2k/s p50').met)
  t.true(get('2k/s p99').met) // 2.0 ≤ min(2.5, 2.2)
  t.true(get('CPU').met)
  t.true(get('upstream connection reuse').met)
  t.true(get('peak RSS').met) // 60 − 45 = 15 ≤ 15
  const md = markdown({ ...result, targets }) as string
  t.regex(md, /meshproxy ÷ haproxy/)
  t.regex(md, /✅ met/)
  t.regex(md, /❌ not met/)
})

test('chart renders an SVG without a browser', async (t) => {
  const svg = (await renderChart(syntheticResult())) as string
  t.true(svg.startsWith('<svg'))
  t.regex(svg, /throughput ÷ direct/)
})
