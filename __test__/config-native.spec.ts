import test from 'ava'
import { formatDiagnostic, loadConfigText, type ConfigModel, type Diagnostic, type LoadResult } from '../ts/config/index.js'
import { DOCUMENTED_HTTP2_DEFAULTS, LISTENER_DEFAULTS, ROUTE_DEFAULTS, SERVICE_DEFAULTS } from './helpers/defaults.js'

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
    http2:
      maxConcurrentStreams: 250
      maxHeaderListSize: 32768
      connectionWindowSize: 4194304
      streamWindowSize: 65535
      keepAliveInterval: 0
      keepAliveTimeout: 5s
    routes:
      - name: api
        match:
          hosts: [API.example.com, "*.Example.org"]
          path: /v1/
          pathType: Exact
          methods: [get, Post]
          headers: { X-Canary: "true" }
          query: { debug: "1", user name: a b }
          cookies: { channel: beta }
        service: api
        timeout: 2500ms
        idleTimeout: 30s
        retry: { limit: 3, http: 502-504, grpc: unavailable, timeout: 300ms, nonIdempotent: true, budgetPercent: 50, budgetMinPerSecond: 5 }
        requestHeaders: { set: { X-Env: prod }, add: { x-tag: 1 }, remove: [X-Internal] }
        responseHeaders: { remove: [server] }
        rewrite: { host: Backend.internal, path: /v2/ }
      - service: web
      - name: moved
        match: { path: /old }
        redirect: { scheme: https, prefix: /new, statusCode: 301 }
services:
  - name: api
    balancer: { hash: { header: X-User } }
    endpoints:
      - 127.0.0.1:8081
      - { address: 127.0.0.1:8082, weight: 2 }
    protocol: http2
    maxStreamsPerConnection: 50
    connectTimeout: 250ms
    maxInflightPerEndpoint: 10
    maxPendingPerEndpoint: 0
    pool: { maxIdlePerEndpoint: 8, idleTimeout: 2s }
    failureStatuses: 5xx, 429
    failureGrpcStatuses: unavailable
    failureAccrual: { consecutiveFailures: 5, minPenalty: 2s, maxPenalty: 1m, jitterPercent: 0, maxEjectionPercent: 34 }
    circuitBreaker: { maxRequests: 200 }
    healthCheck: { path: /ready?deep=1, interval: 5s, timeout: 500ms, healthyThreshold: 1, unhealthyThreshold: 4, expectedStatuses: 2xx }
  - name: web
    balancer: random
    endpoints: ["[::1]:9000"]
