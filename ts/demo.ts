/**
 * `meshproxy demo` (what `npm start` runs): a small mesh on this machine. Six HTTP services on
 * ephemeral ports and a proxy in front of them, configured with what the seed document asks of a
 * mesh: routing and weighted balancing, a 90/10 canary split with a header that pins test users,
 * the seed's `RateLimiter` (rate and burst), the seed's Rego rule checking responses, an
 * endpoint that fails, taken out by failure accrual while retries hide it from clients, and
 * automatic mTLS to a second proxy, the `orders` workload's sidecar, with SPIFFE identities made
 * for the demo. It prints the curl commands to try each of them.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { formatDiagnostic, loadConfigText } from './config/index.js'
import { initIdentity, issueIdentity } from './identity.js'
import { Proxy, type StartInfo } from './proxy.js'
import { closeOnSignals } from './signals.js'

/** How a demo service answers: JSON naming itself, or what `answer` returns. */
type Answer = (url: string) => { status: number; body: string } | undefined

function service(name: string, answer: Answer = () => undefined): Promise<Server> {
  const server = createServer((req, res) => {
    req.resume()
    const own = answer(req.url ?? '/')
    if (own) {
      res.writeHead(own.status, { 'content-type': 'text/plain' })
      res.end(own.body)
      return
    }
    res.setHeader('content-type', 'application/json')
    res.end(
      JSON.stringify({ service: name, method: req.method, url: req.url, host: req.headers.host, forwardedFor: req.headers['x-forwarded-for'] }) +
        '\n',
    )
  })
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)))
}

const port = (s: Server) => (s.address() as AddressInfo).port

/** The seed's response rule, as the seed writes it (Rego v0). */
const SEED_REGO = `package main

violation[msg] {
  input.response.status_code != 200
  msg = "HTTP status code is not 200"
}

violation[msg] {
  input.response.body != "OK"
  msg = "Response body is not 'OK'"
}
`

/**
 * The sidecar of the `orders` workload: its inbound port takes only mTLS from workloads of the
 * mesh, and only `web.shop` may call; plain HTTP to the app behind it.
 */
function sidecarYaml(ports: Record<string, number>): string {
  return `
identity: { dir: identity, name: orders, namespace: shop }
listeners:
  - name: inbound
    address: 127.0.0.1:0
    mtls: required
    authorization:
      default: deny
      rules: [{ action: allow, identities: [web.shop] }]
    routes:
      - service: orders-app
services:
  - name: orders-app
    endpoints: [127.0.0.1:${ports.orders1}]
admin: null
`
}

/** The demo's config: the native form, then the seed's `RateLimiter` resource. */
function demoYaml(opts: { listen: string; admin: string }, ports: Record<string, number>): string {
  return `
identity: { dir: identity, name: web, namespace: shop }
listeners:
  - name: demo
    address: ${opts.listen}
    routes:
      - name: canary-pin          # test users always reach the canary
        match: { headers: { x-canary: "1" } }
        service: web-canary
      - name: api
        match: { path: /api, pathType: Prefix }
        service: api
      - name: orders
        match: { path: /orders, pathType: Prefix }
        service: orders
        retry: { limit: 2 }       # 5xx, connect errors and resets, for idempotent methods
      - name: mesh                # to the orders workload's sidecar, over mTLS
        match: { path: /mesh, pathType: Prefix }
        service: orders-mesh
      - name: sticky
        match: { path: /sticky }
        service: web-sticky
      - name: web                 # a 90/10 canary split
        backends:
          - { service: web, weight: 90 }
          - { service: web-canary, weight: 10 }
services:
  - name: web
    balancer: round-robin
    endpoints:
      - { address: 127.0.0.1:${ports.web1}, weight: 2 }
      - 127.0.0.1:${ports.web2}
  - name: web-canary
    endpoints: [127.0.0.1:${ports.canary}]
  - name: web-sticky
    balancer: { hash: { header: x-user } }
    endpoints: [127.0.0.1:${ports.web1}, 127.0.0.1:${ports.web2}]
  - name: api
    endpoints: [127.0.0.1:${ports.api}]
    policies: [seed.rego]         # the seed's rule: a response that is not 200 "OK" is a failure
  - name: orders
    failureAccrual: { consecutiveFailures: 3, minPenalty: 10s, maxPenalty: 60s }
    endpoints: [127.0.0.1:${ports.orders1}, 127.0.0.1:${ports.orders2}, 127.0.0.1:${ports.broken}]
  - name: orders-mesh
    endpoints: [127.0.0.1:${ports.sidecar}]
    identity: orders.shop         # a meshed workload: mTLS, and its certificate must name orders.shop
admin: ${opts.admin}
---
apiVersion: linkerd.io/v1alpha2
kind: RateLimiter
metadata:
  name: demo
spec:
  limits:
  - service: api
    rate: 5
    burst: 10
`
}

