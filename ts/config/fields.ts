/**
 * The vocabulary of the config field table (`model.ts`): what a field can be, and what is derived
 * from a table here — the TypeScript type of a model object (`ModelOf`), a model object with its
 * defaults filled in (`complete`), the keys of its native YAML form (`yamlEntries`). The
 * validator (`validate.ts`), the YAML reader (`native.ts`) and the JSON Schemas
 * (`json-schema.ts`) walk the same tables, so a field declared once is checked, read and
 * described the same way everywhere.
 */
import type { Parsed } from './values.js'

export type JsonSchema = { [keyword: string]: unknown }

/**
 * Checks a string and gives its normalized form (the one the model holds). `parent` is the object
 * holding the string: a path's normalization depends on its match type.
 */
export type Normalizer = (value: string, parent: Record<string, unknown>) => Parsed<string>

/** How a field is written in the native YAML form, where that is not simply its model name. */
export interface YamlForm {
  /** The key; by default the model name, a duration without its `Ms` (`idleTimeoutMs` → `idleTimeout`). */
  key?: string
  /** Must be written wherever its object is (a service's name, a route's service, an endpoint's address). */
  required?: boolean
  /** Must be written unless one of these other keys is (a route's `service`, unless it has `backends` or a `redirect`). */
  requiredUnless?: string[]
  /** The object may be written as just this field's value (`127.0.0.1:8080` for an endpoint). */
  shorthand?: string
  /** The YAML form's schema, where YAML accepts other spellings than the model (a custom field's). */
  schema?: JsonSchema
}

interface FieldCommon {
  /** What the field means; the description in both JSON Schemas. */
  doc: string
  /** `false`: not written under a key of its own; a YAML-only field of the same table is read into it. */
  yaml?: YamlForm | false
}

export interface StringField extends FieldCommon {
  kind: 'string'
  normalize: Normalizer
  nullable?: boolean
  /** What the string is, for "expected a service name or null" (nullable strings). */
  noun?: string
  default?: string | null
}

export interface IntField extends FieldCommon {
  kind: 'int'
  min: number
  max: number
  /** Milliseconds; YAML also takes durations such as `10s`. */
  duration: boolean
  default?: number
}

export interface BooleanField extends FieldCommon {
  kind: 'boolean'
  default?: boolean
}

export interface EnumField<V extends string = string> extends FieldCommon {
  kind: 'enum'
  /** The default first, by convention. */
  values: readonly V[]
  /** Plural, for hints: "valid protocols: http, tcp". */
  noun: string
  default?: V
}

export interface ObjectField<T extends Table = Table> extends FieldCommon {
  kind: 'object'
  table: T
  nullable?: boolean
  /** `null`: absent means none (a nullable object whose default is not its fields' defaults). */
  default?: null
}

export interface ListField<I extends Field = Field> extends FieldCommon {
  kind: 'list'
  items: I
}

/**
 * A value whose shape the table cannot spell (the balancer, a tagged union): its model schema is
 * written out, and `validate.ts` checks it with the function registered under `name`.
 */
export interface CustomField<T = unknown> extends FieldCommon {
  kind: 'custom'
  name: string
  schema: JsonSchema
  default: T
}

/** A key of the YAML form only, read into other fields (the route's `match`, a document's `kind`). */
export interface YamlOnlyField extends FieldCommon {
  kind: 'yaml-only'
  schema: JsonSchema
}

export type Field = StringField | IntField | BooleanField | EnumField | ObjectField | ListField | CustomField | YamlOnlyField
export type ModelField = Exclude<Field, YamlOnlyField>

/** One model object: its fields in the order the model and its messages list them. */
export interface Table<F extends Record<string, Field> = Record<string, Field>> {
  /** The model type's name without `Model` (`Listener`), for schema titles. */
  name: string
  doc: string
  fields: F
}

type ValueOf<F> = F extends { kind: 'string'; nullable: true }
  ? string | null
  : F extends { kind: 'string' }
    ? string
    : F extends { kind: 'int' }
      ? number
      : F extends { kind: 'boolean' }
        ? boolean
        : F extends EnumField<infer V>
          ? V
          : F extends { kind: 'object'; table: infer T extends Table; nullable: true }
            ? ModelOf<T> | null
            : F extends { kind: 'object'; table: infer T extends Table }
              ? ModelOf<T>
              : F extends { kind: 'list'; items: infer I }
                ? ValueOf<I>[]
                : F extends CustomField<infer T>
                  ? T
                  : never

/** The model object a table describes: one property per field, YAML-only keys left out. */
export type ModelOf<T extends Table> = {
  -readonly [K in keyof T['fields'] as T['fields'][K] extends YamlOnlyField ? never : K]: ValueOf<T['fields'][K]>
}

export const U32_MAX = 4294967295

export const table = <F extends Record<string, Field>>(name: string, doc: string, fields: F): Table<F> => ({ name, doc, fields })

type More<F extends Field, K extends keyof F> = Partial<Pick<F, K | 'yaml'>>

