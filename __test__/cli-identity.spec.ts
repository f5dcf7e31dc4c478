/**
 * `meshproxy identity` as an operator runs it: a trust anchor and SPIFFE workload certificates
 * made in Rust, checked by real peers (openssl verifies the chain and reads the SANs; Node's `tls`
 * completes an mTLS handshake with two issued identities and refuses a foreign anchor's), and
 * `check`'s exit codes.
 */
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as tls from 'node:tls'
import test, { type ExecutionContext } from 'ava'
import { checkIdentity, initIdentity, issueIdentity, MeshProxyError } from '../dist/index.js'
import { runCli } from './helpers/cli.js'

function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'meshproxy-identity-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

const openssl = (...args: string[]): string => execFileSync('openssl', args, { encoding: 'utf8' })

test('identity init and issue make a chain openssl verifies, with the SPIFFE ID as URI SAN', async (t) => {
  const dir = tempDir(t)
  const init = await runCli(t, ['identity', 'init', dir, '--trust-domain', 'cluster.local'])
  t.is(init.code, 0, init.stderr)
  t.regex(init.stdout, /trust anchor spiffe:\/\/cluster\.local/)
  const issue = await runCli(t, ['identity', 'issue', 'web', '--namespace', 'shop', '--dir', dir])
  t.is(issue.code, 0, issue.stderr)
  t.regex(issue.stdout, /workload spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web/)

  const cert = join(dir, 'web.shop.crt')
  t.regex(openssl('verify', '-CAfile', join(dir, 'ca.crt'), cert), /: OK/)
  const text = openssl('x509', '-in', cert, '-noout', '-text')
  t.regex(text, /URI:spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web/)
  t.regex(text, /DNS:web\.shop\.serviceaccount\.identity\.cluster\.local/)
  t.regex(text, /TLS Web Server Authentication, TLS Web Client Authentication/)
  // A day by default.
  const notAfter = new Date(/Not After : (.+)/.exec(text)![1]!)
  const hours = (notAfter.getTime() - Date.now()) / 3_600_000
  t.true(hours > 23 && hours <= 24, `${hours} h`)
  for (const key of ['ca.key', 'web.shop.key']) t.is(statSync(join(dir, key)).mode & 0o077, 0, `${key} readable by others`)
})

