#!/usr/bin/env node
// `npm run bench:ci`: the regression gate, short enough for every change (≈3–4 min on 2 cores).
// It gates only on what is stable across hosts and neighbours:
//   1. instructions per request on the hot path, counted by valgrind's callgrind around a fixed
//      number of requests through the data plane (crates/meshproxy-napi/examples/serve.rs), for
//      HTTP/1.1, h2c → HTTP/1.1 and h2c → h2c; compared with bench/baseline.json ± its tolerance;
//   2. meshproxy's HTTP/1.1 throughput as a ratio to HAProxy's in the same run (bench/run.mjs,
//      3 interleaved reps), against the floor in bench/baseline.json.
// Not p99: on two shared cores it is noise.
//
// Exit codes: 0 pass · 1 regression · 2 could not measure (missing tool, build or run failure) ·
// 3 inconclusive (hypervisor steal or other load stayed above the limit even after redos).
import { spawnSync } from 'node:child_process'
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { installCleanupHandlers, runToEnd, start, stop, stopAll, waitForOutput, waitForPort } from './lib/procs.mjs'
import { freePorts, haproxyConf, startNginx } from './lib/targets.mjs'
import { collectVersions, findTools, INSTALL_HINT, which } from './lib/tools.mjs'
import { median } from './lib/report.mjs'
import { CALLS, callsPerRequest, meshConfig, meshIdentity } from './lib/mesh-ci.mjs'
import { startRateLimitService } from './lib/ratelimit-service.mjs'

const repoDir = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const baselinePath = join(repoDir, 'bench', 'baseline.json')
const EXIT = { pass: 0, regression: 1, error: 2, inconclusive: 3 }
const log = (msg) => console.error(`[bench:ci ${new Date().toISOString().slice(11, 19)}] ${msg}`)

