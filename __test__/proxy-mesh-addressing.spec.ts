/**
 * Mesh addressing on an outbound listener (a sidecar's outbound side), with real traffic: a
 * request whose Host or :authority names a service reaches it by any of its Kubernetes-style
 * names, with or without a port; any other host is 404 no-route. Services built from Kubernetes
 * Services answer to their own name and namespace.
 */
import test from 'ava'
import { startBackend } from './helpers/backend.js'
import { h2connect, h2request } from './helpers/h2.js'
import { request } from './helpers/http.js'
import { startProxy } from './helpers/proxy.js'
import { loadConfigText } from '../ts/index.js'

test('Host names a service: name, name.namespace, .svc, .svc.cluster.local, with or without a port', async (t) => {
  const web = await startBackend(t, 'web')
  const api = await startBackend(t, 'api')
  const { port, address } = await startProxy(
    t,
    `
admin: null
listeners:
  - name: out
    address: 127.0.0.1:0
    mode: outbound
services:
  - { name: web, endpoints: [${web.address}] }
  - { name: api, endpoints: [${api.address}] }
`,
  )
  for (const [host, want] of [
    ['web', 'web'],
    ['web:80', 'web'],
    ['web.default', 'web'],
    ['web.default.svc', 'web'],
    ['web.default.svc.cluster.local:8080', 'web'],
    ['API.default.svc.cluster.local', 'api'],
  ] as [string, string][]) {
    const res = await request(port, { path: '/', headers: { host } })
    t.is(res.body, want, host)
  }
  const miss = await request(port, { path: '/', headers: { host: 'web.other' } })
  t.is(miss.status, 404)
  t.is(miss.headers['meshproxy-error'], 'no-route')
  const session = await h2connect(t, address)
  const h2 = await h2request(session, { ':path': '/', ':authority': 'api.default.svc:9000' })
  t.is(h2.body, 'api')
})

test('Kubernetes Services answer to their own name and namespace; the default mode exposes nothing unnamed', async (t) => {
  const orders = await startBackend(t, 'orders')
  const manifests = `---
apiVersion: v1
kind: Service
metadata: { name: orders, namespace: shop }
spec:
  ports: [{ name: http, port: 80, targetPort: ${orders.port} }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: orders-1
  namespace: shop
  labels: { kubernetes.io/service-name: orders }
ports: [{ name: http, port: ${orders.port} }]
endpoints: [{ addresses: ["127.0.0.1"] }]
`
  const outbound = loadConfigText(`admin: null\nlisteners: [{ name: out, address: 127.0.0.1:0, mode: outbound }]\n${manifests}`)
  t.deepEqual(outbound.diagnostics.filter((d) => d.severity === 'error'), [])
  t.deepEqual(outbound.config?.listeners[0]?.routes.map((r) => [r.name, r.hosts]), [
    ['mesh-orders-80', ['orders', 'orders.shop', 'orders.shop.svc', 'orders.shop.svc.cluster.local']],
  ])
  const { port } = await startProxy(t, outbound.config!)
  t.is((await request(port, { path: '/', headers: { host: 'orders.shop.svc.cluster.local' } })).body, 'orders')
  t.is((await request(port, { path: '/', headers: { host: 'orders' } })).body, 'orders')

  const ingress = loadConfigText(`admin: null\nlisteners: [{ name: edge, address: 127.0.0.1:0 }]\n${manifests}`)
  t.deepEqual(ingress.config?.listeners[0]?.routes, [], 'no Ingress names it: not reachable on an ingress listener')
  t.deepEqual(ingress.config?.services, [])
})

test('an unknown listener mode is refused with the valid ones', (t) => {
  const r = loadConfigText('listeners: [{ mode: sidecar }]', { file: 'm.yaml' })
  t.is(r.config, null)
  const errors = r.diagnostics.filter((d) => d.severity === 'error')
  t.deepEqual(errors.map((d) => `${d.line}:${d.column} ${d.message} (${d.hint})`), ['1:21 unknown listener mode "sidecar" (valid modes: ingress, outbound)'])
})
