/**
 * Global rate limits on a Redis reached over TLS (`rediss://`), through real proxies and a real
 * `redis-server` started with `--tls-port` and a certificate from a test CA made with openssl: the
 * CA bundle named in the YAML (relative to the file) verifies the server and two proxies share the
 * count; the URL's password authenticates and is shown as `***` in `/config` and the logs; a
 * server the bundle does not trust is refused, handled by the fail mode and counted as a fallback.
 * A server that requires client certificates (`--tls-auth-clients yes`) refuses a limit without
 * `cert` and `key` and answers one with them; bad `ca`, `cert` and `key` are reported at their
 * line and column.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import test from 'ava'
import { startBackends } from './helpers/backend.js'
import { runCli, startCliProxy } from './helpers/cli.js'
import { get, sleep } from './helpers/http.js'
import { count, keepAliveAgent, limitedRoutesYaml, routeLimitsYaml, throughBoth, twoProxies } from './helpers/rate-limit.js'
import { startRedis } from './helpers/redis.js'
import { makeUpstreamCerts } from './helpers/upstream-certs.js'

test.serial('a rediss:// limit verified by the CA bundle next to the YAML holds across two proxies, and /config hides its password', async (t) => {
  const certs = makeUpstreamCerts(t)
  const redis = await startRedis(t, { tls: { cert: certs.serverCert, key: certs.serverKey }, password: 'pa55word' })
  t.regex(redis.url, /^rediss:\/\/:pa55word@127\.0\.0\.1:\d+$/)
  const b = await startBackends(t, ['a'])
  const limit = `{ name: g, rate: 1, burst: 5, global: { redis: "${redis.url}", ca: ca.crt, failMode: closed, timeout: 500ms } }`
  const yaml = limitedRoutesYaml(b.a!.port, [{ name: 'api', limit }], { admin: true })
  const [p1, p2] = await twoProxies(t, yaml, { file: join(certs.dir, 'mesh.yaml') })
  const agent = keepAliveAgent(t, 32)
  // Each proxy's local bucket admits 5 of its 10; Redis, over TLS, admits 5 of those 10 in all.
  const all = await throughBoth(agent, [p1, p2], 10, '/')
  t.log(`admitted ${count(all, 200)} of 20 through two proxies at once`)
  t.deepEqual([...new Set(all.map((r) => r.status))].sort(), [200, 429], 'no 503: every check was answered')
  t.true(count(all, 200) >= 5 && count(all, 200) <= 6, `admitted ${count(all, 200)}: the global burst of 5`)
  t.is(b.a!.requests.length, count(all, 200))

  const config = await get(p1.adminPort, '/config')
  const model = JSON.parse(config.body) as { listeners: { routes: { rateLimits: { global: { redis: string; ca: string } }[] }[] }[] }
  const global = model.listeners[0]!.routes[0]!.rateLimits[0]!.global
  t.is(global.redis, `rediss://:***@127.0.0.1:${redis.port}`)
  t.is(global.ca, certs.ca, 'the bundle resolved against the YAML file\'s directory')
  t.false(config.body.includes('pa55word'))
})

test.serial('a rediss:// server the CA bundle does not trust is refused: fail-closed answers 503, the fallback counts, the log hides the password', async (t) => {
  const certs = makeUpstreamCerts(t)
  const redis = await startRedis(t, { tls: { cert: certs.serverCert, key: certs.serverKey }, password: 'pa55word' })
  const b = await startBackends(t, ['a'])
  const file = join(certs.dir, 'wrong-ca.yaml')
  const limit = `{ name: g, rate: 100, burst: 100, global: { redis: "${redis.url}", ca: other-ca.crt, failMode: closed, timeout: 500ms } }`
  writeFileSync(file, limitedRoutesYaml(b.a!.port, [{ name: 'api', limit }], { admin: true }))
  const checked = await runCli(t, ['check', file])
  t.is(checked.code, 0, checked.stderr)
  const cli = await startCliProxy(t, ['-c', file])
  const { port, adminPort } = cli
  const refused = await get(port, '/')
  t.is(refused.status, 503)
  t.is(refused.headers['meshproxy-error'], 'rate-limit-unavailable')
  t.is(b.a!.requests.length, 0)
  const metrics = (await get(adminPort, '/metrics')).body
  t.regex(metrics, /meshproxy_rate_limit_fallback_total\{listener="main",route="api",service="",limit="g"\} 1\b/)
  // The check times out (the connection manager retries the handshake within it) and is logged
  // at once; a connection of the proxy's own then logs why it fails, within a few seconds.
  const deadline = Date.now() + 10_000
  while (!/cannot connect to redis/.test(cli.stderr()) && Date.now() < deadline) await sleep(50)
  const log = cli.stderr()
  t.regex(log, /global rate limit check failed/)
  t.true(log.includes(`rediss://:***@127.0.0.1:${redis.port}`), log)
  t.regex(log, /cannot connect to redis.*invalid peer certificate: UnknownIssuer/, 'the reason: the server is not trusted')
  t.false(log.includes('pa55word'), log)
})

test.serial('a rediss:// server that requires client certificates refuses a limit without cert and key (fail-closed: 503) and answers one with them', async (t) => {
  const certs = makeUpstreamCerts(t)
  const redis = await startRedis(t, { tls: { cert: certs.serverCert, key: certs.serverKey, clients: { ca: certs.ca, cert: certs.clientCert, key: certs.clientKey } } })
  const b = await startBackends(t, ['a'])
  const file = join(certs.dir, 'client-cert.yaml')
  writeFileSync(
    file,
    limitedRoutesYaml(
      b.a!.port,
      [
        { name: 'anonymous', path: '/anonymous', limit: `{ name: g, rate: 100, burst: 100, global: { redis: "${redis.url}", ca: ca.crt, failMode: closed, timeout: 500ms } }` },
        { name: 'api', path: '/api', limit: `{ name: g, rate: 100, burst: 100, global: { redis: "${redis.url}", ca: ca.crt, cert: client.crt, key: client.key, failMode: closed, timeout: 2s } }` },
      ],
      { admin: true },
    ),
  )
  const checked = await runCli(t, ['check', file])
  t.is(checked.code, 0, checked.stderr)
  const cli = await startCliProxy(t, ['-c', file])
  const { port, adminPort } = cli

  const refused = await get(port, '/anonymous')
  t.is(refused.status, 503, 'fail-closed: the server refuses a client without a certificate')
  t.is(refused.headers['meshproxy-error'], 'rate-limit-unavailable')
  t.is(b.a!.requests.length, 0)
  for (let i = 0; i < 3; i++) t.is((await get(port, '/api')).status, 200, 'fail-closed, and admitted: the server answered the check')
  t.is(b.a!.requests.length, 3)
  const metrics = (await get(adminPort, '/metrics')).body
  t.regex(metrics, /meshproxy_rate_limit_fallback_total\{listener="main",route="anonymous",service="",limit="g"\} 1\b/)
  t.regex(metrics, /meshproxy_rate_limit_fallback_total\{listener="main",route="api",service="",limit="g"\} 0\b/)

  const config = await get(adminPort, '/config')
  const model = JSON.parse(config.body) as { listeners: { routes: { rateLimits: { global: { cert: string | null; key: string | null } }[] }[] }[] }
  const global = model.listeners[0]!.routes[1]!.rateLimits[0]!.global
  t.deepEqual([global.cert, global.key], [certs.clientCert, certs.clientKey], 'cert and key resolved against the YAML file\'s directory')
})

test('a cert or key with a redis:// URL, a cert without a key or a key without a cert, an unreadable cert, or a key not of the cert is reported at its line and column', async (t) => {
  const certs = makeUpstreamCerts(t)
  const file = join(certs.dir, 'bad-client-cert.yaml')
  writeFileSync(
    file,
    routeLimitsYaml([
      '{ rate: 1, global: { redis: "redis://127.0.0.1:6379", cert: client.crt, key: client.key } }',
      '{ name: two, rate: 1, global: { redis: "rediss://127.0.0.1:6380", cert: client.crt } }',
      '{ name: three, rate: 1, global: { redis: "rediss://127.0.0.1:6380", key: client.key } }',
      '{ name: four, rate: 1, global: { redis: "rediss://127.0.0.1:6380", cert: missing.crt, key: client.key } }',
      '{ name: five, rate: 1, global: { redis: "rediss://127.0.0.1:6380", cert: client.crt, key: server.key } }',
      '{ name: six, rate: 1, global: { redis: "rediss://127.0.0.1:6380", ca: ca.crt, cert: client.crt, key: client.key } }',
    ]),
  )
  const r = await runCli(t, ['check', file])
  t.is(r.code, 1)
  t.true(r.stderr.includes(`${file}:6:73: error: `) && r.stderr.includes('a client certificate is only used with TLS, and "redis://127.0.0.1:6379" is not a rediss:// URL'), r.stderr)
  t.true(r.stderr.includes(`${file}:7:85: error: `) && r.stderr.includes('has a cert but no key'), r.stderr)
  t.true(r.stderr.includes(`${file}:8:86: error: `) && r.stderr.includes('has a key but no cert'), r.stderr)
  t.true(r.stderr.includes(`${file}:9:86: error: `) && r.stderr.includes(`cannot read cert "${join(certs.dir, 'missing.crt')}": no such file`), r.stderr)
  t.true(r.stderr.includes(`${file}:10:103: error: `) && r.stderr.includes(`key "${certs.serverKey}" is not the private key of cert "${certs.clientCert}"`), r.stderr)
  t.false(r.stderr.includes(`${file}:11:`), 'a rediss:// URL with a readable cert and its key is valid')
})

test('a ca with a redis:// URL, or an unreadable ca, is reported at its line and column', async (t) => {
  const certs = makeUpstreamCerts(t)
  const file = join(certs.dir, 'bad.yaml')
  writeFileSync(
    file,
    routeLimitsYaml([
      '{ rate: 1, global: { redis: "redis://:pw@127.0.0.1:6379", ca: ca.crt } }',
      '{ name: two, rate: 1, global: { redis: "rediss://127.0.0.1:6380", ca: missing.pem } }',
      '{ name: three, rate: 1, global: { redis: "http://:pw@127.0.0.1:6380" } }',
    ]),
  )
  const r = await runCli(t, ['check', file])
  t.is(r.code, 1)
  t.true(r.stderr.includes(`${file}:6:75: error: rate limit of route`) && r.stderr.includes('"redis://:***@127.0.0.1:6379" is not a rediss:// URL'), r.stderr)
  t.true(r.stderr.includes(`${file}:7:83: error: `) && r.stderr.includes(`cannot read ca "${join(certs.dir, 'missing.pem')}": no such file`), r.stderr)
  t.true(r.stderr.includes(`${file}:8:54: error: `) && r.stderr.includes('"http://:***@127.0.0.1:6380" is not a redis:// or rediss:// URL'), r.stderr)
  t.false(r.stderr.includes(':pw@'), r.stderr)
})
