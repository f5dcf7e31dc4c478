/**
 * Backpressure: 256 MiB streamed up to a backend that stops reading for 5 s, and 256 MiB
 * streamed down to a client that stops reading for 5 s, through a `meshproxy run` child process
 * whose resident memory must not grow by more than 16 MiB. (The proxy runs in a child so its RSS
 * is not mixed with the test's own buffers.)
 */
import http from 'node:http'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import test, { type ExecutionContext } from 'ava'
import { startBackend } from './helpers/backend.js'
import { rssBytes, startCliProxy } from './helpers/cli.js'
import { get, sleep } from './helpers/http.js'

const TOTAL = 256 * 1024 * 1024
const CHUNK = 64 * 1024
const PAUSE_MS = 5000
const MAX_GROWTH = 16 * 1024 * 1024

/** TOTAL bytes in CHUNK-sized chunks, without holding more than one chunk. */
function source(): Readable {
  const chunk = Buffer.alloc(CHUNK, 0x61)
  let sent = 0
  return new Readable({
    highWaterMark: CHUNK,
    read() {
      if (sent >= TOTAL) {
        this.push(null)
        return
      }
      sent += CHUNK
      this.push(chunk)
    },
  })
}

interface Sampler {
  baseline: number
  stop(): Promise<number>
}

/** Baseline RSS (max over a few samples at rest), then samples every 25 ms until stopped; stop() gives the max. */
async function sampleRss(pid: number): Promise<Sampler> {
  let baseline = 0
  for (let i = 0; i < 5; i++) {
    baseline = Math.max(baseline, await rssBytes(pid))
    await sleep(40)
  }
  let max = baseline
  let running = true
  const loop = (async () => {
    while (running) {
      try {
        max = Math.max(max, await rssBytes(pid))
      } catch {
        return
      }
      await sleep(25)
    }
  })()
  return {
    baseline,
    stop: async () => {
      running = false
      await loop
      return max
    },
  }
}

async function warmUp(t: ExecutionContext, port: number): Promise<void> {
  // Warm the path (connections, buffers, lazily initialized state) before the baseline.
  for (let i = 0; i < 3; i++) t.is((await get(port, '/warm')).status, 200)
  await new Promise<void>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/warm', agent: false }, (res) => {
      res.resume()
      res.on('end', resolve)
    })
    req.on('error', reject)
    req.end(Buffer.alloc(4 * 1024 * 1024))
  })
}

const report = (t: ExecutionContext, baseline: number, max: number): void => {
  const growth = max - baseline
  t.log(`proxy RSS baseline ${(baseline / 2 ** 20).toFixed(1)} MiB, max ${(max / 2 ** 20).toFixed(1)} MiB, growth ${(growth / 2 ** 20).toFixed(1)} MiB`)
  t.true(growth <= MAX_GROWTH, `proxy RSS grew by ${(growth / 2 ** 20).toFixed(1)} MiB (limit 16 MiB)`)
}

test.serial('upload: 256 MiB to a backend that pauses reading for 5 s; proxy RSS grows ≤ 16 MiB', async (t) => {
  let pausedFor = 0
  const backend = await startBackend(t, 'sink', (req, res) => {
    if (req.url === '/warm') {
      req.resume()
      req.on('end', () => res.end('warm'))
      return
    }
    req.pause()
    const started = Date.now()
    setTimeout(() => {
      pausedFor = Date.now() - started
      let n = 0
      req.on('data', (c: Buffer) => (n += c.length))
      req.on('end', () => res.end(String(n)))
      req.resume()
    }, PAUSE_MS)
  })
  const cli = await startCliProxy(t, ['--to', backend.address])
  await warmUp(t, cli.port)
  const sampler = await sampleRss(cli.pid)

  const result = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: cli.port, method: 'POST', path: '/upload', agent: false, headers: { 'content-length': TOTAL } },
      (res) => {
        let body = ''
        res.setEncoding('utf8').on('data', (c: string) => (body += c))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
        res.on('error', reject)
      },
    )
    req.on('error', reject)
    pipeline(source(), req).catch(reject)
  })
  const max = await sampler.stop()
  t.is(result.status, 200)
  t.is(result.body, String(TOTAL), 'every byte arrived')
  // libuv starts a timer from the event loop's cached time, which can be a few milliseconds
  // before the `Date.now()` taken in the same callback, so the pause measures up to that much short.
  t.true(pausedFor >= PAUSE_MS - 50, `the backend paused reading for ${pausedFor} ms`)
  report(t, sampler.baseline, max)
})

test.serial('download: 256 MiB to a client that pauses reading for 5 s; proxy RSS grows ≤ 16 MiB', async (t) => {
  const backend = await startBackend(t, 'source', (req, res) => {
    req.resume()
    if (req.url !== '/download') {
      req.on('end', () => res.end('warm'))
      return
    }
    res.writeHead(200, { 'content-length': TOTAL, 'content-type': 'application/octet-stream' })
    pipeline(source(), res).catch(() => {})
  })
  const cli = await startCliProxy(t, ['--to', backend.address])
  await warmUp(t, cli.port)
  const sampler = await sampleRss(cli.pid)

  const received = await new Promise<number>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: cli.port, path: '/download', agent: false }, (res) => {
      t.is(res.statusCode, 200)
      res.pause()
      let n = 0
      setTimeout(() => {
        res.on('data', (c: Buffer) => (n += c.length))
        res.on('end', () => resolve(n))
        res.resume()
      }, PAUSE_MS)
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
  const max = await sampler.stop()
  t.is(received, TOTAL, 'every byte arrived')
  report(t, sampler.baseline, max)
})
