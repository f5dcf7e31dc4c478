import test from 'ava'
import { formatDiagnostic, loadConfigText, type ConfigModel, type Diagnostic, type LoadResult } from '../ts/config/index.js'

const errors = (r: LoadResult): Diagnostic[] => r.diagnostics.filter((d) => d.severity === 'error')
const warnings = (r: LoadResult): Diagnostic[] => r.diagnostics.filter((d) => d.severity === 'warning')
const lines = (ds: Diagnostic[]): string[] => ds.map(formatDiagnostic)

/** Loads text that must produce a config without errors. */
function load(text: string, opts = {}): ConfigModel {
  const r = loadConfigText(text, { file: 'test.yaml', ...opts })
  if (!r.config) throw new Error(`unexpected errors:\n${lines(r.diagnostics).join('\n')}`)
  return r.config
}

const FULL = `
admin: 127.0.0.1:9991
listeners:
  - name: web
    address: 127.0.0.1:8140
    maxConnections: 500
    headerReadTimeout: 5s
    idleTimeout: 1m
    maxHeaderBytes: 32768
    maxUriBytes: 4096
    routes:
      - name: api
        match:
          hosts: [API.example.com, "*.Example.org"]
          path: /v1/
          pathType: Exact
          methods: [get, Post]
          headers: { X-Canary: "true" }
        service: api
        timeout: 2500ms
      - service: web
services:
  - name: api
    balancer: { hash: { header: X-User } }
    endpoints:
      - 127.0.0.1:8081
      - { address: 127.0.0.1:8082, weight: 2 }
    connectTimeout: 250ms
    maxInflightPerEndpoint: 10
    maxPendingPerEndpoint: 0
    pool: { maxIdlePerEndpoint: 8, idleTimeout: 2s }
  - name: web
    balancer: random
    endpoints: ["[::1]:9000"]
`

test('native document loads into the exact model', (t) => {
  const r = loadConfigText(FULL, { file: 'test.yaml' })
  t.deepEqual(r.diagnostics, [])
  t.deepEqual(r.config, {
    admin: { address: '127.0.0.1:9991' },
    listeners: [
      {
        name: 'web',
        address: '127.0.0.1:8140',
        protocol: 'http',
        maxConnections: 500,
        headerReadTimeoutMs: 5000,
        idleTimeoutMs: 60000,
        maxHeaderBytes: 32768,
        maxUriBytes: 4096,
        routes: [
          {
            name: 'api',
            hosts: ['api.example.com', '*.example.org'],
            path: { type: 'Exact', value: '/v1' },
            methods: ['GET', 'POST'],
            headers: [{ name: 'x-canary', value: 'true' }],
            service: 'api',
            responseHeaderTimeoutMs: 2500,
          },
          {
            name: 'web-route-1',
            hosts: [],
            path: { type: 'Prefix', value: '/' },
            methods: [],
            headers: [],
            service: 'web',
            responseHeaderTimeoutMs: 15000,
          },
        ],
      },
    ],
    services: [
      {
        name: 'api',
        balancer: { kind: 'hash', header: 'x-user' },
        endpoints: [
          { address: '127.0.0.1:8081', weight: 1 },
          { address: '127.0.0.1:8082', weight: 2 },
        ],
        connectTimeoutMs: 250,
        maxInflightPerEndpoint: 10,
        maxPendingPerEndpoint: 0,
        pool: { maxIdlePerEndpoint: 8, idleTimeoutMs: 2000 },
      },
      {
        name: 'web',
        balancer: { kind: 'random' },
        endpoints: [{ address: '[::1]:9000', weight: 1 }],
        connectTimeoutMs: 1000,
        maxInflightPerEndpoint: 1000,
        maxPendingPerEndpoint: 1000,
        pool: { maxIdlePerEndpoint: 64, idleTimeoutMs: 4000 },
      },
    ],
  })
  t.deepEqual(r.summary, { listeners: 1, routes: 2, services: 2, endpoints: 3 })
})

test('every default is applied', (t) => {
  const config = load(`
listeners:
  - routes:
      - service: s
services:
  - name: s
    endpoints: [127.0.0.1:1]
`)
  t.deepEqual(config, {
    admin: { address: '127.0.0.1:4191' },
    listeners: [
      {
        name: 'listener-0',
        address: '127.0.0.1:4140',
        protocol: 'http',
        maxConnections: 10000,
        headerReadTimeoutMs: 10000,
        idleTimeoutMs: 60000,
        maxHeaderBytes: 65536,
        maxUriBytes: 8192,
        routes: [
          {
            name: 'listener-0-route-0',
            hosts: [],
            path: { type: 'Prefix', value: '/' },
            methods: [],
            headers: [],
            service: 's',
            responseHeaderTimeoutMs: 15000,
          },
        ],
      },
    ],
    services: [
      {
        name: 's',
        balancer: { kind: 'round-robin' },
        endpoints: [{ address: '127.0.0.1:1', weight: 1 }],
        connectTimeoutMs: 1000,
        maxInflightPerEndpoint: 1000,
        maxPendingPerEndpoint: 1000,
        pool: { maxIdlePerEndpoint: 64, idleTimeoutMs: 4000 },
      },
    ],
  })
})

