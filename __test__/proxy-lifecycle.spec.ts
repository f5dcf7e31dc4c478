/**
 * Cases 7, 8 and 12: reload under load (no failed request), a reload that cannot bind changes
 * nothing, graceful close (in-flight request completes, /ready turns 503 while draining, the port
 * is released), the admin endpoints, and the lifecycle errors of the `Proxy` API.
 */
import http from 'node:http'
import test from 'ava'
import { MeshProxyError, Proxy, type ConfigModel } from '../ts/index.js'
import { occupiedPort, startBackend, startBackends } from './helpers/backend.js'
import { get, request, sleep, tryConnect } from './helpers/http.js'
import { load, simpleYaml, startProxy } from './helpers/proxy.js'

test('reload under load: 4 concurrent clients, reloads between two equivalent configs, zero failures', async (t) => {
  const b = await startBackends(t, ['a', 'b'])
  const yamlA = simpleYaml([`{ address: ${b.a!.address}, weight: 1 }`, `{ address: ${b.b!.address}, weight: 1 }`], { admin: true })
  const yamlB = simpleYaml([`{ address: ${b.a!.address}, weight: 2 }`, `{ address: ${b.b!.address}, weight: 1 }`], { admin: true })
  const configs = [load(yamlB), load(yamlA)]
  const { proxy, port } = await startProxy(t, yamlA)

  let stop = false
  const failures: string[] = []
  let ok = 0
  const client = async (id: number): Promise<void> => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    try {
      let i = 0
      while (!stop) {
        // Alternate GETs and POSTs with a body.
        const res = await (i++ % 2 === 0
          ? get(port, `/c${id}/${i}`, {}, agent)
          : request(port, { method: 'POST', path: `/c${id}/${i}`, body: 'x'.repeat(1000), agent })
        ).catch((e: Error) => ({ status: -1, body: e.message, headers: {} as http.IncomingHttpHeaders }))
        if (res.status === 200 && (res.body === 'a' || res.body === 'b')) ok += 1
        else failures.push(`${res.status} ${res.headers['meshproxy-error'] ?? ''} ${res.body}`)
      }
    } finally {
      agent.destroy()
    }
  }
  const clients = [0, 1, 2, 3].map(client)
  let reloads = 0
  const started = Date.now()
  while (Date.now() - started < 2000) {
    await sleep(100)
    await proxy.reload(configs[reloads % 2]!)
    reloads += 1
  }
  stop = true
  await Promise.all(clients)
  t.deepEqual(failures, [])
  t.true(ok > 0)
  t.true(reloads >= 10, `reloads: ${reloads}`)
  const stats = await proxy.stats()
  t.is(stats.reloads, reloads)
  t.is(stats.listeners.length, 1)
  t.is(stats.endpoints.length, 2, 'endpoints that stay are kept, not duplicated')
  t.is(b.a!.requests.length + b.b!.requests.length, ok)
})

test('a reload that cannot bind rejects with MESHPROXY_BIND_FAILED and changes nothing', async (t) => {
  const b = await startBackends(t, ['old', 'new'])
  const { proxy, port, address } = await startProxy(t, simpleYaml([b.old!.address], { admin: true }))
  const taken = await occupiedPort(t)
  // The new config both routes elsewhere and adds a listener on a port another server holds.
  const bad: ConfigModel = load(simpleYaml([b.new!.address], { admin: true }))
  bad.listeners.push({ ...bad.listeners[0]!, name: 'second', address: `127.0.0.1:${taken}` })
  const err = await t.throwsAsync(proxy.reload(bad))
  t.true(err instanceof MeshProxyError)
  t.is((err as MeshProxyError).code, 'MESHPROXY_BIND_FAILED')
  const res = await get(port, '/')
  t.is(res.status, 200)
  t.is(res.body, 'old', 'the old config keeps serving')
  t.is(b.new!.requests.length, 0)
  const stats = await proxy.stats()
  t.deepEqual(
    stats.listeners.map((l) => l.localAddress),
    [address],
  )
  t.is(stats.reloads, 0)
  // And a good reload afterwards still works.
  await proxy.reload(load(simpleYaml([b.new!.address], { admin: true })))
  t.is((await get(port, '/')).body, 'new')
})

test('graceful close: the in-flight request completes, /ready is 503 while draining, the port is released', async (t) => {
  let arrived!: () => void
  const requestArrived = new Promise<void>((resolve) => (arrived = resolve))
  const backend = await startBackend(t, 'slow', (req, res) => {
    arrived()
    req.resume()
    setTimeout(() => res.end('slow-done'), 1000)
  })
  const { proxy, port, adminPort } = await startProxy(t, simpleYaml([backend.address], { admin: true }))
  t.is((await get(adminPort, '/ready')).status, 200)

  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  let inflightDone = false
  const inflight = get(port, '/slow', {}, agent).finally(() => (inflightDone = true))
  await requestArrived
  const closed = proxy.close({ graceMs: 5000 })
  let closeDone = false
  void closed.then(() => (closeDone = true))

  // close() flips /ready asynchronously; poll it while the slow request is still in flight.
  const seen: number[] = []
  while (!inflightDone) {
    const status = (await get(adminPort, '/ready')).status
    if (inflightDone) break
    seen.push(status)
    if (status === 503) break
    await sleep(10)
  }
  t.is(seen.at(-1), 503, `/ready during the drain: ${seen.join(',')}`)
  t.false(closeDone, 'close waits for the in-flight request')
  t.is((await get(adminPort, '/live')).status, 200)

  const res = await inflight
  t.is(res.status, 200)
  t.is(res.body, 'slow-done')
  t.is(res.headers['connection'], 'close', 'keep-alive clients are told Connection: close while draining')
  await closed
  t.is(await tryConnect(port), 'ECONNREFUSED', 'the listener port is released')
})

