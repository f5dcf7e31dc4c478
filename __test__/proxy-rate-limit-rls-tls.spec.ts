/**
 * Global rate limits through an Envoy rate limit service reached over TLS (`rls: https://…`):
 * real proxies and a real envoyproxy/ratelimit serving gRPC over TLS (`GRPC_SERVER_USE_TLS`, a
 * certificate from a test CA made with openssl) on a real `redis-server`. The CA bundle named in
 * the YAML (relative to the file) verifies the service and two proxies share its count; a service
 * the bundle (or the system roots) does not trust is refused, handled by the fail mode, counted
 * as a fallback and logged with the reason; a bad `ca` is reported at its line and column. A
 * service that requires client certificates (`GRPC_CLIENT_TLS_CACERT`) refuses a proxy without
 * `cert` and `key` and counts one with them; bad `cert` and `key` are reported at their line and
 * column.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import test from 'ava'
import { startBackends } from './helpers/backend.js'
import { runCli, startCliProxy } from './helpers/cli.js'
import { get, sleep } from './helpers/http.js'
import {
  awayFromTheMinutesEnd,
  count,
  keepAliveAgent,
  limitedRoutesYaml,
  routeLimitsYaml,
  startRateLimitServiceOnRedis,
  throughBoth,
  twoProxies,
} from './helpers/rate-limit.js'
import { ratelimitBinary } from './helpers/ratelimit-service.js'
import { makeUpstreamCerts } from './helpers/upstream-certs.js'

/** Route `api`'s limit `total`: 5 a minute. */
const RLS_CONFIG = `
domain: mesh
descriptors:
  - key: route
    value: api
    descriptors:
      - key: limit
        value: total
        rate_limit: { unit: minute, requests_per_unit: 5 }
`

test.before('envoyproxy/ratelimit is built (the first time: a Go build of a few minutes)', async (t) => {
  t.timeout(10 * 60_000)
  await ratelimitBinary()
})

test.serial('an https:// rate limit service verified by the CA bundle next to the YAML holds its limit across two proxies', async (t) => {
  const certs = makeUpstreamCerts(t)
  const rls = await startRateLimitServiceOnRedis(t, RLS_CONFIG, { tls: { cert: certs.serverCert, key: certs.serverKey } })
  const b = await startBackends(t, ['a'])
  const limit = `{ name: total, rate: 1000, burst: 1000, global: { rls: "https://${rls.address}", ca: ca.crt, domain: mesh, failMode: closed, timeout: 2s } }`
  const yaml = limitedRoutesYaml(b.a!.port, [{ name: 'api', limit }], { admin: true })
  const [p1, p2] = await twoProxies(t, yaml, { file: join(certs.dir, 'mesh.yaml') })
  const agent = keepAliveAgent(t, 16)
  await awayFromTheMinutesEnd()

  // 4 through each proxy: each local limit admits all 8; the service, over TLS, admits 5 in all.
  const all = await throughBoth(agent, [p1, p2], 4, '/')
  t.deepEqual([...new Set(all.map((r) => r.status))].sort(), [200, 429], 'no 503: every check was answered over TLS')
  t.is(count(all, 200), 5, 'the service\'s 5 a minute across both proxies')
  t.is(b.a!.requests.length, 5)
  for (const p of [p1, p2]) t.regex(p.proxy.metrics(), /meshproxy_rate_limit_fallback_total\{listener="main",route="api",service="",limit="total"\} 0\b/)

  const config = await get(p1.adminPort, '/config')
  const model = JSON.parse(config.body) as { listeners: { routes: { rateLimits: { global: { rls: string; ca: string } }[] }[] }[] }
  const global = model.listeners[0]!.routes[0]!.rateLimits[0]!.global
  t.is(global.rls, `https://${rls.address}`)
  t.is(global.ca, certs.ca, 'the bundle resolved against the YAML file\'s directory')
})

