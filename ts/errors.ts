/**
 * One error vocabulary from Rust to the CLI: every error meshproxy raises is a `MeshProxyError`
 * with a stable `code` (`MESHPROXY_INVALID_CONFIG`, `MESHPROXY_BIND_FAILED`, …).
 */
import type { Diagnostic } from './config/index.js'

export type MeshProxyErrorCode =
  | 'MESHPROXY_INVALID_CONFIG'
  | 'MESHPROXY_BIND_FAILED'
  | 'MESHPROXY_NOT_RUNNING'
  | 'MESHPROXY_ALREADY_RUNNING'
  | 'MESHPROXY_CLOSED'
  | 'MESHPROXY_INTERNAL'
  | 'MESHPROXY_TLS_INVALID'
  | 'MESHPROXY_IDENTITY_INVALID'
  | 'MESHPROXY_IDENTITY_INVALID'
  | 'MESHPROXY_IDENTITY_EXISTS'
  | 'MESHPROXY_IDENTITY_IO'
  | 'MESHPROXY_IDENTITY_BAD_MATERIAL'
  | 'MESHPROXY_IDENTITY_ANCHOR_EXPIRED'

const KIND = Symbol.for('meshproxy.error')

export class MeshProxyError extends Error {
  readonly code: MeshProxyErrorCode
  /** For `MESHPROXY_INVALID_CONFIG`: every problem found. */
  readonly diagnostics: Diagnostic[]

  constructor(code: MeshProxyErrorCode, message: string, diagnostics: Diagnostic[] = [], options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'MeshProxyError'
    this.code = code
    this.diagnostics = diagnostics
    Object.defineProperty(this, KIND, { value: true })
  }

  /** `instanceof` that also holds across two copies of the package (as undici does). */
  static [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[KIND] === true
  }
}

/** The native binding reports `[CODE] message`; turn that back into a typed error. */
export function fromNative(err: unknown): MeshProxyError {
  if (err instanceof MeshProxyError) return err
  const message = err instanceof Error ? err.message : String(err)
  const m = /^\[(MESHPROXY_[A-Z_]+)\] ([\s\S]*)$/.exec(message)
  if (m) return new MeshProxyError(m[1] as MeshProxyErrorCode, m[2] ?? '', [], { cause: err })
  return new MeshProxyError('MESHPROXY_INTERNAL', message, [], { cause: err })
}
