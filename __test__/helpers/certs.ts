/**
 * TLS test material made with the `openssl` CLI in a temporary directory: a test CA and server
 * certificates it signs (ECDSA P-256, DNS SANs), as an operator would make them. The directory
 * is removed when the test ends.
 */
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { ExecutionContext } from 'ava'

export interface CertFiles {
  /** PEM file paths. */
  cert: string
  key: string
}

export interface TestCa extends CertFiles {
  dir: string
  /** The CA certificate's PEM text (a client's `ca`). */
  pem: string
  /**
   * Issues a server certificate for `names` (DNS SANs; the first is the subject CN unless `cn` is
   * given) into `<stem>.crt`/`<stem>.key` in the CA's directory, overwriting them.
   */
  issue(stem: string, names: string[], opts?: { cn?: string }): CertFiles
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] })
}

/** A new CA in a new temporary directory (or in `dir`). */
export function makeCa(t: ExecutionContext, name = 'meshproxy test CA', dir?: string): TestCa {
  const where = dir ?? mkdtempSync(join(tmpdir(), 'meshproxy-tls-'))
  if (!dir) t.teardown(() => rmSync(where, { recursive: true, force: true }))
  const stem = name.replace(/[^A-Za-z0-9]+/g, '-')
  const cert = join(where, `${stem}.crt`)
  const key = join(where, `${stem}.key`)
  openssl(
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=${name}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    where,
  )
  let serial = 0
  return {
    dir: where,
    cert,
    key,
    pem: readFileSync(cert, 'utf8'),
    issue(leaf, names, opts = {}) {
      const out = { cert: join(where, `${leaf}.crt`), key: join(where, `${leaf}.key`) }
      const csr = join(where, `${leaf}.csr`)
      const ext = join(where, `${leaf}.ext`)
      writeFileSync(ext, `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n`)
      openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${out.key}.new`, '-out', csr, '-subj', `/CN=${opts.cn ?? names[0]}`], where)
      serial += 1
      openssl(['x509', '-req', '-in', csr, '-CA', cert, '-CAkey', key, '-set_serial', String(Date.now() * 100 + serial), '-out', `${out.cert}.new`, '-days', '2', '-extfile', ext], where)
      // Both files are written whole, the certificate first (a reader may see a new certificate
      // with the old key for a moment: the proxy refuses that pair and keeps the old one).
      writeFileSync(out.cert, readFileSync(`${out.cert}.new`))
      writeFileSync(out.key, readFileSync(`${out.key}.new`))
      rmSync(`${out.cert}.new`)
      rmSync(`${out.key}.new`)
      return out
    },
  }
}