test('default listen and admin options, admin: null, and overrides', (t) => {
  const text = 'listeners: [{ routes: [{ service: s }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]\n'
  const a = load(text, { defaultListen: '0.0.0.0:80', defaultAdmin: null })
  t.is(a.listeners[0]?.address, '0.0.0.0:80')
  t.is(a.admin, null)
  t.is(load('admin: null\n' + text).admin, null)
  const b = load('admin: 127.0.0.1:7000\n' + text, { listenOverride: '127.0.0.1:0', adminOverride: '127.0.0.1:7001' })
  t.is(b.listeners[0]?.address, '127.0.0.1:0')
  t.deepEqual(b.admin, { address: '127.0.0.1:7001' })
  // No listener in the file: the override creates one.
  const c = load('services: []', { listenOverride: '127.0.0.1:5000' })
  t.is(c.listeners.length, 1)
  t.is(c.listeners[0]?.address, '127.0.0.1:5000')
})

test('durations: ms integers and unit strings', (t) => {
  const cases: Array<[string, number]> = [['1500', 1500], ['10s', 10000], ['500ms', 500], ['1m', 60000], ['1m30s', 90000], ['1.5s', 1500], ['1h', 3600000], ['0', 0], ['0s', 0]]
  for (const [text, ms] of cases) {
    const config = load(`listeners: [{ routes: [{ service: s, timeout: ${text} }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]`)
    t.is(config.listeners[0]?.routes[0]?.responseHeaderTimeoutMs, ms, text)
  }
  for (const bad of ['"10"', '10x', '-1', '1.5', '0.5ms', 'fast']) {
    const r = loadConfigText(`listeners: [{ routes: [{ service: s, timeout: ${bad} }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]`)
    t.is(r.config, null, bad)
    t.is(errors(r).length, 1, bad)
    t.regex(errors(r)[0]?.message ?? '', /timeout/, bad)
  }
  // Zero is "no limit" only for the route timeout.
  const zero = loadConfigText('listeners: [{ idleTimeout: 0s }]')
  t.regex(errors(zero)[0]?.message ?? '', /idleTimeout.*between 1ms/)
})

test('unknown field: suggestion and the key position', (t) => {
  const r = loadConfigText(['listeners:', '  - name: web', '    adress: 127.0.0.1:4140', ''].join('\n'), { file: 'cfg.yaml' })
  t.is(r.config, null)
  const [e] = errors(r)
  t.like(e, { file: 'cfg.yaml', line: 3, column: 5, message: 'unknown field "adress" in listener', hint: 'did you mean "address"?' })
  t.is(formatDiagnostic(e!), 'cfg.yaml:3:5: error: unknown field "adress" in listener (did you mean "address"?)')
})

test('unknown field suggestions cover case, snake_case and truncation; no close match lists the fields', (t) => {
  const r = loadConfigText('listeners: [{ MaxConnections: 1, max_uri_bytes: 1, routes: [] }]\nservices: [{ name: s, pool: { maxIdle: 1 }, zzz: 1 }]')
  const hints = errors(r).map((d) => d.hint)
  t.true(hints.includes('did you mean "maxConnections"?'))
  t.true(hints.includes('did you mean "maxUriBytes"?'))
  t.true(hints.includes('did you mean "maxIdlePerEndpoint"?'))
  t.true(hints.some((h) => h?.startsWith('valid fields: name, balancer, endpoints')))
})

test('wrong types and missing required fields name what was expected', (t) => {
  const r = loadConfigText('listeners: { name: x }\nservices:\n  - endpoints: [127.0.0.1:1]\n  - name: t\n    endpoints: [{ weight: 2 }]\n    maxInflightPerEndpoint: lots')
  const msgs = errors(r).map((d) => d.message)
  t.true(msgs.some((m) => /"listeners" in config document must be a list, got a mapping/.test(m)))
  t.true(msgs.includes('service is missing required field "name"'))
  t.true(msgs.includes('endpoint is missing required field "address"'))
  t.true(msgs.some((m) => /"maxInflightPerEndpoint" in service must be an integer, got string "lots"/.test(m)))
})

