/**
 * Kubernetes resources → model routes and services. Each Ingress backend (Service S, port P)
 * becomes one model service named `S:P`, with its endpoints resolved the way kube-proxy would:
 * Service port → targetPort → EndpointSlice port → ready addresses, and its protocol taken from
 * the Service port's `appProtocol`.
 *
 * GAMMA: an HTTPRoute whose parent is a Service replaces the routing of the traffic that reaches
 * that Service's frontend — an Ingress backend, or its names on an outbound listener (mesh
 * addressing). The table is flat, so the two levels (the Ingress path or mesh route, then the
 * Service's rules) are composed into one route per rule match (`compose`); what the composition
 * cannot keep exact is reported (`checkComposedPrecedence`). backendRefs name a Service's backend
 * (its endpoints), so a rule sending to its own parent Service reaches that Service's endpoints.
 */
import type { EndpointModel, ListenerModel, PathMatchType, RouteModel, ServiceModel, UpstreamProtocol } from './model.js'
import type { DiagnosticSink, Loc, Origins } from './diagnostics.js'
import { DEFAULT_UPSTREAM_PROTOCOL, makeRoute, makeService } from './defaults.js'
import type { HttpRoute, HttpRouteRule, ServiceParent } from './httproute.js'
import type { Backend, K8sResources, Service, ServicePort } from './kubernetes.js'
import type { LinkerdPolicy } from './linkerd.js'
import { parseAddress } from './values.js'

/** One match of a GAMMA route's rule, translated as a route for every host and every path. */
interface GammaRoute {
  route: RouteModel
  /** `<HTTPRoute>-<rule>-<match>`. */
  name: string
  httpRoute: HttpRoute
  loc: Loc
}

/** How a route in the model was composed from an outer route and a GAMMA route's match. */
export interface Composed {
  /** The Ingress path's or mesh route's own route, which the composed routes replace. */
  outer: RouteModel
  /** Describes the outer route in messages, e.g. `Ingress "web" path /api` or `mesh route "mesh-s-80"`. */
  outerLabel: string
  /** `Service "ns/name" port P`, for messages. */
  parentLabel: string
  gamma: GammaRoute
}

/** The routes composed so far, by model route. */
export type CompositionInfo = WeakMap<RouteModel, Composed>

export interface K8sTranslation {
  routes: RouteModel[]
  /** Catch-all routes from `spec.defaultBackend`, kept apart so they go after every other route. */
  defaultRoutes: RouteModel[]
  services: ServiceModel[]
  /** The Kubernetes Service (name, namespace, port) each service was built from, for mesh addressing. */
  origins: Map<string, { name: string; namespace: string; port: number | string }>
  /**
   * The routes for the traffic that reaches a service's frontend: `outer` itself, or, when a GAMMA
   * route is attached to the Kubernetes Service port it was built from, `outer` composed with that
   * route's rules. For mesh routes (`load.ts`).
   */
  expand: (outer: RouteModel, outerLabel: string) => RouteModel[]
  composed: CompositionInfo
}

/**
 * `appProtocol` values understood, with Kubernetes' standard names: `kubernetes.io/h2c` is HTTP/2
 * over cleartext with prior knowledge, and gRPC needs HTTP/2 end to end. WebSocket upgrades are
 * HTTP/1.1 requests.
 */
const APP_PROTOCOLS: Record<string, UpstreamProtocol> = {
  'kubernetes.io/h2c': 'http2',
  grpc: 'http2',
  http: 'http1',
  'kubernetes.io/ws': 'http1',
}

/**
 * `everyService`: every Service port becomes a service (for mesh addressing on an outbound
 * listener), not only those an Ingress names.
 */
