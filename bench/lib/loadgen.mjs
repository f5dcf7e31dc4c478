// Load generators: wrk for closed-loop throughput, h2load --h1 for open-loop fixed-rate latency,
// h2load (h2c) for the closed-loop h2c scenario.
import { readFileSync, rmSync } from 'node:fs'
import { runToEnd } from './procs.mjs'
import { latencyFromH2loadLog, parseH2load, parseWrk } from './parse.mjs'

/**
 * wrk -tT -cC -dDs --latency URL. Closed loop: each connection sends the next request as soon as
 * the previous answer arrives, so req/s measures how fast the target (and this box) can go.
 */
export async function runWrk(wrkBin, url, { threads, connections, durationS }) {
  const args = [`-t${threads}`, `-c${connections}`, `-d${durationS}s`, '--latency', url]
  const r = await runToEnd('wrk', wrkBin, args)
  if (r.code !== 0) throw new Error(`wrk exited ${r.code ?? r.signal}:\n${r.stdout}${r.stderr}`)
  return { command: `wrk ${args.join(' ')}`, ...parseWrk(r.stdout), raw: r.stdout }
}

/**
 * h2load --h1 -c C --rps R -D D --log-file F URL. Open loop at a fixed total rate (h2load's --rps
 * is per client connection, so R = rate / C): latency at a realistic load, not at saturation,
 * where closed-loop numbers mostly measure queueing. h2load 1.52 prints no percentiles, so they
 * are computed from the per-request log.
 */
export async function runH2load(h2loadBin, url, { clients, rate, durationS, logFile }) {
  const perClient = rate / clients
  const args = ['--h1', '-c', String(clients), '--rps', String(perClient), '-D', String(durationS), '--log-file', logFile, url]
  const r = await runToEnd('h2load', h2loadBin, args)
  if (r.code !== 0) throw new Error(`h2load exited ${r.code ?? r.signal}:\n${r.stdout}${r.stderr}`)
  const summary = parseH2load(r.stdout)
  const latencyMs = latencyFromH2loadLog(readFileSync(logFile, 'utf8'))
  rmSync(logFile, { force: true })
  return {
    command: `h2load ${args.join(' ').replace(logFile, 'LOG')}`,
    targetRps: rate,
    ...summary,
    latencyMs,
    raw: r.stdout.split('\n').filter((l) => !/^(progress:|spawning|Warm-up|Main benchmark|Stopped)/.test(l)).join('\n'),
  }
}

/**
 * h2load -c C -m M -D D [--log-file F] URL, h2c with prior knowledge. Closed loop: C connections,
 * each keeping M streams in flight, for D seconds. Reports req/s and, with a log file, p50/p99
 * (h2load 1.52 prints only min/max/mean/sd for "time for request"). `protocol` is what h2load
 * says it spoke: anything but h2c means the target did not take h2c.
 */
export async function runH2loadH2c(h2loadBin, url, { clients, streams, durationS, logFile = null }) {
  const args = ['--no-tls-proto=h2c', '-c', String(clients), '-m', String(streams), '-D', String(durationS)]
  if (logFile) args.push('--log-file', logFile)
  args.push(url)
  const r = await runToEnd('h2load', h2loadBin, args)
  if (r.code !== 0) throw new Error(`h2load exited ${r.code ?? r.signal}:\n${r.stdout}${r.stderr}`)
  const summary = parseH2load(r.stdout)
  let latencyMs = null
  if (logFile) {
    latencyMs = latencyFromH2loadLog(readFileSync(logFile, 'utf8'))
    rmSync(logFile, { force: true })
  }
  return {
    command: `h2load ${args.join(' ').replace(logFile ?? '\0', 'LOG')}`,
    protocol: /^Application protocol: (\S+)/m.exec(r.stdout)?.[1] ?? null,
    ...summary,
    rps: summary.achievedRps,
    latencyMs,
    raw: r.stdout.split('\n').filter((l) => !/^(progress:|spawning|Warm-up|Main benchmark|Stopped)/.test(l)).join('\n'),
  }
}
