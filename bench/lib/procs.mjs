// Child-process bookkeeping. Every process the bench starts goes through `start()` so that it
// can be killed by PID at the end, on an error, and on SIGINT/SIGTERM — a benchmark that leaks
// an nginx or a proxy on a fixed port poisons the next run.
import { spawn } from 'node:child_process'
import { connect } from 'node:net'
import { descendants, isAlive } from './procstat.mjs'

/** pid -> { name, child } for every process we started and have not yet seen exit. */
const live = new Map()
/** Extra PIDs (forked workers) to sweep at exit, e.g. nginx workers whose master we own. */
const extra = new Set()

const OUTPUT_CAP = 1 << 20 // keep at most 1 MiB of a child's output: wrk/h2load print little; servers may log a lot

/**
 * Spawns `cmd args` and tracks it. Returns the ChildProcess with `.out` / `.err` getters (captured
 * output) and an `.exited` promise resolving to { code, signal }.
 */
export function start(name, cmd, args, opts = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts })
  let out = ''
  let err = ''
  child.stdout.setEncoding('utf8').on('data', (d) => {
    if (out.length < OUTPUT_CAP) out += d
  })
  child.stderr.setEncoding('utf8').on('data', (d) => {
    if (err.length < OUTPUT_CAP) err += d
  })
  Object.defineProperty(child, 'out', { get: () => out })
  Object.defineProperty(child, 'err', { get: () => err })
  child.benchName = name
  child.exited = new Promise((resolve) => {
    child.on('error', (e) => {
      err += `\nspawn error: ${e.message}`
      live.delete(child.pid)
      resolve({ code: null, signal: null, error: e })
    })
    child.on('exit', (code, signal) => {
      live.delete(child.pid)
      resolve({ code, signal })
    })
  })
  if (child.pid !== undefined) live.set(child.pid, { name, child })
  return child
}

/** Runs a command to completion (a load generator); rejects if it cannot be spawned. */
export async function runToEnd(name, cmd, args, opts = {}) {
  const child = start(name, cmd, args, opts)
  // 'exit' can come before the child's last output is read, and a load generator's summary (wrk's
  // and h2load's statistics, s_time's counts) is its last output: 'close' comes once all is read.
  const closed = new Promise((resolve) => {
    child.once('close', resolve)
    child.once('error', resolve)
  })
  const res = await child.exited
  await closed
  if (res.error) throw new Error(`${name}: ${res.error.message}`)
  return { ...res, stdout: child.out, stderr: child.err }
}

/** Remembers forked processes (not our direct children) so they are swept too. */
export function trackExtra(pids) {
  for (const p of pids) extra.add(p)
}

/** Resolves when `re` matches the child's stdout+stderr; rejects on exit or timeout with its output. */
export function waitForOutput(child, re, timeoutMs = 15_000) {
  return new Promise((resolve, reject) => {
    const started = Date.now()
    const tick = () => {
      if (re.test(child.out) || re.test(child.err)) return resolve()
      if (child.exitCode !== null || child.signalCode !== null) {
        return reject(new Error(`${child.benchName} exited (${child.exitCode ?? child.signalCode}) before ready:\n${child.out}${child.err}`))
      }
      if (Date.now() - started > timeoutMs) {
        return reject(new Error(`${child.benchName}: not ready after ${timeoutMs} ms:\n${child.out}${child.err}`))
      }
      setTimeout(tick, 25)
    }
    tick()
  })
}

function tryConnect(port, host) {
  return new Promise((resolve) => {
    const s = connect({ port, host })
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

/** Resolves once host:port accepts TCP connections (servers that print nothing when ready). */
export async function waitForPort(child, port, host = '127.0.0.1', timeoutMs = 15_000) {
  const started = Date.now()
  for (;;) {
    if (await tryConnect(port, host)) return
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${child.benchName} exited (${child.exitCode ?? child.signalCode}) before listening on ${port}:\n${child.out}${child.err}`)
    }
    if (Date.now() - started > timeoutMs) throw new Error(`${child.benchName}: port ${port} not open after ${timeoutMs} ms:\n${child.err}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

/**
 * Stops a child by PID: SIGTERM, then SIGKILL after `graceMs`; then SIGKILLs any of its forked
 * descendants still alive (nginx workers outlive a SIGKILLed master).
 */
export async function stop(child, graceMs = 5_000) {
  if (!child || child.pid === undefined) return
  const kids = descendants(child.pid)
  if (child.exitCode === null && child.signalCode === null) {
    try {
      process.kill(child.pid, 'SIGTERM')
    } catch {}
    const timer = new Promise((r) => setTimeout(() => r('timeout'), graceMs))
    if ((await Promise.race([child.exited, timer])) === 'timeout') {
      try {
        process.kill(child.pid, 'SIGKILL')
      } catch {}
      await child.exited
    }
  }
  for (const pid of kids) {
    if (isAlive(pid)) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {}
    }
    extra.delete(pid)
  }
}

/** Synchronous last-resort sweep (usable from 'exit'): SIGKILL every tracked PID still alive. */
export function killAllSync() {
  const pids = new Set(extra)
  for (const pid of live.keys()) {
    pids.add(pid)
    for (const d of descendants(pid)) pids.add(d)
  }
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
  }
  live.clear()
  extra.clear()
}

/** Graceful async sweep: SIGTERM everything tracked, wait a little, then SIGKILL the rest. */
export async function stopAll(graceMs = 3_000) {
  await Promise.all([...live.values()].map(({ child }) => stop(child, graceMs)))
  killAllSync()
}

/**
 * On SIGINT/SIGTERM: stop every child, then exit with 128+signo. On plain exit (including an
 * uncaught error): SIGKILL whatever is left, synchronously, since 'exit' cannot await.
 */
export function installCleanupHandlers(log = console.error, atExit = () => {}) {
  let stopping = false
  process.on('exit', atExit)
  const onSignal = (signal, code) => {
    if (stopping) {
      killAllSync()
      process.exit(code)
    }
    stopping = true
    log(`\nbench: ${signal}: stopping ${live.size} process(es)…`)
    stopAll(2_000).finally(() => process.exit(code))
  }
  process.on('SIGINT', () => onSignal('SIGINT', 130))
  process.on('SIGTERM', () => onSignal('SIGTERM', 143))
  process.on('exit', killAllSync)
}
