/**
 * A listener's `tls` in the native YAML form, and the checks of TLS material made at load time
 * so that a bad certificate is an error at its place in the file: the PEM files exist and hold a
 * certificate and a private key, and the key belongs to the certificate (checked with Node's
 * crypto; the data plane reads the files again with rustls when it builds the listener, and
 * refuses what it cannot use). The same checks apply to the PEM of a Kubernetes Secret.
 */
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { dirname, isAbsolute, join } from 'node:path'
import { complete, yamlEntries } from './fields.js'
import { TLS, TLS_CERTIFICATE, type TlsCertificateModel, type TlsModel } from './model.js'
import { normalizeHost } from './values.js'
import type { Loc } from './diagnostics.js'
import type { DocReader, Fields, YNode } from './yaml-walk.js'

const CERT_FIELDS = yamlEntries(TLS_CERTIFICATE).map(([k]) => k)
const TLS_FIELDS = yamlEntries(TLS).map(([k]) => k)

/** Where a problem with the certificate, and with the key, is reported. */
export interface PemPlaces {
  cert: Loc | YNode
  key: Loc | YNode
  /** How messages name them: file paths, or `Secret ns/name tls.crt`. */
  certName: string
  keyName: string
}

/**
 * Checks a certificate chain and its key as PEM text; reports at `at` and returns false on a
 * problem. A certificate past its expiry is a warning (it still serves, and clients refuse it).
 */
export function checkPem(r: DocReader, certPem: string, keyPem: string, at: PemPlaces): boolean {
  if (!certPem.includes('-----BEGIN CERTIFICATE-----')) {
    r.error(at.cert, `${at.certName} holds no PEM certificate`, 'a PEM file with a "-----BEGIN CERTIFICATE-----" block, leaf first')
    return false
  }
  let cert: X509Certificate
  try {
    cert = new X509Certificate(certPem)
  } catch (err) {
    r.error(at.cert, `${at.certName}: the certificate cannot be read: ${(err as Error).message}`, 'a PEM certificate chain, leaf first')
    return false
  }
  let key: KeyObject
  try {
    key = createPrivateKey(keyPem)
  } catch {
    r.error(at.key, `${at.keyName} holds no PEM private key`, 'a PEM file with a "-----BEGIN PRIVATE KEY-----" (or RSA/EC PRIVATE KEY) block')
    return false
  }
  if (!cert.checkPrivateKey(key)) {
    r.error(at.key, `the private key ${at.keyName} does not belong to the certificate ${at.certName}`, 'give the key the certificate was issued for')
    return false
  }
  if (Date.parse(cert.validTo) < Date.now()) {
    r.warn(at.cert, `the certificate ${at.certName} expired on ${cert.validTo}`, 'clients refuse it; renew it (the listener reloads it when the file changes)')
  }
  return true
}

function readText(r: DocReader, node: YNode, path: string, what: string, file: string): string | undefined {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    const reason = e.code === 'ENOENT' ? 'no such file' : e.code === 'EISDIR' ? 'it is a directory' : e.code === 'EACCES' ? 'permission denied' : e.message
    r.error(node, `cannot read ${what} file "${path}": ${reason}`, `a path relative to ${file}`)
    return undefined
  }
}

/** The SNI names of a certificate or an Ingress `spec.tls` entry, normalized, each once. */
export function readTlsHosts(r: DocReader, node: YNode | undefined, what: string): string[] {
  const out: string[] = []
  for (const { value, node: n } of node ? r.stringList(node, what) : []) {
    const host = r.check(n, 'TLS host', normalizeHost(value))
    if (host === undefined) continue
    if (out.includes(host)) r.warn(n, `"${host}" is listed twice in ${what}`)
    else out.push(host)
  }
  return out
}

/**
 * A listener's `tls`: `{ certificates: [{ cert, key, hosts }] }` with paths relative to the YAML
 * file. undefined when absent or null.
 */
export function readListenerTls(f: Fields): TlsModel | undefined {
  const { r } = f
  if (!f.has('tls') || f.isNull('tls')) return undefined
  const t = f.fields('tls', 'listener tls', TLS_FIELDS)
  if (!t) return undefined
  const tls = complete(TLS, {}) as TlsModel
  for (const node of t.list('certificates')) {
    const c = r.fields(node, 'TLS certificate', CERT_FIELDS)
    if (!c) continue
    const certNode = c.require('cert')
    const keyNode = c.require('key')
    const hosts = readTlsHosts(r, c.get('hosts'), 'TLS certificate hosts')
    const certName = certNode && r.text(certNode, 'TLS certificate file')
    const keyName = keyNode && r.text(keyNode, 'TLS key file')
    if (!certNode || !keyNode || certName === undefined || keyName === undefined) continue
    if (r.check(certNode, 'TLS certificate file', TLS_CERTIFICATE.fields.cert.normalize(certName, {})) === undefined) continue
    if (r.check(keyNode, 'TLS key file', TLS_CERTIFICATE.fields.key.normalize(keyName, {})) === undefined) continue
    const resolve = (name: string): string => (isAbsolute(name) || r.file.startsWith('<') ? name : join(dirname(r.file), name))
    const certPath = resolve(certName)
    const keyPath = resolve(keyName)
    const certText = readText(r, certNode, certPath, 'TLS certificate', r.file)
    const keyText = readText(r, keyNode, keyPath, 'TLS key', r.file)
    if (certText !== undefined && keyText !== undefined) {
      checkPem(r, certText, keyText, { cert: certNode, key: keyNode, certName: `"${certPath}"`, keyName: `"${keyPath}"` })
    }
    // Kept after a reported problem (the model is not used then), so the listener is not also
    // reported as having no certificate.
    tls.certificates.push(complete(TLS_CERTIFICATE, { cert: certPath, key: keyPath, hosts }) as TlsCertificateModel)
  }
  return tls
}

