/**
 * The seed Ingress routes through the real proxy. With its Services and EndpointSlices
 * (placeholder ports rewritten to real backends) service-a.example.com reaches service-a's two
 * ready endpoints and service-b.example.com service-b's; the Ingress alone loads and answers 503
 * `no-endpoints`.
 */
import { readFileSync } from 'node:fs'
import http from 'node:http'
import test from 'ava'
import { loadConfigText } from '../ts/index.js'
import { startBackends } from './helpers/backend.js'
import { runCli } from './helpers/cli.js'
import { get } from './helpers/http.js'
import { load, startProxy } from './helpers/proxy.js'

const fixture = (name: string): string => readFileSync(new URL(`fixtures/${name}`, import.meta.url), 'utf8')
const fixturePath = (name: string): string => new URL(`fixtures/${name}`, import.meta.url).pathname
const OPTS = { defaultListen: '127.0.0.1:0', defaultAdmin: null }

test('seed Ingress with Services and EndpointSlices routes each host to its service', async (t) => {
  const b = await startBackends(t, ['a1', 'b', 'a2'])
  const text = fixture('seed-ingress-full.yaml')
  t.true(text.includes('18081') && text.includes('18082') && text.includes('18083'))
  const rewritten = text.replaceAll('18081', String(b.a1!.port)).replaceAll('18082', String(b.b!.port)).replaceAll('18083', String(b.a2!.port))
  const model = load(rewritten, OPTS)
  const { proxy, port } = await startProxy(t, model)
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())

  const seenA = new Set<string>()
  for (let i = 0; i < 10; i++) {
    const res = await get(port, `/a/${i}`, { host: 'service-a.example.com' }, agent)
    t.is(res.status, 200)
    seenA.add(res.body)
  }
  t.deepEqual([...seenA].sort(), ['a1', 'a2'], 'both ready endpoints of service-a, nothing else')
  t.is(b.a1!.requests.length + b.a2!.requests.length, 10)
  t.is(b.b!.requests.length, 0)

  for (let i = 0; i < 5; i++) {
    const res = await get(port, `/b/${i}`, { host: 'service-b.example.com' }, agent)
    t.is(res.status, 200)
    t.is(res.body, 'b')
  }
  t.is(b.b!.requests.length, 5)
  t.is(b.b!.requests[0]!.headers['host'], 'service-b.example.com', 'Host passes through')

  // The not-ready endpoint (127.0.0.2) is not used, and no rule matches another host.
  const stats = await proxy.stats()
  t.false(stats.endpoints.some((e) => e.address.startsWith('127.0.0.2')), JSON.stringify(stats.endpoints))
  const miss = await get(port, '/', { host: 'service-c.example.com' })
  t.is(miss.status, 404)
  t.is(miss.headers['meshproxy-error'], 'no-route')
})

test('the seed Ingress alone loads and answers 503 no-endpoints', async (t) => {
  const r = loadConfigText(fixture('seed-ingress.yaml'), { file: 'seed-ingress.yaml', ...OPTS })
  t.truthy(r.config, JSON.stringify(r.diagnostics))
  t.deepEqual(
    r.diagnostics.filter((d) => d.severity === 'error'),
    [],
  )
  const { port } = await startProxy(t, r.config!)
  for (const host of ['service-a.example.com', 'service-b.example.com']) {
    const res = await get(port, '/', { host })
    t.is(res.status, 503, host)
    t.is(res.headers['meshproxy-error'], 'no-endpoints', host)
  }
})

test('meshproxy check accepts both seed fixtures', async (t) => {
  for (const name of ['seed-ingress.yaml', 'seed-ingress-full.yaml']) {
    const r = await runCli(t, ['check', fixturePath(name)])
    t.is(r.code, 0, r.stderr)
    t.regex(r.stdout, /: ok: 1 listener\(s\), 2 route\(s\), 2 service\(s\), \d+ endpoint\(s\)/)
  }
})
