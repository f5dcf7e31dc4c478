/**
 * Rate limits from Kubernetes-shaped resources, onto the services they name:
 * - `linkerd.io/v1alpha2` `RateLimiter` (meshproxy's own kind; Linkerd has no such resource):
 *   `spec.limits[]` of `{ service, rate, burst }`, one limit per named Service; meshproxy's
 *   optional `spec.global` (as a native limit's `global`) counts every limit across proxies,
 *   and a limit's own `global` replaces it for that limit (`global: null`: that one stays local);
 * - Linkerd's `policy.linkerd.io/v1alpha1` `HTTPLocalRateLimitPolicy`: `total`, `identity` and
 *   `overrides` on its `targetRef`.
 * They are read with the other resources (`kubernetes.ts`) and applied once every service is
 * built (`applyRateLimits`): a named Service becomes every model service built from it (each of
 * its ports) and a native service of that name.
 */
import type { Loc, DiagnosticSink } from './diagnostics.js'
import { complete } from './fields.js'
import { RATE_LIMIT, type GlobalRateLimitModel, type RateLimitModel, type RateLimitOverrideModel, type ServiceModel } from './model.js'
import { readGlobalRateLimit } from './native.js'
import type { DocReader, Fields } from './yaml-walk.js'

const RPS = { min: 1, max: 1_000_000_000, duration: false }

/** Limits for one named Service. */
export interface ServiceRateLimits {
  /** `RateLimiter "default"`, for messages. */
  source: string
  service: string
  namespace: string
  /** Where the Service is named. */
  loc: Loc
  limits: RateLimitModel[]
}

const limit = (name: string, rate: number, burst: number): RateLimitModel =>
  complete(RATE_LIMIT, { name, rate, burst }) as RateLimitModel

/**
 * A `RateLimiter`'s `spec.limits`: `rate` requests per second, `burst` at once (default: `rate`);
 * each limit global by its own `global`, else by `spec.global`, else local (as without either).
 */
export function readRateLimiter(r: DocReader, root: Fields, name: string, namespace: string, out: ServiceRateLimits[]): void {
  const spec = root.fields('spec', 'RateLimiter spec', ['limits', 'global'], true)
  if (!spec) return
  const source = `RateLimiter "${name}"`
  const global = readGlobal(spec)
  for (const node of spec.list('limits', true)) {
    const f = r.fields(node, `${source} limit`, ['service', 'rate', 'burst', 'global'])
    if (!f) continue
    const service = f.str('service', true)
    const rateNode = f.require('rate')
    const rate = rateNode && r.limit(rateNode, f.label('rate'), RPS)
    const burst = f.has('burst') ? f.limit('burst', RPS) : rate
    const own = f.has('global') || f.isNull('global') ? readGlobal(f) : global
    if (service === undefined || rate === undefined || burst === undefined || own === undefined) continue
    const l = limit(name, rate, burst)
    if (own !== null) l.global = { ...own }
    out.push({ source, service, namespace, loc: f.valueLoc('service'), limits: [l] })
  }
}

/** `global` of a `RateLimiter`'s spec or limit: null when absent or `null`; undefined when invalid (reported). */
function readGlobal(f: Fields): GlobalRateLimitModel | null | undefined {
  if (!f.has('global') || f.isNull('global')) return null
  return readGlobalRateLimit(f) ?? undefined
}

/**
 * Linkerd's `HTTPLocalRateLimitPolicy` (policy.linkerd.io/v1alpha1). Linkerd attaches it to a
 * `Server` (pods selected by label), which meshproxy does not model; meshproxy takes a `targetRef`
 * to a core `Service` (its services are Services) and skips a `Server` target with a warning. As
 * Linkerd's proxy does (governor's `Quota::per_second`), each limit's burst is its
 * requestsPerSecond. `identity` is a bucket per client identity: a limit keyed by the mTLS peer
 * (`key: identity`), where clients without an identity (plaintext) share one bucket, as Linkerd
 * groups unauthenticated clients. `overrides` give the ServiceAccounts of `clientRefs` their own
 * rate: overrides of that limit, by `<name>.<namespace>` (the namespace defaults to the policy's).
 * With overrides but no `identity`, other clients get a per-identity rate of `total` (which the
 * total limit implies anyway), or none when there is no total either.
 */
