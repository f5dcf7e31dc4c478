import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import {
  configFromEndpoints,
  formatDiagnostic,
  loadConfigFile,
  loadConfigText,
  validateModel,
  type ConfigModel,
} from '../ts/config/index.js'
import { LISTENER_DEFAULTS, ROUTE_DEFAULTS, SERVICE_DEFAULTS } from './helpers/defaults.js'

test('formatDiagnostic: one line, position left out when there is none', (t) => {
  t.is(
    formatDiagnostic({ severity: 'error', file: 'a.yaml', line: 3, column: 5, message: 'bad', hint: 'try this' }),
    'a.yaml:3:5: error: bad (try this)',
  )
  t.is(formatDiagnostic({ severity: 'warning', file: '<object>', line: 0, column: 0, message: 'two\nlines' }), '<object>: warning: two lines')
})

test('configFromEndpoints: one service, one catch-all route, one listener', (t) => {
  const r = configFromEndpoints(['127.0.0.1:8081', ' 127.0.0.1:8082 '], 'random', { listenOverride: '127.0.0.1:9000', defaultAdmin: null })
  t.deepEqual(r.diagnostics, [])
  t.deepEqual(r.config, {
    listeners: [
      {
        name: 'listener-0',
        address: '127.0.0.1:9000',
        ...LISTENER_DEFAULTS(),
        routes: [
          {
            name: 'default',
            service: 'default',
            ...ROUTE_DEFAULTS(),
          },
        ],
      },
    ],
    services: [
      {
        name: 'default',
        balancer: { kind: 'random' },
        endpoints: [
          { address: '127.0.0.1:8081', weight: 1 },
          { address: '127.0.0.1:8082', weight: 1 },
        ],
        ...SERVICE_DEFAULTS(),
      },
    ],
    admin: null,
    identity: null,
  })
  t.deepEqual(r.summary, { listeners: 1, routes: 1, services: 1, endpoints: 2 })
  // Validates like a file would.
  t.deepEqual(validateModel(r.config), [])
})

test('configFromEndpoints: balancer forms and defaults', (t) => {
  const balancer = (b: string) => configFromEndpoints(['127.0.0.1:1'], b).config?.services[0]?.balancer
  t.deepEqual(balancer('round-robin'), { kind: 'round-robin' })
  t.deepEqual(balancer('hash'), { kind: 'hash', source: true })
  t.deepEqual(balancer('hash:source'), { kind: 'hash', source: true })
  t.deepEqual(balancer('hash:header:X-User'), { kind: 'hash', header: 'x-user' })
  t.deepEqual(balancer('hash:cookie:sid'), { kind: 'hash', cookie: 'sid' })
  const defaults = configFromEndpoints(['127.0.0.1:1'], 'round-robin').config
  t.is(defaults?.listeners[0]?.address, '127.0.0.1:4140')
  t.deepEqual(defaults?.admin, { address: '127.0.0.1:4191' })
})

test('configFromEndpoints: protocol parameter, http1 by default', (t) => {
  const protocol = (...p: ['http1' | 'http2' | 'auto'] | []) => configFromEndpoints(['127.0.0.1:1'], 'round-robin', {}, ...p).config?.services[0]?.protocol
  t.is(protocol(), 'http1')
  t.is(protocol('http1'), 'http1')
  t.is(protocol('http2'), 'http2')
  t.is(protocol('auto'), 'auto')
  const h2 = configFromEndpoints(['127.0.0.1:1'], 'round-robin', {}, 'http2').config!
  t.is(h2.services[0]?.maxStreamsPerConnection, 100)
  t.deepEqual(validateModel(h2), [])
  // An untyped caller (the CLI passes --protocol through) gets a diagnostic, not a bad model.
  const bad = configFromEndpoints(['127.0.0.1:1'], 'round-robin', {}, 'HTTP2' as 'http2')
  t.is(bad.config, null)
  t.deepEqual(bad.diagnostics.map(formatDiagnostic), ['<command line>: error: invalid protocol "HTTP2" (did you mean "http2"?)'])
  t.is(configFromEndpoints(['127.0.0.1:1'], 'random', {}, 'h3' as 'http2').diagnostics[0]?.hint, 'valid protocols: http1, http2, auto')
})

