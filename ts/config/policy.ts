/**
 * The typed policy builder: a config written in TypeScript in the native YAML form — the same
 * keys, shorthands and duration strings (`native-types.ts`, generated from the field tables) —
 * and turned into the model by the YAML's own reader and validator (`loadConfigText`), so both
 * sources give the same model and the same errors. The native object is written out as YAML and
 * loaded; each diagnostic's position in that text is mapped back to the builder call that wrote
 * the value, so an error reads `listener("web").route("api").timeout: …`.
 *
 * A policy is immutable: every method returns a new one, so an older policy can be applied again
 * (`proxy.apply(previous)`) to undo a change.
 */
import { resolve } from 'node:path'
import type { Node, Pair } from 'yaml'
import { MeshProxyError } from '../errors.js'
import { formatDiagnostic, type Diagnostic } from './diagnostics.js'
import { loadConfigText, type LoadOptions } from './load.js'
import type { ConfigModel } from './model.js'
import type { NativeAdmin, NativeConfig, NativeListener, NativeRoute, NativeService } from './native-types.js'
import { isMap, isScalar, isSeq, newLineCounter, parseAllDocuments, stringify } from './yaml-lib.js'

/** A listener as `listener(name, spec)` takes it: the native listener without its name and routes. */
export type PolicyListenerSpec = Omit<NativeListener, 'name' | 'routes'>
/** A route as `route(name, spec)` takes it: the native route without its name. */
export type PolicyRouteSpec = Omit<NativeRoute, 'name'>
/** A service as `service(name, spec)` takes it: the native service without its name. */
export type PolicyServiceSpec = Omit<NativeService, 'name'>

export interface PolicyBuildOptions extends Pick<LoadOptions, 'defaultListen' | 'defaultAdmin' | 'listenOverride' | 'adminOverride'> {
  /** The directory relative file paths in the policy are resolved from, as a YAML file's are from its own. Default `process.cwd()`. */
  baseDir?: string
}

/** A diagnostic of a policy: `path` names the builder call and key of the value it is about. */
export interface PolicyDiagnostic extends Diagnostic {
  /** `listener("web").route("api").timeout`; `""` for the policy as a whole or the build options. */
  path: string
}

export interface PolicyBuildResult {
  /** null iff `diagnostics` holds an error. */
  config: ConfigModel | null
  /** Errors and warnings, in the order of the values they are about. */
  diagnostics: PolicyDiagnostic[]
}

/** The `file` of a policy's diagnostics. */
export const POLICY_FILE = '<policy>'

const KIND = Symbol.for('meshproxy.policy')

/** The routes of one listener, inside `listener(name, spec, (l) => l.route(…))`. */
export class ListenerRoutes {
  readonly #routes: NativeRoute[]

  /** @internal */
  constructor(routes: NativeRoute[]) {
    this.#routes = routes
  }

  /** Adds the route `name`, or replaces the route of that name where it is. */
  route(name: string, spec: PolicyRouteSpec): this {
    put(this.#routes, named(name, spec))
    return this
  }

  /** Removes the route `name`, if there is one. */
  removeRoute(name: string): this {
    const i = this.#routes.findIndex((r) => r.name === name)
    if (i >= 0) this.#routes.splice(i, 1)
    return this
  }
}

export class MeshPolicy {
  readonly #native: NativeConfig

  /** A policy holding a copy of `native` (a whole config in the native YAML form). */
  constructor(native: NativeConfig = {}) {
    this.#native = copy(native)
    Object.defineProperty(this, KIND, { value: true })
  }

