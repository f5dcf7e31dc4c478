/**
 * The HTTP/1.1 stale-connection retry: a request sent on a pooled keep-alive connection that the
 * upstream closes as the request arrives, before any byte of a response. The proxy re-sends it
 * once on a fresh connection only when that is safe and the close is most likely the upstream's
 * keep-alive timeout: the connection had been idle at least 250 ms (REPLAY_AFTER_IDLE), the
 * method is idempotent and the body is empty. Anything else is 502 `upstream-reset`: the upstream
 * may have processed the request. Retries show in `stats().endpoints[].retries` and
 * `meshproxy_upstream_retries_total{endpoint}`.
 *
 * The upstream is a raw TCP server speaking HTTP/1.1 by hand, so when and how it closes is exact.
 */
import test, { type ExecutionContext } from 'ava'
import type { Proxy } from '../ts/index.js'
import { onRequestHeads } from './helpers/backend.js'
import { get, request, sleep, type Res } from './helpers/http.js'
import { simpleYaml, startProxy } from './helpers/proxy.js'
import { metricValue, startTcpServer, tcpConnect, type TcpServer } from './helpers/tcp.js'

/** What the upstream does with the `n`-th request (1-based) on its `conn`-th connection (1-based). */
type Action = 'answer' | 'close' | 'reset'

interface Seen {
  conn: number
  /** The request line, e.g. `GET /two HTTP/1.1`. */
  line: string
}

interface RawUpstream {
  server: TcpServer
  seen: Seen[]
}

/**
 * Answers `200` with body `conn<N>` (keep-alive), or on `close` ends the connection without a
 * byte (FIN), or on `reset` aborts it (RST). `idleCloseMs`: also close a connection that has been
 * idle that long, as Node's keepAliveTimeout does.
 */
