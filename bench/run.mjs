#!/usr/bin/env node
// `npm run bench`: meshproxy side by side with HAProxy, nginx, http-proxy and undici, and with the
// direct path, over the same two nginx backends: small, 16 KiB and 1 MiB responses on HTTP/1.1,
// small responses on h2c, connection churn, and memory with 1,000 idle connections; then failure
// handling with one of three endpoints degraded (its own fault-injecting backends); at 1 and 2
// worker threads. See bench/README.md for what is measured and why. Options: --help.
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import http2 from 'node:http2'
import { installCleanupHandlers, start, stop, stopAll, waitForOutput } from './lib/procs.mjs'
import { busyPercent, machineCpu, otherLoadPercent, stealPercent, statusKb, sumCpuSeconds, sumPeakRssKb, threadCpu, threadCpuDelta, treeCpuSeconds } from './lib/procstat.mjs'
import { ALL_TARGETS, BODIES, bodyBytes, DEGRADED_PHASES, DEGRADED_RUNS, freePorts, NGINX_KEEPALIVE, SCENARIOS, startFaultBackends, startNginx } from './lib/targets.mjs'
import { openIdle, runH2load, runH2loadH2c, runWrk } from './lib/loadgen.mjs'
import { addonInfo, collectVersions, findTools, INSTALL_HINT } from './lib/tools.mjs'
import { aggregate, checkTargets, markdown } from './lib/report.mjs'
import { renderChart } from './lib/chart.mjs'
import { makeCertificate, tlsCommands } from './lib/tls.mjs' // also registers the `tls` scenario
import { makeMeshIdentity, mtlsCommands } from './lib/mtls.mjs' // also registers the `mtls` scenario

const repoDir = resolve(dirname(fileURLToPath(import.meta.url)), '..')

// ---------------------------------------------------------------------------------------------
// Options: flags win over BENCH_* environment variables, which win over the defaults.

const OPTIONS = {
  duration: { env: 'BENCH_DURATION', def: 8, help: 'seconds per measured run of the small-response scenarios (http1, h2c)' },
  'extra-duration': { env: 'BENCH_EXTRA_DURATION', def: 5, help: 'seconds per measured run of 16k, 1m and churn' },
  connections: { env: 'BENCH_CONNECTIONS', def: 50, help: 'wrk connections' },
  threads: { env: 'BENCH_THREADS', def: 1, help: 'wrk threads' },
  reps: { env: 'BENCH_REPS', def: 3, help: 'repetitions (median reported)' },
  warmup: { env: 'BENCH_WARMUP', def: 2, help: 'seconds of unrecorded wrk before each measured run (0 = none)' },
  rate: { env: 'BENCH_RATE', def: 2000, help: 'fixed-rate run: total req/s' },
  'rate-clients': { env: 'BENCH_RATE_CLIENTS', def: 10, help: 'fixed-rate run: h2load connections (rate is split across them)' },
  'rate-duration': { env: 'BENCH_RATE_DURATION', def: null, help: 'fixed-rate run: seconds (default: --duration; 0 = skip)' },
  'h2-clients': { env: 'BENCH_H2_CLIENTS', def: 10, help: 'h2c scenario: h2load connections (-c)' },
  'h2-streams': { env: 'BENCH_H2_STREAMS', def: 10, help: 'h2c scenario: h2load concurrent streams per connection (-m)' },
  'steal-limit': { env: 'BENCH_STEAL_LIMIT', def: 10, help: 'redo a run once if steal exceeds this % of CPU' },
  'other-limit': { env: 'BENCH_OTHER_LIMIT', def: 10, help: 'redo a run once if processes outside the bench used more than this % of the machine' },
  'quiet-wait': { env: 'BENCH_QUIET_WAIT', def: 30, help: 'before starting and before each measured run, wait up to this many seconds for other load to drop (0 = do not wait)' },
  'degraded-rate': { env: 'BENCH_DEGRADED_RATE', def: 500, help: 'degraded scenario: offered load, req/s (open loop)' },
  'degraded-duration': { env: 'BENCH_DEGRADED_DURATION', def: null, help: 'degraded scenario: seconds per phase (default: 1.25 × --duration, rounded)' },
  'ratelimit-offered': { env: 'BENCH_RATELIMIT_OFFERED', def: 2000, help: 'ratelimit scenario: offered load, req/s (open loop, h2load --h1), against a service limited to 1,000 req/s' },
  'tls-clients': { env: 'BENCH_TLS_CLIENTS', def: 4, help: 'tls and mtls scenarios: openssl s_time processes at once in the handshake phases' },
}

