/**
 * Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`, and Linkerd's
 * `policy.linkerd.io/v1beta3` of the same shape), read into plain records with positions; the
 * translation into model routes is in `k8s-translate.ts`. A route attaches to the ingress
 * listener (no `parentRefs`, or a Gateway parent) and/or, as GAMMA, to Services (`kind: Service`,
 * `group: core` or `""`): then its rules replace the routing of the traffic that reaches that
 * Service. Rules' `filters` (RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect,
 * URLRewrite) become the model route's `requestHeaders`, `responseHeaders`, `redirect` and
 * `rewrite`. What meshproxy does not implement is refused at its position with a clear message
 * (never silently dropped): `RegularExpression` matches, the RequestMirror, CORS and ExtensionRef
 * filters, and filters on a backendRef. Linkerd's retry and timeout annotations on the route override those of the
 * Services it sends to (a Gateway parent) or of its parent Service (GAMMA).
 */
import type { Loc } from './diagnostics.js'
import { readLinkerdAnnotations, type LinkerdPolicy } from './linkerd.js'
import type { Backend } from './kubernetes.js'
import { normalizeHeaderName, normalizeHost, normalizeMethod, normalizeModifiableHeaderName, normalizePath, normalizeTargetHost, parseDuration, checkHeaderValue, checkQueryText } from './values.js'
import { complete } from './fields.js'
import { HEADER_MODIFIER, REDIRECT, URL_REWRITE, isRedirectStatus, type HeaderModifierModel, type PathMatchType, type QueryParamMatchModel, type RedirectModel, type UrlRewriteModel } from './model.js'
import type { DocReader, Fields, YNode } from './yaml-walk.js'

export interface HttpRouteMatch {
  path: { type: PathMatchType; value: string }
  headers: Array<{ name: string; value: string }>
  queryParams: QueryParamMatchModel[]
  methods: string[]
  loc: Loc
}

/** A rule's filters, as the model route's fields. */
export interface HttpRouteFilters {
  requestHeaders?: HeaderModifierModel
  responseHeaders?: HeaderModifierModel
  redirect?: RedirectModel
  rewrite?: UrlRewriteModel
}

