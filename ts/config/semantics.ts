/**
 * Checks that need the whole model: names that must be unique, references from routes and
 * listeners (`tcpService`) to services, sockets that would collide. Shared by the YAML loader
 * (which maps each finding back to a file position through `Origins`) and `validateModel` (which
 * names the JSON path), so both accept exactly the same models.
 */
import { isRedirectStatus, type ConfigModel, type RouteModel, type TlsModel } from './model.js'
import { suggest } from './diagnostics.js'
import { isWildcardHost, parseAddress, type Address } from './values.js'
import { lintAuthorization, lintShadowedRoutes } from './policy-lint.js'

/** The model object a finding is about, the field within it, and its JSON path. */
export interface Target {
  obj: object
  field?: string
  path: string
}

export type Report = (target: Target, message: string, hint?: string) => void

/** Errors: the data plane would refuse the model or behave in a way nobody meant. */
export function checkSemantics(model: ConfigModel, error: Report): void {
  checkSockets(model, error)

  const listenerNames = new Map<string, string>()
  model.listeners.forEach((listener, li) => {
    const at = { obj: listener, field: 'name', path: `listeners[${li}].name` }
    const first = listenerNames.get(listener.name)
    if (first !== undefined) error(at, `duplicate listener name "${listener.name}"`, `already used by ${first}`)
    else listenerNames.set(listener.name, `listeners[${li}]`)
  })

  const serviceNames = new Map<string, number>()
  model.services.forEach((service, si) => {
    const first = serviceNames.get(service.name)
    if (first !== undefined) {
      error({ obj: service, field: 'name', path: `services[${si}].name` }, `duplicate service name "${service.name}"`, `already used by services[${first}]`)
    } else serviceNames.set(service.name, si)
    const seen = new Set<string>()
    service.endpoints.forEach((endpoint, ei) => {
      if (seen.has(endpoint.address)) {
        error({ obj: endpoint, field: 'address', path: `services[${si}].endpoints[${ei}].address` }, `endpoint ${endpoint.address} is listed twice in service "${service.name}"`, 'list it once; use weight to send it more traffic')
      }
      seen.add(endpoint.address)
    })
    const tls = service.tls
    if (tls && (tls.cert === null) !== (tls.key === null)) {
      const [given, missing] = tls.cert === null ? ['key', 'cert'] : ['cert', 'key']
      error(
        { obj: tls, field: given, path: `services[${si}].tls.${given}` },
        `service "${service.name}" tls has a ${given} but no ${missing}`,
        'a client certificate needs both cert and key',
      )
    }
    const check = service.healthCheck
    if (check && check.timeoutMs > check.intervalMs) {
      error(
        { obj: service, field: 'healthCheck', path: `services[${si}].healthCheck.timeoutMs` },
        `service "${service.name}" health check timeout (${check.timeoutMs} ms) is longer than its interval (${check.intervalMs} ms)`,
        'a probe must end before the next one starts: lower timeout or raise interval',
      )
    }
  })

  const known = [...serviceNames.keys()]
  model.listeners.forEach((listener, li) => {
    const routeNames = new Set<string>()
    listener.routes.forEach((route, ri) => {
      const path = `listeners[${li}].routes[${ri}]`
      if (routeNames.has(route.name)) {
        error({ obj: route, field: 'name', path: `${path}.name` }, `duplicate route name "${route.name}" in listener "${listener.name}"`, 'route names are unique per listener; they label metrics')
      }
      routeNames.add(route.name)
      checkRouteFilters(route, path, error)
      if (route.redirect) {
        // A redirect answers every request itself; nothing is sent to a service.
      } else if (!serviceNames.has(route.service)) {
        const hint = undefinedServiceHint(route.service, known)
        error({ obj: route, field: 'service', path: `${path}.service` }, `route "${route.name}" refers to undefined service "${route.service}"`, hint)
      }
      const split = new Set<string>()
      route.backends.forEach((b, bi) => {
        const at = { obj: b, field: 'service', path: `${path}.backends[${bi}].service` }
        if (b.service !== route.service && !serviceNames.has(b.service)) {
          error(at, `route "${route.name}" backend refers to undefined service "${b.service}"`, undefinedServiceHint(b.service, known))
        }
        if (split.has(b.service)) error(at, `route "${route.name}" lists backend "${b.service}" twice`, 'list it once with the sum of the weights')
        split.add(b.service)
      })
      if (route.backends.length > 0 && route.backends.every((b) => b.weight === 0)) {
        error({ obj: route, field: 'backends', path: `${path}.backends` }, `route "${route.name}": every backend has weight 0, so no request could be sent`, 'give at least one backend a weight above 0')
      }
      if (route.backends.length > 0 && route.backends[0]?.service !== route.service) {
        error({ obj: route, field: 'service', path: `${path}.service` }, `route "${route.name}": service "${route.service}" is not its first backend "${route.backends[0]?.service}"`, 'service names the first backend')
      }
      // CONNECT names no path (it is matched as `/`), so a narrower route would silently never
      // open a tunnel.
      if (route.allowConnect) {
        const at = { obj: route, field: 'allowConnect', path: `${path}.allowConnect` }
        if (route.path.value !== '/') {
          error(at, `route "${route.name}" allows CONNECT but matches path "${route.path.value}"; CONNECT requests are matched as path "/"`, 'match CONNECT by host only: drop the path from this route')
        }
        if (route.methods.length > 0 && !route.methods.includes('CONNECT')) {
          error(at, `route "${route.name}" allows CONNECT but its methods (${route.methods.join(', ')}) exclude CONNECT`, 'add CONNECT to methods, or drop the method match')
        }
      }
    })
    const tcpService = listener.tcpService ?? null
    if (tcpService !== null && !serviceNames.has(tcpService)) {
      error(
        { obj: listener, field: 'tcpService', path: `listeners[${li}].tcpService` },
        `listener "${listener.name}" tcpService refers to undefined service "${tcpService}"`,
        undefinedServiceHint(tcpService, known),
      )
    }
    if (listener.protocol === 'tcp' && tcpService === null) {
      error(
        { obj: listener, field: 'protocol', path: `listeners[${li}].tcpService` },
        `tcp listener "${listener.name}" has no tcpService`,
        'set tcpService: to the service its connections are forwarded to',
      )
    }
    if (listener.tls) checkTls(listener.tls, listener.name, `listeners[${li}].tls`, (message, hint) => error({ obj: listener, field: 'tls', path: `listeners[${li}].tls` }, message, hint))
    const mtls = listener.mtls ?? 'off'
    if (mtls !== 'off') {
      const at = { obj: listener, field: 'mtls', path: `listeners[${li}].mtls` }
      if (!model.identity) error(at, `listener "${listener.name}" has mtls: ${mtls} but the config has no identity`, 'add a top-level identity: { dir, name, namespace } (made with meshproxy identity init / issue)')
      if (listener.tls) error(at, `listener "${listener.name}" has both mtls and tls`, 'use one listener for mesh mTLS and another for TLS termination')
    }
  })
  model.services.forEach((service, si) => {
    if (service.identity === null || service.identity === undefined) return
    const at = { obj: service, field: 'identity', path: `services[${si}].identity` }
    if (service.tls) error(at, `service "${service.name}" has both identity and tls`, 'identity makes its connections mTLS to meshed peers; drop tls, or drop identity for a non-meshed TLS upstream')
    if (!model.identity) error(at, `service "${service.name}" has identity "${service.identity}" but the config has no identity of its own to present`, 'add a top-level identity: { dir, name, namespace } (made with meshproxy identity init / issue)')
  })
}

