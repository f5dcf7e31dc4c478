/**
 * Global rate limits through real proxies and a real `redis-server`: two proxies sharing one
 * global limit hold the combined rate; Redis killed mid-test gives each limit its fail mode (open:
 * the local limit alone; closed: 503 `rate-limit-unavailable`) with the fallback counted, and once
 * Redis is back the global count applies again; a service's global limit holds across its routes
 * (a retried one included) and CONNECT tunnels; a `RateLimiter` with `spec.global` does the same for
 * the Service it names. Real time on a shared 2-core machine: counts are
 * checked against what the limit allows over the measured time, with loose tolerances.
 */
import http from 'node:http'
import test, { type ExecutionContext } from 'ava'
import { startBackends } from './helpers/backend.js'
import { connectOnce, get, sleep, type Res } from './helpers/http.js'
import { type Started } from './helpers/proxy.js'
import { count, keepAliveAgent, limitedRoutesYaml, routeCounter, throughBoth, twoProxies } from './helpers/rate-limit.js'
import { startRedis } from './helpers/redis.js'
import { echo, startTcpServer } from './helpers/tcp.js'

/** Two proxies with one config: routes `/open` and `/closed`, each with one global limit. */
function openAndClosed(t: ExecutionContext, redis: string, backendPort: number, rate: number, burst: number): Promise<[Started, Started]> {
  const limit = (name: string, failMode: string): string => `{ name: ${name}, rate: ${rate}, burst: ${burst}, global: { redis: "${redis}", failMode: ${failMode}, timeout: 50ms } }`
  const yaml = limitedRoutesYaml(backendPort, [
    { name: 'open', path: '/open', limit: limit('g-open', 'open') },
    { name: 'closed', path: '/closed', limit: limit('g-closed', 'closed') },
  ])
  return twoProxies(t, yaml)
}

/** Sends `perSecond` requests a second, evenly spaced, to `path` on `port` for `ms`. */
async function offer(port: number, path: string, perSecond: number, ms: number, agent: http.Agent): Promise<Res[]> {
  const sent: Promise<Res>[] = []
  const start = performance.now()
  for (let i = 0; i < (perSecond * ms) / 1000; i++) {
    const due = start + (i * 1000) / perSecond
    const now = performance.now()
    if (due > now) await sleep(due - now)
    sent.push(get(port, path, {}, agent))
  }
  return Promise.all(sent)
}

test.serial('two proxies sharing one global limit hold the combined rate', async (t) => {
  const redis = await startRedis(t)
  const b = await startBackends(t, ['a'])
  const [p1, p2] = await openAndClosed(t, redis.url, b.a!.port, 50, 10)
  const agent = keepAliveAgent(t, 32)

  // 100 a second through each proxy for 4 s: each proxy's local limit alone would admit
  // 10 + 50 × 4 = 210, both together 420; the global limit admits 210 in all.
  const start = performance.now()
  const [r1, r2] = await Promise.all([offer(p1.port, '/open', 100, 4000, agent), offer(p2.port, '/open', 100, 4000, agent)])
  const elapsed = (performance.now() - start) / 1000
  const all = [...r1, ...r2]
  const admitted = count(all, 200)
  const allowed = 10 + 50 * elapsed
  t.log(`admitted ${admitted} (${count(r1, 200)} + ${count(r2, 200)}) of ${all.length} in ${elapsed.toFixed(2)} s; the global limit allows ${allowed.toFixed(0)}`)
  t.deepEqual([...new Set(all.map((r) => r.status))].sort(), [200, 429], 'only 200 and 429')
  t.true(admitted <= allowed * 1.15, `admitted ${admitted} > ${allowed.toFixed(0)} + 15 %`)
  t.true(admitted >= allowed * 0.85, `admitted ${admitted} < ${allowed.toFixed(0)} − 15 %`)
  t.is(b.a!.requests.length, admitted, 'a refused request never reaches the backend')
  // How the total splits between the proxies is first come, first served (each slot goes to
  // whichever proxy asks Redis first), so only the total is checked.

  const refused = all.find((r) => r.status === 429)!
  t.is(refused.headers['meshproxy-error'], 'rate-limited')
  t.is(refused.headers['ratelimit-policy'], '"g-open";q=50;w=1;meshproxy-burst=10')
  t.truthy(refused.headers['retry-after'])
  for (const p of [p1, p2]) {
    t.regex(p.proxy.metrics(), /meshproxy_rate_limit_fallback_total\{listener="main",route="open",service="",limit="g-open"\} 0\b/)
  }
  const limited = [p1, p2].map((p) => routeCounter(p.proxy.metrics(), 'meshproxy_rate_limited_total', 'open'))
  t.is(limited[0]! + limited[1]!, all.length - admitted, 'every refusal counted by its proxy')
})

