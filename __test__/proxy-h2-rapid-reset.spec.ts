/**
 * HTTP/2 rapid reset (CVE-2023-44487): a client that opens and immediately resets 10,000 streams
 * is sent a GOAWAY, and the proxy's CPU stays bounded. The proxy runs as a CLI child process so
 * its CPU time can be read from /proc.
 */
import http2 from 'node:http2'
import test from 'ava'
import { startBackend } from './helpers/backend.js'
import { cpuSeconds, startCliProxy } from './helpers/cli.js'
import { stillServes } from './helpers/h2.js'

test('10,000 opened-and-reset streams get a GOAWAY and bounded CPU', async (t) => {
  const backend = await startBackend(t, 'b')
  const proxy = await startCliProxy(t, ['--to', backend.address])
  const before = cpuSeconds(proxy.pid)
  const session = http2.connect(`http://127.0.0.1:${proxy.port}`)
  t.teardown(() => session.destroy())
  const goaway = new Promise<number>((resolve) => session.on('goaway', (code) => resolve(code)))
  session.on('error', () => {})
  await new Promise<void>((resolve) => session.on('connect', () => resolve()))
  let opened = 0
  for (; opened < 10_000 && !session.closed && !session.destroyed; opened++) {
    try {
      const stream = session.request({ ':path': `/r${opened}` })
      stream.on('error', () => {})
      stream.close(http2.constants.NGHTTP2_CANCEL)
    } catch {
      break // the session went away under us: that is the GOAWAY
    }
    if (opened % 500 === 0) await new Promise((r) => setImmediate(r))
  }
  const code = await Promise.race([goaway, new Promise<number>((r) => setTimeout(() => r(-1), 10_000))])
  t.not(code, -1, `no GOAWAY after ${opened} reset streams`)
  t.is(code, http2.constants.NGHTTP2_ENHANCE_YOUR_CALM)
  const spent = cpuSeconds(proxy.pid) - before
  t.true(spent < 5, `the proxy spent ${spent}s of CPU on the flood`)
  // The proxy keeps serving other clients.
  await stillServes(t, proxy.port)
})
