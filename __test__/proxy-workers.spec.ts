/**
 * The multi-worker data path: accepted connections are dealt round-robin to the worker threads
 * (`stats().workers[i].connections`), every worker serves the connections it was dealt, and each
 * worker keeps its own upstream pools — so requests sent one at a time, spread over connections
 * that landed on W workers, use exactly W upstream connections (one pool each), where one
 * worker uses one.
 */
import test from 'ava'
import type { ExecutionContext } from 'ava'
import type http2 from 'node:http2'
import type { Proxy } from '../ts/index.js'
import { startBackend } from './helpers/backend.js'
import { h2connect, h2request, startH2Backend } from './helpers/h2.js'
import { load, startProxy } from './helpers/proxy.js'
import { tcpConnect, type TcpClient } from './helpers/tcp.js'

function config(endpoint: string, protocol: 'http1' | 'http2') {
  return load(`
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - { name: all, service: s }
services:
  - name: s
    protocol: ${protocol}
    endpoints: [${endpoint}]
`)
}

/** One request on a raw HTTP/1.1 keep-alive connection; reads exactly one response (Content-Length or chunked). */
async function h1exchange(c: TcpClient, path: string): Promise<{ status: number; body: string }> {
  const from = c.received.length
  c.socket.write(`GET ${path} HTTP/1.1\r\nHost: workers.test\r\n\r\n`)
  let parsed: { status: number; body: string } | undefined
  const complete = (): boolean => {
    const text = c.received.data.subarray(from).toString('latin1')
    const end = text.indexOf('\r\n\r\n')
    if (end === -1) return false
    const head = text.slice(0, end)
    const rest = text.slice(end + 4)
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0)
    const length = /\r\ncontent-length: *(\d+)/i.exec(head)
    if (length) {
      if (rest.length < Number(length[1])) return false
      parsed = { status, body: rest.slice(0, Number(length[1])) }
      return true
    }
    if (!/\r\ntransfer-encoding: *chunked/i.test(head) || !rest.endsWith('0\r\n\r\n')) return false
    let body = ''
    for (let at = 0; ; ) {
      const nl = rest.indexOf('\r\n', at)
      const size = parseInt(rest.slice(at, nl), 16)
      if (size === 0) break
      body += rest.slice(nl + 2, nl + 2 + size)
      at = nl + 2 + size + 2
    }
    parsed = { status, body }
    return true
  }
  await c.received.waitFor(complete, `the response to ${path}`)
  return parsed!
}

/** A client connection of either kind, sending one request at a time. */
interface Client {
  kind: 'http1' | 'h2c'
  send(path: string): Promise<{ status: number; body: string }>
}

async function openClient(t: ExecutionContext, kind: Client['kind'], port: number, address: string): Promise<Client> {
  if (kind === 'http1') {
    const c = await tcpConnect(t, port)
    return { kind, send: (path) => h1exchange(c, path) }
  }
  const session: http2.ClientHttp2Session = h2connect(t, address)
  return { kind, send: (path) => h2request(session, { ':path': path }) }
}

const dealt = async (proxy: Proxy): Promise<number[]> => (await proxy.stats()).workers.map((w) => w.connections)

/** What round-robin gives: N connections over W workers, in worker order from the first. */
const roundRobin = (n: number, w: number): number[] => Array.from({ length: w }, (_, i) => Math.ceil((n - i) / w))

for (const upstream of ['http1', 'http2'] as const) {
  for (const workers of [1, 2, 3]) {
    test(`${workers} worker(s), ${upstream} upstream: 7 client connections (HTTP/1.1 and h2c) dealt round-robin, all served, one upstream connection per worker`, async (t) => {
      const h1 = upstream === 'http1' ? await startBackend(t, 'b', undefined, { keepAliveTimeout: 60_000 }) : undefined
      const h2 = upstream === 'http2' ? await startH2Backend(t, 'b') : undefined
      const expectedBody = upstream === 'http1' ? 'b' : 'b:0'
      const { proxy, port, address } = await startProxy(t, config((h1 ?? h2)!.address, upstream), {}, { workers })
      t.deepEqual(await dealt(proxy), Array.from({ length: workers }, () => 0))

      // Connections opened one after the other, each serving a request before the next opens:
      // the deal stays even (max - min ≤ 1) at every step.
      const N = 7
      const clients: Client[] = []
      for (let i = 0; i < N; i++) {
        const client = await openClient(t, i % 2 === 0 ? 'http1' : 'h2c', port, address)
        clients.push(client)
        const res = await client.send(`/open/${i}`)
        t.is(res.status, 200, `connection ${i} (${client.kind})`)
        t.is(res.body, expectedBody)
        const now = await dealt(proxy)
        t.is(
          now.reduce((a, b) => a + b, 0),
          i + 1,
          `after ${i + 1} connections: ${JSON.stringify(now)}`,
        )
        t.true(Math.max(...now) - Math.min(...now) <= 1, `after ${i + 1} connections the deal is uneven: ${JSON.stringify(now)}`)
      }
      // Three more rounds, one request at a time, over every connection.
      for (let round = 0; round < 3; round++) {
        for (const [i, client] of clients.entries()) {
          const res = await client.send(`/round/${round}/${i}`)
          t.is(res.status, 200, `round ${round}, connection ${i} (${client.kind})`)
          t.is(res.body, expectedBody)
        }
      }
      const stats = await proxy.stats()
      const counts = stats.workers.map((w) => w.connections)
      t.is(counts.length, workers)
      t.deepEqual(
        [...counts].sort((a, b) => b - a),
        roundRobin(N, workers),
        `connections per worker: ${JSON.stringify(counts)}`,
      )
      t.true(
        counts.every((n) => n > 0),
        'every worker was dealt connections',
      )
      t.is(stats.downstreamConnections, N, 'no client connection was closed or reopened')
      // Each worker served its connections' requests through its own pool: one upstream
      // connection per worker (with a shared pool, requests one at a time would need one).
      const upstreamConnections = h1 ? h1.connections : h2!.sessions
      t.is(upstreamConnections, workers, `upstream connections opened: ${upstreamConnections}`)
      const ep = stats.endpoints[0]!
      t.is(ep.openedConnections, workers)
      t.is(ep.requests, 4 * N)
      t.is(ep.failures, 0)
      t.is(h1 ? h1.requests.length : h2!.streams, 4 * N)
    })
  }
}

test('3 workers: 12 h2c connections opened at once are dealt 4 each, and concurrent requests on all of them succeed', async (t) => {
  const backend = await startBackend(t, 'b', undefined, { keepAliveTimeout: 60_000 })
  const { proxy, port, address } = await startProxy(t, config(backend.address, 'http1'), {}, { workers: 3 })
  const clients = await Promise.all(Array.from({ length: 12 }, () => openClient(t, 'h2c', port, address)))
  const results = await Promise.all(clients.flatMap((c, i) => Array.from({ length: 5 }, (_, j) => c.send(`/c${i}/r${j}`))))
  t.is(results.length, 60)
  t.true(
    results.every((r) => r.status === 200 && r.body === 'b'),
    JSON.stringify(results.filter((r) => r.status !== 200)),
  )
  t.deepEqual(await dealt(proxy), [4, 4, 4])
  t.is(backend.requests.length, 60)
  t.true(backend.connections >= 3, `each worker opened its own upstream connection(s): ${backend.connections}`)
})
