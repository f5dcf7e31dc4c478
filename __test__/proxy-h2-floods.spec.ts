/**
 * HTTP/2 control-frame floods, tested as the rapid-reset test is: a raw client writes frames by
 * hand at a proxy running as a CLI child process, and the proxy's CPU time and resident memory
 * (from /proc) must stay bounded while it keeps serving another client.
 * - CONTINUATION flood (the 2024 CVE family, e.g. CVE-2024-27316): one header block that never
 *   ends is cut off with GOAWAY ENHANCE_YOUR_CALM after a bounded number of frames.
 * - PING and SETTINGS floods from a client that never reads: the server keeps one answer pending
 *   and stops reading, so memory stays flat; a client that reads gets every answer, at a CPU
 *   cost per frame.
 * - Empty DATA frames (CVE-2019-9518): a stream of DATA frames too small to carry a body is
 *   cut off with GOAWAY ENHANCE_YOUR_CALM.
 */
import net from 'node:net'
import test, { type ExecutionContext } from 'ava'
import { startBackend } from './helpers/backend.js'
import { cpuSeconds, rssBytes, startCliProxy } from './helpers/cli.js'
import { stillServes } from './helpers/h2.js'

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')
const DATA = 0x0
const HEADERS = 0x1
const SETTINGS = 0x4
const PING = 0x6
const GOAWAY = 0x7
const CONTINUATION = 0x9
const END_HEADERS = 0x4
const ENHANCE_YOUR_CALM = 0xb

function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9)
  head.writeUIntBE(payload.length, 0, 3)
  head[3] = type
  head[4] = flags
  head.writeUInt32BE(stream & 0x7fffffff, 5)
  return Buffer.concat([head, payload])
}

/** A request head in HPACK from the static table alone: :method (GET or POST), :scheme http, :path /, :authority. */
function requestBlock(method: 'GET' | 'POST'): Buffer {
  const authority = Buffer.from('127.0.0.1')
  return Buffer.concat([Buffer.from([method === 'GET' ? 0x82 : 0x83, 0x86, 0x84, 0x01, authority.length]), authority])
}

interface Raw {
  socket: net.Socket
  /** The first GOAWAY's error code, or null if the connection ended without one. */
  goaway: Promise<number | null>
  /** Writes `buf` `times` times, waiting for the socket to drain; stops when it closes. */
  flood(buf: Buffer, times: number): Promise<number>
}

async function rawClient(t: ExecutionContext, port: number, { read = true } = {}): Promise<Raw> {
  const socket = net.connect(port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()))
  let buffered = Buffer.alloc(0)
  const goaway = new Promise<number | null>((resolve) => {
    socket.on('close', () => resolve(null))
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk])
      while (buffered.length >= 9) {
        const len = buffered.readUIntBE(0, 3)
        if (buffered.length < 9 + len) break
        if (buffered[3] === GOAWAY) resolve(buffered.readUInt32BE(9 + 4))
        buffered = buffered.subarray(9 + len)
      }
    })
  })
  if (!read) socket.pause()
  socket.write(Buffer.concat([PREFACE, frame(SETTINGS, 0, 0)]))
  const flood = async (buf: Buffer, times: number): Promise<number> => {
    // Batches of frames per write, so the client is not the bottleneck.
    const batch = Buffer.concat(Array.from({ length: 256 }, () => buf))
    let sent = 0
    while (sent < times && !socket.destroyed && socket.writable) {
      const ok = socket.write(batch)
      sent += 256
      if (!ok) {
        const drained = await Promise.race([
          new Promise<boolean>((r) => socket.once('drain', () => r(true))),
          new Promise<boolean>((r) => socket.once('close', () => r(false))),
          new Promise<boolean>((r) => setTimeout(() => r(false), 2000)),
        ])
        if (!drained) break
      }
    }
    return sent
  }
  return { socket, goaway, flood }
}

/**
 * The proxy ended the flood: a GOAWAY ENHANCE_YOUR_CALM, or the close that follows it (a client
 * still writing gets a reset, which may drop the GOAWAY before it is read), well before the
 * client wrote all `total` frames (18 MB and more: more than the sockets' buffers hold).
 */
async function cutOff(t: ExecutionContext, client: Raw, sent: number, total: number): Promise<void> {
  const code = await Promise.race([client.goaway, new Promise<number>((r) => setTimeout(() => r(-1), 10_000))])
  t.not(code, -1, `the connection is still open after ${sent} frames`)
  t.true(code === ENHANCE_YOUR_CALM || code === null, `GOAWAY with code ${code}`)
  t.true(sent < total, `the proxy read all ${sent} frames`)
}

async function proxyFor(t: ExecutionContext) {
  // Answers once the request body has ended: a flooded request stays open.
  const backend = await startBackend(t, 'b', (req, res) => {
    req.resume()
    req.on('end', () => res.end('done'))
  })
  return startCliProxy(t, ['--to', backend.address])
}

