/**
 * Native meshproxy documents (no `apiVersion`, or `meshproxy.io/v1alpha1` `kind: Config`):
 * field-by-field reading into model objects with defaults applied, positions recorded in
 * `Origins` for the cross-checks that run once every document is read. The keys each mapping
 * accepts, and the reading of numbers, durations, booleans and enums, come from the field table
 * (`model.ts`); names, addresses, lists and shorthands are read here.
 */
import { isIP } from 'node:net'
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { dirname, isAbsolute, join, resolve } from 'node:path'
import { isMap, isSeq } from './yaml-lib.js'
import { AUTHORIZATION, AUTHORIZATION_RULE, type AuthorizationModel, type AuthorizationRuleModel, BACKEND_REF, BALANCER_KINDS, CIRCUIT_BREAKER, GLOBAL_RATE_LIMIT, RATE_LIMIT, RATE_LIMIT_OVERRIDE, redactUrl, type RateLimitModel, type GlobalRateLimitModel, CONFIG, SIMPLE_BALANCER_KINDS, type SimpleBalancerKind, ENDPOINT, HEADER_MODIFIER, HEALTH_CHECK, IDENTITY, type IdentityModel, checkMeshIdentity, LISTENER, POLICY, REDIRECT, RETRY, ROUTE, ROUTE_MATCH, SERVICE, UPSTREAM_TLS, URL_REWRITE, type AdminModel, type BackendRefModel, type BalancerModel, type EndpointModel, type HeaderMatch, type HeaderModifierModel, type ListenerModel, type PathMatchType, type PolicyModel, type QueryParamMatchModel, type RouteModel, type ServiceModel, type UpstreamTlsModel } from './model.js'
import { closest, suggest, type Loc, type Origins } from './diagnostics.js'
import { complete, yamlEntries, yamlKey, type EnumField, type ModelOf, type Table } from './fields.js'
import { limitOf, makeListener, makeRoute, makeService } from './defaults.js'
import { checkCookieName, checkCookieValue, checkHeaderValue, checkName, checkQueryText, isToken, normalizeHeaderName, normalizeHost, normalizeMethod, normalizeModifiableHeaderName, normalizePath, parseAddress, type Parsed } from './values.js'
import type { DocReader, Fields, YNode } from './yaml-walk.js'
import { normalizeCidr } from './cidr.js'
import { readListenerTls } from './tls.js'

/** The keys a table's YAML form accepts, in table order (the order "valid fields:" hints list them). */
const keysOf = (t: Table): string[] => yamlEntries(t).map(([key]) => key)

export const NATIVE_TOP_FIELDS = keysOf(CONFIG)
const LISTENER_FIELDS = keysOf(LISTENER)
const ROUTE_FIELDS = keysOf(ROUTE)
const MATCH_FIELDS = Object.keys(ROUTE_MATCH)
const SERVICE_FIELDS = keysOf(SERVICE)
const ENDPOINT_FIELDS = keysOf(ENDPOINT)
const { min: WEIGHT_MIN, max: WEIGHT_MAX } = ENDPOINT.fields.weight
/** Names people write for an upstream protocol, for the hint only: the model takes the exact values. */
const PROTOCOL_ALIASES: Record<string, string> = {
  h2: 'http2',
  h2c: 'http2',
  'http/2': 'http2',
  grpc: 'http2',
  http: 'http1',
  h1: 'http1',
  'http/1.1': 'http1',
  'http1.1': 'http1',
}
/** The same for a listener protocol: HTTP versions are all served by `http`, other traffic by `tcp`. */
const LISTENER_PROTOCOL_ALIASES: Record<string, string> = {
  http1: 'http',
  'http/1.1': 'http',
  'http1.1': 'http',
  http2: 'http',
  'http/2': 'http',
  h2: 'http',
  h2c: 'http',
  grpc: 'http',
  opaque: 'tcp',
  raw: 'tcp',
  tls: 'tcp',
}
/** Other names for enum values, by the enum (`"listener protocol"`): for hints only, the model takes the exact values. */
const ALIASES: Record<string, Record<string, string>> = {
  'listener protocol': LISTENER_PROTOCOL_ALIASES,
  'service protocol': PROTOCOL_ALIASES,
}
const BALANCERS: readonly string[] = BALANCER_KINDS
const isSimpleBalancer = (kind: string | undefined): kind is SimpleBalancerKind => (SIMPLE_BALANCER_KINDS as readonly (string | undefined)[]).includes(kind)
const HASH_SOURCES = ['header', 'cookie', 'source']
export const PATH_TYPES = ROUTE_MATCH.pathType.enum

export interface NativeContext {
  r: DocReader
  origins: Origins
  defaultListen: string
  /** Index the next listener gets in the merged list; default names count across documents. */
  listenerIndex: number
}

export interface NativeDoc {
  /** Absent when the document does not mention `admin`. */
  admin?: { value: AdminModel | null; loc: Loc }
  listeners: ListenerModel[]
  services: ServiceModel[]
  /** Listeners with `mode: outbound`: the loader adds a route per service once all are known. */
  outbound: Array<{ listener: ListenerModel; loc: Loc }>
  /** Absent when the document does not mention `identity`. */
  identity?: { value: IdentityModel | null; loc: Loc }
}