export function translateK8s(res: K8sResources, sink: DiagnosticSink, origins: Origins, everyService = false): K8sTranslation {
  const composed: CompositionInfo = new WeakMap()
  const out: K8sTranslation = { routes: [], defaultRoutes: [], services: [], origins: new Map(), expand: (r) => [r], composed }
  const byBackend = new Map<string, string>()
  /** The Kubernetes Service port each model service was built from (when it resolved). */
  const portOf = new Map<string, { service: Service; port: ServicePort }>()
  const namespaceOf = new Map<string, string>()
  const usedPorts = new Set<ServicePort>()
  const warnedProtocols = new Set<ServicePort>()
  const policies = new Map<string, LinkerdPolicy>()

  /** The protocol for a Service port; an unknown appProtocol is reported once per port. */
  const protocolOf = (service: Service, port: ServicePort | undefined): UpstreamProtocol => {
    const app = port?.appProtocol
    if (!port || !app) return DEFAULT_UPSTREAM_PROTOCOL
    const known = APP_PROTOCOLS[app.value]
    if (known !== undefined) return known
    if (!warnedProtocols.has(port)) {
      warnedProtocols.add(port)
      sink.warn(
        app.loc,
        `Service "${service.name}" port ${describePort(port)}: appProtocol "${app.value}" is not known; using ${DEFAULT_UPSTREAM_PROTOCOL}`,
        `known values: ${Object.keys(APP_PROTOCOLS).join(', ')}`,
      )
    }
    return DEFAULT_UPSTREAM_PROTOCOL
  }

  const serviceFor = (b: Backend): string => {
    const name = `${b.service}:${b.port}`
    const key = `${b.namespace}/${name}`
    const known = byBackend.get(key)
    if (known !== undefined) return known
    byBackend.set(key, name)
    const otherNamespace = namespaceOf.get(name)
    if (otherNamespace !== undefined) {
      // Model service names carry no namespace, so the two would silently merge.
      sink.error(b.loc, `backend ${name} in namespace "${b.namespace}" has the same name as ${name} in namespace "${otherNamespace}"`, 'meshproxy names services without their namespace; rename one of the Services')
      return name
    }
    namespaceOf.set(name, b.namespace)
    const resolved = resolveEndpoints(res, b, sink, usedPorts)
    const protocol = resolved.service ? protocolOf(resolved.service, resolved.port) : DEFAULT_UPSTREAM_PROTOCOL
    const service = makeService(name, resolved.endpoints, undefined, protocol)
    const linkerd = resolved.service?.linkerd
    if (linkerd?.failureAccrual) service.failureAccrual = { ...linkerd.failureAccrual }
    if (linkerd) policies.set(name, linkerd)
    const identity = resolved.service?.identity
    if (identity) {
      service.identity = identity.value
      origins.set(service, 'identity', identity.loc)
    }
    if (resolved.service && resolved.port) portOf.set(name, { service: resolved.service, port: resolved.port })
    origins.set(service, '', b.loc)
    out.services.push(service)
    out.origins.set(name, { name: b.service, namespace: b.namespace, port: resolved.port?.port ?? b.port })
    return name
  }

  /** Route `route` to `name`, with the retries and timeouts its Service's annotations ask for. */
  const withPolicy = (route: RouteModel): RouteModel => {
    const linkerd = policies.get(route.service)
    if (!linkerd) return route
    applyLinkerd(route, linkerd)
    if (linkerd.responseTimeoutMs !== undefined) applyBackendTimeout(route, linkerd.responseTimeoutMs)
    return route
  }

  /**
   * The model routes of one HTTPRoute rule: one per match (none: one catch-all). `policy` gives
   * the retries and timeouts when the route's own annotations do not: the first backend's
   * Service's for an ingress route, the parent Service's for GAMMA (Linkerd's rule).
   */
  const ruleRoutes = (hr: HttpRoute, rule: HttpRouteRule, hosts: string[], policy: (route: RouteModel) => LinkerdPolicy | undefined): Array<{ route: RouteModel; loc: Loc; matchIndex: number }> => {
    const names = rule.backends.map((b) => serviceFor(b.backend))
    const split = rule.backends.length > 1 || rule.backends.some((b) => b.weight !== 1)
    const matches = rule.matches.length > 0 ? rule.matches : [undefined]
    return matches.map((m, mi) => {
      const route = makeRoute(`${hr.name}-${rule.index}-${mi}`, names[0] ?? '')
      const base = policy(route)
      route.hosts = [...hosts]
      if (m) {
        route.path = { ...m.path }
        route.headers = m.headers.map((h) => ({ ...h }))
        route.queryParams = m.queryParams.map((q) => ({ ...q }))
        route.methods = [...m.methods]
      }
      const { requestHeaders, responseHeaders, redirect, rewrite } = rule.filters
      if (requestHeaders) route.requestHeaders = structuredClone(requestHeaders)
      if (responseHeaders) route.responseHeaders = structuredClone(responseHeaders)
      if (rewrite) route.rewrite = { ...rewrite }
      if (redirect) route.redirect = { ...redirect }
      if (split) {
        route.backends = names.map((service, i) => ({ service, weight: rule.backends[i]?.weight ?? 1 }))
        route.backends.forEach((b, i) => {
          const at = rule.backends[i]?.backend.loc ?? rule.loc
          origins.set(b, '', at)
          origins.set(b, 'service', at)
        })
      }
      if (base) applyLinkerd(route, base)
      applyLinkerd(route, hr.linkerd)
      // A redirect is answered here: nothing is sent, so nothing is retried.
      if (redirect) route.retry = null
      if (rule.requestTimeoutMs !== undefined) route.responseHeaderTimeoutMs = rule.requestTimeoutMs
      // timeouts.backendRequest is Linkerd's timeout.linkerd.io/response, and overrides it.
      const backendMs = rule.backendTimeoutMs ?? hr.linkerd.responseTimeoutMs ?? base?.responseTimeoutMs
      if (backendMs !== undefined) applyBackendTimeout(route, backendMs)
      const loc = m?.loc ?? rule.loc
      origins.set(route, '', loc)
      origins.set(route, 'service', rule.backends[0]?.backend.loc ?? rule.loc)
      origins.set(route, 'backends', rule.loc)
      return { route, loc, matchIndex: mi }
    })
  }

  // GAMMA attachments: each Service port → the routes attached to it, in file order (a parent
  // without a port attaches to every port of the Service).
  const attached = new Map<ServicePort, Array<{ hr: HttpRoute; parent: ServiceParent }>>()
  const used = new Set<ServiceParent>()
  for (const hr of res.httpRoutes) {
    for (const parent of hr.services) {
      const service = res.services.find((s) => s.name === parent.name && s.namespace === parent.namespace)
      if (!service) {
        sink.warn(parent.loc, `HTTPRoute "${hr.name}" is attached to Service "${parent.namespace}/${parent.name}", which is not in this file; it routes nothing for it`, `add Service "${parent.name}" to the file, or fix the parentRef's name and namespace`)
        used.add(parent)
        continue
      }
      const ports = service.ports.filter((p) => (parent.port === undefined || p.port === parent.port) && (parent.portName === undefined || p.name === parent.portName))
      if (ports.length === 0) {
        const wanted = [parent.port !== undefined ? `port ${parent.port}` : '', parent.portName !== undefined ? `a port named "${parent.portName}"` : ''].filter(Boolean).join(' and ')
        const hint = service.ports.length > 0 ? `ports of Service "${service.name}": ${service.ports.map(describePort).join(', ')}` : `Service "${service.name}" has no TCP ports`
        sink.error(parent.portLoc, `HTTPRoute "${hr.name}": Service "${service.name}" has no ${wanted}`, hint)
        used.add(parent)
        continue
      }
      for (const port of ports) {
        const list = attached.get(port) ?? []
        list.push({ hr, parent })
        attached.set(port, list)
      }
    }
  }

  /** The GAMMA routes of a Service port, in the table's precedence order; built once, on first use. */
  const gammaCache = new Map<ServicePort, GammaRoute[]>()
  /** Services built for GAMMA rules' backends (dropped again when no composed route sends to them). */
  const gammaBackends = new Set<ServiceModel>()
  const gammaOf = (service: Service, port: ServicePort): GammaRoute[] | undefined => {
    const attachments = attached.get(port)
    if (!attachments) return undefined
    const known = gammaCache.get(port)
    if (known) return known
    const parentPolicy = (): LinkerdPolicy => service.linkerd
    const list: GammaRoute[] = []
    const before = out.services.length
    for (const { hr, parent } of attachments) {
      used.add(parent)
      for (const rule of hr.rules) {
        for (const { route, loc, matchIndex } of ruleRoutes(hr, rule, [], parentPolicy)) {
          list.push({ route, name: `${hr.name}-${rule.index}-${matchIndex}`, httpRoute: hr, loc })
        }
      }
    }
    // Several routes on one Service merge (Gateway API): their rules compete by the table's
    // precedence, ties in file order.
    const ordered = list.map((g, i) => ({ g, key: [...precedence(g.route), i] })).sort((a, b) => compareKeys(a.key, b.key)).map((x) => x.g)
    for (const built of out.services.slice(before)) gammaBackends.add(built)
    gammaCache.set(port, ordered)
    return ordered
  }

  /** Hosts and path of each composed route, by GAMMA match: two outer routes may compose the same route. */
  const emitted = new Map<GammaRoute, Set<string>>()
  /**
   * `outer` composed with `gamma`, the GAMMA routes of the Service port it sends to. A composed
   * route equal to one composed before (another Ingress path of the same host to the same
   * Service, whose path the match narrows to the same) is left out: it would route the same.
   */
  const composeFor = (outer: RouteModel, outerLabel: string, front: { service: Service; port: ServicePort }, gamma: GammaRoute[]): RouteModel[] => {
    const parentLabel = `Service "${front.service.namespace}/${front.service.name}" port ${describePort(front.port)}`
    const routes = compose(
      outer,
      gamma,
      (route, g) => {
        composed.set(route, { outer, outerLabel, parentLabel, gamma: g })
        origins.set(route, '', g.loc)
        origins.set(route, 'service', origins.get(g.route, 'service') ?? g.loc)
        origins.set(route, 'backends', origins.get(g.route, 'backends') ?? g.loc)
        route.backends.forEach((b, i) => {
          const from = g.route.backends[i]
          const at = from && origins.get(from)
          if (at) origins.set(b, '', at)
        })
      },
      (lost, over) => {
        sink.warn(
          over.loc,
          `HTTPRoute "${over.httpRoute.name}": under ${outerLabel}, requests matching both ${lost.name} and ${over.name} go to ${over.name} (its method, header or query matches rank higher), though ${lost.name} takes precedence (its path is longer or Exact)`,
          `${parentLabel}'s rules and the path of ${outerLabel} share one routing table; give ${lost.name} the header and method matches of ${over.name} as well to keep its precedence`,
        )
      },
    )
    return routes.filter((route) => {
      const g = composed.get(route)!.gamma
      const key = JSON.stringify([[...route.hosts].sort(), route.path])
      const seen = emitted.get(g) ?? new Set<string>()
      emitted.set(g, seen)
      if (seen.has(key)) return false
      seen.add(key)
      return true
    })
  }

  // Mesh routes: the service was built from a Service port; its GAMMA routes, if any, replace it.
  out.expand = (outer, outerLabel) => {
    const front = portOf.get(outer.service)
    const gamma = front && gammaOf(front.service, front.port)
    return front && gamma ? composeFor(outer, outerLabel, front, gamma) : [outer]
  }

  /**
   * The routes of an Ingress path or defaultBackend sending to `b`: to the service built from it,
   * or, when a GAMMA route is attached to that Service port, that route's rules composed with the
   * path (then the Service itself is no model service unless a rule sends to it).
   */
  const ingressRoutes = (name: string, b: Backend, hosts: string[], path: PathMatch, at: Loc, outerLabel: string): RouteModel[] => {
    const service = res.services.find((s) => s.name === b.service && s.namespace === b.namespace)
    const port = service?.ports.find((p) => (typeof b.port === 'number' ? p.port === b.port : p.name === b.port))
    const gamma = service && port && gammaOf(service, port)
    const route = makeRoute(name, service && port && gamma ? `${b.service}:${b.port}` : serviceFor(b))
    route.hosts = [...hosts]
    route.path = { ...path }
    origins.set(route, '', at)
    origins.set(route, 'service', b.loc)
    if (!service || !port || !gamma) return [withPolicy(route)]
    usedPorts.add(port)
    return composeFor(route, outerLabel, { service, port }, gamma)
  }

  for (const ingress of res.ingresses) {
    for (const p of ingress.paths) {
      const label = `Ingress "${ingress.name}" path ${p.host ?? ''}${p.path}`
      out.routes.push(...ingressRoutes(`${ingress.name}-${p.ruleIndex}-${p.pathIndex}`, p.backend, p.host !== undefined ? [p.host] : [], { type: p.pathType, value: p.path }, p.loc, label))
    }
    const backend = ingress.defaultBackend
    if (backend) {
      const first = out.defaultRoutes[0]
      if (first) {
        sink.warn(backend.loc, `defaultBackend of Ingress "${ingress.name}" is shadowed by an earlier defaultBackend (route "${first.name}")`, 'keep one defaultBackend per file')
      }
      out.defaultRoutes.push(...ingressRoutes(`${ingress.name}-default`, backend, [], { type: 'Prefix', value: '/' }, backend.loc, `the defaultBackend of Ingress "${ingress.name}"`))
    }
  }

  // HTTPRoutes on the ingress listener: one route per match of each rule (a rule without
  // matches: one catch-all), after the Ingress rules; the routing table orders them by
  // specificity. Their own Linkerd annotations override those of the Services they send to.
  // Their backendRefs name Services' backends (endpoints), so a GAMMA route on a Service they
  // send to does not apply to them (GEP-1426: only the first level of routes applies).
  for (const hr of res.httpRoutes) {
    if (!hr.ingress) continue
    for (const rule of hr.rules) out.routes.push(...ruleRoutes(hr, rule, hr.hostnames, (route) => policies.get(route.service)).map((x) => x.route))
  }

  // On an outbound listener every Service port is reachable by name, so every attached GAMMA
  // route is built (its backends become services before mesh routes are made).
  if (everyService) {
    for (const service of res.services) for (const port of service.ports) gammaOf(service, port)
  }
  for (const hr of res.httpRoutes) {
    for (const parent of hr.services) {
      if (used.has(parent)) continue
      sink.warn(parent.loc, `HTTPRoute "${hr.name}" is attached to Service "${parent.name}", but no Ingress sends to it and no listener has mode: outbound; it routes nothing`, 'send an Ingress backend to the Service, or add a listener with mode: outbound (mesh addressing)')
    }
  }

  for (const service of res.services) {
    for (const port of service.ports) {
      if (everyService && !usedPorts.has(port)) {
        serviceFor({ namespace: service.namespace, service: service.name, port: port.port, loc: port.loc, portLoc: port.loc })
      }
      if (usedPorts.has(port)) continue
      const named = port.name ? ` ("${port.name}")` : ''
      sink.warn(port.loc, `Service port ${service.name}:${port.port}${named} is not used by any Ingress backend`)
    }
  }
  // A GAMMA rule that no Ingress path overlaps composes no route; services only it sent to are
  // not kept (on an outbound listener every service has its own mesh route, so all are kept).
  if (!everyService) {
    const sentTo = new Set([...out.routes, ...out.defaultRoutes].flatMap((r) => [r.service, ...r.backends.map((b) => b.service)]))
    const keep = out.services.filter((s) => !gammaBackends.has(s) || sentTo.has(s.name))
    out.services.splice(0, out.services.length, ...keep)
  }
  for (const slice of res.slices) {
    if (!res.services.some((s) => s.name === slice.service && s.namespace === slice.namespace)) {
      sink.warn(slice.loc, `EndpointSlice "${slice.name}" belongs to Service "${slice.service}", which is not in this file; skipped`)
    }
  }
  return out
}