test('configFromEndpoints: bad input is reported, all of it', (t) => {
  const r = configFromEndpoints(['nope', '127.0.0.1:1', '127.0.0.1:1'], 'round-robbin', { adminOverride: '127.0.0.1:4140' })
  t.is(r.config, null)
  t.deepEqual(r.diagnostics.map(formatDiagnostic), [
    '<command line>: error: invalid balancer "round-robbin" (did you mean "round-robin"?)',
    '<command line>: error: invalid endpoint address: address "nope" has no port (write it as host:port, e.g. 127.0.0.1:8080)',
    '<command line>: error: listener "listener-0" address 127.0.0.1:4140 conflicts with the admin server (127.0.0.1:4140) (use another port, or set admin: to another host:port, or to null to disable it)',
    '<command line>: error: endpoint 127.0.0.1:1 is listed twice in service "default" (list it once; use weight to send it more traffic)',
  ])
  t.is(configFromEndpoints([], 'random').diagnostics[0]?.message, 'no endpoints given')
})

/** A valid model to break in each test. */
function model(): ConfigModel {
  const config = loadConfigText(`
admin: 127.0.0.1:4191
listeners:
  - name: web
    address: 127.0.0.1:4140
    routes:
      - { name: api, match: { host: api.example.com, path: /v1, methods: [GET], headers: { x-a: b } }, service: api }
services:
  - { name: api, endpoints: [127.0.0.1:8081, { address: 127.0.0.1:8082, weight: 3 }], balancer: { hash: { header: x-user } } }
  - { name: web, endpoints: [127.0.0.1:8083] }
`).config
  if (!config) throw new Error('fixture model does not load')
  return config
}

test('validateModel accepts what the loader produces', (t) => {
  t.deepEqual(validateModel(model()), [])
})

test('validateModel reports JSON paths for structural problems', (t) => {
  const m = model() as unknown as { services: Array<Record<string, unknown>>; listeners: Array<Record<string, unknown>> }
  const web = m.services[1]!
  ;(web.endpoints as Array<Record<string, unknown>>)[0]!.weight = 0
  web.connectTimeoutMs = '1s'
  web.extra = true
  const listener = m.listeners[0]!
  listener.adress = listener.address
  delete listener.address
  const route = (listener.routes as Array<Record<string, unknown>>)[0]!
  route.path = { type: 'Prefix', value: '/v1/' }
  route.methods = ['get']
  route.hosts = ['API.example.com:80']
  const d = validateModel(m)
  t.true(d.every((x) => x.severity === 'error' && x.file === '<object>' && x.line === 0 && x.column === 0))
  t.deepEqual(d.map((x) => [x.message, x.hint]), [
    ['listeners[0].adress: unknown field', 'did you mean "address"?'],
    ['listeners[0].address: missing required field', undefined],
    ['listeners[0].routes[0].hosts[0]: host "API.example.com:80" must not include a port', 'the port is matched by the listener; give the name only'],
    ['listeners[0].routes[0].methods[0]: "get" is not normalized', 'use "GET"'],
    ['listeners[0].routes[0].path.value: "/v1/" is not normalized', 'use "/v1"'],
    ['services[1].extra: unknown field', 'valid fields: name, balancer, endpoints, protocol, connectTimeoutMs, maxInflightPerEndpoint, maxPendingPerEndpoint, maxStreamsPerConnection, pool, failureStatuses, failureGrpcStatuses, failureAccrual, circuitBreaker, healthCheck, rateLimits, policies, tls, identity'],
    ['services[1].connectTimeoutMs: expected an integer, got string "1s"', undefined],
    ['services[1].endpoints[0].weight: must be between 1 and 1000, got 0', undefined],
  ])
})

