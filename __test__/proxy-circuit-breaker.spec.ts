/**
 * Circuit breaking per service through the real proxy: with the backend holding every request
 * until the test lets go, requests past `maxRequests` (or past `maxPendingRequests` waiting for an
 * endpoint slot, or needing a connection past `maxConnections`) are answered 503 `overloaded` at once, nothing queues without bound, the
 * overflows are counted by limit, and none of it counts against the endpoint.
 */
import http from 'node:http'
import test from 'ava'
import { startBackend, type Handler } from './helpers/backend.js'
import { request } from './helpers/http.js'
import { simpleYaml, startProxy } from './helpers/proxy.js'
import { metricValue } from './helpers/tcp.js'

/** A backend that answers nothing until `release()`; `held` is how many it holds now. */
function holding(): { handler: Handler; held: () => number; release: () => void } {
  const waiting: http.ServerResponse[] = []
  let open = true
  return {
    handler: (req, res) => {
      req.resume()
      if (open) waiting.push(res)
      else res.end('ok')
    },
    held: () => waiting.length,
    release: () => {
      open = false
      for (const res of waiting.splice(0)) res.end('ok')
    },
  }
}

test('1,000 concurrent requests against maxRequests 10: 10 go through, 990 get 503 overloaded at once', async (t) => {
  const hold = holding()
  const backend = await startBackend(t, 'b', hold.handler)
  const { port, proxy } = await startProxy(t, simpleYaml([backend.address], { service: '    circuitBreaker: { maxRequests: 10 }\n' }))
  const n = 1000
  let refused = 0
  let releasedAt = 0
  const results = await Promise.all(
    Array.from({ length: n }, () =>
      request(port, { path: '/' }).then((res) => {
        if (res.status === 503) {
          refused += 1
          t.is(res.headers['meshproxy-error'], 'overloaded')
          // Every refusal is in while the 10 are still held: release them after the last, once
          // all 10 have reached the backend.
          if (refused === n - 10) {
            const until = Date.now() + 5000
            const poll = (): void => {
              if (hold.held() < 10 && Date.now() < until) return void setTimeout(poll, 5)
              releasedAt = hold.held()
              hold.release()
            }
            poll()
          }
        }
        return res.status
      }),
    ),
  )
  t.is(results.filter((s) => s === 200).length, 10)
  t.is(refused, n - 10)
  t.is(releasedAt, 10, 'the backend held exactly 10 at once')
  const text = proxy.metrics()
  t.is(metricValue(text, 'meshproxy_circuit_breaker_overflows_total{service="s",limit="requests"}'), n - 10)
  const e = (await proxy.stats()).endpoints[0]!
  t.is(e.failures, 0, 'overflows never count against the endpoint')
  t.is(e.state, 'healthy')
})

test('maxPendingRequests bounds the requests waiting for an endpoint slot; the rest are refused', async (t) => {
  const hold = holding()
  const backend = await startBackend(t, 'b', hold.handler)
  const service = '    maxInflightPerEndpoint: 2\n    circuitBreaker: { maxPendingRequests: 3 }\n'
  const { port, proxy } = await startProxy(t, simpleYaml([backend.address], { service }))
  const pending = Array.from({ length: 10 }, () => request(port, { path: '/' }).then((r) => r.status))
  // 2 in flight, 3 waiting, 5 refused: wait for the refusals, then let the backend answer.
  const until = Date.now() + 5000
  const overflows = (): number => metricValue(proxy.metrics(), 'meshproxy_circuit_breaker_overflows_total{service="s",limit="pending"}') ?? 0
  while ((overflows() < 5 || hold.held() < 2) && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 10))
  }
  t.is(hold.held(), 2)
  t.is(overflows(), 5)
  hold.release()
  const statuses = await Promise.all(pending)
  t.deepEqual(
    statuses.sort((a, b) => a - b),
    [200, 200, 200, 200, 200, 503, 503, 503, 503, 503],
  )
  t.is(metricValue(proxy.metrics(), 'meshproxy_circuit_breaker_overflows_total{service="s",limit="requests"}'), undefined)
})

test('maxConnections bounds the service\'s upstream connections over all its endpoints; pooled ones keep serving', async (t) => {
  const hold = holding()
  const a = await startBackend(t, 'a', hold.handler)
  const b = await startBackend(t, 'b', hold.handler)
  const { port, proxy } = await startProxy(t, simpleYaml([a.address, b.address], { service: '    circuitBreaker: { maxConnections: 3 }\n' }))
  const pending = Array.from({ length: 10 }, () => request(port, { path: '/' }).then((r) => [r.status, r.headers['meshproxy-error']] as const))
  const overflows = (): number => metricValue(proxy.metrics(), 'meshproxy_circuit_breaker_overflows_total{service="s",limit="connections"}') ?? 0
  const until = Date.now() + 5000
  while ((overflows() < 7 || hold.held() < 3) && Date.now() < until) await new Promise((r) => setTimeout(r, 10))
  t.is(hold.held(), 3, 'three requests reached the backends, one connection each')
  t.is(overflows(), 7)
  hold.release()
  const results = await Promise.all(pending)
  t.is(results.filter(([s]) => s === 200).length, 3)
  t.deepEqual(results.filter(([s]) => s !== 200), Array.from({ length: 7 }, () => [503, 'overloaded'] as const))
  for (let i = 0; i < 20; i++) t.is((await request(port, { path: '/' })).status, 200)
  t.is(a.connections + b.connections, 3, 'later requests reuse the three pooled connections')
  t.true((await proxy.stats()).endpoints.every((e) => e.failures === 0), 'refusals never count against an endpoint')
})

test('circuitBreaker settings: defaults, 0 = no limit, bad values refused', async (t) => {
  const { loadConfigText } = await import('../ts/index.js')
  const load = (cb: string) => loadConfigText(`listeners: [{ routes: [{ service: s }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1], circuitBreaker: ${cb} }]`)
  t.deepEqual(load('{}').config?.services[0]?.circuitBreaker, { maxRequests: 0, maxPendingRequests: 0, maxConnections: 0 })
  t.deepEqual(load('{ maxRequests: 100 }').config?.services[0]?.circuitBreaker, { maxRequests: 100, maxPendingRequests: 0, maxConnections: 0 })
  t.regex(load('{ maxRequests: -1 }').diagnostics[0]?.message ?? '', /maxRequests.*between 0/)
  t.is(load('{ maxConnections: 5 }').config?.services[0]?.circuitBreaker?.maxConnections, 5)
  t.regex(load('{ maxConnection: 5 }').diagnostics[0]?.message ?? '', /unknown field "maxConnection"/)
})