/**
 * Reports where the flat table cannot give a listener's composed routes the two-level meaning
 * (first the outer route — an Ingress path, a mesh route — by the table's precedence, then the
 * GAMMA rules of its Service):
 * - a route that outranks the outer route but not a composed route loses the requests matching
 *   both to the composed one;
 * - a request the outer route takes but no GAMMA rule matches is rejected (404 `no-route`) only
 *   when no other route of the listener catches it, since the table falls through to the next
 *   candidate.
 */
export function checkComposedPrecedence(listener: ListenerModel, info: CompositionInfo, sink: DiagnosticSink): void {
  const routes = listener.routes
  const outers = new Map<RouteModel, { index: number; parts: Array<{ route: RouteModel; index: number; c: Composed }> }>()
  routes.forEach((route, index) => {
    const c = info.get(route)
    if (!c) return
    const known = outers.get(c.outer)
    if (known) known.parts.push({ route, index, c })
    else outers.set(c.outer, { index, parts: [{ route, index, c }] })
  })
  const keyOf = (r: RouteModel, index: number): number[] => [...precedence(r), index]
  for (const [outer, { index, parts }] of outers) {
    const outerKey = keyOf(outer, index)
    const first = parts[0]!.c
    let fallsTo: RouteModel | undefined
    routes.forEach((x, xi) => {
      const xc = info.get(x)
      // A route composed from the same GAMMA match routes as the outer route's would.
      if (xc?.outer === outer || (xc && parts.some((p) => p.c.gamma === xc.gamma))) return
      const xOuterKey = xc ? keyOf(xc.outer, outers.get(xc.outer)!.index) : keyOf(x, xi)
      const overlaps = intersectPaths(outer.path, x.path) !== undefined
      if (sameGroup(outer.hosts, x.hosts)) {
        if (compareKeys(xOuterKey, outerKey) < 0) {
          for (const part of parts) {
            if (compareKeys(keyOf(part.route, part.index), keyOf(x, xi)) >= 0) continue
            if (!intersectPaths(part.route.path, x.path) || !matchersCompatible(part.route, x)) continue
            const g = part.c.gamma
            sink.warn(
              g.loc,
              `${part.c.outerLabel} sends to ${part.c.parentLabel}, whose HTTPRoute "${g.httpRoute.name}" match ${g.name} is more specific than route "${x.name}": requests matching both go to "${part.route.name}", though "${x.name}" outranks ${part.c.outerLabel}`,
              `meshproxy composes the two levels into one routing table; give route "${x.name}" a path that does not overlap ${part.c.outerLabel}, or narrow the match`,
            )
          }
        } else if (overlaps && fallsTo === undefined) fallsTo = x
      } else if (overlaps && fallsTo === undefined && isFallback(outer.hosts, x.hosts)) fallsTo = x
    })
    const catchAll = parts.some(({ route }) => route.path.type === outer.path.type && route.path.value === outer.path.value && route.methods.length + route.headers.length + route.queryParams.length === 0)
    if (!catchAll && fallsTo) {
      sink.warn(
        first.gamma.httpRoute.loc,
        `requests through ${first.outerLabel} to ${first.parentLabel} that match no rule of its HTTPRoutes go to route "${fallsTo.name}" instead of being rejected (404)`,
        `give HTTPRoute "${first.gamma.httpRoute.name}" a rule without matches to decide where they go, or keep route "${fallsTo.name}" from overlapping`,
      )
    }
  }
}

