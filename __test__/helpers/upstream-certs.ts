/**
 * TLS material for upstream TLS tests, made with the `openssl` CLI in a fresh temporary directory
 * (removed on teardown): a CA with a server certificate for `localhost`, `payments.internal` and
 * 127.0.0.1, a client certificate it signs, and a second CA that signed neither.
 */
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { ExecutionContext } from 'ava'

export interface UpstreamCerts {
  dir: string
  /** Paths of the PEM files. */
  ca: string
  serverCert: string
  serverKey: string
  clientCert: string
  clientKey: string
  /** A CA that signed nothing here. */
  otherCa: string
  /** File contents, for Node servers. */
  pem: { ca: Buffer; serverCert: Buffer; serverKey: Buffer; clientCert: Buffer; clientKey: Buffer }
}

export function makeUpstreamCerts(t: ExecutionContext): UpstreamCerts {
  const dir = mkdtempSync(join(tmpdir(), 'meshproxy-upstream-certs-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
  const key = (name: string) => openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', name)
  const ca = (name: string, cn: string) => {
    key(`${name}.key`)
    openssl('req', '-x509', '-new', '-key', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${cn}`)
  }
  const leaf = (name: string, cn: string, ext: string) => {
    key(`${name}.key`)
    openssl('req', '-new', '-key', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`)
    writeFileSync(join(dir, `${name}.ext`), `${ext}\n`)
    openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '1', '-extfile', `${name}.ext`)
  }
  ca('ca', 'meshproxy test upstream CA')
  ca('other-ca', 'meshproxy test other CA')
  leaf('server', 'payments.internal', 'subjectAltName=DNS:payments.internal,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth')
  leaf('client', 'meshproxy client', 'extendedKeyUsage=clientAuth')
  const path = (f: string) => join(dir, f)
  const read = (f: string) => readFileSync(path(f))
  return {
    dir,
    ca: path('ca.crt'),
    serverCert: path('server.crt'),
    serverKey: path('server.key'),
    clientCert: path('client.crt'),
    clientKey: path('client.key'),
    otherCa: path('other-ca.crt'),
    pem: { ca: read('ca.crt'), serverCert: read('server.crt'), serverKey: read('server.key'), clientCert: read('client.crt'), clientKey: read('client.key') },
  }
}
