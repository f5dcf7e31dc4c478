// Parsers for load-generator output and Prometheus text. Each returns plain numbers (latencies in
// milliseconds) and keeps every error counter, because a fast run full of errors is not a result.

const TIME_UNITS = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, ms: 1, s: 1e3, m: 60e3, h: 3600e3 }

/** "552.00us" / "3.11ms" / "1.20s" -> milliseconds. */
export function timeToMs(text) {
  const m = /^([\d.]+)\s*(ns|us|µs|ms|s|m|h)$/.exec(text.trim())
  if (!m) throw new Error(`unparseable time: ${text}`)
  return Number(m[1]) * TIME_UNITS[m[2]]
}

/** "16.03k" -> 16030 (wrk's Req/Sec thread stats use k/M suffixes). */
function countValue(text) {
  const m = /^([\d.]+)([kMG]?)$/.exec(text.trim())
  if (!m) return NaN
  return Number(m[1]) * ({ '': 1, k: 1e3, M: 1e6, G: 1e9 })[m[2]]
}

/** Parses `wrk --latency` output. Throws if the summary lines are missing (wrk failed). */
export function parseWrk(text) {
  const rps = /^Requests\/sec:\s+([\d.]+)/m.exec(text)
  const total = /^\s*(\d+) requests in ([\d.]+\w+), ([\d.]+\w+) read/m.exec(text)
  if (!rps || !total) throw new Error(`wrk output not understood:\n${text}`)
  const lat = /^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)/m.exec(text)
  const pct = {}
  for (const m of text.matchAll(/^\s+(50|75|90|99)(?:\.0+)?%\s+(\S+)/gm)) pct[`p${m[1]}`] = timeToMs(m[2])
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text)
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(text)
  const reqSec = /^\s*Req\/Sec\s+(\S+)/m.exec(text)
  return {
    requests: Number(total[1]),
    durationMs: timeToMs(total[2]),
    rps: Number(rps[1]),
    latencyMs: {
      mean: lat ? timeToMs(lat[1]) : null,
      stdev: lat ? timeToMs(lat[2]) : null,
      max: lat ? timeToMs(lat[3]) : null,
      p50: pct.p50 ?? null,
      p75: pct.p75 ?? null,
      p90: pct.p90 ?? null,
      p99: pct.p99 ?? null,
    },
    perThreadRpsMean: reqSec ? countValue(reqSec[1]) : null,
    socketErrors: sock
      ? { connect: Number(sock[1]), read: Number(sock[2]), write: Number(sock[3]), timeout: Number(sock[4]) }
      : { connect: 0, read: 0, write: 0, timeout: 0 },
    non2xx3xx: non2xx ? Number(non2xx[1]) : 0,
  }
}

/** Parses h2load's summary (counts, status classes, achieved rate). */
export function parseH2load(text) {
  const req = /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(text)
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(text)
  const fin = /finished in ([\d.]+\w+), ([\d.]+) req\/s/.exec(text)
  if (!req || !fin) throw new Error(`h2load output not understood:\n${text}`)
  const [, total, started, done, succeeded, failed, errored, timeout] = req.map(Number)
  const mean = /time for request:\s+(\S+)\s+(\S+)\s+(\S+)/.exec(text)
  return {
    total,
    started,
    done,
    succeeded,
    failed,
    errored,
    timeout,
    status: codes ? { '2xx': +codes[1], '3xx': +codes[2], '4xx': +codes[3], '5xx': +codes[4] } : null,
    achievedRps: Number(fin[2]),
    durationMs: timeToMs(fin[1]),
    // h2load 1.52 prints min/max/mean/sd only; the percentiles come from --log-file.
    summaryMs: mean ? { min: timeToMs(mean[1]), max: timeToMs(mean[2]), mean: timeToMs(mean[3]) } : null,
  }
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted, p) {
  if (!sorted.length) return null
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]
}

/**
 * Latency stats from an h2load --log-file: one line per request, tab-separated
 * `start_time_us  status  duration_us`. Failed requests (status not 2xx/3xx) are counted, not timed.
 */
export function latencyFromH2loadLog(text) {
  const ok = []
  let bad = 0
  for (const line of text.split('\n')) {
    if (!line) continue
    const [, status, dur] = line.split('\t').map(Number)
    if (status >= 200 && status < 400 && Number.isFinite(dur)) ok.push(dur / 1000)
    else bad += 1
  }
  ok.sort((a, b) => a - b)
  return {
    samples: ok.length,
    bad,
    p50: percentile(ok, 50),
    p90: percentile(ok, 90),
    p99: percentile(ok, 99),
    p999: percentile(ok, 99.9),
    max: ok.length ? ok[ok.length - 1] : null,
    mean: ok.length ? ok.reduce((s, x) => s + x, 0) / ok.length : null,
  }
}

/** Prometheus text -> [{ name, labels, value }] (comments skipped). */
export function parsePrometheus(text) {
  const out = []
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line)
    if (!m) continue
    const labels = {}
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2]
    out.push({ name: m[1], labels, value: Number(m[3]) })
  }
  return out
}

/** Sum of a metric over all its label sets. */
export function sumMetric(samples, name, filter = () => true) {
  return samples.filter((s) => s.name === name && filter(s.labels)).reduce((s, x) => s + x.value, 0)
}

/** haproxy `show stat` CSV -> array of row objects keyed by the header names. */
export function parseHaproxyStat(text) {
  const lines = text.split('\n').filter(Boolean)
  const header = lines.shift()?.replace(/^#\s*/, '').split(',') ?? []
  return lines.map((l) => Object.fromEntries(l.split(',').map((v, i) => [header[i], v])))
}

/** nginx stub_status: "Active connections: N\nserver accepts handled requests\n A H R\n...". */
export function parseStubStatus(text) {
  const m = /server accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)/.exec(text)
  if (!m) throw new Error(`stub_status output not understood:\n${text}`)
  return { accepts: Number(m[1]), handled: Number(m[2]), requests: Number(m[3]), active: Number(/Active connections:\s*(\d+)/.exec(text)?.[1] ?? NaN) }
}