/** Whether two routes' hosts put them in one candidate group of the table. */
function sameGroup(a: string[], b: string[]): boolean {
  return (a.length === 0 && b.length === 0) || a.some((h) => b.includes(h))
}

/** Whether the table tries `fallback`'s hosts after finding nothing for a route with `hosts`. */
function isFallback(hosts: string[], fallback: string[]): boolean {
  if (hosts.length === 0) return false
  if (fallback.length === 0) return true
  return hosts.some((h) => !h.startsWith('*.') && h.includes('.') && fallback.includes(`*.${h.slice(h.indexOf('.') + 1)}`))
}

/** Whether Prefix `prefix` matches `path` (on `/` segment boundaries; both normalized). */
function covers(prefix: string, path: string): boolean {
  return prefix === '/' || path === prefix || path.startsWith(`${prefix}/`)
}

type PathMatch = { type: PathMatchType; value: string }

/** The paths both `a` and `b` match, as one path match; undefined when they share none. */
function intersectPaths(a: PathMatch, b: PathMatch): PathMatch | undefined {
  if (a.type === 'Exact' && b.type === 'Exact') return a.value === b.value ? { ...a } : undefined
  if (a.type === 'Exact') return covers(b.value, a.value) ? { ...a } : undefined
  if (b.type === 'Exact') return covers(a.value, b.value) ? { ...b } : undefined
  if (covers(a.value, b.value)) return { ...b }
  if (covers(b.value, a.value)) return { ...a }
  return undefined
}

