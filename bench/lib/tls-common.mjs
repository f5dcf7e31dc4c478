// What the `tls` and `mtls` scenarios share: the pinned protocol and suite, the openssl clients
// (s_client for what a server negotiates, s_time for handshakes per second, both optionally
// presenting a client certificate), the checks on a handshake phase's counts, the meshproxy
// metrics a TLS target reports, and the report's cell formats.
import { join } from 'node:path'
import { runToEnd } from './procs.mjs'
import { parsePrometheus, sumMetric } from './parse.mjs'
import { fetchText } from './targets.mjs'

/** What every TLS client offers, and so what each server must negotiate. */
export const TLS_PIN = { protocol: 'TLSv1.3', cipher: 'TLS_AES_128_GCM_SHA256' }

/** openssl's flags for a client certificate ({ cert, key }), or none. */
const clientCertArgs = (client) => (client ? ['-cert', client.cert, '-key', client.key] : [])

/**
 * What one `openssl s_client` (offering what s_time offers) negotiated with the server at `url`,
 * verifying its certificate against `caFile` for `servername`; `client` ({ cert, key }) presents
 * a client certificate.
 */
export async function negotiated(opensslBin, url, caFile, { servername = 'localhost', client = null } = {}) {
  const { hostname: host, port } = new URL(url)
  const args = ['s_client', '-connect', `${host}:${port}`, '-servername', servername, '-tls1_3', '-ciphersuites', TLS_PIN.cipher, '-CAfile', caFile, '-verify_return_error', ...clientCertArgs(client), '-brief']
  const r = await runToEnd('openssl-s_client', opensslBin, args)
  const text = r.stdout + r.stderr
  const field = (re) => re.exec(text)?.[1]?.trim() ?? null
  return {
    protocol: field(/^Protocol version: (.+)$/m),
    cipher: field(/^Ciphersuite: (.+)$/m),
    group: field(/^(?:Server Temp Key|Negotiated TLS1\.3 group): (.+)$/m),
    signature: field(/^Signature type: (.+)$/m),
    verification: field(/^Verification: (.+)$/m) ?? field(/^Verification error: (.+)$/m),
  }
}

/** s_client -brief with stdin at its end (/dev/null): it handshakes, prints, and exits. A protocol or suite other than the pinned ones is an error flag. */
export async function checkNegotiated(opensslBin, url, caFile, flag, opts) {
  const n = await negotiated(opensslBin, url, caFile, opts)
  if (n.protocol !== TLS_PIN.protocol || n.cipher !== TLS_PIN.cipher) flag('error', `openssl s_client negotiated ${n.protocol ?? '?'} ${n.cipher ?? '?'}, not ${TLS_PIN.protocol} ${TLS_PIN.cipher}`)
  return n
}

/**
 * `clients` `openssl s_time -new|-reuse -www PATH -time S` at once, presenting `client`'s
 * certificate if given. Each process is serial (one connection at a time), so parallel processes
 * keep the server busy. Connections per second = the sum over the processes of connections ÷ that
 * process's wall time (s_time's own "real seconds" are whole seconds). `reused` counts the
 * connections s_time marks `r` (session resumed).
 */
