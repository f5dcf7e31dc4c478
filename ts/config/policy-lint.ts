/**
 * `meshproxy check`'s policy diagnostics (warnings): routes that can never match because another
 * route of the listener always wins, and authorization rules that can never apply or change
 * nothing. Each finding is certain, never a guess: a route is reported only when another one
 * that the routing table tries first in the same host group matches every request it matches,
 * and a rule only when an earlier rule matches every request it matches (or when nothing after
 * it decides differently from it). Conditions whose overlap cannot be decided exactly are
 * taken as distinguishing, so they never produce a finding.
 */
import type { AuthorizationAction, AuthorizationRuleModel, ListenerModel, PathMatch, RouteModel } from './model.js'
import { cidrsCover } from './cidr.js'
import type { Report } from './semantics.js'

/** The path's segments, as the routing table splits a normalized path. */
const segments = (p: PathMatch): string[] => p.value.split('/').filter((s) => s !== '')

/** Whether every path `inner` matches is matched by `outer` (Prefix on whole segments, Exact). */
export function pathCovers(outer: PathMatch, inner: PathMatch): boolean {
  if (outer.type === 'Exact') return inner.type === 'Exact' && inner.value === outer.value
  const o = segments(outer)
  const i = segments(inner)
  return o.length <= i.length && o.every((s, k) => s === i[k])
}

type Pair = { name: string; value: string }
/** Every condition of `outer` is also one of `inner`'s, so whatever satisfies `inner` satisfies `outer`. */
const pairsCover = (outer: readonly Pair[], inner: readonly Pair[]): boolean =>
  outer.every((o) => inner.some((i) => i.name === o.name && i.value === o.value))
/** An empty list is any value; a non-empty one covers only a non-empty subset of itself. */
const listCovers = (outer: readonly string[], inner: readonly string[]): boolean =>
  outer.length === 0 || (inner.length > 0 && inner.every((x) => outer.includes(x)))

/** Whether route `a` matches every request route `b` matches (hosts aside: same group). */
function routeMatchCovers(a: RouteModel, b: RouteModel): boolean {
  return (
    pathCovers(a.path, b.path) &&
    listCovers(a.methods, b.methods) &&
    pairsCover(a.headers, b.headers) &&
    pairsCover(a.queryParams, b.queryParams) &&
    pairsCover(a.cookies, b.cookies)
  )
}

/** The routing table's order within a host group (README "Routing precedence"): smaller first. */
function precedenceKey(r: RouteModel, index: number): number[] {
  return [
    r.path.type === 'Exact' ? 0 : 1,
    -segments(r.path).length,
    r.methods.length > 0 ? 0 : 1,
    -(r.headers.length + r.cookies.length),
    -r.queryParams.length,
    index,
  ]
}

function before(a: number[], b: number[]): boolean {
  for (let k = 0; k < a.length; k++) {
    const x = a[k] ?? 0
    const y = b[k] ?? 0
    if (x !== y) return x < y
  }
  return false
}

/** The host groups a route is in: each of its hosts (exact or `*.` wildcard), else the group without a host. */
const groupsOf = (r: RouteModel): string[] => (r.hosts.length === 0 ? [''] : [...new Set(r.hosts)])

/** A key that is equal for two routes with the same match (reported as such by `lintModel`). */
export function matchKey(r: RouteModel): string {
  return JSON.stringify([
    [...r.hosts].sort(),
    r.path,
    [...r.methods].sort(),
    [...r.headers].map((h) => `${h.name}=${h.value}`).sort(),
    [...r.queryParams].map((q) => `${q.name}=${q.value}`).sort(),
    [...r.cookies].map((c) => `${c.name}=${c.value}`).sort(),
  ])
}

/**
 * Routes of `listener` that never serve a request: in every host group the route is in, another
 * route the table tries before it matches every request it matches. A request goes to the first
 * group with a matching route, so a route is only compared with routes of its own groups.
 */