/** The retries, request timeout and idle timeout Linkerd's annotations ask of `route`. */
function applyLinkerd(route: RouteModel, linkerd: LinkerdPolicy): void {
  if (linkerd.retry) route.retry = { ...linkerd.retry }
  if (linkerd.requestTimeoutMs !== undefined) route.responseHeaderTimeoutMs = linkerd.requestTimeoutMs
  if (linkerd.idleTimeoutMs !== undefined) route.idleTimeoutMs = linkerd.idleTimeoutMs
}

/**
 * A limit on each request to a backend (HTTPRoute `timeouts.backendRequest`, Linkerd's
 * `timeout.linkerd.io/response`): each attempt's when the route retries, else the one attempt's,
 * where it is tighter than the route's timeout. 0 = none.
 */
function applyBackendTimeout(route: RouteModel, ms: number): void {
  if (ms <= 0) return
  if (route.retry) route.retry.timeoutMs = ms
  else if (route.responseHeaderTimeoutMs === 0 || ms < route.responseHeaderTimeoutMs) route.responseHeaderTimeoutMs = ms
}

/**
 * The routing table's order within a host group (crates/meshproxy-route): Exact before Prefix,
 * more path segments first, then the matchers (`matcherKey`); smaller sorts first. File order
 * breaks ties.
 */