export function readNativeDoc(root: Fields, ctx: NativeContext): NativeDoc {
  const out: NativeDoc = { listeners: [], services: [], outbound: [] }
  if (root.isNull('admin')) {
    out.admin = { value: null, loc: root.keyLoc('admin') }
  } else {
    const node = root.get('admin')
    if (node) {
      const addressNode = 'items' in node ? ctx.r.fields(node, 'admin', ['address'])?.require('address') : node
      const address = addressNode && readAddress(ctx.r, addressNode, 'admin address', '127.0.0.1:4191')
      if (address !== undefined) out.admin = { value: { address }, loc: ctx.r.loc(addressNode) }
    }
  }
  if (root.has('identity')) out.identity = { value: root.isNull('identity') ? null : readIdentity(root, ctx), loc: root.keyLoc('identity') }
  for (const node of root.list('listeners')) {
    const listener = readListener(node, ctx)
    if (!listener) continue
    out.listeners.push(listener)
    const f = ctx.r.fields(node, 'listener', null)
    const mode = f?.str('mode')
    if (mode === 'outbound') out.outbound.push({ listener, loc: f!.valueLoc('mode') })
    else if (mode !== undefined && mode !== 'ingress') ctx.r.error(f!.valueLoc('mode'), `unknown listener mode "${mode}"`, 'valid modes: ingress, outbound')
  }
  for (const node of root.list('services')) {
    const service = readService(node, ctx)
    if (service) out.services.push(service)
  }
  return out
}

/**
 * The top-level `identity`: `dir` resolved against the YAML file, and its files there — the trust
 * anchors `ca.crt` and the workload's `<name>.<namespace>.crt`/`.key` — readable PEM (the data
 * plane checks the chain, the SPIFFE ID and the expiry again when it loads them).
 */
function readIdentity(root: Fields, ctx: NativeContext): IdentityModel | null {
  const { r } = ctx
  const f = root.fields('identity', 'identity', keysOf(IDENTITY))
  if (!f) return null
  const identity: IdentityModel = complete(IDENTITY, { dir: '', name: '', namespace: '' })
  for (const k of ['dir', 'name', 'namespace'] as const) f.require(k)
  readTexts(f, IDENTITY, identity)
  readPlain(f, IDENTITY, identity)
  if (!identity.selfIssue && f.get('lifetime')) r.error(f.keyLoc('lifetime'), 'identity: lifetime applies to certificates the proxy issues itself', 'add selfIssue: true, or remove lifetime (the lifetime of issued files is set by `meshproxy identity issue --validity`)')
  for (const k of ['dir', 'name', 'namespace'] as const) ctx.origins.set(identity, k, f.valueLoc(k))
  ctx.origins.set(identity, '', root.keyLoc('identity'))
  if (!identity.dir || !identity.name || !identity.namespace) return null
  if (!isAbsolute(identity.dir) && !r.file.startsWith('<')) identity.dir = resolve(dirname(r.file), identity.dir)
  const files: Array<[string, string]> = identity.selfIssue
    ? [['ca.crt', 'CERTIFICATE'], ['ca.key', 'PRIVATE KEY']]
    : [
        ['ca.crt', 'CERTIFICATE'],
        [`${identity.name}.${identity.namespace}.crt`, 'CERTIFICATE'],
        [`${identity.name}.${identity.namespace}.key`, 'PRIVATE KEY'],
      ]
  for (const [file, block] of files) {
    const path = join(identity.dir, file)
    let text: string
    try {
      text = readFileSync(path, 'utf8')
    } catch (err) {
      const e = err as NodeJS.ErrnoException
      const reason = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.message
      const hint = file.startsWith('ca.')
        ? `make the trust anchor with: meshproxy identity init ${identity.dir} --trust-domain cluster.local${file === 'ca.key' ? ' (selfIssue: true needs its key in the directory)' : ''}`
        : `issue it with: meshproxy identity issue ${identity.name} --namespace ${identity.namespace} --dir ${identity.dir}`
      r.error(f.valueLoc(file === 'ca.crt' ? 'dir' : 'name'), `identity: cannot read "${path}": ${reason}`, hint)
      continue
    }
    if (!text.includes(`-----BEGIN `) || !text.includes(block)) r.error(f.valueLoc('dir'), `identity: "${path}" holds no PEM ${block === 'CERTIFICATE' ? 'certificate' : 'private key'}`)
  }
  return identity
}

/** An address written as a string (or, by mistake, as a bare port number, which gets a hint). */
export function readAddress(r: DocReader, node: YNode, what: string, example: string): string | undefined {
  const text = r.text(node, what)
  if (text === undefined) return undefined
  return r.check(node, what, parseAddress(text, example))?.text
}

function readName(f: Fields, what: string): string | undefined {
  const name = f.text('name')
  const node = f.get('name')
  return name === undefined || !node ? undefined : f.r.check(node, `${what} name`, checkName(name, what))
}

function readListener(node: YNode, ctx: NativeContext): ListenerModel | undefined {
  const index = ctx.listenerIndex++
  const f = ctx.r.fields(node, 'listener', LISTENER_FIELDS)
  if (!f) return undefined
  const name = readName(f, 'listener') ?? `listener-${index}`
  const addressNode = f.get('address')
  const address = (addressNode && readAddress(ctx.r, addressNode, 'listener address', '127.0.0.1:4140')) ?? ctx.defaultListen
  const listener = makeListener(name, address)
  // `tcpService: null` is the default, written out.
  const tcpService = f.str('tcpService')
  if (tcpService !== undefined) listener.tcpService = tcpService
  readPlain(f, LISTENER, listener)

  ctx.origins.set(listener, '', ctx.r.loc(node))
  ctx.origins.set(listener, 'name', f.valueLoc('name'))
  ctx.origins.set(listener, 'address', f.valueLoc('address'))
  ctx.origins.set(listener, 'protocol', f.valueLoc('protocol'))
  ctx.origins.set(listener, 'tcpService', f.valueLoc('tcpService'))
  ctx.origins.set(listener, 'routes', f.keyLoc('routes'))
  const authz = f.fields('authorization', 'listener authorization', keysOf(AUTHORIZATION))
  if (authz) listener.authorization = readAuthorization(authz, ctx)
  ctx.origins.set(listener, 'authorization', f.keyLoc('authorization'))
  const tls = readListenerTls(f)
  if (tls) listener.tls = tls
  ctx.origins.set(listener, 'tls', f.keyLoc('tls'))
  ctx.origins.set(listener, 'mtls', f.valueLoc('mtls'))
  f.list('routes').forEach((routeNode, i) => {
    const route = readRoute(routeNode, `${name}-route-${i}`, ctx)
    if (route) listener.routes.push(route)
  })
  return listener
}