/** A TLS listener's certificates: at least one, each with its PEM from a file or inline, no host twice. */
function checkTls(tls: TlsModel, listener: string, path: string, error: (message: string, hint?: string) => void): void {
  if (tls.certificates.length === 0) {
    error(`TLS listener "${listener}" has no certificate`, 'list certificates: [{ cert: <file>, key: <file> }], or give an Ingress on it spec.tls')
  }
  const owners = new Map<string, number>()
  tls.certificates.forEach((c, ci) => {
    if ((c.cert === null) === (c.certPem === null) || (c.key === null) === (c.keyPem === null)) {
      error(`${path}.certificates[${ci}] needs a certificate and a key, each either a file (cert, key) or inline PEM (certPem, keyPem)`)
    }
    for (const host of c.hosts) {
      const first = owners.get(host)
      if (first !== undefined) error(`TLS listener "${listener}" gives host "${host}" two certificates (${first + 1} and ${ci + 1})`, 'list each host under one certificate')
      else owners.set(host, ci)
    }
  })
}

/** A route's header modifiers, rewrite and redirect: what the Gateway API refuses, and what could never work. */
function checkRouteFilters(route: RouteModel, path: string, error: Report): void {
  for (const side of ['requestHeaders', 'responseHeaders'] as const) {
    const edit = route[side]
    for (const list of ['set', 'add', 'remove'] as const) {
      const names = edit[list].map((x) => (typeof x === 'string' ? x : x.name))
      names.forEach((name, i) => {
        if (names.indexOf(name) !== i) {
          error({ obj: route, field: side, path: `${path}.${side}.${list}[${i}]` }, `route "${route.name}" ${side}.${list} names "${name}" twice`, 'header names are case-insensitive; list each once')
        }
      })
    }
  }
  const redirect = route.redirect
  const rewrite = route.rewrite
  if (redirect && rewrite) {
    error({ obj: route, field: 'rewrite', path: `${path}.rewrite` }, `route "${route.name}" has both a redirect and a rewrite`, 'a redirected request is never sent upstream: keep one of them')
  }
  for (const [key, edit] of [['redirect', redirect], ['rewrite', rewrite]] as const) {
    if (!edit) continue
    if (edit.path !== null && edit.prefix !== null) {
      error({ obj: route, field: key, path: `${path}.${key}.prefix` }, `route "${route.name}" ${key} replaces both the whole path and its prefix`, 'keep path (the whole path) or prefix (the matched prefix)')
    }
    if (edit.prefix !== null && route.path.type !== 'Prefix') {
      error({ obj: route, field: key, path: `${path}.${key}.prefix` }, `route "${route.name}" ${key} replaces the matched prefix, but the route matches an Exact path`, 'use path: to replace the whole path, or match the path as a Prefix')
    }
  }
  if (redirect && !isRedirectStatus(redirect.statusCode)) {
    error({ obj: route, field: 'redirect', path: `${path}.redirect.statusCode` }, `route "${route.name}" redirect status ${redirect.statusCode} is not a redirect status`, 'valid statuses: 301, 302, 303, 307, 308')
  }
  if (redirect && (route.backends.length > 0 || route.retry || route.allowConnect)) {
    error({ obj: route, field: 'redirect', path: `${path}.redirect` }, `route "${route.name}" redirects, so its ${route.backends.length > 0 ? 'backends' : route.retry ? 'retry' : 'allowConnect'} would never be used`, 'a redirect answers every request itself: remove the other, or the redirect')
  }
}