function precedence(r: RouteModel): number[] {
  const segments = r.path.value.split('/').filter((s) => s !== '').length
  return [r.path.type === 'Exact' ? 0 : 1, -segments, ...matcherKey(r)]
}

/** Among routes of one path: a method match first, then more header (and cookie) matches, then more query matches. */
function matcherKey(r: RouteModel): number[] {
  return [r.methods.length > 0 ? 0 : 1, -(r.headers.length + r.cookies.length), -r.queryParams.length]
}

function compareKeys(a: number[], b: number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0)
    if (d !== 0) return d
  }
  return 0
}

/** Every request `b`'s methods, headers and query parameters accept, `a`'s accept too. */
function matchersCover(a: RouteModel, b: RouteModel): boolean {
  const methods = a.methods.length === 0 || (b.methods.length > 0 && b.methods.every((m) => a.methods.includes(m)))
  const pairs = (want: Array<{ name: string; value: string }>, have: Array<{ name: string; value: string }>) =>
    want.every((h) => have.some((x) => x.name === h.name && x.value === h.value))
  return methods && pairs(a.headers, b.headers) && pairs(a.queryParams, b.queryParams)
}

/** Whether one request could satisfy the methods, headers and query parameters of both. */
function matchersCompatible(a: RouteModel, b: RouteModel): boolean {
  if (a.methods.length > 0 && b.methods.length > 0 && !a.methods.some((m) => b.methods.includes(m))) return false
  const agree = (x: Array<{ name: string; value: string }>, y: Array<{ name: string; value: string }>) =>
    x.every((h) => y.every((o) => o.name !== h.name || o.value === h.value))
  return agree(a.headers, b.headers) && agree(a.queryParams, b.queryParams)
}