test.serial('Redis killed: fail-open admits by the local limit, fail-closed refuses, the fallback counts; Redis back: the global limit applies again', async (t) => {
  const redis = await startRedis(t)
  const b = await startBackends(t, ['a'])
  const [p1, p2] = await openAndClosed(t, redis.url, b.a!.port, 5, 10)
  const agent = keepAliveAgent(t, 32)

  t.is((await get(p1.port, '/closed', {}, agent)).status, 200, 'redis up: admitted')
  t.is((await get(p1.port, '/open', {}, agent)).status, 200)

  await redis.stop()
  const closed = await get(p1.port, '/closed', {}, agent)
  t.is(closed.status, 503, 'fail-closed refuses')
  t.is(closed.headers['meshproxy-error'], 'rate-limit-unavailable')
  t.is(closed.headers['retry-after'], '1')

  // Fail-open: the local bucket (burst 10, one used) still holds, Redis or not.
  const burst = await Promise.all(Array.from({ length: 20 }, () => get(p1.port, '/open', {}, agent)))
  const open = count(burst, 200)
  t.log(`redis down: /open admitted ${open} of 20 at once`)
  t.deepEqual([...new Set(burst.map((r) => r.status))].sort(), [200, 429])
  t.true(open >= 8 && open <= 11, `admitted ${open}: the local burst`)
  const fallback = (p: Started, route: string): number => routeCounter(p.proxy.metrics(), 'meshproxy_rate_limit_fallback_total', route)
  t.is(fallback(p1, 'open'), open, 'each admitted request counted as a fallback')
  t.is(fallback(p1, 'closed'), 1)

  // Back on the same port, empty: both proxies reconnect by themselves.
  await redis.start()
  for (const p of [p1, p2]) {
    const deadline = Date.now() + 10_000
    let status = 0
    while (Date.now() < deadline && (status = (await get(p.port, '/closed', {}, agent)).status) !== 200) await sleep(100)
    t.is(status, 200, 'fail-closed admits again once redis answers')
  }
  // Both local buckets full again (10 at 5 a second: 2 s), then 10 at once through each proxy:
  // each local bucket would admit all 10; the global one admits its burst of 10 in all.
  await sleep(2200)
  const both = await throughBoth(agent, [p1, p2], 10, '/open')
  const admitted = count(both, 200)
  t.log(`redis back: /open admitted ${admitted} of 20 through two proxies at once`)
  t.true(admitted >= 9 && admitted <= 12, `admitted ${admitted}: the global burst of 10`)
  t.is(both.find((r) => r.status === 429)?.headers['ratelimit-policy'], '"g-open";q=5;w=1;meshproxy-burst=10')
  t.is(fallback(p1, 'open') + fallback(p2, 'open'), open, 'no fallback once redis is back')
})

