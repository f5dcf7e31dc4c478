/**
 * Active health checks through the real proxy, against backends whose health endpoint really
 * fails, hangs or goes away: an endpoint failing its check gets no new requests (readiness) and
 * comes back on its own when it passes again; TCP services are checked by connecting; the state
 * shows in `stats()`, `/endpoints` and `/metrics`; a reload that removes the check makes every
 * endpoint ready again. Intervals are short (100 ms) and the assertions wait for the state, not
 * for a time.
 */
import http2 from 'node:http2'
import net from 'node:net'
import test from 'ava'
import type { ExecutionContext } from 'ava'
import { counts, listen, startBackend, startBackends, type Handler } from './helpers/backend.js'
import { listenH2 } from './helpers/h2.js'
import { get, sleep } from './helpers/http.js'
import { load, simpleYaml, startProxy } from './helpers/proxy.js'
import { metricValue, tcpConnect } from './helpers/tcp.js'
import { loadConfigText, type EndpointState, type Proxy } from '../ts/index.js'

/** `/healthz` answers 200 while `healthy.value`, else 503 (or never, when `hang`); other paths the backend's name. */
function withHealth(healthy: { value: boolean; hang?: boolean }): Handler {
  return (req, res, backend) => {
    req.resume()
    if (req.url === '/healthz') {
      if (!healthy.value && healthy.hang) return
      res.statusCode = healthy.value ? 200 : 503
      res.end(healthy.value ? 'ok' : 'sick')
      return
    }
    res.end(backend.name)
  }
}

const check = (more = ''): string => `
    healthCheck:
      path: /healthz
      interval: 100ms
      timeout: 80ms
      healthyThreshold: 2
      unhealthyThreshold: 2${more}`

async function stateOf(proxy: Proxy, address: string): Promise<EndpointState | undefined> {
  return (await proxy.stats()).endpoints.find((e) => e.address === address)?.state
}

/** Waits (up to 5 s) until `address`'s state is `want`. */
async function waitState(t: ExecutionContext, proxy: Proxy, address: string, want: EndpointState): Promise<void> {
  const until = Date.now() + 5000
  while (Date.now() < until) {
    if ((await stateOf(proxy, address)) === want) return
    await sleep(20)
  }
  t.fail(`${address} never became ${want} (is ${await stateOf(proxy, address)})`)
}

test('an endpoint failing its HTTP check gets no requests, and comes back on its own when it passes again', async (t) => {
  const healthy = { value: true }
  const b = await startBackends(t, ['a', 'b'], withHealth({ value: true }))
  const c = await startBackend(t, 'c', withHealth(healthy))
  const { proxy, port } = await startProxy(t, simpleYaml([b.a!.address, b.b!.address, c.address], { service: check() }))
  await sleep(150)
  t.is(await stateOf(proxy, c.address), 'healthy')
  const probe = c.requests.find((r) => r.url === '/healthz')
  t.truthy(probe, 'c was probed')
  t.is(probe?.method, 'GET')
  t.is(probe?.headers['user-agent'], 'meshproxy-health-check')
  t.is(probe?.headers.host, c.address)

  healthy.value = false
  await waitState(t, proxy, c.address, 'unready')
  const served = (): number => c.requests.filter((r) => r.url !== '/healthz').length
  const before = served()
  for (let i = 0; i < 30; i++) t.is((await get(port, '/')).status, 200)
  t.is(served(), before, 'no request reached the unready endpoint')

  healthy.value = true
  await waitState(t, proxy, c.address, 'healthy')
  const bodies: string[] = []
  for (let i = 0; i < 9; i++) bodies.push((await get(port, '/')).body)
  t.is(bodies.filter((x) => x === 'c').length, 3, `round-robin includes c again: ${bodies.join('')}`)
  // Probes are not requests: the request counters and the failures are the proxy's traffic only.
  const e = (await proxy.stats()).endpoints.find((x) => x.address === c.address)!
  t.is(e.failures, 0)
})

test('a hanging health endpoint fails its check by the timeout', async (t) => {
  const healthy = { value: true, hang: true }
  const a = await startBackend(t, 'a', withHealth({ value: true }))
  const c = await startBackend(t, 'c', withHealth(healthy))
  const { proxy } = await startProxy(t, simpleYaml([a.address, c.address], { service: check() }))
  healthy.value = false
  await waitState(t, proxy, c.address, 'unready')
  healthy.value = true
  await waitState(t, proxy, c.address, 'healthy')
  t.pass()
})

test('expectedStatuses decides what passes', async (t) => {
  const a = await startBackend(t, 'a', withHealth({ value: true }))
  const c = await startBackend(t, 'c', withHealth({ value: false }))
  const { proxy } = await startProxy(t, simpleYaml([a.address, c.address], { service: check('\n      expectedStatuses: 2xx,503') }))
  await sleep(400)
  t.is(await stateOf(proxy, c.address), 'healthy', '503 is expected here')
  t.is(await stateOf(proxy, a.address), 'healthy')
})

test('an endpoint that dies is unready within the thresholds, and ready again once it is back', async (t) => {
  const a = await startBackend(t, 'a', withHealth({ value: true }))
  const c = await startBackend(t, 'c', withHealth({ value: true }))
  const { proxy, port } = await startProxy(t, simpleYaml([a.address, c.address], { service: check() }))
  await c.close()
  await waitState(t, proxy, c.address, 'unready')
  for (let i = 0; i < 10; i++) t.is((await get(port, '/')).body, 'a', 'every request goes to the live endpoint')
  // The same port serves again.
  c.server.listen(c.port, '127.0.0.1')
  await waitState(t, proxy, c.address, 'healthy')
})

