/**
 * The loader: one multi-document YAML file → one `ConfigModel`, with every problem found on the
 * way reported as a positioned diagnostic. Documents are read first (native ones straight into
 * model objects, Kubernetes ones into records), then Kubernetes resources are translated, the
 * pieces merged, options applied, and the whole-model checks run.
 */
import { readFile } from 'node:fs/promises'
import type { YAMLMap } from 'yaml'
import { isMap, isScalar, newLineCounter, parseAllDocuments } from './yaml-lib.js'
import type { AdminModel, ConfigModel, IdentityModel, ListenerModel, ServiceModel } from './model.js'
import { DiagnosticSink, Origins, type Diagnostic, type Loc } from './diagnostics.js'
import { DEFAULT_ADMIN, DEFAULT_LISTEN, makeListener, makeRoute } from './defaults.js'
import { OUR_API_VERSION } from './model.js'
import { K8sResources, readK8sResource } from './kubernetes.js'
import { applyRateLimits } from './ratelimit-k8s.js'
import { checkComposedPrecedence, translateK8s, type K8sTranslation } from './k8s-translate.js'
import { NATIVE_TOP_FIELDS, readNativeDoc, type NativeContext } from './native.js'
import { checkSemantics, lintModel, type Target } from './semantics.js'
import { normalizeHost, parseAddress } from './values.js'
import { DocReader } from './yaml-walk.js'
import { applyIngressTls } from './tls.js'

export interface LoadOptions {
  /** Name used in diagnostics. Default `<config>`. */
  file?: string
  /** Address of listeners that give none, and of the listener created for Ingress routes. Default `127.0.0.1:4140`. */
  defaultListen?: string
  /** Admin address when the file does not set `admin`; null = no admin server. Default `127.0.0.1:4191`. */
  defaultAdmin?: string | null
  /** Replaces the address of the first listener, or creates a listener when there is none. */
  listenOverride?: string
  /** Sets the admin address whatever the file says. */
  adminOverride?: string
}

export interface LoadResult {
  /** null iff `diagnostics` holds an error. */
  config: ConfigModel | null
  /** Errors and warnings in file order (option problems first). */
  diagnostics: Diagnostic[]
  /** Sizes of the loaded model (of what could be read, when there are errors). */
  summary: { listeners: number; routes: number; services: number; endpoints: number }
}

/** Problems with the options themselves have no place in the file. */
const OPTIONS_LOC: Loc = { file: '<options>', line: 0, column: 0 }