test('a CONTINUATION flood gets a GOAWAY ENHANCE_YOUR_CALM with bounded CPU and memory', async (t) => {
  const proxy = await proxyFor(t)
  const [cpu, rss] = [cpuSeconds(proxy.pid), await rssBytes(proxy.pid)]
  const client = await rawClient(t, proxy.port)
  client.socket.write(frame(HEADERS, 0, 1, requestBlock('GET')))
  // Empty CONTINUATION frames: the header block grows by nothing, only the frame count does.
  const sent = await client.flood(frame(CONTINUATION, 0, 1), 2_000_000)
  await cutOff(t, client, sent, 2_000_000)
  const spent = cpuSeconds(proxy.pid) - cpu
  const grew = (await rssBytes(proxy.pid)) - rss
  t.log(`${sent} frames written before the GOAWAY; CPU ${spent.toFixed(2)} s; RSS +${(grew / 2 ** 20).toFixed(1)} MiB`)
  t.true(spent < 2, `the proxy spent ${spent}s of CPU`)
  t.true(grew < 32 * 2 ** 20, `RSS grew ${grew} bytes`)
  await stillServes(t, proxy.port)
})

test('a header block over the size limit in CONTINUATION frames is refused without buffering it', async (t) => {
  const proxy = await proxyFor(t)
  const rss = await rssBytes(proxy.pid)
  const client = await rawClient(t, proxy.port)
  client.socket.write(frame(HEADERS, 0, 1, requestBlock('GET')))
  // 1 KiB of literal header fields per frame (never-indexed, new name), never ending.
  const field = Buffer.concat([Buffer.from([0x10, 0x01, 0x78, 0x7f, 0x81, 0x07]), Buffer.alloc(1024 - 6 + 1 - 7, 0x61)])
  const sent = await client.flood(frame(CONTINUATION, 0, 1, field), 200_000)
  const code = await Promise.race([client.goaway, new Promise<number>((r) => setTimeout(() => r(-1), 10_000))])
  t.not(code, -1, `no GOAWAY or close after ${sent} frames`)
  const grew = (await rssBytes(proxy.pid)) - rss
  t.log(`${sent} frames of 1 KiB written; GOAWAY code ${code}; RSS +${(grew / 2 ** 20).toFixed(1)} MiB`)
  t.true(sent < 200_000, `the proxy read all ${sent} KiB of one header block`)
  t.true(grew < 32 * 2 ** 20, `RSS grew ${grew} bytes`)
  await stillServes(t, proxy.port)
})

for (const [name, make] of [
  ['PING', () => frame(PING, 0, 0, Buffer.alloc(8, 7))],
  ['SETTINGS', () => frame(SETTINGS, 0, 0)],
] as const) {
  test(`a ${name} flood from a client that never reads keeps memory flat`, async (t) => {
    const proxy = await proxyFor(t)
    const [cpu, rss] = [cpuSeconds(proxy.pid), await rssBytes(proxy.pid)]
    const client = await rawClient(t, proxy.port, { read: false })
    // Until the socket stops taking them: the proxy stops reading once its answers back up.
    const sent = await client.flood(make(), 2_000_000)
    const spent = cpuSeconds(proxy.pid) - cpu
    const grew = (await rssBytes(proxy.pid)) - rss
    t.log(`${sent} ${name} frames written before the proxy stopped reading; CPU ${spent.toFixed(2)} s; RSS +${(grew / 2 ** 20).toFixed(1)} MiB`)
    t.true(sent < 2_000_000, `the proxy read all ${sent} frames without their answers being read`)
    t.true(grew < 32 * 2 ** 20, `RSS grew ${grew} bytes`)
    t.true(spent < 3, `the proxy spent ${spent}s of CPU`)
    await stillServes(t, proxy.port)
  })
}

test('a flood of empty DATA frames on an open request gets a GOAWAY ENHANCE_YOUR_CALM', async (t) => {
  const proxy = await proxyFor(t)
  const client = await rawClient(t, proxy.port)
  client.socket.write(frame(HEADERS, END_HEADERS, 1, requestBlock('POST')))
  const [cpu, rss] = [cpuSeconds(proxy.pid), await rssBytes(proxy.pid)]
  const sent = await client.flood(frame(DATA, 0, 1), 2_000_000)
  await cutOff(t, client, sent, 2_000_000)
  const spent = cpuSeconds(proxy.pid) - cpu
  const grew = (await rssBytes(proxy.pid)) - rss
  t.log(`${sent} empty DATA frames written; CPU ${spent.toFixed(2)} s; RSS +${(grew / 2 ** 20).toFixed(1)} MiB`)
  t.true(spent < 2, `the proxy spent ${spent}s of CPU`)
  t.true(grew < 16 * 2 ** 20, `RSS grew ${grew} bytes`)
  await stillServes(t, proxy.port)
})