test('several errors are reported at once, in file order, with positions', (t) => {
  const text = [
    'listeners:', //                           1
    '  - address: 127.0.0.1:99999', //          2
    '    maxConnections: 0', //                 3
    '    routes:', //                           4
    '      - match: { path: v1, host: "a.*.com" }', // 5
    '        service: s', //                    6
    'services:', //                             7
    '  - name: s', //                           8
    '    balancer: { hash: {} }', //            9
    '    endpoints: [{ address: 127.0.0.1:80, weight: 1001 }]', // 10
  ].join('\n')
  const r = loadConfigText(text, { file: 'x.yaml' })
  t.is(r.config, null)
  t.deepEqual(errors(r).map((d) => [d.line, d.column]), [[2, 14], [3, 21], [5, 24], [5, 34], [9, 23], [10, 50]])
  for (const d of errors(r)) t.true(formatDiagnostic(d).startsWith(`x.yaml:${d.line}:${d.column}: error: `))
})

test('route to an undefined service names the closest service', (t) => {
  const r = loadConfigText('listeners: [{ routes: [{ name: r1, service: backnd }] }]\nservices: [{ name: backend, endpoints: [127.0.0.1:1] }, { name: other, endpoints: [127.0.0.1:2] }]')
  const [e] = errors(r)
  t.like(e, { line: 1, column: 45, message: 'route "r1" refers to undefined service "backnd"', hint: 'did you mean "backend"?' })
  const none = loadConfigText('listeners: [{ routes: [{ service: zzz }] }]\nservices: [{ name: backend, endpoints: [127.0.0.1:1] }]')
  t.is(errors(none)[0]?.hint, 'defined services: backend')
})

test('duplicate ports, names and admin clashes', (t) => {
  const r = loadConfigText([
    'admin: 127.0.0.1:4191',
    'listeners:',
    '  - { name: a, address: 127.0.0.1:8000, routes: [{ service: s }] }',
    '  - { name: b, address: 0.0.0.0:8000, routes: [{ service: s }] }',
    '  - { name: a, address: 127.0.0.2:8001, routes: [{ service: s }] }',
    '  - { name: d, address: 127.0.0.1:4191, routes: [{ service: s }] }',
    '  - { name: e, address: 127.0.0.1:0, routes: [{ service: s }] }',
    '  - { name: f, address: 127.0.0.1:0, routes: [{ service: s, name: x }, { service: s, name: x }] }',
    'services: [{ name: s, endpoints: [127.0.0.1:1] }, { name: s, endpoints: [127.0.0.1:2] }]',
  ].join('\n'))
  const found = errors(r).map((d) => `${d.line}: ${d.message}`)
  t.deepEqual(found, [
    '4: listener "b" address 0.0.0.0:8000 conflicts with listener "a" (127.0.0.1:8000)',
    '5: duplicate listener name "a"',
    '6: listener "d" address 127.0.0.1:4191 conflicts with the admin server (127.0.0.1:4191)',
    '8: duplicate route name "x" in listener "f"',
    '9: duplicate service name "s"',
  ])
})

test('path normalization', (t) => {
  const cases: Array<[string, string]> = [['/a/../admin', '/admin'], ['//a//b/', '/a/b'], ['/./x/.', '/x'], ['/', '/'], ['/../..', '/'], ['/v1/', '/v1']]
  for (const [input, expected] of cases) {
    const config = load(`listeners: [{ routes: [{ service: s, match: { path: "${input}" } }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]`)
    t.is(config.listeners[0]?.routes[0]?.path.value, expected, input)
  }
  const r = loadConfigText('listeners: [{ routes: [{ service: s, match: { path: "/a?b=1" } }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]')
  t.regex(errors(r)[0]?.message ?? '', /query/)
  const ist = load('listeners: [{ routes: [{ service: s, match: { pathType: ImplementationSpecific } }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]')
  t.is(ist.listeners[0]?.routes[0]?.path.type, 'Prefix')
})

test('hosts, methods and headers are validated and normalized', (t) => {
  const config = load('listeners: [{ routes: [{ service: s, match: { host: "*.Example.COM.", method: delete, headers: { X-A: 1 } } }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]')
  const route = config.listeners[0]?.routes[0]
  t.deepEqual(route?.hosts, ['*.example.com'])
  t.deepEqual(route?.methods, ['DELETE'])
  t.deepEqual(route?.headers, [{ name: 'x-a', value: '1' }])
  for (const host of ['a.*.com', '*', 'a:80', 'foo..com', '**.a.com']) {
    const r = loadConfigText(`listeners: [{ routes: [{ service: s, match: { host: "${host}" } }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]`)
    t.is(errors(r).length, 1, host)
  }
  const both = loadConfigText('listeners: [{ routes: [{ service: s, match: { host: a.com, hosts: [b.com] } }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]')
  t.regex(errors(both)[0]?.message ?? '', /both "host" and "hosts"/)
})

