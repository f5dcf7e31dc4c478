/**
 * `meshproxy demo` (what `npm start` runs): three small HTTP services on ephemeral ports and a
 * proxy in front of them — host and path routing, weighted round-robin, consistent hashing —
 * with the curl commands to try printed at start.
 */
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { loadConfigText } from './config/index.js'
import { Proxy } from './proxy.js'
import { closeOnSignals } from './signals.js'

function service(name: string): Promise<Server> {
  const server = createServer((req, res) => {
    res.setHeader('content-type', 'application/json')
    res.end(
      JSON.stringify({ service: name, method: req.method, url: req.url, host: req.headers.host, forwardedFor: req.headers['x-forwarded-for'] }) +
        '\n',
    )
  })
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)))
}

const port = (s: Server) => (s.address() as AddressInfo).port

export async function runDemo(opts: { listen: string; admin: string; workers: number }): Promise<void> {
  const [web1, web2, api] = await Promise.all([service('web-1'), service('web-2'), service('api')])
  const yaml = `
listeners:
  - name: demo
    address: ${opts.listen}
    routes:
      - name: api
        match: { path: /api, pathType: Prefix }
        service: api
      - name: sticky
        match: { path: /sticky }
        service: web-sticky
      - name: web
        service: web
services:
  - name: web
    balancer: round-robin
    endpoints:
      - { address: 127.0.0.1:${port(web1)}, weight: 2 }
      - 127.0.0.1:${port(web2)}
  - name: web-sticky
    balancer: { hash: { header: x-user } }
    endpoints: [127.0.0.1:${port(web1)}, 127.0.0.1:${port(web2)}]
  - name: api
    endpoints: [127.0.0.1:${port(api)}]
admin: ${opts.admin}
`
  const { config, diagnostics } = loadConfigText(yaml, { file: '<demo>' })
  if (!config) throw new Error(`demo config invalid: ${JSON.stringify(diagnostics)}`)
  const proxy = new Proxy(config, { workers: opts.workers })
  let info
  try {
    info = await proxy.start()
  } catch (err) {
    for (const s of [web1, web2, api]) s.close()
    throw err
  }
  // Signal handlers before the lines a user (or a test) reacts to, as in `run`.
  closeOnSignals(proxy, 2000, () => {
    for (const s of [web1, web2, api]) s.close()
    process.exit(0)
  })
  const addr = info.listeners[0]!.localAddress
  console.log(`meshproxy demo: services web-1 :${port(web1)}, web-2 :${port(web2)}, api :${port(api)}`)
  console.log(`meshproxy demo: proxy on http://${addr}, admin on http://${info.admin}

Try:
  curl -s http://${addr}/                      # web: weighted round-robin (web-1 twice, web-2 once)
  curl -s http://${addr}/api/users             # api: longest-prefix route
  curl -s -H 'x-user: alice' http://${addr}/sticky   # consistent hash: same user, same instance
  curl -s http://${addr}/api/../admin          # dot segments are removed before routing
  curl -s http://${info.admin}/metrics | grep meshproxy_upstream
  curl -s http://${info.admin}/config

Ctrl-C drains and stops.`)
}
