#!/usr/bin/env node
// `npm run bench`: small responses, meshproxy vs haproxy vs nginx direct, over HTTP/1.1 keep-alive
// (scenario http1) and then h2c with prior knowledge, to HTTP/1.1 and to h2c backends (scenario h2c).
// See bench/README.md for what is measured and why. Options: --help.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import http2 from 'node:http2'
import { installCleanupHandlers, start, stop, stopAll, waitForOutput } from './lib/procs.mjs'
import { busyPercent, machineCpu, otherLoadPercent, stealPercent, statusKb, sumCpuSeconds, sumPeakRssKb, threadCpu, threadCpuDelta, treeCpuSeconds } from './lib/procstat.mjs'
import { ALL_TARGETS, BODY, freePorts, NGINX_KEEPALIVE, SCENARIOS, startNginx } from './lib/targets.mjs'
import { runH2load, runH2loadH2c, runWrk } from './lib/loadgen.mjs'
import { addonInfo, collectVersions, findTools, INSTALL_HINT } from './lib/tools.mjs'
import { aggregate, markdown } from './lib/report.mjs'

const repoDir = resolve(dirname(fileURLToPath(import.meta.url)), '..')

// ---------------------------------------------------------------------------------------------
// Options: flags win over BENCH_* environment variables, which win over the defaults.

const OPTIONS = {
  duration: { env: 'BENCH_DURATION', def: 10, help: 'seconds per wrk run' },
  connections: { env: 'BENCH_CONNECTIONS', def: 50, help: 'wrk connections' },
  threads: { env: 'BENCH_THREADS', def: 1, help: 'wrk threads' },
  reps: { env: 'BENCH_REPS', def: 3, help: 'repetitions (median reported)' },
  warmup: { env: 'BENCH_WARMUP', def: 2, help: 'seconds of unrecorded wrk before each measured run (0 = none)' },
  rate: { env: 'BENCH_RATE', def: 2000, help: 'fixed-rate run: total req/s' },
  'rate-clients': { env: 'BENCH_RATE_CLIENTS', def: 10, help: 'fixed-rate run: h2load connections (rate is split across them)' },
  'rate-duration': { env: 'BENCH_RATE_DURATION', def: null, help: 'fixed-rate run: seconds (default: --duration; 0 = skip)' },
  'h2-duration': { env: 'BENCH_H2_DURATION', def: null, help: 'h2c scenario: seconds per h2load run (default: --duration)' },
  'h2-clients': { env: 'BENCH_H2_CLIENTS', def: 10, help: 'h2c scenario: h2load connections (-c)' },
  'h2-streams': { env: 'BENCH_H2_STREAMS', def: 10, help: 'h2c scenario: h2load concurrent streams per connection (-m)' },
  workers: { env: 'BENCH_WORKERS', def: 1, help: 'meshproxy --workers' },
  'steal-limit': { env: 'BENCH_STEAL_LIMIT', def: 10, help: 'redo a run once if steal exceeds this % of CPU' },
  'other-limit': { env: 'BENCH_OTHER_LIMIT', def: 10, help: 'redo a run once if processes outside the bench used more than this % of the machine' },
  'quiet-wait': { env: 'BENCH_QUIET_WAIT', def: 30, help: 'before starting and before a redo, wait up to this many seconds for other load to drop' },
}

function usage() {
  const lines = Object.entries(OPTIONS).map(([k, o]) => `  --${k.padEnd(14)} ${o.help} (default ${o.def ?? 'see text'}; env ${o.env})`)
  return (
    `usage: npm run bench -- [options]\n\n${lines.join('\n')}\n` +
    `  --scenarios    comma list of ${Object.keys(SCENARIOS).join(',')} (default all, in that order; env BENCH_SCENARIOS)\n` +
    `  --targets      comma list of direct,meshproxy,haproxy (each selects its targets in every scenario) or exact\n` +
    `                 target names (${Object.keys(ALL_TARGETS).join(', ')}); the direct baselines always run (default all; env BENCH_TARGETS)\n` +
    `  --out DIR      results directory (default bench/results)\n  --keep-tmp     keep the temp dir (configs, logs) after the run\n  -h, --help\n`
  )
}

