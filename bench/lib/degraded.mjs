// The `degraded` scenario's load: an open-loop generator at a fixed arrival rate, and the run of
// its phases against three fault backends (bench/backends/fault.mjs) through one target.
//
// Open loop: request i is due at t0 + i / rate whether or not earlier ones have been answered,
// and its latency is counted from that due time, not from when it left (as wrk2 does), so a
// target that stalls is charged for the requests queued behind the stall (no coordinated
// omission). Requests go over an undici Pool of keep-alive connections; the pool opens another
// connection only when every open one is busy, up to `connections`.
import { performance } from 'node:perf_hooks'
import { Pool } from 'undici'
import { percentile } from './parse.mjs'

const round3 = (x) => (x == null ? null : Math.round(x * 1000) / 1000)

function latencyStats(ms) {
  const v = [...ms].sort((a, b) => a - b)
  return { samples: v.length, p50: round3(percentile(v, 50)), p90: round3(percentile(v, 90)), p99: round3(percentile(v, 99)), max: round3(v.at(-1) ?? null) }
}

/**
 * GETs `url` at `rate` req/s through consecutive `phases` ({ name, seconds, enter() }): a phase's
 * `enter` (e.g. switching the backends' faults) is called when the first request due in it is
 * about to be sent, and every request is counted in the phase it was due in. Resolves once the
 * last request is answered or has timed out, with per phase: sent, answers by status, client
 * errors (connection errors, timeouts), the success rate (2xx ÷ sent), latency over every
 * answered request (whatever its status), over the 2xx only, and the generator's own lag
 * (send time − due time: the load generator's health, not the target's).
 */
export async function runOpenLoop(url, { rate, connections = 64, phases, timeoutMs = 10_000 }) {
  const { origin, pathname } = new URL(url)
  const pool = new Pool(origin, { connections, pipelining: 1, keepAliveTimeout: 60_000, headersTimeout: timeoutMs, bodyTimeout: timeoutMs })
  const stats = phases.map((p) => ({ name: p.name, seconds: p.seconds, sent: 0, status: {}, clientErrors: {}, all: [], ok: [], lag: [] }))
  const ends = []
  phases.reduce((t, p) => (ends.push(t + p.seconds * 1000), t + p.seconds * 1000), 0)
  const totalMs = ends.at(-1)
  const interval = 1000 / rate
  const pending = new Set()
  const entering = []
  try {
    await phases[0].enter?.()
    let phase = 0
    let i = 0
    const t0 = performance.now()
    const fire = (dueMs, s) => {
      s.sent++
      s.lag.push(performance.now() - t0 - dueMs)
      const p = pool
        .request({ path: pathname, method: 'GET' })
        .then(async ({ statusCode, body }) => {
          await body.text()
          const ms = performance.now() - t0 - dueMs
          s.status[statusCode] = (s.status[statusCode] ?? 0) + 1
          s.all.push(ms)
          if (statusCode >= 200 && statusCode < 300) s.ok.push(ms)
        })
        .catch((e) => {
          const code = e.code ?? e.name ?? 'error'
          s.clientErrors[code] = (s.clientErrors[code] ?? 0) + 1
        })
        .finally(() => pending.delete(p))
      pending.add(p)
    }
    await new Promise((resolve, reject) => {
      const tick = () => {
        try {
          const now = performance.now() - t0
          for (; i * interval <= now && i * interval < totalMs; i++) {
            const due = i * interval
            while (due >= ends[phase]) {
              phase++
              // Not awaited: the schedule does not wait for the backends (an IPC round trip).
              entering.push(phases[phase].enter?.())
            }
            fire(due, stats[phase])
          }
          if (i * interval >= totalMs) return resolve()
          setTimeout(tick, Math.max(0, i * interval - (performance.now() - t0)))
        } catch (e) {
          reject(e)
        }
      }
      tick()
    })
    await Promise.all(entering)
    while (pending.size) await Promise.all([...pending])
  } finally {
    await pool.close().catch(() => {})
  }
  return stats.map((s) => {
    const ok = Object.entries(s.status).reduce((n, [code, c]) => n + (code >= 200 && code < 300 ? c : 0), 0)
    return {
      name: s.name,
      seconds: s.seconds,
      sent: s.sent,
      status: s.status,
      clientErrors: s.clientErrors,
      success: s.sent ? ok / s.sent : null,
      latencyMs: latencyStats(s.all),
      okLatencyMs: latencyStats(s.ok),
      lagMs: latencyStats(s.lag),
    }
  })
}

/** Numeric counters of a target snapshot that are deltas per phase (ejections, retries, …). */
const COUNTERS = ['ejections', 'retries', 'retriesOverBudget', 'redispatches']

/**
 * One degraded run through a started target: `phases` (bench/lib/targets.mjs DEGRADED_PHASES
 * entries with their seconds) at `rate` req/s, the fault backends switched and the target's
 * counters read (`snapshot`) at each phase start and at the end. Returns the recorded phases, each
 * with the backends' request counts, the degraded backend's share of them (attempts: retries
 * included), and the target's counters over the phase.
 */
export async function runDegradedPhases(url, backends, { rate, connections, phases, snapshot }) {
  const snaps = []
  const measured = await runOpenLoop(url, {
    rate,
    connections,
    phases: phases.map((p, k) => ({
      name: p.name,
      seconds: p.seconds,
      enter: async () => {
        await Promise.all(backends.map((b) => b.setPhase(p)))
        snaps[k] = await snapshot()
      },
    })),
  })
  snaps[phases.length] = await snapshot()
  const counts = await Promise.all(backends.map((b) => b.counts()))
  return phases
    .map((p, k) => {
      if (!p.recorded) return null
      const perBackend = backends.map((b, j) => ({ name: b.name, degraded: b.degraded, ...(counts[j][p.name] ?? { requests: 0, errors: 0, health: 0 }) }))
      const total = perBackend.reduce((s, b) => s + b.requests, 0)
      const degraded = perBackend.filter((b) => b.degraded).reduce((s, b) => s + b.requests, 0)
      const proxy = Object.fromEntries(COUNTERS.filter((c) => typeof snaps[k + 1]?.[c] === 'number').map((c) => [c, snaps[k + 1][c] - (snaps[k]?.[c] ?? 0)]))
      return { ...measured[k], backends: perBackend, degradedShare: total ? degraded / total : null, proxy, proxyAtEnd: snaps[k + 1] }
    })
    .filter(Boolean)
}
