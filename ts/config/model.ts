/**
 * The config schema, declared once: the field table of the normalized config model — the one
 * shape every config source (native YAML, Kubernetes resources, the typed API) is turned into,
 * validated once, and handed to the Rust data plane as JSON — with each field's type, default,
 * limits, meaning and native YAML spelling. From it come the model's TypeScript types (below),
 * the defaults (`defaults.ts`), `validateModel` (`validate.ts`), the reading of plain YAML fields
 * (`native.ts`) and both JSON Schemas (`json-schema.ts`, `meshproxy schema`).
 *
 * The Rust side (`crates/meshproxy-config`) deserializes the model with serde; a unit test there
 * compares its structs with `schema/config-model.schema.json`, which an ava test keeps equal to
 * what this table generates. In the model every field is explicit (defaults already applied), so
 * the data plane never guesses.
 */
import {
  count,
  custom,
  duration,
  flag,
  listOf,
  nested,
  nullableNested,
  nullableText,
  oneOf,
  table,
  text,
  yamlOnly,
  type JsonSchema,
  type ModelOf,
} from './fields.js'
import {
  checkHeaderValue,
  checkCookieName,
  checkCookieValue,
  checkName,
  checkQueryText,
  checkRequestTarget,
  fail,
  normalizeHeaderName,
  normalizeHost,
  normalizeMethod,
  normalizeModifiableHeaderName,
  normalizePath,
  normalizeTargetHost,
  ok,
  parseAddress,
  parseGrpcStatusSet,
  parseStatusSet,
  type Parsed,
} from './values.js'
import { isIP } from 'node:net'
import { normalizeCidr } from './cidr.js'

export const DEFAULT_LISTEN = '127.0.0.1:4140'
export const DEFAULT_ADMIN = '127.0.0.1:4191'
/** The `apiVersion` of native documents that name one (`kind: Config`). */
export const OUR_API_VERSION = 'meshproxy.io/v1alpha1'

const address = (s: string): Parsed<string> => {
  const parsed = parseAddress(s)
  return parsed.ok ? { ok: true, value: parsed.value.text } : parsed
}
const nameOf = (what: string) => (s: string) => checkName(s, what)

/** The values of a path match's `type`, the default first. */
export const PATH_MATCH_TYPES = ['Prefix', 'Exact'] as const
export type PathMatchType = (typeof PATH_MATCH_TYPES)[number]

export const PATH_MATCH = table('PathMatch', 'How a request\'s path is matched.', {
  type: oneOf(PATH_MATCH_TYPES, 'path types', '`Prefix` matches on `/` segment boundaries (`/foo` matches `/foo`, `/foo/` and `/foo/bar`, never `/foobar`); `Exact` matches the path only.', {
    default: 'Prefix',
  }),
  value: text(
    'Starts with `/`; normalized (no dot segments or empty segments). An `Exact` path may end with `/` (`/foo/` matches `/foo/`, not `/foo`); a `Prefix` path does not, as `/foo/` and `/foo` match the same requests.',
    (s, parent) => normalizePath(s, parent.type === 'Exact' ? 'Exact' : 'Prefix'),
    { default: '/' },
  ),
})

export const HEADER_MATCH = table('HeaderMatch', 'A request header that must have exactly this value.', {
  name: text('Lowercase header name.', normalizeHeaderName),
  value: text('Exact value.', checkHeaderValue),
})

export const QUERY_PARAM_MATCH = table('QueryParamMatch', 'A query parameter whose first occurrence must have exactly this value; name and value are compared case-sensitively, after percent-decoding (`+` is a space).', {
  name: text('Parameter name, decoded.', checkQueryText),
  value: text('Exact value, decoded.', checkQueryText),
})

export const COOKIE_MATCH = table('CookieMatch', 'A cookie whose first occurrence in the request\'s `Cookie` fields must have exactly this value (as sent, case-sensitively).', {
  name: text('Cookie name.', checkCookieName),
  value: text('Exact value.', checkCookieValue),
})

/** The route's `match` in YAML: read by `native.ts` into `hosts`, `path`, `methods` and `headers`. */
export const ROUTE_MATCH = {
  host: { description: 'A host this route serves (or a list): `api.example.com`, or `*.example.com` for exactly one label.', type: ['string', 'array'], items: { type: 'string' } },
  hosts: { description: 'The hosts this route serves (or one): `api.example.com`, or `*.example.com` for exactly one label.', type: ['string', 'array'], items: { type: 'string' } },
  path: { description: 'Path to match; default `/`.', type: 'string', pattern: '^/' },
  pathType: {
    description: '`Prefix` (default) matches on `/` segment boundaries; `Exact` the path only; `ImplementationSpecific` is `Prefix`.',
    enum: ['Exact', 'Prefix', 'ImplementationSpecific'],
  },
  method: { description: 'A method to match (or a list), e.g. `GET`.', type: ['string', 'array'], items: { type: 'string' } },
  methods: { description: 'The methods to match (or one), e.g. `[GET, HEAD]`.', type: ['string', 'array'], items: { type: 'string' } },
  headers: {
    description: 'Headers that must have exactly these values, e.g. `{ x-canary: "true" }`.',
    type: 'object',
    additionalProperties: { type: ['string', 'number', 'boolean'] },
  },
  query: {
    description: 'Query parameters whose first occurrence must have exactly these values, e.g. `{ debug: "1" }` (compared decoded, case-sensitively).',
    type: 'object',
    additionalProperties: { type: ['string', 'number', 'boolean'] },
  },
  cookies: {
    description: 'Cookies that must have exactly these values, e.g. `{ channel: beta }`: pins chosen users to a route (a canary, a blue-green cut-over).',
    type: 'object',
    additionalProperties: { type: ['string', 'number', 'boolean'] },
  },
} satisfies Record<string, JsonSchema>

/** A `{ name: value }` mapping in YAML, a list of `{ name, value }` in the model. */
const HEADER_MAP_YAML: JsonSchema = { type: 'object', additionalProperties: { type: ['string', 'number', 'boolean'] } }

export const HEADER_VALUE = table('HeaderValue', 'A header field a route writes.', {
  name: text('Lowercase header name; not `host` (use `rewrite.host`), nor the fields that frame a message or manage a connection.', normalizeModifiableHeaderName),
  value: text('The value, as sent.', checkHeaderValue),
})

export const HEADER_MODIFIER = table(
  'HeaderModifier',
  'Header changes (the Gateway API\'s RequestHeaderModifier and ResponseHeaderModifier): the fields in `remove` are removed, then those in `set` replace every value of their name, then those in `add` are appended. Each name appears at most once in each list. They apply after the proxy\'s own headers (`proxyHeaders`), so a route has the last word.',
  {
    set: listOf(nested(HEADER_VALUE), 'Fields written, replacing any of the same name: `{ x-env: prod }` in YAML.', { yaml: { schema: HEADER_MAP_YAML } }),
    add: listOf(nested(HEADER_VALUE), 'Fields appended to any of the same name: `{ x-trace: "1" }` in YAML.', { yaml: { schema: HEADER_MAP_YAML } }),
    remove: listOf(text('A header name.', normalizeModifiableHeaderName), 'Names of fields removed, e.g. `[x-internal]`.'),
  },
)

const redirectScheme = (s: string): Parsed<string> => (s === 'http' || s === 'https' ? ok(s) : fail(`scheme "${s}" is neither http nor https`, 'valid schemes: http, https'))
const replacementPath = (s: string): Parsed<string> => normalizePath(s, 'Exact')
const REDIRECT_STATUSES = [301, 302, 303, 307, 308]

