/** Running the built CLI (`node dist/cli.js`) as a child process. */
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { ExecutionContext } from 'ava'

export const ROOT = fileURLToPath(new URL('../../', import.meta.url))
export const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url))

export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

export interface CliProcess {
  child: ChildProcess
  pid: number
  stdout(): string
  stderr(): string
  exited: Promise<Exit>
  /** Resolves with the first match of `re` in stdout; rejects if the process exits first or after `ms`. */
  waitForStdout(re: RegExp, ms?: number): Promise<RegExpMatchArray>
}

/** Spawns the CLI; kills it (by pid) at teardown if it is still running. */
export function spawnCli(t: ExecutionContext, args: string[]): CliProcess {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (out += s))
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (err += s))
  let done = false
  const exited = new Promise<Exit>((resolve) => {
    // 'close', not 'exit': it comes after the child's stdout and stderr are read to their end,
    // so the text of a process that exits at once is never lost.
    child.on('close', (code, signal) => {
      done = true
      resolve({ code, signal })
    })
  })
  t.teardown(async () => {
    if (!done) {
      child.kill('SIGKILL')
      await exited
    }
  })
  const waitForStdout = (re: RegExp, ms = 15_000): Promise<RegExpMatchArray> =>
    new Promise((resolve, reject) => {
      const check = (): boolean => {
        const m = re.exec(out)
        if (m) {
          cleanup()
          resolve(m)
          return true
        }
        return false
      }
      const onExit = (): void => {
        if (!check()) {
          cleanup()
          reject(new Error(`CLI exited before printing ${re}\nstdout:\n${out}\nstderr:\n${err}`))
        }
      }
      const timer = setTimeout(() => {
        cleanup()
        reject(new Error(`CLI did not print ${re} within ${ms} ms\nstdout:\n${out}\nstderr:\n${err}`))
      }, ms)
      const cleanup = (): void => {
        clearTimeout(timer)
        child.stdout!.off('data', onData)
        child.off('exit', onExit)
      }
      const onData = (): void => void check()
      if (check()) return
      child.stdout!.on('data', onData)
      child.on('exit', onExit)
    })
  return { child, pid: child.pid!, stdout: () => out, stderr: () => err, exited, waitForStdout }
}

/** Runs the CLI to completion. */
export async function runCli(t: ExecutionContext, args: string[]): Promise<Exit & { stdout: string; stderr: string }> {
  const p = spawnCli(t, args)
  const exit = await p.exited
  return { ...exit, stdout: p.stdout(), stderr: p.stderr() }
}

/** Starts `meshproxy run ... --listen 127.0.0.1:0 --admin 127.0.0.1:0` and parses the bound addresses. */
export async function startCliProxy(t: ExecutionContext, args: string[]): Promise<CliProcess & { port: number; adminPort: number }> {
  const p = spawnCli(t, ['run', ...args, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'])
  const [, port] = await p.waitForStdout(/listening on http:\/\/127\.0\.0\.1:(\d+)/)
  const [, adminPort] = await p.waitForStdout(/admin on http:\/\/127\.0\.0\.1:(\d+)/)
  return Object.assign(p, { port: Number(port), adminPort: Number(adminPort) })
}

/** CPU time of a process (utime + stime), in seconds (Linux /proc). */
export function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100
}

/** Resident set size of a process in bytes (Linux /proc). */
export async function rssBytes(pid: number): Promise<number> {
  const { readFile } = await import('node:fs/promises')
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status)
  if (!m) throw new Error(`no VmRSS for pid ${pid}`)
  return Number(m[1]) * 1024
}
