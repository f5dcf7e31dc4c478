/**
 * Mesh identity material from Node: a trust anchor and short-lived workload certificates whose
 * URI SAN is a SPIFFE ID (`spiffe://<trust-domain>/ns/<namespace>/sa/<name>`). Keys and
 * certificates are made in Rust (rcgen, ECDSA P-256) on a blocking thread, never by shelling out;
 * this module converts durations and errors. The `meshproxy identity` CLI is built on it.
 */
import { fromNative } from './errors.js'
import { native } from './native.js'

/** A trust anchor lasts a year and a workload certificate a day, unless told otherwise. */
export const DEFAULT_ANCHOR_VALIDITY_MS = 365 * 24 * 3600 * 1000
export const DEFAULT_WORKLOAD_VALIDITY_MS = 24 * 3600 * 1000

/** Identity material just written. */
export interface IssuedIdentity {
  /** The certificate file (`ca.crt` for an anchor: the bundle). */
  cert: string
  /** The key file (mode 0600). */
  key: string
  /** The SPIFFE ID it names (`spiffe://<trust-domain>` for an anchor). */
  id: string
  notBefore: Date
  notAfter: Date
  /** How many anchors `ca.crt` holds: two right after a rotation. */
  bundle: number
}

/** What to do when the directory already holds a trust anchor. */
export type ExistingAnchor = 'refuse' | 'replace' | 'rotate'

export interface InitIdentityOptions {
  trustDomain: string
  /** Milliseconds; default a year. */
  validityMs?: number
  /**
   * `refuse` (default) fails with `MESHPROXY_IDENTITY_EXISTS`; `replace` makes a new anchor (what
   * the old one issued is trusted no more); `rotate` makes a new anchor that issues from now on and
   * keeps the old, unexpired ones in `ca.crt`, so certificates they issued stay trusted.
   */
  existing?: ExistingAnchor
}

export interface IssueIdentityOptions {
  /** The workload's namespace. */
  namespace: string
  /** Milliseconds; default a day. Never past the anchor's own expiry. */
  validityMs?: number
}

export type CertificateStanding = 'valid' | 'expires-soon' | 'expired' | 'not-yet-valid' | 'untrusted' | 'key-mismatch'

export interface IdentityCertificate {
  path: string
  role: 'anchor' | 'workload'
  id: string | null
  subject: string
  notBefore: Date
  notAfter: Date
  standing: CertificateStanding
}

export interface IdentityStatus {
  certificates: IdentityCertificate[]
  /** Every certificate valid and not near its expiry. */
  ok: boolean
  checkedAt: Date
}

function issued(b: { cert: string; key: string; id: string; notBeforeMs: number; notAfterMs: number; bundle: number }): IssuedIdentity {
  return { cert: b.cert, key: b.key, id: b.id, notBefore: new Date(b.notBeforeMs), notAfter: new Date(b.notAfterMs), bundle: b.bundle }
}

async function call<T>(f: () => Promise<T>): Promise<T> {
  try {
    return await f()
  } catch (err) {
    throw fromNative(err)
  }
}

/** Makes a trust anchor (`ca.crt`, `ca.key`) in `dir`, which is created if missing. */
export async function initIdentity(dir: string, options: InitIdentityOptions): Promise<IssuedIdentity> {
  const validity = (options.validityMs ?? DEFAULT_ANCHOR_VALIDITY_MS) / 1000
  return issued(await call(() => native().identityInit(dir, options.trustDomain, validity, options.existing ?? 'refuse')))
}

/** Issues `<name>.<namespace>.crt` and `.key` in `dir`, signed by its trust anchor. */
export async function issueIdentity(dir: string, name: string, options: IssueIdentityOptions): Promise<IssuedIdentity> {
  const validity = (options.validityMs ?? DEFAULT_WORKLOAD_VALIDITY_MS) / 1000
  return issued(await call(() => native().identityIssue(dir, name, options.namespace, validity)))
}

/**
 * Checks every certificate in `dir`: expiry, the anchor's signature, the key beside it. One counts
 * as expiring soon with less than `withinMs` left, or by default less than 30 % of its lifetime
 * (a proxy renews at about 70 %).
 */
export async function checkIdentity(dir: string, options: { withinMs?: number } = {}): Promise<IdentityStatus> {
  const within = options.withinMs === undefined ? null : options.withinMs / 1000
  const s = await call(() => native().identityCheck(dir, within))
  return {
    ok: s.ok,
    checkedAt: new Date(s.checkedAtMs),
    certificates: s.certificates.map((c) => ({
      path: c.path,
      role: c.role as IdentityCertificate['role'],
      id: c.id ?? null,
      subject: c.subject,
      notBefore: new Date(c.notBeforeMs),
      notAfter: new Date(c.notAfterMs),
      standing: c.standing as CertificateStanding,
    })),
  }
}
