/**
 * Retries through the real proxy, against endpoints that really fail: 5xx answers, refused
 * connections, hangs, and gRPC UNAVAILABLE. A retry goes to another endpoint, replays the body
 * (up to 64 KiB), happens only for idempotent methods and gRPC calls unless the route says
 * otherwise, stays within the attempt limit and the route's budget, and is counted by reason.
 */
import http from 'node:http'
import test from 'ava'
import * as grpc from '@grpc/grpc-js'
import { closedPort, startBackend, type Handler } from './helpers/backend.js'
import { request } from './helpers/http.js'
import { simpleYaml, startProxy } from './helpers/proxy.js'
import { metricValue } from './helpers/tcp.js'
import { loadConfigText } from '../ts/index.js'

/** Reads the body, then answers `status` with the backend's name and the body's length. */
const answering = (status: number): Handler => (req, res, backend) => {
  let n = 0
  req.on('data', (c: Buffer) => (n += c.length))
  req.on('end', () => {
    res.statusCode = status
    res.end(`${backend.name}:${n}`)
  })
}

/** The route's `retry` block (YAML under the route). */
function withRetry(endpoints: string[], retry: string, service = ''): string {
  return simpleYaml(endpoints, { service }).replace('        service: s', `        service: s\n        retry:\n${retry.replace(/^/gm, '          ')}`)
}

const retries = (text: string, reason: string): number =>
  metricValue(text, `meshproxy_retries_total{listener="main",route="all",service="s",reason="${reason}"}`) ?? 0

test('a GET answered 503 is retried on the other endpoint; the client sees the good answer', async (t) => {
  const bad = await startBackend(t, 'bad', answering(503))
  const good = await startBackend(t, 'good', answering(200))
  const { port, proxy } = await startProxy(t, withRetry([bad.address, good.address], 'limit: 1'))
  for (let i = 0; i < 6; i++) {
    const res = await request(port, { path: '/' })
    t.is(res.status, 200)
    t.is(res.body, 'good:0')
  }
  // The rotation is shared by first attempts and retries: each request starts on bad, and its
  // retry takes the next slot, good.
  t.is(bad.requests.length, 6)
  t.is(good.requests.length, 6)
  t.is(retries(proxy.metrics(), 'status'), 6)
  const stats = (await proxy.stats()).endpoints.find((e) => e.address === bad.address)!
  t.is(stats.failures, 6, 'each failed attempt counts against its endpoint')
})

test('a POST is not retried unless the route allows non-idempotent retries; then its body is replayed', async (t) => {
  const bad = await startBackend(t, 'bad', answering(503))
  const good = await startBackend(t, 'good', answering(200))
  const body = Buffer.alloc(10_000, 'x')
  const plain = await startProxy(t, withRetry([bad.address, good.address], 'limit: 1'))
  t.is((await request(plain.port, { method: 'POST', path: '/', body })).status, 503, 'POST to bad: not retried')

  const allowing = await startProxy(t, withRetry([bad.address, good.address], 'limit: 1\nnonIdempotent: true'))
  const res = await request(allowing.port, { method: 'POST', path: '/', body })
  t.is(res.status, 200)
  t.is(res.body, 'good:10000', 'the retry carried the whole body')
})

test('a body over 64 KiB is sent once and not retried', async (t) => {
  const bad = await startBackend(t, 'bad', answering(503))
  const good = await startBackend(t, 'good', answering(200))
  const { port } = await startProxy(t, withRetry([bad.address, good.address], 'limit: 1'))
  const res = await request(port, { method: 'PUT', path: '/', body: Buffer.alloc(100_000, 'y') })
  t.is(res.status, 503)
  t.is(res.body, 'bad:100000', 'the one attempt got the whole body')
  t.is((await request(port, { method: 'PUT', path: '/', body: Buffer.alloc(65_536, 'y') })).body, 'good:65536', '64 KiB exactly is replayable')
})

test('a refused connection is retried on another endpoint', async (t) => {
  const good = await startBackend(t, 'good', answering(200))
  const dead = `127.0.0.1:${await closedPort()}`
  const { port, proxy } = await startProxy(t, withRetry([dead, good.address], 'limit: 1'))
  for (let i = 0; i < 4; i++) t.is((await request(port, { path: '/' })).body, 'good:0')
  t.is(retries(proxy.metrics(), 'connect'), 4)
})