/**
 * Composes an outer route (an Ingress path, a mesh route) with the GAMMA routes of the Service it
 * sends to (`gamma`, in precedence order): for each GAMMA match whose path overlaps the outer
 * route's, one route with the outer route's hosts, the narrower of the two paths, the match's
 * methods and headers, and the rule's backends, retries and timeouts. Emitted in the GAMMA
 * routes' order, so the table's file-order tiebreak keeps their order.
 *
 * Where the outer path is the narrower, several matches share it, and the table orders those by
 * their matchers alone, no longer by their own paths. A match whose every request an earlier one
 * takes under this outer route is left out (the GAMMA order says it never serves here); where
 * the table would still put a later match first for some requests, `inverted` reports it.
 */
function compose(
  outer: RouteModel,
  gamma: GammaRoute[],
  record: (route: RouteModel, g: GammaRoute) => void,
  inverted: (lost: GammaRoute, over: GammaRoute) => void,
): RouteModel[] {
  const kept: Array<{ route: RouteModel; g: GammaRoute }> = []
  for (const g of gamma) {
    const path = intersectPaths(outer.path, g.route.path)
    if (!path) continue
    const route: RouteModel = {
      ...g.route,
      name: `${outer.name}/${g.name}`,
      hosts: [...outer.hosts],
      path,
      methods: [...g.route.methods],
      headers: g.route.headers.map((h) => ({ ...h })),
      queryParams: g.route.queryParams.map((q) => ({ ...q })),
      backends: g.route.backends.map((b) => ({ ...b })),
      retry: g.route.retry ? { ...g.route.retry } : null,
    }
    const samePath = kept.filter((k) => k.route.path.type === path.type && k.route.path.value === path.value)
    if (samePath.some((k) => matchersCover(k.route, route))) continue
    for (const k of samePath) {
      if (compareKeys(matcherKey(route), matcherKey(k.route)) < 0 && matchersCompatible(k.route, route)) inverted(k.g, g)
    }
    record(route, g)
    kept.push({ route, g })
  }
  return kept.map((k) => k.route)
}