test('two issued identities complete an mTLS handshake, and a foreign anchor is refused', async (t) => {
  const dir = tempDir(t)
  const foreign = tempDir(t)
  await initIdentity(dir, { trustDomain: 'cluster.local' })
  await initIdentity(foreign, { trustDomain: 'cluster.local' })
  await issueIdentity(dir, 'web', { namespace: 'shop' })
  await issueIdentity(dir, 'api', { namespace: 'shop' })
  await issueIdentity(foreign, 'evil', { namespace: 'shop' })
  const read = (d: string, f: string) => readFileSync(join(d, f))
  const ca = read(dir, 'ca.crt')

  const server = tls.createServer({ key: read(dir, 'api.shop.key'), cert: read(dir, 'api.shop.crt'), ca, requestCert: true, rejectUnauthorized: false }, (s) => {
    // The server's verdict on the client's certificate, against the trust anchor.
    s.end(`${s.authorized ? 'authorized' : `refused ${String(s.authorizationError)}`} ${s.getPeerCertificate().subjectaltname ?? ''}\n`)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => server.close())
  const port = (server.address() as import('node:net').AddressInfo).port
  const connect = (d: string, name: string) =>
    new Promise<{ seen: string; peer: string }>((resolve, reject) => {
      const c = tls.connect({
        host: '127.0.0.1',
        port,
        ca,
        key: read(d, `${name}.shop.key`),
        cert: read(d, `${name}.shop.crt`),
        servername: 'api.shop.serviceaccount.identity.cluster.local',
      })
      let seen = ''
      c.setEncoding('utf8').on('data', (s: string) => (seen += s))
      c.on('secureConnect', () => (c as tls.TLSSocket & { peer?: string }).peer = c.getPeerCertificate().subjectaltname)
      c.on('end', () => resolve({ seen, peer: (c as tls.TLSSocket & { peer?: string }).peer ?? '' }))
      c.on('error', reject)
    })

  const ok = await connect(dir, 'web')
  t.regex(ok.seen, /^authorized URI:spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web/, 'the server sees the client identity')
  t.regex(ok.peer, /URI:spiffe:\/\/cluster\.local\/ns\/shop\/sa\/api/, 'the client sees the server identity')
  const evil = await connect(foreign, 'evil')
  t.regex(evil.seen, /^refused UNABLE_TO_VERIFY_LEAF_SIGNATURE /, 'a certificate from a foreign anchor is refused')
})

test('identity check exits 0 on fresh material and 1 when a certificate is near expiry or untrusted', async (t) => {
  const dir = tempDir(t)
  await initIdentity(dir, { trustDomain: 'cluster.local' })
  await issueIdentity(dir, 'web', { namespace: 'shop' })
  const fresh = await runCli(t, ['identity', 'check', '--dir', dir])
  t.is(fresh.code, 0, fresh.stderr)
  t.regex(fresh.stdout, /^valid\s+anchor\s+spiffe:\/\/cluster\.local /m)
  t.regex(fresh.stdout, /^valid\s+workload\s+spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web .* \(23h left\)/m)

  const near = await runCli(t, ['identity', 'check', '--dir', dir, '--within', '48h'])
  t.is(near.code, 1)
  t.regex(near.stdout, /^expires-soon\s+workload/m)

  // A certificate another anchor signed, dropped into the directory.
  const other = tempDir(t)
  await initIdentity(other, { trustDomain: 'cluster.local' })
  await issueIdentity(other, 'api', { namespace: 'shop' })
  execFileSync('cp', [join(other, 'api.shop.crt'), join(other, 'api.shop.key'), dir])
  const status = await checkIdentity(dir)
  t.false(status.ok)
  t.deepEqual(
    status.certificates.map((c) => [c.role, c.id, c.standing]),
    [
      ['anchor', 'spiffe://cluster.local', 'valid'],
      ['workload', 'spiffe://cluster.local/ns/shop/sa/api', 'untrusted'],
      ['workload', 'spiffe://cluster.local/ns/shop/sa/web', 'valid'],
    ],
  )
  const json = await runCli(t, ['identity', 'check', '--dir', dir, '--json'])
  t.is(json.code, 1)
  t.is((JSON.parse(json.stdout) as { certificates: unknown[] }).certificates.length, 3)
})

test('a rotation keeps what the old anchor issued trusted; init refuses to overwrite an anchor by default', async (t) => {
  const dir = tempDir(t)
  await initIdentity(dir, { trustDomain: 'cluster.local' })
  await issueIdentity(dir, 'web', { namespace: 'shop' })
  const again = await runCli(t, ['identity', 'init', dir, '--trust-domain', 'cluster.local'])
  t.is(again.code, 1)
  t.regex(again.stderr, /ca\.crt already exists \(pass --force to replace the trust anchor\) \(MESHPROXY_IDENTITY_EXISTS\)/)

  const rotate = await runCli(t, ['identity', 'init', dir, '--trust-domain', 'cluster.local', '--rotate'])
  t.is(rotate.code, 0, rotate.stderr)
  t.regex(rotate.stdout, /ca\.crt holds 2 anchors/)
  await issueIdentity(dir, 'api', { namespace: 'shop' })
  t.true((await checkIdentity(dir)).ok, 'both leaves trusted by the two-anchor bundle')
  t.regex(openssl('verify', '-CAfile', join(dir, 'ca.crt'), join(dir, 'web.shop.crt')), /: OK/)
  t.regex(openssl('verify', '-CAfile', join(dir, 'ca.crt'), join(dir, 'api.shop.crt')), /: OK/)
})

test('bad names and a missing anchor are clear errors with stable codes', async (t) => {
  const dir = tempDir(t)
  const td = await runCli(t, ['identity', 'init', dir, '--trust-domain', 'Cluster.Local'])
  t.is(td.code, 1)
  t.regex(td.stderr, /trust domain "Cluster\.Local" is not valid: 'C' is not allowed .* e\.g\. cluster\.local \(MESHPROXY_IDENTITY_INVALID\)/)
  const missing = await t.throwsAsync(issueIdentity(dir, 'web', { namespace: 'shop' }))
  t.true(missing instanceof MeshProxyError)
  t.is((missing as MeshProxyError).code, 'MESHPROXY_IDENTITY_IO')
  await initIdentity(dir, { trustDomain: 'cluster.local' })
  const name = await runCli(t, ['identity', 'issue', 'Web_1', '-n', 'shop', '--dir', dir])
  t.is(name.code, 1)
  t.regex(name.stderr, /name "Web_1" is not valid: only lowercase letters, digits and '-' are allowed/)
  const validity = await runCli(t, ['identity', 'issue', 'web', '-n', 'shop', '--dir', dir, '--validity', '24'])
  t.is(validity.code, 1)
  t.regex(validity.stderr, /duration "24" has no unit/)
})
