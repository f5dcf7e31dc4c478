/**
 * `validateModel`: checks an already-normalized `ConfigModel` built in code (by the Proxy
 * constructor's callers) before it crosses to the data plane. Values must already be in the
 * normalized form the loader produces: the data plane does not normalize again, so `/a/` or
 * `GET`-vs-`get` differences would otherwise change routing silently.
 */
import type { ConfigModel } from './model.js'
import { suggest, type Diagnostic } from './diagnostics.js'
import {
  HTTP2_LIMITS,
  LISTENER_LIMITS,
  LISTENER_PROTOCOLS,
  POOL_LIMITS,
  ROUTE_LIMITS,
  SERVICE_LIMITS,
  UPSTREAM_PROTOCOLS,
  WEIGHT_MAX,
  WEIGHT_MIN,
  isListenerProtocol,
  isUpstreamProtocol,
  type LimitSpec,
} from './defaults.js'
import { checkSemantics } from './semantics.js'
import { checkHeaderValue, checkName, describe as describeValue, isToken, normalizeHeaderName, normalizeHost, normalizeMethod, normalizePath, parseAddress, type Parsed } from './values.js'

type Obj = Record<string, unknown>

const MODEL_FIELDS = ['listeners', 'services', 'admin']
const LISTENER_FIELDS = ['name', 'address', 'protocol', 'tcpService', ...Object.keys(LISTENER_LIMITS), 'http2', 'proxyHeaders', 'routes']
const ROUTE_FIELDS = ['name', 'hosts', 'path', 'methods', 'headers', 'service', ...Object.keys(ROUTE_LIMITS), 'allowConnect']
const SERVICE_FIELDS = ['name', 'balancer', 'endpoints', 'protocol', ...Object.keys(SERVICE_LIMITS), 'pool']

class Checker {
  readonly diags: Diagnostic[] = []

  error(path: string, message: string, hint?: string): void {
    const d: Diagnostic = { severity: 'error', file: '<object>', line: 0, column: 0, message: `${path}: ${message}` }
    if (hint) d.hint = hint
    this.diags.push(d)
  }

  /** A plain object with exactly `required` keys (plus `optional` ones); undefined if not an object. */
  object(v: unknown, path: string, required: readonly string[], optional: readonly string[] = []): Obj | undefined {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      this.error(path, `expected an object, got ${describe(v)}`)
      return undefined
    }
    const o = v as Obj
    const allowed = [...required, ...optional]
    for (const key of Object.keys(o)) {
      if (!allowed.includes(key)) this.error(`${path}.${key}`, 'unknown field', suggest(key, allowed, 'valid fields'))
    }
    for (const key of required) {
      if (o[key] === undefined) this.error(`${path}.${key}`, 'missing required field')
    }
    return o
  }

  array(v: unknown, path: string): unknown[] {
    if (Array.isArray(v)) return v
    if (v !== undefined) this.error(path, `expected an array, got ${describe(v)}`)
    return []
  }

  /** An optional boolean: absent is the caller's business (a required key is `object`'s). */
  boolean(v: unknown, path: string): void {
    if (v !== undefined && typeof v !== 'boolean') this.error(path, `expected true or false, got ${describe(v)}`)
  }

  string(v: unknown, path: string): string | undefined {
    if (typeof v === 'string') return v
    if (v !== undefined) this.error(path, `expected a string, got ${describe(v)}`)
    return undefined
  }

  int(v: unknown, path: string, min: number, max: number): void {
    if (v === undefined) return
    if (typeof v !== 'number' || !Number.isInteger(v)) this.error(path, `expected an integer, got ${describe(v)}`)
    else if (v < min || v > max) this.error(path, `must be between ${min} and ${max}, got ${v}`)
  }

  limits(o: Obj, path: string, specs: Record<string, LimitSpec>): void {
    for (const [key, spec] of Object.entries(specs)) this.int(o[key], `${path}.${key}`, spec.min, spec.max)
  }

  /** One of the `valid` strings (a protocol); absent is left to the required-field check. */
  oneOf(v: unknown, path: string, valid: readonly string[], is: (v: unknown) => boolean): void {
    if (v === undefined || is(v)) return
    const hint = typeof v === 'string' ? suggest(v, valid, 'valid protocols') : `valid protocols: ${valid.join(', ')}`
    this.error(path, `expected one of ${valid.map((p) => `"${p}"`).join(', ')}, got ${describe(v)}`, hint)
  }

  /** The value must parse and already be in normalized form. */
  normalized(v: unknown, path: string, parse: (s: string) => Parsed<string>): void {
    const s = this.string(v, path)
    if (s === undefined) return
    const parsed = parse(s)
    if (!parsed.ok) this.error(path, parsed.error, parsed.hint)
    else if (parsed.value !== s) this.error(path, `"${s}" is not normalized`, `use "${parsed.value}"`)
  }
}