function describePort(p: ServicePort): string {
  return p.name ? `${p.port} ("${p.name}")` : String(p.port)
}

interface Resolved {
  endpoints: EndpointModel[]
  /** The Kubernetes Service and port the backend names, when both exist. */
  service?: Service
  port?: ServicePort
}

function resolveEndpoints(res: K8sResources, b: Backend, sink: DiagnosticSink, usedPorts: Set<ServicePort>): Resolved {
  const label = `"${b.service}:${b.port}"`
  const noEndpoints = (why: string, hint: string) =>
    sink.warn(b.loc, `service ${label} has no endpoints in this file (${why}); routes to it answer 503 no-endpoints`, hint)

  const service: Service | undefined = res.services.find((s) => s.name === b.service && s.namespace === b.namespace)
  if (!service) {
    noEndpoints(`no Service "${b.service}"`, `add Service "${b.service}" and its EndpointSlices to the file`)
    return { endpoints: [] }
  }
  const port = service.ports.find((p) => (typeof b.port === 'number' ? p.port === b.port : p.name === b.port))
  if (!port) {
    const wanted = typeof b.port === 'number' ? `port ${b.port}` : `a port named "${b.port}"`
    const hint = service.ports.length > 0
      ? `ports of Service "${service.name}": ${service.ports.map(describePort).join(', ')}`
      : `Service "${service.name}" has no TCP ports`
    sink.error(b.portLoc, `Service "${service.name}" has no ${wanted}`, hint)
    return { endpoints: [], service }
  }
  usedPorts.add(port)

  const slices = res.slices.filter((s) => s.service === service.name && s.namespace === service.namespace)
  const endpoints: EndpointModel[] = []
  const seen = new Set<string>()
  let slicesWithPort = 0
  for (const slice of slices) {
    // A slice port carries the Service port's name; a hand-written slice may use the container
    // port's name (the targetPort) instead, which is accepted as a fallback.
    const endpointPort = typeof port.targetPort === 'number'
      ? port.targetPort
      : (slice.ports.find((p) => p.name === port.name) ?? slice.ports.find((p) => p.name === port.targetPort))?.port
    if (endpointPort === undefined) continue
    slicesWithPort++
    for (const endpoint of slice.endpoints) {
      if (!endpoint.ready) continue
      for (const { ip } of endpoint.addresses) {
        const parsed = parseAddress(ip.includes(':') ? `[${ip}]:${endpointPort}` : `${ip}:${endpointPort}`)
        // Bad addresses were reported when the slice was read.
        if (!parsed.ok || seen.has(parsed.value.text)) continue
        seen.add(parsed.value.text)
        endpoints.push({ address: parsed.value.text, weight: 1 })
      }
    }
  }
  if (endpoints.length === 0) {
    const sliceHint = `add an EndpointSlice labelled kubernetes.io/service-name: ${service.name}`
    if (slices.length === 0) noEndpoints(`no EndpointSlice for Service "${service.name}"`, sliceHint)
    else if (slicesWithPort === 0) {
      const portName = port.name || String(port.targetPort)
      noEndpoints(`no EndpointSlice of Service "${service.name}" has a port named "${portName}"`, `name the slice port "${portName}", like the Service port`)
    } else noEndpoints('no ready endpoints', 'endpoints with conditions.ready: false are left out')
  }
  return { endpoints, service, port }
}