test.serial('a service\'s global limit is shared by its routes on every proxy, retried routes included, and a refused request reaches no endpoint', async (t) => {
  const redis = await startRedis(t)
  const b = await startBackends(t, ['a'])
  const yaml = `
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - name: plain
        match: { path: /plain }
        service: a
      - name: retried
        match: { path: /retried }
        service: a
        retry: { limit: 1 }
services:
  - name: a
    endpoints: [127.0.0.1:${b.a!.port}]
    rateLimits:
      - { name: svc, rate: 1, burst: 5, global: { redis: "${redis.url}", failMode: closed } }
`
  const [p1, p2] = await twoProxies(t, yaml)
  const agent = keepAliveAgent(t, 32)
  // Each proxy's local bucket admits 5 of its 10; Redis admits 5 of those 10 in all.
  const all = await throughBoth(agent, [p1, p2], 10, '/plain', '/retried')
  const admitted = count(all, 200)
  t.log(`admitted ${admitted} of 20 through two proxies at once`)
  t.deepEqual([...new Set(all.map((r) => r.status))].sort(), [200, 429])
  t.true(admitted >= 5 && admitted <= 6, `admitted ${admitted}: the service's global burst of 5`)
  t.is(b.a!.requests.length, admitted, 'a refused request never reaches the endpoint')
  t.is(all.find((r) => r.status === 429)?.headers['ratelimit-policy'], '"svc";q=1;w=1;meshproxy-burst=5')
  const limited = [p1, p2].map((p) => Number(/meshproxy_rate_limited_total\{listener="",route="",service="a",limit="svc"\} (\d+)/.exec(p.proxy.metrics())?.[1]))
  t.is(limited[0]! + limited[1]!, 20 - admitted)
})

/** An HTTP/1.1 CONNECT through `port`: its status and `meshproxy-error`; the tunnel is closed. */
async function connect(port: number, authority: string): Promise<{ status: number; error?: string }> {
  const res = await connectOnce(port, authority)
  const error = res.headers['meshproxy-error'] as string | undefined
  return error === undefined ? { status: res.statusCode ?? 0 } : { status: res.statusCode ?? 0, error }
}

test.serial('a CONNECT tunnel counts against its service\'s global limit before an endpoint is chosen', async (t) => {
  const redis = await startRedis(t)
  const tcp = await startTcpServer(t, echo)
  const yaml = `
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - { name: tunnel, match: { host: db.internal }, service: db, allowConnect: true }
services:
  - name: db
    endpoints: [${tcp.address}]
    rateLimits:
      - { name: tunnels, rate: 1, burst: 1, global: { redis: "${redis.url}", failMode: closed } }
`
  const [p1, p2] = await twoProxies(t, yaml)
  t.is((await connect(p1.port, 'db.internal:5432')).status, 200, 'the global burst of 1')
  // The second proxy's own bucket is full; Redis refuses.
  t.deepEqual(await connect(p2.port, 'db.internal:5432'), { status: 429, error: 'rate-limited' })
  await redis.stop()
  // Redis down, failMode closed: refused before any endpoint is chosen (after a second, the
  // local bucket admits again).
  await sleep(1100)
  t.deepEqual(await connect(p2.port, 'db.internal:5432'), { status: 503, error: 'rate-limit-unavailable' })
  t.is(tcp.connections, 1, 'only the admitted tunnel reached the endpoint')
})

test.serial('a RateLimiter with spec.global holds its Service\'s burst across two proxies, and fails closed when Redis is down', async (t) => {
  const redis = await startRedis(t)
  const b = await startBackends(t, ['a'])
  const yaml = `
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - { name: all, service: service-a }
services:
  - name: service-a
    endpoints: [127.0.0.1:${b.a!.port}]
---
apiVersion: linkerd.io/v1alpha2
kind: RateLimiter
metadata:
  name: default
spec:
  global: { redis: "${redis.url}", failMode: closed }
  limits:
  - service: service-a
    rate: 1
    burst: 5
`
  const [p1, p2] = await twoProxies(t, yaml)
  const agent = keepAliveAgent(t, 32)
  // Each proxy's local bucket admits 5 of its 10; Redis admits 5 of those 10 in all.
  const all = await throughBoth(agent, [p1, p2], 10, '/')
  const admitted = count(all, 200)
  t.log(`admitted ${admitted} of 20 through two proxies at once`)
  t.true(admitted >= 5 && admitted <= 6, `admitted ${admitted}: the RateLimiter's global burst of 5`)
  t.is(all.find((r) => r.status === 429)?.headers['ratelimit-policy'], '"default";q=1;w=1;meshproxy-burst=5')
  await redis.stop()
  // The local bucket admits again after a second; Redis is down and the limit fails closed.
  await sleep(1100)
  const down = await get(p1.port, '/', {}, agent)
  t.is(down.status, 503)
  t.is(down.headers['meshproxy-error'], 'rate-limit-unavailable')
})
