/**
 * A server process a test can kill and start again (Redis, a rate limit service): `start()`
 * spawns it and waits until `ready()` says it serves (or it exits, or `within` ms pass: an error
 * with its output); `stop()` kills it (SIGKILL: a crash, as a test of failure wants) and waits
 * for it to exit. Killed, and `cleanup` run, at the end of the test.
 */
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import type { ExecutionContext } from 'ava'

export interface Restartable {
  start(): Promise<void>
  stop(): Promise<void>
}

export interface ProcessSpec {
  /** Names it in errors. */
  what: string
  bin: string
  args: () => string[]
  env?: NodeJS.ProcessEnv
  ready: () => Promise<boolean>
  within: number
  cleanup: () => void
}

export function restartable(t: ExecutionContext, spec: ProcessSpec): Restartable {
  let child: ChildProcess | undefined
  const start = async (): Promise<void> => {
    let log = ''
    const c = spawn(spec.bin, spec.args(), { env: spec.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] })
    c.stdout?.on('data', (d: Buffer) => (log += d.toString()))
    c.stderr?.on('data', (d: Buffer) => (log += d.toString()))
    child = c
    const deadline = Date.now() + spec.within
    while (!(await spec.ready())) {
      if (c.exitCode !== null || Date.now() > deadline) throw new Error(`${spec.what} did not start:\n${log}`)
      await new Promise((r) => setTimeout(r, 25))
    }
  }
  const stop = async (): Promise<void> => {
    const c = child
    child = undefined
    if (!c || c.exitCode !== null) return
    await new Promise<void>((resolve) => {
      c.once('exit', () => resolve())
      c.kill('SIGKILL')
    })
  }
  t.teardown(async () => {
    await stop()
    spec.cleanup()
  })
  return { start, stop }
}
