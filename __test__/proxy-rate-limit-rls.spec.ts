/**
 * Global rate limits through Envoy's rate limit service: real proxies, a real envoyproxy/ratelimit
 * (built with Go on first use, see helpers/ratelimit-service.ts) on a real `redis-server`. Two
 * proxies sharing one service hold the service's combined limit, a keyed limit's descriptor gives
 * each header value its own count, a refusal is the same 429 as a local one (Retry-After from the
 * window's reset) and a gRPC client gets RESOURCE_EXHAUSTED; the service killed gives each limit
 * its fail mode with the fallback counted, and once it is back the proxies reconnect; a bad
 * `global` block is reported at its line and column. envoyproxy/ratelimit counts in fixed
 * windows; the tests use per-minute windows and start away from a minute's end, so counts are
 * exact.
 */
import { writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import * as grpc from '@grpc/grpc-js'
import { startBackends } from './helpers/backend.js'
import { grpcEchoClient, startGrpcEcho } from './helpers/grpc-echo.js'
import { runCli } from './helpers/cli.js'
import { get, sleep } from './helpers/http.js'
import { startProxy, type Started } from './helpers/proxy.js'
import {
  awayFromTheMinutesEnd,
  count,
  keepAliveAgent,
  limitedEchoYaml,
  limitedRoutesYaml,
  routeCounter,
  routeLimitsYaml,
  startRateLimitServiceOnRedis,
  throughBoth,
  twoProxies,
  type LimitedRoute,
} from './helpers/rate-limit.js'
import { ratelimitBinary } from './helpers/ratelimit-service.js'

/**
 * The service's config: route `api`'s limit `total`, 20 a minute; route `users`'s limit `per-user`,
 * 3 a minute per `x-user`; service `echo`'s limit `calls`, 2 a minute.
 */
const RLS_CONFIG = `
domain: mesh
descriptors:
  - key: route
    value: api
    descriptors:
      - key: limit
        value: total
        rate_limit: { unit: minute, requests_per_unit: 20 }
  - key: route
    value: users
    descriptors:
      - key: limit
        value: per-user
        descriptors:
          - key: x-user
            rate_limit: { unit: minute, requests_per_unit: 3 }
  - key: service
    value: echo
    descriptors:
      - key: limit
        value: calls
        rate_limit: { unit: minute, requests_per_unit: 2 }
`

/**
 * Routes `api` (/api) and `users` (/users, keyed by `x-user`) with fail-open limits through the
 * service at `rls`, high enough locally that the service decides; then `more` routes.
 */
function proxyYaml(rls: string, backendPort: number, more: LimitedRoute[] = []): string {
  const global = `global: { rls: "${rls}", domain: mesh, failMode: open, timeout: 500ms }`
  return limitedRoutesYaml(backendPort, [
    { name: 'api', path: '/api', limit: `{ name: total, rate: 1000, burst: 1000, ${global} }` },
    { name: 'users', path: '/users', limit: `{ name: per-user, rate: 1000, burst: 1000, key: { header: x-user }, ${global} }` },
    ...more,
  ])
}

test.before('envoyproxy/ratelimit is built (the first time: a Go build of a few minutes)', async (t) => {
  t.timeout(10 * 60_000)
  await ratelimitBinary()
})

test.serial('two proxies sharing one rate limit service hold its combined limit, and a refusal is the same 429 as a local one', async (t) => {
  const rls = await startRateLimitServiceOnRedis(t, RLS_CONFIG)
  const b = await startBackends(t, ['a'])
  const [p1, p2] = await twoProxies(t, proxyYaml(rls.address, b.a!.port))
  const agent = keepAliveAgent(t, 16)
  await awayFromTheMinutesEnd()

  // 15 through each proxy: each local limit admits all 30; the service admits 20 in all.
  const all = await throughBoth(agent, [p1, p2], 15, '/api')
  t.deepEqual([...new Set(all.map((r) => r.status))].sort(), [200, 429], 'only 200 and 429')
  t.is(count(all, 200), 20, 'the service\'s 20 a minute across both proxies')
  t.is(b.a!.requests.length, 20, 'a refused request never reaches the backend')
  const refused = all.find((r) => r.status === 429)!
  t.is(refused.headers['meshproxy-error'], 'rate-limited')
  t.is(refused.headers['ratelimit-policy'], '"total";q=1000;w=1;meshproxy-burst=1000')
  const retryAfter = Number(refused.headers['retry-after'])
  t.true(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${retryAfter}: the time until the minute's window resets`)
  t.is(refused.headers['ratelimit'], `"total";r=0;t=${retryAfter}`)
  const limited = [p1, p2].map((p) => routeCounter(p.proxy.metrics(), 'meshproxy_rate_limited_total', 'api'))
  t.is(limited[0]! + limited[1]!, 10, 'every refusal counted by its proxy')
  for (const p of [p1, p2]) t.regex(p.proxy.metrics(), /meshproxy_rate_limit_fallback_total\{listener="main",route="api",service="",limit="total"\} 0\b/)

  // Keyed by a header: the descriptor's third entry is x-user's value, each value its own count.
  const user = (name: string, p: Started) => get(p.port, '/users', { 'x-user': name }, agent)
  const alice = await Promise.all([user('alice', p1), user('alice', p2), user('alice', p1), user('alice', p2), user('alice', p1)])
  const bob = await Promise.all([user('bob', p1), user('bob', p2), user('bob', p1), user('bob', p2)])
  t.deepEqual([count(alice, 200), count(bob, 200)], [3, 3], 'three a minute per user, across both proxies')
})

test.serial('the rate limit service killed: fail-open admits by the local limit, fail-closed refuses, the fallback counts; back: the proxies reconnect', async (t) => {
  const rls = await startRateLimitServiceOnRedis(t, RLS_CONFIG)
  const b = await startBackends(t, ['a'])
  const closedLimit = `{ name: total, rate: 1000, burst: 1000, global: { rls: "http://${rls.address}", domain: mesh, failMode: closed, timeout: 500ms } }`
  const { port, proxy } = await startProxy(t, proxyYaml(rls.address, b.a!.port, [{ name: 'closed', path: '/closed', limit: closedLimit }]))
  const agent = keepAliveAgent(t, 16)
  t.is((await get(port, '/closed', {}, agent)).status, 200, 'the service up: admitted')

  await rls.stop()
  const closed = await get(port, '/closed', {}, agent)
  t.is(closed.status, 503, 'fail-closed refuses')
  t.is(closed.headers['meshproxy-error'], 'rate-limit-unavailable')
  t.is(closed.headers['retry-after'], '1')
  const open = await Promise.all(Array.from({ length: 5 }, () => get(port, '/api', {}, agent)))
  t.is(count(open, 200), 5, 'fail-open admits by the local limit alone')
  const fallback = (route: string): number => routeCounter(proxy.metrics(), 'meshproxy_rate_limit_fallback_total', route)
  t.is(fallback('api'), 5, 'each admitted request counted as a fallback')
  t.is(fallback('closed'), 1)

  await rls.start()
  const deadline = Date.now() + 10_000
  let status = 0
  while (Date.now() < deadline && (status = (await get(port, '/closed', {}, agent)).status) !== 200) await sleep(100)
  t.is(status, 200, 'fail-closed admits again once the service answers')
  const before = fallback('api')
  t.is((await get(port, '/api', {}, agent)).status, 200)
  t.is(fallback('api'), before, 'no fallback once the service is back')
})

test.serial('a gRPC client over a service\'s rls limit gets RESOURCE_EXHAUSTED, and the call never reaches the server', async (t) => {
  const rls = await startRateLimitServiceOnRedis(t, RLS_CONFIG)
  const echo = await startGrpcEcho(t)
  const { address } = await startProxy(t, limitedEchoYaml(echo.port, `[{ name: calls, rate: 100, global: { rls: "${rls.address}", domain: mesh, timeout: 500ms } }]`))
  await awayFromTheMinutesEnd()
  const call = grpcEchoClient(t, address)
  const codes = []
  for (let i = 0; i < 4; i++) codes.push((await call())?.code ?? grpc.status.OK)
  t.deepEqual(codes, [grpc.status.OK, grpc.status.OK, grpc.status.RESOURCE_EXHAUSTED, grpc.status.RESOURCE_EXHAUSTED], 'two a minute for service echo')
  t.is(echo.calls(), 2, 'refused calls never reach the server')
})

test('a global block with both redis and rls, rls without a domain, a bad rls address or a ca with rls is reported at its line and column', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'meshproxy-rls-'))
  const file = join(dir, 'bad.yaml')
  writeFileSync(
    file,
    routeLimitsYaml([
      '{ rate: 1, global: { redis: "redis://127.0.0.1:6379", rls: 127.0.0.1:8081, domain: mesh } }',
      '{ name: two, rate: 1, global: { rls: 127.0.0.1:8081 } }',
      '{ name: three, rate: 1, global: { rls: "127.0.0.1", domain: mesh } }',
      '{ name: four, rate: 1, global: { rls: 127.0.0.1:8081, domain: mesh, ca: ca.crt } }',
      '{ name: five, rate: 1, global: { failMode: closed } }',
    ]),
  )
  const r = await runCli(t, ['check', file])
  t.is(r.code, 1)
  t.true(r.stderr.includes(`${file}:6:67: error: `) && r.stderr.includes('has both "redis" and "rls"'), r.stderr)
  t.true(r.stderr.includes(`${file}:7:45: error: `) && r.stderr.includes('with "rls" is missing required field "domain"'), r.stderr)
  t.true(r.stderr.includes(`${file}:8:52: error: `) && r.stderr.includes('"127.0.0.1" is not a rate limit service address'), r.stderr)
  t.true(r.stderr.includes(`${file}:9:85: error: `) && r.stderr.includes('a CA bundle is only used with TLS, and the rate limit service "127.0.0.1:8081" is reached over plaintext HTTP/2'), r.stderr)
  t.true(r.stderr.includes(`${file}:10:44: error: `) && r.stderr.includes('is missing required field "redis" or "rls"'), r.stderr)
})
