/**
 * Two (or more) meshproxies exchanging mTLS on 127.0.0.1: identity material made with the
 * library's `initIdentity`/`issueIdentity` in a temporary directory, an inbound proxy (a listener
 * with `mtls` in front of a local app) and an outbound proxy (a plain listener whose service
 * names the inbound one's identity).
 */
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { ExecutionContext } from 'ava'
import { initIdentity, issueIdentity } from '../../ts/index.js'
import { startProxy, type Started } from './proxy.js'

export interface Mesh {
  /** The identity directory (`ca.crt`, `ca.key`, `<name>.<ns>.crt/.key`). */
  dir: string
  issue(name: string, namespace?: string): Promise<void>
}

/** A trust anchor for `trustDomain` in a new temporary directory, with `names` issued in `shop`. */
export async function makeMesh(t: ExecutionContext, names: string[], trustDomain = 'cluster.local'): Promise<Mesh> {
  const dir = mkdtempSync(join(tmpdir(), 'meshproxy-mesh-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  await initIdentity(dir, { trustDomain })
  const issue = async (name: string, namespace = 'shop'): Promise<void> => {
    await issueIdentity(dir, name, { namespace })
  }
  for (const n of names) await issue(n)
  return { dir, issue }
}

/** A proxy running as `name.shop` whose `mtls` listener forwards to `app` (an http1 service). */
export async function inbound(t: ExecutionContext, mesh: Mesh, name: string, app: string, extra: { mtls?: string; listener?: string; service?: string; identity?: string } = {}): Promise<Started> {
  return startProxy(t, `
admin: 127.0.0.1:0
identity:
  dir: ${mesh.dir}
  name: ${name}
  namespace: shop${extra.identity ?? ''}
listeners:
  - name: inbound
    address: 127.0.0.1:0
    mtls: ${extra.mtls ?? 'required'}
    proxyHeaders: false${extra.listener ?? ''}
    routes:
      - name: app
        service: app
services:
  - name: app
    endpoints: [${app}]${extra.service ?? ''}
`)
}

/** A proxy running as `name.shop` whose plain listener sends everything to the meshed peer `peer` (its inbound address) as `identity`. */
export async function outbound(t: ExecutionContext, mesh: Mesh, name: string, peer: string, identity: string, extra: { service?: string; identity?: string } = {}): Promise<Started> {
  return startProxy(t, `
admin: 127.0.0.1:0
identity:
  dir: ${mesh.dir}
  name: ${name}
  namespace: shop${extra.identity ?? ''}
listeners:
  - name: outbound
    address: 127.0.0.1:0
    proxyHeaders: false
    routes:
      - name: peer
        service: peer
services:
  - name: peer
    endpoints: [${peer}]
    identity: ${identity}${extra.service ?? ''}
`)
}

/**
 * A workload certificate of the mesh's anchor for `name.shop` that expired a year ago (valid for
 * one day in 2025), made with `openssl ca`, which can date a certificate in the past: the
 * identity API refuses to issue one. Its PEM certificate and key.
 */
export function issueExpired(mesh: Mesh, name: string): { cert: Buffer; key: Buffer } {
  const dir = mkdtempSync(join(tmpdir(), 'meshproxy-expired-'))
  try {
    writeFileSync(join(dir, 'index.txt'), '')
    writeFileSync(join(dir, 'serial'), '01\n')
    writeFileSync(
      join(dir, 'ca.cnf'),
      `[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\ndefault_md = sha256\npolicy = any\n[any]\ncommonName = optional\n` +
        `[leaf]\nsubjectAltName = URI:spiffe://cluster.local/ns/shop/sa/${name}\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth,clientAuth\n`,
    )
    const run = (args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
    run(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', `/CN=${name}.shop`])
    run(['ca', '-batch', '-config', 'ca.cnf', '-cert', join(mesh.dir, 'ca.crt'), '-keyfile', join(mesh.dir, 'ca.key'), '-in', 'leaf.csr', '-out', 'leaf.crt', '-notext', '-extensions', 'leaf', '-startdate', '20250101000000Z', '-enddate', '20250102000000Z'])
    return { cert: readFileSync(join(dir, 'leaf.crt')), key: readFileSync(join(dir, 'leaf.key')) }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

export async function adminGet(port: number, path: string): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`)
  return res.text()
}

export function metric(text: string, line: string): number {
  const found = text.split('\n').find((l) => l.startsWith(`${line} `))
  return found === undefined ? Number.NaN : Number(found.slice(line.length + 1))
}