export async function runSTime(opensslBin, url, path, { mode, clients, seconds, client = null }) {
  const { hostname: host, port } = new URL(url)
  const args = ['s_time', '-connect', `${host}:${port}`, mode === 'reuse' ? '-reuse' : '-new', '-www', path, '-time', String(seconds), '-tls1_3', '-ciphersuites', TLS_PIN.cipher, ...clientCertArgs(client)]
  const one = async (i) => {
    const t0 = performance.now()
    const r = await runToEnd(`s_time-${i}`, opensslBin, args)
    const wallS = (performance.now() - t0) / 1000
    if (r.code !== 0) throw new Error(`openssl s_time exited ${r.code ?? r.signal}:\n${r.stdout.slice(-2000)}${r.stderr}`)
    // What s_time said when it stopped early: its error output, else the last words of its output.
    const said = r.stderr.trim() || r.stdout.split('\n').filter((l) => l.trim() && !/^[*rt3]+$/.test(l.trim())).slice(-2).join(' / ')
    return { wallS, ...parseSTime(r.stdout), said: said.slice(0, 500) }
  }
  const procs = await Promise.all(Array.from({ length: clients }, (_, i) => one(i)))
  const connections = procs.reduce((s, p) => s + p.connections, 0)
  return {
    command: `${clients} × openssl ${args.join(' ')}`,
    connections,
    reused: procs.reduce((s, p) => s + p.reused, 0),
    rps: procs.reduce((s, p) => s + p.connections / p.wallS, 0),
    bytesPerConnection: procs.some((p) => p.complete) ? procs.filter((p) => p.complete).reduce((s, p) => s + p.bytesPerConnection * p.connections, 0) / Math.max(1, procs.filter((p) => p.complete).reduce((s, p) => s + p.connections, 0)) : null,
    incomplete: procs.filter((p) => !p.complete).map((p) => `after ${p.connections} connections in ${p.wallS.toFixed(2)} s: ${p.said || 'no message'}`),
    perProcess: procs.map((p) => ({ connections: p.connections, reused: p.reused, wallS: p.wallS, complete: p.complete })),
  }
}

/**
 * s_time's output: one progress character per connection (`r` = resumed), then its counts. When
 * a connection fails, s_time stops there without the counts (and still exits 0): `complete` is
 * false and the connections are the progress characters, all completed before the failure.
 */
export function parseSTime(text) {
  const m = /^(\d+) connections in [\d.]+s;/m.exec(text)
  const b = /^\d+ connections in \d+ real seconds, (\d+) bytes read per connection/m.exec(text)
  const progress = text
    .split('\n')
    .filter((l) => /^[*rt3]+$/.test(l.trim()))
    .join('')
    .trim()
  const reused = [...progress].filter((c) => c === 'r').length
  if (m && b) return { connections: Number(m[1]), reused, bytesPerConnection: Number(b[1]), complete: true }
  if (!/^(starting|Collecting connection statistics)/m.test(text)) throw new Error(`openssl s_time output not understood:\n${text.slice(0, 2000)}`)
  return { connections: progress.length, reused, bytesPerConnection: null, complete: false }
}

/**
 * The checks on one handshake phase (`resumed`: the `-reuse` one) of s_time result `r`, with the
 * backends' counts around it: every connection carried one GET the backends answered, none failed,
 * and the sessions were new or resumed as asked.
 */
export function handshakePhaseFlags(r, resumed, flag) {
  if (!resumed && r.reused) flag('error', `s_time -new resumed ${r.reused} of ${r.connections} sessions`)
  if (resumed && r.reusedShare < 0.99) flag('error', `s_time -reuse: only ${r.reused} of ${r.connections} connections resumed their session`)
  // Each connection carries one GET: the backends must have answered (nearly) every one.
  if (r.backends.requests < 0.99 * r.connections) flag('error', `the backends served ${r.backends.requests} requests for ${r.connections} connections`)
  if (!(r.bytesPerConnection > 0)) flag('error', 'openssl s_time read no answer')
  // A failed connection stops its s_time process early: its connections until then still count.
  if (r.incomplete.length) flag('error', `${r.incomplete.length} s_time process(es) stopped at a failed connection: ${r.incomplete[0]}`)
}

/** The YAML of meshproxy's route and service to the bench's backends, round-robin (the rest of a listener comes before it). */
export function backendsServiceYaml(backends) {
  return `    routes:
      - service: backends
services:
  - name: backends
    balancer: round-robin
    endpoints: [${backends.map((b) => b.addr).join(', ')}]
`
}

/**
 * The record of one repetition of `target` (which build it ran, for meshproxy) and its `flag(kind,
 * message)`, which adds to `flags` and logs; `h`: run.mjs's helpers.
 */
export function repetition(sc, target, rep, workers, flags, h) {
  const flag = (kind, message) => {
    flags.push({ scenario: sc.name, workers, target: target.name, rep, kind, message })
    h.log(`  ${{ error: 'FLAG', noise: 'NOISE' }[kind] ?? 'note'}: ${message}`)
  }
  const rec = { scenario: sc.name, workers, target: target.name, rep }
  if (target.family === 'meshproxy') rec.addon = h.addonInfo()
  return { rec, flag }
}