  /**
   * Adds the listener `name`, or changes the listener of that name where it is (`spec`'s keys
   * replace its keys; its routes are kept). `routes` adds or replaces routes by name.
   */
  listener(name: string, spec: PolicyListenerSpec = {}, routes?: (l: ListenerRoutes) => unknown): MeshPolicy {
    const native = copy(this.#native)
    const listeners = (native.listeners ??= [])
    const existing = listeners.find((l) => l.name === name)
    const listener: NativeListener = { ...existing, ...named(name, spec) }
    const list = [...(existing?.routes ?? [])]
    routes?.(new ListenerRoutes(list))
    if (list.length > 0 || existing?.routes !== undefined) listener.routes = list
    put(listeners, listener)
    return new MeshPolicy(native)
  }

  /** Adds the service `name`, or replaces the service of that name where it is. */
  service(name: string, spec: PolicyServiceSpec = {}): MeshPolicy {
    const native = copy(this.#native)
    put((native.services ??= []), named(name, spec))
    return new MeshPolicy(native)
  }

  /** Sets the admin listener: an address, `{ address }`, or null for none. */
  admin(admin: string | NativeAdmin | null): MeshPolicy {
    return new MeshPolicy({ ...copy(this.#native), admin })
  }

  /** A copy of the policy in the native YAML form. */
  toNative(): NativeConfig {
    return copy(this.#native)
  }

  /** The policy as a native YAML document (what `meshproxy run --config` reads). */
  toYaml(): string {
    return stringify(this.#native, { aliasDuplicateObjects: false, lineWidth: 0 })
  }

  /** The model, through the YAML's reader and validator; errors name builder paths. */
  build(options: PolicyBuildOptions = {}): PolicyBuildResult {
    // Flow style gives every collection a start of its own (`{`, `[`), apart from its first key,
    // so the node a diagnostic points at is the innermost one containing its position.
    const text = stringify(this.#native, { aliasDuplicateObjects: false, lineWidth: 0, collectionStyle: 'flow' })
    const { baseDir, ...load } = options
    // The loader resolves relative paths from the directory of the file it is given.
    const file = resolve(baseDir ?? process.cwd(), POLICY_FILE)
    const loaded = loadConfigText(text, { ...load, file })
    let places: ((line: number, column: number) => string) | undefined
    const diagnostics = loaded.diagnostics.map((d): PolicyDiagnostic => {
      if (d.file !== file) return { ...d, path: '' }
      places ??= locate(text)
      const path = d.line > 0 ? places(d.line, d.column) : ''
      return { ...d, file: POLICY_FILE, line: 0, column: 0, message: path ? `${path}: ${d.message}` : d.message, path }
    })
    return { config: loaded.config, diagnostics }
  }

  /** The model, or a `MeshProxyError` (`MESHPROXY_INVALID_CONFIG`) carrying the diagnostics. */
  model(options: PolicyBuildOptions = {}): ConfigModel {
    const { config, diagnostics } = this.build(options)
    if (config) return config
    const errors = diagnostics.filter((d) => d.severity === 'error')
    throw new MeshProxyError('MESHPROXY_INVALID_CONFIG', `invalid policy:\n${errors.map(formatDiagnostic).join('\n')}`, errors)
  }

  /** `instanceof` that also holds across two copies of the package. */
  static [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[KIND] === true
  }
}

/** A new policy: empty, or holding a copy of a whole config in the native YAML form. */
export function meshPolicy(native: NativeConfig = {}): MeshPolicy {
  return new MeshPolicy(native)
}

function copy<T>(value: T): T {
  return structuredClone(value)
}

/** A copy of `spec` with `name` as its first key, as the YAML writes it. */
function named<S extends object>(name: string, spec: S): S & { name: string } {
  const out = { name, ...copy(spec) }
  out.name = name
  return out
}

/** Replaces the item of the same name where it is, or appends it. */
function put<T extends { name?: string }>(list: T[], item: T): void {
  const i = list.findIndex((x) => x.name === item.name)
  if (i >= 0) list[i] = item
  else list.push(item)
}

type Segment = string | number

/**
 * The builder path of the value at a line and column of `text` (the policy as flow YAML): the
 * innermost node or key containing the position.
 */
function locate(text: string): (line: number, column: number) => string {
  const lineCounter = newLineCounter()
  const [doc] = parseAllDocuments(text, { lineCounter, prettyErrors: false })
  const spans: Array<{ start: number; end: number; path: Segment[] }> = []
  const walk = (node: unknown, path: Segment[]): void => {
    const range = (node as Node | null)?.range
    if (range) spans.push({ start: range[0], end: range[2], path })
    if (isMap(node)) {
      for (const pair of node.items as Pair[]) {
        const key = isScalar(pair.key) ? String(pair.key.value) : '?'
        walk(pair.key, [...path, key])
        walk(pair.value, [...path, key])
      }
    } else if (isSeq(node)) {
      node.items.forEach((item, i) => walk(item, [...path, i]))
    }
  }
  walk(doc?.contents, [])
  const names = namesOf(doc?.toJS() as NativeConfig | undefined)
  return (line, column) => {
    const offset = (lineCounter.lineStarts[line - 1] ?? 0) + column - 1
    let best: (typeof spans)[number] | undefined
    for (const s of spans) {
      if (s.start <= offset && offset < Math.max(s.end, s.start + 1) && (!best || s.end - s.start < best.end - best.start)) best = s
    }
    return best ? render(best.path, names) : ''
  }
}

/** The names that stand for list items in paths: listeners, their routes and services, where unique among their siblings. */
function namesOf(native: NativeConfig | undefined): (list: string, index: number, parent?: number) => string | undefined {
  const unique = (items: Array<{ name?: unknown }> | undefined, i: number): string | undefined => {
    const name = items?.[i]?.name
    if (typeof name !== 'string') return undefined
    return items!.filter((x) => x.name === name).length === 1 ? name : undefined
  }
  return (list, index, parent) => {
    if (!native || typeof native !== 'object') return undefined
    if (list === 'listeners') return unique(Array.isArray(native.listeners) ? native.listeners : undefined, index)
    if (list === 'services') return unique(Array.isArray(native.services) ? native.services : undefined, index)
    const routes = parent === undefined ? undefined : native.listeners?.[parent]?.routes
    return unique(Array.isArray(routes) ? routes : undefined, index)
  }
}

const CALLS: Record<string, string> = { listeners: 'listener', services: 'service', routes: 'route' }

/** `listener("web").route("api").timeout`; items without a unique name as `listeners[1]`. */
function render(path: Segment[], names: ReturnType<typeof namesOf>): string {
  let out = ''
  const dot = (s: string) => (out === '' ? s : `${out}.${s}`)
  for (let i = 0; i < path.length; i++) {
    const seg = path[i]!
    const next = path[i + 1]
    const call = typeof seg === 'string' ? CALLS[seg] : undefined
    const atTop = seg === 'listeners' || seg === 'services' ? i === 0 : seg === 'routes' && i === 2 && path[0] === 'listeners'
    if (call && atTop && typeof next === 'number') {
      const name = names(seg as string, next, seg === 'routes' ? (path[1] as number) : undefined)
      out = name !== undefined ? dot(`${call}(${JSON.stringify(name)})`) : dot(`${seg as string}[${next}]`)
      i++
    } else if (typeof seg === 'number') {
      out = `${out}[${seg}]`
    } else {
      out = /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(seg) ? dot(seg) : `${out}[${JSON.stringify(seg)}]`
    }
  }
  return out
}
