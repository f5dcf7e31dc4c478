/**
 * Ingress paths match as Kubernetes specifies them: every row of the path-matching table in
 * https://kubernetes.io/docs/concepts/services-networking/ingress/#examples, plus an Exact path
 * with a trailing slash matching that path and case-sensitive matching, checked with real HTTP
 * requests through the proxy. Each row is one Ingress rule on a host of its own; every path goes
 * to a backend named after it, and a request no path of its row matches reaches the Ingress's
 * defaultBackend ("No, uses default backend" in the table). The native form's Exact paths keep
 * their trailing slash the same way.
 */
import test from 'ava'
import { startBackend, type Backend } from './helpers/backend.js'
import { get } from './helpers/http.js'
import { startProxy } from './helpers/proxy.js'

type PathType = 'Exact' | 'Prefix'

interface Row {
  /** The row's Ingress paths, in the order written. */
  paths: Array<[PathType, string]>
  /** The request path. */
  request: string
  /** The path that serves it (`Type path`), or null when none does and the defaultBackend answers. */
  expect: string | null
}

const NO_MATCH = 'defaultBackend'

// The Kubernetes table, one request per row (its "/foo, /foo/" cells are two rows).
const TABLE: Row[] = [
  { paths: [['Prefix', '/']], request: '/', expect: 'Prefix /' },
  { paths: [['Prefix', '/']], request: '/foo', expect: 'Prefix /' },
  { paths: [['Prefix', '/']], request: '/aaa/bbb/', expect: 'Prefix /' },
  { paths: [['Exact', '/foo']], request: '/foo', expect: 'Exact /foo' },
  { paths: [['Exact', '/foo']], request: '/bar', expect: null },
  { paths: [['Exact', '/foo']], request: '/foo/', expect: null },
  { paths: [['Exact', '/foo/']], request: '/foo', expect: null },
  { paths: [['Prefix', '/foo']], request: '/foo', expect: 'Prefix /foo' },
  { paths: [['Prefix', '/foo']], request: '/foo/', expect: 'Prefix /foo' },
  { paths: [['Prefix', '/foo/']], request: '/foo', expect: 'Prefix /foo/' },
  { paths: [['Prefix', '/foo/']], request: '/foo/', expect: 'Prefix /foo/' },
  { paths: [['Prefix', '/aaa/bb']], request: '/aaa/bbb', expect: null },
  { paths: [['Prefix', '/aaa/bbb']], request: '/aaa/bbb', expect: 'Prefix /aaa/bbb' },
  { paths: [['Prefix', '/aaa/bbb/']], request: '/aaa/bbb', expect: 'Prefix /aaa/bbb/' },
  { paths: [['Prefix', '/aaa/bbb']], request: '/aaa/bbb/', expect: 'Prefix /aaa/bbb' },
  { paths: [['Prefix', '/aaa/bbb']], request: '/aaa/bbb/ccc', expect: 'Prefix /aaa/bbb' },
  { paths: [['Prefix', '/aaa/bbb']], request: '/aaa/bbbxyz', expect: null },
  { paths: [['Prefix', '/'], ['Prefix', '/aaa']], request: '/aaa/ccc', expect: 'Prefix /aaa' },
  { paths: [['Prefix', '/'], ['Prefix', '/aaa'], ['Prefix', '/aaa/bbb']], request: '/aaa/bbb', expect: 'Prefix /aaa/bbb' },
  { paths: [['Prefix', '/'], ['Prefix', '/aaa'], ['Prefix', '/aaa/bbb']], request: '/ccc', expect: 'Prefix /' },
  { paths: [['Prefix', '/aaa']], request: '/ccc', expect: null },
  { paths: [['Prefix', '/foo'], ['Exact', '/foo']], request: '/foo', expect: 'Exact /foo' },
]

// Beyond the table: an Exact path ending in "/" matches exactly that, and matching is case-sensitive.
const MORE: Row[] = [
  { paths: [['Exact', '/foo/']], request: '/foo/', expect: 'Exact /foo/' },
  { paths: [['Exact', '/foo/'], ['Exact', '/foo']], request: '/foo/', expect: 'Exact /foo/' },
  { paths: [['Exact', '/foo/'], ['Exact', '/foo']], request: '/foo', expect: 'Exact /foo' },
  { paths: [['Prefix', '/FOO']], request: '/foo', expect: null },
  { paths: [['Prefix', '/FOO']], request: '/FOO/x', expect: 'Prefix /FOO' },
  { paths: [['Exact', '/FOO']], request: '/Foo', expect: null },
]

