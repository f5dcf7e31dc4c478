/**
 * Reading Kubernetes resources in their real shapes (Ingress, Service, EndpointSlice, HTTPRoute,
 * and the rate limits of `ratelimit-k8s.ts`) into plain records with positions. Unknown fields are not errors here: real manifests carry status,
 * selectors, managed fields and more that meshproxy has no use for. Translation into the model
 * happens in `k8s-translate.ts` once every document of the file has been read, since an Ingress
 * may come before the Services it names.
 */
import { isScalar } from './yaml-lib.js'
import { checkMeshIdentity, type PathMatchType } from './model.js'
import type { Loc } from './diagnostics.js'
import { readHttpRoute, type HttpRoute } from './httproute.js'
import { readLinkerdAnnotations, type LinkerdPolicy } from './linkerd.js'
import { readPathType } from './native.js'
import { readLocalRateLimitPolicy, readRateLimiter, type ServiceRateLimits } from './ratelimit-k8s.js'
import { normalizeHost, normalizePath, parseAddress } from './values.js'
import type { DocReader, Fields, YNode } from './yaml-walk.js'
import { readTlsHosts, readTlsSecret, type TlsSecret } from './tls.js'

/** Ingress classes served by meshproxy (besides no class at all). */
export const OUR_INGRESS_CLASSES = ['linkerd', 'meshproxy']
const SERVICE_NAME_LABEL = 'kubernetes.io/service-name'

export interface Backend {
  namespace: string
  service: string
  /** As written in the Ingress: a port number or a port name. */
  port: number | string
  loc: Loc
  portLoc: Loc
}

export interface IngressPath {
  ruleIndex: number
  pathIndex: number
  host?: string
  path: string
  pathType: PathMatchType
  backend: Backend
  loc: Loc
}

export interface Ingress {
  name: string
  namespace: string
  loc: Loc
  paths: IngressPath[]
  defaultBackend?: Backend
  /** `spec.tls`: the hosts each Secret's certificate serves on the ingress listener. */
  tls: IngressTls[]
}

export interface IngressTls {
  hosts: string[]
  secretName: string
  loc: Loc
  secretLoc: Loc
}

export interface ServicePort {
  port: number
  /** '' when unnamed, matching the EndpointSlice convention. */
  name: string
  targetPort: number | string
  /** `spec.ports[].appProtocol` as written; the translation maps it to the upstream protocol. */
  appProtocol?: { value: string; loc: Loc }
  loc: Loc
}

export interface Service {
  name: string
  namespace: string
  loc: Loc
  ports: ServicePort[]
  /** What its Linkerd annotations ask for (`linkerd.ts`). */
  linkerd: LinkerdPolicy
  /**
   * `meshproxy.io/identity: <service-account>`: its endpoints are meshed peers running as
   * `<service-account>.<namespace>` (mTLS, see the model's `services[].identity`).
   */
  identity?: { value: string; loc: Loc }
}

/** The Service annotation that makes a Service meshed. */
export const IDENTITY_ANNOTATION = 'meshproxy.io/identity'

export interface Slice {
  name: string
  namespace: string
  service: string
  loc: Loc
  ports: Array<{ name: string; port: number }>
  endpoints: Array<{ addresses: Array<{ ip: string; loc: Loc }>; ready: boolean }>
}

export class K8sResources {
  readonly ingresses: Ingress[] = []
  readonly services: Service[] = []
  readonly slices: Slice[] = []
  readonly httpRoutes: HttpRoute[] = []
  /** From `RateLimiter` and `HTTPLocalRateLimitPolicy` resources (`ratelimit-k8s.ts`). */
  readonly rateLimits: ServiceRateLimits[] = []
  /** `kubernetes.io/tls` Secrets whose certificate and key were read and checked (`tls.ts`). */
  readonly tlsSecrets: TlsSecret[] = []
}

const SUPPORTED: Record<string, string[]> = {
  Ingress: ['networking.k8s.io/v1'],
  Service: ['v1'],
  EndpointSlice: ['discovery.k8s.io/v1'],
  HTTPRoute: ['gateway.networking.k8s.io/v1', 'policy.linkerd.io/v1beta3'],
  List: ['v1'],
  RateLimiter: ['linkerd.io/v1alpha2'],
  HTTPLocalRateLimitPolicy: ['policy.linkerd.io/v1alpha1'],
  Secret: ['v1'],
}