function readRoute(node: YNode, defaultName: string, ctx: NativeContext): RouteModel | undefined {
  const { r } = ctx
  const f = r.fields(node, 'route', ROUTE_FIELDS)
  if (!f) return undefined
  const split = f.has('backends')
  const redirects = f.has('redirect') && !f.isNull('redirect')
  const route = makeRoute(readName(f, 'route') ?? defaultName, f.str('service', !split && !redirects) ?? '')
  readPlain(f, ROUTE, route)
  if (split) {
    for (const n of f.list('backends')) {
      const backend = readBackendRef(r, n)
      if (backend) {
        route.backends.push(backend)
        ctx.origins.set(backend, '', r.loc(n))
        ctx.origins.set(backend, 'service', r.loc(n))
      }
    }
    if (!f.has('service')) route.service = route.backends[0]?.service ?? ''
  }
  if (f.isNull('retry')) route.retry = null
  else if (f.has('retry')) route.retry = readNested(f, 'retry', RETRY) ?? null
  if (f.has('rewrite') && !f.isNull('rewrite')) route.rewrite = readNested(f, 'rewrite', URL_REWRITE) ?? null
  if (redirects) route.redirect = readNested(f, 'redirect', REDIRECT) ?? null
  route.rateLimits = readRateLimits(f, `route "${route.name}"`)
  route.policies = readPolicies(f, r, 'route')
  for (const side of ['requestHeaders', 'responseHeaders'] as const) {
    const edit = f.fields(side, `route ${side}`, keysOf(HEADER_MODIFIER))
    if (edit) route[side] = readHeaderModifier(edit)
    ctx.origins.set(route, side, f.keyLoc(side))
  }
  route.authorization = readRules(f, 'authorization', `route "${route.name}" authorization`, ctx)
  ctx.origins.set(route, 'rewrite', f.keyLoc('rewrite'))
  ctx.origins.set(route, 'redirect', f.keyLoc('redirect'))
  ctx.origins.set(route, '', r.loc(node))
  ctx.origins.set(route, 'allowConnect', f.keyLoc('allowConnect'))
  ctx.origins.set(route, 'name', f.valueLoc('name'))
  ctx.origins.set(route, 'service', f.valueLoc('service'))

  const m = f.fields('match', 'route match', MATCH_FIELDS)
  if (!m) return route
  route.hosts = readOneOrMany(m, 'host', 'hosts', (n, s) => r.check(n, 'host', normalizeHost(s)))
  route.methods = readOneOrMany(m, 'method', 'methods', (n, s) => r.check(n, 'method', normalizeMethod(s)))
  const pathType = m.str('pathType')
  if (pathType !== undefined) route.path.type = readPathType(r, m.valueLoc('pathType'), pathType) ?? 'Prefix'
  const pathNode = m.get('path')
  const path = pathNode && r.string(pathNode, m.label('path'))
  if (pathNode && path !== undefined) route.path.value = r.check(pathNode, 'path', normalizePath(path, route.path.type)) ?? '/'
  const headers = m.fields('headers', 'header match', null)
  if (headers) route.headers = readHeaders(headers)
  const query = m.fields('query', 'query match', null)
  if (query) route.queryParams = readQuery(query)
  const cookies = m.fields('cookies', 'cookie match', null)
  if (cookies) route.cookies = readPairs(cookies, 'cookie', checkCookieName, checkCookieValue)
  return route
}

/** A listener's `authorization`: its `default`, then its `rules`. */
function readAuthorization(f: Fields, ctx: NativeContext): AuthorizationModel {
  const out = complete(AUTHORIZATION, {})
  readPlain(f, AUTHORIZATION, out)
  out.rules = readRules(f, 'rules', 'listener authorization rule', ctx)
  return out
}

/** The authorization rules listed under `key`, each with its position. */
function readRules(parent: Fields, key: string, what: string, ctx: NativeContext): AuthorizationRuleModel[] {
  const out: AuthorizationRuleModel[] = []
  for (const node of parent.list(key)) {
    const rule = readRule(node, what, ctx)
    if (rule) out.push(rule)
  }
  return out
}

function readRule(node: YNode, what: string, ctx: NativeContext): AuthorizationRuleModel | undefined {
  const { r } = ctx
  const f = r.fields(node, what, keysOf(AUTHORIZATION_RULE))
  if (!f) return undefined
  if (!f.require('action')) return undefined
  const rule = complete(AUTHORIZATION_RULE, { action: 'deny' })
  readPlain(f, AUTHORIZATION_RULE, rule)
  if (rule.action !== 'allow' && rule.action !== 'deny') return undefined
  const identity = (s: string): Parsed<string> => (s === '*' ? { ok: true, value: s } : checkMeshIdentity(s))
  for (const [k, norm] of [['networks', normalizeCidr], ['methods', normalizeMethod], ['identities', identity]] as const) {
    const listNode = f.get(k)
    for (const { value, node: n } of listNode ? r.stringList(listNode, f.label(k)) : []) {
      const v = r.check(n, k === 'networks' ? 'network' : k === 'methods' ? 'method' : 'identity', norm(value))
      if (v === undefined) continue
      if (rule[k].includes(v)) r.warn(n, `"${v}" is listed twice in ${what}`)
      else rule[k].push(v)
    }
  }
  const pathType = f.str('pathType')
  if (pathType !== undefined) rule.path.type = readPathType(r, f.valueLoc('pathType'), pathType) ?? 'Prefix'
  const pathNode = f.get('path')
  const path = pathNode && r.string(pathNode, f.label('path'))
  if (pathNode && path !== undefined) rule.path.value = r.check(pathNode, 'path', normalizePath(path, rule.path.type)) ?? '/'
  const headers = f.fields('headers', `${what} headers`, null)
  if (headers) rule.headers = readHeaders(headers)
  ctx.origins.set(rule, '', r.loc(node))
  return rule
}

