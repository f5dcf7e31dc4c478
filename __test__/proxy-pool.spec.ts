/**
 * Cases 3 and 4: upstream connection reuse (10,000 keep-alive requests over one upstream
 * connection) and the stale keep-alive race with Node's default 5 s keepAliveTimeout.
 */
import http from 'node:http'
import test from 'ava'
import { startBackend } from './helpers/backend.js'
import { get, sleep } from './helpers/http.js'
import { load, simpleYaml, startProxy } from './helpers/proxy.js'

test('10,000 sequential keep-alive requests use exactly one upstream connection', async (t) => {
  const backend = await startBackend(t, 'a')
  const { proxy, port } = await startProxy(t, simpleYaml([backend.address]))
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  const statuses = new Map<number, number>()
  for (let i = 0; i < 10_000; i++) {
    const res = await get(port, `/r/${i}`, {}, agent)
    statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1)
  }
  t.deepEqual([...statuses], [[200, 10_000]])
  t.is(backend.requests.length, 10_000)
  t.is(backend.connections, 1, 'connections accepted by the backend')
  const stats = await proxy.stats()
  const ep = stats.endpoints.find((e) => e.address === backend.address)
  t.truthy(ep)
  t.is(ep!.openedConnections, 1)
  t.is(ep!.openConnections, 1)
  t.is(ep!.requests, 10_000)
  t.is(ep!.failures, 0)
  t.is(stats.downstreamConnections, 1)
})

test('sequential requests without client keep-alive still reuse one upstream connection', async (t) => {
  const backend = await startBackend(t, 'a')
  const { proxy, port } = await startProxy(t, simpleYaml([backend.address]))
  for (let i = 0; i < 50; i++) t.is((await get(port, '/')).status, 200)
  t.is(backend.connections, 1)
  t.is((await proxy.stats()).endpoints[0]!.openedConnections, 1)
})

/**
 * Requests spaced around the backend's 5 s keepAliveTimeout, when Node closes the idle
 * connection: the proxy must never answer 502 for it.
 */
async function spacedRequests(t: import('ava').ExecutionContext, poolIdle?: string): Promise<void> {
  const backend = await startBackend(t, 'node') // default keepAliveTimeout: 5000
  t.is(backend.server.keepAliveTimeout, 5000)
  const service = poolIdle ? `    pool: { idleTimeout: ${poolIdle} }\n` : ''
  const yaml = simpleYaml([backend.address]).replace('  - name: s\n', `  - name: s\n${service}`)
  t.is(load(yaml).services[0]!.pool.idleTimeoutMs, poolIdle ? 30_000 : 4000)
  const { proxy, port } = await startProxy(t, yaml)
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  const statuses: number[] = [(await get(port, '/', {}, agent)).status]
  for (const gap of [4900, 5000, 5100]) {
    await sleep(gap)
    statuses.push((await get(port, '/', {}, agent)).status)
  }
  t.deepEqual(statuses, [200, 200, 200, 200])
  const ep = (await proxy.stats()).endpoints[0]!
  t.is(ep.failures, 0)
  t.is(ep.requests >= 4, true)
}

test('Node backend with default keepAliveTimeout, requests ~5 s apart: no 502 (default pool)', async (t) => {
  await spacedRequests(t)
})

test('Node backend with default keepAliveTimeout, requests ~5 s apart: no 502 (pool idle 30s, stale connections reused)', async (t) => {
  await spacedRequests(t, '30s')
})
