/**
 * The parts of the `yaml` library the loader uses, loaded on first use. Loading it costs about
 * 8 MB of RSS in a Node process (measured: 42.7 → 50.7 MB), a large share of a sidecar's
 * footprint; `meshproxy run --to …` and library users who build the model in code never parse
 * YAML and should not pay for it. Every call here happens while a YAML text is being loaded or
 * a policy (`meshPolicy()`, which goes through the YAML reader) is being built.
 */
import { createRequire } from 'node:module'
import type * as Yaml from 'yaml'
import type { Alias, Document, LineCounter, ParseOptions, DocumentOptions, SchemaOptions, Scalar, YAMLMap, YAMLSeq } from 'yaml'

let lib: typeof Yaml | undefined
function yaml(): typeof Yaml {
  lib ??= createRequire(import.meta.url)('yaml') as typeof Yaml
  return lib
}

export function isMap(node: unknown): node is YAMLMap {
  return yaml().isMap(node)
}
export function isSeq(node: unknown): node is YAMLSeq {
  return yaml().isSeq(node)
}
export function isScalar(node: unknown): node is Scalar {
  return yaml().isScalar(node)
}
export function isAlias(node: unknown): node is Alias {
  return yaml().isAlias(node)
}
export function newLineCounter(): LineCounter {
  return new (yaml().LineCounter)()
}
export function parseAllDocuments(text: string, options: ParseOptions & DocumentOptions & SchemaOptions): Document.Parsed[] {
  // An empty stream is an EmptyStream: an empty array with an `empty` flag.
  return yaml().parseAllDocuments(text, options) as Document.Parsed[]
}

/** YAML text of a plain value (a policy's native form). */
export function stringify(value: unknown, options: DocumentOptions & SchemaOptions & Yaml.ToStringOptions & Yaml.CreateNodeOptions): string {
  return yaml().stringify(value, options)
}
