/**
 * A proxy that issues its own mesh certificate (`identity.selfIssue`) from the trust anchor's
 * key: nothing is written to disk, the certificate is renewed at 65–75 % of its lifetime, and
 * two such proxies keep exchanging mTLS under load across renewals without a failed request.
 */
import http from 'node:http'
import { existsSync, renameSync } from 'node:fs'
import { join } from 'node:path'
import test from 'ava'
import { loadConfigText } from '../ts/index.js'
import { startBackend } from './helpers/backend.js'
import { keepSending, sleep } from './helpers/http.js'
import { adminGet, inbound, makeMesh, metric, outbound } from './helpers/mesh.js'

const SELF_ISSUE = '\n  selfIssue: true\n  lifetime: 10s'

function get(port: number): Promise<{ status: number; error: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: '/', headers: { host: 'orders' }, agent: false }, (res) => {
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode ?? 0, error: res.headers['meshproxy-error'] as string | undefined }))
    })
    req.on('error', reject)
    req.end()
  })
}

interface IdentityView {
  issuer: string
  renewsAtUnix: number
  loadedAtUnix: number
  certificate: { serial: string; notAfterUnix: number }
}

test('two self-issuing proxies renew their certificates under load with no failed request, write nothing, and count requests and their latency by peer identity', async (t) => {
  const mesh = await makeMesh(t, [])
  const app = await startBackend(t, 'orders-app', (_req, res) => res.end('ok'))
  const b = await inbound(t, mesh, 'orders', app.address, { identity: SELF_ISSUE })
  // Pooled connections close after 100 ms idle, so new handshakes meet the renewed certificates.
  const a = await outbound(t, mesh, 'web', b.address, 'orders.shop', { identity: SELF_ISSUE, service: '\n    pool: { idleTimeout: 100ms }' })
  const view = async (port: number): Promise<IdentityView> => JSON.parse(await adminGet(port, '/identity')) as IdentityView
  const [firstA, firstB] = [await view(a.adminPort), await view(b.adminPort)]
  for (const v of [firstA, firstB]) {
    t.is(v.issuer, 'self')
    const lifetime = v.certificate.notAfterUnix - v.loadedAtUnix
    const share = (v.renewsAtUnix - v.loadedAtUnix) / lifetime
    t.true(lifetime > 8.9 && lifetime <= 10, `lifetime ${lifetime}s`)
    t.true(share >= 0.65 && share < 0.75, `renews at ${share} of its lifetime`)
  }

  const sending = keepSending(3, () => get(a.port), 5)
  // Both renew 6.5–7.5 s after they started; allow a loaded machine a few seconds more.
  const serials = { a: new Set([firstA.certificate.serial]), b: new Set([firstB.certificate.serial]) }
  for (let i = 0; i < 120 && (serials.a.size < 2 || serials.b.size < 2); i++) {
    await sleep(100)
    serials.a.add((await view(a.adminPort)).certificate.serial)
    serials.b.add((await view(b.adminPort)).certificate.serial)
  }
  await sleep(500)
  await sending.stop()
  const { ok, failed } = sending
  t.true(serials.a.size >= 2, 'A renewed its certificate')
  t.true(serials.b.size >= 2, 'B renewed its certificate')
  t.deepEqual(failed, [], 'no request failed across the renewals')
  t.true(ok > 50, `requests went through (${ok})`)
  const renewed = await view(b.adminPort)
  t.true(renewed.renewsAtUnix > firstB.renewsAtUnix, 'the next renewal is scheduled')
  t.false(existsSync(join(mesh.dir, 'orders.shop.crt')) || existsSync(join(mesh.dir, 'orders.shop.key')), 'no certificate or key is written')
  const metrics = await adminGet(b.adminPort, '/metrics')
  t.regex(metrics, /meshproxy_identity_reloads_total\{result="ok"\} [1-9]/)
  // B counts what it answered each verified peer identity.
  const byPeer = metric(metrics, 'meshproxy_peer_requests_total{listener="inbound",client_id="spiffe://cluster.local/ns/shop/sa/web",status_class="2xx"}')
  t.is(byPeer, ok, 'every request is counted under the web identity')
  const peerLabels = 'listener="inbound",client_id="spiffe://cluster.local/ns/shop/sa/web"'
  t.is(metric(metrics, `meshproxy_peer_response_latency_seconds_count{${peerLabels}}`), ok, 'and its latency observed')
  t.is(metric(metrics, `meshproxy_peer_response_latency_seconds_bucket{${peerLabels},le="+Inf"}`), ok)
  t.true(metric(metrics, `meshproxy_peer_response_latency_seconds_sum{${peerLabels}}`) > 0)
})

test('selfIssue config errors: the anchor key missing, a lifetime without selfIssue or under 10s', async (t) => {
  const mesh = await makeMesh(t, [])
  const errors = (yaml: string) => loadConfigText(yaml, { file: join(mesh.dir, 'mesh.yaml') }).diagnostics.filter((d) => d.severity === 'error').map((d) => `${d.line}:${d.column} ${d.message}${d.hint ? ` (${d.hint})` : ''}`)
  t.deepEqual(errors('identity: { dir: ., name: web, namespace: shop, selfIssue: true, lifetime: 1h }\nlisteners: []\n'), [])
  const noLifetime = errors('identity: { dir: ., name: web, namespace: shop, lifetime: 1h }\nlisteners: []\n')
  t.is(noLifetime.length, 3, noLifetime.join('\n'))
  t.regex(noLifetime[0]!, /cannot read ".*web\.shop\.crt"/, 'without selfIssue the workload files are read')
  t.regex(noLifetime[2]!, /^1:49 identity: lifetime applies to certificates the proxy issues itself \(add selfIssue: true/)
  const short = errors('identity: { dir: ., name: web, namespace: shop, selfIssue: true, lifetime: 5s }\nlisteners: []\n')
  t.is(short.length, 1, short.join('\n'))
  // The bounds read as durations are written, not as milliseconds.
  t.regex(short[0]!, /^1:76 .*lifetime.* must be between 10s and 720h, got 5s$/)
  renameSync(join(mesh.dir, 'ca.key'), join(mesh.dir, 'elsewhere.key'))
  const noKey = errors('identity: { dir: ., name: web, namespace: shop, selfIssue: true }\nlisteners: []\n')
  t.is(noKey.length, 1, noKey.join('\n'))
  t.regex(noKey[0]!, /identity: cannot read ".*ca\.key": no such file \(make the trust anchor with: .*selfIssue: true needs its key/)
})