`

test('native document loads into the exact model', (t) => {
  const r = loadConfigText(FULL, { file: 'test.yaml' })
  t.deepEqual(r.diagnostics, [])
  t.deepEqual(r.config, {
    admin: { address: '127.0.0.1:9991' },
    identity: null,
    listeners: [
      {
        name: 'web',
        address: '127.0.0.1:8140',
        protocol: 'http',
        tcpService: null,
        detectTimeoutMs: 1000,
        maxConnections: 500,
        headerReadTimeoutMs: 5000,
        idleTimeoutMs: 60000,
        maxHeaderBytes: 32768,
        maxUriBytes: 4096,
        tunnelIdleTimeoutMs: 300000,
        http2: {
          maxConcurrentStreams: 250,
          maxHeaderListSize: 32768,
          connectionWindowSize: 4194304,
          streamWindowSize: 65535,
          keepAliveIntervalMs: 0,
          keepAliveTimeoutMs: 5000,
        },
        proxyHeaders: true,
        authorization: { default: 'allow', rules: [] },
        tls: null,
        mtls: 'off',
        routes: [
          {
            name: 'api',
            hosts: ['api.example.com', '*.example.org'],
            path: { type: 'Exact', value: '/v1/' },
            methods: ['GET', 'POST'],
            headers: [{ name: 'x-canary', value: 'true' }],
            service: 'api',
            responseHeaderTimeoutMs: 2500,
            idleTimeoutMs: 30000,
            allowConnect: false,
            retry: { limit: 3, http: '502-504', grpc: 'unavailable', timeoutMs: 300, nonIdempotent: true, budgetPercent: 50, budgetMinPerSecond: 5 },
            queryParams: [
              { name: 'debug', value: '1' },
              { name: 'user name', value: 'a b' },
            ],
            cookies: [{ name: 'channel', value: 'beta' }],
            requestHeaders: { set: [{ name: 'x-env', value: 'prod' }], add: [{ name: 'x-tag', value: '1' }], remove: ['x-internal'] },
            responseHeaders: { set: [], add: [], remove: ['server'] },
            rewrite: { host: 'backend.internal', path: '/v2/', prefix: null },
            redirect: null,
            authorization: [],
            rateLimits: [],
            backends: [],
            policies: [],
          },
          {
            name: 'web-route-1',
            service: 'web',
            ...ROUTE_DEFAULTS(),
          },
          {
            name: 'moved',
            ...ROUTE_DEFAULTS(),
            path: { type: 'Prefix', value: '/old' },
            service: '',
            redirect: { scheme: 'https', host: null, port: 0, path: null, prefix: '/new', statusCode: 301 },
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
        protocol: 'http2',
        connectTimeoutMs: 250,
        maxInflightPerEndpoint: 10,
        maxPendingPerEndpoint: 0,
        maxStreamsPerConnection: 50,
        pool: { maxIdlePerEndpoint: 8, idleTimeoutMs: 2000 },
        failureStatuses: '429,500-599',
        failureGrpcStatuses: 'unavailable',
        failureAccrual: { consecutiveFailures: 5, minPenaltyMs: 2000, maxPenaltyMs: 60000, jitterPercent: 0, maxEjectionPercent: 34 },
        circuitBreaker: { maxRequests: 200, maxPendingRequests: 0, maxConnections: 0 },
        healthCheck: { path: '/ready?deep=1', intervalMs: 5000, timeoutMs: 500, healthyThreshold: 1, unhealthyThreshold: 4, expectedStatuses: '200-299' },
        rateLimits: [],
        policies: [],
        tls: null,
        identity: null,
      },
      {
        name: 'web',
        balancer: { kind: 'random' },
        endpoints: [{ address: '[::1]:9000', weight: 1 }],
        ...SERVICE_DEFAULTS(),
      },
    ],
  })
  t.deepEqual(r.summary, { listeners: 1, routes: 3, services: 2, endpoints: 3 })
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
    identity: null,
    listeners: [
      {
        name: 'listener-0',
        address: '127.0.0.1:4140',
        ...LISTENER_DEFAULTS(),
        routes: [
          {
            name: 'listener-0-route-0',
            service: 's',
            ...ROUTE_DEFAULTS(),
          },
        ],
      },
    ],
    services: [
      {
        name: 's',
        balancer: { kind: 'round-robin' },
        endpoints: [{ address: '127.0.0.1:1', weight: 1 }],
        ...SERVICE_DEFAULTS(),
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
  // Zero is "no limit" only for the route's timeouts (its idleTimeout too), never a listener's.
  const zero = loadConfigText('listeners: [{ idleTimeout: 0s }]')
  t.regex(errors(zero)[0]?.message ?? '', /idleTimeout.*between 1ms/)
})


test('http2: defaults for every listener, also with an empty or partial http2 mapping', (t) => {
  const config = load(`
listeners:
  - { name: a, address: 127.0.0.1:1000, routes: [{ service: s }] }
  - { name: b, address: 127.0.0.1:1001, http2: {}, routes: [{ service: s }] }
  - { name: c, address: 127.0.0.1:1002, http2: null, routes: [{ service: s }] }
  - { name: d, address: 127.0.0.1:1003, http2: { maxConcurrentStreams: 1 }, routes: [{ service: s }] }