test('when every endpoint is unready, requests still go to all of them', async (t) => {
  const b = await startBackends(t, ['a', 'b'], withHealth({ value: false }))
  const { proxy, port } = await startProxy(t, simpleYaml([b.a!.address, b.b!.address], { service: check() }))
  await waitState(t, proxy, b.a!.address, 'unready')
  await waitState(t, proxy, b.b!.address, 'unready')
  const bodies: string[] = []
  for (let i = 0; i < 4; i++) bodies.push((await get(port, '/')).body)
  t.deepEqual(bodies.sort(), ['a', 'a', 'b', 'b'])
})

test('a TCP service is checked by connecting: a closed port is unready, the other endpoint takes the connections', async (t) => {
  const live = net.createServer((s) => s.end('live\n'))
  const livePort = await listen(live)
  t.teardown(() => live.close())
  const dead = net.createServer((s) => s.end('dead\n'))
  const deadPort = await listen(dead)
  const { proxy, port } = await startProxy(
    t,
    `
admin: null
listeners:
  - name: tcp
    address: 127.0.0.1:0
    protocol: tcp
    tcpService: db
services:
  - name: db
    endpoints: [127.0.0.1:${livePort}, 127.0.0.1:${deadPort}]
    healthCheck: { interval: 100ms, timeout: 80ms, unhealthyThreshold: 1, healthyThreshold: 1 }
`,
  )
  await new Promise<void>((resolve) => dead.close(() => resolve()))
  await waitState(t, proxy, `127.0.0.1:${deadPort}`, 'unready')
  for (let i = 0; i < 4; i++) {
    const c = await tcpConnect(t, port)
    await c.received.end()
    t.is(c.received.text(), 'live\n')
    c.socket.destroy()
  }
})

test('HTTP/2 services are probed over HTTP/2', async (t) => {
  const server = http2.createServer()
  const paths: string[] = []
  server.on('stream', (stream, headers) => {
    paths.push(String(headers[':path']))
    stream.respond({ ':status': headers[':path'] === '/grpc.health' ? 200 : 404 })
    stream.end()
  })
  const h2 = await listenH2(t, server)
  const { proxy } = await startProxy(
    t,
    simpleYaml([h2.address], { service: '    protocol: http2\n' + check().replace('/healthz', '/grpc.health') }),
  )
  await sleep(300)
  t.true(paths.includes('/grpc.health'), `probed over h2: ${paths.join(',')}`)
  t.is(await stateOf(proxy, h2.address), 'healthy')
})

test('state shows in /endpoints and the metrics; a reload without the check makes the endpoint ready again', async (t) => {
  const a = await startBackend(t, 'a', withHealth({ value: true }))
  const c = await startBackend(t, 'c', withHealth({ value: false }))
  const yaml = simpleYaml([a.address, c.address], { service: check(), admin: true })
  const { proxy, adminPort, port } = await startProxy(t, yaml)
  await waitState(t, proxy, c.address, 'unready')
  const endpoints = JSON.parse((await get(adminPort, '/endpoints')).body) as { services: Array<{ name: string; endpoints: Array<{ address: string; state: string }> }> }
  t.is(endpoints.services[0]?.endpoints.find((e) => e.address === c.address)?.state, 'unready')
  const metrics = proxy.metrics()
  t.is(metricValue(metrics, `meshproxy_upstream_ready{endpoint="${c.address}"}`), 0)
  t.is(metricValue(metrics, `meshproxy_upstream_ready{endpoint="${a.address}"}`), 1)

  await proxy.reload(load(simpleYaml([a.address, c.address], { admin: true })))
  t.is(await stateOf(proxy, c.address), 'healthy')
  const seen = counts({ a, c })
  for (let i = 0; i < 4; i++) await get(port, '/')
  t.is(counts({ a, c }).c! - seen.c!, 2, 'c is balanced to again')
})

test('bad health check settings are refused with their position and what is valid', (t) => {
  const bad = (service: string): string[] =>
    loadConfigText(`listeners: [{ routes: [{ service: s }] }]\nservices:\n  - name: s\n    endpoints: [127.0.0.1:1]\n${service}`, { file: 'm.yaml' }).diagnostics.map(
      (d) => `${d.line}:${d.column} ${d.message}${d.hint ? ` (${d.hint})` : ''}`,
    )
  t.deepEqual(bad('    healthCheck: { path: healthz }\n'), ['5:26 invalid "path" in service healthCheck: "healthz" does not start with "/" (write /healthz)'])
  t.deepEqual(bad('    healthCheck: { path: /h, interval: 1s, timeout: 2s }\n'), [
    '5:5 service "s" health check timeout (2000 ms) is longer than its interval (1000 ms) (a probe must end before the next one starts: lower timeout or raise interval)',
  ])
  t.deepEqual(bad('    healthCheck: { unhealthyThreshold: 0 }\n'), ['5:40 "unhealthyThreshold" in service healthCheck must be between 1 and 100, got 0'])
  t.deepEqual(bad('    healthCheck: { expectedStatuses: 2xx-3xx }\n'), ['5:38 invalid "expectedStatuses" in service healthCheck: "2xx-3xx" is not a status, range or class (e.g. "5xx", "500-504,429" or "" for none)'])
  t.deepEqual(bad('    healthCheck: { pth: /h }\n'), ['5:20 unknown field "pth" in service healthCheck (did you mean "path"?)'])
  const ok = loadConfigText('listeners: [{ routes: [{ service: s }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1], healthCheck: {} }]')
  t.deepEqual(ok.config?.services[0]?.healthCheck, { path: null, intervalMs: 10000, timeoutMs: 1000, healthyThreshold: 2, unhealthyThreshold: 3, expectedStatuses: '200-399' })
  t.is(load('listeners: [{ routes: [{ service: s }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]').services[0]?.healthCheck, null)
})
