/**
 * GAMMA routes through the real proxy: an HTTPRoute whose parent is Service `shop` routes every
 * request that reaches `shop` — through an Ingress path on the ingress listener, or by the
 * Service's names on an outbound listener — by its own rules: under /api a header pins the
 * canary and other requests split 50/50 between `shop` (its own endpoints) and `shop-canary`; a
 * request matching no rule is 404 no-route.
 */
import test from 'ava'
import { closedPort, startBackend } from './helpers/backend.js'
import { request } from './helpers/http.js'
import { portOf, startProxy } from './helpers/proxy.js'
import { k8sService as service } from './helpers/k8s.js'


const config = (shop: number, canary: number, outbound: number): string => `admin: null
listeners:
  - { name: edge, address: 127.0.0.1:0 }
  - { name: out, address: 127.0.0.1:${outbound}, mode: outbound }
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: web }
spec:
  rules:
  - host: shop.example.com
    http:
      paths:
      - { path: /, pathType: Prefix, backend: { service: { name: shop, port: { number: 80 } } } }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: shop-canary }
spec:
  parentRefs: [{ name: shop, kind: Service, group: core, port: 80 }]
  rules:
  - matches: [{ path: { type: PathPrefix, value: /api }, headers: [{ name: x-canary, value: "1" }] }]
    backendRefs: [{ name: shop-canary, port: 80 }]
  - matches: [{ path: { type: PathPrefix, value: /api } }]
    backendRefs:
    - { name: shop, port: 80, weight: 50 }
    - { name: shop-canary, port: 80, weight: 50 }
${service('shop', shop)}${service('shop-canary', canary)}`

/** Sends `n` requests; how many each backend answered (by its body), or `status N` otherwise. */
async function answers(port: number, n: number, path: string, headers: Record<string, string>): Promise<Record<string, number>> {
  const seen: Record<string, number> = {}
  for (let i = 0; i < n; i++) {
    const res = await request(port, { path, headers })
    const key = res.status === 200 ? res.body : `status ${res.status}`
    seen[key] = (seen[key] ?? 0) + 1
  }
  return seen
}

test('requests reaching Service shop, through an Ingress or by its mesh names, follow its GAMMA route: header pin, 50/50 split, 404 for no rule', async (t) => {
  const shop = await startBackend(t, 'shop')
  const canary = await startBackend(t, 'canary')
  // Two listeners cannot both ask for port 0; the outbound one gets a free port of its own.
  const { info } = await startProxy(t, config(shop.port, canary.port, await closedPort()))
  const edge = portOf(info.listeners[0]!.localAddress)
  const outbound = portOf(info.listeners[1]!.localAddress)
  const n = 400
  for (const [port, host] of [
    [edge, 'shop.example.com'],
    [outbound, 'shop.default.svc.cluster.local'],
    [outbound, 'shop:80'],
  ] as const) {
    t.deepEqual(await answers(port, 20, '/api/orders', { host, 'x-canary': '1' }), { canary: 20 }, `${host}: the header pins the canary`)
    const split = await answers(port, n, '/api/orders', { host })
    t.is((split.shop ?? 0) + (split.canary ?? 0), n, `${host}: ${JSON.stringify(split)}`)
    t.true(Math.abs((split.canary ?? 0) / n - 0.5) < 0.1, `${host}: the canary's share of the 50/50 split: ${JSON.stringify(split)}`)
    for (const headers of [{ host }, { host, 'x-canary': '1' }]) {
      const miss = await request(port, { path: '/other', headers })
      t.deepEqual([miss.status, miss.headers['meshproxy-error']], [404, 'no-route'], `${JSON.stringify(headers)}: no rule matches /other`)
    }
  }
  t.deepEqual(await answers(outbound, 10, '/other', { host: 'shop-canary.default.svc' }), { canary: 10 }, 'shop-canary keeps its own mesh route')
})