test('validateModel: an Exact path may end with "/", a Prefix path may not', (t) => {
  const withPath = (type: 'Exact' | 'Prefix', value: string): string[] => {
    const m = model()
    m.listeners[0]!.routes[0]!.path = { type, value }
    return validateModel(m).map((d) => `${d.message} (${d.hint})`)
  }
  t.deepEqual(withPath('Exact', '/v1/'), [])
  t.deepEqual(withPath('Exact', '/v1//'), ['listeners[0].routes[0].path.value: "/v1//" is not normalized (use "/v1/")'])
  t.deepEqual(withPath('Prefix', '/v1/'), ['listeners[0].routes[0].path.value: "/v1/" is not normalized (use "/v1")'])
  t.deepEqual(withPath('Exact', '/'), [])
})

test('validateModel checks the HTTP/2 settings and the upstream protocol', (t) => {
  const m = model() as unknown as { services: Array<Record<string, unknown>>; listeners: Array<Record<string, unknown>> }
  const http2 = m.listeners[0]!.http2 as Record<string, unknown>
  http2.maxConcurrentStreams = 0
  http2.maxHeaderListSize = 1023
  http2.connectionWindowSize = 65534
  http2.streamWindowSize = 2 ** 31
  http2.keepAliveIntervalMs = '20s'
  http2.keepAliveTimeoutMs = 0
  http2.maxConcurentStreams = 1
  m.services[0]!.protocol = 'h2'
  m.services[0]!.maxStreamsPerConnection = 0
  m.services[1]!.protocol = 2
  const d = validateModel(m)
  t.true(d.every((x) => x.severity === 'error' && x.file === '<object>' && x.line === 0))
  t.deepEqual(d.map((x) => [x.message, x.hint]), [
    ['listeners[0].http2.maxConcurentStreams: unknown field', 'did you mean "maxConcurrentStreams"?'],
    ['listeners[0].http2.maxConcurrentStreams: must be between 1 and 4294967295, got 0', undefined],
    ['listeners[0].http2.maxHeaderListSize: must be between 1024 and 4294967295, got 1023', undefined],
    ['listeners[0].http2.connectionWindowSize: must be between 65535 and 2147483647, got 65534', undefined],
    ['listeners[0].http2.streamWindowSize: must be between 65535 and 2147483647, got 2147483648', undefined],
    ['listeners[0].http2.keepAliveIntervalMs: expected an integer, got string "20s"', undefined],
    ['listeners[0].http2.keepAliveTimeoutMs: must be between 1 and 4294967295, got 0', undefined],
    ['services[0].protocol: expected one of "http1", "http2", "auto", got string "h2"', 'valid protocols: http1, http2, auto'],
    ['services[0].maxStreamsPerConnection: must be between 1 and 4294967295, got 0', undefined],
    ['services[1].protocol: expected one of "http1", "http2", "auto", got number 2', 'valid protocols: http1, http2, auto'],
  ])
})

test('validateModel: http2 and the new service fields are required; keep-alive 0 is allowed', (t) => {
  const m = model() as unknown as { services: Array<Record<string, unknown>>; listeners: Array<Record<string, unknown>> }
  delete m.listeners[0]!.http2
  delete m.services[0]!.protocol
  delete m.services[0]!.maxStreamsPerConnection
  t.deepEqual(validateModel(m).map((x) => x.message), [
    'listeners[0].http2: missing required field',
    'services[0].protocol: missing required field',
    'services[0].maxStreamsPerConnection: missing required field',
  ])
  const ok = model()
  ok.listeners[0]!.http2.keepAliveIntervalMs = 0
  ok.listeners[0]!.http2.connectionWindowSize = 2 ** 31 - 1
  ok.listeners[0]!.http2.streamWindowSize = 65535
  ok.services[0]!.protocol = 'auto'
  t.deepEqual(validateModel(ok), [])
  m.listeners[0]!.http2 = []
  t.deepEqual(validateModel(m).map((x) => x.message).slice(0, 1), ['listeners[0].http2: expected an object, got an array'])
})