export const URL_REWRITE = table(
  'UrlRewrite',
  'The host and path the upstream is sent (the Gateway API\'s URLRewrite); the client sees no change. The query is kept.',
  {
    host: nullableText('Replaces the request\'s host: its `Host`, or `:authority` over HTTP/2; null = unchanged.', normalizeTargetHost, 'a host name', { default: null }),
    path: nullableText('Replaces the whole path; null = unchanged.', replacementPath, 'a path', { default: null }),
    prefix: nullableText('Replaces the part of the path that the route\'s `Prefix` match matched (`/v1` → `/v2` sends `/v1/users` as `/v2/users`); null = unchanged. Not with `path`.', replacementPath, 'a path', { default: null }),
  },
)

export const REDIRECT = table(
  'Redirect',
  'The route answers every request with a redirect (the Gateway API\'s RequestRedirect) instead of sending it anywhere: `Location` is the request\'s URL with these parts replaced; the query is kept. A route that redirects needs no `service`.',
  {
    scheme: nullableText('`http` or `https`; null = the request\'s.', redirectScheme, 'http or https', { default: null }),
    host: nullableText('null = the request\'s host.', normalizeTargetHost, 'a host name', { default: null }),
    port: count('0 = derived: with `scheme` set, that scheme\'s well-known port; otherwise the request\'s port. A well-known port (80 for http, 443 for https) is left out of `Location`.', { min: 0, max: 65535, default: 0 }),
    path: nullableText('Replaces the whole path; null = unchanged.', replacementPath, 'a path', { default: null }),
    prefix: nullableText('Replaces the part of the path that the route\'s `Prefix` match matched; null = unchanged. Not with `path`.', replacementPath, 'a path', { default: null }),
    statusCode: count('301, 302, 303, 307 or 308.', { min: 301, max: 308, default: 302 }),
  },
)

/** The redirect statuses the Gateway API allows (301 and 302 core, the rest extended). */
export const isRedirectStatus = (n: number): boolean => REDIRECT_STATUSES.includes(n)

export const RETRY = table(
  'Retry',
  'Retries of a route\'s requests (as Linkerd\'s `retry.linkerd.io/*` annotations): a request whose attempt fails is sent again, to another endpoint where the service has one, up to `limit` more times. What is retried: a refused or failed connection, a reset before the response, an attempt past `timeout`, a response whose status is in `http` or whose `grpc-status` (trailers-only) is in `grpc`. Which requests: idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) and gRPC calls, any method with `nonIdempotent`; with a body of at most 64 KiB (read ahead to be sent again; a longer body is sent once). A budget caps retries at `budgetPercent` of the route\'s requests plus `budgetMinPerSecond`, so retries never multiply an outage.',
  {
    limit: count('Retries after the first attempt.', { min: 1, max: 10, default: 1 }),
    http: text('Response statuses that are retried: codes, ranges and classes, e.g. `5xx` or `502-504`; `""` = none.', parseStatusSet, { default: '500-599' }),
    grpc: text(
      '`grpc-status` values (of a trailers-only response) that are retried, by name as Linkerd writes them or by code; `""` = none.',
      parseGrpcStatusSet,
      { default: 'cancelled,deadline-exceeded,resource-exhausted,internal,unavailable' },
    ),
    timeoutMs: duration('Time allowed for one attempt\'s response headers; past it the attempt is abandoned and retried (the route\'s `timeout` still bounds the whole request). 0 = none.', { min: 0, default: 0 }),
    nonIdempotent: flag('Also retry methods that are not idempotent (POST, PATCH, …). Only when the application makes them safe to repeat.', false),
    budgetPercent: count('Retries allowed as a percentage of the route\'s requests over the last 10 s.', { min: 0, max: 1000, default: 20 }),
    budgetMinPerSecond: count('Retries allowed each second whatever the share.', { min: 0, max: 100000, default: 10 }),
  },
)

/** What a rate limit counts requests by, the default first. */
export const RATE_LIMIT_KEYS = ['none', 'client', 'header', 'identity'] as const

const positive = { min: 1, max: 1_000_000_000 }

export const RATE_LIMIT_OVERRIDE = table('RateLimitOverride', 'A key value with a rate and burst of its own (a bucket of its own, not shared with other keys).', {
  value: text('The key\'s value: a client IP address (`key: client`, e.g. `10.0.0.7`) or the header\'s value (`key: { header: … }`, e.g. `premium-customer`).', checkHeaderValue, { yaml: { required: true } }),
  rate: count('Requests per second for this value.', positive, { yaml: { required: true } }),
  burst: count('Requests this value may send at once; default: its `rate`.', positive),
})

/** What a global rate limit does when its server does not answer, the default first. */
export const RATE_LIMIT_FAIL_MODES = ['open', 'closed'] as const

/** A PEM file's path: any non-empty text (the loader reads and checks the file). */
const pemFile = (what: string) => (s: string): Parsed<string> =>
  s.trim() === '' ? fail(`the ${what} file is empty`, 'a path to a PEM file, such as certs/ca.crt') : ok(s)