export interface HttpRouteRule {
  index: number
  /** Empty: every request of the route's hostnames. */
  matches: HttpRouteMatch[]
  backends: Array<{ backend: Backend; weight: number }>
  requestTimeoutMs?: number
  /** One backend request's limit: each attempt's when the route retries, else the request's. */
  backendTimeoutMs?: number
  filters: HttpRouteFilters
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
    const filters = readFilters(r, rule, name, index)
    if (!filters) return
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
      if (ref.list('filters').length > 0) {
        r.error(ref.keyLoc('filters'), `HTTPRoute "${name}" rule ${index}: filters on a backendRef are not supported`, 'put the filters on the rule: they then apply to every backend')
        return
      }
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
    if (filters.redirect && backends.length > 0) {
      r.error(rule.keyLoc('backendRefs'), `HTTPRoute "${name}" rule ${index} redirects, so its backendRefs would never be used`, 'a RequestRedirect answers every request itself: remove the backendRefs, or the redirect')
      return
    }
    if (backends.length === 0 && !filters.redirect) {
      r.error(rule.node, `HTTPRoute "${name}" rule ${index} has no backendRefs`, 'add backendRefs: [{ name: <service>, port: <port> }]')
      return
    }
    if (filters.rewrite?.prefix != null || filters.redirect?.prefix != null) {
      const exact = matches.find((m) => m.path.type !== 'Prefix')
      if (exact) {
        r.error(exact.loc, `HTTPRoute "${name}" rule ${index}: ReplacePrefixMatch needs PathPrefix matches, and this one is Exact`, 'use ReplaceFullPath, or match the path with type: PathPrefix')
        return
      }
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
      filters,
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
  const queryParams: QueryParamMatchModel[] = []
  for (const qNode of m.list('queryParams')) {
    const q = r.fields(qNode, 'HTTPRoute query param match', null)
    if (!q) return undefined
    if ((q.str('type') ?? 'Exact') !== 'Exact') {
      r.error(q.valueLoc('type'), `HTTPRoute "${route}": only Exact query param matches are supported`, 'use type: Exact')
      return undefined
    }
    const nameText = q.str('name', true)
    const valueText = q.str('value', true)
    if (nameText === undefined || valueText === undefined) return undefined
    const name = r.check(q.valueLoc('name'), 'HTTPRoute query param name', checkQueryText(nameText))
    const value = r.check(q.valueLoc('value'), 'HTTPRoute query param value', checkQueryText(valueText))
    if (name === undefined || value === undefined) return undefined
    if (queryParams.some((x) => x.name === name)) {
      r.error(q.valueLoc('name'), `HTTPRoute "${route}": query param "${name}" is matched twice`, 'the Gateway API allows one match per name')
      return undefined
    }
    queryParams.push({ name, value })
  }
  const methodText = m.str('method')
  const method = methodText === undefined ? undefined : r.check(m.valueLoc('method'), 'HTTPRoute method', normalizeMethod(methodText))
  if (methodText !== undefined && method === undefined) return undefined
  return { path, headers, queryParams, methods: method ? [method] : [], loc: r.loc(node) }
}

const FILTER_TYPES = ['RequestHeaderModifier', 'ResponseHeaderModifier', 'RequestRedirect', 'URLRewrite'] as const
/** Each filter type's settings key: the type with a lowercase first letter (`urlRewrite` for URLRewrite). */
const FILTER_KEYS: Record<(typeof FILTER_TYPES)[number], string> = {
  RequestHeaderModifier: 'requestHeaderModifier',
  ResponseHeaderModifier: 'responseHeaderModifier',
  RequestRedirect: 'requestRedirect',
  URLRewrite: 'urlRewrite',
}

/**
 * A rule's `filters`: each type at most once, RequestRedirect and URLRewrite not together (the
 * Gateway API's rules). Undefined (after reporting) when one cannot be served.
 */
function readFilters(r: DocReader, rule: Fields, route: string, index: number): HttpRouteFilters | undefined {
  const out: HttpRouteFilters = {}
  const seen = new Set<string>()
  const at = `HTTPRoute "${route}" rule ${index}`
  for (const node of rule.list('filters')) {
    const f = r.fields(node, 'HTTPRoute filter', null)
    if (!f) return undefined
    const type = f.str('type', true)
    if (type === undefined) return undefined
    if (!(FILTER_TYPES as readonly string[]).includes(type)) {
      const known = ['RequestMirror', 'CORS', 'ExtensionRef', 'ExternalAuth'].includes(type)
      r.error(f.valueLoc('type'), `${at}: ${known ? `the ${type} filter is not supported` : `unknown filter type "${type}"`}`, `supported filters: ${FILTER_TYPES.join(', ')}`)
      return undefined
    }
    if (seen.has(type)) {
      r.error(f.valueLoc('type'), `${at}: filter ${type} is given twice`, 'the Gateway API allows each filter type once per rule')
      return undefined
    }
    seen.add(type)
    const key = FILTER_KEYS[type as (typeof FILTER_TYPES)[number]]
    const settings = f.fields(key, `${type} filter`, null, true)
    if (!settings) return undefined
    if (type === 'RequestHeaderModifier' || type === 'ResponseHeaderModifier') {
      const edit = readHeaderModifier(r, settings, at)
      if (!edit) return undefined
      if (type === 'RequestHeaderModifier') out.requestHeaders = edit
      else out.responseHeaders = edit
    } else if (type === 'RequestRedirect') {
      const redirect = readRedirect(r, settings, at)
      if (!redirect) return undefined
      out.redirect = redirect
    } else {
      const rewrite = readRewrite(r, settings, at)
      if (!rewrite) return undefined
      out.rewrite = rewrite
    }
  }
  if (out.redirect && out.rewrite) {
    r.error(rule.keyLoc('filters'), `${at} has both RequestRedirect and URLRewrite`, 'the Gateway API allows one of them per rule: a redirected request is never sent upstream')
    return undefined
  }
  return out
}

function readHeaderModifier(r: DocReader, f: Fields, at: string): HeaderModifierModel | undefined {
  const out = complete(HEADER_MODIFIER, {})
  const name = (node: YNode | Loc, text: string, list: readonly string[]): string | undefined => {
    const n = r.check(node, 'header name', normalizeModifiableHeaderName(text))
    if (n !== undefined && list.includes(n)) {
      r.error(node, `${at}: header "${n}" is listed twice`, 'header names are case-insensitive; list each once')
      return undefined
    }
    return n
  }
  for (const list of ['set', 'add'] as const) {
    for (const node of f.list(list)) {
      const h = r.fields(node, `header ${list}`, ['name', 'value'])
      const nameText = h?.str('name', true)
      const valueText = h?.str('value', true)
      if (!h || nameText === undefined || valueText === undefined) return undefined
      const n = name(h.valueLoc('name'), nameText, out[list].map((x) => x.name))
      const value = r.check(h.valueLoc('value'), 'header value', checkHeaderValue(valueText))
      if (n === undefined || value === undefined) return undefined
      out[list].push({ name: n, value })
    }
  }
  const removeNode = f.get('remove')
  for (const { value, node } of removeNode ? r.stringList(removeNode, 'header remove') : []) {
    const n = name(node, value, out.remove)
    if (n === undefined) return undefined
    out.remove.push(n)
  }
  return out
}

/** `path: { type: ReplaceFullPath, replaceFullPath } | { type: ReplacePrefixMatch, replacePrefixMatch }`. */
function readPathModifier(r: DocReader, f: Fields, at: string): { path: string | null; prefix: string | null } | undefined {
  const p = f.fields('path', 'path modifier', null)
  if (!p) return f.has('path') ? undefined : { path: null, prefix: null }
  const type = p.str('type', true)
  if (type !== 'ReplaceFullPath' && type !== 'ReplacePrefixMatch') {
    if (type !== undefined) r.error(p.valueLoc('type'), `${at}: unknown path modifier type "${type}"`, 'valid types: ReplaceFullPath, ReplacePrefixMatch')
    return undefined
  }
  const key = type === 'ReplaceFullPath' ? 'replaceFullPath' : 'replacePrefixMatch'
  const text = p.str(key, true)
  const value = text === undefined ? undefined : r.check(p.valueLoc(key), `${at} ${key}`, normalizePath(text, 'Exact'))
  if (value === undefined) return undefined
  return type === 'ReplaceFullPath' ? { path: value, prefix: null } : { path: null, prefix: value }
}

function readRewrite(r: DocReader, f: Fields, at: string): UrlRewriteModel | undefined {
  const host = readHost(r, f, at)
  const path = readPathModifier(r, f, at)
  if (host === undefined || !path) return undefined
  return complete(URL_REWRITE, { host, ...path })
}

function readRedirect(r: DocReader, f: Fields, at: string): RedirectModel | undefined {
  const host = readHost(r, f, at)
  const path = readPathModifier(r, f, at)
  const scheme = f.str('scheme')
  if (scheme !== undefined && scheme !== 'http' && scheme !== 'https') {
    r.error(f.valueLoc('scheme'), `${at}: redirect scheme "${scheme}" is neither http nor https`, 'valid schemes: http, https')
    return undefined
  }
  const port = f.has('port') ? f.int('port', 1, 65535) : 0
  const statusCode = f.has('statusCode') ? f.int('statusCode', 301, 308) : 302
  if (statusCode !== undefined && !isRedirectStatus(statusCode)) {
    r.error(f.valueLoc('statusCode'), `${at}: redirect status ${statusCode} is not a redirect status`, 'valid statuses: 301, 302, 303, 307, 308')
    return undefined
  }
  if (host === undefined || !path || port === undefined || statusCode === undefined) return undefined
  return complete(REDIRECT, { scheme: scheme ?? null, host, port, statusCode, ...path })
}

/** `hostname`: null when absent, undefined (after reporting) when invalid. */
function readHost(r: DocReader, f: Fields, at: string): string | null | undefined {
  const text = f.str('hostname')
  if (text === undefined) return f.has('hostname') ? undefined : null
  return r.check(f.valueLoc('hostname'), `${at} hostname`, normalizeTargetHost(text))
}
