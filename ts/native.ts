/** Loads the napi-rs generated loader (built into `native/` by `npm run build:native`). */
import { createRequire } from 'node:module'
import type * as Binding from '../native/index.cjs'

const require = createRequire(import.meta.url)

export type BindingProxy = Binding.BindingProxy
export type BindingStartInfo = Binding.BindingStartInfo
export type BindingStats = Binding.BindingStats

let loaded: typeof Binding | undefined

export function native(): typeof Binding {
  loaded ??= require('../native/index.cjs') as typeof Binding
  return loaded
}
