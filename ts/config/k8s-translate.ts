/**
 * Kubernetes resources → model routes and services. Each Ingress backend (Service S, port P)
 * becomes one model service named `S:P`, with its endpoints resolved the way kube-proxy would:
 * Service port → targetPort → EndpointSlice port → ready addresses, and its protocol taken from
 * the Service port's `appProtocol`.
 */
import type { EndpointModel, RouteModel, ServiceModel, UpstreamProtocol } from './model.js'
import type { DiagnosticSink, Origins } from './diagnostics.js'
import { DEFAULT_UPSTREAM_PROTOCOL, makeRoute, makeService } from './defaults.js'
import type { Backend, K8sResources, Service, ServicePort } from './kubernetes.js'
import type { LinkerdPolicy } from './linkerd.js'
import { parseAddress } from './values.js'

export interface K8sTranslation {
  routes: RouteModel[]
  /** Catch-all routes from `spec.defaultBackend`, kept apart so they go after every other route. */
  defaultRoutes: RouteModel[]
  services: ServiceModel[]
  /** The Kubernetes Service (name, namespace, port) each service was built from, for mesh addressing. */
  origins: Map<string, { name: string; namespace: string; port: number | string }>
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
  const out: K8sTranslation = { routes: [], defaultRoutes: [], services: [], origins: new Map() }
  const byBackend = new Map<string, string>()
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
    origins.set(service, '', b.loc)
    out.services.push(service)
    out.origins.set(name, { name: b.service, namespace: b.namespace, port: resolved.port?.port ?? b.port })
    return name
  }

  /** Route `route` to `name`, with the retries and timeout its Service's annotations ask for. */
  const withPolicy = (route: RouteModel): RouteModel => {
    const linkerd = policies.get(route.service)
    if (linkerd?.retry) route.retry = { ...linkerd.retry }
    if (linkerd?.requestTimeoutMs !== undefined) route.responseHeaderTimeoutMs = linkerd.requestTimeoutMs
    return route
  }

  for (const ingress of res.ingresses) {
    for (const p of ingress.paths) {
      const route = withPolicy(makeRoute(`${ingress.name}-${p.ruleIndex}-${p.pathIndex}`, serviceFor(p.backend)))
      route.hosts = p.host !== undefined ? [p.host] : []
      route.path = { type: p.pathType, value: p.path }
      origins.set(route, '', p.loc)
      origins.set(route, 'service', p.backend.loc)
      out.routes.push(route)
    }
    const backend = ingress.defaultBackend
    if (backend) {
      const route = withPolicy(makeRoute(`${ingress.name}-default`, serviceFor(backend)))
      origins.set(route, '', backend.loc)
      origins.set(route, 'service', backend.loc)
      const first = out.defaultRoutes[0]
      if (first) {
        sink.warn(backend.loc, `defaultBackend of Ingress "${ingress.name}" is shadowed by an earlier defaultBackend (route "${first.name}")`, 'keep one defaultBackend per file')
      }
      out.defaultRoutes.push(route)
    }
  }

  // HTTPRoutes: one route per match of each rule (a rule without matches: one catch-all), after
  // the Ingress rules; the routing table orders them by specificity. Their own Linkerd annotations
  // override those of the Services they send to.
  for (const hr of res.httpRoutes) {
    for (const rule of hr.rules) {
      const names = rule.backends.map((b) => serviceFor(b.backend))
      const split = rule.backends.length > 1 || rule.backends.some((b) => b.weight !== 1)
      const matches = rule.matches.length > 0 ? rule.matches : [undefined]
      matches.forEach((m, mi) => {
        const route = withPolicy(makeRoute(`${hr.name}-${rule.index}-${mi}`, names[0] ?? ''))
        route.hosts = [...hr.hostnames]
        if (m) {
          route.path = { ...m.path }
          route.headers = m.headers.map((h) => ({ ...h }))
          route.methods = [...m.methods]
        }
        if (split) {
          route.backends = names.map((service, i) => ({ service, weight: rule.backends[i]?.weight ?? 1 }))
          route.backends.forEach((b, i) => {
            const at = rule.backends[i]?.backend.loc ?? rule.loc
            origins.set(b, '', at)
            origins.set(b, 'service', at)
          })
        }
        if (hr.linkerd.retry) route.retry = { ...hr.linkerd.retry }
        if (hr.linkerd.requestTimeoutMs !== undefined) route.responseHeaderTimeoutMs = hr.linkerd.requestTimeoutMs
        if (rule.requestTimeoutMs !== undefined) route.responseHeaderTimeoutMs = rule.requestTimeoutMs
        // backendRequest bounds each request to a backend: each attempt of a retried route, else
        // the one attempt there is (the tighter of the two timeouts).
        const backendMs = rule.backendTimeoutMs
        if (backendMs !== undefined && backendMs > 0) {
          if (route.retry) route.retry.timeoutMs = backendMs
          else if (route.responseHeaderTimeoutMs === 0 || backendMs < route.responseHeaderTimeoutMs) route.responseHeaderTimeoutMs = backendMs
        }
        origins.set(route, '', m?.loc ?? rule.loc)
        origins.set(route, 'service', rule.backends[0]?.backend.loc ?? rule.loc)
        origins.set(route, 'backends', rule.loc)
        out.routes.push(route)
      })
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
  for (const slice of res.slices) {
    if (!res.services.some((s) => s.name === slice.service && s.namespace === slice.namespace)) {
      sink.warn(slice.loc, `EndpointSlice "${slice.name}" belongs to Service "${slice.service}", which is not in this file; skipped`)
    }
  }
  return out
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