const { values: args } = parseArgs({
  options: {
    'update-baseline': { type: 'boolean' },
    'skip-throughput': { type: 'boolean' },
    policies: { type: 'boolean' },
    authz: { type: 'boolean' },
    'rate-limit': { type: 'boolean' },
    'global-rate-limit': { type: 'boolean' },
    rls: { type: 'boolean' },
    rego: { type: 'boolean' },
    mesh: { type: 'boolean' },
    requests: { type: 'string', default: '2000' },
    out: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
})
if (args.help) {
  process.stdout.write(
    'usage: npm run bench:ci -- [--update-baseline] [--skip-throughput] [--requests N] [--out DIR]\n' +
      '  --update-baseline  write the measured figures into bench/baseline.json (after an intended change)\n' +
      '  --skip-throughput  only the instruction counts (no haproxy needed)\n' +
      '  --policies         the same with the resilience policies on (p2c-ewma, failure accrual, a route\n' +
      '                     retry, a circuit breaker): their cost, against the same baseline\n' +
      '  --authz            the same with a listener that allows 127.0.0.0/8 and denies every other\n' +
      '                     client (one rule and a default): the cost of authorization\n' +
      '  --rate-limit       the same with a rate limit per client address on every route that never\n' +
      '                     refuses (rate 10^9): what a configured limit costs a request\n' +
      '  --global-rate-limit  the same limit also global, on a redis-server this run starts: what\n' +
      '                     one Redis round trip (EVALSHA) per request costs the proxy; reported,\n' +
      '                     not gated\n' +
      '  --rls              the same limit global through Envoy\'s rate limit service: a redis-server\n' +
      '                     and envoyproxy/ratelimit (the tests\' pinned build, made with Go into\n' +
      '                     .cache/tools on first use) this run starts; what one ShouldRateLimit\n' +
      '                     call over h2c per request costs the proxy; reported, not gated\n' +
      '  --rego             the same with a request-phase Rego policy the size of the seed\'s (two rules\n' +
      '                     on method and a header, never violated) on every route: its cost\n' +
      '  --mesh             also count proxy-to-proxy mTLS (the bench\'s mtls pair: A, a plain listener\n' +
      '                     whose service is meshed, → B, an mtls: required listener → the backends),\n' +
      '                     A and B each under callgrind in turn, HTTP/1.1 and h2c into A; reported\n' +
      '                     beside the plaintext counts with TLS records and socket syscalls per\n' +
      '                     request; not gated\n' +
      '  --requests N       requests per callgrind measurement (default 2000)\n' +
      'exit: 0 pass, 1 regression, 2 could not measure, 3 inconclusive (steal / other load)\n',
  )
  process.exit(0)
}
/** The Redis server of `--global-rate-limit`, once started. */
let redisUrl = null
/** The rate limit service of `--rls` (`127.0.0.1:PORT`), once started. */
let rlsAddress = null
const outDir = resolve(args.out ?? join(repoDir, 'bench', 'results'))
const REQUESTS = Number(args.requests)
/** The option whose counts are reported beside the plain baseline but not gated, if given. */
const reference = args.rls ? '--rls' : args['global-rate-limit'] ? '--global-rate-limit' : null

function fail(code, msg) {
  log(msg)
  process.exitCode = code
  throw Object.assign(new Error(msg), { exitCode: code })
}

/**
 * The data-plane binary the instruction counts come from, built exactly as `npm run build:native`
 * builds the addon: the same target triple, profile and PGO flags, so that meshproxy-core and its
 * dependencies are the same compilation units (cargo reuses them) and the committed profile
 * applies to it as it does to the addon.
 */
async function buildServe() {
  const { pgoFlags, rustcInfo, withRustflags } = await import(join(repoDir, 'pgo', 'build.mjs'))
  const rustc = rustcInfo()
  const pgo = pgoFlags(rustc.host, rustc)
  log(`building the data-plane example (cargo build --release --target ${rustc.host} -p meshproxy-napi --example serve), ${pgo.flags ? `with PGO: ${pgo.why}` : `without PGO: ${pgo.why}`}`)
  const env = pgo.flags ? withRustflags(process.env, pgo.flags) : process.env
  const r = spawnSync('cargo', ['build', '--release', '--target', rustc.host, '-p', 'meshproxy-napi', '--example', 'serve'], { cwd: repoDir, env, stdio: ['ignore', 'inherit', 'inherit'] })
  if (r.status !== 0) fail(EXIT.error, 'cargo build of the serve example failed')
  return { bin: join(repoDir, 'target', rustc.host, 'release', 'examples', 'serve'), pgo: pgo.flags ? pgo.why : `off (${pgo.why})` }
}

/** The normalized config for `--to backends` (what `meshproxy run --to` hands the addon). */
async function configJson(backends, listen, protocol) {
  const { configFromEndpoints } = await import(join(repoDir, 'dist', 'index.js'))
  const r = configFromEndpoints(backends, 'round-robin', { listenOverride: listen, defaultAdmin: null }, protocol)
  if (!r.config) fail(EXIT.error, `config: ${JSON.stringify(r.diagnostics)}`)
  if (args.policies) {
    // Every per-request policy of issue 14 on, none of them triggered (the backends never fail):
    // what a request pays for having them.
    for (const s of r.config.services) {
      s.balancer = { kind: 'p2c-ewma' }
      s.failureAccrual.consecutiveFailures = 5
      s.circuitBreaker = { maxRequests: 100000, maxPendingRequests: 100000, maxConnections: 100000 }
    }
    for (const l of r.config.listeners) {
      for (const route of l.routes) {
        route.retry = { limit: 1, http: '500-599', grpc: 'unavailable', timeoutMs: 0, nonIdempotent: false, budgetPercent: 20, budgetMinPerSecond: 10 }
      }
    }
  }
  if (args.authz) {
    // The small rule set the README's example starts from: every request is checked, and passes.
    for (const l of r.config.listeners) {
      l.authorization = { default: 'deny', rules: [{ action: 'allow', networks: ['127.0.0.0/8'], methods: [], path: { type: 'Prefix', value: '/' }, headers: [] }] }
    }
  }
  if (args['rate-limit'] || args['global-rate-limit'] || args.rls) {
    // A limit keyed by client address that never refuses: the map lookup and the bucket's
    // update on every request, no 429s. Global: also one EVALSHA on Redis, or one ShouldRateLimit
    // call to the rate limit service, per request (a timeout no callgrind slowdown reaches, so
    // no request falls back).
    const global = args.rls
      ? { redis: null, rls: rlsAddress, domain: 'bench', ca: null, failMode: 'open', timeoutMs: 10000 }
      : args['global-rate-limit']
        ? { redis: redisUrl, failMode: 'open', timeoutMs: 10000 }
        : null
    for (const l of r.config.listeners) {
      for (const route of l.routes) {
        route.rateLimits = [{ name: 'per-client', rate: 1_000_000_000, burst: 1_000_000_000, key: 'client', header: null, overrides: [], maxKeys: 100000, global }]
      }
    }
  }
  if (args.rego) {
    // A request-phase policy as small as the seed's: two rules, neither matching the benchmark's
    // GETs, evaluated on every request (regorus, OPA-Envoy input).
    const source = [
      'package main',
      '',
      'violation[msg] {',
      '  input.attributes.request.http.method == "DELETE"',
      '  msg = "DELETE is not allowed"',
      '}',
      '',
      'violation[msg] {',
      '  input.attributes.request.http.headers["x-block"] == "1"',
      '  msg = "blocked"',
      '}',
      '',
    ].join('\n')
    const policy = { file: 'bench-gate.rego', source, rule: 'violation', phase: 'request', action: 'deny', onError: 'closed', body: 'auto', maxBodyBytes: 65536, timeoutMs: 100 }
    for (const l of r.config.listeners) for (const route of l.routes) route.policies = [policy]
  }
  return JSON.stringify(r.config)
}

const callgrindControl = (pid, ...a) => {
  const r = spawnSync('callgrind_control', [...a, String(pid)], { encoding: 'utf8', timeout: 30_000 })
  if (r.status !== 0) fail(EXIT.error, `callgrind_control ${a.join(' ')}: ${r.stderr || r.stdout}`)
}

async function h2load(h2loadBin, url, extra) {
  const r = await runToEnd('h2load', h2loadBin, [...extra, url])
  const ok = /(\d+) succeeded, (\d+) failed, (\d+) errored/.exec(r.stdout)
  if (r.code !== 0 || !ok || Number(ok[2]) + Number(ok[3]) > 0) fail(EXIT.error, `h2load ${extra.join(' ')} ${url}: ${r.stdout}${r.stderr}`)
  return Number(ok[1])
}

/**
 * One proxy under callgrind with instrumentation off until the warm-up; then, per phase, the
 * counters are zeroed, exactly `REQUESTS` requests are sent and the counts dumped. Connection
 * set-up (10 per phase) is included, as it is in real traffic.
 */
async function countInstructions(tools, serveBin, workDir, name, backends, protocol, phases) {
  const [port] = await freePorts(1)
  const conf = join(workDir, `${name}.json`)
  writeFileSync(conf, await configJson(backends, `127.0.0.1:${port}`, protocol))
  return underCallgrind(tools, workDir, name, [serveBin, conf], port, /listening on/, phases)
}

/**
 * The same measurement of HAProxy (one thread, the `npm run bench` setup, its frontend detecting
 * h2c by the preface): a reference line, not gated. Its count depends on HAProxy's version and
 * build, which differ between hosts; within one host it tells how far #3's h2c target is.
 */
async function countHaproxyInstructions(tools, workDir, name, backends, upstream, phases) {
  const [port] = await freePorts(1)
  const dir = join(workDir, `haproxy-${name}`)
  mkdirSync(dir, { recursive: true })
  const conf = join(dir, 'haproxy.cfg')
  // The bench's own HAProxy config; a plain bind, so one frontend takes HTTP/1.1 and h2c.
  writeFileSync(conf, haproxyConf(dir, port, backends, 1000, 1, { bindH2: false, upstream }))
  return underCallgrind(tools, workDir, `haproxy-${name}`, [tools.haproxy, '-db', '-f', conf], port, null, phases)
}

/**
 * `--mesh`: the instructions per request of A and of B, each under callgrind while the other runs
 * normally; the load goes into A either way. Identities made with `meshproxy identity` in workDir.
 */
async function countMeshInstructions(tools, serveBin, workDir, backends, phases) {
  const mesh = await meshIdentity(repoDir, workDir)
  const [aPort, bPort] = await freePorts(2)
  const conf = { a: join(workDir, 'mesh-a.json'), b: join(workDir, 'mesh-b.json') }
  writeFileSync(conf.a, meshConfig('a', await configJson([`127.0.0.1:${bPort}`], `127.0.0.1:${aPort}`, 'http1'), mesh))
  writeFileSync(conf.b, meshConfig('b', await configJson(backends, `127.0.0.1:${bPort}`, 'http1'), mesh))
  const results = {}
  for (const [side, other] of [['a', 'b'], ['b', 'a']]) {
    log(` mesh ${side.toUpperCase()} under callgrind, ${other.toUpperCase()} running normally`)
    const peer = start(`mesh-${other}`, serveBin, [conf[other]], { stdio: ['pipe', 'pipe', 'pipe'] })
    try {
      await waitForOutput(peer, /listening on/, 60_000)
      results[side] = await underCallgrind(tools, workDir, `mesh-${side}`, [serveBin, conf[side]], aPort, /listening on/, phases)
    } finally {
      peer.stdin.end()
      await Promise.race([peer.exited, new Promise((r) => setTimeout(r, 5_000))])
      await stop(peer)
    }
  }
  return results
}

async function underCallgrind(tools, workDir, name, command, port, ready, phases) {
  const outBase = join(workDir, `callgrind.${name}`)
  const child = start(`callgrind-${name}`, tools.valgrind, ['--tool=callgrind', '--instr-atstart=no', `--callgrind-out-file=${outBase}`, ...command], {
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  try {
    if (ready) await waitForOutput(child, ready, 60_000)
    else await waitForPort(child, port, '127.0.0.1', 60_000)
    const url = `http://127.0.0.1:${port}/`
    callgrindControl(child.pid, '-i', 'on')
    const results = {}
    for (const { phase, args: loadArgs } of phases) {
      await h2load(tools.h2load, url, [...loadArgs, '-n', '500'])
      const perRequest = []
      for (let rep = 0; rep < 3; rep++) {
        callgrindControl(child.pid, '-z')
        const n = await h2load(tools.h2load, url, [...loadArgs, '-n', String(REQUESTS)])
        const tag = `${phase}-${rep}`
        callgrindControl(child.pid, '-d', tag)
        const file = readdirSync(workDir).map((f) => join(workDir, f)).find((f) => f.startsWith(`${outBase}.`) && readFileSync(f, 'utf8').includes(`desc: Trigger: dump ${tag}\n`))
        const total = Number(/^summary: (\d+)/m.exec(readFileSync(file, 'utf8'))?.[1])
        if (!total) fail(EXIT.error, `callgrind dump ${tag}: no instruction total in ${file}`)
        perRequest.push(total / n)
        if (rep === 0) results[`${phase}File`] = file
      }
      results[phase] = { perRequest: median(perRequest), reps: perRequest, requests: REQUESTS }
      log(`  ${phase}: ${Math.round(results[phase].perRequest).toLocaleString('en-US')} instructions/request (reps ${perRequest.map((x) => Math.round(x)).join(', ')})`)
    }
    return results
  } finally {
    child.stdin.end() // the example stops when stdin closes (HAProxy is stopped by signal)
    await Promise.race([child.exited, new Promise((r) => setTimeout(r, ready ? 20_000 : 0))])
    await stop(child)
  }
}

/** The top functions of one callgrind dump by their own (exclusive) instructions, for the report. */
function topFunctions(file, n = 12) {
  const r = spawnSync('callgrind_annotate', ['--threshold=99', file], { encoding: 'utf8', maxBuffer: 64 << 20 })
  if (r.status !== 0) return []
  return r.stdout
    .split('\n')
    .filter((l) => /^\s*[\d,]+ \([\s\d.]+%\)\s+\S/.test(l))
    .slice(1, n + 1)
    .map((l) => l.trim().replace(/\s+/g, ' ').slice(0, 160))
}

async function throughput() {
  log('throughput vs haproxy: bench/run.mjs, http1, meshproxy + haproxy (+ direct), 3 reps × 4 s')
  const out = join(outDir, 'ci-throughput')
  const r = spawnSync(
    process.execPath,
    [join(repoDir, 'bench', 'run.mjs'), '--scenarios', 'http1', '--targets', 'meshproxy,haproxy', '--workers', '1', '--reps', '3', '--duration', '4', '--rate-duration', '0', '--warmup', '1', '--quiet-wait', '20', '--out', out],
    { cwd: repoDir, stdio: ['ignore', 'ignore', 'inherit'] },
  )
  if (!existsSync(join(out, 'latest.json'))) fail(EXIT.error, `bench/run.mjs wrote no results (exit ${r.status})`)
  const res = JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8'))
  const agg = res.aggregates.find((a) => a.scenario === 'http1')
  const noisy = res.runs.filter((x) => x.load?.noise?.noisy).length
  return {
    exit: r.status,
    ratio: agg?.ratios['meshproxy/haproxy']?.rps ?? null,
    meshproxy: agg?.byTarget.meshproxy?.median.rps ?? null,
    haproxy: agg?.byTarget.haproxy?.median.rps ?? null,
    noisyRuns: noisy,
    steal: res.steal,
    errors: res.flags.filter((f) => f.kind === 'error').map((f) => `${f.target}: ${f.message}`),
  }
}

async function main() {
  const tools = { ...findTools(), valgrind: which('valgrind'), callgrindControl: which('callgrind_control') }
  const need = ['nginx', 'h2load', 'valgrind', 'callgrind_control', ...(args['skip-throughput'] ? [] : ['wrk', 'haproxy'])]
  const missing = need.filter((t) => !tools[t === 'callgrind_control' ? 'callgrindControl' : t])
  if (missing.length) fail(EXIT.error, `missing tool(s): ${missing.join(', ')} — install with: ${INSTALL_HINT} valgrind`)
  if (!existsSync(join(repoDir, 'dist', 'index.js'))) fail(EXIT.error, 'dist/ is missing: run `npm run build` first')
  const baseline = existsSync(baselinePath) ? JSON.parse(readFileSync(baselinePath, 'utf8')) : null
  if (!baseline && !args['update-baseline']) fail(EXIT.error, `${baselinePath} is missing: create it with npm run bench:ci -- --update-baseline`)
  if (reference && args['update-baseline']) fail(EXIT.error, `${reference} is not gated and gives no baseline: run --update-baseline without it`)

  const { bin: serveBin, pgo } = await buildServe()
  const workDir = mkdtempSync(join(tmpdir(), 'meshproxy-bench-ci-'))
  chmodSync(workDir, 0o755) // nginx workers (nobody) read the backends' files
  installCleanupHandlers(log, () => rmSync(workDir, { recursive: true, force: true }))
  const ports = await freePorts(6)
  const backends = [
    await startNginx(tools.nginx, 'nginx-b1', join(workDir, 'nginx-b1'), ports[0], ports[2], ports[4]),
    await startNginx(tools.nginx, 'nginx-b2', join(workDir, 'nginx-b2'), ports[1], ports[3], ports[5]),
  ]
  if (args['global-rate-limit'] || args.rls) {
    const [port] = await freePorts(1)
    const redisBin = which('redis-server')
    const flag = args.rls ? '--rls' : '--global-rate-limit'
    if (!redisBin) fail(EXIT.error, `${flag} needs redis-server — install with: ${INSTALL_HINT} redis-server`)
    const redis = start('redis', redisBin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', workDir])
    await waitForPort(redis, port, '127.0.0.1', 10_000)
    redisUrl = `redis://127.0.0.1:${port}`
    log(`redis-server on ${port} for the global rate limit${args.rls ? '\'s rate limit service' : ''}`)
    if (args.rls) {
      log('envoyproxy/ratelimit (built with Go into .cache/tools/ the first time: a few minutes)')
      try {
        rlsAddress = (await startRateLimitService(repoDir, workDir, port)).address
      } catch (e) {
        fail(EXIT.error, `--rls: ${e.message}`)
      }
      log(`envoyproxy/ratelimit serving gRPC on ${rlsAddress}`)
    }
  }
  log(`instructions per request under callgrind (${REQUESTS} requests per measurement, median of 3)`)
  const h1 = await countInstructions(tools, serveBin, workDir, 'h1', backends.map((b) => b.addr), 'http1', [
    { phase: 'http1', args: ['--h1', '-c', '10'] },
    { phase: 'h2c', args: ['-c', '10', '-m', '10'] },
  ])
  const h2 = await countInstructions(tools, serveBin, workDir, 'h2', backends.map((b) => b.h2Addr), 'http2', [{ phase: 'h2c-h2', args: ['-c', '10', '-m', '10'] }])
  const instructions = { http1: h1.http1.perRequest, h2c: h1.h2c.perRequest, 'h2c-h2': h2['h2c-h2'].perRequest }
  let haproxy = null
  if (tools.haproxy) {
    log('the same for HAProxy, for reference (not gated)')
    const r1 = await countHaproxyInstructions(tools, workDir, 'h1', backends, 'h1', [
      { phase: 'http1', args: ['--h1', '-c', '10'] },
      { phase: 'h2c', args: ['-c', '10', '-m', '10'] },
    ])
    const r2 = await countHaproxyInstructions(tools, workDir, 'h2', backends, 'h2', [{ phase: 'h2c-h2', args: ['-c', '10', '-m', '10'] }])
    haproxy = { http1: r1.http1.perRequest, h2c: r1.h2c.perRequest, 'h2c-h2': r2['h2c-h2'].perRequest }
  }
  let mesh = null
  if (args.mesh) {
    log('the same through the mTLS pair A → B (--mesh, not gated)')
    const m = await countMeshInstructions(tools, serveBin, workDir, backends.map((b) => b.addr), [
      { phase: 'http1', args: ['--h1', '-c', '10'] },
      { phase: 'h2c', args: ['-c', '10', '-m', '10'] },
    ])
    const calls = (file) => callsPerRequest(readFileSync(file, 'utf8'), REQUESTS)
    mesh = {
      a: { http1: m.a.http1.perRequest, h2c: m.a.h2c.perRequest },
      b: { http1: m.b.http1.perRequest, h2c: m.b.h2c.perRequest },
      calls: Object.fromEntries(['http1', 'h2c'].map((k) => [k, { plaintext: calls(h1[`${k}File`]), A: calls(m.a[`${k}File`]), B: calls(m.b[`${k}File`]) }])),
      callgrind: m,
    }
  }
  const top = { http1: topFunctions(h1.http1File), 'h2c-h2': topFunctions(h2['h2c-h2File']) }
  if (mesh) Object.assign(top, { 'mesh A h2c': topFunctions(mesh.callgrind.a.h2cFile), 'mesh B h2c': topFunctions(mesh.callgrind.b.h2cFile) })
  // Kept for `callgrind_annotate --tree=caller FILE` or kcachegrind: who calls the hot functions.
  mkdirSync(outDir, { recursive: true })
  const dumps = [['http1', h1.http1File], ['h2c', h1.h2cFile], ['h2c-h2', h2['h2c-h2File']]]
  if (mesh) for (const side of ['a', 'b']) for (const phase of ['http1', 'h2c']) dumps.push([`mesh-${side}-${phase}`, mesh.callgrind[side][`${phase}File`]])
  for (const [phase, file] of dumps) copyFileSync(file, join(outDir, `callgrind.${phase}.out`))
  for (const b of backends) await b.stop()

  const tp = args['skip-throughput'] ? null : await throughput()
  if (tp) log(`throughput: meshproxy ${Math.round(tp.meshproxy)} req/s, haproxy ${Math.round(tp.haproxy)} req/s → ${tp.ratio?.toFixed(3)}× (noisy runs: ${tp.noisyRuns})`)

  // --- verdict ---
  const checks = []
  const tol = baseline?.instructionTolerance ?? 0.03
  for (const [k, v] of Object.entries(instructions)) {
    const b = baseline?.instructionsPerRequest?.[k]
    if (b == null) {
      checks.push({ what: `instructions/request ${k}`, value: v, baseline: null, verdict: 'new' })
      continue
    }
    const change = v / b - 1
    // --global-rate-limit and --rls measure what a network round trip (Redis, the rate limit
    // service) costs a request, against the plain baseline for reference: not a gate.
    const verdict = reference ? 'reference' : change > tol ? 'regression' : change < -tol ? 'improved' : 'pass'
    checks.push({ what: `instructions/request ${k}`, value: v, baseline: b, change, tolerance: tol, verdict })
  }
  let inconclusive = null
  if (tp) {
    const floor = baseline?.throughputVsHaproxy?.min
    if (tp.ratio == null || tp.errors.length) checks.push({ what: 'http1 throughput ÷ haproxy', value: tp.ratio, verdict: 'regression', detail: tp.errors.join('; ') || 'no ratio' })
    else if (tp.noisyRuns > 0) {
      inconclusive = `${tp.noisyRuns} throughput run(s) stayed noisy after a redo (steal max ${tp.steal.max.toFixed(1)}%)`
      checks.push({ what: 'http1 throughput ÷ haproxy', value: tp.ratio, baseline: floor, verdict: 'inconclusive', detail: inconclusive })
    } else checks.push({ what: 'http1 throughput ÷ haproxy', value: tp.ratio, baseline: floor, verdict: floor == null ? 'new' : tp.ratio >= floor ? 'pass' : 'regression' })
  }

  const versions = collectVersions(findTools(), repoDir)
  const result = { date: new Date().toISOString(), requests: REQUESTS, pgo, instructions, callgrind: { h1, h2 }, topFunctions: top, throughput: tp, haproxy, mesh, checks, baseline, versions }
  mkdirSync(outDir, { recursive: true })
  writeFileSync(join(outDir, 'ci.json'), JSON.stringify(result, null, 2) + '\n')
  const md = ciMarkdown(result)
  writeFileSync(join(outDir, 'ci.md'), md)
  process.stdout.write('\n' + md)

  if (args['update-baseline']) {
    const next = {
      note: 'Regression baseline for `npm run bench:ci` (bench/ci.mjs). Update with `npm run bench:ci -- --update-baseline` after an intended change, and say why in the commit.',
      recorded: { date: result.date, commit: versions.gitCommit, rustc: versions.rust, cpu: versions.cpuModel, valgrind: spawnSync('valgrind', ['--version'], { encoding: 'utf8' }).stdout.trim() },
      instructionsPerRequest: Object.fromEntries(Object.entries(instructions).map(([k, v]) => [k, Math.round(v)])),
      instructionTolerance: baseline?.instructionTolerance ?? 0.03,
      throughputVsHaproxy: {
        measured: tp?.ratio ?? baseline?.throughputVsHaproxy?.measured ?? null,
        // The floor sits well under the measured ratio: the ratio swings by a third between runs
        // on a shared 2-core machine; small regressions are the instruction counts' job.
        min: baseline?.throughputVsHaproxy?.min ?? (tp?.ratio != null ? Math.floor(tp.ratio * 0.6 * 100) / 100 : null),
        why: baseline?.throughputVsHaproxy?.why,
      },
    }
    writeFileSync(baselinePath, JSON.stringify(next, null, 2) + '\n')
    log(`wrote ${baselinePath}`)
    return EXIT.pass
  }
  if (checks.some((c) => c.verdict === 'regression')) return EXIT.regression
  if (inconclusive) return EXIT.inconclusive
  return EXIT.pass
}

function ciMarkdown(r) {
  const L = [`# meshproxy bench:ci — ${r.date}`, '']
  L.push('| check | measured | baseline | change | verdict |', '|:--|--:|--:|--:|:--|')
  for (const c of r.checks) {
    const isInstr = c.what.startsWith('instructions')
    const fmt = (x) => (x == null ? '–' : isInstr ? Math.round(x).toLocaleString('en-US') : `${x.toFixed(3)}×`)
    const base = isInstr ? fmt(c.baseline) : c.baseline == null ? '–' : `≥ ${c.baseline.toFixed(2)}×`
    const change = c.change == null ? '' : `${c.change >= 0 ? '+' : ''}${(c.change * 100).toFixed(2)} % (±${(c.tolerance * 100).toFixed(0)} %)`
    const icon = { pass: '✅ pass', improved: '✅ improved — update the baseline', regression: '❌ regression', inconclusive: '⚠ inconclusive', new: 'new (no baseline)', reference: `not gated (${reference})` }[c.verdict]
    L.push(`| ${c.what} | ${fmt(c.value)} | ${base} | ${change} | ${icon}${c.detail ? `: ${c.detail}` : ''} |`)
  }
  L.push('')
  L.push(`Instructions: \`valgrind --tool=callgrind\` around ${r.requests} requests through \`crates/meshproxy-napi/examples/serve.rs\` (current-thread runtime, round-robin over two nginx backends; built as the addon is, PGO ${r.pgo ?? 'unknown'}), median of 3; HTTP/1.1 via \`h2load --h1 -c 10\`, h2c via \`h2load -c 10 -m 10\`.`)
  if (r.haproxy) {
    L.push('', 'Reference, not gated: HAProxy under the same harness (1 thread, `http-reuse always`, adding the same forwarding headers as meshproxy: see bench/README.md; its count depends on its version and build).', '')
    L.push('| path | meshproxy | HAProxy | ratio |', '|:--|--:|--:|--:|')
    for (const [k, v] of Object.entries(r.haproxy)) {
      const m = r.instructions[k]
      L.push(`| ${k} | ${Math.round(m).toLocaleString('en-US')} | ${Math.round(v).toLocaleString('en-US')} | ${(m / v).toFixed(2)}× |`)
    }
    L.push('')
  }
  if (r.mesh) {
    L.push('', 'Proxy-to-proxy mTLS (`--mesh`, not gated): A (plain listener, its service meshed) → B (`mtls: required`) → the same backends, the load into A; each proxy counted under callgrind while the other runs normally, per client request. Plaintext: one proxy to the backends, this run and the baseline; the last column compares the pair with two plaintext hops.', '')
    L.push('| path | plaintext | baseline | mesh A | mesh B | A + B | A + B ÷ (2 × plaintext) |', '|:--|--:|--:|--:|--:|--:|--:|')
    const n = (x) => (x == null ? '–' : Math.round(x).toLocaleString('en-US'))
    for (const k of ['http1', 'h2c']) {
      const sum = r.mesh.a[k] + r.mesh.b[k]
      L.push(`| ${k} | ${n(r.instructions[k])} | ${n(r.baseline?.instructionsPerRequest?.[k])} | ${n(r.mesh.a[k])} | ${n(r.mesh.b[k])} | ${n(sum)} | ${(sum / (2 * r.instructions[k])).toFixed(2)}× |`)
    }
    L.push('', 'Calls per request in the first dump of each (what an instruction count hides: a syscall\'s kernel time, and how well records and writes batch):', '')
    L.push(`| path | proxy | ${Object.keys(CALLS).join(' | ')} |`, `|:--|:--|${Object.keys(CALLS).map(() => '--:|').join('')}`)
    for (const [k, bySide] of Object.entries(r.mesh.calls)) {
      for (const [side, c] of Object.entries(bySide)) L.push(`| ${k} | ${side} | ${Object.values(c).map((x) => x.toFixed(2)).join(' | ')} |`)
    }
    L.push('')
  }
  if (r.throughput) L.push(`Throughput: \`bench/run.mjs --scenarios http1 --targets meshproxy,haproxy --workers 1 --reps 3 --duration 4\`: meshproxy ${Math.round(r.throughput.meshproxy)} req/s, haproxy ${Math.round(r.throughput.haproxy)} req/s; steal max ${r.throughput.steal.max.toFixed(2)}%.`)
  for (const [k, fns] of Object.entries(r.topFunctions)) {
    if (!fns.length) continue
    L.push('', `Top functions by own instructions (${k}):`, '', '```', ...fns, '```')
  }
  const v = r.versions
  L.push('', `Machine: ${v.cpuModel}, ${v.cores} cores. rustc ${v.rust}, commit ${v.gitCommit?.slice(0, 12)}${v.gitDirty ? ' (dirty)' : ''}.`)
  return L.join('\n') + '\n'
}

main()
  .then((code) => {
    process.exitCode = code
  })
  .catch((e) => {
    if (e.exitCode == null) log(`error: ${e.stack ?? e}`)
    process.exitCode = e.exitCode ?? EXIT.error
  })
  .finally(() => stopAll())
