/**
 * Typed reading of YAML nodes that keeps source positions. Every reader reports a bad value to
 * the sink and returns undefined instead of throwing, so one pass over a file reports every
 * problem in it. Missing and explicit `null` are the same thing ("not set"), as in Kubernetes.
 */
import type { Document, LineCounter, Node, Pair, Scalar, YAMLMap, YAMLSeq } from 'yaml'
import { isAlias, isMap, isScalar, isSeq } from './yaml-lib.js'
import { DiagnosticSink, suggest, type Loc } from './diagnostics.js'
import type { LimitSpec } from './defaults.js'
import { describe, formatDuration, parseDuration, type Parsed } from './values.js'

export type YNode = YAMLMap | YAMLSeq | Scalar

/** One YAML document of the file being loaded; all documents share the file's LineCounter. */
export class DocReader {
  constructor(
    readonly file: string,
    readonly lineCounter: LineCounter,
    readonly doc: Document.Parsed,
    readonly sink: DiagnosticSink,
  ) {}

  /** Where a node starts; the document start when the node has no range (synthesized). */
  loc(node: Node | Pair | null | undefined): Loc {
    const range = node && 'range' in node ? node.range : undefined
    const offset = range ? range[0] : (this.doc.range?.[0] ?? 0)
    const { line, col } = this.lineCounter.linePos(offset)
    // linePos says line 0 for offsets before the first newline it was told about.
    return { file: this.file, line: Math.max(line, 1), column: Math.max(col, 1) }
  }

  error(at: Node | Loc | null | undefined, message: string, hint?: string): void {
    this.sink.error(this.toLoc(at), message, hint)
  }

  warn(at: Node | Loc | null | undefined, message: string, hint?: string): void {
    this.sink.warn(this.toLoc(at), message, hint)
  }

  private toLoc(at: Node | Loc | null | undefined): Loc {
    return at && 'file' in at ? at : this.loc(at)
  }

  /** The value of a `values.ts` parser, or undefined after reporting why it failed. */
  check<T>(at: Node | Loc, what: string, parsed: Parsed<T>): T | undefined {
    if (parsed.ok) return parsed.value
    this.error(at, `invalid ${what}: ${parsed.error}`, parsed.hint)
    return undefined
  }

  /** Follows aliases; undefined for a missing node or an explicit null. */
  resolve(node: unknown): YNode | undefined {
    let n = node
    if (isAlias(n)) n = n.resolve(this.doc)
    if (isScalar(n)) return n.value === null ? undefined : n
    if (isMap(n) || isSeq(n)) return n as YAMLMap | YAMLSeq
    return undefined
  }

  map(node: YNode, what: string): YAMLMap | undefined {
    if (isMap(node)) return node
    this.error(node, `${what} must be a mapping, got ${nodeKind(node)}`)
    return undefined
  }

  seq(node: YNode, what: string): YAMLSeq | undefined {
    if (isSeq(node)) return node
    this.error(node, `${what} must be a list, got ${nodeKind(node)}`, `write it as a list ("- item" lines)`)
    return undefined
  }

  /** Items of a list, resolved; null items are reported, since `- ` alone is always a slip. */
  items(node: YAMLSeq, what: string): YNode[] {
    const out: YNode[] = []
    for (const item of node.items) {
      const n = this.resolve(item)
      if (n) out.push(n)
      else this.error((item as Node | null) ?? node, `empty item in ${what}`)
    }
    return out
  }

  /**
   * Opens a mapping and, when `allowed` is given, reports every key not in it at the key's own
   * position with the closest valid name.
   */
  fields(node: YNode, what: string, allowed: readonly string[] | null): Fields | undefined {
    const map = this.map(node, what)
    if (!map) return undefined
    const pairs = new Map<string, Pair>()
    for (const pair of map.items) {
      const key = isAlias(pair.key) ? pair.key.resolve(this.doc) : pair.key
      if (!isScalar(key) || (typeof key.value !== 'string' && typeof key.value !== 'number')) {
        this.error(key as Node | null, `keys in ${what} must be plain names`)
        continue
      }
      const name = String(key.value)
      if (allowed && !allowed.includes(name)) {
        this.error(key, `unknown field "${name}" in ${what}`, suggest(name, allowed, 'valid fields'))
        continue
      }
      // Duplicate keys are already a YAML error; the first one wins here.
      if (!pairs.has(name)) pairs.set(name, pair)
    }
    return new Fields(this, map, what, pairs)
  }

  string(node: YNode, what: string): string | undefined {
    if (isScalar(node) && typeof node.value === 'string') return node.value
    this.error(node, `${what} must be a string, got ${nodeKind(node)}`)
    return undefined
  }

  /** Like `string`, but numbers and booleans are taken as written (header values, names). */
  text(node: YNode, what: string): string | undefined {
    if (isScalar(node) && ['string', 'number', 'boolean'].includes(typeof node.value)) {
      return typeof node.value === 'string' ? node.value : (node.source ?? String(node.value))
    }
    this.error(node, `${what} must be a string, got ${nodeKind(node)}`)
    return undefined
  }