const ROWS = [...TABLE, ...MORE]

const describeRow = (row: Row): string =>
  `${row.paths.map(([type, path]) => `${type} ${path}`).join(', ')} × ${row.request} → ${row.expect ?? 'no match'}`

function ingressYaml(rows: Row[], serviceOf: (label: string) => string): string {
  const rules = rows
    .map((row, i) => {
      const paths = row.paths
        .map(([type, path]) => `      - { path: "${path}", pathType: ${type}, backend: { service: { name: ${serviceOf(`${type} ${path}`)}, port: { number: 80 } } } }`)
        .join('\n')
      return `  - host: row-${i}.example.com\n    http:\n      paths:\n${paths}`
    })
    .join('\n')
  return `apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: paths }
spec:
  defaultBackend: { service: { name: ${serviceOf(NO_MATCH)}, port: { number: 80 } } }
  rules:
${rules}
`
}

/** A Service (port 80 → the backend's port) and its EndpointSlice, for each backend. */
function servicesYaml(backends: Map<string, { service: string; backend: Backend }>): string {
  return [...backends.values()]
    .map(({ service, backend }) => `apiVersion: v1
kind: Service
metadata: { name: ${service} }
spec:
  ports: [{ port: 80, targetPort: ${backend.port} }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: ${service}-1, labels: { kubernetes.io/service-name: ${service} } }
addressType: IPv4
ports: [{ port: ${backend.port} }]
endpoints: [{ addresses: [127.0.0.1] }]
`)
    .join('---\n')
}

test('Ingress paths match as in the Kubernetes path-matching table', async (t) => {
  // One backend per distinct path (answering with its "Type path" label), one for the defaultBackend.
  const labels = new Set<string>([NO_MATCH])
  for (const row of ROWS) for (const [type, path] of row.paths) labels.add(`${type} ${path}`)
  const backends = new Map<string, { service: string; backend: Backend }>()
  for (const label of labels) backends.set(label, { service: `svc-${backends.size}`, backend: await startBackend(t, label) })
  const serviceOf = (label: string): string => backends.get(label)!.service

  const yaml = `${ingressYaml(ROWS, serviceOf)}---\n${servicesYaml(backends)}`
  const { port } = await startProxy(t, yaml, { defaultListen: '127.0.0.1:0', defaultAdmin: null })

  const failures: string[] = []
  for (const [i, row] of ROWS.entries()) {
    const res = await get(port, row.request, { host: `row-${i}.example.com` })
    const want = row.expect ?? NO_MATCH
    if (res.status !== 200 || res.body !== want) failures.push(`${describeRow(row)}: got ${res.status} from ${res.body || '(no body)'}`)
  }
  t.deepEqual(failures, [], `${failures.length} of ${ROWS.length} rows disagree with Kubernetes`)
})

test('native routes: an Exact path with a trailing slash matches only that path', async (t) => {
  const slash = await startBackend(t, 'Exact /v1/')
  const bare = await startBackend(t, 'Exact /v1')
  const rest = await startBackend(t, 'Prefix /')
  const { port } = await startProxy(
    t,
    `
admin: null
listeners:
  - address: 127.0.0.1:0
    routes:
      - { match: { path: /v1/, pathType: Exact }, service: slash }
      - { match: { path: /v1, pathType: Exact }, service: bare }
      - service: rest
services:
  - { name: slash, endpoints: [${slash.address}] }
  - { name: bare, endpoints: [${bare.address}] }
  - { name: rest, endpoints: [${rest.address}] }
`,
  )
  const served: Array<[string, string]> = []
  for (const path of ['/v1/', '/v1', '/v1//', '/v1/x', '/v1/x/..']) served.push([path, (await get(port, path)).body])
  t.deepEqual(served, [
    ['/v1/', 'Exact /v1/'],
    ['/v1', 'Exact /v1'],
    ['/v1//', 'Exact /v1/'],
    ['/v1/x', 'Prefix /'],
    ['/v1/x/..', 'Exact /v1/'],
  ])
})
