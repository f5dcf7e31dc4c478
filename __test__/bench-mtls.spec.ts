/**
 * The bench's `mtls` scenario (bench/lib/mtls.mjs), its parts: the identity material, each
 * product's two configs as generated (loaded by meshproxy, checked by `haproxy -c` and `nginx
 * -t`), and the probe's readings of what the A → B hop negotiated. The scenario run for real is
 * in bench-harness.spec.ts (serial there, away from its timing-sensitive tests).
 */
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ROOT } from './helpers/cli.js'
import { formatDiagnostic, loadConfigText } from '../ts/index.js'
// @ts-expect-error: plain ESM module of the bench
import { haproxyMtlsConf, makeMeshIdentity, meshproxyMtlsYaml, nginxMtlsConf, parseHopLine, parseMeshproxyHop } from '../bench/lib/mtls.mjs'
// @ts-expect-error: plain ESM module of the bench
import { which } from '../bench/lib/tools.mjs'

const backends = [{ addr: '127.0.0.1:9001' }, { addr: '127.0.0.1:9002' }]

test('mtls scenario material: one CA, a and b with SPIFFE IDs, certificate and key in one PEM for HAProxy', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-mtls-id-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const mesh = await makeMeshIdentity(ROOT, join(dir, 'mesh'))
  t.is(mesh.serverName, 'b.bench.serviceaccount.identity.bench.local')
  t.is(mesh.a.spiffe, 'spiffe://bench.local/ns/bench/sa/a')
  t.regex(readFileSync(mesh.b.pem, 'utf8'), /-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----/)
  const openssl = which('openssl')
  if (!openssl) return t.fail('needs openssl (.ci/run installs it)')
  const text = spawnSync(openssl, ['x509', '-in', mesh.b.cert, '-noout', '-text'], { encoding: 'utf8' }).stdout
  t.regex(text, /URI:spiffe:\/\/bench\.local\/ns\/bench\/sa\/b, DNS:b\.bench\.serviceaccount\.identity\.bench\.local/)
  t.regex(text, /prime256v1|P-256/)
  const verify = spawnSync(openssl, ['verify', '-CAfile', mesh.ca, mesh.a.cert], { encoding: 'utf8' })
  t.is(verify.status, 0, verify.stdout + verify.stderr)
})

test('mtls scenario configs: meshproxy loads both sides, haproxy -c and nginx -t accept both sides with and without the probe log', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-mtls-conf-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const mesh = await makeMeshIdentity(ROOT, join(dir, 'mesh'))
  for (const side of ['inbound', 'outbound']) {
    const yaml = meshproxyMtlsYaml(side, { listen: '127.0.0.1:9443', admin: '127.0.0.1:9100', backends, mesh, peer: '127.0.0.1:9444' }) as string
    const r = loadConfigText(yaml, { file: join(dir, `${side}.yaml`) })
    t.deepEqual(r.diagnostics.map(formatDiagnostic), [], side)
    const listener = r.config!.listeners[0]!
    t.is(r.config!.identity?.name, side === 'inbound' ? 'b' : 'a')
    if (side === 'inbound') t.is(listener.mtls, 'required')
    else t.is(r.config!.services[0]!.identity, 'b.bench')
  }
  const haproxy = which('haproxy')
  const nginx = which('nginx')
  if (!haproxy || !nginx) return t.fail('needs haproxy and nginx (.ci/run installs them)')
  for (const side of ['inbound', 'outbound']) {
    for (const probe of [false, true]) {
      const d = join(dir, `${side}-${probe}`)
      mkdirSync(d)
      const opts = { port: 9443, h2Port: 9445, maxconn: 256, workers: 1, backends, mesh, peer: '127.0.0.1:9444', probe }
      const h = haproxyMtlsConf(side, d, opts) as string
      writeFileSync(join(d, 'haproxy.cfg'), h)
      const hc = spawnSync(haproxy, ['-c', '-f', join(d, 'haproxy.cfg')], { encoding: 'utf8' })
      t.is(hc.status, 0, `haproxy ${side} probe ${probe}: ${hc.stdout}${hc.stderr}`)
      const n = nginxMtlsConf(side, d, opts) as string
      writeFileSync(join(d, 'nginx.conf'), n)
      const nc = spawnSync(nginx, ['-t', '-p', d, '-e', join(d, 'error.log'), '-c', join(d, 'nginx.conf')], { encoding: 'utf8' })
      t.is(nc.status, 0, `nginx ${side} probe ${probe}: ${nc.stdout}${nc.stderr}`)
      if (side === 'outbound') {
        t.true(h.includes(`ssl crt ${mesh.a.pem} ca-file ${mesh.ca} verify required sni str(${mesh.serverName}) alpn h2 `), h)
        t.true(n.includes(`proxy_ssl_certificate ${mesh.a.cert};`) && n.includes('proxy_ssl_verify on;') && n.includes('proxy_ssl_session_reuse on;'), n)
      } else {
        t.true(h.includes(`ssl crt ${mesh.b.pem} ca-file ${mesh.ca} verify required`), h)
        t.true(n.includes(`ssl_client_certificate ${mesh.ca};\n    ssl_verify_client on;`), n)
        t.is(h.includes('mtls-hop'), probe)
        t.is(n.includes('mtls-hop'), probe)
      }
    }
  }
})

