/**
 * Parsers for the value syntaxes the config accepts (addresses, durations, hosts, paths, header
 * names, methods). Pure functions, shared by the YAML loader, the Kubernetes translation and
 * `validateModel`, so a value means the same thing whichever way it arrives.
 */
import { isIPv4, isIPv6 } from 'node:net'
import type { PathMatchType } from './model.js'

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string; hint?: string }

export const ok = <T>(value: T): Parsed<T> => ({ ok: true, value })
export const fail = <T>(error: string, hint?: string): Parsed<T> =>
  hint === undefined ? { ok: false, error } : { ok: false, error, hint }

export interface Address {
  /** Lowercase; IPv6 without brackets. */
  host: string
  port: number
  /** Normalized `host:port` (`[v6]:port` for IPv6). */
  text: string
}

/**
 * `host:port` with port 0..65535. Host is an IPv4 address, a DNS name, or a bracketed IPv6
 * address. `example` shapes the hint, since what a listener and an endpoint want differ.
 */
export function parseAddress(input: string, example = '127.0.0.1:4140'): Parsed<Address> {
  const hint = `write it as host:port, e.g. ${example}`
  if (input === '') return fail('empty address', hint)
  if (/\s/.test(input)) return fail(`address "${input}" contains whitespace`, hint)
  if (input.includes('://')) return fail(`address "${input}" must not have a scheme`, hint)
  let host: string
  let portText: string
  if (input.startsWith('[')) {
    const close = input.indexOf(']')
    if (close < 0) return fail(`address "${input}" has no closing "]"`, 'IPv6 addresses look like [::1]:4140')
    host = input.slice(1, close)
    if (!isIPv6(host)) return fail(`"${host}" in "${input}" is not an IPv6 address`, 'IPv6 addresses look like [::1]:4140')
    if (input[close + 1] !== ':') return fail(`address "${input}" has no port`, hint)
    portText = input.slice(close + 2)
  } else {
    const colon = input.lastIndexOf(':')
    if (colon < 0) return fail(`address "${input}" has no port`, hint)
    host = input.slice(0, colon)
    portText = input.slice(colon + 1)
    if (host.includes(':')) {
      return fail(`IPv6 address in "${input}" needs brackets`, `write it as [${host}]:${portText}`)
    }
    if (host === '') return fail(`address "${input}" has no host`, `use 0.0.0.0${input} for all interfaces or 127.0.0.1${input}`)
    host = host.toLowerCase()
    if (!isIPv4(host)) {
      if (/^[0-9.]+$/.test(host)) return fail(`"${host}" is not a valid IPv4 address`, hint)
      if (!isDnsName(host)) return fail(`"${host}" is not a valid host name or IP address`, hint)
    }
  }
  if (!/^\d{1,5}$/.test(portText)) return fail(`port "${portText}" in "${input}" is not a number`, hint)
  const port = Number(portText)
  if (port > 65535) return fail(`port ${port} in "${input}" is out of range`, 'ports are 0..65535')
  host = host.toLowerCase()
  return ok({ host, port, text: host.includes(':') ? `[${host}]:${port}` : `${host}:${port}` })
}

/** Unspecified addresses: a listener on one of these holds the port on every interface. */
export function isWildcardHost(host: string): boolean {
  return host === '0.0.0.0' || host === '::' || /^(0+:){7}0+$/.test(host)
}

const DURATION_UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/**
 * Milliseconds from an integer (already ms) or a duration string such as `10s`, `500ms`, `1m`,
 * `1m30s`, `1.5s`. A bare number in a string is refused: `"500"` in YAML is a typo as often as
 * not, and guessing its unit is how timeouts end up 1000x off.
 */