/** Client connections the degraded scenario's load generator may open (it opens more only when all are busy). */
const DEGRADED_CONNECTIONS = 64
/** Past this p99 of its own send lag (ms), a degraded run is flagged noisy: its latencies measure the generator too. */
const DEGRADED_LAG_LIMIT_MS = 5

function usage() {
  const lines = Object.entries(OPTIONS).map(([k, o]) => `  --${k.padEnd(15)} ${o.help} (default ${o.def ?? 'see text'}; env ${o.env})`)
  const families = [...new Set(Object.values(ALL_TARGETS).map((t) => t.family))]
  return (
    `usage: npm run bench -- [options]\n\n${lines.join('\n')}\n` +
    `  --workers        comma list of worker-thread counts, each runs every scenario (default 1,2; env BENCH_WORKERS)\n` +
    `  --scenarios      comma list of ${Object.keys(SCENARIOS).join(',')} (default all, in that order; env BENCH_SCENARIOS)\n` +
    `  --targets        comma list of ${families.join(',')} (each selects its targets in every scenario) or exact\n` +
    `                   target names (${Object.keys(ALL_TARGETS).join(', ')}); the direct baselines always run (default all; env BENCH_TARGETS)\n` +
    `  --out DIR        results directory (default bench/results)\n  --keep-tmp       keep the temp dir (configs, logs) after the run\n  -h, --help\n`
  )
}

