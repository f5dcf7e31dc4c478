/**
 * Malformed requests get 400 `meshproxy-error: bad-request`, are never forwarded (or, when the
 * head already went, the upstream request is aborted) and never count against an endpoint:
 * ambiguous `Host` fields (RFC 9112 §3.2), an absolute-form target that disagrees with `Host`
 * (routed on the target, RFC 9112 §3.2.2), an HTTP/2 `host` that disagrees with `:authority`
 * (RFC 9113 §8.3.1), and a request body with broken chunked framing.
 */
import http from 'node:http'
import test from 'ava'
import { startBackend, type Handler } from './helpers/backend.js'
import { h2connect, h2request } from './helpers/h2.js'
import { rawRequest, sleep } from './helpers/http.js'
import { simpleYaml, startProxy } from './helpers/proxy.js'

const twoHosts = (a: string, b: string) => `
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - { name: to-a, match: { host: a.test }, service: a }
      - { name: to-b, match: { host: b.test }, service: b }
services:
  - { name: a, endpoints: [${a}] }
  - { name: b, endpoints: [${b}] }
`

for (const [what, head] of [
  ['two Host field lines', 'Host: a.test\r\nHost: b.test\r\n'],
  ['two Host field lines that agree', 'Host: a.test\r\nHost: a.test\r\n'],
  ['a Host with userinfo', 'Host: user@a.test\r\n'],
  ['a Host with a path', 'Host: a.test/admin\r\n'],
  ['a Host with a non-numeric port', 'Host: a.test:http\r\n'],
  ['an HTTP/1.1 request without Host', ''],
] as const) {
  test(`${what}: 400 bad-request, nothing forwarded`, async (t) => {
    const a = await startBackend(t, 'a')
    const b = await startBackend(t, 'b')
    const { port, proxy } = await startProxy(t, twoHosts(a.address, b.address))
    const res = await rawRequest(port, `GET /x HTTP/1.1\r\n${head}Connection: close\r\n\r\n`)
    t.is(res.status, 400)
    t.is(res.headers['meshproxy-error'], 'bad-request')
    t.is(a.requests.length + b.requests.length, 0)
    const stats = await proxy.stats()
    t.true(stats.endpoints.every((e) => e.requests === 0 && e.failures === 0))
  })
}

test('absolute-form target: routed on its authority, and the upstream Host is replaced by it', async (t) => {
  const a = await startBackend(t, 'a')
  const b = await startBackend(t, 'b')
  const { port } = await startProxy(t, twoHosts(a.address, b.address))
  const res = await rawRequest(port, 'GET http://b.test/x?y=1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n')
  t.is(res.status, 200)
  t.is(res.body, 'b')
  t.is(a.requests.length, 0)
  t.is(b.requests.length, 1)
  t.is(b.requests[0]?.headers.host, 'b.test')
  t.is(b.requests[0]?.url, '/x?y=1')
})

test('HTTP/2: a host header that disagrees with :authority gets 400 bad-request; one that agrees passes', async (t) => {
  const a = await startBackend(t, 'a')
  const b = await startBackend(t, 'b')
  const { address } = await startProxy(t, twoHosts(a.address, b.address))
  const session = h2connect(t, address)
  const bad = await h2request(session, { ':method': 'GET', ':path': '/', ':authority': 'a.test', host: 'b.test' })
  t.is(bad.status, 400)
  t.is(bad.headers['meshproxy-error'], 'bad-request')
  t.is(a.requests.length + b.requests.length, 0)
  const ok = await h2request(session, { ':method': 'GET', ':path': '/', ':authority': 'a.test', host: 'A.test' })
  t.is(ok.status, 200)
  t.is(ok.body, 'a')
})

/** Reads the whole request body before answering; records whether the body ended or broke off. */
function bodyReader(outcomes: string[]): Handler {
  return (req, res) => {
    req.on('data', () => {})
    req.on('end', () => {
      outcomes.push('complete')
      res.end('read it all')
    })
    req.on('aborted', () => outcomes.push('aborted'))
    req.on('error', () => {})
  }
}

test('a request body with an invalid chunk size: 400 bad-request, the upstream request aborted, not the endpoint failure', async (t) => {
  const outcomes: string[] = []
  const backend = await startBackend(t, 'b', bodyReader(outcomes))
  const { port, proxy } = await startProxy(t, simpleYaml([backend.address]))
  const res = await rawRequest(
    port,
    'POST /upload HTTP/1.1\r\nHost: x.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n',
  )
  t.is(res.status, 400)
  t.is(res.headers['meshproxy-error'], 'bad-request')
  // The head may have reached the backend before the bad chunk arrived; its request never completes.
  for (let i = 0; i < 50 && backend.requests.length > 0 && outcomes.length === 0; i++) await sleep(20)
  t.false(outcomes.includes('complete'))
  const [endpoint] = (await proxy.stats()).endpoints
  t.is(endpoint?.failures, 0, 'a client error is not counted against the endpoint')
  const metrics = proxy.metrics()
  t.regex(metrics, /meshproxy_proxy_errors_total\{listener="main",error="bad-request"\} 1/)
  t.regex(metrics, /meshproxy_proxy_errors_total\{listener="main",error="upstream-reset"\} 0/)
  // The endpoint still serves well-formed requests.
  const good = await new Promise<number>((resolve, reject) => {
    const req = http.request({ port, method: 'POST', path: '/', headers: { host: 'x.test' } }, (r) => {
      r.resume()
      resolve(r.statusCode ?? 0)
    })
    req.on('error', reject)
    req.write('chunked ')
    req.end('body')
  })
  t.is(good, 200)
})
