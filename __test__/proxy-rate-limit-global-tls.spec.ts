/**
 * Global rate limits on a Redis reached over TLS (`rediss://`), through real proxies and a real
 * `redis-server` started with `--tls-port` and a certificate from a test CA made with openssl: the
 * CA bundle named in the YAML (relative to the file) verifies the server and two proxies share the
 * count; the URL's password authenticates and is shown as `***` in `/config` and the logs; a
 * server the bundle does not trust is refused, handled by the fail mode and counted as a fallback.
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
