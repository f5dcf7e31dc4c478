/**
 * `configFromEndpoints`: the model behind `meshproxy run --to a,b --balancer x`, built without a
 * file but checked exactly like one.
 */
import { SIMPLE_BALANCER_KINDS, type BalancerModel, type ConfigModel, type EndpointModel, type UpstreamProtocol } from './model.js'
import { DiagnosticSink, suggest, type Loc } from './diagnostics.js'
import { DEFAULT_ADMIN, DEFAULT_LISTEN, DEFAULT_UPSTREAM_PROTOCOL, UPSTREAM_PROTOCOLS, isUpstreamProtocol, makeListener, makeRoute, makeService } from './defaults.js'
import { finish, type LoadOptions, type LoadResult } from './load.js'
import { checkSemantics } from './semantics.js'
import { isToken, normalizeHeaderName, parseAddress } from './values.js'

const BALANCER_FORMS = ['round-robin', 'random', 'least-request', 'p2c-ewma', 'hash', 'hash:source', 'hash:header:<name>', 'hash:cookie:<name>']

/**
 * One listener (`listenOverride` ?? `defaultListen`) with one catch-all route to one service,
 * `default`, over `endpoints` (`host:port` each, weight 1). `balancer` is `round-robin`,
 * `least-request`, `p2c-ewma`,
 * `random`, `hash` (source address), `hash:source`, `hash:header:<name>` or `hash:cookie:<name>`.
 * `protocol` is the service's upstream protocol (`http1`, `http2` for h2c, `auto`); a value
 * outside those (from an untyped caller) is reported like a bad balancer. Listener and service
 * limits, HTTP/2 settings included, are the defaults; `opts.proxyHeaders` false sets the
 * listener's `proxyHeaders` off. Diagnostics carry `opts.file` (default `<command line>`) and no
 * position.
 */
export function configFromEndpoints(
  endpoints: string[],
  balancer: string,
  opts: LoadOptions & { proxyHeaders?: boolean } = {},
  protocol: UpstreamProtocol = DEFAULT_UPSTREAM_PROTOCOL,
): LoadResult {
  const loc: Loc = { file: opts.file ?? '<command line>', line: 0, column: 0 }
  const sink = new DiagnosticSink()
  const service = makeService('default', [], parseBalancer(sink, loc, balancer))
  if (isUpstreamProtocol(protocol)) service.protocol = protocol
  else sink.error(loc, `invalid protocol "${String(protocol)}"`, suggest(String(protocol), UPSTREAM_PROTOCOLS, 'valid protocols'))
  for (const raw of endpoints) {
    const parsed = parseAddress(raw.trim(), '127.0.0.1:8080')
    if (parsed.ok) service.endpoints.push({ address: parsed.value.text, weight: 1 } satisfies EndpointModel)
    else sink.error(loc, `invalid endpoint address: ${parsed.error}`, parsed.hint)
  }
  if (endpoints.length === 0) sink.error(loc, 'no endpoints given', 'name at least one host:port to proxy to, e.g. --to 127.0.0.1:8080')

  const address = (option: string, value: string): string => {
    const parsed = parseAddress(value)
    if (parsed.ok) return parsed.value.text
    sink.error(loc, `invalid ${option} address: ${parsed.error}`, parsed.hint)
    return value
  }
  const listen = address(opts.listenOverride !== undefined ? 'listen' : 'defaultListen', opts.listenOverride ?? opts.defaultListen ?? DEFAULT_LISTEN)
  const adminAddress = opts.adminOverride ?? (opts.defaultAdmin === undefined ? DEFAULT_ADMIN : opts.defaultAdmin)
  const listener = makeListener('listener-0', listen, [makeRoute('default', 'default')])
  if (opts.proxyHeaders === false) listener.proxyHeaders = false
  const model: ConfigModel = {
    listeners: [listener],
    services: [service],
    admin: adminAddress === null ? null : { address: address('admin', adminAddress) },
    identity: null,
  }
  checkSemantics(model, (_target, message, hint) => sink.error(loc, message, hint))
  return finish(model, sink)
}

function parseBalancer(sink: DiagnosticSink, loc: Loc, spec: string): BalancerModel {
  const [kind, source, name, ...rest] = spec.trim().split(':')
  if (rest.length === 0) {
    const simple = SIMPLE_BALANCER_KINDS.find((k) => k === kind)
    if (simple !== undefined && source === undefined) return { kind: simple }
    if (kind === 'hash' && (source === undefined || (source === 'source' && name === undefined))) return { kind: 'hash', source: true }
    if (kind === 'hash' && source === 'header' && name !== undefined) {
      const header = normalizeHeaderName(name)
      if (header.ok) return { kind: 'hash', header: header.value }
      sink.error(loc, `invalid balancer "${spec}": ${header.error}`, header.hint)
      return { kind: 'round-robin' }
    }
    if (kind === 'hash' && source === 'cookie' && name !== undefined && isToken(name)) return { kind: 'hash', cookie: name }
  }
  sink.error(loc, `invalid balancer "${spec}"`, suggest(spec, BALANCER_FORMS, 'valid balancers'))
  return { kind: 'round-robin' }
}