/** A `redis://` URL with its password hidden, for messages (as the proxy shows it in logs and `/config`). */
export function redactUrl(s: string): string {
  const m = /^([a-z][a-z0-9+.-]*:\/\/)([^/?#]*)@/i.exec(s)
  if (!m) return s
  const colon = m[2]!.indexOf(':')
  return `${m[1]}${colon < 0 ? '' : m[2]!.slice(0, colon + 1)}***${s.slice(m[0].length - 1)}`
}

/** A `redis://` or `rediss://` URL as the redis crate reads it: host, optional port (6379), user, password, database number. */
const redisUrl = (s: string): Parsed<string> => {
  const hint = 'e.g. redis://127.0.0.1:6379, redis://:password@redis.internal:6379/2 or rediss://redis.internal:6380 (TLS)'
  const shown = redactUrl(s)
  if (!s.startsWith('redis://') && !s.startsWith('rediss://')) return fail(`"${shown}" is not a redis:// or rediss:// URL`, `${hint} (unix sockets are not supported)`)
  let url: URL
  try {
    url = new URL(s)
  } catch {
    return fail(`"${shown}" is not a valid URL`, hint)
  }
  if (url.hostname === '') return fail(`"${shown}" names no host`, hint)
  if (url.search !== '' || url.hash !== '') return fail(`"${shown}" has a query or fragment`, hint)
  const db = url.pathname.replace(/^\//, '')
  if (db !== '' && !/^\d{1,5}$/.test(db)) return fail(`"${shown}": the path must be a database number`, hint)
  return ok(s)
}

/** A rate limit service's address: `host:port` or `http://host:port` (h2c), or `https://host:port` (TLS), as the proxy reads it. */
const rlsAddress = (s: string): Parsed<string> => {
  const hint = 'host:port or http://host:port (h2c), or https://host:port (TLS), e.g. 127.0.0.1:8081 or https://ratelimit.infra:8443'
  const rest = s.replace(/^https?:\/\//, '').replace(/\/$/, '')
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:/?#@[\]\s]+):(\d{1,5})$/.exec(rest)
  const port = m ? Number(m[2]) : 0
  if (!m || port < 1 || port > 65535) return fail(`"${s}" is not a rate limit service address`, hint)
  return ok(s)
}

export const GLOBAL_RATE_LIMIT = table(
  'GlobalRateLimit',
  'A limit also counted across proxies, on a shared Redis or by a rate limit service (exactly one of `redis` and `rls`). After the local limit admits a request, one round trip admits it or answers 429 as the local limit does. With `redis`, a GCRA script run by EVALSHA, keyed by the route or service, the limit\'s name and the client key: every proxy with the same route or service name, limit name, rate and burst shares one count. With `rls`, Envoy\'s `ShouldRateLimit` (envoyproxy/ratelimit, Limitador) with one descriptor `[{route|service: <name>}, {limit: <limit name>}, {remote_address|identity|<header>: <key>}]`: the service\'s own config says how many requests each descriptor gets.',
  {
    redis: nullableText('The Redis server: `redis://[user:password@]host[:port][/db]`, or `rediss://…` for TLS (verified against `ca`, else the system roots). One multiplexed connection per proxy and server, reconnected on its own. `/config` and logs show the password as `***`. null = not Redis (then `rls`).', redisUrl, 'a URL', { default: null }),
    rls: nullableText('A rate limit service speaking Envoy\'s `envoy.service.ratelimit.v3.RateLimitService` over gRPC: `host:port` or `http://host:port` (plaintext HTTP/2), or `https://host:port` (HTTP/2 over TLS, ALPN `h2`, the certificate verified for the host against `ca`, else the system roots). One multiplexed connection per proxy and service, made again with backoff when it ends. null = not a rate limit service (then `redis`).', rlsAddress, 'an address', { default: null }),
    domain: nullableText('The rate limit service\'s `domain` (its config\'s `domain:`); required with `rls`, not used with `redis`.', (s) => (s.trim() === '' ? fail('the domain is empty', 'the domain of the rate limit service\'s config, e.g. mesh') : ok(s)), 'a domain', { default: null }),
    ca: nullableText('A PEM bundle of the CA certificates trusted for a `rediss://` server or an `https://` rate limit service: in YAML a path relative to the YAML file, in the model as resolved; null = the system\'s trusted roots.', pemFile('CA'), 'a path', { default: null }),
    cert: nullableText('A PEM client certificate (chain) presented to a `rediss://` server or an `https://` rate limit service that asks for one (Redis\'s `tls-auth-clients`, envoyproxy/ratelimit\'s `GRPC_CLIENT_TLS_CACERT`), with `key`: in YAML a path relative to the YAML file, in the model as resolved; null = none.', pemFile('certificate'), 'a path', { default: null }),
    key: nullableText('The PEM private key of `cert`: in YAML a path relative to the YAML file, in the model as resolved.', pemFile('key'), 'a path', { default: null }),
    failMode: oneOf(
      RATE_LIMIT_FAIL_MODES,
      'fail modes',
      'When the server (Redis or the rate limit service) does not answer within `timeout` (down, unreachable, slow, answering an error): `open` admits the request by the local limit alone; `closed` refuses it with 503 `rate-limit-unavailable` (gRPC: UNAVAILABLE) and `Retry-After: 1`. Either way `meshproxy_rate_limit_fallback_total` counts it and a warning is logged (at most every 10 s).',
      { default: 'open' },
    ),
    timeoutMs: duration('Time allowed for one check, connecting included.', { min: 1, max: 10000, default: 50 }),
  },
)

export const RATE_LIMIT = table(
  'RateLimit',
  'A local rate limit (GCRA, as a token bucket that refills continuously): `rate` requests per second, and up to `burst` at once when the bucket is full. A request over it is answered 429 `rate-limited` (gRPC: RESOURCE_EXHAUSTED) with `Retry-After`, `RateLimit-Policy` and `RateLimit`, and never reaches an endpoint. Counted on each proxy (worker threads share it), not across proxies.',
  {
    name: text('Names the limit in metrics (`limit` label) and in `RateLimit-Policy`; `""` = `limit-<n>`, its position from 1.', (s) => (s === '' ? ok(s) : checkName(s, 'rate limit')), { default: '' }),
    rate: count('Requests per second (the bucket refills one request every 1/rate s).', positive, { yaml: { required: true } }),
    burst: count('Requests that may arrive at once (the bucket\'s size); default: `rate`, one second\'s worth.', positive),
    keyBy: {
      ...yamlOnly('What requests are counted by: `none` (the default), one bucket for all; `client`, a bucket per client IP address; `identity`, a bucket per mTLS peer identity (plaintext clients share one bucket); `{ header: x-user }`, a bucket per value of that request header (requests without it share one bucket).', {
        anyOf: [{ enum: ['none', 'client', 'identity'] }, { type: 'object', properties: { header: { type: 'string', description: 'A request header, e.g. `x-user`.' } }, required: ['header'], additionalProperties: false }],
      }),
      yaml: { key: 'key' },
    },
    key: oneOf(RATE_LIMIT_KEYS, 'rate limit keys', 'What requests are counted by: `none`, one bucket for all; `client`, a bucket per client IP address; `header`, a bucket per value of the request header `header` (requests without it share one bucket); `identity`, a bucket per mTLS peer SPIFFE ID (requests without one share one bucket).', { default: 'none', yaml: false }),
    header: nullableText('The request header keyed on when `key` is `header`; null otherwise.', normalizeHeaderName, 'a header name', { default: null, yaml: false }),
    overrides: listOf(nested(RATE_LIMIT_OVERRIDE), 'Key values with their own rate and burst (not with `key: none`).'),
    maxKeys: count(
      'Distinct keys tracked at once. A key whose bucket is full again is dropped (every 0.5 s, and at once when the map is full); new keys that find it full share one overflow bucket with this limit\'s rate and burst until keys expire. About 40 bytes a key.',
      { min: 1, max: 10_000_000, default: 100_000 },
    ),
    global: nullableNested(GLOBAL_RATE_LIMIT, { doc: 'Also count the limit across proxies, on a shared Redis or through a rate limit service; null = this proxy only.', default: null }),
  },
)

export const BACKEND_REF = table('BackendRef', 'A service a route splits its requests over, with its share.', {
  service: text('Name of a service in `services`.', nameOf('service'), { yaml: { required: true } }),
  weight: count('Relative share of the route\'s requests; 0 = none (a drained side of a blue-green switch).', { min: 0, max: 1000000, default: 1 }),
})

/** The actions of an authorization rule and a listener's default, the default first. */
export const AUTHORIZATION_ACTIONS = ['allow', 'deny'] as const
export type AuthorizationAction = (typeof AUTHORIZATION_ACTIONS)[number]

const ONE_OR_MANY_STRINGS: JsonSchema = { type: ['string', 'array'], items: { type: 'string' } }

export const AUTHORIZATION_RULE = table(
  'AuthorizationRule',
  'An authorization rule: it matches a request when all of its conditions hold (an empty list is no condition), and then allows or denies it. A route\'s rules are tried first, then its listener\'s; the first rule that matches decides. A denied request is answered 403 `forbidden` (gRPC: PERMISSION_DENIED) before it is changed or sent anywhere.',
  {
    action: oneOf(AUTHORIZATION_ACTIONS, 'actions', '`allow` or `deny` the requests the rule matches.', { yaml: { required: true } }),
    networks: listOf(
      text('A network in CIDR notation, normalized: `10.0.0.0/8`, `2001:db8::/32`; an address alone is one host.', normalizeCidr),
      'Client networks: the rule matches a client whose address is in any of them. An IPv4 client connected over IPv6 (`::ffff:10.0.0.1`) is in the IPv4 networks. Empty = any client.',
      { yaml: { schema: ONE_OR_MANY_STRINGS } },
    ),
    methods: listOf(text('An uppercase method name.', normalizeMethod), 'Methods the rule matches; empty = any.', { yaml: { schema: ONE_OR_MANY_STRINGS } }),
    path: nested(PATH_MATCH, {
      doc: 'The request path, matched as routes match it (`Prefix` on whole segments, or `Exact`, after dot-segment removal); by default `Prefix /`, any path. In YAML a string, with `pathType`.',
      yaml: { schema: { type: 'string', pattern: '^/' } },
    }),
    pathType: yamlOnly('`Prefix` (default) or `Exact`: how `path` matches.', { enum: ['Prefix', 'Exact'] }),
    headers: listOf(nested(HEADER_MATCH), 'Headers that must have exactly these values, all of them: `{ x-role: admin }` in YAML.', { yaml: { schema: HEADER_MAP_YAML } }),
    identities: listOf(
      text('`<service-account>.<namespace>`, a SPIFFE ID, or `*`.', (s) => (s === '*' ? ok(s) : checkMeshIdentity(s))),
      'mTLS peer identities (a listener with `mtls`): the rule matches a request whose peer\'s verified SPIFFE ID is one of them. `web.shop` is service account `web` in namespace `shop` (in any trust domain the anchors vouch for); a SPIFFE ID matches exactly; `*` matches any authenticated peer. A request without a peer identity (plaintext on a `permissive` listener, any other listener) matches no rule with `identities`. Empty = any client.',
      { yaml: { schema: ONE_OR_MANY_STRINGS } },
    ),
  },
)

export const AUTHORIZATION = table(
  'Authorization',
  'Who may send requests through a listener: its `rules`, tried in order after the matched route\'s own `authorization` rules (first match wins), then `default` for a request no rule matches. Requests that match no route are answered 404 `no-route` before any rule.',
  {
    default: oneOf(AUTHORIZATION_ACTIONS, 'actions', 'What a request no rule matches gets: `allow`, or `deny` (403 `forbidden`).', { default: 'allow' }),
    rules: listOf(nested(AUTHORIZATION_RULE), 'In order; the first rule that matches a request decides it.'),
  },
)

/** A policy's actions, phases and error modes, the default first. */
export const POLICY_ACTIONS = ['classify', 'deny', 'warn'] as const
export const POLICY_PHASES = ['response', 'request'] as const
export const POLICY_ON_ERROR = ['closed', 'open'] as const
export const POLICY_BODY = ['auto', 'read', 'skip'] as const

const ruleName = (s: string): Parsed<string> =>
  /^[A-Za-z_][A-Za-z0-9_]*$/.test(s) ? ok(s) : fail(`rule "${s}" is not a Rego rule name`, 'a name such as violation or deny')
const policyFile = (s: string): Parsed<string> => (s.trim() === '' ? fail('the policy file is empty', 'a path such as policies/health.rego') : ok(s))

export const POLICY = table(
  'Policy',
  'A Rego policy (OPA\'s language, evaluated in the data plane by regorus) checked on each response (or request) of a route or a service. Its rule (`violation` by default) is a set of messages: empty passes, any member is a violation. The input follows OPA-Envoy: `input.attributes.request.http.{method, path, host, headers}` (header names lower-case), and on the response phase `input.response.{status_code, headers, body}` (`body` as text, absent past `maxBodyBytes` with `input.response.truncated` true). Rego v0 syntax (OPA before 1.0) and v1 are both accepted.',
  {
    file: text('The `.rego` file: in YAML a path relative to the YAML file; in the model the path as resolved (diagnostics name it).', policyFile, { yaml: { required: true } }),
    source: text('The Rego source: the loader reads it from `file`.', ok, { default: '', yaml: false }),
    rule: text('The rule evaluated, in the module\'s package: `data.<package>.<rule>`.', ruleName, { default: 'violation' }),
    phase: oneOf(POLICY_PHASES, 'phases', '`response`: checked on each response of the route or service (the input has `response`); `request`: checked on each request before it is sent (a route\'s only), where only `deny` applies.', { default: 'response' }),
    action: oneOf(
      POLICY_ACTIONS,
      'actions',
      '`classify`: a violation makes the response a failure of its endpoint — counted in `meshproxy_upstream_failures_total` and toward `failureAccrual` ejection, as a status in `failureStatuses` is — and the response passes unchanged (health checking, fault detection). `deny`: the client gets 502 `policy-violation` (403 `forbidden` on the request phase) with the messages in the body. `warn`: the response passes with the messages in a `meshproxy-policy-warning` header and a log line.',
      { default: 'classify' },
    ),
    onError: oneOf(POLICY_ON_ERROR, 'error modes', 'When the policy itself fails (a runtime error, or past its `timeout`): `closed` treats it as a violation (message `policy error`), `open` as a pass. Counted in `meshproxy_policy_errors_total` either way.', { default: 'closed' }),
    body: oneOf(
      POLICY_BODY,
      'body modes',
      'Whether the response body is read into `input.response.body`: `auto` when the policy\'s source names `body`, `read`, `skip`. A body is read only up to `maxBodyBytes`: `classify` lets it stream to the client and keeps a bounded copy, judged at the body\'s end; `deny` and `warn` hold the response head until the body ends or reaches the bound.',
      { default: 'auto' },
    ),
    maxBodyBytes: count('The most of a response body read for the policy; past it `input.response.body` is absent and `input.response.truncated` true.', { min: 0, max: 16777216, default: 65536 }),
    timeoutMs: duration('Time allowed for one evaluation, checked as it runs (one builtin call runs to its end); past it the evaluation fails (see `onError`). Generous by default: a loaded machine can pause a thread for milliseconds.', { min: 1, max: 10000, default: 100 }),
  },
)

export const ROUTE = table('Route', 'A route: which requests it matches and the service they go to.', {
  name: text('Unique per listener; the `route` label in metrics. Default `<listener>-route-<n>`.', nameOf('route')),
  match: yamlOnly('Which requests the route matches; no match = every request.', { type: 'object', properties: ROUTE_MATCH, additionalProperties: false }),
  hosts: listOf(text('A host: an exact lowercase name or a one-label wildcard (`*.example.com`).', normalizeHost), 'Hosts this route serves; empty = any host (the default group).', { yaml: false }),
  path: nested(PATH_MATCH, { yaml: false }),
  methods: listOf(text('An uppercase method name.', normalizeMethod), 'Methods this route serves; empty = any method.', { yaml: false }),
  headers: listOf(nested(HEADER_MATCH), 'Headers that must match, all of them.', { yaml: false }),
  queryParams: listOf(nested(QUERY_PARAM_MATCH), 'Query parameters that must match, all of them.', { yaml: false }),
  cookies: listOf(nested(COOKIE_MATCH), 'Cookies that must match, all of them (ranked with the header matches).', { yaml: false }),
  service: text(
    'Name of a service in `services`: where requests go, or with `backends` the first of them (the `service` label of the route\'s metrics); `""` on a route that redirects.',
    (s) => (s === '' ? ok(s) : checkName(s, 'service')),
    { yaml: { requiredUnless: ['backends', 'redirect'] } },
  ),
  backends: listOf(
    nested(BACKEND_REF, { yaml: { shorthand: 'service' } }),
    'A traffic split: requests go to these services at random in proportion to their weights (a canary at 90/10, an A/B test, a blue-green switch by reload). Empty = every request to `service`. A match on a header or cookie (`match.headers`, `match.cookies`) in an earlier route pins chosen requests to one side.',
  ),
  responseHeaderTimeoutMs: duration('Time allowed for the upstream\'s response headers, all attempts of a retried request together; 0 = no limit.', { min: 0, default: 15000 }, { yaml: { key: 'timeout' } }),
  idleTimeoutMs: duration(
    'An exchange during which no bytes move for this long is ended: no request body from the client, no response head or body from the upstream. Before the response head the client gets 504 `upstream-timeout` (gRPC: DEADLINE_EXCEEDED) and the attempt counts as a timeout; after it the response is cut short (a gRPC response over HTTP/2 ends with `grpc-status` DEADLINE_EXCEEDED trailers). Upgrades, WebSockets and `CONNECT` tunnels keep the listener\'s `tunnelIdleTimeout`. 0 = none (Linkerd\'s `timeout.linkerd.io/idle`).',
    { min: 0, default: 0 },
  ),
  allowConnect: flag(
    '`CONNECT` requests (HTTP/1.1 `CONNECT host:port`, HTTP/2 `CONNECT` with only `:authority`) matching this route — by their authority\'s host, with the path taken as `/` — are answered 200 and tunnelled as opaque TCP to an endpoint of `service` chosen by its balancer (never to the authority the client named). Without it they are refused: 403 `connect-refused`.',
    false,
  ),
  retry: nullableNested(RETRY, { doc: 'Retries of failed attempts; null = none (only requests that never reached an endpoint are re-sent once).', default: null }),
  requestHeaders: nested(HEADER_MODIFIER, { doc: 'Header changes on each request before it is sent upstream.' }),
  responseHeaders: nested(HEADER_MODIFIER, { doc: 'Header changes on each response before it is returned (also on a redirect).' }),
  rewrite: nullableNested(URL_REWRITE, { doc: 'The host and path the upstream is sent; null = as the client sent them.', default: null }),
  redirect: nullableNested(REDIRECT, { doc: 'Answers every request with a redirect; null = none.', default: null }),
  authorization: listOf(
    nested(AUTHORIZATION_RULE),
    'Authorization rules of this route, tried before its listener\'s (first match wins), so a route can make exceptions to them or add its own; a request none matches gets the listener\'s `default`. They run before any other filter, also on a redirect and a `CONNECT`.',
  ),
  rateLimits: listOf(nested(RATE_LIMIT), 'Rate limits on the route\'s requests, checked after its authorization and before its other filters; all must admit a request (keyed limits first).'),
  policies: listOf(nested(POLICY, { yaml: { shorthand: 'file' } }), 'Rego policies checked on this route\'s requests or responses, in order (see Policy); a file alone is a `classify` response policy.'),
})

export const HTTP2 = table(
  'Http2',
  'HTTP/2 settings of a listener, applied to downstream h2c connections (HTTP/1.1 connections on the same listener are not affected). Listeners built from Kubernetes resources or `configFromEndpoints` get the defaults.',
  {
    maxConcurrentStreams: count('SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients: requests one connection may have in flight at once; further streams are refused until one ends.', {
      min: 1,
      default: 100,
    }),
    maxHeaderListSize: count('SETTINGS_MAX_HEADER_LIST_SIZE: the largest request header block accepted, in bytes (431 beyond), counted as HTTP/2 does (name + value + 32 per field).', {
      min: 1024,
      default: 16384,
    }),
    // HTTP/2 flow-control windows: at least the protocol's initial 65535, at most 2^31-1 (RFC 9113 §6.9.1).
    connectionWindowSize: count('Flow-control window of the whole connection, in bytes: how much request body all streams together may send before the proxy reads it.', {
      min: 65535,
      max: 2147483647,
      default: 1048576,
    }),
    streamWindowSize: count('Initial flow-control window of each stream, in bytes: how much of one request body may arrive unread.', { min: 65535, max: 2147483647, default: 262144 }),
    // 0 turns keep-alive pings off.
    keepAliveIntervalMs: duration('Interval of the PING sent on a connection to detect dead peers; 0 = no pings.', { min: 0, default: 20000 }),
    keepAliveTimeoutMs: duration('Time allowed for a PING\'s acknowledgement before the connection is closed.', { min: 1, default: 20000 }),
  },
)

export const TLS_CERTIFICATE = table(
  'TlsCertificate',
  'A certificate chain and its private key (PEM), and the host names it serves. From files (`cert`, `key`), or from a Kubernetes `kubernetes.io/tls` Secret (`certPem`, `keyPem`, written by the loader).',
  {
    cert: nullableText(
      'The certificate chain\'s PEM file, leaf first: in YAML a path relative to the YAML file; in the model the path as resolved. Re-read when it changes on disk. null when `certPem` is given.',
      pemFile('certificate'),
      'a file path',
      { default: null, yaml: { required: true } },
    ),
    key: nullableText(
      'The private key\'s PEM file (PKCS#8, RSA or EC; RSA, ECDSA P-256/P-384 or Ed25519), as `cert` is written. null when `keyPem` is given.',
      pemFile('key'),
      'a file path',
      { default: null, yaml: { required: true } },
    ),
    certPem: nullableText('The certificate chain as PEM text (from a Secret\'s `tls.crt`); null = read from `cert`.', ok, 'PEM text', { default: null, yaml: false }),
    keyPem: nullableText('The private key as PEM text (from a Secret\'s `tls.key`); null = read from `key`. `/config` shows it as `<redacted>`.', ok, 'PEM text', { default: null, yaml: false }),
    origin: text('What inline PEM is named by in errors, e.g. `Secret default/web-tls`; empty for files.', ok, { default: '', yaml: false }),
    hosts: listOf(
      text('An SNI host name: an exact name or a one-label wildcard (`*.example.com`).', normalizeHost),
      'The names (SNI) this certificate is chosen for: exact names first, then wildcards. None: the default certificate, for other names and clients that send no SNI (without one, the first certificate is the default).',
    ),
  },
)

export const TLS = table(
  'Tls',
  'TLS termination on a listener: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1` (then the usual protocol detection when the client offers neither). A plaintext client is refused (a plaintext HTTP/1 request gets 400 `tls-required`).',
  {
    certificates: listOf(nested(TLS_CERTIFICATE), 'The certificates; SNI picks one per connection. At least one, or the listener\'s Ingresses\' `spec.tls` give them.'),
  },
)

/** The values of a listener's `protocol`, the default first. */
export const LISTENER_PROTOCOLS = ['http', 'tcp'] as const

/** The values of a listener's `mtls`, the default first. */
export const MTLS_MODES = ['off', 'required', 'permissive'] as const

/** A Kubernetes name (RFC 1123 label), as a service account or namespace is named. */
const checkLabel = (what: string) => (s: string): Parsed<string> =>
  /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(s)
    ? ok(s)
    : fail(`${what} "${s}" is not a Kubernetes name`, 'lowercase letters, digits and "-", starting and ending with a letter or digit, at most 63 characters')

/**
 * A meshed peer's identity: `<service-account>.<namespace>` (in this proxy's trust domain), or a
 * SPIFFE ID `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
 */
export const checkMeshIdentity = (s: string): Parsed<string> => {
  const hint = 'a service account and its namespace such as orders.shop, or spiffe://cluster.local/ns/shop/sa/orders'
  const spiffe = /^spiffe:\/\/([a-z0-9._-]{1,255})\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(s)
  const parts = spiffe ? [spiffe[3]!, spiffe[2]!] : s.startsWith('spiffe://') ? null : s.split('.')
  if (!parts || parts.length !== 2) return fail(`identity "${s}" is neither <service-account>.<namespace> nor a workload SPIFFE ID`, hint)
  for (const [i, what] of [[0, 'service account'], [1, 'namespace']] as const) {
    const label = checkLabel(what)(parts[i]!)
    if (!label.ok) return fail(`identity "${s}": ${label.error}`, hint)
  }
  return ok(s)
}

export const IDENTITY = table(
  'Identity',
  'This proxy\'s mesh identity, as `meshproxy identity init` and `issue` write it: the trust anchors in `<dir>/ca.crt` (a bundle; two anchors during an anchor rotation) and the workload certificate and key `<dir>/<name>.<namespace>.crt` / `.key`, whose URI SAN is `spiffe://<trust-domain>/ns/<namespace>/sa/<name>`. Listeners with `mtls` present it and verify clients against the anchors; services with `identity` present it to their endpoints and verify them. The files are read again when they change on disk and on every reload; new handshakes use the new material, open connections keep theirs, and material that does not load (not from the anchors, expired, a key of another certificate) is refused while the material in force keeps serving.',
  {
    dir: text('The identity directory: in YAML a path relative to the YAML file; in the model the path as resolved.', (s) => (s.trim() === '' ? fail('the identity dir is empty', 'a directory path such as ./identity') : ok(s)), { yaml: { required: true } }),
    name: text('The workload\'s service account: its certificate is `<name>.<namespace>.crt`.', checkLabel('name'), { yaml: { required: true } }),
    namespace: text('The workload\'s namespace.', checkLabel('namespace'), { yaml: { required: true } }),
    selfIssue: flag('The proxy issues its own workload certificate from the trust anchor whose key is `<dir>/ca.key`, instead of reading `<name>.<namespace>.crt` / `.key`: the key is made in memory and never written, and a new certificate is issued at a random point between 65 % and 75 % of its `lifetime` (70 % with jitter), and when `ca.crt` or `ca.key` change (an anchor rotation). A renewal that fails keeps the certificate in force, is logged, and is tried again every 5 s. For a proxy trusted with the anchor\'s key (one host, a development mesh); elsewhere, keep the key with whoever runs `meshproxy identity issue`.', false),
    lifetimeMs: duration('The lifetime of the certificates the proxy issues itself (`selfIssue`); never past the anchor\'s expiry.', { min: 10000, max: 30 * 24 * 3600 * 1000, default: 24 * 3600 * 1000 }, { yaml: { key: 'lifetime' } }),
  },
)

// A zero is refused where its meaning is not documented (zero connections, zero-length heads,
// instant timeouts would all just break traffic); the route timeouts document 0 as "no limit",
// 0 idle/pending connections means "do not pool/queue", and an HTTP/2 keep-alive interval of 0
// means "no pings". Upper bounds are u32::MAX (see `count`).
export const LISTENER = table('Listener', 'A listening socket and the routes of the requests it accepts.', {
  mode: yamlOnly(
    '`ingress` (the default): the listener serves the routes written for it (and, on the first listener, those of Ingress resources), so no service is reachable unless a route names it. `outbound`: a sidecar\'s outbound side; after its own routes, every service gets a route matched by its names as `Host` (or `:authority`), with or without a port: `name`, `name.<namespace>`, `name.<namespace>.svc` and `name.<namespace>.svc.cluster.local` (namespace `default` for native services; a Kubernetes Service\'s own name and namespace for services built from one). Any other host is 404 `no-route`. The routes are written into the model, where `/config` shows them.',
    { enum: ['ingress', 'outbound'] },
  ),
  name: text('Unique listener name; the `listener` label in metrics. Default `listener-<n>`.', nameOf('listener')),
  address: text('`host:port`, e.g. `127.0.0.1:4140`; port 0 picks an ephemeral port.', address, { default: DEFAULT_LISTEN }),
  protocol: oneOf(
    LISTENER_PROTOCOLS,
    'protocols',
    'What the listener speaks. `http`: HTTP/1.x and h2c (prior knowledge), detected per connection from its first bytes; anything else goes to the listener\'s `tcpService` if it has one. `tcp`: opaque TCP; every connection is forwarded to `tcpService` as is, no detection, no routes.',
    { default: 'http' },
  ),
  tcpService: nullableText(
    'Name of a service in `services` that opaque TCP connections are forwarded to. On an `http` listener: connections whose first bytes are neither an HTTP/1.x request line nor the h2 preface, or that send nothing within `detectTimeout` (server-speaks-first protocols such as MySQL or SMTP); null = such connections are refused (non-HTTP bytes get the HTTP/1 parser\'s 400, silence is closed after the header-read timeout). Required on a `tcp` listener, where every connection goes to it.',
    nameOf('service'),
    'a service name',
    { default: null },
  ),
  detectTimeoutMs: duration(
    'How long protocol detection waits for a client\'s first bytes before the connection is treated as opaque TCP and sent to `tcpService`. Only used on an `http` listener with a `tcpService`.',
    { min: 1, default: 1000 },
  ),
  maxConnections: count('Open downstream connections allowed; beyond it new connections are closed at once.', { min: 1, default: 10000 }),
  headerReadTimeoutMs: duration('Time allowed for a request head to arrive (slowloris).', { min: 1, default: 10000 }),
  idleTimeoutMs: duration('Idle keep-alive time of downstream connections.', { min: 1, default: 60000 }),
  // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
  maxHeaderBytes: count('Request head limit in bytes (431 beyond).', { min: 8192, default: 65536 }),
  maxUriBytes: count('Request URI limit in bytes (414 beyond).', { min: 1, default: 8192 }),
  tunnelIdleTimeoutMs: duration('Upgraded (WebSocket) and opaque TCP connections with no bytes either way for this long are closed.', { min: 1, default: 300000 }),
  http2: nested(HTTP2, { doc: 'Settings for downstream HTTP/2 (h2c) connections on this listener.' }),
  proxyHeaders: flag(
    'Whether the proxy adds the headers that record it and the client: on requests `X-Forwarded-For` (the client\'s address, appended), `X-Forwarded-Proto` and `X-Forwarded-Host` (when absent) and `Via` (appended); on responses `Via` (appended). false: none are added, and those already present pass unchanged — e.g. between sidecars in a mesh, where every hop would otherwise append its own, or to keep client addresses from backends.',
    true,
  ),
  authorization: nested(AUTHORIZATION),
  tls: nullableNested(TLS, { doc: 'TLS termination: each connection\'s TLS handshake comes first (within `headerReadTimeout`); null = plaintext.', default: null }),
  mtls: oneOf(
    MTLS_MODES,
    'mTLS modes',
    'Mesh mTLS on this listener (the inbound side of a meshed workload), with the top-level `identity`. `required`: every connection is TLS with this proxy\'s identity certificate (whatever the SNI), and the client must present a certificate from the trust anchors; its SPIFFE ID is the connection\'s peer identity (authorization `identities`, rate-limit key `identity`). A plaintext HTTP/1 request gets 400 `tls-required`, other plaintext is closed. `permissive`: a connection starting with a TLS handshake gets the same; anything else is served as plaintext without a peer identity. `off`: no mTLS. Not together with `tls`.',
    { default: 'off' },
  ),
  routes: listOf(nested(ROUTE), 'In file order; precedence is computed by the data plane (see README "Routing precedence"). Ignored on a `tcp` listener.'),
})

export const ENDPOINT = table('Endpoint', 'An upstream endpoint of a service.', {
  address: text('`ip:port` or `host:port` (resolved at connect time).', address, { yaml: { required: true } }),
  weight: count('Relative weight.', { min: 1, max: 1000, default: 1 }),
})

// The idle cap matches the in-flight default: a smaller cap closes connections every time the
// concurrency to an endpoint exceeds it and reopens them a moment later (measured: 100 concurrent
// requests with a cap of 64 opened a new upstream connection every ~20 requests). Idle ones
// still close after the idle timeout.
export const POOL = table('Pool', 'Idle upstream connections kept for reuse.', {
  maxIdlePerEndpoint: count('Idle keep-alive connections kept per endpoint and worker thread (as many as may be in flight by default).', { min: 0, default: 1000 }),
  idleTimeoutMs: duration('Idle connections are closed after this (by default below Node\'s 5 s keepAliveTimeout).', { min: 1, default: 4000 }),
})

/** The balancer kinds, the default first; `hash` takes exactly one key source. */
export const BALANCER_KINDS = ['round-robin', 'random', 'least-request', 'p2c-ewma', 'hash'] as const
/** The kinds with no options. */
export const SIMPLE_BALANCER_KINDS = ['round-robin', 'random', 'least-request', 'p2c-ewma'] as const
export type SimpleBalancerKind = (typeof SIMPLE_BALANCER_KINDS)[number]

/** Consistent hashing on exactly one key source; requests without the key go to a random endpoint. */
export type BalancerModel = { kind: SimpleBalancerKind } | { kind: 'hash'; header?: string; cookie?: string; source?: boolean }

const noFields = (kind: string): JsonSchema => ({
  type: 'object',
  properties: { kind: { type: 'string', const: kind } },
  required: ['kind'],
  additionalProperties: false,
})

const BALANCER = custom<BalancerModel>(
  'Balancer',
  'How a service picks an endpoint for a request (or a TCP connection). `round-robin` (weighted, smooth); `random` (weighted); `least-request`: of two endpoints drawn at random, the one with fewer requests in flight; `p2c-ewma`: of two endpoints drawn at random, the one with the lower peak-EWMA latency times (requests in flight + 1), as Linkerd\'s proxy balances; `hash`: consistent hashing. Every kind skips endpoints that are ejected or failing their health checks; when none is left, it balances over all of them.',
  {
  default: { kind: 'round-robin' },
  schema: {
    oneOf: [
      ...SIMPLE_BALANCER_KINDS.map(noFields),
      {
        description: 'Consistent hashing on exactly one key source; requests without the key go to a random endpoint.',
        type: 'object',
        properties: {
          kind: { type: 'string', const: 'hash' },
          header: { description: 'Lowercase name of the request header hashed.', type: 'string' },
          cookie: { description: 'Name of the cookie hashed.', type: 'string' },
          source: { description: 'Hash the client address.', type: 'boolean', const: true },
        },
        required: ['kind'],
        minProperties: 2,
        maxProperties: 2,
        additionalProperties: false,
      },
    ],
  },
  yaml: {
    schema: {
      anyOf: [
        { description: '`hash` hashes the client address.', enum: [...BALANCER_KINDS] },
        {
          type: 'object',
          properties: {
            ...Object.fromEntries(SIMPLE_BALANCER_KINDS.map((k) => [k, { type: ['object', 'null'], additionalProperties: false }])),
            hash: {
              description: 'Exactly one key source.',
              type: ['object', 'null'],
              properties: {
                header: { description: 'A request header, e.g. `x-user`.', type: 'string' },
                cookie: { description: 'A cookie, e.g. `session`.', type: 'string' },
                source: { description: 'The client address.', const: true },
              },
              minProperties: 1,
              maxProperties: 1,
              additionalProperties: false,
            },
          },
          minProperties: 1,
          maxProperties: 1,
          additionalProperties: false,
        },
      ],
    },
  },
  },
)

export const FAILURE_ACCRUAL = table(
  'FailureAccrual',
  'Passive failure detection (as Linkerd\'s `balancer.linkerd.io/failure-accrual: consecutive`): an endpoint whose responses fail `consecutiveFailures` times in a row (see the service\'s `failureStatuses`, `failureGrpcStatuses`; connect errors, resets and timeouts always count; client errors never) is ejected — it gets no new requests — for a penalty that starts at `minPenalty` and doubles on each ejection in a row up to `maxPenalty`, with jitter. Then one request probes it: a success readmits it (and resets the penalty), a failure ejects it again.',
  {
    consecutiveFailures: count('Failures in a row that eject an endpoint; 0 = never eject.', { min: 0, max: 1000, default: 0 }),
    minPenaltyMs: duration('The first ejection\'s length.', { min: 1, default: 1000 }),
    maxPenaltyMs: duration('The longest ejection.', { min: 1, default: 60000 }),
    jitterPercent: count('Each penalty is shortened by a random share of up to this percentage, so ejected endpoints do not come back together.', { min: 0, max: 100, default: 50 }),
    maxEjectionPercent: count('At most this share of the service\'s endpoints is ejected at once (at least one, when the service has several).', { min: 0, max: 100, default: 50 }),
  },
)

export const HEALTH_CHECK = table(
  'HealthCheck',
  'Active health checks: each endpoint is probed every `interval`, by an HTTP `GET path` (over HTTP/2 when the service\'s `protocol` is `http2`) whose status must be in `expectedStatuses`, or, without a `path`, by a TCP connect. `unhealthyThreshold` failed probes in a row make an endpoint unready: it gets no new requests. `healthyThreshold` passing probes in a row make it ready again. Endpoints start ready, and are probed at once when a config names them.',
  {
    path: nullableText(
      'The request target of an HTTP probe, e.g. `/healthz` or `/ready?verbose=0`; null = a TCP connect probe (what a service used as a `tcpService` wants).',
      checkRequestTarget,
      'a path',
      { default: null },
    ),
    intervalMs: duration('Time between the starts of two probes of an endpoint.', { min: 100, default: 10000 }),
    timeoutMs: duration('A probe that has not passed within this fails (connect and response head). At most `interval`.', { min: 1, default: 1000 }),
    healthyThreshold: count('Passing probes in a row that make an unready endpoint ready again.', { min: 1, max: 100, default: 2 }),
    unhealthyThreshold: count('Failing probes in a row that make a ready endpoint unready.', { min: 1, max: 100, default: 3 }),
    expectedStatuses: text('The HTTP statuses of a passing probe: codes, ranges and classes, e.g. `2xx` or `200-399`.', parseStatusSet, { default: '200-399' }),
  },
)

export const CIRCUIT_BREAKER = table(
  'CircuitBreaker',
  'Service-wide limits, as Envoy\'s circuit-breaker thresholds: past any, a request is answered 503 `overloaded` at once instead of queueing (and counted in `meshproxy_circuit_breaker_overflows_total`); it never counts against an endpoint. The per-endpoint limits (`maxInflightPerEndpoint`, `maxPendingPerEndpoint`) apply as well.',
  {
    maxRequests: count('Requests in flight to the service\'s endpoints at once, from the request being sent to the end of its response; 0 = no limit.', { min: 0, default: 0 }),
    maxPendingRequests: count('Requests of the service waiting at once for an endpoint\'s in-flight slot; 0 = no limit.', { min: 0, default: 0 }),
    maxConnections: count(
      'Open upstream connections to the service\'s endpoints at once (all worker threads together): a request that would need a connection past it is answered 503 `overloaded` at once (it is not queued; pooled connections keep serving). An endpoint two services share counts in the limit of the later one. 0 = no limit.',
      { min: 0, default: 0 },
    ),
  },
)


/** A name a TLS certificate is verified against: a DNS name, or an IP address (no brackets, no port). */
const serverName = (s: string): Parsed<string> => {
  if (isIP(s) !== 0) return ok(s)
  const host = normalizeHost(s)
  if (!host.ok) return fail(`server name "${s}" is not a DNS name or an IP address`, 'a name such as payments.internal, without a port')
  if (host.value.startsWith('*.')) return fail(`server name "${s}" is a wildcard`, 'give the one name the endpoints\' certificates are verified against')
  return host
}

export const UPSTREAM_TLS = table(
  'UpstreamTls',
  'TLS from the proxy to the service\'s endpoints (TLS 1.2 and 1.3, rustls). Each connection is verified: the endpoint\'s certificate must chain to `ca` (or the system roots) and be valid for `serverName`. ALPN offers `h2` on HTTP/2 connections (`protocol: http2`, or `auto` with HTTP/2 requests), which the endpoint must accept, and `http/1.1` on HTTP/1.1 ones. A failed handshake is a connect failure of the endpoint (502 `upstream-connect`), logged with its reason. Active health checks use TLS too. Plaintext and TLS connections to one address, or TLS ones with different settings, never share a pool.',
  {
    serverName: nullableText(
      'The name sent as SNI and verified in the endpoint\'s certificate, e.g. `payments.internal`; null = each endpoint\'s host (a DNS name, or an IP address checked against the certificate\'s IP addresses).',
      serverName,
      'a server name',
      { default: null },
    ),
    ca: nullableText('A PEM bundle of the CA certificates trusted for the endpoints: in YAML a path relative to the YAML file, in the model as resolved; null = the system\'s trusted roots.', pemFile('CA'), 'a path', { default: null }),
    cert: nullableText('A PEM client certificate (chain) presented to the endpoints, with `key`; null = none.', pemFile('certificate'), 'a path', { default: null }),
    key: nullableText('The PEM private key of `cert`.', pemFile('key'), 'a path', { default: null }),
  },
)

/** The values of a service's `protocol`, the default first. */
export const UPSTREAM_PROTOCOLS = ['http1', 'http2', 'auto'] as const

export const SERVICE = table('Service', 'A set of endpoints and how requests reach them.', {
  name: text('Unique service name, as routes and `tcpService` refer to it.', nameOf('service'), { yaml: { required: true } }),
  balancer: BALANCER,
  endpoints: listOf(nested(ENDPOINT, { yaml: { shorthand: 'address' } }), 'May be empty: routes to the service answer 503 `no-endpoints`.'),
  protocol: oneOf(
    UPSTREAM_PROTOCOLS,
    'protocols',
    'The protocol spoken to the endpoints. `http1`: HTTP/1.1, one request at a time per pooled connection. `http2`: HTTP/2 over cleartext with prior knowledge (h2c), many requests multiplexed over few connections; needed for gRPC. `auto`: the version of the downstream request. From Kubernetes it follows the Service port\'s `appProtocol`: `kubernetes.io/h2c` and `grpc` give `http2`; `http`, `kubernetes.io/ws` or none give `http1`.',
    { default: 'http1' },
  ),
  connectTimeoutMs: duration('Upstream TCP connect timeout.', { min: 1, default: 1000 }),
  maxInflightPerEndpoint: count('Requests in flight per endpoint.', { min: 1, default: 1000 }),
  maxPendingPerEndpoint: count('Requests waiting for an in-flight slot per endpoint; beyond it, 503 `overloaded`.', { min: 0, default: 1000 }),
  maxStreamsPerConnection: count(
    'HTTP/2 (`protocol` `http2`, or `auto` with HTTP/2 requests): requests multiplexed on one upstream connection before another connection to the endpoint is opened; the endpoint\'s own SETTINGS_MAX_CONCURRENT_STREAMS lowers it further. Unused for HTTP/1.1.',
    { min: 1, default: 100 },
  ),
  pool: nested(POOL),
  failureStatuses: text(
    'The HTTP response statuses that count as an endpoint\'s failure (for `failureAccrual` and the success-rate metrics), in Linkerd\'s syntax: codes, ranges and classes, e.g. `5xx` or `500-504,429`; `""` = none.',
    parseStatusSet,
    { default: '500-599' },
  ),
  failureGrpcStatuses: text(
    'The `grpc-status` values of a gRPC response that count as an endpoint\'s failure, e.g. `unavailable,internal` (names as Linkerd writes them, or codes); `""` = none.',
    parseGrpcStatusSet,
    { default: 'unknown,deadline-exceeded,internal,unavailable' },
  ),
  failureAccrual: nested(FAILURE_ACCRUAL),
  circuitBreaker: nullableNested(CIRCUIT_BREAKER, { doc: 'Service-wide limits on requests; null = none.', default: null }),
  healthCheck: nullableNested(HEALTH_CHECK, { doc: 'Active health checks of the endpoints; null = none (only failure accrual, if configured, takes endpoints out).', default: null }),
  rateLimits: listOf(nested(RATE_LIMIT), 'Rate limits on every request sent to the service, whichever route sends it (with a traffic split, the requests the split sends here), checked once the service is chosen and before an endpoint is; all must admit a request. A retried request counts once.'),
  policies: listOf(nested(POLICY, { yaml: { shorthand: 'file' } }), 'Rego policies checked on every response from this service\'s endpoints, after the route\'s (response phase only; see Policy).'),
  tls: nullableNested(UPSTREAM_TLS, { doc: 'TLS to the endpoints; null = plaintext.', default: null }),
  identity: nullableText(
    'The endpoints are meshproxies (their inbound `mtls` listeners) running as this workload identity: `<service-account>.<namespace>` in this proxy\'s trust domain, or a SPIFFE ID. Connections are mTLS with the top-level `identity`; the peer\'s chain must lead to the trust anchors and its URI SAN be exactly this identity (SNI `<sa>.<ns>.serviceaccount.identity.<td>`), else the connect fails (502 `upstream-connect`, `meshproxy_mtls_connect_failures_total`). With `protocol: http1`, plain HTTP/1.1 requests travel over HTTP/2 between the proxies (marked `meshproxy-orig-proto: HTTP/1.1`, which the peer removes); upgrades and HTTP/1.0 stay HTTP/1.1. null = not meshed. Not together with `tls`.',
    checkMeshIdentity,
    'an identity',
    { default: null },
  ),
})

export const ADMIN = table('Admin', 'The admin listener (`/live`, `/ready`, `/metrics`, `/config`).', {
  address: text('`host:port` of the admin listener.', address, { default: DEFAULT_ADMIN, yaml: { required: true } }),
})

export const CONFIG = table('Config', 'A meshproxy config.', {
  apiVersion: yamlOnly('Optional in native documents; any other value marks a Kubernetes resource.', { const: OUR_API_VERSION }),
  kind: yamlOnly('Optional; `Config` with `apiVersion: meshproxy.io/v1alpha1`.', { const: 'Config' }),
  metadata: yamlOnly('Ignored (for tools that expect it).', { type: 'object' }),
  listeners: listOf(nested(LISTENER), 'The listening sockets.'),
  services: listOf(nested(SERVICE), 'The upstream services.'),
  admin: nullableNested(ADMIN, { doc: 'The admin listener; null = none.', yaml: { shorthand: 'address' } }),
  identity: nullableNested(IDENTITY, { doc: 'This proxy\'s mesh identity (for `mtls` listeners and services with `identity`); null = none.', default: null }),
})

export type ConfigModel = ModelOf<typeof CONFIG>
export type ListenerModel = ModelOf<typeof LISTENER>
export type Http2Model = ModelOf<typeof HTTP2>
export type TlsModel = ModelOf<typeof TLS>
export type TlsCertificateModel = ModelOf<typeof TLS_CERTIFICATE>
export type RouteModel = ModelOf<typeof ROUTE>
export type PathMatch = ModelOf<typeof PATH_MATCH>
export type HeaderMatch = ModelOf<typeof HEADER_MATCH>
export type AuthorizationModel = ModelOf<typeof AUTHORIZATION>
export type AuthorizationRuleModel = ModelOf<typeof AUTHORIZATION_RULE>
export type QueryParamMatchModel = ModelOf<typeof QUERY_PARAM_MATCH>
export type CookieMatchModel = ModelOf<typeof COOKIE_MATCH>
export type HeaderModifierModel = ModelOf<typeof HEADER_MODIFIER>
export type HeaderValueModel = ModelOf<typeof HEADER_VALUE>
export type UrlRewriteModel = ModelOf<typeof URL_REWRITE>
export type RedirectModel = ModelOf<typeof REDIRECT>
export type ServiceModel = ModelOf<typeof SERVICE>
export type EndpointModel = ModelOf<typeof ENDPOINT>
export type PoolModel = ModelOf<typeof POOL>
export type FailureAccrualModel = ModelOf<typeof FAILURE_ACCRUAL>
export type RetryModel = ModelOf<typeof RETRY>
export type BackendRefModel = ModelOf<typeof BACKEND_REF>
export type CircuitBreakerModel = ModelOf<typeof CIRCUIT_BREAKER>
export type HealthCheckModel = ModelOf<typeof HEALTH_CHECK>
export type UpstreamTlsModel = ModelOf<typeof UPSTREAM_TLS>
export type RateLimitModel = ModelOf<typeof RATE_LIMIT>
export type RateLimitOverrideModel = ModelOf<typeof RATE_LIMIT_OVERRIDE>
export type GlobalRateLimitModel = ModelOf<typeof GLOBAL_RATE_LIMIT>
export type PolicyModel = ModelOf<typeof POLICY>
export type AdminModel = ModelOf<typeof ADMIN>
export type ListenerProtocol = (typeof LISTENER_PROTOCOLS)[number]
export type IdentityModel = ModelOf<typeof IDENTITY>
export type MtlsMode = (typeof MTLS_MODES)[number]
export type UpstreamProtocol = (typeof UPSTREAM_PROTOCOLS)[number]