export function loadConfigText(text: string, opts: LoadOptions = {}): LoadResult {
  const file = opts.file ?? '<config>'
  const sink = new DiagnosticSink()
  const origins = new Origins()
  const defaultListen = optionAddress(sink, 'defaultListen', opts.defaultListen ?? DEFAULT_LISTEN) ?? DEFAULT_LISTEN

  const lineCounter = newLineCounter()
  const docs = parseAllDocuments(text, { lineCounter, prettyErrors: false })
  const listeners: ListenerModel[] = []
  const services: ServiceModel[] = []
  const outbound: Array<{ listener: ListenerModel; loc: Loc }> = []
  const k8s = new K8sResources()
  let admin: { value: AdminModel | null; loc: Loc } | undefined
  let identity: { value: IdentityModel | null; loc: Loc } | undefined
  let syntaxBroken = false
  const at = (offset: number): Loc => {
    const { line, col } = lineCounter.linePos(offset)
    return { file, line: Math.max(line, 1), column: Math.max(col, 1) }
  }

  for (const doc of docs) {
    let fatal = false
    for (const e of doc.errors) {
      sink.error(at(e.pos[0]), e.message)
      // A duplicate key leaves a well-formed document behind; keep checking the rest of it.
      if (e.code !== 'DUPLICATE_KEY') fatal = true
    }
    for (const w of doc.warnings) sink.warn(at(w.pos[0]), w.message)
    if (fatal) {
      syntaxBroken = true
      continue
    }
    const r = new DocReader(file, lineCounter, doc, sink)
    const root = r.resolve(doc.contents)
    if (!root) continue // empty or comment-only document
    if (!isMap(root)) {
      r.error(root, 'a config document must be a mapping', 'start it with listeners:/services: or apiVersion:/kind:')
      continue
    }
    const apiVersion = peek(r, root, 'apiVersion')
    const kind = peek(r, root, 'kind')
    if (apiVersion === null || kind === null) continue
    const native = apiVersion === undefined || (apiVersion === OUR_API_VERSION && (kind === undefined || kind === 'Config'))
    if (!native) {
      const f = r.fields(root, kind ?? 'resource', null)
      if (f) readK8sResource(r, f, apiVersion, kind, k8s)
      continue
    }
    if (apiVersion === undefined && kind !== undefined && kind !== 'Config') {
      r.error(root, `"kind: ${kind}" without apiVersion`, 'Kubernetes resources need their apiVersion, e.g. networking.k8s.io/v1 for Ingress')
      continue
    }
    const f = r.fields(root, 'config document', NATIVE_TOP_FIELDS)
    if (!f) continue
    const ctx: NativeContext = { r, origins, defaultListen, listenerIndex: listeners.length }
    const part = readNativeDoc(f, ctx)
    listeners.push(...part.listeners)
    services.push(...part.services)
    outbound.push(...part.outbound)
    if (part.admin && admin) {
      sink.error(part.admin.loc, 'admin is set in more than one document', `first set at line ${admin.loc.line}`)
    } else if (part.admin) admin = part.admin
    if (part.identity && identity) {
      sink.error(part.identity.loc, 'identity is set in more than one document', `first set at line ${identity.loc.line}`)
    } else if (part.identity) identity = part.identity
  }

  const translated = translateK8s(k8s, sink, origins, outbound.length > 0)
  const ingressRoutes = [...translated.routes, ...translated.defaultRoutes]
  const ingressTls = k8s.ingresses.flatMap((i) => i.tls.map((t) => ({ ingress: i.name, namespace: i.namespace, ...t })))
  if (ingressRoutes.length > 0) {
    let first = listeners[0]
    if (!first) {
      first = makeListener('listener-0', defaultListen)
      origins.set(first, '', OPTIONS_LOC)
      listeners.push(first)
      // A listener made for the file's Ingresses terminates TLS when one of them asks for it.
      if (ingressTls.length > 0) first.tls = { certificates: [] }
    }
    first.routes.push(...ingressRoutes)
    applyIngressTls(ingressTls, k8s.tlsSecrets, first.tls ?? undefined, first.name, sink)
  }
  const nativeNames = new Set(services.map((s) => s.name))
  services.push(...translated.services)
  applyRateLimits(k8s.rateLimits, services, translated.origins, nativeNames, sink)
  for (const o of outbound) meshRoutes(o.listener, o.loc, services, translated, sink, origins)
  for (const listener of listeners) checkComposedPrecedence(listener, translated.composed, sink)

  if (opts.listenOverride !== undefined) {
    const address = optionAddress(sink, 'listenOverride', opts.listenOverride)
    if (address !== undefined) {
      let first = listeners[0]
      if (!first) {
        first = makeListener('listener-0', address)
        listeners.push(first)
      }
      first.address = address
      origins.set(first, 'address', OPTIONS_LOC)
    }
  }

  let adminModel: AdminModel | null
  if (opts.adminOverride !== undefined) {
    const address = optionAddress(sink, 'adminOverride', opts.adminOverride) ?? opts.adminOverride
    adminModel = { address }
  } else if (admin) {
    adminModel = admin.value
    if (adminModel) origins.set(adminModel, '', admin.loc)
  } else {
    const fallback = opts.defaultAdmin === undefined ? DEFAULT_ADMIN : opts.defaultAdmin
    adminModel = fallback === null ? null : { address: optionAddress(sink, 'defaultAdmin', fallback) ?? fallback }
  }

  const model: ConfigModel = { listeners, services, admin: adminModel, identity: identity?.value ?? null }
  // Cross-checks on a file that failed to parse would report the missing documents' contents
  // (e.g. "undefined service") as further errors; the syntax errors come first.
  if (!syntaxBroken) {
    const locate = (t: Target): Loc => origins.get(t.obj, t.field) ?? { file, line: 0, column: 0 }
    checkSemantics(model, (t, message, hint) => sink.error(locate(t), message, hint))
    lintModel(model, (t, message, hint) => sink.warn(locate(t), message, hint))
  }
  return finish(model, sink)
}