/** After the phases: the instance's peak RSS and process count, and its counters (`rec.proxy`). */
export async function collectCounters(inst, rec, h) {
  rec.peakRssKb = h.sumPeakRssKb(inst.pids())
  rec.processes = inst.pids().length
  rec.proxy = await inst.snapshot()
}

/**
 * Runs a repetition's measured phases on one running instance, in order. Each phase: `key` (the
 * record field), `load(seconds, logFile)`, `perConnection` (an s_time phase: connections, not
 * requests, over --extra-duration s; else an h2load or wrk phase over --duration s, h2load's
 * with a per-request log), `resumed` (the `-reuse` phase), `describe(r)` (what the log line adds) and `check(r,
 * flag)` (its own checks). Each runs after an unrecorded warm-up of --warmup s (at least 1),
 * inside run.mjs's noise check with the instance's CPU and the backends' counts taken around it
 * (`h`: run.mjs's measuring helpers); CPU s/10k = CPU ÷ connections or requests × 10,000.
 */
export async function measurePhases(phases, { inst, ctx, opts, target, rep, rec, flag, h }) {
  for (const { key, load, perConnection = false, resumed = false, describe = () => '', check = () => {} } of phases) {
    if (opts.warmup > 0) await load(Math.max(1, Math.round(opts.warmup)))
    const logFile = perConnection ? undefined : join(ctx.workDir, `h2load-${target.name}-${rep}.log`)
    const m = await h.measuredPhase(`${target.name} ${key}`, inst, ctx, opts, () => load(perConnection ? opts['extra-duration'] : opts.duration, logFile))
    const r = { ...m.result, noise: h.noiseRecord(m) }
    // Completed: s_time's connections, h2load's succeeded requests, wrk's requests.
    const done = perConnection ? r.connections : (r.succeeded ?? r.requests)
    r.cpuPer10k = done ? (r.cpuSeconds / done) * 10_000 : null
    rec[key] = r
    h.noiseFlags(key, m, flag)
    if (perConnection) {
      r.reusedShare = r.connections ? r.reused / r.connections : null
      h.log(`  ${key}: ${Math.round(r.rps)} connections/s (${r.reused} of ${r.connections} resumed), CPU ${r.cpuSeconds.toFixed(2)} s = ${r.cpuPer10k?.toFixed(3)} s/10k, backends ${r.backends.requests} requests`)
      handshakePhaseFlags(r, resumed, flag)
    } else {
      h.log(`  ${key}: ${Math.round(r.rps)} req/s, p50 ${r.latencyMs?.p50?.toFixed(3)} ms, p99 ${r.latencyMs?.p99?.toFixed(3)} ms, CPU ${r.cpuSeconds.toFixed(2)} s = ${r.cpuPer10k?.toFixed(3)} s/10k${describe(r)}`)
      if (r.socketErrors) {
        const se = r.socketErrors
        if (r.non2xx3xx) flag('error', `wrk: ${r.non2xx3xx} non-2xx/3xx responses`)
        if (se.connect + se.read + se.write + se.timeout) flag('error', `wrk socket errors: connect ${se.connect}, read ${se.read}, write ${se.write}, timeout ${se.timeout}`)
      } else {
        const bad = r.failed + r.errored + r.timeout
        if (bad) flag('error', `h2load: ${r.failed} failed, ${r.errored} errored, ${r.timeout} timed out`)
        const s = r.status
        if (s && s['3xx'] + s['4xx'] + s['5xx']) flag('error', `h2load status codes: ${JSON.stringify(s)}`)
      }
    }
    check(r, flag)
  }
}