function readOptions() {
  const { values } = parseArgs({
    options: {
      ...Object.fromEntries(Object.keys(OPTIONS).map((k) => [k, { type: 'string' }])),
      targets: { type: 'string' },
      scenarios: { type: 'string' },
      out: { type: 'string' },
      'keep-tmp': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  if (values.help) {
    process.stdout.write(usage())
    process.exit(0)
  }
  const opts = {}
  for (const [k, o] of Object.entries(OPTIONS)) {
    const raw = values[k] ?? process.env[o.env]
    if (raw === undefined || raw === '') {
      opts[k] = o.def
      continue
    }
    const n = Number(raw)
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${k}: expected a non-negative number, got ${raw}`)
    opts[k] = n
  }
  if (opts['rate-duration'] === null) opts['rate-duration'] = opts.duration
  if (opts['h2-duration'] === null) opts['h2-duration'] = opts.duration
  for (const k of ['duration', 'connections', 'threads', 'reps', 'rate-clients', 'workers', 'h2-duration', 'h2-clients', 'h2-streams']) {
    if (!Number.isInteger(opts[k]) || opts[k] < 1) throw new Error(`--${k}: expected a positive integer`)
  }
  const list = (v) => v.split(',').map((s) => s.trim()).filter(Boolean)
  const scenarios = list(values.scenarios ?? process.env.BENCH_SCENARIOS ?? Object.keys(SCENARIOS).join(','))
  for (const s of scenarios) if (!SCENARIOS[s]) throw new Error(`--scenarios: unknown scenario ${s} (known: ${Object.keys(SCENARIOS).join(', ')})`)
  if (!scenarios.length) throw new Error('--scenarios: empty')
  const wanted = list(values.targets ?? process.env.BENCH_TARGETS ?? 'direct,meshproxy,haproxy')
  const families = new Set(Object.values(ALL_TARGETS).map((t) => t.family))
  for (const t of wanted) {
    if (!ALL_TARGETS[t] && !families.has(t)) throw new Error(`--targets: unknown target ${t} (known: ${[...new Set([...families, ...Object.keys(ALL_TARGETS)])].join(', ')})`)
  }
  // Run order: scenarios as listed in SCENARIOS (http1 first). Ratios need each scenario's
  // baseline in the same run, so it is always measured.
  const targetsByScenario = {}
  for (const [s, sc] of Object.entries(SCENARIOS)) {
    if (!scenarios.includes(s)) continue
    targetsByScenario[s] = sc.targets.filter((n) => n === sc.baseline || wanted.includes(n) || wanted.includes(ALL_TARGETS[n].family))
  }
  return {
    ...opts,
    scenarios: Object.keys(targetsByScenario),
    targetsByScenario,
    out: resolve(values.out ?? join(repoDir, 'bench', 'results')),
    keepTmp: Boolean(values['keep-tmp']),
  }
}

const log = (msg) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}`)

// ---------------------------------------------------------------------------------------------

function loadSnapshot() {
  return { cpu: machineCpu(), own: treeCpuSeconds(process.pid) }
}

/** Other load (% of the machine) over a short window. */
async function sampleOtherLoad(ms = 1_000) {
  const a = loadSnapshot()
  await new Promise((r) => setTimeout(r, ms))
  return otherLoadPercent(a, loadSnapshot())
}

/**
 * Waits (up to --quiet-wait seconds) until other processes have left the machine alone for 3 s in
 * a row (test suites and builds come in bursts: one quiet second says little); returns the last
 * sample.
 */
async function waitForQuiet(opts) {
  const deadline = Date.now() + opts['quiet-wait'] * 1000
  let quiet = 0
  let other = 0
  let waited = 0
  while (quiet < 3) {
    other = await sampleOtherLoad()
    quiet = other <= opts['other-limit'] ? quiet + 1 : 0
    if (quiet === 0 && Date.now() >= deadline) break
    if (quiet === 0 && waited++ % 5 === 0) log(`  waiting for the machine to be quiet: other load ${other.toFixed(1)}%`)
  }
  return other
}

/**
 * Runs `fn` between two CPU snapshots. If steal (the hypervisor's neighbours) or other load (other
 * processes in this box, e.g. a cargo build) exceeded its limit, runs it once more and keeps the
 * second result; every attempt's figures are recorded. A second noisy attempt is kept and flagged.
 */
async function withNoiseCheck(label, opts, fn) {
  const attempts = []
  for (let attempt = 0; attempt < 2; attempt++) {
    // On a shared box, waiting for a quiet moment first is cheaper than measuring noise and redoing.
    await waitForQuiet(opts)
    const a = loadSnapshot()
    const result = await fn()
    const b = loadSnapshot()
    const m = { steal: stealPercent(a.cpu, b.cpu), other: otherLoadPercent(a, b), busy: busyPercent(a.cpu, b.cpu) }
    attempts.push(m)
    const noisy = m.steal > opts['steal-limit'] || m.other > opts['other-limit']
    if (!noisy || attempt === 1) return { result, ...m, noisy, attempts, redone: attempt === 1 }
    log(`  ${label}: steal ${m.steal.toFixed(1)}%, other load ${m.other.toFixed(1)}% of the machine — redoing once`)
  }
}

/** Peak RSS of a process that only loads things: bare node, and node with the addon required. */
async function bareNodeRss() {
  const measure = async (name, code) => {
    const child = start(name, process.execPath, ['--input-type=module', '-e', code], { cwd: repoDir })
    await waitForOutput(child, /ready/, 10_000)
    await new Promise((r) => setTimeout(r, 500)) // let start-up allocation settle (GC, lazy init)
    const kb = statusKb(child.pid, 'VmHWM')
    await stop(child)
    return kb
  }
  const hold = "console.log('ready'); setTimeout(() => {}, 30000)"
  return {
    nodeKb: await measure('node-bare', hold),
    nodeAddonKb: await measure(
      'node-addon',
      `import { createRequire } from 'node:module'; createRequire(import.meta.url)('./native/index.cjs'); ${hold}`,
    ),
  }
}

/**
 * A few GETs through the target before measuring (so both backends answer through a proxy): a
 * target that answers wrongly is not benchmarked.
 */
async function sanityCheck(url) {
  for (let i = 0; i < 4; i++) {
    const r = await fetch(url, { signal: AbortSignal.timeout(5_000) })
    const body = await r.text()
    if (r.status !== 200 || body !== BODY) throw new Error(`sanity check ${url}: HTTP ${r.status} body ${JSON.stringify(body.slice(0, 200))}`)
  }
}

/** The same over h2c with prior knowledge (one connection, sequential streams). */
async function sanityCheckH2c(url) {
  const client = http2.connect(url)
  const failed = new Promise((_, reject) => client.once('error', reject))
  failed.catch(() => {})
  try {
    for (let i = 0; i < 4; i++) {
      const one = new Promise((resolve, reject) => {
        const req = client.request({ ':method': 'GET', ':path': '/' })
        let status = null
        let body = ''
        req.setEncoding('utf8')
        req.setTimeout(5_000, () => req.close(http2.constants.NGHTTP2_CANCEL))
        req.on('response', (h) => (status = h[':status']))
        req.on('data', (d) => (body += d))
        req.on('error', reject)
        req.on('close', () => {
          if (status === 200 && body === BODY) resolve()
          else reject(new Error(`HTTP ${status} body ${JSON.stringify(body.slice(0, 200))}${req.rstCode ? ` (RST_STREAM ${req.rstCode})` : ''}`))
        })
        req.end()
      })
      await Promise.race([one, failed])
    }
  } catch (e) {
    throw new Error(`sanity check ${url} (h2c): ${e.message}`)
  } finally {
    client.close()
  }
}

function noiseRecord(n) {
  return { steal: n.steal, otherLoad: n.other, machineBusy: n.busy, noisy: n.noisy, redone: n.redone, attempts: n.attempts }
}

function noiseFlags(what, n, flag) {
  const fmt = (a) => `steal ${a.steal.toFixed(1)}%, other load ${a.other.toFixed(1)}%`
  if (n.noisy) flag('noise', `${what} run noisy even after a redo (${n.attempts.map(fmt).join(' → ')}): figures unreliable`)
  else if (n.redone) flag('note', `${what} run redone (${n.attempts.map(fmt).join(' → ')})`)
}

/** One repetition of one target: start, warm up, wrk, fixed rate, counters, stop. */
async function measureTarget(target, ctx, rep, opts, tools, flags) {
  const flag = (kind, message) => {
    flags.push({ scenario: 'http1', target: target.name, rep, kind, message })
    log(`  ${{ error: 'FLAG', noise: 'NOISE' }[kind] ?? 'note'}: ${message}`)
  }
  const rec = { scenario: 'http1', target: target.name, rep }
  if (target.family === 'meshproxy') rec.addon = addonInfo(repoDir) // which build this rep ran
  const inst = await target.start({ ...ctx, rep, tools, workers: opts.workers })
  try {
    rec.command = inst.command ?? null
    rec.rssAtStartKb = inst.pids().reduce((s, p) => s + (statusKb(p, 'VmRSS') ?? 0), 0)
    await sanityCheck(inst.url)
    const wrkOpts = { threads: opts.threads, connections: opts.connections }
    if (opts.warmup > 0) await runWrk(tools.wrk, inst.url, { ...wrkOpts, durationS: opts.warmup })
    const before = await inst.snapshot()

    // Throughput. CPU of the target's processes is sampled inside the steal check so a redo
    // replaces it too.
    const w = await withNoiseCheck(`${target.name} wrk`, opts, async () => {
      const pids = inst.pids()
      const c0 = sumCpuSeconds(pids)
      const t0 = pids.map(threadCpu)
      const res = await runWrk(tools.wrk, inst.url, { ...wrkOpts, durationS: opts.duration })
      res.cpuSeconds = sumCpuSeconds(pids) - c0
      res.cpuByThread = threadCpuDelta(new Map(t0.flatMap((m) => [...m])), new Map(pids.flatMap((p) => [...threadCpu(p)])))
      return res
    })
    rec.wrk = { ...w.result, noise: noiseRecord(w) }
    rec.cpuPer10kWrk = (rec.wrk.cpuSeconds / rec.wrk.requests) * 10_000
    const mid = await inst.snapshot()
    log(
      `  wrk: ${Math.round(rec.wrk.rps)} req/s, p50 ${rec.wrk.latencyMs.p50?.toFixed(3)} ms, p99 ${rec.wrk.latencyMs.p99?.toFixed(3)} ms, ` +
        `CPU ${rec.wrk.cpuSeconds.toFixed(2)} s, steal ${w.steal.toFixed(2)}%, other load ${w.other.toFixed(1)}%`,
    )
    if (rec.wrk.non2xx3xx) flag('error', `wrk: ${rec.wrk.non2xx3xx} non-2xx/3xx responses`)
    const se = rec.wrk.socketErrors
    if (se.connect + se.read + se.write + se.timeout) flag('error', `wrk socket errors: connect ${se.connect}, read ${se.read}, write ${se.write}, timeout ${se.timeout}`)
    noiseFlags('wrk', w, flag)

    // Fixed-rate latency.
    if (tools.h2load && opts['rate-duration'] > 0) {
      const r = await withNoiseCheck(`${target.name} h2load`, opts, async () => {
        const pids = inst.pids()
        const c0 = sumCpuSeconds(pids)
        const res = await runH2load(tools.h2load, inst.url, {
          clients: opts['rate-clients'],
          rate: opts.rate,
          durationS: opts['rate-duration'],
          logFile: join(ctx.workDir, `h2load-${target.name}-${rep}.log`),
        })
        res.cpuSeconds = sumCpuSeconds(pids) - c0
        return res
      })
      rec.rate = { ...r.result, noise: noiseRecord(r) }
      rec.cpuPer10kRate = rec.rate.succeeded ? (rec.rate.cpuSeconds / rec.rate.succeeded) * 10_000 : null
      const L = rec.rate.latencyMs
      log(`  h2load ${opts.rate}/s: achieved ${Math.round(rec.rate.achievedRps)}/s, p50 ${L.p50?.toFixed(3)} ms, p99 ${L.p99?.toFixed(3)} ms, max ${L.max?.toFixed(3)} ms, other load ${r.other.toFixed(1)}%`)
      const bad = rec.rate.failed + rec.rate.errored + rec.rate.timeout
      if (bad) flag('error', `h2load: ${rec.rate.failed} failed, ${rec.rate.errored} errored, ${rec.rate.timeout} timed out`)
      const s = rec.rate.status
      if (s && s['3xx'] + s['4xx'] + s['5xx']) flag('error', `h2load status codes: ${JSON.stringify(s)}`)
      if (rec.rate.achievedRps < 0.95 * opts.rate) flag('error', `h2load achieved ${Math.round(rec.rate.achievedRps)} req/s of the ${opts.rate} asked (target could not keep up)`)
      noiseFlags('fixed-rate', r, flag)
    }

    const after = await inst.snapshot()
    rec.peakRssKb = sumPeakRssKb(inst.pids())
    rec.processes = inst.pids().length
    if (after) {
      rec.upstream = {
        before,
        afterWrk: mid,
        after,
        // Lifetime of this target instance (warm-up + wrk + fixed rate).
        requestsPerConnection: after.upstreamOpened ? after.upstreamRequests / after.upstreamOpened : null,
        openedDuringWrk: mid.upstreamOpened - before.upstreamOpened,
      }
      proxyErrorFlags(target, after, flag)
      if (rec.upstream.requestsPerConnection != null) log(`  upstream: ${after.upstreamRequests} requests over ${after.upstreamOpened} connections opened`)
    }
    log(`  peak RSS ${(rec.peakRssKb / 1024).toFixed(1)} MB over ${rec.processes} process(es), CPU/10k req ${rec.cpuPer10kWrk.toFixed(3)} s`)
  } finally {
    await stopAndCollect(target, inst, rec, flag)
  }
  return rec
}

/** Error counters a proxy keeps about itself (over the instance's lifetime), as flags. */
function proxyErrorFlags(target, after, flag) {
  if (target.family === 'meshproxy') {
    if (Object.keys(after.proxyErrors).length) flag('error', `meshproxy proxy errors: ${JSON.stringify(after.proxyErrors)}`)
    if (after.upstreamFailures) flag('error', `meshproxy upstream failures: ${after.upstreamFailures}`)
    if (after.downstreamRejected) flag('error', `meshproxy rejected ${after.downstreamRejected} downstream connections`)
    const nonOk = Object.entries(after.requestsByClass).filter(([k, v]) => k !== '2xx' && v > 0)
    if (nonOk.length) flag('error', `meshproxy responses by class: ${JSON.stringify(after.requestsByClass)}`)
  }
  if (target.family === 'haproxy' && (after.errorsConn || after.errorsResp || after.hrsp5xx)) {
    flag('error', `haproxy errors: econ ${after.errorsConn}, eresp ${after.errorsResp}, 5xx ${after.hrsp5xx}`)
  }
}

/** Stops the target; anything it printed besides start/shutdown lines goes into the JSON and a note. */
async function stopAndCollect(target, inst, rec, flag) {
  await inst.stop()
  // Anything the proxy said on stderr besides its shutdown message (warnings under load, log
  // lines) is worth a look: keep it in the JSON and note it.
  const noise = (inst.output?.() ?? '')
    .split('\n')
    .filter((l) => l.trim() && !/listening on|admin on|draining|\[NOTICE\]/.test(l))
  if (noise.length) {
    rec.stderr = noise.slice(0, 50)
    flag('note', `${target.name} printed ${noise.length} other line(s), first: ${noise[0].slice(0, 200)}`)
  }
}

/**
 * One repetition of one h2c target: start, sanity GETs over h2c, unrecorded h2load warm-up, then
 * the measured closed-loop h2load run (`-c C -m M -D D`) with the target's CPU, per-thread CPU and
 * upstream counters taken around it (inside the noise check, so a redo replaces them).
 */
async function measureH2cTarget(target, ctx, rep, opts, tools, flags) {
  const flag = (kind, message) => {
    flags.push({ scenario: 'h2c', target: target.name, rep, kind, message })
    log(`  ${{ error: 'FLAG', noise: 'NOISE' }[kind] ?? 'note'}: ${message}`)
  }
  const rec = { scenario: 'h2c', target: target.name, rep }
  if (target.family === 'meshproxy') rec.addon = addonInfo(repoDir)
  const inst = await target.start({ ...ctx, rep, tools, workers: opts.workers })
  try {
    rec.command = inst.command ?? null
    rec.rssAtStartKb = inst.pids().reduce((s, p) => s + (statusKb(p, 'VmRSS') ?? 0), 0)
    await sanityCheckH2c(inst.url)
    const load = { clients: opts['h2-clients'], streams: opts['h2-streams'] }
    if (opts.warmup > 0) await runH2loadH2c(tools.h2load, inst.url, { ...load, durationS: opts.warmup })
    const before = await inst.snapshot()

    const h = await withNoiseCheck(`${target.name} h2load`, opts, async () => {
      const pids = inst.pids()
      const s0 = await inst.snapshot()
      const c0 = sumCpuSeconds(pids)
      const t0 = pids.map(threadCpu)
      const res = await runH2loadH2c(tools.h2load, inst.url, {
        ...load,
        durationS: opts['h2-duration'],
        logFile: join(ctx.workDir, `h2load-${target.name}-${rep}.log`),
      })
      res.cpuSeconds = sumCpuSeconds(pids) - c0
      res.cpuByThread = threadCpuDelta(new Map(t0.flatMap((m) => [...m])), new Map(pids.flatMap((p) => [...threadCpu(p)])))
      const s1 = await inst.snapshot()
      res.upstreamDuringRun = s0 && s1 ? { opened: s1.upstreamOpened - s0.upstreamOpened, requests: s1.upstreamRequests - s0.upstreamRequests } : null
      return res
    })
    rec.h2 = { ...h.result, noise: noiseRecord(h) }
    rec.cpuPer10k = rec.h2.succeeded ? (rec.h2.cpuSeconds / rec.h2.succeeded) * 10_000 : null
    const L = rec.h2.latencyMs
    log(
      `  h2load: ${Math.round(rec.h2.rps)} req/s, p50 ${L.p50?.toFixed(3)} ms, p99 ${L.p99?.toFixed(3)} ms, ` +
        `CPU ${rec.h2.cpuSeconds.toFixed(2)} s, steal ${h.steal.toFixed(2)}%, other load ${h.other.toFixed(1)}%`,
    )
    if (rec.h2.protocol !== 'h2c') flag('error', `h2load spoke ${rec.h2.protocol ?? 'no protocol'} instead of h2c`)
    const bad = rec.h2.failed + rec.h2.errored + rec.h2.timeout
    if (bad) flag('error', `h2load: ${rec.h2.failed} failed, ${rec.h2.errored} errored, ${rec.h2.timeout} timed out`)
    const s = rec.h2.status
    if (s && s['3xx'] + s['4xx'] + s['5xx']) flag('error', `h2load status codes: ${JSON.stringify(s)}`)
    noiseFlags('h2load', h, flag)

    const after = await inst.snapshot()
    rec.peakRssKb = sumPeakRssKb(inst.pids())
    rec.processes = inst.pids().length
    if (after) {
      rec.upstream = {
        before,
        after,
        // Lifetime of this target instance: sanity GETs + warm-up + measured run.
        openedLifetime: after.upstreamOpened,
        openedDuringRun: rec.h2.upstreamDuringRun?.opened ?? null,
        requestsPerConnection: after.upstreamOpened ? after.upstreamRequests / after.upstreamOpened : null,
      }
      proxyErrorFlags(target, after, flag)
      log(`  upstream: ${after.upstreamRequests} requests over ${after.upstreamOpened} connections opened (${rec.upstream.openedDuringRun} during the measured run)`)
      // nginx ends a connection after keepalive_requests (HTTP/2 too, with a GOAWAY that races
      // with streams in flight): a long --h2-duration can reach it even with the raised limit.
      const perConn = rec.upstream.requestsPerConnection
      if (target.upstream === 'h2' && perConn > 0.8 * NGINX_KEEPALIVE.requests) {
        flag('note', `${Math.round(perConn)} requests per upstream h2 connection, near nginx keepalive_requests ${NGINX_KEEPALIVE.requests}: raise it for runs this long`)
      }
    }
    log(`  peak RSS ${(rec.peakRssKb / 1024).toFixed(1)} MB over ${rec.processes} process(es), CPU/10k req ${rec.cpuPer10k?.toFixed(3)} s`)
  } finally {
    await stopAndCollect(target, inst, rec, flag)
  }
  return rec
}

async function main() {
  const opts = readOptions()

  const tools = findTools()
  const missing = ['nginx', 'wrk'].filter((t) => !tools[t])
  if (missing.length) {
    log(`missing required tool(s): ${missing.join(', ')} — install with: ${INSTALL_HINT}`)
    process.exit(2)
  }
  for (const f of ['dist/cli.js', 'native/index.cjs']) {
    if (!existsSync(join(repoDir, f))) {
      log(`${f} is missing: run \`npm run build:ts\` (dist) or \`npm run build:native\` (native) first`)
      process.exit(2)
    }
  }
  const skipped = []
  const targetsByScenario = { ...opts.targetsByScenario }
  if (!tools.h2load) {
    if (targetsByScenario.http1) skipped.push({ what: 'fixed-rate latency (h2load)', why: `h2load not found; ${INSTALL_HINT}` })
    if (targetsByScenario.h2c) skipped.push({ what: 'h2c scenario (h2load)', why: `h2load not found; ${INSTALL_HINT}` })
    delete targetsByScenario.h2c
  }
  if (!tools.haproxy) {
    const hs = Object.values(targetsByScenario).flat().filter((n) => ALL_TARGETS[n].family === 'haproxy')
    if (hs.length) skipped.push({ what: `haproxy target(s) ${hs.join(', ')}`, why: `haproxy not found; ${INSTALL_HINT}` })
    for (const k of Object.keys(targetsByScenario)) targetsByScenario[k] = targetsByScenario[k].filter((n) => ALL_TARGETS[n].family !== 'haproxy')
  }
  for (const s of skipped) log(`SKIPPED: ${s.what}: ${s.why}`)
  const scenarios = Object.keys(targetsByScenario)

  const versions = collectVersions(tools, repoDir)
  log(`${versions.cpuModel}, ${versions.cores} cores; node ${versions.node}, nginx ${versions.nginx}, haproxy ${versions.haproxy ?? '–'}, wrk ${versions.wrk}, h2load ${versions.h2load ?? '–'}`)
  if (versions.gitDirty) log('note: the git tree has uncommitted changes')

  const workDir = mkdtempSync(join(tmpdir(), 'meshproxy-bench-'))
  const flags = []
  const runs = []
  let ok = false
  let keep = opts.keepTmp // also kept when something failed: its configs and logs explain why
  // Children are killed by PID on SIGINT/SIGTERM/exit; the temp dir goes too unless kept.
  installCleanupHandlers(log, () => {
    if (!keep) rmSync(workDir, { recursive: true, force: true })
  })
  try {
    // Pre-flight: a busy box (a build, another benchmark) makes every figure meaningless.
    const preflight = await waitForQuiet(opts)
    log(`other load before start: ${preflight.toFixed(1)}% of the machine${preflight > opts['other-limit'] ? ' — WARNING: the box is busy, results will be noisy' : ''}`)

    log('measuring bare node RSS (with and without the addon)')
    const bare = await bareNodeRss()

    const [p1, p2, h1, h2] = await freePorts(4)
    log(`starting backends: nginx on ${p1} and ${p2} (HTTP/1.1), ${h1} and ${h2} (h2c)`)
    const backends = [
      await startNginx(tools.nginx, 'nginx-b1', join(workDir, 'nginx-b1'), p1, h1),
      await startNginx(tools.nginx, 'nginx-b2', join(workDir, 'nginx-b2'), p2, h2),
    ]
    for (const b of backends) {
      await sanityCheck(`http://${b.addr}/`)
      if (scenarios.includes('h2c')) await sanityCheckH2c(`http://${b.h2Addr}/`)
    }
    const ctx = { backends, repoDir, workDir }

    // Scenarios one after the other (http1, then h2c); inside each, every repetition runs each
    // target once, in an order rotated per repetition.
    for (const scenario of scenarios) {
      const targets = targetsByScenario[scenario]
      const measure = scenario === 'h2c' ? measureH2cTarget : measureTarget
      for (let rep = 0; rep < opts.reps; rep++) {
        // Rotate the order so no target always runs first (cold caches) or last (warm box).
        const order = targets.map((_, i) => targets[(i + rep) % targets.length])
        for (const name of order) {
          log(`${scenario} rep ${rep + 1}/${opts.reps}: ${name}`)
          try {
            runs.push(await measure(ALL_TARGETS[name], ctx, rep, opts, tools, flags))
          } catch (e) {
            // A target that crashes or refuses is a result too: record it and carry on.
            log(`  ${name} FAILED: ${e.message}`)
            flags.push({ scenario, target: name, rep, kind: 'error', message: `run failed: ${e.message.split('\n')[0]}` })
            runs.push({ scenario, target: name, rep, error: e.message })
          }
        }
      }
    }
    for (const b of backends) await b.stop()

    const kept = runs.flatMap((r) => [r.wrk, r.rate, r.h2].filter(Boolean).map((x) => x.noise))
    const steals = kept.map((n) => n.steal)
    const others = kept.map((n) => n.otherLoad)
    // Only a change between meshproxy reps mixes builds; report the build the reps actually ran.
    const repAddons = runs.filter((r) => r.addon).map((r) => r.addon)
    const builds = [...new Set(repAddons.map((a) => a.sha256))]
    if (repAddons.length) versions.addon = { ...repAddons.at(-1), atStart: versions.addon }
    if (builds.length > 1) {
      const which = runs.filter((r) => r.addon).map((r) => `${r.target} rep ${r.rep + 1}: ${r.addon.sha256}`).join(', ')
      flags.push({ scenario: null, target: 'meshproxy', rep: null, kind: 'noise', message: `the native addon was rebuilt during the run (${which}): reps mix builds` })
    }
    const result = {
      date: new Date().toISOString(),
      config: {
        ...opts,
        body: BODY,
        stealLimit: opts['steal-limit'],
        wrkCommand: targetsByScenario.http1 ? `wrk -t${opts.threads} -c${opts.connections} -d${opts.duration}s --latency URL` : null,
        h2loadCommand:
          targetsByScenario.http1 && tools.h2load && opts['rate-duration'] > 0
            ? `h2load --h1 -c ${opts['rate-clients']} --rps ${opts.rate / opts['rate-clients']} -D ${opts['rate-duration']} --log-file LOG URL`
            : null,
        h2cCommand: targetsByScenario.h2c
          ? `h2load --no-tls-proto=h2c -c ${opts['h2-clients']} -m ${opts['h2-streams']} -D ${opts['h2-duration']} --log-file LOG URL`
          : null,
        scenarios,
        targetsByScenario,
        nginxKeepalive: NGINX_KEEPALIVE,
        meshproxyCommand: runs.find((r) => r.target === 'meshproxy' && r.command)?.command ?? null,
        meshproxyCommands: Object.fromEntries(runs.filter((r) => ALL_TARGETS[r.target]?.family === 'meshproxy' && r.command).map((r) => [r.target, r.command])),
        argv: process.argv.slice(2),
        meshproxyLogEnv: process.env.MESHPROXY_LOG ?? null,
      },
      versions,
      skipped,
      bare,
      steal: {
        max: Math.max(0, ...steals),
        mean: steals.length ? steals.reduce((s, x) => s + x, 0) / steals.length : 0,
        redone: kept.filter((n) => n.redone).length,
      },
      otherLoad: {
        max: Math.max(0, ...others),
        mean: others.length ? others.reduce((s, x) => s + x, 0) / others.length : 0,
        before: preflight,
      },
      flags,
      // http1 under `aggregate` (as before the h2c scenario existed), h2c under `aggregateH2c`.
      aggregate: targetsByScenario.http1 ? aggregate(runs.filter((r) => r.scenario === 'http1'), SCENARIOS.http1, targetsByScenario.http1) : null,
      aggregateH2c: targetsByScenario.h2c ? aggregate(runs.filter((r) => r.scenario === 'h2c'), SCENARIOS.h2c, targetsByScenario.h2c) : null,
      runs,
    }
    const md = markdown(result)
    mkdirSync(opts.out, { recursive: true })
    writeFileSync(join(opts.out, 'latest.json'), JSON.stringify(result, null, 2) + '\n')
    writeFileSync(join(opts.out, 'latest.md'), md)
    process.stdout.write('\n' + md)
    log(`wrote ${join(opts.out, 'latest.json')} and latest.md`)
    ok = !runs.some((r) => r.error)
  } catch (e) {
    keep = true
    throw e
  } finally {
    await stopAll()
    if (!ok) keep = true
    if (keep) log(`temp dir kept: ${workDir}`)
  }
  if (!ok) process.exitCode = 1
}

main().catch((e) => {
  log(`error: ${e.stack ?? e}`)
  process.exitCode = 1
})