/** Like the YAML loader's wording, but in JavaScript terms. */
function describe(v: unknown): string {
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'object' && v !== null) return 'an object'
  return describeValue(v)
}

const address = (s: string): Parsed<string> => {
  const parsed = parseAddress(s)
  return parsed.ok ? { ok: true, value: parsed.value.text } : parsed
}

/**
 * Every structural problem of `model` as error diagnostics (file `<object>`, no position,
 * messages starting with the JSON path such as `services[1].endpoints[0].weight`), followed by
 * the cross-checks the loader also runs. Empty means valid. Warnings are never returned.
 */
export function validateModel(model: unknown): Diagnostic[] {
  const c = new Checker()
  const root = c.object(model, 'config', MODEL_FIELDS)
  if (!root) return c.diags
  if (root.admin !== null && root.admin !== undefined) {
    const admin = c.object(root.admin, 'admin', ['address'])
    if (admin) c.normalized(admin.address, 'admin.address', address)
  }
  c.array(root.listeners, 'listeners').forEach((l, i) => checkListener(c, l, `listeners[${i}]`))
  c.array(root.services, 'services').forEach((s, i) => checkService(c, s, `services[${i}]`))
  // Cross-checks assume the structure holds; on a broken one they would only add noise.
  if (c.diags.length === 0) {
    checkSemantics(model as ConfigModel, (target, message, hint) => c.error(target.path, message, hint))
  }
  return c.diags
}

function checkListener(c: Checker, v: unknown, path: string): void {
  const l = c.object(v, path, LISTENER_FIELDS)
  if (!l) return
  c.normalized(l.name, `${path}.name`, (s) => checkName(s, 'listener'))
  c.normalized(l.address, `${path}.address`, address)
  c.oneOf(l.protocol, `${path}.protocol`, LISTENER_PROTOCOLS, isListenerProtocol)
  // null (no tcpService) must be written out like every other default.
  if (l.tcpService !== null && l.tcpService !== undefined) {
    if (typeof l.tcpService === 'string') c.normalized(l.tcpService, `${path}.tcpService`, (s) => checkName(s, 'service'))
    else c.error(`${path}.tcpService`, `expected a service name or null, got ${describe(l.tcpService)}`)
  }
  c.limits(l, path, LISTENER_LIMITS)
  c.boolean(l.proxyHeaders, `${path}.proxyHeaders`)
  const http2 = l.http2 === undefined ? undefined : c.object(l.http2, `${path}.http2`, Object.keys(HTTP2_LIMITS))
  if (http2) c.limits(http2, `${path}.http2`, HTTP2_LIMITS)
  c.array(l.routes, `${path}.routes`).forEach((r, i) => checkRoute(c, r, `${path}.routes[${i}]`))
}

