/**
 * `validateModel`: checks an already-normalized `ConfigModel` built in code (by the Proxy
 * constructor's callers) before it crosses to the data plane. Values must already be in the
 * normalized form the loader produces: the data plane does not normalize again, so `/a/` or
 * `GET`-vs-`get` differences would otherwise change routing silently. The structure — fields,
 * types, limits, enum values, normal forms — is checked as the field table (`model.ts`) declares
 * it; then the cross-checks the loader also runs (`semantics.ts`).
 */
import { BALANCER_KINDS, CONFIG, SIMPLE_BALANCER_KINDS, type ConfigModel } from './model.js'
import { isNested, modelEntries, type Field, type Table } from './fields.js'
import { suggest, type Diagnostic } from './diagnostics.js'
import { checkSemantics } from './semantics.js'
import { describe as describeValue, isToken, normalizeHeaderName, type Parsed } from './values.js'

type Obj = Record<string, unknown>

class Checker {
  readonly diags: Diagnostic[] = []

  error(path: string, message: string, hint?: string): void {
    const d: Diagnostic = { severity: 'error', file: '<object>', line: 0, column: 0, message: `${path}: ${message}` }
    if (hint) d.hint = hint
    this.diags.push(d)
  }

  /** A plain object with exactly `required` keys (plus `optional` ones); undefined if not an object. */
  object(v: unknown, path: string, required: readonly string[], optional: readonly string[] = []): Obj | undefined {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      this.error(path, `expected an object, got ${describe(v)}`)
      return undefined
    }
    const o = v as Obj
    const allowed = [...required, ...optional]
    for (const key of Object.keys(o)) {
      if (!allowed.includes(key)) this.error(`${path}.${key}`, 'unknown field', suggest(key, allowed, 'valid fields'))
    }
    for (const key of required) {
      if (o[key] === undefined) this.error(`${path}.${key}`, 'missing required field')
    }
    return o
  }

  array(v: unknown, path: string): unknown[] {
    if (Array.isArray(v)) return v
    if (v !== undefined) this.error(path, `expected an array, got ${describe(v)}`)
    return []
  }

  /** An optional boolean: absent is the caller's business (a required key is `object`'s). */
  boolean(v: unknown, path: string): void {
    if (v !== undefined && typeof v !== 'boolean') this.error(path, `expected true or false, got ${describe(v)}`)
  }

  string(v: unknown, path: string): string | undefined {
    if (typeof v === 'string') return v
    if (v !== undefined) this.error(path, `expected a string, got ${describe(v)}`)
    return undefined
  }

  int(v: unknown, path: string, min: number, max: number): void {
    if (v === undefined) return
    if (typeof v !== 'number' || !Number.isInteger(v)) this.error(path, `expected an integer, got ${describe(v)}`)
    else if (v < min || v > max) this.error(path, `must be between ${min} and ${max}, got ${v}`)
  }

  /** One of the `valid` strings (`noun` names them in the hint); absent is left to the required-field check. */
  oneOf(v: unknown, path: string, valid: readonly string[], noun: string): void {
    if (v === undefined || valid.includes(v as string)) return
    const hint = typeof v === 'string' ? suggest(v, valid, `valid ${noun}`) : `valid ${noun}: ${valid.join(', ')}`
    this.error(path, `expected one of ${valid.map((p) => `"${p}"`).join(', ')}, got ${describe(v)}`, hint)
  }

  /** The value must parse and already be in normalized form. */
  normalized(v: unknown, path: string, parse: (s: string) => Parsed<string>): void {
    const s = this.string(v, path)
    if (s === undefined) return
    const parsed = parse(s)
    if (!parsed.ok) this.error(path, parsed.error, parsed.hint)
    else if (parsed.value !== s) this.error(path, `"${s}" is not normalized`, `use "${parsed.value}"`)
  }
}

/** Like the YAML loader's wording, but in JavaScript terms. */
function describe(v: unknown): string {
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'object' && v !== null) return 'an object'
  return describeValue(v)
}

/**
 * Every structural problem of `model` as error diagnostics (file `<object>`, no position,
 * messages starting with the JSON path such as `services[1].endpoints[0].weight`), followed by
 * the cross-checks the loader also runs. Empty means valid. Warnings are never returned.
 */