test('validateModel checks the listener protocol, tcpService and detectTimeoutMs', (t) => {
  const m = model() as unknown as { listeners: Array<Record<string, unknown>> }
  const l = m.listeners[0]!
  l.protocol = 'TCP'
  l.tcpService = 5
  l.detectTimeoutMs = 0
  let d = validateModel(m)
  t.true(d.every((x) => x.severity === 'error' && x.file === '<object>' && x.line === 0))
  t.deepEqual(d.map((x) => [x.message, x.hint]), [
    ['listeners[0].protocol: expected one of "http", "tcp", got string "TCP"', 'did you mean "tcp"?'],
    ['listeners[0].tcpService: expected a service name or null, got number 5', undefined],
    ['listeners[0].detectTimeoutMs: must be between 1 and 4294967295, got 0', undefined],
  ])
  l.protocol = 'udp'
  l.tcpService = 'a b'
  l.detectTimeoutMs = '300ms'
  d = validateModel(m)
  t.deepEqual(d.map((x) => [x.message, x.hint]), [
    ['listeners[0].protocol: expected one of "http", "tcp", got string "udp"', 'valid protocols: http, tcp'],
    ['listeners[0].tcpService: service name "a b" contains whitespace or control characters', undefined],
    ['listeners[0].detectTimeoutMs: expected an integer, got string "300ms"', undefined],
  ])
  l.protocol = null
  t.deepEqual(validateModel(m).map((x) => [x.message, x.hint]).slice(0, 1), [['listeners[0].protocol: expected one of "http", "tcp", got nothing', 'valid protocols: http, tcp']])
})

test('validateModel: tcpService and detectTimeoutMs are required; null tcpService and tcp listeners are valid', (t) => {
  const m = model() as unknown as { listeners: Array<Record<string, unknown>> }
  delete m.listeners[0]!.tcpService
  delete m.listeners[0]!.detectTimeoutMs
  t.deepEqual(validateModel(m).map((x) => x.message), ['listeners[0].tcpService: missing required field', 'listeners[0].detectTimeoutMs: missing required field'])
  const ok = model()
  t.is(ok.listeners[0]!.tcpService, null)
  t.is(ok.listeners[0]!.detectTimeoutMs, 1000)
  ok.listeners[0]!.tcpService = 'web'
  ok.listeners[0]!.detectTimeoutMs = 1
  t.deepEqual(validateModel(ok), [])
  ok.listeners[0]!.protocol = 'tcp'
  // Routes on a tcp listener are only a loader warning; validateModel returns no warnings.
  t.deepEqual(validateModel(ok), [])
  ok.listeners[0]!.routes = []
  t.deepEqual(validateModel(ok), [])
})

test('validateModel cross-checks tcpService like route services', (t) => {
  const m = model()
  m.listeners[0]!.tcpService = 'webb'
  t.deepEqual(validateModel(m).map((x) => [x.message, x.hint]), [
    ['listeners[0].tcpService: listener "web" tcpService refers to undefined service "webb"', 'did you mean "web"?'],
  ])
  m.listeners[0]!.tcpService = 'zzz'
  t.deepEqual(validateModel(m).map((x) => x.hint), ['defined services: api, web'])
  m.listeners[0]!.tcpService = null
  m.listeners[0]!.protocol = 'tcp'
  t.deepEqual(validateModel(m).map((x) => [x.message, x.hint]), [
    ['listeners[0].tcpService: tcp listener "web" has no tcpService', 'set tcpService: to the service its connections are forwarded to'],
  ])
})

