/**
 * Balancers through the real proxy — smooth weighted round-robin (exact), weighted random
 * (loose bounds), consistent hashing on a header (stable, and minimal remapping when an endpoint
 * is added by `reload`), hashing without a key.
 */
import http from 'node:http'
import test from 'ava'
import { counts, startBackends } from './helpers/backend.js'
import { get } from './helpers/http.js'
import { load, simpleYaml, startProxy } from './helpers/proxy.js'

function keepAlive(t: { teardown(fn: () => void): void }): http.Agent {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  return agent
}

test('round-robin 2:1: exact smooth order and exactly 20/10 over 30 requests', async (t) => {
  const b = await startBackends(t, ['a', 'b'])
  const { port } = await startProxy(
    t,
    simpleYaml([`{ address: ${b.a!.address}, weight: 2 }`, `{ address: ${b.b!.address}, weight: 1 }`], { balancer: 'round-robin' }),
  )
  const agent = keepAlive(t)
  const order: string[] = []
  for (let i = 0; i < 30; i++) {
    const res = await get(port, '/', {}, agent)
    t.is(res.status, 200)
    order.push(res.body)
  }
  t.is(order.join(''), 'aba'.repeat(10))
  t.deepEqual(counts(b), { a: 20, b: 10 })
})

test('round-robin 1:1:1 without keep-alive still alternates exactly', async (t) => {
  const b = await startBackends(t, ['a', 'b', 'c'])
  const { port } = await startProxy(t, simpleYaml([b.a!.address, b.b!.address, b.c!.address]))
  const order: string[] = []
  for (let i = 0; i < 12; i++) order.push((await get(port, '/')).body)
  t.is(order.join(''), 'abc'.repeat(4))
})

test('random 1:3: spread roughly follows the weights', async (t) => {
  const b = await startBackends(t, ['a', 'b'])
  const { port } = await startProxy(
    t,
    simpleYaml([`{ address: ${b.a!.address}, weight: 1 }`, `{ address: ${b.b!.address}, weight: 3 }`], { balancer: 'random' }),
  )
  const agent = keepAlive(t)
  const n = 400
  for (let i = 0; i < n; i++) t.is((await get(port, '/', {}, agent)).status, 200)
  const c = counts(b)
  t.is(c.a! + c.b!, n)
  // Expected share of b: 0.75 (sd ≈ 0.022 at n = 400); bounds are ~7 sd wide.
  const share = c.b! / n
  t.true(share > 0.6 && share < 0.9, `share of the weight-3 endpoint: ${share} (${JSON.stringify(c)})`)
  t.true(c.a! > 0, 'the weight-1 endpoint gets traffic too')
})

/** For each key, which backend answered. */
async function route(port: number, agent: http.Agent, keys: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>()
  for (const k of keys) {
    const res = await get(port, '/', { 'x-user': k }, agent)
    if (res.status !== 200) throw new Error(`key ${k}: status ${res.status}`)
    out.set(k, res.body)
  }
  return out
}

test('hash on a header: same key, same backend; adding an endpoint by reload remaps few keys', async (t) => {
  const b = await startBackends(t, ['a', 'b', 'c'])
  const yaml = (eps: string[]): string => simpleYaml(eps, { balancer: '{ hash: { header: x-user } }' })
  const { proxy, port } = await startProxy(t, yaml([b.a!.address, b.b!.address]))
  const agent = keepAlive(t)
  const keys = Array.from({ length: 1000 }, (_, i) => `user-${i}`)

  const first = await route(port, agent, keys)
  // Stable: the same keys again, in another order, land where they did.
  const again = await route(port, agent, [...keys].reverse())
  t.is([...first].filter(([k, v]) => again.get(k) !== v).length, 0, 'a key changed backend without any config change')
  const before = counts(b)
  t.is(before.c, 0)
  t.true(before.a! > 0 && before.b! > 0, `both endpoints take keys: ${JSON.stringify(before)}`)

  await proxy.reload(load(yaml([b.a!.address, b.b!.address, b.c!.address])))
  const after = await route(port, agent, keys)
  let moved = 0
  let movedBetweenOld = 0
  for (const k of keys) {
    if (after.get(k) === first.get(k)) continue
    moved += 1
    if (after.get(k) !== 'c') movedBetweenOld += 1
  }
  t.is(movedBetweenOld, 0, 'keys only move to the new endpoint')
  t.is(b.c!.requests.length, moved, 'counted at the backends: the new endpoint got exactly the moved keys')
  // Ideal is 1/3 of the keys; consistent hashing promises at most ~1.5/N.
  t.true(moved <= (1.5 / 3) * keys.length, `moved ${moved} of ${keys.length}`)
  t.true(moved >= 100, `the new endpoint takes a real share: moved ${moved}`)
})

test('hash on a header: requests without the key still succeed (random fallback)', async (t) => {
  const b = await startBackends(t, ['a', 'b'])
  const { port } = await startProxy(t, simpleYaml([b.a!.address, b.b!.address], { balancer: '{ hash: { header: x-user } }' }))
  const agent = keepAlive(t)
  for (let i = 0; i < 40; i++) {
    const res = await get(port, '/', {}, agent)
    t.is(res.status, 200)
    t.true(res.body === 'a' || res.body === 'b')
  }
  const c = counts(b)
  t.is(c.a! + c.b!, 40)
})

test('hash on a cookie: same cookie value, same backend', async (t) => {
  const b = await startBackends(t, ['a', 'b', 'c'])
  const { port } = await startProxy(t, simpleYaml([b.a!.address, b.b!.address, b.c!.address], { balancer: '{ hash: { cookie: session } }' }))
  const agent = keepAlive(t)
  for (let u = 0; u < 20; u++) {
    const seen = new Set<string>()
    for (let i = 0; i < 3; i++) {
      const res = await get(port, '/', { cookie: `theme=dark${i}; session=s${u}; x=${i}` }, agent)
      t.is(res.status, 200)
      seen.add(res.body)
    }
    t.is(seen.size, 1, `session s${u} went to ${[...seen].join(', ')}`)
  }
})