function readOptions() {
  const { values } = parseArgs({
    options: {
      ...Object.fromEntries(Object.keys(OPTIONS).map((k) => [k, { type: 'string' }])),
      targets: { type: 'string' },
      scenarios: { type: 'string' },
      workers: { type: 'string' },
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
  if (opts['degraded-duration'] === null) opts['degraded-duration'] = Math.round(1.25 * opts.duration)
  for (const k of ['degraded-rate', 'degraded-duration', 'ratelimit-offered']) if (!(opts[k] > 0)) throw new Error(`--${k}: expected a positive number`)
  for (const k of ['duration', 'extra-duration', 'connections', 'threads', 'reps', 'rate-clients', 'h2-clients', 'h2-streams', 'tls-clients']) {
    if (!Number.isInteger(opts[k]) || opts[k] < 1) throw new Error(`--${k}: expected a positive integer`)
  }
  const list = (v) => v.split(',').map((s) => s.trim()).filter(Boolean)
  const scenarios = list(values.scenarios ?? process.env.BENCH_SCENARIOS ?? Object.keys(SCENARIOS).join(','))
  for (const s of scenarios) if (!SCENARIOS[s]) throw new Error(`--scenarios: unknown scenario ${s} (known: ${Object.keys(SCENARIOS).join(', ')})`)
  if (!scenarios.length) throw new Error('--scenarios: empty')
  const workers = list(values.workers ?? process.env.BENCH_WORKERS ?? '1,2').map(Number)
  if (!workers.length || workers.some((w) => !Number.isInteger(w) || w < 1 || w > 64)) throw new Error(`--workers: expected a comma list of positive integers`)
  const wanted = list(values.targets ?? process.env.BENCH_TARGETS ?? [...new Set(Object.values(ALL_TARGETS).map((t) => t.family))].join(','))
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
    workers,
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
  if (opts['quiet-wait'] === 0) return sampleOtherLoad(200) // 0: do not wait
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

/** The exact bytes every target must return for `path`. */
function expectedBody(path) {
  const b = BODIES[path]
  return b.head ? Buffer.from(b.head) : bodyBytes(b.size)
}

/**
 * A few GETs through the target before measuring (so both backends answer through a proxy): a
 * target that answers wrongly is not benchmarked.
 */
async function sanityCheck(url, path) {
  const want = expectedBody(path)
  for (let i = 0; i < 4; i++) {
    const r = await fetch(url + path, { signal: AbortSignal.timeout(5_000) })
    const body = Buffer.from(await r.arrayBuffer())
    if (r.status !== 200 || !body.equals(want)) {
      throw new Error(`sanity check ${url}${path}: HTTP ${r.status}, ${body.length} bytes (want ${want.length}) ${JSON.stringify(body.subarray(0, 100).toString('latin1'))}`)
    }
  }
}

/** The same over h2c with prior knowledge (one connection, sequential streams). */
async function sanityCheckH2c(url, path) {
  const want = expectedBody(path).toString('latin1')
  const client = http2.connect(url)
  const failed = new Promise((_, reject) => client.once('error', reject))
  failed.catch(() => {})
  try {
    for (let i = 0; i < 4; i++) {
      const one = new Promise((resolve, reject) => {
        const req = client.request({ ':method': 'GET', ':path': path })
        let status = null
        let body = ''
        req.setEncoding('latin1')
        req.setTimeout(5_000, () => req.close(http2.constants.NGHTTP2_CANCEL))
        req.on('response', (h) => (status = h[':status']))
        req.on('data', (d) => (body += d))
        req.on('error', reject)
        req.on('close', () => {
          if (status === 200 && body === want) resolve()
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

/** Backend counters (stub_status), summed over both backends. */
async function backendStatus(backends) {
  const all = await Promise.all(backends.map((b) => b.status()))
  return { accepts: all.reduce((s, x) => s + x.accepts, 0), requests: all.reduce((s, x) => s + x.requests, 0) }
}

/**
 * Runs one measured load phase inside the noise check, with the target's CPU (total and per
 * thread) and the backends' connection and request counters taken around it, so a redo replaces
 * them all.
 */
async function measuredPhase(label, inst, ctx, opts, run) {
  return withNoiseCheck(label, opts, async () => {
    const pids = inst.pids()
    const b0 = await backendStatus(ctx.backends)
    const c0 = sumCpuSeconds(pids)
    const t0 = pids.map(threadCpu)
    const res = await run()
    res.cpuSeconds = sumCpuSeconds(pids) - c0
    res.cpuByThread = threadCpuDelta(new Map(t0.flatMap((m) => [...m])), new Map(pids.flatMap((p) => [...threadCpu(p)])))
    const b1 = await backendStatus(ctx.backends)
    res.backends = { accepts: b1.accepts - b0.accepts, requests: b1.requests - b0.requests }
    return res
  })
}

/**
 * One repetition of one target in one scenario: start it, check its answers, warm up, measure,
 * read its counters, stop it. Every figure the report shows comes from the record returned.
 */
async function measureRun(sc, target, ctx, rep, workers, opts, tools, flags) {
  const flag = (kind, message) => {
    flags.push({ scenario: sc.name, workers, target: target.name, rep, kind, message })
    log(`  ${{ error: 'FLAG', noise: 'NOISE' }[kind] ?? 'note'}: ${message}`)
  }
  const rec = { scenario: sc.name, workers, target: target.name, rep }
  if (target.family === 'meshproxy') rec.addon = addonInfo(repoDir) // which build this rep ran
  const inst = await target.start({ ...ctx, rep, tools, workers })
  try {
    rec.command = inst.command ?? null
    rec.setup = inst.setup ?? null
    rec.rssAtStartKb = inst.pids().reduce((s, p) => s + (statusKb(p, 'VmRSS') ?? 0), 0)
    const url = inst.url + sc.path
    if (sc.kind === 'h2c') await sanityCheckH2c(inst.url, sc.path)
    else await sanityCheck(inst.url, sc.path)

    if (sc.kind === 'idle') {
      await measureIdle(sc, inst, url, rec, flag)
    } else {
      const seconds = sc.name === 'http1' || sc.name === 'h2c' ? opts.duration : opts['extra-duration']
      const load =
        sc.kind === 'h2c'
          ? (durationS, logFile) => runH2loadH2c(tools.h2load, url, { clients: opts['h2-clients'], streams: opts['h2-streams'], durationS, logFile })
          : (durationS) => runWrk(tools.wrk, url, { threads: opts.threads, connections: sc.connections ?? opts.connections, durationS, headers: sc.headers })
      if (opts.warmup > 0) await load(opts.warmup)
      const m = await measuredPhase(`${target.name} ${sc.name}`, inst, ctx, opts, () =>
        load(seconds, sc.kind === 'h2c' ? join(ctx.workDir, `h2load-${target.name}-${rep}.log`) : undefined),
      )
      rec.load = { ...m.result, noise: noiseRecord(m) }
      const done = sc.kind === 'h2c' ? rec.load.succeeded : rec.load.requests
      rec.cpuPer10k = done ? (rec.load.cpuSeconds / done) * 10_000 : null
      rec.upstream = upstreamFigures(target, rec.load.backends, done)
      const L = rec.load.latencyMs
      log(
        `  ${sc.kind === 'h2c' ? 'h2load' : 'wrk'}: ${Math.round(rec.load.rps)} req/s, p50 ${L?.p50?.toFixed(3)} ms, p99 ${L?.p99?.toFixed(3)} ms, ` +
          `CPU ${rec.load.cpuSeconds.toFixed(2)} s, steal ${m.steal.toFixed(2)}%, other load ${m.other.toFixed(1)}%` +
          (rec.upstream ? `, upstream: ${rec.upstream.requests} requests on ${rec.upstream.opened} new connections` : ''),
      )
      loadErrorFlags(sc, rec.load, flag)
      noiseFlags(sc.kind === 'h2c' ? 'h2load' : 'wrk', m, flag)
      if (sc.rate && tools.h2load && opts['rate-duration'] > 0) await measureRate(target, inst, url, ctx, rep, opts, tools, rec, flag)
    }

    rec.peakRssKb = sumPeakRssKb(inst.pids())
    rec.processes = inst.pids().length
    rec.proxy = await inst.snapshot()
    if (rec.proxy) proxyErrorFlags(target, rec.proxy, flag)
    log(`  peak RSS ${(rec.peakRssKb / 1024).toFixed(1)} MB over ${rec.processes} process(es)${rec.cpuPer10k != null ? `, CPU/10k req ${rec.cpuPer10k.toFixed(3)} s` : ''}`)
  } finally {
    await stopAndCollect(target, inst, rec, flag)
  }
  return rec
}

/**
 * Upstream connection reuse seen at the backends (stub_status), the same way for every target:
 * the share of requests that did not need a new connection.
 */
function upstreamFigures(target, b, clientRequests) {
  if (target.family === 'direct' || !b) return null
  return {
    opened: b.accepts,
    requests: b.requests,
    reuse: b.requests ? 1 - b.accepts / b.requests : null,
    // Requests the load generator completed vs requests the backends saw: equal for a proxy
    // that forwards every request once (a few in flight at the end may differ).
    clientRequests,
  }
}

function loadErrorFlags(sc, res, flag) {
  if (sc.kind === 'h2c') {
    if (res.protocol !== 'h2c') flag('error', `h2load spoke ${res.protocol ?? 'no protocol'} instead of h2c`)
    const bad = res.failed + res.errored + res.timeout
    if (bad) flag('error', `h2load: ${res.failed} failed, ${res.errored} errored, ${res.timeout} timed out`)
    const s = res.status
    if (s && s['3xx'] + s['4xx'] + s['5xx']) flag('error', `h2load status codes: ${JSON.stringify(s)}`)
    return
  }
  if (res.non2xx3xx) flag('error', `wrk: ${res.non2xx3xx} non-2xx/3xx responses`)
  const se = res.socketErrors
  // Under churn wrk counts the server's close after `Connection: close` as nothing; a read
  // error there is a reset, which is an error like anywhere else.
  if (se.connect + se.read + se.write + se.timeout) flag('error', `wrk socket errors: connect ${se.connect}, read ${se.read}, write ${se.write}, timeout ${se.timeout}`)
}

/** The fixed-rate (open loop) latency run: h2load --h1 at --rate req/s in total. */
async function measureRate(target, inst, url, ctx, rep, opts, tools, rec, flag) {
  const r = await measuredPhase(`${target.name} fixed rate`, inst, ctx, opts, () =>
    runH2load(tools.h2load, url, {
      clients: opts['rate-clients'],
      rate: opts.rate,
      durationS: opts['rate-duration'],
      logFile: join(ctx.workDir, `h2load-${target.name}-${rep}.log`),
    }),
  )
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

/**
 * Memory with many idle keep-alive connections: RSS before, RSS with them open (after a second
 * to settle), and the difference per connection. Not a timing, so no noise check.
 */
async function measureIdle(sc, inst, url, rec, flag) {
  const rss = () => inst.pids().reduce((s, p) => s + (statusKb(p, 'VmRSS') ?? 0), 0)
  const before = rss()
  const idle = await openIdle(url, sc.idleConnections, expectedBody(sc.path))
  try {
    await new Promise((r) => setTimeout(r, 1_000))
    const withIdle = rss()
    const held = idle.held()
    rec.idle = { connections: sc.idleConnections, held, rssBeforeKb: before, rssIdleKb: withIdle, kbPerConnection: (withIdle - before) / sc.idleConnections }
    log(`  ${held}/${sc.idleConnections} idle connections held: RSS ${(before / 1024).toFixed(1)} → ${(withIdle / 1024).toFixed(1)} MB (${rec.idle.kbPerConnection.toFixed(1)} KB each)`)
    if (held < sc.idleConnections) flag('error', `the target closed ${sc.idleConnections - held} of ${sc.idleConnections} idle connections within a second`)
  } finally {
    idle.close()
  }
}


/** bench/lib/degraded.mjs, loaded only when the degraded scenario runs (it needs undici, a dev dependency). */
let degradedLoad = null

/** The degraded scenario's unrecorded warm-up, in seconds: --warmup, at least 1 s (connections, first estimates). */
function degradedWarmup(opts) {
  return Math.max(1, opts.warmup)
}

/** Lines a target prints in the degraded scenario because it is doing its job: ejections, mark-downs, readmissions. */
const EXPECTED_DEGRADED_OUTPUT = /endpoint (ejected|readmitted)|Server app\/b\d is (UP|DOWN)|Health analyze|Layer7 check/

/**
 * One repetition of one target in the degraded scenario: for each of DEGRADED_RUNS, fresh fault
 * backends and a fresh target, a sanity check while all three are healthy, then the run's phases
 * in one continuous open-loop run, the target's failure-handling counters read at every phase
 * start. The noise check wraps the whole repetition: a redo starts everything again.
 */
async function measureDegradedRun(sc, target, ctx, rep, workers, opts, tools, flags) {
  const flag = (kind, message) => {
    flags.push({ scenario: sc.name, workers, target: target.name, rep, kind, message })
    log(`  ${{ error: 'FLAG', noise: 'NOISE' }[kind] ?? 'note'}: ${message}`)
  }
  const rec = { scenario: sc.name, workers, target: target.name, rep }
  if (target.family === 'meshproxy') rec.addon = addonInfo(repoDir)
  const byName = Object.fromEntries(DEGRADED_PHASES.map((p) => [p.name, { ...p, seconds: p.recorded ? opts['degraded-duration'] : degradedWarmup(opts) }]))
  const oneRun = async (names) => {
    const backends = await startFaultBackends(ctx.repoDir)
    let inst = null
    try {
      inst = await target.start({ ...ctx, backends, rep, tools, workers })
      rec.command = inst.command ?? null
      rec.setup = inst.setup ?? null
      await sanityCheck(inst.url, sc.path)
      const phases = await degradedLoad.runDegradedPhases(inst.url + sc.path, backends, {
        rate: opts['degraded-rate'],
        connections: DEGRADED_CONNECTIONS,
        phases: names.map((n) => byName[n]),
        snapshot: () => inst.snapshot(),
      })
      return { phases, peakRssKb: sumPeakRssKb(inst.pids()) }
    } finally {
      if (inst) {
        await inst.stop()
        const lines = (inst.output?.() ?? '').split('\n').filter((l) => l.trim() && !/listening|admin on|draining|\[NOTICE\]/.test(l))
        const other = lines.filter((l) => !EXPECTED_DEGRADED_OUTPUT.test(l))
        rec.stderr = [...(rec.stderr ?? []), ...lines].slice(0, 50)
        if (other.length) flag('note', `${target.name} printed ${other.length} unexpected line(s), first: ${other[0].slice(0, 200)}`)
      }
      await Promise.all(backends.map((b) => b.stop()))
    }
  }
  const m = await withNoiseCheck(`${target.name} degraded`, opts, async () => {
    const runs = []
    for (const names of DEGRADED_RUNS) runs.push(await oneRun(names))
    return { phases: runs.flatMap((r) => r.phases), peakRssKb: Math.max(...runs.map((r) => r.peakRssKb)) }
  })
  rec.degraded = { rate: opts['degraded-rate'], phases: m.result.phases, noise: noiseRecord(m) }
  rec.peakRssKb = m.result.peakRssKb
  for (const p of rec.degraded.phases) {
    const L = p.latencyMs
    const px = p.proxy
    log(
      `  ${p.name}: ${p.sent} sent, success ${(p.success * 100).toFixed(2)} %, p50 ${L.p50?.toFixed(3)} ms, p99 ${L.p99?.toFixed(3)} ms, ` +
        `degraded endpoint ${(p.degradedShare * 100).toFixed(1)} % of ${p.backends.reduce((s, b) => s + b.requests, 0)} attempts; ` +
        `${px.ejections ?? '?'} ejection(s), ${px.retries ?? '?'} retries${px.retriesOverBudget != null ? ` (${px.retriesOverBudget} over budget)` : ''}; generator lag p99 ${p.lagMs.p99?.toFixed(2)} ms`,
    )
    const ce = Object.entries(p.clientErrors)
    if (ce.length) flag('note', `${p.name}: client-side errors (counted as failures): ${ce.map(([k, v]) => `${k} ${v}`).join(', ')}`)
    // The generator's own lag is in every latency it reports: past a few ms it is measuring itself.
    if (p.lagMs.p99 > DEGRADED_LAG_LIMIT_MS) {
      flag('noise', `${p.name}: the load generator sent late (lag p99 ${p.lagMs.p99.toFixed(1)} ms, max ${p.lagMs.max.toFixed(1)} ms): latencies include it`)
      rec.degraded.noise.noisy = true
      rec.degraded.noise.generatorLag = true
    }
  }
  noiseFlags('degraded', m, flag)
  return rec
}

/**
 * One repetition of the ratelimit scenario: an open-loop offered rate (h2load --h1 at
 * --ratelimit-offered req/s for --extra-duration s) through the target; what it admitted (2xx)
 * and refused (429), per second of the run. The unlimited target admits all of it.
 */
async function measureLimitedRun(sc, target, ctx, rep, workers, opts, tools, flags) {
  const flag = (kind, message) => {
    flags.push({ scenario: sc.name, workers, target: target.name, rep, kind, message })
    log(`  ${{ error: 'FLAG', noise: 'NOISE' }[kind] ?? 'note'}: ${message}`)
  }
  const rec = { scenario: sc.name, workers, target: target.name, rep }
  if (target.family === 'meshproxy') rec.addon = addonInfo(repoDir)
  const inst = await target.start({ ...ctx, rep, tools, workers })
  try {
    rec.command = inst.command ?? null
    rec.setup = inst.setup ?? null
    await sanityCheck(inst.url, sc.path)
    const seconds = opts['extra-duration']
    const offered = opts['ratelimit-offered']
    const m = await measuredPhase(`${target.name} ratelimit`, inst, ctx, opts, () =>
      runH2load(tools.h2load, inst.url + sc.path, { clients: opts['rate-clients'], rate: offered, durationS: seconds, logFile: join(ctx.workDir, `h2load-${target.name}-${rep}.log`) }),
    )
    const r = m.result
    const s = r.status ?? { '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0 }
    const answered = s['2xx'] + s['4xx']
    rec.limited = {
      offeredRps: offered,
      sentRps: r.achievedRps,
      admittedRps: s['2xx'] / seconds,
      refusedRps: s['4xx'] / seconds,
      admittedShare: answered ? s['2xx'] / answered : null,
      // What the limit allows over the run: the burst, then `rate` a second.
      allowedRps: target.rateLimit ? Math.min(offered, target.rateLimit.rate + target.rateLimit.burst / seconds) : offered,
      latencyMs: r.latencyMs,
      noise: noiseRecord(m),
    }
    const L = rec.limited
    log(`  offered ${offered}/s: admitted ${Math.round(L.admittedRps)}/s, refused ${Math.round(L.refusedRps)}/s (allowed ${Math.round(L.allowedRps)}/s), p99 ${L.latencyMs.p99?.toFixed(3)} ms`)
    // h2load counts every 4xx and 5xx answer as failed; the limited target's 429s are its job.
    const failed = r.failed - s['4xx'] - s['5xx']
    if (failed + r.errored + r.timeout) flag('error', `h2load: ${failed} failed, ${r.errored} errored, ${r.timeout} timed out`)
    if (s['3xx'] + s['5xx']) flag('error', `h2load status codes: ${JSON.stringify(s)}`)
    if (!target.rateLimit && s['4xx']) flag('error', `the unlimited target refused ${s['4xx']} requests`)
    if (r.achievedRps < 0.95 * offered) flag('error', `h2load sent ${Math.round(r.achievedRps)} req/s of the ${offered} asked (target could not keep up)`)
    noiseFlags('ratelimit', m, flag)
    rec.peakRssKb = sumPeakRssKb(inst.pids())
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
  const noise = (inst.output?.() ?? '')
    .split('\n')
    .filter((l) => l.trim() && !/listening|admin on|draining|\[NOTICE\]/.test(l))
  if (noise.length) {
    rec.stderr = noise.slice(0, 50)
    flag('note', `${target.name} printed ${noise.length} other line(s), first: ${noise[0].slice(0, 200)}`)
  }
}

async function main() {
  const opts = readOptions()

  const tools = findTools()
  // The nginx backends, wrk and h2load serve every scenario but `degraded` (own backends, own load).
  const needsNginx = opts.scenarios.some((s) => SCENARIOS[s].kind !== 'degraded')
  const missing = needsNginx ? ['nginx', 'wrk'].filter((t) => !tools[t]) : []
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
    if (targetsByScenario.ratelimit) skipped.push({ what: 'ratelimit scenario (h2load)', why: `h2load not found; ${INSTALL_HINT}` })
    delete targetsByScenario.h2c
    delete targetsByScenario.ratelimit
  }
  if (!tools.haproxy) {
    const hs = [...new Set(Object.values(targetsByScenario).flat().filter((n) => ALL_TARGETS[n].family === 'haproxy'))]
    if (hs.length) skipped.push({ what: `haproxy target(s) ${hs.join(', ')}`, why: `haproxy not found; ${INSTALL_HINT}` })
    for (const k of Object.keys(targetsByScenario)) targetsByScenario[k] = targetsByScenario[k].filter((n) => ALL_TARGETS[n].family !== 'haproxy')
  }
  for (const s of ['tls', 'mtls']) {
    if (targetsByScenario[s] && !(tools.openssl && tools.h2load)) {
      skipped.push({ what: `${s} scenario`, why: `it needs openssl and h2load; ${INSTALL_HINT}` })
      delete targetsByScenario[s]
    }
  }
  if (targetsByScenario.degraded) {
    try {
      degradedLoad = await import('./lib/degraded.mjs')
    } catch (e) {
      skipped.push({ what: 'degraded scenario', why: `its load generator needs undici (a dev dependency: npm install): ${e.message.split('\n')[0]}` })
      delete targetsByScenario.degraded
    }
  }
  for (const s of skipped) log(`SKIPPED: ${s.what}: ${s.why}`)
  const scenarios = Object.keys(targetsByScenario)
  if (!scenarios.length) {
    log('nothing to run: every selected scenario was skipped')
    process.exit(2)
  }

  const versions = collectVersions(tools, repoDir)
  log(
    `${versions.cpuModel}, ${versions.cores} cores; node ${versions.node}, nginx ${versions.nginx}, haproxy ${versions.haproxy ?? '–'}, ` +
      `wrk ${versions.wrk}, h2load ${versions.h2load ?? '–'}, http-proxy ${versions.httpProxy ?? '–'}, undici ${versions.undici ?? '–'}`,
  )
  log(`workers ${opts.workers.join(', ')}; scenarios ${scenarios.join(', ')}; ${opts.reps} rep(s)`)
  if (versions.gitDirty) log('note: the git tree has uncommitted changes')

  const workDir = mkdtempSync(join(tmpdir(), 'meshproxy-bench-'))
  // nginx workers drop root to `nobody` and must be able to read the backends' static files.
  chmodSync(workDir, 0o755)
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

    const backends = []
    if (needsNginx) {
      const ports = await freePorts(6)
      log(`starting backends: nginx on ${ports[0]} and ${ports[1]} (HTTP/1.1), ${ports[2]} and ${ports[3]} (h2c)`)
      backends.push(
        await startNginx(tools.nginx, 'nginx-b1', join(workDir, 'nginx-b1'), ports[0], ports[2], ports[4]),
        await startNginx(tools.nginx, 'nginx-b2', join(workDir, 'nginx-b2'), ports[1], ports[3], ports[5]),
      )
      for (const b of backends) {
        for (const path of Object.keys(BODIES)) await sanityCheck(`http://${b.addr}`, path)
        if (scenarios.includes('h2c')) await sanityCheckH2c(`http://${b.h2Addr}`, '/')
      }
    }
    const ctx = { backends, repoDir, workDir }
    if (scenarios.includes('tls')) ctx.tls = await makeCertificate(tools.openssl, join(workDir, 'tls'))
    if (scenarios.includes('mtls')) ctx.mesh = await makeMeshIdentity(repoDir, join(workDir, 'mesh'))

    // Worker counts, then scenarios one after the other; inside each, every repetition runs
    // each target once, in an order rotated per repetition.
    const total = opts.workers.length * scenarios.reduce((s, n) => s + targetsByScenario[n].length, 0) * opts.reps
    let done = 0
    const t0 = Date.now()
    for (const workers of opts.workers) {
      for (const scenario of scenarios) {
        const sc = { name: scenario, ...SCENARIOS[scenario] }
        const targets = targetsByScenario[scenario]
        for (let rep = 0; rep < opts.reps; rep++) {
          // Rotate the order so no target always runs first (cold caches) or last (warm box).
          const order = targets.map((_, i) => targets[(i + rep) % targets.length])
          for (const name of order) {
            const eta = done ? ` — ${done}/${total} done, ≈${Math.ceil(((Date.now() - t0) / done) * (total - done) / 60_000)} min left` : ''
            log(`[workers ${workers}] ${scenario} rep ${rep + 1}/${opts.reps}: ${name}${eta}`)
            try {
              // A scenario from a module of its own brings its measure function; it gets the helpers here.
              const measure = sc.measure
                ? (...a) => sc.measure(...a, { log, measuredPhase, noiseRecord, noiseFlags, stopAndCollect, proxyErrorFlags, sumPeakRssKb, sanityCheck, sanityCheckH2c, addonInfo: () => addonInfo(repoDir) })
                : sc.kind === 'degraded' ? measureDegradedRun : sc.kind === 'limited' ? measureLimitedRun : measureRun
              runs.push(await measure(sc, ALL_TARGETS[name], ctx, rep, workers, opts, tools, flags))
            } catch (e) {
              // A target that crashes or refuses is a result too: record it and carry on.
              log(`  ${name} FAILED: ${e.message}`)
              flags.push({ scenario, workers, target: name, rep, kind: 'error', message: `run failed: ${e.message.split('\n')[0]}` })
              runs.push({ scenario, workers, target: name, rep, error: e.message })
            }
            done++
          }
        }
      }
    }
    for (const b of backends) await b.stop()

    // Every measured phase's record carries its noise figures.
    const kept = runs.flatMap((r) => Object.values(r).filter((x) => x?.noise).map((x) => x.noise))
    const steals = kept.map((n) => n.steal)
    const others = kept.map((n) => n.otherLoad)
    // Only a change between meshproxy reps mixes builds; report the build the reps actually ran.
    const repAddons = runs.filter((r) => r.addon).map((r) => r.addon)
    const builds = [...new Set(repAddons.map((a) => a.sha256))]
    if (repAddons.length) versions.addon = { ...repAddons.at(-1), atStart: versions.addon }
    if (builds.length > 1) {
      flags.push({ scenario: null, workers: null, target: 'meshproxy', rep: null, kind: 'noise', message: `the native addon was rebuilt during the run (${builds.join(', ')}): reps mix builds` })
    }
    const aggregates = opts.workers.flatMap((workers) =>
      scenarios.map((s) => aggregate(runs.filter((r) => r.scenario === s && r.workers === workers), { name: s, ...SCENARIOS[s] }, targetsByScenario[s], workers)),
    )
    const result = {
      date: new Date().toISOString(),
      config: {
        ...opts,
        stealLimit: opts['steal-limit'],
        commands: {
          wrk: `wrk -t${opts.threads} -c${opts.connections} -d${opts.duration}s --latency URL (16k, 1m, churn: -d${opts['extra-duration']}s; 1m: -c${SCENARIOS['1m'].connections}; churn: -H 'Connection: close')`,
          rate: tools.h2load && opts['rate-duration'] > 0 ? `h2load --h1 -c ${opts['rate-clients']} --rps ${opts.rate / opts['rate-clients']} -D ${opts['rate-duration']} --log-file LOG URL` : null,
          h2c: `h2load --no-tls-proto=h2c -c ${opts['h2-clients']} -m ${opts['h2-streams']} -D ${opts.duration} --log-file LOG URL`,
          idle: `${SCENARIOS.idle.idleConnections} HTTP/1.1 connections, one GET each, then idle`,
          tls: tlsCommands(opts),
          mtls: mtlsCommands(opts),
          degraded:
            `open loop at ${opts['degraded-rate']} req/s (latency from each request's due time), up to ${DEGRADED_CONNECTIONS} keep-alive connections; ` +
            `per repetition ${DEGRADED_RUNS.length} runs, each with fresh backends and target: ` +
            DEGRADED_RUNS.map((names) => names.map((n) => `${n} ${DEGRADED_PHASES.find((p) => p.name === n).recorded ? opts['degraded-duration'] : degradedWarmup(opts)} s`).join(' → ')).join('; '),
        },
        scenarios,
        targetsByScenario,
        nginxKeepalive: NGINX_KEEPALIVE,
        setups: Object.fromEntries(runs.filter((r) => r.setup).map((r) => [`${r.target}@${r.workers}`, { setup: r.setup, command: r.command }])),
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
        noisy: kept.filter((n) => n.noisy).length,
      },
      otherLoad: {
        max: Math.max(0, ...others),
        mean: others.length ? others.reduce((s, x) => s + x, 0) / others.length : 0,
        before: preflight,
      },
      flags,
      aggregates,
      runs,
    }
    result.targets = checkTargets(result)
    const md = markdown(result)
    mkdirSync(opts.out, { recursive: true })
    writeFileSync(join(opts.out, 'latest.json'), JSON.stringify(result, null, 2) + '\n')
    writeFileSync(join(opts.out, 'latest.md'), md)
    try {
      const svg = await renderChart(result)
      // No throughput scenario ran (only `degraded`): no chart, and none left from an earlier run.
      if (svg) writeFileSync(join(opts.out, 'latest.svg'), svg)
      else rmSync(join(opts.out, 'latest.svg'), { force: true })
    } catch (e) {
      log(`chart not rendered: ${e.message}`)
    }
    process.stdout.write('\n' + md)
    log(`wrote ${join(opts.out, 'latest.json')}, latest.md${needsNginx ? ' and latest.svg' : ''}`)
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