export function readLocalRateLimitPolicy(r: DocReader, root: Fields, name: string, namespace: string, out: ServiceRateLimits[]): void {
  const spec = root.fields('spec', 'HTTPLocalRateLimitPolicy spec', ['targetRef', 'total', 'identity', 'overrides'], true)
  if (!spec) return
  const source = `HTTPLocalRateLimitPolicy "${name}"`
  const target = spec.fields('targetRef', `${source} targetRef`, ['group', 'kind', 'name', 'namespace'], true)
  if (!target) return
  const kind = target.str('kind', true)
  const group = target.str('group') ?? ''
  const service = target.str('name', true)
  if (kind === undefined || service === undefined) return
  if (kind === 'Server') {
    r.warn(target.valueLoc('kind'), `${source} targets Server "${service}": meshproxy does not model Servers (pods selected by label); skipped`, 'target the Service in front of those pods: targetRef: { group: core, kind: Service, name: … }')
    return
  }
  if (kind !== 'Service' || (group !== '' && group !== 'core')) {
    r.error(target.valueLoc('kind'), `${source}: targetRef ${group ? `${group}/` : ''}${kind} is not supported`, 'valid targets: Service (group "" or core); Linkerd\'s Server is skipped with a warning')
    return
  }
  const rps = (key: string): number | undefined => spec.fields(key, `${source} ${key}`, ['requestsPerSecond'])?.limit('requestsPerSecond', RPS)
  const total = rps('total')
  const identity = rps('identity')
  const limits: RateLimitModel[] = []
  if (total !== undefined) limits.push(limit('total', total, total))
  if (identity !== undefined && total !== undefined && identity > total) r.error(spec.valueLoc('identity'), `${source}: identity.requestsPerSecond (${identity}) is greater than total.requestsPerSecond (${total})`, 'Linkerd requires identity <= total')
  const overrides = readClientOverrides(r, spec, source, namespace, total)
  if (identity !== undefined || overrides.length > 0) {
    const perClient = identity ?? total ?? RPS.max
    const byIdentity = limit('identity', perClient, perClient)
    byIdentity.key = 'identity'
    byIdentity.overrides = overrides
    limits.push(byIdentity)
  }
  if (limits.length === 0) {
    r.warn(r.loc(spec.node), `${source} sets neither total nor identity; it limits nothing`)
    return
  }
  out.push({ source, service, namespace: target.str('namespace') ?? namespace, loc: target.valueLoc('name'), limits })
}

/**
 * Puts each Service's limits on the model services built from it (every port: `origins` maps a
 * model service to the Kubernetes Service it came from) and on a native service of that name. A
 * Service in none is reported as a warning at its name, as an HTTPRoute attached to a missing
 * Service is: the file may hold resources for other tools.
 */
export function applyRateLimits(
  entries: ServiceRateLimits[],
  services: ServiceModel[],
  origins: Map<string, { name: string; namespace: string }>,
  nativeNames: Set<string>,
  sink: DiagnosticSink,
): void {
  for (const e of entries) {
    const targets = services.filter((s) => {
      const o = origins.get(s.name)
      return o ? o.name === e.service && o.namespace === e.namespace : nativeNames.has(s.name) && s.name === e.service
    })
    if (targets.length === 0) {
      sink.warn(e.loc, `${e.source} limits Service "${e.namespace}/${e.service}", which is not in this config; it limits nothing`, 'add the Service (with an Ingress or HTTPRoute that sends to it), or a native service of that name')
      continue
    }
    for (const s of targets) s.rateLimits.push(...e.limits.map((l) => ({ ...l, overrides: [...l.overrides] })))
  }
}

/** An `HTTPLocalRateLimitPolicy`'s `overrides`: each ServiceAccount of `clientRefs` as a `key: identity` override. */
function readClientOverrides(r: DocReader, spec: Fields, source: string, namespace: string, total: number | undefined): RateLimitOverrideModel[] {
  const out: RateLimitOverrideModel[] = []
  for (const node of spec.list('overrides')) {
    const o = r.fields(node, `${source} override`, ['requestsPerSecond', 'clientRefs'])
    if (!o) continue
    const rate = o.limit('requestsPerSecond', RPS)
    if (rate === undefined) {
      o.require('requestsPerSecond')
      continue
    }
    if (total !== undefined && rate > total) r.error(o.valueLoc('requestsPerSecond'), `${source}: an override's requestsPerSecond (${rate}) is greater than total.requestsPerSecond (${total})`, 'Linkerd requires each override <= total')
    const refs = o.list('clientRefs', true)
    for (const ref of refs) {
      const c = r.fields(ref, `${source} clientRef`, ['group', 'kind', 'name', 'namespace'])
      if (!c) continue
      const kind = c.str('kind', true)
      const name = c.str('name', true)
      if (kind === undefined || name === undefined) continue
      if (kind !== 'ServiceAccount') {
        r.error(c.valueLoc('kind'), `${source}: clientRefs kind "${kind}" is not supported`, 'Linkerd supports kind: ServiceAccount only')
        continue
      }
      const ns = c.str('namespace') || namespace
      const value = `${name}.${ns}`
      if (out.some((x) => x.value === value)) {
        r.error(c.valueLoc('name'), `${source}: ServiceAccount ${ns}/${name} is in two overrides`, 'give each client one override')
        continue
      }
      out.push({ value, rate, burst: rate })
    }
  }
  return out
}