export function parseDuration(input: unknown): Parsed<number> {
  const hint = 'use milliseconds as an integer or a duration such as 500ms, 10s, 1m'
  if (typeof input === 'number') {
    if (!Number.isInteger(input) || input < 0) return fail(`duration ${input} is not a whole number of milliseconds`, hint)
    return ok(input)
  }
  if (typeof input !== 'string') return fail(`expected a duration, got ${describe(input)}`, hint)
  const s = input.trim()
  if (/^\d+$/.test(s)) return fail(`duration "${input}" has no unit`, `write ${s}ms or ${s}s`)
  if (!/^(\d+(\.\d+)?(ms|s|m|h))+$/.test(s)) return fail(`"${input}" is not a duration`, hint)
  let total = 0
  for (const m of s.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) {
    total += Number(m[1]) * (DURATION_UNIT_MS[m[2] ?? 'ms'] ?? 1)
  }
  // Float noise (0.1s * 1000) must not turn an exact duration into a sub-millisecond one.
  const rounded = Math.round(total)
  if (Math.abs(total - rounded) > 1e-6) return fail(`duration "${input}" is not a whole number of milliseconds`, hint)
  if (!Number.isSafeInteger(rounded)) return fail(`duration "${input}" is too large`, hint)
  return ok(rounded)
}

/**
 * Milliseconds as the largest unit `parseDuration` reads that holds them exactly: `10s`, `720h`,
 * `1500ms`. Error messages show limits this way, so they read as the config is written.
 */
export function formatDuration(ms: number): string {
  for (const unit of ['h', 'm', 's'] as const) {
    const size = DURATION_UNIT_MS[unit] ?? 1
    if (ms !== 0 && ms % size === 0) return `${ms / size}${unit}`
  }
  return `${ms}ms`
}

function isDnsName(host: string): boolean {
  if (host.length > 253) return false
  return host.split('.').every((label) => /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/.test(label))
}

/**
 * A route host: lowercase DNS name, or `*.` followed by one (matching exactly one label). No
 * port: ports belong to listeners. A trailing dot is dropped so `a.com.` and `a.com` are one host.
 */
export function normalizeHost(input: string): Parsed<string> {
  let host = input.toLowerCase()
  if (host.endsWith('.') && host.length > 1) host = host.slice(0, -1)
  if (host === '' || host === '*') return fail(`host "${input}" matches every host`, 'leave the host out to match any host')
  if (host.includes(':')) {
    return fail(`host "${input}" must not include a port`, 'the port is matched by the listener; give the name only')
  }
  let name = host
  if (host.startsWith('*.')) name = host.slice(2)
  if (name.includes('*')) {
    return fail(`host "${input}" has a wildcard that is not a leading "*."`, 'a wildcard replaces one whole first label, e.g. *.example.com')
  }
  if (!isDnsName(name)) return fail(`host "${input}" is not a valid DNS name`, 'e.g. api.example.com or *.example.com')
  return ok(host)
}

/**
 * A route's path, normalized the way the data plane compares paths: duplicate slashes collapsed,
 * dot segments resolved (so `/a/../admin` is `/admin`, never a way around a route). A trailing
 * slash (also one left by a final `.` or `..` segment) is kept for `Exact`, where `/foo/` and
 * `/foo` are different paths, and dropped for `Prefix`, which matches both alike; the root is `/`.
 */
/** A request target to send as it is (a health check's): origin form, path and optional query. */
export function checkRequestTarget(input: string): Parsed<string> {
  if (!input.startsWith('/')) return fail(`"${input}" does not start with "/"`, `write /${input.replace(/^\/*/, '')}`)
  if (input.includes('#')) return fail(`"${input}" contains a fragment`, 'a request target has none: drop the "#…"')
  if (/[^\x21-\x7e]/.test(input)) return fail(`"${input}" contains whitespace, control or non-ASCII characters`, 'percent-encode them')
  if (input.length > 1024) return fail(`"${input.slice(0, 40)}…" is longer than 1024 characters`)
  return ok(input)
}