test.serial('an https:// rate limit service that the CA bundle or the system roots do not trust is refused: the fail mode applies, the fallback counts, the log says why', async (t) => {
  const certs = makeUpstreamCerts(t)
  const rls = await startRateLimitServiceOnRedis(t, RLS_CONFIG, { tls: { cert: certs.serverCert, key: certs.serverKey } })
  const b = await startBackends(t, ['a'])
  const file = join(certs.dir, 'wrong-ca.yaml')
  writeFileSync(
    file,
    limitedRoutesYaml(
      b.a!.port,
      [
        { name: 'api', path: '/api', limit: `{ name: total, rate: 100, global: { rls: "https://${rls.address}", ca: other-ca.crt, domain: mesh, failMode: closed, timeout: 2s } }` },
        { name: 'roots', path: '/roots', limit: `{ name: total, rate: 100, global: { rls: "https://${rls.address}", domain: mesh, failMode: open, timeout: 2s } }` },
      ],
      { admin: true },
    ),
  )
  const checked = await runCli(t, ['check', file])
  t.is(checked.code, 0, checked.stderr)
  const cli = await startCliProxy(t, ['-c', file])
  const { port, adminPort } = cli

  const refused = await get(port, '/api')
  t.is(refused.status, 503, 'fail-closed: the service is not trusted, so the limit could not be checked')
  t.is(refused.headers['meshproxy-error'], 'rate-limit-unavailable')
  t.is(b.a!.requests.length, 0)
  t.is((await get(port, '/roots')).status, 200, 'fail-open: the test CA is not among the system roots, admitted by the local limit')
  t.is(b.a!.requests.length, 1)
  const metrics = (await get(adminPort, '/metrics')).body
  t.regex(metrics, /meshproxy_rate_limit_fallback_total\{listener="main",route="api",service="",limit="total"\} 1\b/)
  t.regex(metrics, /meshproxy_rate_limit_fallback_total\{listener="main",route="roots",service="",limit="total"\} 1\b/)

  const deadline = Date.now() + 10_000
  const reasons = () => cli.stderr().match(/global rate limit check failed.*TLS handshake failed: invalid peer certificate: UnknownIssuer/g) ?? []
  while (reasons().length < 2 && Date.now() < deadline) await sleep(50)
  const log = cli.stderr()
  t.is(reasons().length, 2, `one warning per service and trust, each with the reason:\n${log}`)
  t.true(log.includes(`https://${rls.address}`), log)
})

test.serial('an https:// rate limit service that requires client certificates refuses a limit without cert and key (fail-closed: 503) and counts one with them', async (t) => {
  const certs = makeUpstreamCerts(t)
  const rls = await startRateLimitServiceOnRedis(t, RLS_CONFIG, { tls: { cert: certs.serverCert, key: certs.serverKey, clientCa: certs.ca } })
  const b = await startBackends(t, ['a'])
  const file = join(certs.dir, 'client-cert.yaml')
  writeFileSync(
    file,
    limitedRoutesYaml(
      b.a!.port,
      [
        { name: 'anonymous', path: '/anonymous', limit: `{ name: total, rate: 100, global: { rls: "https://${rls.address}", ca: ca.crt, domain: mesh, failMode: closed, timeout: 2s } }` },
        { name: 'api', path: '/api', limit: `{ name: total, rate: 1000, burst: 1000, global: { rls: "https://${rls.address}", ca: ca.crt, cert: client.crt, key: client.key, domain: mesh, failMode: closed, timeout: 2s } }` },
      ],
      { admin: true },
    ),
  )
  const checked = await runCli(t, ['check', file])
  t.is(checked.code, 0, checked.stderr)
  const cli = await startCliProxy(t, ['-c', file])
  const { port, adminPort } = cli
  await awayFromTheMinutesEnd()

  const refused = await get(port, '/anonymous')
  t.is(refused.status, 503, 'fail-closed: the service refuses a client without a certificate')
  t.is(refused.headers['meshproxy-error'], 'rate-limit-unavailable')
  t.is(b.a!.requests.length, 0)
  const statuses: number[] = []
  for (let i = 0; i < 7; i++) statuses.push((await get(port, '/api')).status)
  t.deepEqual(statuses, [200, 200, 200, 200, 200, 429, 429], 'the service\'s 5 a minute, counted over TLS with the client certificate')
  t.is(b.a!.requests.length, 5)
  const metrics = (await get(adminPort, '/metrics')).body
  t.regex(metrics, /meshproxy_rate_limit_fallback_total\{listener="main",route="anonymous",service="",limit="total"\} 1\b/)
  t.regex(metrics, /meshproxy_rate_limit_fallback_total\{listener="main",route="api",service="",limit="total"\} 0\b/)
})