test('an attempt past the retry timeout is abandoned and retried; the route timeout bounds the whole', async (t) => {
  const hang = await startBackend(t, 'hang', (req) => req.resume())
  const good = await startBackend(t, 'good', answering(200))
  const { port, proxy } = await startProxy(t, withRetry([hang.address, good.address], 'limit: 2\ntimeout: 100ms'))
  const res = await request(port, { path: '/' })
  const second = await request(port, { path: '/' })
  t.deepEqual([res.status, second.status], [200, 200])
  t.is(retries(proxy.metrics(), 'timeout'), 2)

  // Both endpoints hang: the route's 300 ms ends it with 504, whatever the attempts left.
  const hang2 = await startBackend(t, 'hang2', (req) => req.resume())
  const both = await startProxy(t, withRetry([hang.address, hang2.address], 'limit: 10\ntimeout: 100ms', '').replace('        service: s\n', '        service: s\n        timeout: 300ms\n'))
  const started = Date.now()
  const r = await request(both.port, { path: '/' })
  t.is(r.status, 504)
  t.is(r.headers['meshproxy-error'], 'upstream-timeout')
  t.true(Date.now() - started < 1500, `ended by the route timeout (${Date.now() - started} ms)`)
})

test('attempts stop at the limit: every endpoint failing gives the last answer', async (t) => {
  const a = await startBackend(t, 'a', answering(500))
  const b = await startBackend(t, 'b', answering(502))
  const c = await startBackend(t, 'c', answering(503))
  const { port } = await startProxy(t, withRetry([a.address, b.address, c.address], 'limit: 2'))
  const res = await request(port, { path: '/' })
  t.is(res.status, 503, 'three attempts, the last one answered')
  t.is(a.requests.length + b.requests.length + c.requests.length, 3)
  t.deepEqual([a.requests.length, b.requests.length, c.requests.length], [1, 1, 1], 'each attempt on another endpoint')
})

test('the budget caps retries: an outage is not multiplied', async (t) => {
  const a = await startBackend(t, 'a', answering(500))
  const b = await startBackend(t, 'b', answering(500))
  const { port, proxy } = await startProxy(t, withRetry([a.address, b.address], 'limit: 3\nbudgetPercent: 20\nbudgetMinPerSecond: 1'))
  const n = 100
  for (let i = 0; i < n; i++) t.is((await request(port, { path: '/' })).status, 500)
  const attempts = a.requests.length + b.requests.length
  const sent = attempts - n
  // A floor of 1/s over the 10 s window (10), plus 20 % of the requests (20).
  t.true(sent > 0 && sent <= 30, `retries sent: ${sent}`)
  const text = proxy.metrics()
  t.is(retries(text, 'status'), sent)
  t.true((metricValue(text, 'meshproxy_retries_over_budget_total{listener="main",route="all",service="s"}') ?? 0) >= n - sent - 1)

  const none = await startProxy(t, withRetry([a.address, b.address], 'limit: 3\nbudgetPercent: 0\nbudgetMinPerSecond: 0'))
  const before = a.requests.length + b.requests.length
  for (let i = 0; i < 10; i++) await request(none.port, { path: '/' })
  t.is(a.requests.length + b.requests.length - before, 10, 'no budget: no retries')
})

