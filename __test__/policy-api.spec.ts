/**
 * The typed policy API: `meshPolicy()` builds the same model as the native YAML (through the same
 * reader and validator), its types are what the field tables generate, its errors name builder
 * paths, and `proxy.apply` swaps policies on a running proxy atomically — undone by applying the
 * previous one, and a policy that does not build changes nothing. Real traffic on 127.0.0.1.
 */
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { join } from 'node:path'
import { promisify } from 'node:util'
import test from 'ava'
import ts from 'typescript'
import { startBackend, type Backend } from './helpers/backend.js'
import { request } from './helpers/http.js'
import { load, portOf } from './helpers/proxy.js'
import { MeshProxyError, Proxy, formatDiagnostic, meshPolicy, type MeshPolicy, type PolicyDiagnostic } from '../ts/index.js'
import { NATIVE_TYPES_FILE, generateNativeTypes } from '../ts/config/native-types-gen.js'
import { count, duration, table, text } from '../ts/config/fields.js'
import { ok } from '../ts/config/values.js'
import { ROOT } from './helpers/cli.js'

test('the committed native types are what the field tables generate', (t) => {
  t.is(readFileSync(NATIVE_TYPES_FILE, 'utf8'), generateNativeTypes(), 'regenerate them: npm run gen:native-types')
})

test('a field added to a table reaches the generated types by regeneration, under its YAML key', (t) => {
  const limit = table('Limit', 'A made-up limit.', {
    name: text('Its name.', ok, { yaml: { required: true } }),
    requestsPerSecond: count('Requests per second.', { min: 1, default: 10 }),
    windowMs: duration('The window.', { min: 1, default: 1000 }),
  })
  const out = generateNativeTypes(limit)
  t.regex(out, /export interface NativeLimit \{/)
  t.regex(out, /\n {2}name: string\n/)
  t.regex(out, /\n {2}requestsPerSecond\?: number\n/)
  t.regex(out, /\n {2}window\?: NativeDuration\n/, 'a duration is written under its YAML key and takes `10s`')
})

/** The TypeScript errors of `source` as a module at `file` (in memory), strict, as the package's users compile. */
function typeErrors(file: string, source: string): string[] {
  const host = ts.createCompilerHost({})
  const read = host.readFile.bind(host)
  host.readFile = (name) => (name === file ? source : read(name))
  const exists = host.fileExists.bind(host)
  host.fileExists = (name) => name === file || exists(name)
  const options = { strict: true, noEmit: true, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022, skipLibCheck: true, types: ['node'] }
  const program = ts.createProgram([file], options, host)
  return ts.getPreEmitDiagnostics(program).map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'))
}

test('the builder types take the YAML spellings and refuse unknown keys and values', (t) => {
  const file = join(ROOT, '__test__/.policy-types-check.ts')
  const source = `
import { meshPolicy } from '../ts/config/policy.js'
meshPolicy()
  .listener('web', { address: '127.0.0.1:0', idleTimeout: '1m30s' }, (l) =>
    l.route('api', { match: { path: '/v1', headers: { 'x-canary': 'true' } }, service: 'api', timeout: '5s', retry: { limit: 2 } }))
  .service('api', { endpoints: ['127.0.0.1:8081', { address: '127.0.0.1:8082', weight: 2 }], balancer: { hash: { header: 'x-user' } } })
// @ts-expect-error an unknown key
meshPolicy().service('api', { endpoint: [] })
// @ts-expect-error not a listener protocol
meshPolicy().listener('web', { protocol: 'udp' })
// @ts-expect-error not a duration
meshPolicy().listener('web', {}, (l) => l.route('api', { service: 'api', timeout: true }))
`
  t.deepEqual(typeErrors(file, source), [])
})

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo
      server.close(() => resolve(port))
    })
    server.on('error', reject)
  })