/** Linkerd's authorization resources: skipped with a pointer to the native rules. */
const LINKERD_AUTHORIZATION_KINDS = ['AuthorizationPolicy', 'NetworkAuthentication', 'MeshTLSAuthentication', 'Server', 'ServerAuthorization']

/**
 * Reads one resource (or a `v1` `List` of them, as `kubectl get -o yaml` prints). Anything else
 * is skipped with a warning, never an error, so a file shared with other controllers still loads.
 */
export function readK8sResource(r: DocReader, root: Fields, apiVersion: string, kind: string | undefined, out: K8sResources): void {
  const kindLoc = root.has('kind') ? root.valueLoc('kind') : root.valueLoc('apiVersion')
  if (kind === undefined) {
    r.warn(kindLoc, `resource of ${apiVersion} has no kind; skipped`)
    return
  }
  const wanted = SUPPORTED[kind]
  if (wanted === undefined && apiVersion.startsWith('policy.linkerd.io/') && LINKERD_AUTHORIZATION_KINDS.includes(kind)) {
    r.warn(kindLoc, `Linkerd's ${kind} is not supported; skipped`, 'Linkerd\'s authorization applies to a Server (a port of selected pods), which meshproxy has no equivalent of: write its networks as a listener\'s authorization rules (README "Authorization")')
    return
  }
  if (wanted === undefined) {
    r.warn(kindLoc, `${kind} is not supported yet; skipped`, 'meshproxy reads Ingress, HTTPRoute, Service (with Linkerd\'s retry, timeout and failure-accrual annotations), EndpointSlice, RateLimiter, HTTPLocalRateLimitPolicy and kubernetes.io/tls Secrets')
    return
  }
  if (!wanted.includes(apiVersion)) {
    r.warn(root.valueLoc('apiVersion'), `${kind} in ${apiVersion} is not supported; skipped`, `use apiVersion: ${wanted.join(' or ')}`)
    return
  }
  if (kind === 'List') {
    for (const item of root.list('items')) {
      const f = r.fields(item, 'List item', null)
      const itemApi = f?.str('apiVersion', true)
      if (f && itemApi !== undefined) readK8sResource(r, f, itemApi, f.str('kind'), out)
    }
    return
  }
  const meta = root.fields('metadata', `${kind} metadata`, null, true)
  const name = meta?.str('name', true)
  if (!meta || name === undefined) return
  const namespace = meta.str('namespace') ?? 'default'
  const loc = r.loc(root.node)
  if (kind === 'Ingress') readIngress(r, root, meta, { name, namespace, loc, paths: [], tls: [] }, out)
  else if (kind === 'Secret') readTlsSecret(r, root, name, namespace, loc, out.tlsSecrets)
  else if (kind === 'Service') {
    const annotations = meta.fields('annotations', 'Service annotations', null)
    const linkerd = readLinkerdAnnotations(annotations, name)
    const service: Service = { name, namespace, loc, ports: [], linkerd }
    const sa = annotations?.text(IDENTITY_ANNOTATION)
    if (annotations && sa !== undefined) {
      const at = annotations.valueLoc(IDENTITY_ANNOTATION)
      const checked = checkMeshIdentity(`${sa}.${namespace}`)
      if (checked.ok) service.identity = { value: checked.value, loc: at }
      else r.error(at, `annotation ${IDENTITY_ANNOTATION} "${sa}" is not a service account name`, 'the name of the service account the Service\'s pods run as, e.g. orders')
    }
    readService(r, root, service, out)
  }
  else if (kind === 'RateLimiter') readRateLimiter(r, root, name, namespace, out.rateLimits)
  else if (kind === 'HTTPLocalRateLimitPolicy') readLocalRateLimitPolicy(r, root, name, namespace, out.rateLimits)
  else if (kind === 'HTTPRoute') {
    const route = readHttpRoute(r, root, meta, name, namespace, loc)
    if (route) out.httpRoutes.push(route)
  } else readSlice(r, root, meta, name, namespace, loc, out)
}