export function validateModel(model: unknown): Diagnostic[] {
  const c = new Checker()
  if (!checkObject(c, model, '', CONFIG)) return c.diags
  // Cross-checks assume the structure holds; on a broken one they would only add noise.
  if (c.diags.length === 0) {
    checkSemantics(model as ConfigModel, (target, message, hint) => c.error(target.path, message, hint))
  }
  return c.diags
}

/** Checks of the custom fields of the table (`CustomField.name`). */
const CUSTOM_CHECKS: Record<string, (c: Checker, v: unknown, path: string) => void> = {
  Balancer: checkBalancer,
}

const join = (path: string, key: string): string => (path === '' ? key : `${path}.${key}`)

/**
 * An object of `table`: exactly its fields, each checked by its declaration. An object's own
 * values come before what is nested in it, so a listener's problems are listed before its
 * routes'. `path` '' is the whole config. Returns false when `v` is not an object at all.
 */
function checkObject(c: Checker, v: unknown, path: string, table: Table): boolean {
  const fields = modelEntries(table)
  const o = c.object(v, path || 'config', fields.map(([key]) => key))
  if (!o) return false
  for (const nestedFirst of [false, true]) {
    for (const [key, field] of fields) {
      if (isNested(field) === nestedFirst) checkValue(c, o[key], join(path, key), field, o)
    }
  }
  return true
}

function checkValue(c: Checker, v: unknown, path: string, field: Field, parent: Obj): void {
  // A missing field is reported by checkObject.
  if (v === undefined) return
  switch (field.kind) {
    case 'string':
      if (field.nullable && v === null) return
      if (field.nullable && typeof v !== 'string') c.error(path, `expected ${field.noun ?? 'a string'} or null, got ${describe(v)}`)
      else c.normalized(v, path, (s) => field.normalize(s, parent))
      return
    case 'int':
      return c.int(v, path, field.min, field.max)
    case 'boolean':
      return c.boolean(v, path)
    case 'enum':
      return c.oneOf(v, path, field.values, field.noun)
    case 'object':
      if (field.nullable && v === null) return
      checkObject(c, v, path, field.table)
      return
    case 'list':
      c.array(v, path).forEach((item, i) => checkValue(c, item, `${path}[${i}]`, field.items, parent))
      return
    case 'custom': {
      const check = CUSTOM_CHECKS[field.name]
      if (!check) throw new Error(`no check for the custom field ${field.name}`)
      return check(c, v, path)
    }
    case 'yaml-only':
      return
  }
}

function checkBalancer(c: Checker, v: unknown, path: string): void {
  const b = c.object(v, path, ['kind'], ['header', 'cookie', 'source'])
  if (!b) return
  const sources = ['header', 'cookie', 'source'].filter((k) => b[k] !== undefined)
  if ((SIMPLE_BALANCER_KINDS as readonly unknown[]).includes(b.kind)) {
    if (sources.length > 0) c.error(path, `${b.kind} balancer takes no ${sources.join('/')}`, 'key sources belong to kind "hash"')
    return
  }
  if (b.kind !== 'hash') {
    c.error(`${path}.kind`, `unknown balancer kind ${typeof b.kind === 'string' ? `"${b.kind}"` : describe(b.kind)}`, typeof b.kind === 'string' ? suggest(b.kind, BALANCER_KINDS) : undefined)
    return
  }
  if (sources.length !== 1) {
    c.error(path, `hash balancer needs exactly one key source, got ${sources.length}`, 'set one of header, cookie, source: true')
    return
  }
  if (b.header !== undefined) c.normalized(b.header, `${path}.header`, normalizeHeaderName)
  if (b.cookie !== undefined) {
    const cookie = c.string(b.cookie, `${path}.cookie`)
    if (cookie !== undefined && !isToken(cookie)) c.error(`${path}.cookie`, `"${cookie}" is not a valid cookie name`)
  }
  if (b.source !== undefined && b.source !== true) c.error(`${path}.source`, `expected true, got ${describe(b.source)}`)
}