test('the README\'s Policy API example type-checks and runs: it starts, tightens the limit, reports a bad policy by its builder path, and undoes', async (t) => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
  const section = readme.slice(readme.indexOf('### Policy API'))
  const example = /```ts\n([\s\S]*?)```/.exec(section)?.[1]
  if (example === undefined) return t.fail('no example under "### Policy API"')
  // Its fixed ports are replaced by free ones, so it runs next to other tests.
  const [app, listen, admin] = [await freePort(), await freePort(), await freePort()]
  const source = example
    .replace("from 'meshproxy'", "from '../ts/index.js'")
    .replaceAll(':8081', `:${app}`)
    .replaceAll('8081,', `${app},`)
    .replaceAll(':4140', `:${listen}`)
    .replaceAll(':4191', `:${admin}`)
  t.not(source, example)
  const dir = mkdtempSync(join(ROOT, '__test__/.readme-example-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'example.mts')
  writeFileSync(file, source.replace("'../ts/index.js'", "'../../ts/index.js'"))
  t.deepEqual(typeErrors(file, readFileSync(file, 'utf8')), [])
  const { stderr } = await promisify(execFile)(process.execPath, ['--import=tsx', file], { cwd: ROOT, timeout: 60_000 })
  t.regex(stderr, /^<policy>: error: listener\("web"\)\.route\("api"\)\.rateLimits\[0\]\.rate: "rate" in rate limit of route "api" must be between 1 and/)
})

/** The same config in both forms; `app` and `canary` are backend addresses. */
function bothForms(app: string, canary: string): { yaml: string; policy: MeshPolicy } {
  const yaml = `
admin: null
listeners:
  - name: web
    address: 127.0.0.1:0
    idleTimeout: 30s
    authorization:
      rules:
        - { action: deny, networks: 10.0.0.0/8, path: /admin }
    routes:
      - name: api
        match: { path: /v1, methods: [GET, HEAD], headers: { x-canary: "true" } }
        backends: [app, { service: canary, weight: 3 }]
        timeout: 2s
        retry: { limit: 2, http: 5xx }
        requestHeaders: { set: { x-env: prod } }
      - { name: rest, service: app }
services:
  - name: app
    endpoints: [${app}]
    balancer: least-request
    connectTimeout: 500ms
  - name: canary
    endpoints: [{ address: ${canary}, weight: 2 }]
    healthCheck: { path: /healthz, interval: 1m }
`
  const policy = meshPolicy()
    .admin(null)
    .listener('web', { address: '127.0.0.1:0', idleTimeout: '30s', authorization: { rules: [{ action: 'deny', networks: '10.0.0.0/8', path: '/admin' }] } }, (l) =>
      l
        .route('api', {
          match: { path: '/v1', methods: ['GET', 'HEAD'], headers: { 'x-canary': 'true' } },
          backends: ['app', { service: 'canary', weight: 3 }],
          timeout: '2s',
          retry: { limit: 2, http: '5xx' },
          requestHeaders: { set: { 'x-env': 'prod' } },
        })
        .route('rest', { service: 'app' }),
    )
    .service('app', { endpoints: [app], balancer: 'least-request', connectTimeout: '500ms' })
    .service('canary', { endpoints: [{ address: canary, weight: 2 }], healthCheck: { path: '/healthz', interval: '1m' } })
  return { yaml, policy }
}

test('the same config as YAML and as a builder gives deep-equal models, also as a whole native object and through toYaml', (t) => {
  const { yaml, policy } = bothForms('127.0.0.1:8081', '127.0.0.1:8082')
  const fromYaml = load(yaml)
  const built = policy.build()
  t.deepEqual(built.diagnostics, [])
  t.deepEqual(built.config, fromYaml)
  t.deepEqual(meshPolicy(policy.toNative()).model(), fromYaml, 'a whole native object')
  t.deepEqual(load(policy.toYaml()), fromYaml, 'the builder written out as YAML')
})

test('build options pass through as they do for YAML', (t) => {
  const policy = meshPolicy().listener('web', {}, (l) => l.route('r', { service: 's' })).service('s', { endpoints: ['127.0.0.1:8081'] })
  const config = policy.model({ defaultListen: '127.0.0.1:4999', defaultAdmin: '127.0.0.1:4998' })
  t.is(config.listeners[0]?.address, '127.0.0.1:4999')
  t.deepEqual(config.admin, { address: '127.0.0.1:4998' })
  t.deepEqual(config, load('listeners: [{ name: web, routes: [{ name: r, service: s }] }]\nservices: [{ name: s, endpoints: [127.0.0.1:8081] }]', { defaultListen: '127.0.0.1:4999', defaultAdmin: '127.0.0.1:4998' }))
  const bad = policy.build({ defaultListen: 'nowhere' })
  t.is(bad.config, null)
  t.is(bad.diagnostics[0]?.file, '<options>')
})

const errorsOf = (r: { diagnostics: PolicyDiagnostic[] }) => r.diagnostics.filter((d) => d.severity === 'error')

test('errors name the builder call path: a bad duration, an unknown key with a did-you-mean hint, a route naming an undefined service', (t) => {
  const policy = meshPolicy()
    .admin(null)
    // Keys the types refuse still reach the validator when the types are bypassed (plain JS).
    .listener('web', { address: '127.0.0.1:0', adress: '127.0.0.1:1' } as object, (l) =>
      l.route('ok', { service: 'api' }).route('api', { match: { path: '/v1' }, service: 'nope', timeout: '5 seconds' as '5s' }),
    )
    .service('api', { endpoints: ['127.0.0.1:8081', 'no-port'] })
  const r = policy.build()
  t.is(r.config, null)
  const got = errorsOf(r).map((d) => ({ path: d.path, message: d.message, hint: d.hint }))
  t.deepEqual(
    got.map((d) => d.path),
    ['listener("web").adress', 'listener("web").route("api").service', 'listener("web").route("api").timeout', 'service("api").endpoints[1]'],
  )
  t.is(got[0]?.hint, 'did you mean "address"?')
  t.regex(got[1]!.message, /^listener\("web"\)\.route\("api"\)\.service: route "api" refers to undefined service "nope"/)
  t.regex(got[1]!.hint ?? '', /defined services: api/)
  t.regex(got[2]!.message, /"5 seconds" is not a duration/)
  for (const d of errorsOf(r)) t.is(formatDiagnostic(d).startsWith(`<policy>: error: ${d.path}: `), true, formatDiagnostic(d))

  const thrown = t.throws(() => policy.model(), { instanceOf: MeshProxyError }) as MeshProxyError
  t.is(thrown.code, 'MESHPROXY_INVALID_CONFIG')
  t.is(thrown.diagnostics.length, 4)
  t.regex(thrown.message, /listener\("web"\)\.route\("api"\)\.timeout/)
})

test('items without a unique name are named by their index, as in a whole native object', (t) => {
  const r = meshPolicy({
    admin: null,
    listeners: [{ address: '127.0.0.1:0', routes: [{ service: 'a', timeout: '1x' as '1s' }] }],
    services: [
      { name: 'a', endpoints: ['127.0.0.1:8081'] },
      { name: 'a', endpoints: ['127.0.0.1:8082'] },
    ],
  }).build()
  t.deepEqual(
    errorsOf(r).map((d) => d.path),
    ['listeners[0].routes[0].timeout', 'services[1].name'],
  )
})

test('a policy never changes: each call returns a new one, and naming a route, listener or service again replaces it in place', (t) => {
  const base = meshPolicy()
    .admin(null)
    .listener('web', { address: '127.0.0.1:0' }, (l) => l.route('a', { service: 's' }).route('b', { service: 's' }))
    .service('s', { endpoints: ['127.0.0.1:8081'] })
  const before = base.toNative()
  const next = base.listener('web', { idleTimeout: '5s' }, (l) => l.route('a', { service: 's', timeout: '1s' })).service('s', { endpoints: ['127.0.0.1:8082'] })
  t.deepEqual(base.toNative(), before)
  const n = next.toNative()
  t.deepEqual(n.listeners, [{ name: 'web', address: '127.0.0.1:0', idleTimeout: '5s', routes: [{ name: 'a', service: 's', timeout: '1s' }, { name: 'b', service: 's' }] }])
  t.deepEqual(n.services, [{ name: 's', endpoints: ['127.0.0.1:8082'] }])
  t.deepEqual(next.listener('web', {}, (l) => l.removeRoute('b')).toNative().listeners?.[0]?.routes?.map((r) => r.name), ['a'])
})

/** GET `path` through the proxy: status, the answering backend, the `x-env` the backend saw. */
async function probe(port: number, backends: Backend[], path = '/v1'): Promise<{ status: number; backend: string; env: string }> {
  const seen = backends.map((b) => b.requests.length)
  const res = await request(port, { path })
  const hit = backends.find((b, i) => b.requests.length > seen[i]!)
  const env = hit?.requests.at(-1)?.headers['x-env']
  return { status: res.status, backend: String(res.headers['x-backend'] ?? res.headers['meshproxy-error']), env: typeof env === 'string' ? env : '' }
}

test('a Proxy started from a builder routes real requests to a real backend', async (t) => {
  const app = await startBackend(t, 'app')
  const policy = meshPolicy()
    .admin(null)
    .listener('web', { address: '127.0.0.1:0' }, (l) => l.route('api', { match: { path: '/v1' }, service: 'app', timeout: '5s', requestHeaders: { set: { 'x-env': 'prod' } } }))
    .service('app', { endpoints: [app.address] })
  const proxy = new Proxy(policy)
  t.teardown(() => proxy.close({ graceMs: 0 }))
  const port = portOf((await proxy.start()).listeners[0]!.localAddress)
  t.deepEqual(await probe(port, [app]), { status: 200, backend: 'app', env: 'prod' })
  t.deepEqual(await probe(port, [app], '/v2'), { status: 404, backend: 'no-route', env: '' })
})

test('apply changes a running proxy atomically, applying the previous policy undoes it, and a policy that does not build changes nothing', async (t) => {
  const blue = await startBackend(t, 'blue')
  const green = await startBackend(t, 'green')
  const v1 = meshPolicy()
    .admin(null)
    .listener('web', { address: '127.0.0.1:0' }, (l) => l.route('api', { match: { path: '/v1' }, service: 'blue', requestHeaders: { set: { 'x-env': 'v1' } } }))
    .service('blue', { endpoints: [blue.address] })
    .service('green', { endpoints: [green.address] })
  const proxy = new Proxy(v1)
  t.teardown(() => proxy.close({ graceMs: 0 }))
  const info = await proxy.start()
  const port = portOf(info.listeners[0]!.localAddress)
  t.deepEqual(await probe(port, [blue, green]), { status: 200, backend: 'blue', env: 'v1' })

  // The blue-green switch: every request to green, with the new header, from the next request on.
  const v2 = v1.listener('web', {}, (l) => l.route('api', { match: { path: '/v1' }, backends: [{ service: 'blue', weight: 0 }, 'green'], requestHeaders: { set: { 'x-env': 'v2' } } }))
  await proxy.apply(v2)
  for (let i = 0; i < 5; i++) t.deepEqual(await probe(port, [blue, green]), { status: 200, backend: 'green', env: 'v2' })

  // Tighter: the route's rules refuse the client's own network.
  const v3 = v2.listener('web', {}, (l) => l.route('api', { ...v2.toNative().listeners![0]!.routes![0]!, authorization: [{ action: 'deny', networks: '127.0.0.0/8' }] }))
  await proxy.apply(v3)
  t.deepEqual(await probe(port, [blue, green]), { status: 403, backend: 'forbidden', env: '' })

  // Undo twice: back to v1's behaviour exactly.
  await proxy.apply(v2)
  t.deepEqual(await probe(port, [blue, green]), { status: 200, backend: 'green', env: 'v2' })
  await proxy.apply(v1)
  for (let i = 0; i < 5; i++) t.deepEqual(await probe(port, [blue, green]), { status: 200, backend: 'blue', env: 'v1' })
  const reloads = (await proxy.stats()).reloads

  const broken = v1.listener('web', {}, (l) => l.route('api', { match: { path: '/v1' }, service: 'purple', timeout: '-1s' as '1s' }))
  const err = (await t.throwsAsync(proxy.apply(broken), { instanceOf: MeshProxyError })) as MeshProxyError
  t.is(err.code, 'MESHPROXY_INVALID_CONFIG')
  t.deepEqual(
    err.diagnostics.map((d) => (d as PolicyDiagnostic).path),
    ['listener("web").route("api").service', 'listener("web").route("api").timeout'],
  )
  t.is((await proxy.stats()).reloads, reloads, 'no reload happened')
  for (let i = 0; i < 3; i++) t.deepEqual(await probe(port, [blue, green]), { status: 200, backend: 'blue', env: 'v1' }, 'v1 still serves')
})

test('a rate limit tightened at run time refuses requests past its burst, and applying the previous policy lifts it', async (t) => {
  const app = await startBackend(t, 'app')
  const limited = (rate: number, burst: number): MeshPolicy =>
    meshPolicy()
      .admin(null)
      .listener('web', { address: '127.0.0.1:0' }, (l) => l.route('api', { service: 'app', rateLimits: [{ name: 'api', rate, burst }] }))
      .service('app', { endpoints: [app.address] })
  const loose = limited(1000, 1000)
  const proxy = new Proxy(loose)
  t.teardown(() => proxy.close({ graceMs: 0 }))
  const port = portOf((await proxy.start()).listeners[0]!.localAddress)
  const statuses = async (n: number) => {
    const out: Array<{ status: number; error: unknown; policy: unknown }> = []
    for (let i = 0; i < n; i++) {
      const res = await request(port, { path: '/v1' })
      out.push({ status: res.status, error: res.headers['meshproxy-error'], policy: res.headers['ratelimit-policy'] })
    }
    return out
  }
  t.true((await statuses(8)).every((r) => r.status === 200))

  await proxy.apply(limited(1, 2))
  const start = performance.now()
  const tight = await statuses(8)
  const elapsed = (performance.now() - start) / 1000
  // A reload starts the limit afresh: its burst of 2 at once, then one a second.
  t.deepEqual(tight.slice(0, 2).map((r) => r.status), [200, 200])
  const admitted = tight.filter((r) => r.status === 200).length
  t.true(admitted <= 2 + Math.ceil(elapsed), `${admitted} admitted in ${elapsed.toFixed(2)} s`)
  const refused = tight.find((r) => r.status === 429)
  t.like(refused, { error: 'rate-limited', policy: '"api";q=1;w=1;meshproxy-burst=2' })

  await proxy.apply(loose)
  t.true((await statuses(8)).every((r) => r.status === 200), 'the previous policy lifts the limit')
})