async function startProxy(yaml: string, file: string, workers: number): Promise<{ proxy: Proxy; info: StartInfo }> {
  const { config, diagnostics } = loadConfigText(yaml, { file })
  if (!config) throw new Error(`demo config invalid:\n${diagnostics.map(formatDiagnostic).join('\n')}`)
  const proxy = new Proxy(config, { workers })
  try {
    return { proxy, info: await proxy.start() }
  } catch (err) {
    await proxy.close({ graceMs: 0 })
    throw err
  }
}

export async function runDemo(opts: { listen: string; admin: string; workers: number }): Promise<void> {
  const servers = await Promise.all([
    service('web-1'),
    service('web-2'),
    service('web-canary'),
    service('api', (url) => (url.startsWith('/api/broken') ? { status: 200, body: 'NOT OK' } : { status: 200, body: 'OK' })),
    service('orders-1'),
    service('orders-2'),
    service('orders-broken', () => ({ status: 500, body: 'orders-broken fails every request\n' })),
  ])
  const [web1, web2, canary, api, orders1, orders2, broken] = servers
  const closeAll = () => {
    for (const s of servers) s.close()
  }
  const ports = {
    web1: port(web1!),
    web2: port(web2!),
    canary: port(canary!),
    api: port(api!),
    orders1: port(orders1!),
    orders2: port(orders2!),
    broken: port(broken!),
    sidecar: 0,
  }
  // The files sit beside the config, as a user's would (paths in it are relative to it), where
  // the user can read them: the seed's Rego rule (its path names the policy in the metrics) and
  // the mesh's identity material, a trust anchor and one certificate per workload.
  const dir = mkdtempSync(join(tmpdir(), 'meshproxy-demo-'))
  const identity = join(dir, 'identity')
  mkdirSync(identity)
  const rego = join(dir, 'seed.rego')
  writeFileSync(rego, SEED_REGO)
  const proxies: Proxy[] = []
  let info
  try {
    await initIdentity(identity, { trustDomain: 'cluster.local' })
    for (const name of ['web', 'orders']) await issueIdentity(identity, name, { namespace: 'shop' })
    const sidecar = await startProxy(sidecarYaml(ports), join(dir, 'orders-sidecar.yaml'), 1)
    proxies.push(sidecar.proxy)
    ports.sidecar = Number(sidecar.info.listeners[0]!.localAddress.split(':').at(-1))
    const edge = await startProxy(demoYaml(opts, ports), join(dir, 'demo.yaml'), opts.workers)
    proxies.unshift(edge.proxy)
    info = edge.info
  } catch (err) {
    await Promise.all(proxies.map((p) => p.close({ graceMs: 0 })))
    closeAll()
    throw err
  }
  // Signal handlers before the lines a user (or a test) reacts to, as in `run`: the edge proxy
  // drains, then the sidecar behind it.
  closeOnSignals(proxies[0]!, 2000, () => {
    void proxies[1]!.close({ graceMs: 0 }).finally(() => {
      closeAll()
      process.exit(0)
    })
  })
  const addr = info.listeners[0]!.localAddress
  const admin = info.admin
  const names = Object.entries(ports)
    .map(([name, p]) => `${name} :${p}`)
    .join(', ')
  console.log(`meshproxy demo: services ${names}`)
  console.log(`meshproxy demo: its files (the Rego rule, the mesh's identity material) are in ${dir}`)
  console.log(`meshproxy demo: proxy on http://${addr}, admin on http://${admin}

Try:
  curl -s http://${addr}/                      # a 90/10 canary split: web (web-1 twice as often as web-2) or web-canary
  curl -s -H 'x-canary: 1' http://${addr}/     # test users are pinned to the canary
  curl -s -H 'x-user: alice' http://${addr}/sticky   # consistent hash: same user, same instance
  curl -s --path-as-is http://${addr}/api/../orders  # routed as /orders: dot segments are resolved before routing
  curl -s -o /dev/null -w '%{http_code} ' "http://${addr}/orders?n=[1-12]"; echo
                                               # one orders endpoint fails every request: retries hide it
  curl -s http://${admin}/endpoints | grep -E '"(address|state)"'   # ... and failure accrual has ejected it
  curl -s http://${addr}/api/broken            # the seed's Rego rule (${rego}) classifies this "NOT OK" as a failure
  curl -s -o /dev/null -w '%{http_code} ' "http://${addr}/api/?n=[1-20]"; echo
                                               # the seed's RateLimiter (rate 5/s, burst 10): 200s, then 429s
  curl -si "http://${addr}/api/?n=[1-20]" | grep -iE '^(retry-after|ratelimit|meshproxy-error)' | sort | uniq -c
                                               # the refusals' headers: Retry-After and the IETF RateLimit fields
  curl -s http://${addr}/mesh/orders           # over mTLS to the orders sidecar (web.shop -> orders.shop); its app sees plain HTTP
  curl -s http://127.0.0.1:${ports.sidecar}/   # plaintext to the sidecar's mTLS-only port: 400 tls-required
  curl -s http://${admin}/identity             # this proxy's SPIFFE ID, its certificate's expiry, the trust anchors
  curl -s http://${admin}/metrics | grep -E 'meshproxy_(policy_violations|rate_limited|retries)_total'
  curl -s http://${admin}/config

Ctrl-C drains and stops.`)
}
