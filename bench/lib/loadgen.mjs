// Load generators: wrk for closed-loop throughput, h2load --h1 for open-loop fixed-rate latency,
// h2load (h2c) for the closed-loop h2c scenario.
import { readFileSync, rmSync } from 'node:fs'
import net from 'node:net'
import { runToEnd } from './procs.mjs'
import { latencyFromH2loadLog, parseH2load, parseWrk } from './parse.mjs'

/**
 * wrk -tT -cC -dDs --latency URL. Closed loop: each connection sends the next request as soon as
 * the previous answer arrives, so req/s measures how fast the target (and this box) can go.
 */
export async function runWrk(wrkBin, url, { threads, connections, durationS, headers = [] }) {
  const args = [`-t${threads}`, `-c${connections}`, `-d${durationS}s`, ...headers.flatMap((h) => ['-H', h]), '--latency', url]
  const r = await runToEnd('wrk', wrkBin, args)
  if (r.code !== 0) throw new Error(`wrk exited ${r.code ?? r.signal}:\n${r.stdout}${r.stderr}`)
  return { command: `wrk ${args.map((a) => (a.includes(' ') ? `'${a}'` : a)).join(' ')}`, ...parseWrk(r.stdout), raw: r.stdout }
}

/**
 * h2load --h1 -c C --rps R -D D --log-file F URL. Open loop at a fixed total rate (h2load's --rps
 * is per client connection, so R = rate / C): latency at a realistic load, not at saturation,
 * where closed-loop numbers mostly measure queueing. h2load 1.52 prints no percentiles, so they
 * are computed from the per-request log.
 */
export async function runH2load(h2loadBin, url, { clients, rate, durationS, logFile }) {
  const perClient = rate / clients
  const args = ['--h1', '-c', String(clients), '--rps', String(perClient), '-D', String(durationS)]
  const { r, summary, latencyMs } = await execH2load(h2loadBin, args, url, logFile)
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
/**
 * Runs h2load with `args` against `url` (adding `--log-file` when `logFile` is given): its
 * output, its parsed summary, and the latency percentiles of its per-request log (the log is
 * removed once read). A non-zero exit is an error.
 */
export async function execH2load(h2loadBin, args, url, logFile) {
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
  return { r, summary, latencyMs }
}

export async function runH2loadH2c(h2loadBin, url, { clients, streams, durationS, logFile = null }) {
  const args = ['--no-tls-proto=h2c', '-c', String(clients), '-m', String(streams), '-D', String(durationS)]
  const { r, summary, latencyMs } = await execH2load(h2loadBin, args, url, logFile)
  return {
    command: `h2load ${args.join(' ').replace(logFile ?? '\0', 'LOG')}`,
    protocol: /^Application protocol: (\S+)/m.exec(r.stdout)?.[1] ?? null,
    ...summary,
    rps: summary.achievedRps,
    latencyMs,
    raw: r.stdout.split('\n').filter((l) => !/^(progress:|spawning|Warm-up|Main benchmark|Stopped)/.test(l)).join('\n'),
  }
}

/**
 * Opens `n` HTTP/1.1 keep-alive connections to `url` (100 at a time), sends one GET on each and
 * reads its response, then leaves them idle. Returns { held(), close() }: `held()` counts the
 * connections the target has not closed since. Memory per idle connection is what a sidecar in
 * front of many mostly-idle clients pays.
 */
export async function openIdle(url, n, expectedBody) {
  const { hostname, port, pathname } = new URL(url)
  const sockets = []
  const request = `GET ${pathname} HTTP/1.1\r\nHost: ${hostname}:${port}\r\n\r\n`
  const one = () =>
    new Promise((resolve, reject) => {
      const s = net.connect({ host: hostname, port: Number(port) })
      let buf = ''
      const timer = setTimeout(() => s.destroy(new Error('idle scenario: no response within 10 s')), 10_000)
      s.setEncoding('latin1')
      s.once('connect', () => s.write(request))
      s.on('data', function onData(d) {
        buf += d
        const end = buf.indexOf('\r\n\r\n')
        if (end >= 0 && buf.length - end - 4 >= expectedBody.length) {
          clearTimeout(timer)
          s.off('data', onData)
          if (!buf.startsWith('HTTP/1.1 200')) return reject(new Error(`idle scenario: ${buf.split('\r\n')[0]}`))
          s.closedByPeer = false
          s.on('data', () => {}).once('end', () => (s.closedByPeer = true))
          s.once('close', () => (s.closedByPeer = true))
          resolve(s)
        }
      })
      s.once('error', (e) => {
        clearTimeout(timer)
        reject(e)
      })
    })
  try {
    for (let i = 0; i < n; i += 100) {
      sockets.push(...(await Promise.all(Array.from({ length: Math.min(100, n - i) }, one))))
    }
  } catch (e) {
    for (const s of sockets) s.destroy()
    throw e
  }
  return {
    held: () => sockets.filter((s) => !s.closedByPeer).length,
    close: () => {
      for (const s of sockets) s.destroy()
    },
  }
}