  integer(node: YNode, what: string, min: number, max: number): number | undefined {
    const v = isScalar(node) ? node.value : undefined
    if (typeof v !== 'number' || !Number.isInteger(v)) {
      this.error(node, `${what} must be an integer, got ${nodeKind(node)}`)
      return undefined
    }
    if (v < min || v > max) {
      this.error(node, `${what} must be between ${min} and ${max}, got ${v}`)
      return undefined
    }
    return v
  }

  boolean(node: YNode, what: string): boolean | undefined {
    if (isScalar(node) && typeof node.value === 'boolean') return node.value
    this.error(node, `${what} must be true or false, got ${nodeKind(node)}`)
    return undefined
  }

  /** A limit of the field table (`model.ts`): durations accept ms integers and strings such as `10s`. */
  limit(node: YNode, what: string, spec: LimitSpec): number | undefined {
    if (!spec.duration) return this.integer(node, what, spec.min, spec.max)
    if (!isScalar(node)) {
      this.error(node, `${what} must be a duration, got ${nodeKind(node)}`, 'e.g. 500ms, 10s, 1m')
      return undefined
    }
    const parsed = parseDuration(node.value)
    if (!parsed.ok) {
      this.error(node, `${what}: ${parsed.error}`, parsed.hint)
      return undefined
    }
    if (parsed.value < spec.min || parsed.value > spec.max) {
      const zero = parsed.value === 0 ? ' (0 is not allowed here)' : ''
      const [min, max, got] = [spec.min, spec.max, parsed.value].map(formatDuration)
      this.error(node, `${what} must be between ${min} and ${max}, got ${got}${zero}`)
      return undefined
    }
    return parsed.value
  }

  /** `key: one` or `key: [one, two]`, for fields that take either. */
  stringList(node: YNode, what: string): Array<{ value: string; node: YNode }> {
    const nodes = isSeq(node) ? this.items(node, what) : [node]
    const out: Array<{ value: string; node: YNode }> = []
    for (const n of nodes) {
      const value = this.string(n, what)
      if (value !== undefined) out.push({ value, node: n })
    }
    return out
  }
}

/** The keys of one mapping, with typed getters that name the field in their messages. */
export class Fields {
  constructor(
    readonly r: DocReader,
    readonly node: YAMLMap,
    readonly what: string,
    private readonly pairs: Map<string, Pair>,
  ) {}

  /** The value node; undefined when the key is absent or null. */
  get(key: string): YNode | undefined {
    return this.r.resolve(this.pairs.get(key)?.value)
  }

  has(key: string): boolean {
    return this.get(key) !== undefined
  }

  /** Present with an explicit null (`admin: null`), which some fields give a meaning. */
  isNull(key: string): boolean {
    const pair = this.pairs.get(key)
    return pair !== undefined && this.r.resolve(pair.value) === undefined
  }

  /** Position of the key itself, else of the mapping. */
  keyLoc(key: string): Loc {
    const pair = this.pairs.get(key)
    return this.r.loc((pair?.key as Node | null | undefined) ?? this.node)
  }

  /** Position of the value, else of the key, else of the mapping. */
  valueLoc(key: string): Loc {
    const v = this.get(key)
    return v ? this.r.loc(v) : this.keyLoc(key)
  }

  keys(): string[] {
    return [...this.pairs.keys()]
  }

  require(key: string): YNode | undefined {
    const v = this.get(key)
    if (v === undefined) this.r.error(this.pairs.has(key) ? this.keyLoc(key) : this.node, `${this.what} is missing required field "${key}"`)
    return v
  }

  str(key: string, required = false): string | undefined {
    const v = required ? this.require(key) : this.get(key)
    return v && this.r.string(v, this.label(key))
  }

  text(key: string): string | undefined {
    const v = this.get(key)
    return v && this.r.text(v, this.label(key))
  }

  int(key: string, min: number, max: number, required = false): number | undefined {
    const v = required ? this.require(key) : this.get(key)
    return v && this.r.integer(v, this.label(key), min, max)
  }

  bool(key: string): boolean | undefined {
    const v = this.get(key)
    return v && this.r.boolean(v, this.label(key))
  }

  limit(key: string, spec: LimitSpec): number | undefined {
    const v = this.get(key)
    return v && this.r.limit(v, this.label(key), spec)
  }

  /** A nested mapping, checked against `allowed` (null = any keys, for Kubernetes objects). */
  fields(key: string, what: string, allowed: readonly string[] | null, required = false): Fields | undefined {
    const v = required ? this.require(key) : this.get(key)
    return v && this.r.fields(v, what, allowed)
  }

  /** Items of a list field; empty when absent. */
  list(key: string, required = false): YNode[] {
    const v = required ? this.require(key) : this.get(key)
    if (!v) return []
    const seq = this.r.seq(v, this.label(key))
    return seq ? this.r.items(seq, this.label(key)) : []
  }

  label(key: string): string {
    return `"${key}" in ${this.what}`
  }
}

export function nodeKind(node: unknown): string {
  if (isMap(node)) return 'a mapping'
  if (isSeq(node)) return 'a list'
  if (isScalar(node)) return describe(node.value)
  return describe(node)
}