/** The counters meshproxy's admin `/metrics` has about its own errors and its TLS handshakes. */
export async function meshproxySnapshot(metricsUrl) {
  const m = parsePrometheus(await fetchText(metricsUrl))
  const byLabel = (name, label) => Object.fromEntries(m.filter((x) => x.name === name && x.value > 0).map((x) => [x.labels[label], x.value]))
  return {
    upstreamOpened: sumMetric(m, 'meshproxy_upstream_connections_opened_total'),
    upstreamFailures: sumMetric(m, 'meshproxy_upstream_failures_total'),
    downstreamRejected: sumMetric(m, 'meshproxy_downstream_connections_rejected_total'),
    requestsByClass: Object.fromEntries(m.filter((x) => x.name === 'meshproxy_requests_total').map((x) => [x.labels.status_class, x.value])),
    proxyErrors: byLabel('meshproxy_proxy_errors_total', 'error'),
    tlsHandshakes: sumMetric(m, 'meshproxy_tls_handshakes_total'),
    tlsFailures: byLabel('meshproxy_tls_handshake_failures_total', 'reason'),
    mtlsConnectFailures: byLabel('meshproxy_mtls_connect_failures_total', 'reason'),
  }
}

const fmtCount = (x) => (x == null ? '–' : Math.round(x).toLocaleString('en-US'))
const fmt3 = (x) => (x == null ? '–' : x.toFixed(3))
const fmtMs = (x) => (x == null ? '–' : x < 1 ? `${(x * 1000).toFixed(0)} µs` : x < 10 ? `${x.toFixed(2)} ms` : `${x.toFixed(1)} ms`)
const fmtShare = (x) => (x == null ? '–' : `${(x * 100).toFixed(1)} %`)
const fmtMb = (x) => (x == null ? '–' : `${x.toFixed(1)} MB`)

/**
 * The report's columns for a scenario whose phases are `${prefix}Full`, `Resumed`, `H1` and `H2`
 * (the same shape as report.mjs's figures); `titles.h1` / `titles.h2` name the request phases'
 * throughput columns.
 */
export function phaseFigures(prefix, titles = { h1: 'h1 keep-alive req/s', h2: 'h2 keep-alive req/s' }) {
  const p = (phase) => `${prefix}${phase}`
  return [
    { key: 'fullRps', phase: p('Full'), title: 'full handshakes/s', get: (r) => r[p('Full')]?.rps, fmt: fmtCount, better: 'higher' },
    { key: 'fullCpu', phase: p('Full'), title: 'CPU s/10k full', get: (r) => r[p('Full')]?.cpuPer10k, fmt: fmt3, better: 'lower' },
    { key: 'resumedRps', phase: p('Resumed'), title: 'resumed handshakes/s', get: (r) => r[p('Resumed')]?.rps, fmt: fmtCount, better: 'higher' },
    { key: 'resumedCpu', phase: p('Resumed'), title: 'CPU s/10k resumed', get: (r) => r[p('Resumed')]?.cpuPer10k, fmt: fmt3, better: 'lower' },
    { key: 'resumedShare', phase: p('Resumed'), title: 'resumed', get: (r) => r[p('Resumed')]?.reusedShare, fmt: fmtShare, noRatio: true },
    { key: 'h1Rps', phase: p('H1'), title: titles.h1, get: (r) => r[p('H1')]?.rps, fmt: fmtCount, better: 'higher' },
    { key: 'h1P99', phase: p('H1'), title: 'h1 p99', get: (r) => r[p('H1')]?.latencyMs?.p99, fmt: fmtMs, better: 'lower' },
    { key: 'h1Cpu', phase: p('H1'), title: 'h1 CPU s/10k req', get: (r) => r[p('H1')]?.cpuPer10k, fmt: fmt3, better: 'lower' },
    { key: 'h2Rps', phase: p('H2'), title: titles.h2, get: (r) => r[p('H2')]?.rps, fmt: fmtCount, better: 'higher' },
    { key: 'h2P99', phase: p('H2'), title: 'h2 p99', get: (r) => r[p('H2')]?.latencyMs?.p99, fmt: fmtMs, better: 'lower' },
    { key: 'h2Cpu', phase: p('H2'), title: 'h2 CPU s/10k req', get: (r) => r[p('H2')]?.cpuPer10k, fmt: fmt3, better: 'lower' },
    { key: 'peakRssMb', phase: null, title: 'peak RSS', get: (r) => r.peakRssKb / 1024, fmt: fmtMb, better: 'lower' },
  ]
}