export const text = (doc: string, normalize: Normalizer, more: More<StringField, 'default'> = {}): StringField & { nullable?: false } => ({
  kind: 'string',
  doc,
  normalize,
  ...more,
})

export const nullableText = (doc: string, normalize: Normalizer, noun: string, more: More<StringField, 'default'> = {}): StringField & { nullable: true } => ({
  kind: 'string',
  doc,
  normalize,
  nullable: true,
  noun,
  ...more,
})

/** A whole number up to u32::MAX unless `max` says less, so it fits the integer type the Rust side reads. */
export const count = (doc: string, limits: { min: number; max?: number; default?: number }, more: More<IntField, never> = {}): IntField => ({
  kind: 'int',
  doc,
  duration: false,
  max: U32_MAX,
  ...limits,
  ...more,
})

/** Milliseconds, up to u32::MAX; YAML also takes `500ms`, `10s`, `1m30s`. */
export const duration = (doc: string, limits: { min: number; max?: number; default?: number }, more: More<IntField, never> = {}): IntField => ({
  kind: 'int',
  doc,
  duration: true,
  max: U32_MAX,
  ...limits,
  ...more,
})

export const flag = (doc: string, defaultValue: boolean): BooleanField => ({ kind: 'boolean', doc, default: defaultValue })

export const oneOf = <V extends string>(values: readonly V[], noun: string, doc: string, more: More<EnumField<NoInfer<V>>, 'default'> = {}): EnumField<V> => ({
  kind: 'enum',
  doc,
  values,
  noun,
  ...more,
})

export const nested = <T extends Table>(t: T, more: Partial<Pick<ObjectField, 'doc' | 'yaml'>> = {}): ObjectField<T> & { nullable?: false } => ({
  kind: 'object',
  doc: t.doc,
  table: t,
  ...more,
})

export const nullableNested = <T extends Table>(t: T, more: Partial<Pick<ObjectField, 'doc' | 'yaml' | 'default'>> = {}): ObjectField<T> & { nullable: true } => ({
  kind: 'object',
  doc: t.doc,
  table: t,
  nullable: true,
  ...more,
})

export const listOf = <I extends Field>(items: I, doc: string, more: Pick<FieldCommon, 'yaml'> = {}): ListField<I> => ({ kind: 'list', doc, items, ...more })

export const custom = <T>(name: string, doc: string, spec: { schema: JsonSchema; default: T; yaml: YamlForm }): CustomField<T> => ({
  kind: 'custom',
  name,
  doc,
  ...spec,
})

export const yamlOnly = (doc: string, schema: JsonSchema): YamlOnlyField => ({ kind: 'yaml-only', doc, schema })

/** The fields that are part of the model, in table order. */
export function modelEntries(t: Table): Array<[string, ModelField]> {
  return Object.entries(t.fields).filter((e): e is [string, ModelField] => e[1].kind !== 'yaml-only')
}

/** A list of objects, an object or a custom value: checked after an object's own values. */
export function isNested(f: Field): boolean {
  return f.kind === 'object' || f.kind === 'custom' || (f.kind === 'list' && isNested(f.items))
}

/** The key a field is written under in YAML. */
export function yamlKey(name: string, f: Field): string {
  if (f.yaml && f.yaml.key !== undefined) return f.yaml.key
  return f.kind === 'int' && f.duration && name.endsWith('Ms') ? name.slice(0, -2) : name
}

/** The keys of a table's YAML form with their fields, in table order (fields with `yaml: false` left out). */
export function yamlEntries(t: Table): Array<[string, Field]> {
  return Object.entries(t.fields)
    .filter(([, f]) => f.yaml !== false)
    .map(([name, f]) => [yamlKey(name, f), f])
}

/**
 * The value a field takes when nothing sets it: its `default`; for an object, one with every
 * field's default (when each has one); for a list, an empty list. A fresh copy each time, so
 * changing one model object never changes another. undefined = no default.
 */
export function defaultOf(f: Field): unknown {
  switch (f.kind) {
    case 'object': {
      if (f.default === null) return null
      const out: Record<string, unknown> = {}
      for (const [key, sub] of modelEntries(f.table)) {
        out[key] = defaultOf(sub)
        if (out[key] === undefined) return undefined
      }
      return out
    }
    case 'list':
      return []
    case 'custom':
      return structuredClone(f.default)
    case 'yaml-only':
      return undefined
    default:
      return f.default
  }
}

/**
 * A model object from `given` plus the table's default for every field not given, in table order.
 * A field with neither is a mistake of the caller's, not of a config, so it throws.
 */
export function complete<T extends Table>(t: T, given: Partial<ModelOf<T>>): ModelOf<T> {
  const out: Record<string, unknown> = {}
  const values = given as Record<string, unknown>
  for (const [key, f] of modelEntries(t)) {
    out[key] = key in values ? values[key] : defaultOf(f)
    if (out[key] === undefined) throw new Error(`${t.name}.${key} has no default and was not given`)
  }
  return out as ModelOf<T>
}