function readIngress(r: DocReader, root: Fields, meta: Fields, ingress: Ingress, out: K8sResources): void {
  const spec = root.fields('spec', 'Ingress spec', null, true)
  if (!spec) return
  const annotations = meta.fields('annotations', 'Ingress annotations', null)
  // The spec field supersedes the deprecated annotation, as in Kubernetes.
  const className = spec.str('ingressClassName') ?? annotations?.text('kubernetes.io/ingress.class')
  if (className !== undefined && !OUR_INGRESS_CLASSES.includes(className)) {
    const at = spec.has('ingressClassName') ? spec.valueLoc('ingressClassName') : annotations?.valueLoc('kubernetes.io/ingress.class')
    r.warn(at ?? ingress.loc, `Ingress "${ingress.name}" has class "${className}", which is not served by meshproxy; skipped`, `meshproxy serves classes ${OUR_INGRESS_CLASSES.join(', ')} and Ingresses without a class`)
    return
  }
  spec.list('rules').forEach((ruleNode, ruleIndex) => {
    const rule = r.fields(ruleNode, 'Ingress rule', null)
    if (!rule) return
    const hostText = rule.str('host')
    const host = hostText === undefined ? undefined : r.check(rule.valueLoc('host'), 'Ingress host', normalizeHost(hostText))
    const http = rule.fields('http', 'Ingress rule http', null)
    if (!http) {
      r.warn(ruleNode, `Ingress "${ingress.name}" rule ${ruleIndex} has no http paths; ignored`)
      return
    }
    http.list('paths', true).forEach((pathNode, pathIndex) => {
      const p = readIngressPath(r, pathNode, ingress.namespace)
      // A bad host was reported; its paths are still checked, but not routed without the host.
      if (p && (hostText === undefined || host !== undefined)) ingress.paths.push({ ...p, ruleIndex, pathIndex, ...(host !== undefined ? { host } : {}) })
    })
  })
  const defaultBackend = spec.get('defaultBackend')
  if (defaultBackend) {
    const backend = readBackend(r, defaultBackend, 'Ingress defaultBackend', ingress.namespace)
    if (backend) ingress.defaultBackend = backend
  }
  if (!spec.has('rules') && !defaultBackend) {
    r.warn(ingress.loc, `Ingress "${ingress.name}" has neither rules nor defaultBackend; it routes nothing`)
  }
  for (const node of spec.list('tls')) {
    const t = r.fields(node, 'Ingress tls', ['hosts', 'secretName'])
    if (!t) continue
    const secretName = t.str('secretName', true)
    if (secretName === undefined) continue
    const hosts = readTlsHosts(r, t.get('hosts'), 'Ingress tls hosts')
    ingress.tls.push({ hosts, secretName, loc: r.loc(node), secretLoc: t.valueLoc('secretName') })
  }
  out.ingresses.push(ingress)
}

function readIngressPath(r: DocReader, node: YNode, namespace: string): Omit<IngressPath, 'ruleIndex' | 'pathIndex'> | undefined {
  const f = r.fields(node, 'Ingress path', null)
  if (!f) return undefined
  const pathTypeText = f.str('pathType', true)
  const pathType = pathTypeText === undefined ? undefined : readPathType(r, f.valueLoc('pathType'), pathTypeText)
  const pathText = f.str('path')
  // Kubernetes requires a path for Exact and Prefix and lets ImplementationSpecific omit it.
  if (pathText === undefined && pathTypeText !== 'ImplementationSpecific' && pathTypeText !== undefined) {
    r.error(f.node, `Ingress path with pathType ${pathTypeText} is missing required field "path"`, 'e.g. path: /')
  }
  const path = pathText === undefined ? '/' : r.check(f.valueLoc('path'), 'Ingress path', normalizePath(pathText, pathType ?? 'Prefix'))
  const backendNode = f.require('backend')
  const backend = backendNode && readBackend(r, backendNode, 'Ingress backend', namespace)
  if (pathType === undefined || path === undefined || !backend) return undefined
  return { path, pathType, backend, loc: r.loc(node) }
}

function readBackend(r: DocReader, node: YNode, what: string, namespace: string): Backend | undefined {
  const f = r.fields(node, what, null)
  if (!f) return undefined
  if (f.has('resource') && !f.has('service')) {
    r.warn(f.keyLoc('resource'), `${what} refers to a resource, which meshproxy does not serve; skipped`, 'use backend.service')
    return undefined
  }
  const svc = f.fields('service', `${what} service`, null, true)
  const name = svc?.str('name', true)
  const port = svc?.fields('port', `${what} service port`, null, true)
  if (!svc || !port || name === undefined) return undefined
  const hasNumber = port.has('number')
  const hasName = port.has('name')
  if (hasNumber === hasName) {
    r.error(port.node, `${what} service port needs exactly one of "number" and "name"`, 'e.g. port: { number: 80 }')
    return undefined
  }
  const value = hasNumber ? port.int('number', 1, 65535) : port.str('name')
  if (value === undefined) return undefined
  return { namespace, service: name, port: value, loc: r.loc(node), portLoc: port.valueLoc(hasNumber ? 'number' : 'name') }
}