/** `{ name: value }` pairs of a mapping, each through the checks given; a name written twice is an error. */
function readPairs(h: Fields, what: string, checkName: (s: string) => Parsed<string>, checkValue: (s: string) => Parsed<string>): Array<{ name: string; value: string }> {
  const out: Array<{ name: string; value: string }> = []
  for (const key of h.keys()) {
    const name = h.r.check(h.keyLoc(key), `${what} name`, checkName(key))
    const valueNode = h.get(key)
    if (!valueNode) {
      h.r.error(h.keyLoc(key), `${what} "${key}" has no value`, 'give the value as a string')
      continue
    }
    const raw = h.r.text(valueNode, `value of ${what} "${key}"`)
    const value = raw === undefined ? undefined : h.r.check(valueNode, `${what} value`, checkValue(raw))
    if (name === undefined || value === undefined) continue
    if (out.some((x) => x.name === name)) {
      h.r.error(h.keyLoc(key), `${what} "${name}" is listed twice`, 'list each name once')
      continue
    }
    out.push({ name, value })
  }
  return out
}

function readQuery(q: Fields): QueryParamMatchModel[] {
  return readPairs(q, 'query parameter', checkQueryText, checkQueryText)
}

/** A route's `requestHeaders` / `responseHeaders`: `set` and `add` as `{ name: value }`, `remove` as a list of names. */
function readHeaderModifier(f: Fields): HeaderModifierModel {
  const out = complete(HEADER_MODIFIER, {})
  for (const list of ['set', 'add'] as const) {
    const pairs = f.fields(list, `${f.what} ${list}`, null)
    if (pairs) out[list] = readPairs(pairs, 'header', normalizeModifiableHeaderName, checkHeaderValue)
  }
  const removeNode = f.get('remove')
  for (const { value, node } of removeNode ? f.r.stringList(removeNode, f.label('remove')) : []) {
    const name = f.r.check(node, 'header name', normalizeModifiableHeaderName(value))
    if (name === undefined) continue
    if (out.remove.includes(name)) f.r.error(node, `header "${name}" is listed twice in remove`, 'list each name once')
    else out.remove.push(name)
  }
  return out
}

export function readPathType(r: DocReader, loc: Loc, pathType: string): PathMatchType | undefined {
  if (pathType === 'Exact' || pathType === 'Prefix') return pathType
  // Kubernetes leaves ImplementationSpecific to the controller; ours treats it as Prefix.
  if (pathType === 'ImplementationSpecific') return 'Prefix'
  r.error(loc, `unknown pathType "${pathType}"`, suggest(pathType, PATH_TYPES, 'valid path types'))
  return undefined
}

/** `host: a` / `hosts: [a, b]` (same for methods); both at once is ambiguous, so an error. */
function readOneOrMany(m: Fields, one: string, many: string, norm: (n: YNode, s: string) => string | undefined): string[] {
  if (m.has(one) && m.has(many)) {
    m.r.error(m.keyLoc(many), `route match has both "${one}" and "${many}"`, `list every value under "${many}"`)
  }
  const out: string[] = []
  for (const key of [one, many]) {
    const node = m.get(key)
    if (!node) continue
    for (const { value, node: n } of m.r.stringList(node, m.label(key))) {
      const v = norm(n, value)
      if (v === undefined) continue
      if (out.includes(v)) m.r.warn(n, `"${v}" is listed twice in route match`)
      else out.push(v)
    }
  }
  return out
}

function readHeaders(h: Fields): HeaderMatch[] {
  return readPairs(h, 'header match', normalizeHeaderName, checkHeaderValue)
}

function readService(node: YNode, ctx: NativeContext): ServiceModel | undefined {
  const { r } = ctx
  const f = r.fields(node, 'service', SERVICE_FIELDS)
  if (!f) return undefined
  const nameNode = f.require('name')
  const nameText = nameNode && r.text(nameNode, f.label('name'))
  const name = nameNode && nameText !== undefined ? r.check(nameNode, 'service name', checkName(nameText, 'service')) : undefined
  const service = makeService(name ?? '')
  ctx.origins.set(service, '', r.loc(node))
  ctx.origins.set(service, 'name', f.valueLoc('name'))
  ctx.origins.set(service, 'balancer', f.valueLoc('balancer'))
  ctx.origins.set(service, 'endpoints', f.keyLoc('endpoints'))
  ctx.origins.set(service, 'healthCheck', f.keyLoc('healthCheck'))

  const balancerNode = f.get('balancer')
  if (balancerNode) service.balancer = readBalancer(r, balancerNode) ?? service.balancer
  readPlain(f, SERVICE, service)
  readTexts(f, SERVICE, service, ['failureStatuses', 'failureGrpcStatuses'])
  if (f.isNull('circuitBreaker')) service.circuitBreaker = null
  else if (f.has('circuitBreaker')) service.circuitBreaker = readNested(f, 'circuitBreaker', CIRCUIT_BREAKER) ?? null
  service.rateLimits = readRateLimits(f, `service "${service.name}"`)
  service.policies = readPolicies(f, r, 'service')
  if (f.isNull('healthCheck')) service.healthCheck = null
  else if (f.has('healthCheck')) service.healthCheck = readNested(f, 'healthCheck', HEALTH_CHECK) ?? null
  if (f.has('tls') && !f.isNull('tls')) service.tls = readTls(f, ctx)
  readTexts(f, SERVICE, service, ['identity'])
  ctx.origins.set(service, 'identity', f.valueLoc('identity'))
  ctx.origins.set(service, 'tls', f.keyLoc('tls'))
  for (const n of f.list('endpoints')) {
    const endpoint = readEndpoint(r, n)
    if (!endpoint) continue
    service.endpoints.push(endpoint)
    ctx.origins.set(endpoint, '', r.loc(n))
  }
  if (name !== undefined && service.endpoints.length === 0 && !f.has('endpoints')) {
    r.warn(nameNode ?? node, `service "${name}" has no endpoints; routes to it answer 503 no-endpoints`, 'add "endpoints:" with host:port entries')
  }
  return service
}