async function rawUpstream(t: ExecutionContext, decide: (conn: number, n: number) => Action, idleCloseMs?: number): Promise<RawUpstream> {
  const seen: Seen[] = []
  let conns = 0
  const server = await startTcpServer(
    t,
    (socket) => {
      const conn = ++conns
      let n = 0
      let idleTimer: NodeJS.Timeout | undefined
      const armIdle = () => {
        if (idleCloseMs === undefined) return
        clearTimeout(idleTimer)
        idleTimer = setTimeout(() => socket.end(), idleCloseMs)
      }
      socket.on('close', () => clearTimeout(idleTimer))
      armIdle()
      onRequestHeads(socket, (head) => {
        // Bodies are not parsed: every request with a body here is the last on its connection.
        const requestLine = head.split('\r\n')[0] ?? ''
        n += 1
        seen.push({ conn, line: requestLine })
        const action = decide(conn, n)
        if (action === 'close') {
          socket.destroy() // everything sent was read: a plain FIN
          return
        }
        if (action === 'reset') {
          socket.resetAndDestroy()
          return
        }
        const body = `conn${conn}`
        const isHead = requestLine.startsWith('HEAD ')
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\nConnection: keep-alive\r\n\r\n${isHead ? '' : body}`)
        armIdle()
      })
    },
    { allowHalfOpen: false },
  )
  return { server, seen }
}

/** Closes (FIN or RST) the first connection at its second request; answers everything else. */
const closeSecondOnFirst = (how: 'close' | 'reset') => (conn: number, n: number): Action => (conn === 1 && n === 2 ? how : 'answer')

/** The endpoint's retry count, checked to be the same in stats(), metrics() and the admin /metrics. */
async function retriesOf(t: ExecutionContext, proxy: Proxy, adminPort: number, address: string): Promise<number> {
  const ep = (await proxy.stats()).endpoints.find((e) => e.address === address)!
  const sample = `meshproxy_upstream_retries_total{endpoint="${address}"}`
  const fromLib = metricValue(proxy.metrics(), sample)
  const fromAdmin = metricValue((await get(adminPort, '/metrics')).body, sample)
  t.is(fromLib, ep.retries, 'metrics() agrees with stats()')
  t.is(fromAdmin, ep.retries, 'admin /metrics agrees with stats()')
  return ep.retries
}

for (const how of ['close', 'reset'] as const) {
  test(`GET on a pooled connection idle 400 ms that the upstream ${how === 'close' ? 'closes (FIN)' : 'resets (RST)'} as the request arrives: replayed once on a fresh connection, 200`, async (t) => {
    const up = await rawUpstream(t, closeSecondOnFirst(how))
    const { proxy, port, adminPort } = await startProxy(t, simpleYaml([up.server.address], { admin: true }))
    const first = await get(port, '/one')
    t.is(first.status, 200)
    t.is(first.body, 'conn1')
    await sleep(400) // idle ≥ 250 ms in the pool
    const second = await get(port, '/two')
    t.is(second.status, 200, `${second.status} ${second.headers['meshproxy-error'] ?? ''}`)
    t.is(second.body, 'conn2', 'served on a fresh connection')
    t.deepEqual(up.seen, [
      { conn: 1, line: 'GET /one HTTP/1.1' },
      { conn: 1, line: 'GET /two HTTP/1.1' },
      { conn: 2, line: 'GET /two HTTP/1.1' },
    ])
    t.is(up.server.connections, 2)
    t.is(await retriesOf(t, proxy, adminPort, up.server.address), 1)
    const ep = (await proxy.stats()).endpoints[0]!
    t.is(ep.failures, 0, 'a successful replay is not a failure')
    t.is(ep.openedConnections, 2)
  })
}

/** Sends `method` (with `body`) after a GET, 400 ms later, on the pooled connection the upstream closes at its arrival. */
async function afterIdle(t: ExecutionContext, method: string, body?: string): Promise<{ res: Res; up: RawUpstream; retries: number; failures: number }> {
  const up = await rawUpstream(t, closeSecondOnFirst('close'))
  const { proxy, port, adminPort } = await startProxy(t, simpleYaml([up.server.address], { admin: true }))
  t.is((await get(port, '/one')).status, 200)
  await sleep(400)
  const res = await request(port, { method, path: '/two', ...(body !== undefined ? { body, headers: { 'content-length': Buffer.byteLength(body) } } : { headers: { 'content-length': 0 } }) })
  const retries = await retriesOf(t, proxy, adminPort, up.server.address)
  const failures = (await proxy.stats()).endpoints[0]!.failures
  return { res, up, retries, failures }
}

for (const method of ['HEAD', 'DELETE', 'OPTIONS']) {
  test(`${method} without a body, pooled connection idle 400 ms closed as it arrives: replayed (idempotent), 200`, async (t) => {
    const { res, up, retries } = await afterIdle(t, method)
    t.is(res.status, 200, `${res.status} ${res.headers['meshproxy-error'] ?? ''}`)
    t.is(retries, 1)
    t.is(up.server.connections, 2)
    t.deepEqual(
      up.seen.map((s) => `${s.conn} ${s.line}`),
      ['1 GET /one HTTP/1.1', `1 ${method} /two HTTP/1.1`, `2 ${method} /two HTTP/1.1`],
    )
  })
}

for (const [method, body, why] of [
  ['POST', 'payload', 'not idempotent, with a body'],
  ['POST', undefined, 'not idempotent, even without a body'],
  ['PATCH', 'payload', 'not idempotent'],
  ['PUT', 'payload', 'idempotent, but its body was already sent'],
] as const) {
  test(`${method} ${body === undefined ? 'without a body' : 'with a body'} on a pooled connection idle 400 ms closed as it arrives: not replayed (${why}), 502 upstream-reset`, async (t) => {
    const { res, up, retries, failures } = await afterIdle(t, method, body)
    t.is(res.status, 502)
    t.is(res.headers['meshproxy-error'], 'upstream-reset')
    t.is(retries, 0)
    t.is(failures, 1)
    t.is(up.server.connections, 1, 'no fresh connection was opened for a replay')
    t.deepEqual(
      up.seen.map((s) => `${s.conn} ${s.line}`),
      ['1 GET /one HTTP/1.1', `1 ${method} /two HTTP/1.1`],
    )
  })
}

test('GET on a pooled connection used a moment ago (idle < 250 ms) that the upstream closes as it arrives: not replayed, 502 upstream-reset', async (t) => {
  // A close right after the connection was used is more likely a crash while processing the
  // request than a keep-alive timeout, so even a GET is not replayed. The client pipelines both
  // requests on one connection, so the second goes up the moment the first's response has ended,
  // with no client-side pause that a loaded machine could stretch past 250 ms.
  const up = await rawUpstream(t, closeSecondOnFirst('close'))
  const { proxy, port, adminPort } = await startProxy(t, simpleYaml([up.server.address], { admin: true }))
  const c = await tcpConnect(t, port)
  // The second asks the proxy to close the client connection after answering: its EOF marks the end.
  c.socket.write('GET /one HTTP/1.1\r\nHost: stale.test\r\n\r\nGET /two HTTP/1.1\r\nHost: stale.test\r\nConnection: close\r\n\r\n')
  await c.received.end(5000)
  const text = c.received.text()
  const statuses = [...text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]))
  t.deepEqual(statuses, [200, 502], text)
  t.regex(text, /meshproxy-error: upstream-reset/i)
  t.is(up.server.connections, 1, 'no fresh connection was opened for a replay')
  t.deepEqual(
    up.seen.map((s) => `${s.conn} ${s.line}`),
    ['1 GET /one HTTP/1.1', '1 GET /two HTTP/1.1'],
  )
  t.is(await retriesOf(t, proxy, adminPort, up.server.address), 0)
})

test('an upstream that closes a pooled connection while it is idle (its keep-alive timeout): the next request goes on a fresh connection, 200, no retry needed', async (t) => {
  const up = await rawUpstream(t, () => 'answer', 300)
  const { proxy, port, adminPort } = await startProxy(t, simpleYaml([up.server.address], { admin: true }))
  t.is((await get(port, '/one')).body, 'conn1')
  await sleep(700) // the upstream closed it at 300 ms
  const res = await get(port, '/two')
  t.is(res.status, 200)
  t.is(res.body, 'conn2')
  t.deepEqual(
    up.seen.map((s) => `${s.conn} ${s.line}`),
    ['1 GET /one HTTP/1.1', '2 GET /two HTTP/1.1'],
    'the closed connection was discarded at checkout, before the request was written to it',
  )
  t.is(await retriesOf(t, proxy, adminPort, up.server.address), 0)
  t.is((await proxy.stats()).endpoints[0]!.failures, 0)
})