test('gRPC: a call answered UNAVAILABLE is retried on the other endpoint', async (t) => {
  const passthrough = (b: Buffer): Buffer => b
  const definition = {
    Unary: { path: '/test.Echo/Unary', requestStream: false, responseStream: false, requestSerialize: passthrough, requestDeserialize: passthrough, responseSerialize: passthrough, responseDeserialize: passthrough },
  } satisfies grpc.ServiceDefinition
  const calls = { sick: 0, well: 0 }
  const serve = async (name: 'sick' | 'well'): Promise<string> => {
    const server = new grpc.Server()
    server.addService(definition, {
      Unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
        calls[name] += 1
        if (name === 'sick') cb({ code: grpc.status.UNAVAILABLE, details: 'draining' })
        else cb(null, Buffer.concat([Buffer.from('ok:'), call.request]))
      },
    })
    const p = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, port) => (e ? reject(e) : resolve(port))))
    t.teardown(() => server.forceShutdown())
    return `127.0.0.1:${p}`
  }
  const sick = await serve('sick')
  const well = await serve('well')
  const { address } = await startProxy(t, withRetry([sick, well], 'limit: 1', '    protocol: http2\n'))
  const Client = grpc.makeGenericClientConstructor(definition, 'Echo')
  const client = new Client(address, grpc.credentials.createInsecure()) as unknown as { Unary: (req: Buffer, cb: (e: grpc.ServiceError | null, r?: Buffer) => void) => void; close(): void }
  t.teardown(() => client.close())
  for (let i = 0; i < 4; i++) {
    const reply = await new Promise<Buffer>((resolve, reject) => client.Unary(Buffer.from(`m${i}`), (e, r) => (e ? reject(e) : resolve(r!))))
    t.is(reply.toString(), `ok:m${i}`)
  }
  t.is(calls.sick, 4)
  t.is(calls.well, 4)
})

test('bad retry settings are refused with their position and what is valid', (t) => {
  const bad = (retry: string): string[] =>
    loadConfigText(`listeners:\n  - routes:\n      - service: s\n        retry: ${retry}\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]`, { file: 'm.yaml' }).diagnostics.map(
      (d) => `${d.line}:${d.column} ${d.message}`,
    )
  t.deepEqual(bad('{ limit: 0 }'), ['4:25 "limit" in route retry must be between 1 and 10, got 0'])
  t.deepEqual(bad('{ grpc: unavailabel }'), ['4:24 invalid "grpc" in route retry: "unavailabel" is not a gRPC status'])
  t.deepEqual(bad('{ tries: 2 }'), ['4:18 unknown field "tries" in route retry'])
  const ok = loadConfigText('listeners: [{ routes: [{ service: s, retry: {} }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]')
  t.deepEqual(ok.config?.listeners[0]?.routes[0]?.retry, {
    limit: 1,
    http: '500-599',
    grpc: 'cancelled,deadline-exceeded,resource-exhausted,internal,unavailable',
    timeoutMs: 0,
    nonIdempotent: false,
    budgetPercent: 20,
    budgetMinPerSecond: 10,
  })
})

test('one of three endpoints killed under steady load: with retries and failure accrual, no GET fails', async (t) => {
  const a = await startBackend(t, 'a', answering(200))
  const b = await startBackend(t, 'b', answering(200))
  const c = await startBackend(t, 'c', answering(200))
  // Retries carry the requests the dead endpoint fails until failure accrual ejects it; without
  // the ejection a third of all requests would need a retry, past the budget's 20 %.
  const accrual = '    failureAccrual: { consecutiveFailures: 3, minPenalty: 1s, maxPenalty: 10s }\n'
  const { port, proxy } = await startProxy(t, withRetry([a.address, b.address, c.address], 'limit: 2', accrual))
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 })
  t.teardown(() => agent.destroy())
  let running = true
  let sent = 0
  const failed: string[] = []
  const load = Promise.all(
    Array.from({ length: 16 }, async () => {
      while (running) {
        sent++
        const res = await request(port, { path: '/', agent })
        if (res.status !== 200) failed.push(`${res.status} ${res.headers['meshproxy-error']}`)
      }
    }),
  )
  await new Promise((r) => setTimeout(r, 300))
  // Killed: its listener closed and every open connection destroyed mid-exchange.
  c.server.close()
  c.server.closeAllConnections()
  await new Promise((r) => setTimeout(r, 500))
  running = false
  await load
  t.deepEqual(failed, [], `${sent} requests`)
  t.true(sent > 100, `${sent} requests under load`)
  const text = proxy.metrics()
  t.true(retries(text, 'connect') + retries(text, 'reset') > 0, 'requests to the killed endpoint were retried')
  const dead = (await proxy.stats()).endpoints.find((e) => e.address === c.address)!
  t.true(['ejected', 'probing'].includes(dead.state), `the dead endpoint is out: ${dead.state}`)
})