export function normalizePath(input: string, type: PathMatchType): Parsed<string> {
  if (!input.startsWith('/')) return fail(`path "${input}" does not start with "/"`, `write /${input.replace(/^\/*/, '')}`)
  if (/[?#]/.test(input)) return fail(`path "${input}" contains a query or fragment`, 'match the path only')
  if (/[\s\x00-\x1f\x7f]/.test(input)) return fail(`path "${input}" contains whitespace or control characters`)
  const out: string[] = []
  let trailingSlash = false
  for (const seg of input.slice(1).split('/')) {
    if (seg === '..') out.pop()
    else if (seg !== '' && seg !== '.') out.push(seg)
    trailingSlash = seg === '' || seg === '.' || seg === '..'
  }
  const keepSlash = type === 'Exact' && trailingSlash && out.length > 0
  return ok('/' + out.join('/') + (keepSlash ? '/' : ''))
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/

/** RFC 9110 token, the syntax of header names, method names and cookie names. */
export function isToken(s: string): boolean {
  return TOKEN.test(s)
}

export function normalizeHeaderName(input: string): Parsed<string> {
  if (!isToken(input)) {
    return fail(`"${input}" is not a valid header name`, 'header names are tokens such as x-canary: no spaces, colons or quotes')
  }
  return ok(input.toLowerCase())
}

export function normalizeMethod(input: string): Parsed<string> {
  if (!isToken(input)) return fail(`"${input}" is not a valid HTTP method`, 'e.g. GET, POST, PUT, DELETE')
  return ok(input.toUpperCase())
}

/**
 * Fields a header modifier may not touch: the message's framing and connection management
 * (hop-by-hop), which the proxy owns, and `host`, which `rewrite.host` changes.
 */
const UNMODIFIABLE_HEADERS: Record<string, string> = {
  host: 'change the host with rewrite: { host: … } (URLRewrite hostname)',
  'content-length': 'the proxy frames each message itself',
  'transfer-encoding': 'the proxy frames each message itself',
  connection: 'hop-by-hop fields belong to one connection',
  'keep-alive': 'hop-by-hop fields belong to one connection',
  'proxy-connection': 'hop-by-hop fields belong to one connection',
  te: 'hop-by-hop fields belong to one connection',
  trailer: 'hop-by-hop fields belong to one connection',
  upgrade: 'hop-by-hop fields belong to one connection',
}

/** A header name a header modifier may set, add or remove. */
export function normalizeModifiableHeaderName(input: string): Parsed<string> {
  const name = normalizeHeaderName(input)
  if (!name.ok) return name
  const why = UNMODIFIABLE_HEADERS[name.value]
  return why === undefined ? name : fail(`header "${name.value}" cannot be modified by a route`, why)
}

/** A host a rewrite or redirect sends to: a DNS name or an IP address, no wildcard, no port. */
export function normalizeTargetHost(input: string): Parsed<string> {
  if (/^\[[0-9a-fA-F:.]+\]$/.test(input) || /^\d{1,3}(\.\d{1,3}){3}$/.test(input)) return ok(input.toLowerCase())
  const host = normalizeHost(input)
  if (host.ok && host.value.startsWith('*.')) return fail(`host "${input}" is a wildcard`, 'give the one host requests are sent to')
  return host
}

/** A cookie name: an RFC 9110 token. */
export function checkCookieName(input: string): Parsed<string> {
  return isToken(input) ? ok(input) : fail(`"${input}" is not a valid cookie name`, 'cookie names are tokens: no spaces, "=", ";" or quotes')
}

/** A cookie value as RFC 6265 allows it: no spaces, `;`, `,`, `\\` or controls (quotes only around the whole value). */
export function checkCookieValue(input: string): Parsed<string> {
  const bare = /^"(.*)"$/.exec(input)?.[1] ?? input
  return /^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*$/.test(bare) ? ok(input) : fail(`cookie value "${input}" has a character cookies cannot carry`, 'no spaces, quotes inside, commas, semicolons or backslashes')
}

/** A query parameter's name or value as the router compares it (decoded): any text but control characters. */
export function checkQueryText(input: string): Parsed<string> {
  if (/[\x00-\x1f\x7f]/.test(input)) return fail(`"${input}" contains control characters`)
  return ok(input)
}

/** Header values go to the data plane verbatim; only characters HTTP forbids are refused. */
export function checkHeaderValue(input: string): Parsed<string> {
  if (/[\x00-\x08\x0a-\x1f\x7f]/.test(input)) return fail(`header value "${input}" contains control characters`)
  return ok(input)
}

/** Names show up in metrics labels and log lines, so they must be non-empty single words. */
export function checkName(input: string, what: string): Parsed<string> {
  if (input === '') return fail(`${what} name is empty`)
  if (/[\s\x00-\x1f\x7f]/.test(input)) return fail(`${what} name "${input}" contains whitespace or control characters`)
  return ok(input)
}

/** For "expected X, got Y" messages. */
export function describe(v: unknown): string {
  if (v === null || v === undefined) return 'nothing'
  if (Array.isArray(v)) return 'a list'
  if (typeof v === 'object') return 'a mapping'
  if (typeof v === 'string') return `string "${v}"`
  return `${typeof v} ${String(v)}`
}

/**
 * An HTTP status set in Linkerd's syntax (`retry.linkerd.io/http`): comma-separated codes
 * (`429`), ranges (`500-504`) and classes (`5xx`), each within 100..599. Normalized to sorted,
 * merged ranges: `5xx,429` → `429,500-599`. The empty string is the empty set.
 */
export function parseStatusSet(input: string): Parsed<string> {
  const hint = 'e.g. "5xx", "500-504,429" or "" for none'
  const ranges: Array<[number, number]> = []
  for (const raw of input.split(',')) {
    const item = raw.trim().toLowerCase()
    if (item === '') {
      if (input.trim() === '') break
      return fail(`empty item in status set "${input}"`, hint)
    }
    let m: RegExpMatchArray | null
    let lo: number
    let hi: number
    if ((m = item.match(/^([1-5])xx$/))) [lo, hi] = [Number(m[1]) * 100, Number(m[1]) * 100 + 99]
    else if ((m = item.match(/^(\d{3})$/))) [lo, hi] = [Number(m[1]), Number(m[1])]
    else if ((m = item.match(/^(\d{3})\s*-\s*(\d{3})$/))) [lo, hi] = [Number(m[1]), Number(m[2])]
    else return fail(`"${raw.trim()}" is not a status, range or class`, hint)
    if (lo < 100 || hi > 599) return fail(`status "${raw.trim()}" is outside 100..599`, hint)
    if (lo > hi) return fail(`status range "${raw.trim()}" is backwards`, `write it low-high, e.g. ${hi}-${lo}`)
    ranges.push([lo, hi])
  }
  ranges.sort((a, b) => a[0] - b[0])
  const merged: Array<[number, number]> = []
  for (const r of ranges) {
    const last = merged[merged.length - 1]
    if (last && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1])
    else merged.push([r[0], r[1]])
  }
  return ok(merged.map(([lo, hi]) => (lo === hi ? `${lo}` : `${lo}-${hi}`)).join(','))
}

/** The gRPC status codes by their names in Linkerd's syntax (kebab-case), in code order. */
export const GRPC_STATUS_NAMES = [
  'ok',
  'cancelled',
  'unknown',
  'invalid-argument',
  'deadline-exceeded',
  'not-found',
  'already-exists',
  'permission-denied',
  'resource-exhausted',
  'failed-precondition',
  'aborted',
  'out-of-range',
  'unimplemented',
  'internal',
  'unavailable',
  'data-loss',
  'unauthenticated',
] as const

/**
 * A gRPC status set as Linkerd writes it (`retry.linkerd.io/grpc`): comma-separated names
 * (`unavailable`, also `UNAVAILABLE` or `deadline_exceeded`) or codes (`14`). Normalized to the
 * kebab-case names in code order. The empty string is the empty set.
 */
export function parseGrpcStatusSet(input: string): Parsed<string> {
  const codes = new Set<number>()
  for (const raw of input.split(',')) {
    const item = raw.trim().toLowerCase().replaceAll('_', '-')
    if (item === '') {
      if (input.trim() === '') break
      return fail(`empty item in gRPC status set "${input}"`, 'e.g. "unavailable,internal"')
    }
    const code = /^\d+$/.test(item) ? Number(item) : (GRPC_STATUS_NAMES as readonly string[]).indexOf(item)
    if (code < 0 || code >= GRPC_STATUS_NAMES.length) {
      const guess = GRPC_STATUS_NAMES.find((n) => n.startsWith(item.slice(0, 4)))
      return fail(`"${raw.trim()}" is not a gRPC status`, `${guess ? `did you mean "${guess}"? ` : ''}valid: ${GRPC_STATUS_NAMES.join(', ')} or 0..16`)
    }
    codes.add(code)
  }
  return ok([...codes].sort((a, b) => a - b).map((c) => GRPC_STATUS_NAMES[c]).join(','))
}
