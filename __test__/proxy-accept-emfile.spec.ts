/**
 * An accept error (EMFILE: the process is out of file descriptors) backs off and never ends the
 * accept loop: once descriptors free up, the listener serves again. The proxy runs as a CLI child
 * whose descriptor limit is lowered with prlimit(1) after it started.
 */
import { execFileSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import net from 'node:net'
import test from 'ava'
import { startBackend } from './helpers/backend.js'
import { startCliProxy } from './helpers/cli.js'
import { get } from './helpers/http.js'

test('EMFILE on accept backs off, logs, and the listener recovers', async (t) => {
  const backend = await startBackend(t, 'b')
  const proxy = await startCliProxy(t, ['--to', backend.address])
  t.is((await get(proxy.port, '/warm')).status, 200)
  const open = readdirSync(`/proc/${proxy.pid}/fd`).length
  const limit = open + 8
  // Only the soft limit moves (raising a hard limit needs privileges a test should not assume).
  const soft = execFileSync('prlimit', ['--pid', String(proxy.pid), '--nofile', '--raw', '--noheadings', '--output=SOFT']).toString().trim()
  execFileSync('prlimit', ['--pid', String(proxy.pid), `--nofile=${limit}:`])
  const sockets = await Promise.all(
    Array.from({ length: 40 }, () => new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(proxy.port, '127.0.0.1', () => resolve(s))
      s.on('error', reject)
    })),
  )
  // Give the accept loop time to hit the limit and back off a few times.
  await new Promise((r) => setTimeout(r, 500))
  t.regex(proxy.stderr(), /accept failed/i)
  for (const s of sockets) s.destroy()
  execFileSync('prlimit', ['--pid', String(proxy.pid), `--nofile=${soft}:`])
  let status = 0
  for (let i = 0; i < 50 && status !== 200; i++) {
    status = await get(proxy.port, '/after').then((r) => r.status, () => 0)
    if (status !== 200) await new Promise((r) => setTimeout(r, 100))
  }
  t.is(status, 200, 'the listener serves again once descriptors are free')
})
