/**
 * The Rego policies a config attaches, compiled by the data plane's own compiler (regorus, through
 * the native addon) for `meshproxy check`: one compiler, no Rego in JavaScript. A policy that does
 * not compile is a diagnostic at its `.rego` file's line and column.
 */
import { native } from '../native.js'
import type { Diagnostic } from './diagnostics.js'
import type { ConfigModel, PolicyModel } from './model.js'

/** Every policy of the model (routes' and services'), each once. */
export function policiesOf(model: ConfigModel): PolicyModel[] {
  const all = [...model.listeners.flatMap((l) => l.routes.flatMap((r) => r.policies)), ...model.services.flatMap((s) => s.policies)]
  const seen = new Set<string>()
  return all.filter((p) => {
    const key = `${p.file}\0${p.rule}`
    if (seen.has(key)) return false
    seen.add(key)
    return true
  })
}

/** The problems of the model's policies, as the data plane would find them at apply. */
export function checkPolicies(model: ConfigModel): Diagnostic[] {
  const out: Diagnostic[] = []
  for (const p of policiesOf(model)) {
    const problem = native().checkPolicy(p.file, p.source, p.rule)
    if (problem) {
      out.push({ severity: 'error', file: problem.file, line: problem.line, column: problem.column, message: `Rego: ${problem.message}` })
    }
  }
  return out
}
