/**
 * Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`, and Linkerd's
 * `policy.linkerd.io/v1beta3` of the same shape), read into plain records with positions; the
 * translation into model routes is in `k8s-translate.ts`. What meshproxy does not implement yet
 * is refused at its position with a clear message (never silently dropped): `queryParams`
 * matches, `RegularExpression` path and header matches, `filters`, and `parentRefs` to a Service
 * (GAMMA). Linkerd's retry and timeout annotations on the route override
 * those of the Services it sends to.
 */
import type { Loc } from './diagnostics.js'
import { readLinkerdAnnotations, type LinkerdPolicy } from './linkerd.js'
import type { Backend } from './kubernetes.js'
import { normalizeHeaderName, normalizeHost, normalizeMethod, normalizePath, parseDuration, checkHeaderValue } from './values.js'
import type { PathMatchType } from './model.js'
import type { DocReader, Fields, YNode } from './yaml-walk.js'

export interface HttpRouteMatch {
  path: { type: PathMatchType; value: string }
  headers: Array<{ name: string; value: string }>
  methods: string[]
  loc: Loc
}

export interface HttpRouteRule {
  index: number
  /** Empty: every request of the route's hostnames. */
  matches: HttpRouteMatch[]
  backends: Array<{ backend: Backend; weight: number }>
  requestTimeoutMs?: number
  /** One backend request's limit: each attempt's when the route retries, else the request's. */
  backendTimeoutMs?: number
  loc: Loc
}

export interface HttpRoute {
  name: string
  namespace: string
  hostnames: string[]
  rules: HttpRouteRule[]
  linkerd: LinkerdPolicy
  loc: Loc
}

/** Reads an HTTPRoute; undefined (after reporting) when it cannot be served. */
export function readHttpRoute(r: DocReader, root: Fields, meta: Fields, name: string, namespace: string, loc: Loc): HttpRoute | undefined {
  const spec = root.fields('spec', 'HTTPRoute spec', null, true)
  if (!spec) return undefined
  const linkerd = readLinkerdAnnotations(meta.fields('annotations', 'HTTPRoute annotations', null), name, 'HTTPRoute')
  for (const parentNode of spec.list('parentRefs')) {
    const parent = r.fields(parentNode, 'HTTPRoute parentRef', null)
    const kind = parent?.str('kind') ?? 'Gateway'
    if (parent && kind === 'Service') {
      r.error(parent.valueLoc('kind'), `HTTPRoute "${name}": a Service parent (GAMMA) is not supported yet`, 'attach the route to a Gateway, or leave parentRefs out: it then serves on the first listener as an Ingress does')
      return undefined
    }
  }
  const hostnames: string[] = []
  for (const { value, node } of spec.has('hostnames') ? r.stringList(spec.get('hostnames')!, 'HTTPRoute hostnames') : []) {
    const host = r.check(node, 'HTTPRoute hostname', normalizeHost(value))
    if (host !== undefined) hostnames.push(host)
  }
  const rules: HttpRouteRule[] = []
  const ruleNodes = spec.list('rules')
  if (ruleNodes.length === 0) r.warn(spec.node, `HTTPRoute "${name}" has no rules; it routes nothing`)
  ruleNodes.forEach((ruleNode, index) => {
    const rule = r.fields(ruleNode, 'HTTPRoute rule', null)
    if (!rule) return
    if (rule.has('filters')) {
      r.error(rule.keyLoc('filters'), `HTTPRoute "${name}" rule ${index}: filters are not supported yet`, 'remove them; header changes, redirects and rewrites are planned')
      return
    }
    const matches: HttpRouteMatch[] = []
    for (const matchNode of rule.list('matches')) {
      const m = readMatch(r, matchNode, name)
      if (!m) return
      matches.push(m)
    }
    const backends: HttpRouteRule['backends'] = []
    for (const refNode of rule.list('backendRefs')) {
      const ref = r.fields(refNode, 'HTTPRoute backendRef', null)
      if (!ref) return
      const kind = ref.str('kind') ?? 'Service'
      if (kind !== 'Service') {
        r.error(ref.valueLoc('kind'), `HTTPRoute "${name}": backendRef kind ${kind} is not supported`, 'meshproxy sends to Services')
        return
      }
      const service = ref.str('name', true)
      const port = ref.int('port', 1, 65535, true)
      const weight = ref.has('weight') ? ref.int('weight', 0, 1000000) : 1
      if (service === undefined || port === undefined || weight === undefined) return
      const backend: Backend = { namespace: ref.str('namespace') ?? namespace, service, port, loc: r.loc(refNode), portLoc: ref.valueLoc('port') }
      backends.push({ backend, weight })
    }
    if (backends.length === 0) {
      r.error(rule.node, `HTTPRoute "${name}" rule ${index} has no backendRefs`, 'add backendRefs: [{ name: <service>, port: <port> }]')
      return
    }
    const timeouts = rule.fields('timeouts', 'HTTPRoute rule timeouts', null)
    const duration = (key: 'request' | 'backendRequest'): number | undefined => {
      const node = timeouts?.get(key)
      const text = node && r.text(node, `HTTPRoute timeouts.${key}`)
      return node && text !== undefined ? r.check(node, `HTTPRoute timeouts.${key}`, parseDuration(text)) : undefined
    }
    const requestTimeoutMs = duration('request')
    const backendTimeoutMs = duration('backendRequest')
    if (requestTimeoutMs !== undefined && backendTimeoutMs !== undefined && requestTimeoutMs > 0 && backendTimeoutMs > requestTimeoutMs) {
      r.error(timeouts!.valueLoc('backendRequest'), `HTTPRoute "${name}" rule ${index}: timeouts.backendRequest (${backendTimeoutMs} ms) is longer than timeouts.request (${requestTimeoutMs} ms)`, 'the Gateway API requires backendRequest <= request')
      return
    }
    rules.push({
      index,
      matches,
      backends,
      ...(requestTimeoutMs !== undefined ? { requestTimeoutMs } : {}),
      ...(backendTimeoutMs !== undefined ? { backendTimeoutMs } : {}),
      loc: r.loc(ruleNode),
    })
  })
  return { name, namespace, hostnames, rules, linkerd, loc }
}