export function lintShadowedRoutes(listener: ListenerModel, li: number, warn: Report): void {
  const routes = listener.routes
  const keys = routes.map((r, i) => precedenceKey(r, i))
  routes.forEach((b, bi) => {
    const winners: string[] = []
    for (const group of groupsOf(b)) {
      const winner = routes.find((a, ai) => ai !== bi && groupsOf(a).includes(group) && before(keys[ai] ?? [], keys[bi] ?? []) && routeMatchCovers(a, b))
      if (!winner) return
      // Two routes with the same match are reported once, as such, by lintModel.
      if (matchKey(winner) === matchKey(b)) return
      if (!winners.includes(winner.name)) winners.push(winner.name)
    }
    const by = winners.map((n) => `"${n}"`).join(' and ')
    warn(
      { obj: b, path: `listeners[${li}].routes[${bi}]` },
      `route "${b.name}" can never match on listener "${listener.name}": route ${by} comes first in the routing precedence and matches every request it matches`,
      'give it a more specific match (an Exact or longer path, a method, header, query or cookie match) or remove it',
    )
  })
}

/** Whether rule `a` matches every request rule `b` matches. */
export function ruleCovers(a: AuthorizationRuleModel, b: AuthorizationRuleModel): boolean {
  const networks = a.networks.length === 0 || (b.networks.length > 0 && cidrsCover(a.networks, b.networks))
  return networks && listCovers(a.methods, b.methods) && pathCovers(a.path, b.path) && pairsCover(a.headers, b.headers)
}

interface Placed {
  rule: AuthorizationRuleModel
  /** How the rule is named in messages, and its JSON path. */
  label: string
  path: string
}

/**
 * Rules of `list` (in evaluation order) that cannot change a decision: one that an earlier rule
 * covers (it never applies: a contradiction when their actions differ, else redundant), and one
 * that decides as `default` with no later rule deciding otherwise. `report` is false for the
 * rules another call reports (a listener's rules, checked on their own before the routes').
 */
function lintRules(list: Placed[], reported: (p: Placed) => boolean, defaultAction: AuthorizationAction, where: string, warn: Report): void {
  list.forEach((p, j) => {
    if (!reported(p)) return
    const earlier = list.slice(0, j).find((q) => ruleCovers(q.rule, p.rule))
    if (earlier) {
      const contradicts = earlier.rule.action !== p.rule.action
      warn(
        { obj: p.rule, path: p.path },
        contradicts
          ? `${p.label} (${p.rule.action}) can never apply ${where}: ${earlier.label} ${earlier.rule.action === 'allow' ? 'allows' : 'denies'} every request it matches first`
          : `${p.label} is redundant ${where}: ${earlier.label} already ${p.rule.action === 'allow' ? 'allows' : 'denies'} every request it matches`,
        contradicts ? 'first match wins: move it before that rule, narrow that rule, or remove this one' : 'remove it',
      )
      return
    }
    if (p.rule.action === defaultAction && list.slice(j + 1).every((q) => q.rule.action === defaultAction)) {
      warn(
        { obj: p.rule, path: p.path },
        `${p.label} is redundant ${where}: it ${defaultAction === 'allow' ? 'allows' : 'denies'} what the default (${defaultAction}) would, and no rule after it decides otherwise`,
        'remove it',
      )
    }
  })
}

/**
 * A listener's authorization rules on their own (as every route without rules sees them), then
 * each route's rules followed by the listener's (a route's rules are tried first).
 */
export function lintAuthorization(listener: ListenerModel, li: number, warn: Report): void {
  const authz = listener.authorization
  const listenerRules: Placed[] = authz.rules.map((rule, k) => ({
    rule,
    label: `listener "${listener.name}" authorization rule ${k + 1}`,
    path: `listeners[${li}].authorization.rules[${k}]`,
  }))
  lintRules(listenerRules, () => true, authz.default, `on listener "${listener.name}"`, warn)
  listener.routes.forEach((route, ri) => {
    if (route.authorization.length === 0) return
    const own: Placed[] = route.authorization.map((rule, k) => ({
      rule,
      label: `route "${route.name}" authorization rule ${k + 1}`,
      path: `listeners[${li}].routes[${ri}].authorization[${k}]`,
    }))
    lintRules([...own, ...listenerRules], (p) => own.includes(p), authz.default, `on route "${route.name}"`, warn)
  })
}