/** A Secret as the Ingress TLS translation needs it: its type, and, for `kubernetes.io/tls`, its checked PEM. */
export interface TlsSecret {
  name: string
  namespace: string
  type: string
  loc: Loc
  /** Both present and matching (checked when read); undefined after a reported problem. */
  pem?: { cert: string; key: string }
}

const BASE64 = /^[A-Za-z0-9+/=\s]*$/

/**
 * A `v1` Secret: for type `kubernetes.io/tls`, `data.tls.crt` and `data.tls.key` (base64) or the
 * same keys under `stringData` (plain text; it wins over `data`, as in Kubernetes). Other types
 * are kept by name only, so an Ingress naming one gets a precise error.
 */
export function readTlsSecret(r: DocReader, root: Fields, name: string, namespace: string, loc: Loc, out: TlsSecret[]): void {
  const type = root.str('type') ?? 'Opaque'
  const secret: TlsSecret = { name, namespace, type, loc }
  out.push(secret)
  if (type !== 'kubernetes.io/tls') return
  const data = root.fields('data', 'Secret data', null)
  const plain = root.fields('stringData', 'Secret stringData', null)
  const read = (key: string): { text: string; at: Loc } | undefined => {
    const s = plain?.text(key)
    if (plain && s !== undefined) return { text: s, at: plain.valueLoc(key) }
    const b = data?.text(key)
    if (!data || b === undefined) return undefined
    if (!BASE64.test(b)) {
      r.error(data.valueLoc(key), `Secret "${namespace}/${name}" ${key} is not base64`, 'data values are base64; put PEM text under stringData instead')
      return undefined
    }
    return { text: Buffer.from(b, 'base64').toString('utf8'), at: data.valueLoc(key) }
  }
  const cert = read('tls.crt')
  const key = read('tls.key')
  if (!cert || !key) {
    const missing = [!cert && 'tls.crt', !key && 'tls.key'].filter(Boolean).join(' and ')
    r.error(loc, `kubernetes.io/tls Secret "${namespace}/${name}" has no ${missing}`, 'give data.tls.crt and data.tls.key (base64 PEM), or stringData with the PEM text')
    return
  }
  const id = `Secret "${namespace}/${name}"`
  if (checkPem(r, cert.text, key.text, { cert: cert.at, key: key.at, certName: `${id} tls.crt`, keyName: `${id} tls.key` })) {
    secret.pem = { cert: cert.text, key: key.text }
  }
}

/** An Ingress's `spec.tls` entries, as `applyIngressTls` takes them. */
export interface IngressTlsEntry {
  ingress: string
  namespace: string
  hosts: string[]
  secretName: string
  loc: Loc
  secretLoc: Loc
}

/**
 * Kubernetes Ingress TLS on the ingress listener: each `spec.tls` entry's hosts get its Secret's
 * certificate (no hosts: the default certificate). The Secret must be in the same file and
 * namespace. `tls` is the listener's TLS to add them to; undefined when the listener has none,
 * which leaves them unused (a warning). A host already given a certificate keeps the first.
 */
export function applyIngressTls(
  entries: IngressTlsEntry[],
  secrets: TlsSecret[],
  tls: TlsModel | undefined,
  listener: string,
  report: { error(at: Loc, message: string, hint?: string): void; warn(at: Loc, message: string, hint?: string): void },
): void {
  const taken = new Map<string, string>(tls?.certificates.flatMap((c) => c.hosts.map((h): [string, string] => [h, c.origin || c.cert || ''])) ?? [])
  for (const e of entries) {
    const secret = secrets.find((s) => s.name === e.secretName && s.namespace === e.namespace)
    const id = `Secret "${e.namespace}/${e.secretName}"`
    if (!secret) {
      const known = secrets.filter((s) => s.namespace === e.namespace).map((s) => s.name)
      report.error(e.secretLoc, `Ingress "${e.ingress}" spec.tls names ${id}, which is not in this file`, known.length > 0 ? `Secrets in namespace ${e.namespace}: ${known.join(', ')}` : 'add the kubernetes.io/tls Secret (tls.crt, tls.key) to the file')
      continue
    }
    if (secret.type !== 'kubernetes.io/tls') {
      report.error(e.secretLoc, `${id} named by Ingress "${e.ingress}" has type ${secret.type}`, 'a TLS Secret has type: kubernetes.io/tls with tls.crt and tls.key')
      continue
    }
    if (!secret.pem || !tls) continue
    const hosts: string[] = []
    for (const h of e.hosts) {
      const owner = taken.get(h)
      if (owner !== undefined) report.warn(e.loc, `host "${h}" of Ingress "${e.ingress}" already has the certificate of ${owner}; that one is kept`)
      else {
        taken.set(h, id)
        hosts.push(h)
      }
    }
    if (e.hosts.length > 0 && hosts.length === 0) continue
    tls.certificates.push(complete(TLS_CERTIFICATE, { certPem: secret.pem.cert, keyPem: secret.pem.key, origin: id, hosts }) as TlsCertificateModel)
  }
  if (!tls && entries.length > 0) {
    const first = entries[0]!
    report.warn(first.loc, `Ingress "${first.ingress}" has spec.tls, but the ingress listener "${listener}" does not terminate TLS; its hosts are served in plaintext`, 'add tls: {} (or tls: with certificates) to the first listener')
  }
}