services: [{ name: s, endpoints: [127.0.0.1:1] }]
`)
  t.deepEqual(config.listeners.map((l) => l.http2), [DOCUMENTED_HTTP2_DEFAULTS, DOCUMENTED_HTTP2_DEFAULTS, DOCUMENTED_HTTP2_DEFAULTS, { ...DOCUMENTED_HTTP2_DEFAULTS, maxConcurrentStreams: 1 }])
  // Each listener has its own copy: changing one must not change the defaults of another.
  t.not(config.listeners[0]!.http2, config.listeners[1]!.http2)
  // A listener created by an option gets them too.
  t.deepEqual(load('services: []', { listenOverride: '127.0.0.1:5000' }).listeners[0]?.http2, DOCUMENTED_HTTP2_DEFAULTS)
})

test('http2: keep-alive times are durations; 0 turns the interval off but not the timeout', (t) => {
  const http2 = (fields: string) => loadConfigText(`listeners: [{ http2: { ${fields} }, routes: [{ service: s }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]`)
  const cases: Array<[string, number, number]> = [
    ['keepAliveInterval: 20s, keepAliveTimeout: 20000', 20000, 20000],
    ['keepAliveInterval: 1m30s, keepAliveTimeout: 500ms', 90000, 500],
    ['keepAliveInterval: 0, keepAliveTimeout: 1', 0, 1],
    ['keepAliveInterval: 0s', 0, 20000],
  ]
  for (const [fields, interval, timeout] of cases) {
    t.like(http2(fields).config?.listeners[0]?.http2, { keepAliveIntervalMs: interval, keepAliveTimeoutMs: timeout }, fields)
  }
  const zero = http2('keepAliveTimeout: 0s')
  t.is(zero.config, null)
  t.deepEqual(lines(errors(zero)), ['<config>:1:42: error: "keepAliveTimeout" in listener http2 must be between 1ms and 4294967295ms, got 0ms (0 is not allowed here)'])
  const unitless = http2('keepAliveInterval: "20"')
  t.like(errors(unitless)[0], { message: '"keepAliveInterval" in listener http2: duration "20" has no unit', hint: 'write 20ms or 20s' })
})

/** `h2.yaml`: a listener whose http2 mapping has `fields`, one a line from line 3 on, at column 7. */
function withHttp2(fields: string[]): LoadResult {
  const text = ['listeners:', '  - http2:', ...fields.map((f) => `      ${f}`), '    routes: [{ service: s }]', 'services: [{ name: s, endpoints: [127.0.0.1:1] }]']
  return loadConfigText(text.join('\n'), { file: 'h2.yaml' })
}

test('http2: ranges of the sizes, reported at the value', (t) => {
  const r = withHttp2(['maxConcurrentStreams: 0', 'maxHeaderListSize: 1023', 'connectionWindowSize: 65534', 'streamWindowSize: 2147483648'])
  t.is(r.config, null)
  t.deepEqual(lines(errors(r)), [
    'h2.yaml:3:29: error: "maxConcurrentStreams" in listener http2 must be between 1 and 4294967295, got 0',
    'h2.yaml:4:26: error: "maxHeaderListSize" in listener http2 must be between 1024 and 4294967295, got 1023',
    'h2.yaml:5:29: error: "connectionWindowSize" in listener http2 must be between 65535 and 2147483647, got 65534',
    'h2.yaml:6:25: error: "streamWindowSize" in listener http2 must be between 65535 and 2147483647, got 2147483648',
  ])
  const notMap = loadConfigText('listeners: [{ http2: true }]')
  t.like(errors(notMap)[0], { line: 1, column: 22, message: 'listener http2 must be a mapping, got boolean true' })
})

test('http2: unknown fields get a suggestion at the key', (t) => {
  const r = withHttp2(['maxConcurrentStream: 10', 'keepAliveIntervalMs: 1000', 'initialWindowSize: 65535'])
  t.is(r.config, null)
  t.deepEqual(lines(errors(r)), [
    'h2.yaml:3:7: error: unknown field "maxConcurrentStream" in listener http2 (did you mean "maxConcurrentStreams"?)',
    'h2.yaml:4:7: error: unknown field "keepAliveIntervalMs" in listener http2 (did you mean "keepAliveInterval"?)',
    // Nothing close: the valid fields are listed.
    'h2.yaml:5:7: error: unknown field "initialWindowSize" in listener http2 (valid fields: maxConcurrentStreams, maxHeaderListSize, connectionWindowSize, streamWindowSize, keepAliveInterval, keepAliveTimeout)',
  ])
  // The listener itself knows the new key.
  const misspelt = loadConfigText('listeners: [{ htp2: {} }]')
  t.like(errors(misspelt)[0], { message: 'unknown field "htp2" in listener', hint: 'did you mean "http2"?' })
})

test('service protocol and maxStreamsPerConnection', (t) => {
  const service = (fields: string) => loadConfigText(`listeners: [{ routes: [{ service: s }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1]${fields} }]`, { file: 'p.yaml' })
  t.like(service('').config?.services[0], { protocol: 'http1', maxStreamsPerConnection: 100 })
  for (const p of ['http1', 'http2', 'auto'] as const) t.is(service(`, protocol: ${p}`).config?.services[0]?.protocol, p)
  t.is(service(', maxStreamsPerConnection: 1').config?.services[0]?.maxStreamsPerConnection, 1)
  t.deepEqual(lines(errors(service(', maxStreamsPerConnection: 0'))), [
    'p.yaml:2:74: error: "maxStreamsPerConnection" in service must be between 1 and 4294967295, got 0',
  ])
})

test('invalid service protocol: error at the value, the valid values as hint', (t) => {
  const protocol = (p: string) => errors(loadConfigText(`services: [{ name: s, protocol: ${p} }]`, { file: 'p.yaml' }))
  t.deepEqual(lines(protocol('spdy')), ['p.yaml:1:33: error: unknown service protocol "spdy" (valid protocols: http1, http2, auto)'])
  t.deepEqual(lines(protocol('HTTP2')), ['p.yaml:1:33: error: unknown service protocol "HTTP2" (did you mean "http2"? valid protocols: http1, http2, auto)'])
  // Common names for the protocols point at the model's names.
  t.is(protocol('h2c')[0]?.hint, 'did you mean "http2"? valid protocols: http1, http2, auto')
  t.is(protocol('grpc')[0]?.hint, 'did you mean "http2"? valid protocols: http1, http2, auto')
  t.is(protocol('"HTTP/1.1"')[0]?.hint, 'did you mean "http1"? valid protocols: http1, http2, auto')
  t.deepEqual(lines(protocol('2')), ['p.yaml:1:33: error: "protocol" in service must be a string, got number 2'])
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

test('path normalization: dot and empty segments go; Exact keeps a trailing slash, Prefix drops it', (t) => {
  const prefix: Array<[string, string]> = [['/a/../admin', '/admin'], ['//a//b/', '/a/b'], ['/./x/.', '/x'], ['/', '/'], ['/../..', '/'], ['/v1/', '/v1']]
  for (const [input, expected] of prefix) {
    const config = load(`listeners: [{ routes: [{ service: s, match: { path: "${input}" } }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]`)
    t.is(config.listeners[0]?.routes[0]?.path.value, expected, input)
  }
  const exact: Array<[string, string]> = [['/v1/', '/v1/'], ['/v1', '/v1'], ['//a//b//', '/a/b/'], ['/x/.', '/x/'], ['/a/b/..', '/a/'], ['/', '/'], ['/a/..', '/']]
  for (const [input, expected] of exact) {
    // pathType before or after path: the order of the fields does not matter.
    for (const match of [`{ pathType: Exact, path: "${input}" }`, `{ path: "${input}", pathType: Exact }`]) {
      const config = load(`listeners: [{ routes: [{ service: s, match: ${match} }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]`)
      t.deepEqual(config.listeners[0]?.routes[0]?.path, { type: 'Exact', value: expected }, match)
    }
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
  t.deepEqual(r.config, { listeners: [], services: [], admin: { address: '127.0.0.1:4191' }, identity: null })
  t.deepEqual(r.diagnostics, [])
})

test('invalid options are reported without a file position', (t) => {
  const r = loadConfigText('', { listenOverride: 'nope', defaultAdmin: '1.2.3.4' })
  t.deepEqual(lines(errors(r)), [
    '<options>: error: invalid listenOverride address: address "nope" has no port (write it as host:port, e.g. 127.0.0.1:4140)',
    '<options>: error: invalid defaultAdmin address: address "1.2.3.4" has no port (write it as host:port, e.g. 127.0.0.1:4140)',
  ])
})

const TCP = `
listeners:
  - name: db
    address: 127.0.0.1:3306
    protocol: tcp
    tcpService: mysql
  - name: web
    address: 127.0.0.1:8080
    protocol: http
    tcpService: smtp
    detectTimeout: 300ms
    routes: [{ service: web }]
  - name: plain
    address: 127.0.0.1:8081
    tcpService: null
    detectTimeout: 2500
    routes: [{ service: web }]
services:
  - { name: mysql, endpoints: [127.0.0.1:13306] }
  - { name: smtp, endpoints: [127.0.0.1:2525] }
  - { name: web, endpoints: [127.0.0.1:9000] }
`

test('listener protocol, tcpService and detectTimeout load into the model', (t) => {
  const r = loadConfigText(TCP, { file: 'tcp.yaml' })
  t.deepEqual(r.diagnostics, [])
  const [db, web, plain] = r.config!.listeners
  t.deepEqual(db, {
    name: 'db',
    address: '127.0.0.1:3306',
    ...LISTENER_DEFAULTS(),
    protocol: 'tcp',
    tcpService: 'mysql',
    routes: [],
  })
  t.like(web, { protocol: 'http', tcpService: 'smtp', detectTimeoutMs: 300 })
  t.like(plain, { protocol: 'http', tcpService: null, detectTimeoutMs: 2500 })
})

test('detectTimeout is a duration of at least 1ms; misspelt keys get a suggestion', (t) => {
  const listener = (fields: string) =>
    loadConfigText(`listeners: [{ ${fields}, tcpService: s, routes: [{ service: s }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]`, { file: 'd.yaml' })
  const cases: Array<[string, number]> = [['1', 1], ['250ms', 250], ['1s', 1000], ['1m', 60000]]
  for (const [text, ms] of cases) t.is(listener(`detectTimeout: ${text}`).config?.listeners[0]?.detectTimeoutMs, ms, text)
  t.deepEqual(lines(errors(listener('detectTimeout: 0'))), [
    'd.yaml:1:30: error: "detectTimeout" in listener must be between 1ms and 4294967295ms, got 0ms (0 is not allowed here)',
  ])
  t.like(errors(listener('detectTimeout: fast'))[0], { line: 1, column: 30, message: '"detectTimeout" in listener: "fast" is not a duration' })
  t.like(errors(listener('detectTimeoutMs: 300'))[0], { message: 'unknown field "detectTimeoutMs" in listener', hint: 'did you mean "detectTimeout"?' })
  t.like(errors(listener('tcp_service: s'))[0], { message: 'unknown field "tcp_service" in listener', hint: 'did you mean "tcpService"?' })
  t.like(errors(listener('detectTimeout: 1s, tcpService: [s]'))[0], { message: '"tcpService" in listener must be a string, got a list' })
})

test('proxyHeaders: true by default, false turns them off, anything else is an error at the value', (t) => {
  const listener = (fields: string) =>
    loadConfigText(`listeners: [{ ${fields}routes: [{ service: s }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]`, { file: 'p.yaml' })
  t.is(listener('').config?.listeners[0]?.proxyHeaders, true)
  t.is(listener('proxyHeaders: false, ').config?.listeners[0]?.proxyHeaders, false)
  t.deepEqual(lines(errors(listener('proxyHeaders: no, '))), ['p.yaml:1:29: error: "proxyHeaders" in listener must be true or false, got string "no"'])
  t.like(errors(listener('proxyHeader: false, '))[0], { message: 'unknown field "proxyHeader" in listener', hint: 'did you mean "proxyHeaders"?' })
})

test('unknown listener protocol: error at the value, the valid values as hint', (t) => {
  const protocol = (p: string) =>
    errors(loadConfigText(`listeners: [{ protocol: ${p}, tcpService: s, routes: [{ service: s }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]`, { file: 'l.yaml' }))
  t.deepEqual(lines(protocol('udp')), ['l.yaml:1:25: error: unknown listener protocol "udp" (valid protocols: http, tcp)'])
  t.deepEqual(lines(protocol('TCP')), ['l.yaml:1:25: error: unknown listener protocol "TCP" (did you mean "tcp"? valid protocols: http, tcp)'])
  t.deepEqual(lines(protocol('HTTP')), ['l.yaml:1:25: error: unknown listener protocol "HTTP" (did you mean "http"? valid protocols: http, tcp)'])
  // HTTP versions are all served by an http listener; other names for opaque traffic mean tcp.
  t.is(protocol('h2c')[0]?.hint, 'did you mean "http"? valid protocols: http, tcp')
  t.is(protocol('http2')[0]?.hint, 'did you mean "http"? valid protocols: http, tcp')
  t.is(protocol('opaque')[0]?.hint, 'did you mean "tcp"? valid protocols: http, tcp')
  t.deepEqual(lines(protocol('1')), ['l.yaml:1:25: error: "protocol" in listener must be a string, got number 1'])
  // Both valid values load.
  for (const p of ['http', 'tcp']) t.deepEqual(protocol(p), [], p)
})

test('tcpService naming an undefined service: error at the value, the closest service as hint', (t) => {
  const r = loadConfigText(
    ['listeners:', '  - name: db', '    protocol: tcp', '    tcpService: mysq', 'services: [{ name: mysql, endpoints: [127.0.0.1:1] }, { name: web, endpoints: [127.0.0.1:2] }]'].join('\n'),
    { file: 't.yaml' },
  )
  t.is(r.config, null)
  t.deepEqual(lines(errors(r)), ['t.yaml:4:17: error: listener "db" tcpService refers to undefined service "mysq" (did you mean "mysql"?)'])
  const far = loadConfigText('listeners: [{ tcpService: zzz, routes: [{ service: web }] }]\nservices: [{ name: web, endpoints: [127.0.0.1:1] }]')
  t.like(errors(far)[0], { line: 1, column: 27, message: 'listener "listener-0" tcpService refers to undefined service "zzz"', hint: 'defined services: web' })
  const none = loadConfigText('listeners: [{ protocol: tcp, tcpService: db }]')
  t.is(errors(none)[0]?.hint, 'no services are defined; add one under "services:"')
})

test('a tcp listener needs a tcpService: error at the protocol', (t) => {
  for (const extra of ['', ', tcpService: null']) {
    const r = loadConfigText(`services: [{ name: db, endpoints: [127.0.0.1:1] }]\nlisteners: [{ name: db, protocol: tcp${extra} }]`, { file: 't.yaml' })
    t.is(r.config, null, extra)
    t.deepEqual(lines(errors(r)), ['t.yaml:2:35: error: tcp listener "db" has no tcpService (set tcpService: to the service its connections are forwarded to)'], extra)
  }
})

test('routes on a tcp listener are a warning; a tcp listener without routes is not', (t) => {
  const r = loadConfigText(
    [
      'listeners:',
      '  - name: db',
      '    protocol: tcp',
      '    tcpService: db',
      '    routes:',
      '      - service: web',
      '  - name: cache',
      '    address: 127.0.0.1:6379',
      '    protocol: tcp',
      '    tcpService: cache',
      'services: [{ name: db, endpoints: [127.0.0.1:1] }, { name: web, endpoints: [127.0.0.1:2] }, { name: cache, endpoints: [127.0.0.1:3] }]',
    ].join('\n'),
    { file: 't.yaml' },
  )
  t.not(r.config, null)
  t.deepEqual(lines(r.diagnostics), [
    't.yaml:5:5: warning: routes are ignored on tcp listener "db" (every connection is forwarded to its tcpService as opaque TCP; remove the routes, or use protocol: http to route HTTP requests and send other traffic to tcpService)',
  ])
  // The routes are still checked: the data plane compiles them.
  const bad = loadConfigText('listeners: [{ protocol: tcp, tcpService: db, routes: [{ service: wbe }] }]\nservices: [{ name: db, endpoints: [127.0.0.1:1] }, { name: web, endpoints: [127.0.0.1:2] }]')
  t.deepEqual(errors(bad).map((d) => d.message), ['route "listener-0-route-0" refers to undefined service "wbe"'])
})

test('a service used only as a tcpService is not reported unused', (t) => {
  const r = loadConfigText(TCP, { file: 'tcp.yaml' })
  t.deepEqual(warnings(r), [])
  // Without the listener that uses it, it is.
  const unused = loadConfigText('listeners: [{ routes: [{ service: web }] }]\nservices: [{ name: web, endpoints: [127.0.0.1:1] }, { name: smtp, endpoints: [127.0.0.1:2] }]')
  t.deepEqual(warnings(unused).map((d) => d.message), ['service "smtp" is not used by any route'])
})

test('allowConnect: false by default; true or false only; an error on routes no CONNECT can match', (t) => {
  const route = (fields: string) => loadConfigText(`listeners: [{ routes: [{ service: s${fields} }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]`, { file: 'c.yaml' })
  t.is(route('').config?.listeners[0]?.routes[0]?.allowConnect, false)
  t.is(route(', allowConnect: true').config?.listeners[0]?.routes[0]?.allowConnect, true)
  t.is(route(', match: { methods: [CONNECT], host: db.internal }, allowConnect: true').config?.listeners[0]?.routes[0]?.allowConnect, true)
  t.deepEqual(lines(errors(route(', allowConnect: yes'))), ['c.yaml:1:52: error: "allowConnect" in route must be true or false, got string "yes"'])
  t.deepEqual(lines(errors(route(', allowConnectt: true'))).map((l) => l.replace(/ \(.*$/, '')), ['c.yaml:1:38: error: unknown field "allowConnectt" in route'])
  // CONNECT is matched by host with the path taken as "/", so these routes would never open a tunnel.
  t.deepEqual(lines(errors(route(', match: { path: /v1 }, allowConnect: true'))), [
    'c.yaml:1:60: error: route "listener-0-route-0" allows CONNECT but matches path "/v1"; CONNECT requests are matched as path "/" (match CONNECT by host only: drop the path from this route)',
  ])
  t.deepEqual(lines(errors(route(', match: { method: GET }, allowConnect: true'))), [
    'c.yaml:1:62: error: route "listener-0-route-0" allows CONNECT but its methods (GET) exclude CONNECT (add CONNECT to methods, or drop the method match)',
  ])
  t.deepEqual(errors(route(', match: { path: /v1 }, allowConnect: false')), [], 'only routes that allow CONNECT are checked')
})

test('route filters: what could never work is an error at its place, with what would be valid', (t) => {
  const route = (fields: string) => loadConfigText(`listeners: [{ routes: [{ ${fields} }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:1] }]`, { file: 'f.yaml' })
  const errs = (fields: string) => lines(errors(route(fields)))
  t.deepEqual(errs('redirect: { scheme: https }'), [], 'a redirect needs no service')
  t.deepEqual(errs('match: { path: /a }, service: s, rewrite: { prefix: /b }, requestHeaders: { set: { x-a: "1" } }'), [])
  t.deepEqual(errs('match: { path: /a, pathType: Exact }, service: s, rewrite: { prefix: /b }'), [
    'f.yaml:1:76: error: route "listener-0-route-0" rewrite replaces the matched prefix, but the route matches an Exact path (use path: to replace the whole path, or match the path as a Prefix)',
  ])
  t.deepEqual(errs('service: s, rewrite: { path: /a, prefix: /b }'), [
    'f.yaml:1:38: error: route "listener-0-route-0" rewrite replaces both the whole path and its prefix (keep path (the whole path) or prefix (the matched prefix))',
  ])
  t.deepEqual(errs('redirect: { host: a.example }, rewrite: { host: b.example }'), [
    'f.yaml:1:57: error: route "listener-0-route-0" has both a redirect and a rewrite (a redirected request is never sent upstream: keep one of them)',
  ])
  t.deepEqual(errs('redirect: { statusCode: 304 }'), [
    'f.yaml:1:26: error: route "listener-0-route-0" redirect status 304 is not a redirect status (valid statuses: 301, 302, 303, 307, 308)',
  ])
  t.deepEqual(errs('redirect: { scheme: ftp }'), ['f.yaml:1:46: error: invalid "scheme" in route redirect: scheme "ftp" is neither http nor https (valid schemes: http, https)'])
  t.deepEqual(errs('service: s, requestHeaders: { set: { Host: x } }'), [
    'f.yaml:1:63: error: invalid header name: header "host" cannot be modified by a route (change the host with rewrite: { host: … } (URLRewrite hostname))',
  ])
  t.deepEqual(errs('service: s, responseHeaders: { remove: [x-a, X-A] }'), ['f.yaml:1:71: error: header "x-a" is listed twice in remove (list each name once)'])
  t.deepEqual(errs('service: s, match: { query: { a: "1", b: "2" } }'), [])
  t.deepEqual(errs('service: s, match: { cookies: { channel: beta, id: \'"q"\' } }'), [])
  t.deepEqual(errs('service: s, match: { cookies: { a: "x y" } }'), [
    'f.yaml:1:61: error: invalid cookie value: cookie value "x y" has a character cookies cannot carry (no spaces, quotes inside, commas, semicolons or backslashes)',
  ])
  t.deepEqual(errs('match: { path: /a }')[0], 'f.yaml:1:24: error: route is missing required field "service"', 'without backends or a redirect, a route needs its service')
})
