/**
 * The bench's `tls` scenario (bench/lib/tls.mjs), its parts: s_time's output read, the certificate
 * made, and the three targets' TLS configs as generated. The scenario run for real is in
 * bench-harness.spec.ts (serial there, away from its timing-sensitive tests).
 */
import test from 'ava'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { formatDiagnostic, loadConfigText } from '../ts/index.js'
// @ts-expect-error: plain ESM module of the bench
import { haproxyConf, proxyNginxConf } from '../bench/lib/targets.mjs'
// @ts-expect-error: plain ESM module of the bench
import { makeCertificate, meshproxyTlsYaml } from '../bench/lib/tls.mjs'
// @ts-expect-error: plain ESM module of the bench
import { parseSTime } from '../bench/lib/tls-common.mjs'
// @ts-expect-error: plain ESM module of the bench
import { which } from '../bench/lib/tools.mjs'

test('s_time output: connections, resumed ones and bytes per connection, also when a connection failed', (t) => {
  const text = `Collecting connection statistics for 1 seconds
rrrrrrrrrr*rrrr
rrr

18 connections in 0.05s; 360.00 connections/user sec, bytes read 2610
18 connections in 2 real seconds, 145 bytes read per connection
`
  t.deepEqual(parseSTime(text), { connections: 18, reused: 17, bytesPerConnection: 145, complete: true })
  // A failed connection ends s_time without its counts: the completed ones still count.
  t.deepEqual(parseSTime('\n\nNow timing with session id reuse.\nstarting\nrrrrr*rr'), { connections: 8, reused: 7, bytesPerConnection: null, complete: false })
  t.throws(() => parseSTime('s_time: Unknown option: -foo\n'))
})

test('tls scenario configs: meshproxy terminates TLS with the bench certificate, HAProxy binds ssl crt, nginx listens ssl with HTTP/2', async (t) => {
  const openssl = which('openssl')
  if (!openssl) return t.fail('needs openssl (.ci/run installs it)')
  const dir = mkdtempSync(join(tmpdir(), 'bench-tls-cert-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const tls = await makeCertificate(openssl, dir)
  t.regex(tls.certText, /^-----BEGIN CERTIFICATE-----/)
  t.regex(readFileSync(tls.pem, 'utf8'), /-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----/)
  const backends = [{ addr: '127.0.0.1:9001' }, { addr: '127.0.0.1:9002' }]
  const r = loadConfigText(meshproxyTlsYaml('127.0.0.1:9443', '127.0.0.1:9100', backends, tls), { file: join(dir, 'tls.yaml') })
  t.deepEqual(r.diagnostics.map(formatDiagnostic), [])
  const listener = r.config!.listeners[0]!
  t.deepEqual(listener.tls!.certificates.map((c: { cert: string | null; key: string | null }) => [c.cert, c.key]), [[tls.cert, tls.key]])
  t.deepEqual(r.config!.services[0]!.balancer, { kind: 'round-robin' })
  const h = haproxyConf(dir, 9443, backends, 256, 1, { upstream: 'h1', tls }) as string
  t.true(h.includes(`bind 127.0.0.1:9443 ssl crt ${tls.pem} alpn h2,http/1.1\n`), h)
  t.regex(h, /set-header X-Forwarded-Proto https /)
  t.notRegex(haproxyConf(dir, 9443, backends, 256, 1, { upstream: 'h1' }) as string, /ssl|https/)
  const n = proxyNginxConf(dir, 9443, backends, 1, false, tls) as string
  t.true(n.includes(`listen 127.0.0.1:9443 ssl http2 backlog=4096;\n    ssl_certificate ${tls.cert};\n    ssl_certificate_key ${tls.key};\n    ssl_protocols TLSv1.2 TLSv1.3;\n`), n)
})
