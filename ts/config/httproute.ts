/**
 * Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`, and Linkerd's
 * `policy.linkerd.io/v1beta3` of the same shape), read into plain records with positions; the
 * translation into model routes is in `k8s-translate.ts`. A route attaches to the ingress
 * listener (no `parentRefs`, or a Gateway parent) and/or, as GAMMA, to Services (`kind: Service`,
 * `group: core` or `""`): then its rules replace the routing of the traffic that reaches that
 * Service. What meshproxy does not implement yet is refused at its position with a clear message
 * (never silently dropped): `queryParams` matches, `RegularExpression` path and header matches,
 * and `filters`. Linkerd's retry and timeout annotations on the route override those of the
 * Services it sends to (a Gateway parent) or of its parent Service (GAMMA).
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

/** A Service the route is attached to as GAMMA (`parentRefs[]` of kind Service). */
export interface ServiceParent {
  namespace: string
  name: string
  /** `port`: only that Service port; neither it nor `portName` = every port of the Service. */
  port?: number
  /** `sectionName`: only the Service port of that name. */
  portName?: string
  loc: Loc
  /** Position of `port` or `sectionName` (else of the parentRef), for a port the Service lacks. */
  portLoc: Loc
}

export interface HttpRoute {
  name: string
  namespace: string
  /** Served on the ingress listener: no `parentRefs`, or a parent other than a Service. */
  ingress: boolean
  /** GAMMA parents: the Services whose traffic the rules route. */
  services: ServiceParent[]
  /** Served on the ingress listener only; GAMMA ignores them (GEP-1426). */
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
  const parents = readParents(r, spec, name, namespace)
  if (!parents) return undefined
  const hostnames: string[] = []
  for (const { value, node } of spec.has('hostnames') ? r.stringList(spec.get('hostnames')!, 'HTTPRoute hostnames') : []) {
    const host = r.check(node, 'HTTPRoute hostname', normalizeHost(value))
    if (host !== undefined) hostnames.push(host)
  }
  if (!parents.ingress && hostnames.length > 0) {
    r.warn(spec.keyLoc('hostnames'), `HTTPRoute "${name}": hostnames are ignored for a Service parent`, 'GAMMA routes match every request to the Service (GEP-1426); to match a host, add a header match on "host"')
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
  return { name, namespace, ...parents, hostnames, rules, linkerd, loc }
}

/**
 * The route's parents. A parentRef of kind Service in the core group (`group: core`, Linkerd's
 * spelling, or `""`, the Gateway API's) is a GAMMA parent; since a parentRef's group defaults to
 * gateway.networking.k8s.io, `kind: Service` with another or no group names no real resource and
 * is refused. Any other parent (a Gateway) and no parentRefs at all serve the route on the ingress
 * listener. A Service in another namespace than the route's (a consumer route) applies only to
 * clients in the route's namespace (GEP-1426), which meshproxy cannot tell apart; it is skipped
 * with a warning. Undefined (after reporting) when a parentRef is invalid.
 */
function readParents(r: DocReader, spec: Fields, route: string, namespace: string): Pick<HttpRoute, 'ingress' | 'services'> | undefined {
  const nodes = spec.list('parentRefs')
  const out: Pick<HttpRoute, 'ingress' | 'services'> = { ingress: nodes.length === 0, services: [] }
  for (const node of nodes) {
    const parent = r.fields(node, 'HTTPRoute parentRef', null)
    if (!parent) return undefined
    const kind = parent.str('kind') ?? 'Gateway'
    if (kind !== 'Service') {
      out.ingress = true
      continue
    }
    const group = parent.has('group') ? parent.str('group') : undefined
    if (group !== '' && group !== 'core') {
      const at = parent.has('group') ? parent.valueLoc('group') : parent.valueLoc('kind')
      const written = group === undefined ? 'no group (gateway.networking.k8s.io by default)' : `group "${group}"`
      r.error(at, `HTTPRoute "${route}": parentRef kind Service with ${written} names no Service`, 'a Service is in the core group: add group: core (or group: "")')
      return undefined
    }
    const name = parent.str('name', true)
    if (name === undefined) return undefined
    const port = parent.has('port') ? parent.int('port', 1, 65535) : undefined
    if (parent.has('port') && port === undefined) return undefined
    const portName = parent.str('sectionName')
    const serviceNamespace = parent.str('namespace') ?? namespace
    if (serviceNamespace !== namespace) {
      r.warn(
        parent.valueLoc('namespace'),
        `HTTPRoute "${route}" in namespace "${namespace}" is a consumer route of Service "${serviceNamespace}/${name}", which applies only to clients in namespace "${namespace}"; meshproxy cannot tell its clients' namespaces apart, so it is skipped`,
        `to route every client's requests, put the route in namespace "${serviceNamespace}" (a producer route)`,
      )
      continue
    }
    const portLoc = parent.has('port') ? parent.valueLoc('port') : parent.has('sectionName') ? parent.valueLoc('sectionName') : r.loc(node)
    out.services.push({
      namespace: serviceNamespace,
      name,
      ...(port !== undefined ? { port } : {}),
      ...(portName !== undefined ? { portName } : {}),
      loc: r.loc(node),
      portLoc,
    })
  }
  return out
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