test('balancer forms', (t) => {
  const balancer = (text: string) =>
    loadConfigText(`listeners: [{ routes: [{ service: s }] }]\nservices: [{ name: s, balancer: ${text}, endpoints: [127.0.0.1:1] }]`)
  t.deepEqual(balancer('round-robin').config?.services[0]?.balancer, { kind: 'round-robin' })
  t.deepEqual(balancer('hash').config?.services[0]?.balancer, { kind: 'hash', source: true })
  t.deepEqual(balancer('{ hash: { cookie: session } }').config?.services[0]?.balancer, { kind: 'hash', cookie: 'session' })
  t.deepEqual(balancer('{ hash: { source: true } }').config?.services[0]?.balancer, { kind: 'hash', source: true })
  for (const bad of ['{ hash: { header: a, source: true } }', '{ hash: {} }', '{ hash: { source: false } }', 'least-conn', '{ random: {}, hash: {} }', '{ hash: { header: "a b" } }']) {
    t.is(balancer(bad).config, null, bad)
  }
  t.is(errors(balancer('{ hash: {} }'))[0]?.message, 'hash balancer needs exactly one key source, got 0')
})

test('address syntax', (t) => {
  const endpoint = (a: string) => loadConfigText(`listeners: [{ routes: [{ service: s }] }]\nservices: [{ name: s, endpoints: ["${a}"] }]`)
  for (const ok of ['127.0.0.1:0', '127.0.0.1:65535', '[::1]:80', 'Backend.local:8080']) t.not(endpoint(ok).config, null, ok)
  t.is(endpoint('Backend.local:8080').config?.services[0]?.endpoints[0]?.address, 'backend.local:8080')
  for (const bad of ['127.0.0.1', '127.0.0.1:65536', '::1:80', ':80', '300.1.1.1:80', 'http://a:80', '[::1]80', 'a b:80']) {
    t.is(endpoint(bad).config, null, bad)
  }
  t.is(errors(endpoint('::1:80'))[0]?.hint, 'write it as [::1]:80')
})

test('multiple native documents merge; admin set twice is an error', (t) => {
  const config = load('listeners: [{ name: a, address: 127.0.0.1:1000, routes: [{ service: s }] }]\n---\n# just a comment\n---\nlisteners: [{ address: 127.0.0.1:1001, routes: [{ service: t }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]\n---\napiVersion: meshproxy.io/v1alpha1\nkind: Config\nservices: [{ name: t, endpoints: [127.0.0.1:2] }]')
  t.deepEqual(config.listeners.map((l) => l.name), ['a', 'listener-1'])
  t.deepEqual(config.services.map((s) => s.name), ['s', 't'])
  const r = loadConfigText('admin: 127.0.0.1:1\n---\nadmin: 127.0.0.1:2\n')
  t.like(errors(r)[0], { line: 3, message: 'admin is set in more than one document', hint: 'first set at line 1' })
})

test('warnings do not fail the load', (t) => {
  const r = loadConfigText('listeners: [{ routes: [] }]\nservices: [{ name: s }]')
  t.not(r.config, null)
  t.deepEqual(warnings(r).map((d) => d.message), [
    'listener "listener-0" has no routes; no request will match',
    'service "s" has no endpoints; routes to it answer 503 no-endpoints',
    'service "s" is not used by any route',
  ])
})

test('YAML syntax errors carry the parser position', (t) => {
  const r = loadConfigText('listeners:\n  - name: a\n    address: [1, 2\n  - name: b\n', { file: 'bad.yaml' })
  t.is(r.config, null)
  const [e] = errors(r)
  t.like(e, { file: 'bad.yaml', line: 4, column: 3 })
  t.regex(e?.message ?? '', /Flow sequence/)
  const dup = loadConfigText('services: []\nservices: []\n')
  t.like(errors(dup)[0], { line: 2, column: 1, message: 'Map keys must be unique' })
  // A document that is not a mapping.
  t.like(errors(loadConfigText('- a\n- b\n'))[0], { line: 1, column: 1, message: 'a config document must be a mapping' })
})

test('empty input loads to an empty config with a default admin', (t) => {
  const r = loadConfigText('')
  t.deepEqual(r.config, { listeners: [], services: [], admin: { address: '127.0.0.1:4191' } })
  t.deepEqual(r.diagnostics, [])
})

test('invalid options are reported without a file position', (t) => {
  const r = loadConfigText('', { listenOverride: 'nope', defaultAdmin: '1.2.3.4' })
  t.deepEqual(lines(errors(r)), [
    '<options>: error: invalid listenOverride address: address "nope" has no port (write it as host:port, e.g. 127.0.0.1:4140)',
    '<options>: error: invalid defaultAdmin address: address "1.2.3.4" has no port (write it as host:port, e.g. 127.0.0.1:4140)',
  ])
})