/**
 * A route's or a service's `rateLimits`: each limit's plain fields, its `key` (`none`, `client`
 * or `{ header: name }`) and its overrides (client addresses for `key: client`, header values for
 * a header key); a `burst` not written is the `rate`.
 */
export function readRateLimits(parent: Fields, owner: string): RateLimitModel[] {
  const r = parent.r
  const out: RateLimitModel[] = []
  for (const node of parent.list('rateLimits')) {
    const f = r.fields(node, `rate limit of ${owner}`, keysOf(RATE_LIMIT))
    if (!f) continue
    const rateNode = f.require('rate')
    if (!rateNode) continue
    const limit = complete(RATE_LIMIT, { rate: 1, burst: 1 }) as RateLimitModel
    readPlain(f, RATE_LIMIT, limit)
    readTexts(f, RATE_LIMIT, limit)
    if (!f.has('burst')) limit.burst = limit.rate
    if (f.has('global') && !f.isNull('global')) limit.global = readGlobalRateLimit(f)
    const named = limit.name || `limit-${out.length + 1}`
    if (out.some((l, i) => (l.name || `limit-${i + 1}`) === named)) r.error(f.has('name') ? f.valueLoc('name') : r.loc(node), `${owner} has two rate limits named "${named}"`, 'each limit of a route or service needs its own name (its metrics label and RateLimit-Policy name)')
    const keyNode = f.get('key')
    if (keyNode && isMap(keyNode)) {
      const k = r.fields(keyNode, `${f.what} key`, ['header'])
      const h = k?.require('header')
      const name = h && r.text(h, `"header" in ${f.what} key`)
      if (h && name !== undefined) {
        const header = r.check(h, 'rate limit header', normalizeHeaderName(name))
        if (header !== undefined) {
          limit.key = 'header'
          limit.header = header
        }
      }
    } else if (keyNode) {
      const key = r.string(keyNode, f.label('key'))
      if (key === 'none' || key === 'client' || key === 'identity') limit.key = key
      else if (key === 'header') r.error(keyNode, `${f.label('key')} names no header`, 'write key: { header: x-user }')
      else if (key !== undefined) r.error(keyNode, `unknown rate limit key "${key}"`, 'valid keys: none, client, identity, { header: <name> }')
    }
    const overridesNode = f.get('overrides')
    if (overridesNode && limit.key === 'none') r.error(f.keyLoc('overrides'), `${f.what}: overrides need a key to match`, 'add key: client, key: identity or key: { header: <name> }')
    for (const o of f.list('overrides')) {
      const of = r.fields(o, `override in ${f.what}`, keysOf(RATE_LIMIT_OVERRIDE))
      if (!of) continue
      const valueNode = of.require('value')
      const value = valueNode && r.text(valueNode, of.label('value'))
      const override = complete(RATE_LIMIT_OVERRIDE, { value: value ?? '', rate: 1, burst: 1 })
      readPlain(of, RATE_LIMIT_OVERRIDE, override)
      if (!of.require('rate')) continue
      if (!of.has('burst')) override.burst = override.rate
      if (valueNode && value !== undefined) {
        if (limit.key === 'client' && isIP(value) === 0) {
          r.error(valueNode, `override "${value}" is not an IP address`, 'a limit keyed by client matches client IP addresses, e.g. 10.0.0.7')
          continue
        }
        if (limit.key === 'identity' && !/^(spiffe:\/\/[^/]+\/ns\/[^/]+\/sa\/[^/]+|[a-z0-9-]+\.[a-z0-9-]+)$/.test(value)) {
          r.error(valueNode, `override "${value}" is not a workload identity`, 'a limit keyed by identity matches <sa>.<namespace> (web.shop) or a SPIFFE ID (spiffe://cluster.local/ns/shop/sa/web)')
          continue
        }
        if (r.check(valueNode, of.label('value'), checkHeaderValue(value)) === undefined) continue
        limit.overrides.push(override)
      }
    }
    out.push(limit)
  }
  return out
}

/**
 * A route's or a service's `policies`: each a `.rego` path (relative to the YAML file) or a
 * mapping with `file`. The Rego source is read here and handed to the data plane in the model,
 * which compiles it (a syntax error is reported at the `.rego` file's own line and column).
 */