function readMatch(r: DocReader, node: YNode, route: string): HttpRouteMatch | undefined {
  const m = r.fields(node, 'HTTPRoute match', null)
  if (!m) return undefined
  if (m.has('queryParams')) {
    r.error(m.keyLoc('queryParams'), `HTTPRoute "${route}": queryParams matches are not supported yet`, 'match on path, headers and method')
    return undefined
  }
  let path: HttpRouteMatch['path'] = { type: 'Prefix', value: '/' }
  const p = m.fields('path', 'HTTPRoute path match', null)
  if (p) {
    const type = p.str('type') ?? 'PathPrefix'
    if (type === 'RegularExpression') {
      r.error(p.valueLoc('type'), `HTTPRoute "${route}": RegularExpression path matches are not supported`, 'use Exact or PathPrefix')
      return undefined
    }
    if (type !== 'Exact' && type !== 'PathPrefix') {
      r.error(p.valueLoc('type'), `HTTPRoute "${route}": unknown path match type "${type}"`, 'valid types: Exact, PathPrefix')
      return undefined
    }
    const modelType: PathMatchType = type === 'Exact' ? 'Exact' : 'Prefix'
    const valueText = p.str('value') ?? '/'
    const value = r.check(p.has('value') ? p.valueLoc('value') : p.node, 'HTTPRoute path', normalizePath(valueText, modelType))
    if (value === undefined) return undefined
    path = { type: modelType, value }
  }
  const headers: HttpRouteMatch['headers'] = []
  for (const hNode of m.list('headers')) {
    const h = r.fields(hNode, 'HTTPRoute header match', null)
    if (!h) return undefined
    if ((h.str('type') ?? 'Exact') !== 'Exact') {
      r.error(h.valueLoc('type'), `HTTPRoute "${route}": only Exact header matches are supported`, 'use type: Exact')
      return undefined
    }
    const nameText = h.str('name', true)
    const valueText = h.str('value', true)
    if (nameText === undefined || valueText === undefined) return undefined
    const name = r.check(h.valueLoc('name'), 'HTTPRoute header name', normalizeHeaderName(nameText))
    const value = r.check(h.valueLoc('value'), 'HTTPRoute header value', checkHeaderValue(valueText))
    if (name === undefined || value === undefined) return undefined
    headers.push({ name, value })
  }
  const methodText = m.str('method')
  const method = methodText === undefined ? undefined : r.check(m.valueLoc('method'), 'HTTPRoute method', normalizeMethod(methodText))
  if (methodText !== undefined && method === undefined) return undefined
  return { path, headers, methods: method ? [method] : [], loc: r.loc(node) }
}