test('a cert or key with a plaintext rls, a key without a cert, an unreadable key, or a key not of the cert is reported at its line and column', async (t) => {
  const certs = makeUpstreamCerts(t)
  const file = join(certs.dir, 'bad-client-cert.yaml')
  writeFileSync(
    file,
    routeLimitsYaml([
      '{ rate: 1, global: { rls: "http://127.0.0.1:8081", domain: mesh, key: client.key, cert: client.crt } }',
      '{ name: two, rate: 1, global: { rls: "https://127.0.0.1:8443", domain: mesh, key: client.key } }',
      '{ name: three, rate: 1, global: { rls: "https://127.0.0.1:8443", domain: mesh, cert: client.crt, key: missing.key } }',
      '{ name: four, rate: 1, global: { rls: "https://127.0.0.1:8443", domain: mesh, cert: client.crt, key: other-ca.key } }',
      '{ name: five, rate: 1, global: { rls: "https://127.0.0.1:8443", domain: mesh, ca: ca.crt, cert: client.crt, key: client.key } }',
    ]),
  )
  const r = await runCli(t, ['check', file])
  t.is(r.code, 1)
  t.true(r.stderr.includes(`${file}:6:101: error: `) && r.stderr.includes('a client certificate is only used with TLS, and the rate limit service "http://127.0.0.1:8081" is reached over plaintext HTTP/2'), r.stderr)
  t.true(r.stderr.includes(`${file}:7:95: error: `) && r.stderr.includes('has a key but no cert'), r.stderr)
  t.true(r.stderr.includes(`${file}:8:115: error: `) && r.stderr.includes(`cannot read key "${join(certs.dir, 'missing.key')}": no such file`), r.stderr)
  t.true(r.stderr.includes(`${file}:9:114: error: `) && r.stderr.includes(`key "${join(certs.dir, 'other-ca.key')}" is not the private key of cert "${certs.clientCert}"`), r.stderr)
  t.false(r.stderr.includes(`${file}:10:`), 'an https:// service with a readable cert and its key is valid')
})

test('a ca with a plaintext rls, an unreadable ca or an https address without a port is reported at its line and column', async (t) => {
  const certs = makeUpstreamCerts(t)
  const file = join(certs.dir, 'bad.yaml')
  writeFileSync(
    file,
    routeLimitsYaml([
      '{ rate: 1, global: { rls: "http://127.0.0.1:8081", domain: mesh, ca: ca.crt } }',
      '{ name: two, rate: 1, global: { rls: "https://127.0.0.1:8443", domain: mesh, ca: missing.pem } }',
      '{ name: three, rate: 1, global: { rls: "https://127.0.0.1", domain: mesh } }',
      '{ name: four, rate: 1, global: { rls: "https://127.0.0.1:8443", domain: mesh, ca: ca.crt } }',
    ]),
  )
  const r = await runCli(t, ['check', file])
  t.is(r.code, 1)
  t.true(r.stderr.includes(`${file}:6:82: error: `) && r.stderr.includes('a CA bundle is only used with TLS, and the rate limit service "http://127.0.0.1:8081" is reached over plaintext HTTP/2'), r.stderr)
  t.true(r.stderr.includes(`${file}:7:94: error: `) && r.stderr.includes(`cannot read ca "${join(certs.dir, 'missing.pem')}": no such file`), r.stderr)
  t.true(r.stderr.includes(`${file}:8:52: error: `) && r.stderr.includes('"https://127.0.0.1" is not a rate limit service address'), r.stderr)
  t.false(r.stderr.includes(`${file}:9:`), 'an https:// service with a readable CA bundle is valid')
})