/**
 * Mesh addressing on an outbound listener: after its own routes, one route per service whose hosts
 * are the service's names — `name`, `name.ns`, `name.ns.svc`, `name.ns.svc.cluster.local` — so a
 * request naming a service reaches it and any other host finds no route (404). A service built
 * from a Kubernetes Service is named by that Service; when two services answer to the same names
 * (two ports of one Service), the first keeps them and the other is reported. A GAMMA route
 * attached to that Service port replaces the service's route with its rules, for those hosts.
 */
function meshRoutes(
  listener: ListenerModel,
  at: Loc,
  services: ServiceModel[],
  k8s: Pick<K8sTranslation, 'origins' | 'expand'>,
  sink: DiagnosticSink,
  origins: Origins,
): void {
  const taken = new Map<string, string>()
  for (const service of services) {
    const from = k8s.origins.get(service.name)
    const base = from?.name ?? service.name
    const namespace = from?.namespace ?? 'default'
    const names = [base, `${base}.${namespace}`, `${base}.${namespace}.svc`, `${base}.${namespace}.svc.cluster.local`]
    const hosts: string[] = []
    for (const n of names) {
      const host = normalizeHost(n)
      if (!host.ok) {
        sink.warn(at, `service "${service.name}" is not reachable by mesh addressing: "${n}" is not a host name`, 'name the service with letters, digits and dashes')
        break
      }
      const owner = taken.get(host.value)
      if (owner !== undefined) {
        sink.warn(at, `services "${owner}" and "${service.name}" both answer to "${host.value}"; "${owner}" keeps it`, 'address the other by a route of its own')
        break
      }
      hosts.push(host.value)
    }
    if (hosts.length !== names.length) continue
    for (const h of hosts) taken.set(h, service.name)
    const route = makeRoute(`mesh-${service.name.replace(/[^A-Za-z0-9_.-]/g, '-')}`, service.name)
    route.hosts = hosts
    origins.set(route, '', at)
    listener.routes.push(...k8s.expand(route, `mesh route "${route.name}"`))
  }
}

/**
 * A top-level string field read before the document's kind is known: undefined when absent,
 * null (after reporting) when present but not a string.
 */
function peek(r: DocReader, root: YAMLMap, key: string): string | undefined | null {
  const pair = root.items.find((p) => isScalar(p.key) && p.key.value === key)
  if (!pair) return undefined
  const value = r.resolve(pair.value)
  if (value === undefined) return undefined
  if (isScalar(value) && typeof value.value === 'string') return value.value
  r.error(value, `${key} must be a string`)
  return null
}

function optionAddress(sink: DiagnosticSink, option: string, value: string): string | undefined {
  const parsed = parseAddress(value)
  if (parsed.ok) return parsed.value.text
  sink.error(OPTIONS_LOC, `invalid ${option} address: ${parsed.error}`, parsed.hint)
  return undefined
}

export function finish(model: ConfigModel, sink: DiagnosticSink): LoadResult {
  const diagnostics = [...sink.list].sort((a, b) => a.line - b.line || a.column - b.column)
  const summary = {
    listeners: model.listeners.length,
    routes: model.listeners.reduce((n, l) => n + l.routes.length, 0),
    services: model.services.length,
    endpoints: model.services.reduce((n, s) => n + s.endpoints.length, 0),
  }
  return { config: sink.errorCount === 0 ? model : null, diagnostics, summary }
}

export async function loadConfigFile(path: string, opts: Omit<LoadOptions, 'file'> = {}): Promise<LoadResult> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    const reason = e.code === 'ENOENT' ? 'no such file' : e.code === 'EISDIR' ? 'it is a directory' : e.message
    return {
      config: null,
      diagnostics: [{ severity: 'error', file: path, line: 0, column: 0, message: `cannot read config file: ${reason}` }],
      summary: { listeners: 0, routes: 0, services: 0, endpoints: 0 },
    }
  }
  return loadConfigText(text, { ...opts, file: path })
}
