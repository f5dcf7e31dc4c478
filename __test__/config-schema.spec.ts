/**
 * The config schema declared once (ts/config/model.ts): the committed model schema is what the
 * table generates (the Rust crate's tests compare their structs with that file), the native
 * schema accepts the documented examples and the seed fixtures and refuses what the loader
 * refuses, and validateModel and the model schema accept and refuse the same models.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import test from 'ava'
import { Ajv, type ValidateFunction } from 'ajv'
import { parseAllDocuments } from 'yaml'
import { loadConfigText, validateModel, type ConfigModel } from '../ts/config/index.js'
import { modelSchema, nativeSchema } from '../ts/config/json-schema.js'
import { LISTENER, SERVICE, ROUTE, HTTP2, POOL } from '../ts/config/model.js'
import { yamlEntries, type Table } from '../ts/config/fields.js'
import { ROOT } from './helpers/cli.js'

const MODEL_SCHEMA_FILE = join(ROOT, 'schema/config-model.schema.json')

function compile(schema: object): ValidateFunction {
  // strict: a keyword misspelt in the generator is an error, not silently ignored.
  return new Ajv({ strict: true, allowUnionTypes: true, allErrors: true }).compile(schema)
}

const native = compile(nativeSchema())
const model = compile(modelSchema())

/** The YAML documents of a text as plain values, for the schema. */
const documents = (text: string): unknown[] => parseAllDocuments(text).map((d) => d.toJS())

function accepts(t: import('ava').ExecutionContext, validate: ValidateFunction, value: unknown, what: string): void {
  t.true(validate(value), `${what}: ${JSON.stringify(validate.errors, null, 1)}`)
}

test('the committed model schema is what the field table generates', (t) => {
  const committed = readFileSync(MODEL_SCHEMA_FILE, 'utf8')
  t.is(committed, JSON.stringify(modelSchema(), null, 2) + '\n', 'regenerate it: npm run build:ts && node dist/cli.js schema --model > schema/config-model.schema.json')
})

test('the native schema accepts the README examples and the seed fixtures, which load', (t) => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
  const examples = [...readme.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!)
  t.true(examples.length >= 2, 'the README has YAML examples')
  const fixtures = readdirSync(join(ROOT, '__test__/fixtures')).filter((f) => f.endsWith('.yaml'))
  t.true(fixtures.length >= 2, 'the seed fixtures are there')
  const files = [
    ...examples.map((text, i) => ({ what: `README example ${i + 1}`, text })),
    ...fixtures.map((f) => ({ what: f, text: readFileSync(join(ROOT, '__test__/fixtures', f), 'utf8') })),
  ]
  for (const { what, text } of files) {
    // The README's policy files are in examples/ (its examples name them relative to there).
    const loaded = loadConfigText(text, { file: what.startsWith('README') ? join(ROOT, 'examples', `${what}.yaml`) : what })
    t.deepEqual(loaded.diagnostics.filter((d) => d.severity === 'error'), [], what)
    for (const doc of documents(text)) accepts(t, native, doc, what)
    if (loaded.config) accepts(t, model, loaded.config, `${what}, loaded`)
  }
})

test('the native schema refuses what the loader refuses', (t) => {
  const cases = [
    'listeners: [{ adress: 127.0.0.1:4140 }]',
    'listeners: [{ protocol: udp }]',
    'listeners: [{ idleTimeout: fast }]',
    'listeners: [{ maxHeaderBytes: 100 }]',
    'listeners: [{ http2: { maxConcurrentStream: 10 } }]',
    'listeners: [{ routes: [{ match: { path: /v1 } }] }]',
    'listeners: [{ routes: [{ service: s, match: { pathType: Regex } }] }]',
    'listeners: [{ proxyHeaders: "no" }]',
    'services: [{ endpoints: [127.0.0.1:1] }]',
    'services: [{ name: s, balancer: least-conn }]',
    'services: [{ name: s, balancer: { hash: {} } }]',
    'services: [{ name: s, endpoints: [{ weight: 2 }] }]',
    'services: [{ name: s, pool: { idleTimeout: "10" } }]',
    'admin: { adress: 127.0.0.1:1 }',
    'kind: Ingress',
  ]
  for (const text of cases) {
    t.is(loadConfigText(text).config, null, text)
    t.false(native(documents(text)[0]), text)
  }
})

test('the native schema leaves Kubernetes resources to their own schemas', (t) => {
  t.true(native({ apiVersion: 'networking.k8s.io/v1', kind: 'Ingress', spec: { anything: true } }))
  t.false(native({ kind: 'Ingress', spec: {} }), 'without apiVersion a document is native')
})

