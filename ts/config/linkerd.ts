/**
 * Linkerd's policy annotations on a Kubernetes Service, read as Linkerd's proxy reads them, so
 * manifests written for Linkerd keep their meaning: failure accrual
 * (`balancer.linkerd.io/failure-accrual*`), retries (`retry.linkerd.io/*`) and the request,
 * response and idle timeouts (`timeout.linkerd.io/request`, `timeout.linkerd.io/response`,
 * `timeout.linkerd.io/idle`). Every route to the Service gets its retries and timeouts, as in
 * Linkerd. Other `*.linkerd.io` annotations have no meaning here: each is reported once with a
 * warning (`meshproxy check` shows them), never an error.
 */
import { complete } from './fields.js'
import { FAILURE_ACCRUAL, RETRY, type FailureAccrualModel, type RetryModel } from './model.js'
import { parseDuration, parseGrpcStatusSet, parseStatusSet, type Parsed } from './values.js'
import type { Fields } from './yaml-walk.js'

/** What a Service's Linkerd annotations ask of the routes and the service built from it. */
export interface LinkerdPolicy {
  failureAccrual?: FailureAccrualModel
  retry?: RetryModel
  requestTimeoutMs?: number
  /** Each request to a backend (an HTTPRoute's `timeouts.backendRequest`). */
  responseTimeoutMs?: number
  /** The route's `idleTimeout`: how long a stream may go without bytes moving. */
  idleTimeoutMs?: number
}

const ACCRUAL = 'balancer.linkerd.io/failure-accrual'
const CONSECUTIVE = `${ACCRUAL}-consecutive-`

/**
 * Reads the Linkerd annotations of Service `name` from its `annotations` (absent = none). A bad
 * value of a known annotation is an error with what would be valid; an unknown `*.linkerd.io`
 * one a warning.
 */
export function readLinkerdAnnotations(annotations: Fields | undefined, name: string, kind: 'Service' | 'HTTPRoute' = 'Service'): LinkerdPolicy {
  const out: LinkerdPolicy = {}
  if (!annotations) return out
  const r = annotations.r
  const value = <T>(key: string, parse: (s: string) => Parsed<T>): T | undefined => {
    const node = annotations.get(key)
    const text = node && r.text(node, `annotation ${key}`)
    return node && text !== undefined ? r.check(node, `annotation ${key}`, parse(text)) : undefined
  }
  const duration = (s: string): Parsed<number> => parseDuration(s)
  const integer = (min: number, max: number) => (s: string): Parsed<number> =>
    /^\d+$/.test(s.trim()) && Number(s) >= min && Number(s) <= max
      ? { ok: true, value: Number(s) }
      : { ok: false, error: `"${s}" is not a whole number between ${min} and ${max}` }

  const accrual = value(ACCRUAL, (s): Parsed<string> =>
    s === 'consecutive' ? { ok: true, value: s } : { ok: false, error: `"${s}" is not a failure-accrual kind`, hint: 'the only kind is "consecutive"' },
  )
  if (accrual !== undefined && kind !== 'Service') {
    r.warn(annotations.keyLoc(ACCRUAL), `${kind} "${name}": ${ACCRUAL} applies to a Service; ignored here`, 'annotate the Service')
  } else if (accrual !== undefined) {
    const a = complete(FAILURE_ACCRUAL, { consecutiveFailures: 7 })
    a.consecutiveFailures = value(`${CONSECUTIVE}max-failures`, integer(1, 1000)) ?? a.consecutiveFailures
    a.minPenaltyMs = value(`${CONSECUTIVE}min-penalty`, duration) ?? a.minPenaltyMs
    a.maxPenaltyMs = value(`${CONSECUTIVE}max-penalty`, duration) ?? a.maxPenaltyMs
    const jitter = value(`${CONSECUTIVE}jitter-ratio`, (s): Parsed<number> => {
      const n = Number(s)
      return s.trim() !== '' && Number.isFinite(n) && n >= 0 && n <= 100
        ? { ok: true, value: n }
        : { ok: false, error: `"${s}" is not a jitter ratio`, hint: 'a number such as 0.5' }
    })
    // meshproxy's jitter shortens a penalty by up to a percentage of it; Linkerd's ratio is the
    // same share, capped at the whole penalty.
    if (jitter !== undefined) a.jitterPercent = Math.min(100, Math.round(jitter * 100))
    out.failureAccrual = a
  }

  const http = value('retry.linkerd.io/http', parseStatusSet)
  const grpc = value('retry.linkerd.io/grpc', parseGrpcStatusSet)
  const limit = value('retry.linkerd.io/limit', integer(1, 10))
  const timeout = value('retry.linkerd.io/timeout', duration)
  // Linkerd retries only what `http` or `grpc` names; the limit and timeout alone enable nothing.
  if (http !== undefined || grpc !== undefined) {
    const retry = complete(RETRY, { http: http ?? '', grpc: grpc ?? '' })
    if (limit !== undefined) retry.limit = limit
    if (timeout !== undefined) retry.timeoutMs = timeout
    out.retry = retry
  } else if (limit !== undefined || timeout !== undefined) {
    const key = limit !== undefined ? 'retry.linkerd.io/limit' : 'retry.linkerd.io/timeout'
    r.warn(annotations.keyLoc(key), `${kind} "${name}": ${key} without retry.linkerd.io/http or retry.linkerd.io/grpc retries nothing`, 'add retry.linkerd.io/http: 5xx (or grpc) to say what is retried')
  }
  const request = value('timeout.linkerd.io/request', duration)
  if (request !== undefined) out.requestTimeoutMs = request
  const response = value('timeout.linkerd.io/response', duration)
  if (response !== undefined) out.responseTimeoutMs = response
  const idle = value('timeout.linkerd.io/idle', duration)
  if (idle !== undefined) out.idleTimeoutMs = idle

  const consecutive = ['max-failures', 'min-penalty', 'max-penalty', 'jitter-ratio'].map((k) => CONSECUTIVE + k)
  const known = new Set([ACCRUAL, ...consecutive, 'retry.linkerd.io/http', 'retry.linkerd.io/grpc', 'retry.linkerd.io/limit', 'retry.linkerd.io/timeout', 'timeout.linkerd.io/request', 'timeout.linkerd.io/response', 'timeout.linkerd.io/idle'])
  for (const key of annotations.keys()) {
    if (!/(^|\.)linkerd\.io\//.test(key)) continue
    if (accrual === undefined && consecutive.includes(key)) {
      r.warn(annotations.keyLoc(key), `${kind} "${name}": ${key} has no effect without ${ACCRUAL}: consecutive`)
    } else if (!known.has(key)) {
      r.warn(annotations.keyLoc(key), `${kind} "${name}": annotation ${key} is ignored (meshproxy does not use it)`)
    }
  }
  return out
}