test('mtls scenario probe: what the hop negotiated, from meshproxy debug lines and HAProxy and nginx log lines', (t) => {
  const line =
    '\x1b[2m2026-12-07T01:02:23.981342Z\x1b[0m \x1b[34mDEBUG\x1b[0m mTLS peer authenticated \x1b[3mlistener\x1b[0m\x1b[2m=\x1b[0minbound \x1b[3mpeer\x1b[0m\x1b[2m=\x1b[0m127.0.0.1:35524 ' +
    '\x1b[3mpeer_id\x1b[0m\x1b[2m=\x1b[0mspiffe://bench.local/ns/bench/sa/a \x1b[3malpn\x1b[0m\x1b[2m=\x1b[0mSome(H2) \x1b[3mversion\x1b[0m\x1b[2m=\x1b[0mSome(TLSv1_3) ' +
    '\x1b[3msuite\x1b[0m\x1b[2m=\x1b[0mSome(TLS13_AES_256_GCM_SHA384) \x1b[3mkind\x1b[0m\x1b[2m=\x1b[0mSome(Full)\n'
  t.deepEqual(parseMeshproxyHop(`meshproxy: listening on http://127.0.0.1:1 (inbound)\n${line}`), {
    protocol: 'TLSv1.3',
    cipher: 'TLS_AES_256_GCM_SHA384',
    alpn: 'h2',
    client: 'verified (spiffe://bench.local/ns/bench/sa/a)',
  })
  t.is(parseMeshproxyHop('meshproxy: listening on http://127.0.0.1:1 (inbound)\n'), null)
  t.deepEqual(parseHopLine('127.0.0.1:1 [x] inbound/1: Connection closed during SSL handshake\nmtls-hop TLSv1.3 TLS_AES_128_GCM_SHA256 h2 0\n'), { protocol: 'TLSv1.3', cipher: 'TLS_AES_128_GCM_SHA256', alpn: 'h2', client: 'verified' })
  t.deepEqual(parseHopLine('mtls-hop TLSv1.3 TLS_AES_128_GCM_SHA256  SUCCESS\n'), { protocol: 'TLSv1.3', cipher: 'TLS_AES_128_GCM_SHA256', alpn: null, client: 'verified' })
  t.is(parseHopLine('mtls-hop TLSv1.3 TLS_AES_128_GCM_SHA256 - NONE\n')?.client, 'not verified (NONE)')
  t.is(parseHopLine(''), null)
})