test('validateModel: allowConnect is a required boolean, checked against the route match', (t) => {
  const m = model()
  const route = m.listeners[0]!.routes[0]! as unknown as Record<string, unknown>
  route.allowConnect = 'yes'
  t.deepEqual(validateModel(m).map((x) => x.message), ['listeners[0].routes[0].allowConnect: expected true or false, got string "yes"'])
  delete route.allowConnect
  t.deepEqual(validateModel(m).map((x) => x.message), ['listeners[0].routes[0].allowConnect: missing required field'])
  // The fixture's route matches GET /v1: a CONNECT (matched as path "/") could never reach it.
  route.allowConnect = true
  t.deepEqual(validateModel(m).map((x) => x.message), [
    'listeners[0].routes[0].allowConnect: route "api" allows CONNECT but matches path "/v1"; CONNECT requests are matched as path "/"',
    'listeners[0].routes[0].allowConnect: route "api" allows CONNECT but its methods (GET) exclude CONNECT',
  ])
})

test('validateModel: proxyHeaders is a required boolean', (t) => {
  const m = model()
  const listener = m.listeners[0]! as unknown as Record<string, unknown>
  listener.proxyHeaders = 'off'
  t.deepEqual(validateModel(m).map((x) => x.message), ['listeners[0].proxyHeaders: expected true or false, got string "off"'])
  delete listener.proxyHeaders
  t.deepEqual(validateModel(m).map((x) => x.message), ['listeners[0].proxyHeaders: missing required field'])
  listener.proxyHeaders = false
  t.deepEqual(validateModel(m), [])
})

test('validateModel runs the cross-checks on well-formed models', (t) => {
  const m = model()
  m.listeners[0]!.routes[0]!.service = 'apx'
  m.services[1]!.name = 'api'
  m.services[0]!.balancer = { kind: 'hash', header: 'x-user', source: true }
  t.deepEqual(validateModel(m).map((x) => x.message), ['services[0].balancer: hash balancer needs exactly one key source, got 2'])
  m.services[0]!.balancer = { kind: 'round-robin' }
  m.admin = { address: '127.0.0.1:4140' }
  t.deepEqual(validateModel(m).map((x) => x.message), [
    'listeners[0].address: listener "web" address 127.0.0.1:4140 conflicts with the admin server (127.0.0.1:4140)',
    'services[1].name: duplicate service name "api"',
    'listeners[0].routes[0].service: route "api" refers to undefined service "apx"',
  ])
})

test('validateModel on things that are not models', (t) => {
  t.deepEqual(validateModel(null).map((x) => x.message), ['config: expected an object, got nothing'])
  t.deepEqual(validateModel([]).map((x) => x.message), ['config: expected an object, got an array'])
  t.deepEqual(validateModel({}).map((x) => x.message), [
    'config.listeners: missing required field',
    'config.services: missing required field',
    'config.admin: missing required field',
    'config.identity: missing required field',
  ])
  t.deepEqual(validateModel({ listeners: {}, services: [1], admin: null, identity: null }).map((x) => x.message), [
    'listeners: expected an array, got an object',
    'services[0]: expected an object, got number 1',
  ])
})

test('loadConfigFile: file name in diagnostics; read errors become one diagnostic', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'meshproxy-config-'))
  const file = join(dir, 'c.yaml')
  writeFileSync(file, 'listeners: [{ adress: x }]\n')
  const r = await loadConfigFile(file)
  t.is(r.diagnostics[0]?.file, file)
  t.is(r.diagnostics[0]?.line, 1)
  const missing = await loadConfigFile(join(dir, 'nope.yaml'))
  t.is(missing.config, null)
  t.deepEqual(missing.diagnostics.map(formatDiagnostic), [`${join(dir, 'nope.yaml')}: error: cannot read config file: no such file`])
  const isDir = await loadConfigFile(dir)
  t.is(isDir.diagnostics[0]?.message, 'cannot read config file: it is a directory')
})