function undefinedServiceHint(name: string, known: string[]): string | undefined {
  return known.length === 0 ? 'no services are defined; add one under "services:"' : suggest(name, known, 'defined services')
}

/**
 * Two listeners (or a listener and the admin server) on one port collide when their hosts are
 * equal or either is a wildcard. Port 0 asks the OS for a fresh port, so it never collides.
 */
function checkSockets(model: ConfigModel, error: Report): void {
  const bound: Array<{ addr: Address; label: string }> = []
  const adminAddr = model.admin ? parseAddress(model.admin.address) : undefined
  if (adminAddr?.ok) bound.push({ addr: adminAddr.value, label: `the admin server (${adminAddr.value.text})` })
  model.listeners.forEach((listener, li) => {
    const parsed = parseAddress(listener.address)
    if (!parsed.ok) return
    const addr = parsed.value
    const clash = addr.port === 0 ? undefined : bound.find(({ addr: other }) =>
      other.port === addr.port && (other.host === addr.host || isWildcardHost(other.host) || isWildcardHost(addr.host)))
    if (clash) {
      const isAdmin = clash.label.startsWith('the admin')
      error(
        { obj: listener, field: 'address', path: `listeners[${li}].address` },
        `listener "${listener.name}" address ${addr.text} conflicts with ${clash.label}`,
        isAdmin ? 'use another port, or set admin: to another host:port, or to null to disable it' : 'each listener needs its own port',
      )
    }
    bound.push({ addr, label: `listener "${listener.name}" (${addr.text})` })
  })
}

/** Warnings: valid, but probably not what was meant. Only the loader reports these. */
export function lintModel(model: ConfigModel, warn: Report): void {
  const used = new Set(model.listeners.flatMap((l) => [...l.routes.flatMap((r) => [r.service, ...r.backends.map((b) => b.service)]), ...(l.tcpService ? [l.tcpService] : [])]))
  model.listeners.forEach((listener, li) => {
    if (listener.protocol === 'tcp') {
      if (listener.routes.length > 0) {
        warn(
          { obj: listener, field: 'routes', path: `listeners[${li}].routes` },
          `routes are ignored on tcp listener "${listener.name}"`,
          `every connection is forwarded to its tcpService as opaque TCP; remove the routes, or use protocol: http to route HTTP requests and send other traffic to tcpService`,
        )
      }
      if (listener.authorization.rules.length > 0 || listener.authorization.default !== 'allow') {
        warn(
          { obj: listener, field: 'authorization', path: `listeners[${li}].authorization` },
          `authorization is ignored on tcp listener "${listener.name}"`,
          'authorization rules decide HTTP requests; opaque TCP connections are not checked',
        )
      }
      return
    }
    if (listener.routes.length === 0) {
      warn({ obj: listener, path: `listeners[${li}]` }, `listener "${listener.name}" has no routes; no request will match`, 'add routes, or an Ingress')
    }
    const matches = new Map<string, string>()
    listener.routes.forEach((route, ri) => {
      const key = JSON.stringify([
        [...route.hosts].sort(),
        route.path,
        [...route.methods].sort(),
        [...route.headers].map((h) => `${h.name}=${h.value}`).sort(),
        [...route.queryParams].map((q) => `${q.name}=${q.value}`).sort(),
        [...route.cookies].map((c) => `${c.name}=${c.value}`).sort(),
      ])
      const first = matches.get(key)
      if (first !== undefined) {
        warn({ obj: route, path: `listeners[${li}].routes[${ri}]` }, `route "${route.name}" has the same match as route "${first}"; only one of them can serve requests`)
      } else matches.set(key, route.name)
    })
    lintShadowedRoutes(listener, li, warn)
    lintAuthorization(listener, li, warn)
  })
  model.services.forEach((service, si) => {
    if (!used.has(service.name)) warn({ obj: service, field: 'name', path: `services[${si}]` }, `service "${service.name}" is not used by any route`)
  })
}