function checkRoute(c: Checker, v: unknown, path: string): void {
  const r = c.object(v, path, ROUTE_FIELDS)
  if (!r) return
  c.normalized(r.name, `${path}.name`, (s) => checkName(s, 'route'))
  c.normalized(r.service, `${path}.service`, (s) => checkName(s, 'service'))
  c.array(r.hosts, `${path}.hosts`).forEach((h, i) => c.normalized(h, `${path}.hosts[${i}]`, normalizeHost))
  c.array(r.methods, `${path}.methods`).forEach((m, i) => c.normalized(m, `${path}.methods[${i}]`, normalizeMethod))
  c.array(r.headers, `${path}.headers`).forEach((h, i) => {
    const header = c.object(h, `${path}.headers[${i}]`, ['name', 'value'])
    if (!header) return
    c.normalized(header.name, `${path}.headers[${i}].name`, normalizeHeaderName)
    c.normalized(header.value, `${path}.headers[${i}].value`, checkHeaderValue)
  })
  const match = r.path === undefined ? undefined : c.object(r.path, `${path}.path`, ['type', 'value'])
  if (match) {
    if (match.type !== undefined && match.type !== 'Exact' && match.type !== 'Prefix') {
      c.error(`${path}.path.type`, `expected "Exact" or "Prefix", got ${describe(match.type)}`)
    }
    c.normalized(match.value, `${path}.path.value`, (s) => normalizePath(s, match.type === 'Exact' ? 'Exact' : 'Prefix'))
  }
  c.limits(r, path, ROUTE_LIMITS)
  c.boolean(r.allowConnect, `${path}.allowConnect`)
}

function checkService(c: Checker, v: unknown, path: string): void {
  const s = c.object(v, path, SERVICE_FIELDS)
  if (!s) return
  c.normalized(s.name, `${path}.name`, (n) => checkName(n, 'service'))
  c.oneOf(s.protocol, `${path}.protocol`, UPSTREAM_PROTOCOLS, isUpstreamProtocol)
  c.limits(s, path, SERVICE_LIMITS)
  const pool = s.pool === undefined ? undefined : c.object(s.pool, `${path}.pool`, Object.keys(POOL_LIMITS))
  if (pool) c.limits(pool, `${path}.pool`, POOL_LIMITS)
  c.array(s.endpoints, `${path}.endpoints`).forEach((e, i) => {
    const endpoint = c.object(e, `${path}.endpoints[${i}]`, ['address', 'weight'])
    if (!endpoint) return
    c.normalized(endpoint.address, `${path}.endpoints[${i}].address`, address)
    c.int(endpoint.weight, `${path}.endpoints[${i}].weight`, WEIGHT_MIN, WEIGHT_MAX)
  })
  if (s.balancer !== undefined) checkBalancer(c, s.balancer, `${path}.balancer`)
}

function checkBalancer(c: Checker, v: unknown, path: string): void {
  const b = c.object(v, path, ['kind'], ['header', 'cookie', 'source'])
  if (!b) return
  const sources = ['header', 'cookie', 'source'].filter((k) => b[k] !== undefined)
  if (b.kind === 'round-robin' || b.kind === 'random') {
    if (sources.length > 0) c.error(path, `${b.kind} balancer takes no ${sources.join('/')}`, 'key sources belong to kind "hash"')
    return
  }
  if (b.kind !== 'hash') {
    c.error(`${path}.kind`, `unknown balancer kind ${typeof b.kind === 'string' ? `"${b.kind}"` : describe(b.kind)}`, typeof b.kind === 'string' ? suggest(b.kind, ['round-robin', 'random', 'hash']) : undefined)
    return
  }
  if (sources.length !== 1) {
    c.error(path, `hash balancer needs exactly one key source, got ${sources.length}`, 'set one of header, cookie, source: true')
    return
  }
  if (b.header !== undefined) c.normalized(b.header, `${path}.header`, normalizeHeaderName)
  if (b.cookie !== undefined) {
    const cookie = c.string(b.cookie, `${path}.cookie`)
    if (cookie !== undefined && !isToken(cookie)) c.error(`${path}.cookie`, `"${cookie}" is not a valid cookie name`)
  }
  if (b.source !== undefined && b.source !== true) c.error(`${path}.source`, `expected true, got ${describe(b.source)}`)
}