function readPolicies(f: Fields, r: DocReader, owner: 'route' | 'service'): PolicyModel[] {
  const out: PolicyModel[] = []
  for (const node of f.list('policies')) {
    const policy = complete(POLICY, { file: '' }) as PolicyModel
    let fileNode: YNode | undefined = node
    if (isMap(node)) {
      const pf = r.fields(node, `${owner} policy`, keysOf(POLICY))
      if (!pf) continue
      fileNode = pf.require('file')
      readPlain(pf, POLICY, policy)
      readTexts(pf, POLICY, policy, ['rule'])
      if (policy.phase === 'request' && owner === 'service') {
        r.error(pf.valueLoc('phase'), 'a service\'s policies check responses only', 'attach a request policy to a route')
        continue
      }
      if (policy.phase === 'request' && policy.action !== 'deny') {
        r.error(pf.has('action') ? pf.valueLoc('action') : pf.valueLoc('phase'), `a request policy cannot ${policy.action}`, 'a request policy has action: deny')
        continue
      }
    }
    const name = fileNode && r.text(fileNode, `${owner} policy file`)
    if (fileNode === undefined || name === undefined || r.check(fileNode, 'policy file', POLICY.fields.file.normalize(name, {})) === undefined) continue
    const path = isAbsolute(name) || r.file.startsWith('<') ? name : join(dirname(r.file), name)
    try {
      policy.source = readFileSync(path, 'utf8')
    } catch (err) {
      const e = err as NodeJS.ErrnoException
      const reason = e.code === 'ENOENT' ? 'no such file' : e.code === 'EISDIR' ? 'it is a directory' : e.message
      r.error(fileNode, `cannot read policy file "${path}": ${reason}`, `a path relative to ${r.file}`)
      continue
    }
    policy.file = path
    out.push(policy)
  }
  return out
}