/** A valid value for every plain field (number, duration, boolean, enum) other than its default. */
function nonDefault(table: Table): Record<string, { key: string; value: unknown }> {
  const out: Record<string, { key: string; value: unknown }> = {}
  for (const [name, f] of Object.entries(table.fields)) {
    const key = yamlEntries(table).find(([, g]) => g === f)?.[0]
    if (key === undefined) continue
    if (f.kind === 'int') out[name] = { key, value: f.default === f.max ? f.min : f.max }
    else if (f.kind === 'boolean') out[name] = { key, value: !f.default }
    else if (f.kind === 'enum') out[name] = { key, value: f.values.find((v) => v !== f.default) }
  }
  return out
}

test('every number, duration, boolean and enum field of the table is read from its YAML key', (t) => {
  const yamlOf = (fields: Record<string, { key: string; value: unknown }>) => Object.fromEntries(Object.values(fields).map(({ key, value }) => [key, value]))
  const modelOf = (fields: Record<string, { key: string; value: unknown }>) => Object.fromEntries(Object.entries(fields).map(([name, { value }]) => [name, value]))
  const [listener, http2, route, service, pool] = [LISTENER, HTTP2, ROUTE, SERVICE, POOL].map(nonDefault) as [
    ReturnType<typeof nonDefault>,
    ReturnType<typeof nonDefault>,
    ReturnType<typeof nonDefault>,
    ReturnType<typeof nonDefault>,
    ReturnType<typeof nonDefault>,
  ]
  t.true(Object.keys(listener).length >= 9 && Object.keys(service).length >= 5, 'the plain fields are found')
  // `mtls: required` (a non-default) needs the proxy's identity.
  const doc = {
    identity: { dir: new URL('../examples/identity', import.meta.url).pathname, name: 'web', namespace: 'shop' },
    listeners: [{ ...yamlOf(listener), tcpService: 's', http2: yamlOf(http2), routes: [{ ...yamlOf(route), service: 's' }] }],
    services: [{ name: 's', endpoints: ['127.0.0.1:1'], ...yamlOf(service), pool: yamlOf(pool) }],
  }
  const r = loadConfigText(JSON.stringify(doc))
  t.deepEqual(r.diagnostics.filter((d) => d.severity === 'error'), [])
  t.like(r.config?.listeners[0], { ...modelOf(listener), http2: modelOf(http2) })
  t.like(r.config?.listeners[0]?.routes[0], modelOf(route))
  t.like(r.config?.services[0], { ...modelOf(service), pool: modelOf(pool) })
  t.true(native(doc), JSON.stringify(native.errors))
})

/** Every path to a value in `v`, as property/index lists. */
function paths(v: unknown, prefix: Array<string | number> = []): Array<Array<string | number>> {
  if (typeof v !== 'object' || v === null) return [prefix]
  const entries = Array.isArray(v) ? v.map((x, i) => [i, x] as const) : Object.entries(v)
  return [prefix, ...entries.flatMap(([k, x]) => paths(x, [...prefix, k]))].filter((p) => p.length > 0)
}

function changed(base: ConfigModel, path: Array<string | number>, change: (holder: Record<string | number, unknown>, key: string | number) => void): unknown {
  const copy = structuredClone(base) as unknown as Record<string | number, unknown>
  const holder = path.slice(0, -1).reduce<Record<string | number, unknown>>((o, k) => o[k] as Record<string | number, unknown>, copy)
  change(holder, path[path.length - 1]!)
  return copy
}

test('validateModel and the model schema refuse the same broken models', (t) => {
  const loaded = loadConfigText(`
listeners:
  - name: web
    tcpService: db
    routes:
      - { name: api, match: { host: api.example.com, path: /v1, methods: [GET], headers: { x-a: b } }, service: api }
services:
  - { name: api, endpoints: [127.0.0.1:8081, { address: 127.0.0.1:8082, weight: 3 }], balancer: { hash: { header: x-user } } }
  - { name: db, endpoints: [127.0.0.1:5432] }
`).config
  if (!loaded) throw new Error('fixture model does not load')
  t.deepEqual(validateModel(loaded), [])
  accepts(t, model, loaded, 'the loaded model')
  let checked = 0
  for (const path of paths(loaded)) {
    const where = path.join('.')
    const inArray = typeof path[path.length - 1] === 'number'
    // Removing an item leaves a shorter, valid list; a removed property is a missing field.
    const variants: Array<[string, unknown]> = [['a wrong type', changed(loaded, path, (o, k) => (o[k] = { wrong: [true] }))]]
    if (!inArray) variants.push(['missing', changed(loaded, path, (o, k) => delete o[k])])
    if (!inArray) variants.push(['an unknown field beside it', changed(loaded, path, (o) => (o.unknownField = 1))])
    for (const [what, broken] of variants) {
      t.not(validateModel(broken).length, 0, `validateModel, ${where}: ${what}`)
      t.false(model(broken), `model schema, ${where}: ${what}`)
      checked++
    }
  }
  t.true(checked > 100, `${checked} broken models`)
})