function readService(r: DocReader, root: Fields, service: Service, out: K8sResources): void {
  const spec = root.fields('spec', 'Service spec', null)
  for (const node of spec?.list('ports') ?? []) {
    const f = r.fields(node, 'Service port', null)
    if (!f) continue
    const port = f.int('port', 1, 65535, true)
    const name = f.str('name') ?? ''
    const protocol = f.str('protocol') ?? 'TCP'
    const targetNode = f.get('targetPort')
    let targetPort: number | string | undefined = port
    if (targetNode) {
      if (isScalar(targetNode) && typeof targetNode.value === 'string') targetPort = targetNode.value
      else targetPort = r.integer(targetNode, f.label('targetPort'), 1, 65535)
    }
    if (port === undefined || targetPort === undefined) continue
    if (protocol !== 'TCP') {
      r.warn(f.valueLoc('protocol'), `Service "${service.name}" port ${port} is ${protocol}; meshproxy proxies TCP (HTTP) only; ignored`)
      continue
    }
    const appProtocol = f.str('appProtocol')
    service.ports.push({
      port,
      name,
      targetPort,
      ...(appProtocol !== undefined ? { appProtocol: { value: appProtocol, loc: f.valueLoc('appProtocol') } } : {}),
      loc: r.loc(node),
    })
  }
  const dup = out.services.find((s) => s.name === service.name && s.namespace === service.namespace)
  if (dup) {
    r.error(service.loc, `Service "${service.name}" is defined twice`, `first defined at line ${dup.loc.line}`)
    return
  }
  out.services.push(service)
}

function readSlice(r: DocReader, root: Fields, meta: Fields, name: string, namespace: string, loc: Loc, out: K8sResources): void {
  const labels = meta.fields('labels', 'EndpointSlice labels', null)
  const service = labels?.text(SERVICE_NAME_LABEL)
  if (service === undefined) {
    r.warn(loc, `EndpointSlice "${name}" has no label ${SERVICE_NAME_LABEL}, so it belongs to no Service; skipped`, `add metadata.labels["${SERVICE_NAME_LABEL}"]`)
    return
  }
  const addressType = root.str('addressType')
  if (addressType !== undefined && !['IPv4', 'IPv6', 'FQDN'].includes(addressType)) {
    r.error(root.valueLoc('addressType'), `unknown addressType "${addressType}"`, 'valid: IPv4, IPv6, FQDN')
  }
  const slice: Slice = { name, namespace, service, loc, ports: [], endpoints: [] }
  for (const node of root.list('ports')) {
    const f = r.fields(node, 'EndpointSlice port', null)
    // A slice port without a number means "all ports" in Kubernetes; nothing to connect to here.
    const port = f?.int('port', 1, 65535)
    if (f && port !== undefined && (f.str('protocol') ?? 'TCP') === 'TCP') slice.ports.push({ name: f.str('name') ?? '', port })
  }
  for (const node of root.list('endpoints')) {
    const f = r.fields(node, 'EndpointSlice endpoint', null)
    if (!f) continue
    const addresses: Array<{ ip: string; loc: Loc }> = []
    for (const a of f.list('addresses', true)) {
      const ip = r.string(a, 'EndpointSlice address')
      if (ip === undefined) continue
      if (!parseAddress(ip.includes(':') ? `[${ip}]:1` : `${ip}:1`).ok) {
        r.error(a, `invalid EndpointSlice address "${ip}"`, 'addresses are IPs (or names for FQDN slices), without a port')
        continue
      }
      addresses.push({ ip, loc: r.loc(a) })
    }
    // Kubernetes: a missing ready condition means "unknown", which consumers treat as ready.
    const ready = f.fields('conditions', 'EndpointSlice conditions', null)?.bool('ready') ?? true
    slice.endpoints.push({ addresses, ready })
  }
  out.slices.push(slice)
}