/** The PEM certificates in `pem`, each parsed (throws on one that does not parse). */
function pemCertificates(pem: string): X509Certificate[] {
  return (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((block) => new X509Certificate(block))
}

/** The PEM files a service's `tls` or a global rate limit names. */
type PemFiles = { ca: string | null; cert: string | null; key: string | null }

/**
 * The PEM files of `files` (a service's `tls`, a global rate limit) that are given, each resolved
 * against the YAML file's directory (the path written back into `files`), read and parsed: `ca`
 * and `cert` must hold PEM certificates, `key` a private key that matches `cert`. A bad file is
 * reported at its value in the YAML, the message starting with the field's `lead` and naming it
 * as its `noun` (`label` gives both). Whether `cert` and `key` come together is the caller's
 * check. False when any file is bad.
 */
function readPemFiles(f: Fields, files: PemFiles, label: (name: keyof PemFiles) => { lead: string; noun: string }): boolean {
  const r = f.r
  let good = true
  const bad = (name: keyof PemFiles, message: (noun: string) => string, hint?: string): undefined => {
    const { lead, noun } = label(name)
    r.error(f.valueLoc(name), `${lead}${message(noun)}`, hint)
    good = false
    return undefined
  }
  const read = (name: keyof PemFiles): string | undefined => {
    const given = files[name]
    if (given === null) return undefined
    const path = isAbsolute(given) || r.file.startsWith('<') ? given : resolve(dirname(r.file), given)
    files[name] = path
    try {
      return readFileSync(path, 'utf8')
    } catch (err) {
      const e = err as NodeJS.ErrnoException
      const reason = e.code === 'ENOENT' ? 'no such file' : e.code === 'EISDIR' ? 'it is a directory' : e.message
      return bad(name, (noun) => `cannot read ${noun} "${path}": ${reason}`, `a path relative to ${r.file}`)
    }
  }
  const certificates = (name: 'ca' | 'cert', pem: string | undefined): X509Certificate[] | undefined => {
    if (pem === undefined) return undefined
    try {
      const certs = pemCertificates(pem)
      if (certs.length > 0) return certs
      return bad(name, (noun) => `${noun} "${files[name]}" holds no PEM certificate`, 'a file of "-----BEGIN CERTIFICATE-----" blocks')
    } catch (err) {
      return bad(name, (noun) => `${noun} "${files[name]}" holds a certificate that does not parse: ${(err as Error).message}`)
    }
  }
  certificates('ca', read('ca'))
  const chain = certificates('cert', read('cert'))
  const keyPem = read('key')
  let key: KeyObject | undefined
  if (keyPem !== undefined) {
    try {
      key = createPrivateKey(keyPem)
    } catch (err) {
      bad('key', (noun) => `${noun} "${files.key}" is not a PEM private key: ${(err as Error).message}`)
    }
  }
  if (chain?.[0] && key && !chain[0].checkPrivateKey(key)) {
    bad('key', (noun) => `${noun} "${files.key}" is not the private key of cert "${files.cert}"`, 'give the key the client certificate was issued for')
  }
  return good
}

/**
 * A service's `tls`: its fields, with `ca`, `cert` and `key` resolved against the YAML file's
 * directory, read and parsed here (PEM certificates, a private key that matches `cert`), so a
 * bad file is reported at its line in the YAML. Whether `cert` and `key` come together is a
 * model check (`semantics.ts`).
 */
function readTls(parent: Fields, ctx: NativeContext): UpstreamTlsModel | null {
  const f = parent.fields('tls', `${parent.what} tls`, keysOf(UPSTREAM_TLS))
  if (!f) return null
  const tls = complete(UPSTREAM_TLS, {}) as UpstreamTlsModel
  readTexts(f, UPSTREAM_TLS, tls)
  for (const name of ['serverName', 'ca', 'cert', 'key'] as const) ctx.origins.set(tls, name, f.valueLoc(name))
  readPemFiles(f, tls, (name) => ({ lead: '', noun: `tls ${name}` }))
  return tls
}

/**
 * A rate limit's `global` (of a native limit, or of a `RateLimiter`'s spec or limit): exactly one
 * of `redis` and `rls` (checked); `domain` with `rls` only, and required with it; `ca`, `cert`
 * and `key`, for a `rediss://` URL or an `https://` rate limit service only, are resolved against
 * the YAML file's directory and read (`readGlobalTls`). Null when it is missing or invalid
 * (reported).
 */
export function readGlobalRateLimit(parent: Fields): GlobalRateLimitModel | null {
  const f = parent.fields('global', `${parent.what} global`, keysOf(GLOBAL_RATE_LIMIT))
  if (!f) return null
  const r = f.r
  const hint = 'redis: redis://host:port (a shared Redis), or rls: host:port with domain: <name> (an Envoy rate limit service)'
  if (f.has('redis') && f.has('rls')) {
    r.error(f.keyLoc('rls'), `${f.what} has both "redis" and "rls": a limit is counted by one server`, hint)
    return null
  }
  if (!f.has('redis') && !f.has('rls')) {
    r.error(f.node, `${f.what} is missing required field "redis" or "rls"`, hint)
    return null
  }
  const global = complete(GLOBAL_RATE_LIMIT, {})
  readPlain(f, GLOBAL_RATE_LIMIT, global)
  readTexts(f, GLOBAL_RATE_LIMIT, global)
  if (global.rls !== null) {
    if (global.domain === null) {
      if (!f.has('domain')) r.error(f.keyLoc('rls'), `${f.what} with "rls" is missing required field "domain"`, 'the domain of the rate limit service\'s config, e.g. domain: mesh')
      return null
    }
    if (global.ca !== null && !global.rls.startsWith('https://')) {
      r.error(f.valueLoc('ca'), `${f.what}: a CA bundle is only used with TLS, and the rate limit service "${global.rls}" is reached over plaintext HTTP/2`, 'write rls: https://host:port to reach the service over TLS, or drop "ca"')
      return null
    }
    const client = clientCertField(global)
    if (client !== null && !global.rls.startsWith('https://')) {
      r.error(f.valueLoc(client), `${f.what}: a client certificate is only used with TLS, and the rate limit service "${global.rls}" is reached over plaintext HTTP/2`, 'write rls: https://host:port to reach the service over TLS, or drop "cert" and "key"')
      return null
    }
    return readGlobalTls(f, global)
  }
  if (global.redis === null) return null
  if (global.domain !== null) {
    r.error(f.keyLoc('domain'), `${f.what}: "domain" is only used with "rls"`, 'drop "domain", or write rls: host:port to use a rate limit service')
    return null
  }
  if (global.ca !== null && !global.redis.startsWith('rediss://')) {
    r.error(f.valueLoc('ca'), `${f.what}: a CA bundle is only used with TLS, and "${redactUrl(global.redis)}" is not a rediss:// URL`, 'write rediss://host:port to reach Redis over TLS, or drop "ca"')
    return null
  }
  const client = clientCertField(global)
  if (client !== null && !global.redis.startsWith('rediss://')) {
    r.error(f.valueLoc(client), `${f.what}: a client certificate is only used with TLS, and "${redactUrl(global.redis)}" is not a rediss:// URL`, 'write rediss://host:port to reach Redis over TLS, or drop "cert" and "key"')
    return null
  }
  return readGlobalTls(f, global)
}

/** The first of `global`'s `cert` and `key` that is given, null when neither is. */
function clientCertField(global: GlobalRateLimitModel): 'cert' | 'key' | null {
  return global.cert !== null ? 'cert' : global.key !== null ? 'key' : null
}

/**
 * `global`'s `ca`, `cert` and `key`, those it has, resolved against the YAML file's directory,
 * read and checked (`readPemFiles`); `cert` and `key` come together. Null when one is missing or
 * bad (reported).
 */
function readGlobalTls(f: Fields, global: GlobalRateLimitModel): GlobalRateLimitModel | null {
  if ((global.cert === null) !== (global.key === null)) {
    const [given, missing] = global.cert === null ? ['key', 'cert'] as const : ['cert', 'key'] as const
    f.r.error(f.valueLoc(given), `${f.what} has a ${given} but no ${missing}`, 'a client certificate needs both cert and key: add ' + (missing === 'key' ? 'key: <the PEM private key of cert>' : 'cert: <the PEM certificate of key>'))
    return null
  }
  return readPemFiles(f, global, (name) => ({ lead: `${f.what}: `, noun: name })) ? global : null
}

/**
 * A nested object with text fields (a service's `healthCheck`, a route's `retry`): its plain
 * fields, then its string fields. Undefined when `key` is not a mapping (reported).
 */
function readNested<T extends Table>(parent: Fields, key: string, table: T): ModelOf<T> | undefined {
  const f = parent.fields(key, `${parent.what} ${key}`, keysOf(table))
  if (!f) return undefined
  const out = complete(table, {}) as Record<string, unknown>
  readPlain(f, table, out)
  readTexts(f, table, out)
  return out as ModelOf<T>
}

/**
 * The string fields `names` of table `t` (every one by default) from `f` into `target`, each
 * through its normalizer, where written; a nullable one may be written `null` (its default).
 */
function readTexts(f: Fields, t: Table, target: object, names: readonly string[] = Object.keys(t.fields)): void {
  const out = target as Record<string, unknown>
  for (const name of names) {
    const field = t.fields[name]
    if (!field || field.kind !== 'string' || field.yaml === false) continue
    const k = yamlKey(name, field)
    if (field.nullable && f.isNull(k)) continue
    const node = f.get(k)
    const value = node && f.r.text(node, f.label(k))
    if (node && value !== undefined) out[name] = f.r.check(node, f.label(k), field.normalize(value, out)) ?? out[name]
  }
}

/**
 * Reads the plain fields of table `t` — numbers, durations, booleans, enums, and objects of only
 * those (a listener's `http2`) — from `f` into `target`, where written. Names, addresses, lists
 * and shorthands have readers of their own.
 */
function readPlain(f: Fields, t: Table, target: object): void {
  const out = target as Record<string, unknown>
  for (const [name, field] of Object.entries(t.fields)) {
    if (field.yaml === false) continue
    const key = yamlKey(name, field)
    let value: unknown
    if (field.kind === 'int') value = f.limit(key, limitOf(field))
    else if (field.kind === 'boolean') value = f.bool(key)
    else if (field.kind === 'enum') value = readEnum(f, key, field)
    else if (field.kind === 'object' && !field.nullable && isPlain(field.table)) {
      const sub = f.fields(key, `${f.what} ${key}`, keysOf(field.table))
      if (sub) readPlain(sub, field.table, out[name] as object)
    }
    if (value !== undefined) out[name] = value
  }
}

const isPlain = (t: Table): boolean => Object.values(t.fields).every((f) => f.kind === 'int' || f.kind === 'boolean' || f.kind === 'enum')

function readEnum(f: Fields, key: string, field: EnumField): string | undefined {
  const value = f.str(key)
  if (value === undefined || field.values.includes(value)) return value
  const what = `${f.what} ${key}`
  f.r.error(f.valueLoc(key), `unknown ${what} "${value}"`, enumHint(value, field, ALIASES[what] ?? {}))
  return undefined
}

/** `did you mean` when a close or common name was written, then always the valid values. */
function enumHint(value: string, field: EnumField, aliases: Record<string, string>): string {
  const valid = `valid ${field.noun}: ${field.values.join(', ')}`
  const guess = aliases[value.toLowerCase()] ?? closest(value, field.values)
  return guess === undefined ? valid : `did you mean "${guess}"? ${valid}`
}

/** A route's backend: `name` or `{ service: name, weight: n }`. */
function readBackendRef(r: DocReader, node: YNode): BackendRefModel | undefined {
  if (!isMap(node)) {
    const name = r.text(node, 'backend')
    const checked = name !== undefined ? r.check(node, 'backend service', checkName(name, 'service')) : undefined
    return checked === undefined ? undefined : complete(BACKEND_REF, { service: checked })
  }
  const f = r.fields(node, 'route backend', keysOf(BACKEND_REF))
  const serviceNode = f?.require('service')
  const name = serviceNode && r.text(serviceNode, 'backend service')
  const service = serviceNode && name !== undefined ? r.check(serviceNode, 'backend service', checkName(name, 'service')) : undefined
  const weight = f?.int('weight', 0, 1000000)
  return service === undefined ? undefined : complete(BACKEND_REF, weight === undefined ? { service } : { service, weight })
}

function readEndpoint(r: DocReader, node: YNode): EndpointModel | undefined {
  if (isSeq(node)) {
    r.error(node, 'endpoint must be a host:port string or a mapping, got a list', 'e.g. 127.0.0.1:8080 or { address: 127.0.0.1:8080, weight: 2 }')
    return undefined
  }
  if (!isMap(node)) {
    const address = readAddress(r, node, 'endpoint address', '127.0.0.1:8080')
    return address === undefined ? undefined : complete(ENDPOINT, { address })
  }
  const f = r.fields(node, 'endpoint', ENDPOINT_FIELDS)
  const addressNode = f?.require('address')
  const address = addressNode && readAddress(r, addressNode, 'endpoint address', '127.0.0.1:8080')
  const weight = f?.int('weight', WEIGHT_MIN, WEIGHT_MAX)
  return address === undefined ? undefined : complete(ENDPOINT, weight === undefined ? { address } : { address, weight })
}

/**
 * `round-robin` | `random` | `least-request` | `p2c-ewma` | `hash` (source address), or the mapping forms
 * `{ hash: { header | cookie | source } }`. The mapping must name one balancer and a hash one key
 * source, since the data plane hashes on exactly one.
 */
export function readBalancer(r: DocReader, node: YNode): BalancerModel | undefined {
  if (!('items' in node)) {
    const kind = r.string(node, 'balancer')
    if (isSimpleBalancer(kind)) return { kind }
    if (kind === 'hash') return { kind: 'hash', source: true }
    if (kind !== undefined) r.error(node, `unknown balancer "${kind}"`, suggest(kind, BALANCERS, 'valid balancers'))
    return undefined
  }
  const f = r.fields(node, 'balancer', BALANCERS)
  if (!f) return undefined
  const kinds = f.keys()
  if (kinds.length !== 1) {
    if (kinds.length > 1) r.error(node, `balancer names ${kinds.length} kinds (${kinds.join(', ')})`, 'pick one')
    else r.error(node, 'balancer mapping is empty', `valid balancers: ${BALANCERS.join(', ')}`)
    return undefined
  }
  const kind = kinds[0]
  if (isSimpleBalancer(kind)) {
    const opts = f.fields(kind, `${kind} balancer`, [])
    return opts || !f.has(kind) ? { kind } : undefined
  }
  if (!f.has('hash')) return { kind: 'hash', source: true }
  const h = f.fields('hash', 'hash balancer', HASH_SOURCES)
  if (!h) return undefined
  const sources = h.keys().filter((k) => !h.isNull(k))
  if (sources.length !== 1) {
    r.error(h.node, `hash balancer needs exactly one key source, got ${sources.length}`, 'use one of header: <name>, cookie: <name>, source: true')
    return undefined
  }
  if (h.has('header')) {
    const name = h.str('header')
    const header = name === undefined ? undefined : r.check(h.valueLoc('header'), 'hash header', normalizeHeaderName(name))
    return header === undefined ? undefined : { kind: 'hash', header }
  }
  if (h.has('cookie')) {
    const cookie = h.str('cookie')
    if (cookie !== undefined && !isToken(cookie)) r.error(h.valueLoc('cookie'), `"${cookie}" is not a valid cookie name`)
    return cookie === undefined || !isToken(cookie) ? undefined : { kind: 'hash', cookie }
  }
  const source = h.bool('source')
  if (source === false) r.error(h.valueLoc('source'), 'hash source: false names no key source', 'use source: true, or header/cookie')
  return source === true ? { kind: 'hash', source: true } : undefined
}