test('graceful close with nothing in flight returns and releases the port', async (t) => {
  const backend = await startBackend(t, 'a')
  const { proxy, port } = await startProxy(t, simpleYaml([backend.address]))
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  t.is((await get(port, '/', {}, agent)).status, 200) // leaves an idle keep-alive connection
  await proxy.close({ graceMs: 5000 })
  t.is(await tryConnect(port), 'ECONNREFUSED')
})

test('admin: /live, /ready, /metrics and /config', async (t) => {
  const backend = await startBackend(t, 'a')
  const { port, adminPort } = await startProxy(t, simpleYaml([backend.address], { admin: true }))
  t.is((await get(port, '/')).status, 200)
  const live = await get(adminPort, '/live')
  t.is(live.status, 200)
  t.is((await get(adminPort, '/ready')).status, 200)
  const metrics = await get(adminPort, '/metrics')
  t.is(metrics.status, 200)
  t.true(metrics.body.length > 0)
  t.regex(metrics.body, /^# (HELP|TYPE) /m)
  const config = await get(adminPort, '/config')
  t.is(config.status, 200)
  const parsed = JSON.parse(config.body) as { services: Array<{ name: string; endpoints: Array<{ address: string }> }> }
  t.is(parsed.services[0]!.name, 's')
  t.is(parsed.services[0]!.endpoints[0]!.address, backend.address)
  t.is((await get(adminPort, '/nope')).status, 404)
})

test('new Proxy with an invalid config throws MeshProxyError MESHPROXY_INVALID_CONFIG', (t) => {
  const good = load(simpleYaml(['127.0.0.1:1']))
  const bad: ConfigModel = { ...good, services: [] } // the route names an undefined service
  const err = t.throws(() => new Proxy(bad))
  t.true(err instanceof MeshProxyError)
  t.is((err as MeshProxyError).code, 'MESHPROXY_INVALID_CONFIG')
  t.true((err as MeshProxyError).diagnostics.length > 0)
  const err2 = t.throws(() => new Proxy({ ...good, listeners: [{ ...good.listeners[0]!, maxUriBytes: -1 }] }))
  t.is((err2 as MeshProxyError).code, 'MESHPROXY_INVALID_CONFIG')
  const err3 = t.throws(() => new Proxy(good, { workers: 0 }))
  t.is((err3 as MeshProxyError).code, 'MESHPROXY_INVALID_CONFIG')
})

test('close twice is fine; start after close rejects MESHPROXY_CLOSED; start twice rejects', async (t) => {
  const backend = await startBackend(t, 'a')
  const { proxy, port } = await startProxy(t, simpleYaml([backend.address]))
  const again = await t.throwsAsync(proxy.start())
  t.is((again as MeshProxyError).code, 'MESHPROXY_ALREADY_RUNNING')
  t.is((await get(port, '/')).status, 200)
  await proxy.close({ graceMs: 0 })
  await t.notThrowsAsync(proxy.close({ graceMs: 0 }))
  await t.notThrowsAsync(proxy.close())
  const err = await t.throwsAsync(proxy.start())
  t.true(err instanceof MeshProxyError)
  t.is((err as MeshProxyError).code, 'MESHPROXY_CLOSED')
  const reload = await t.throwsAsync(proxy.reload(load(simpleYaml([backend.address]))))
  t.is((reload as MeshProxyError).code, 'MESHPROXY_CLOSED')
})

test('stats() after close reports state "closed" (ProxyStats.state includes it)', async (t) => {
  const backend = await startBackend(t, 'a')
  const { proxy } = await startProxy(t, simpleYaml([backend.address]))
  t.is((await proxy.stats()).state, 'running')
  await proxy.close({ graceMs: 0 })
  const stats = await proxy.stats()
  t.is(stats.state, 'closed')
  t.false(stats.ready)
  t.deepEqual(stats.listeners, [])
})

test('close before start, then start rejects', async (t) => {
  const proxy = new Proxy(load(simpleYaml(['127.0.0.1:1'])))
  t.teardown(() => proxy.close({ graceMs: 0 }))
  t.is((await proxy.stats()).state, 'created')
  await proxy.close({ graceMs: 0 })
  const err = await t.throwsAsync(proxy.start())
  t.is((err as MeshProxyError).code, 'MESHPROXY_CLOSED')
})

test('start fails with MESHPROXY_BIND_FAILED when the listener port is taken, binding nothing', async (t) => {
  const taken = await occupiedPort(t)
  const model = load(simpleYaml(['127.0.0.1:1'], { admin: true }))
  model.listeners[0]!.address = `127.0.0.1:${taken}`
  const proxy = new Proxy(model)
  t.teardown(() => proxy.close({ graceMs: 0 }))
  const err = await t.throwsAsync(proxy.start())
  t.is((err as MeshProxyError).code, 'MESHPROXY_BIND_FAILED')
  t.is((await proxy.stats()).state, 'created')
})
