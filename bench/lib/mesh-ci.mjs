// `npm run bench:ci -- --mesh`: the configs of the proxy-to-proxy mTLS pair whose instructions
// per request the gate counts. The pair is the `mtls` scenario's (bench/lib/mtls.mjs): A, a plain
// listener whose one service is B, meshed as `b.bench` (HTTP/1.1 requests travel to B over h2);
// B, a listener with `mtls: required` in front of the gate's backends. Both start from the
// gate's own normalized config (`configJson`, so proxy headers and any of `--policies`, `--authz`,
// … apply as in the plaintext counts) with the identity patched in: what `identity:`, a
// service's `identity:` and a listener's `mtls:` normalize to.
import { join } from 'node:path'
import { makeMeshIdentity, MESH } from './mtls.mjs'

/** The trust anchor and A's and B's workload identities in `workDir/identity`, made with `meshproxy identity init/issue`. */
export function meshIdentity(repoDir, workDir) {
  return makeMeshIdentity(repoDir, join(workDir, 'identity'))
}

/**
 * `side` 'a' or 'b' of the pair from the gate's config JSON: A's services reach their endpoints
 * (B) over mTLS as `b.bench`; B's listeners require a client certificate from the trust domain.
 */
export function meshConfig(side, json, mesh) {
  const config = JSON.parse(json)
  config.identity = { dir: mesh.dir, name: side === 'a' ? MESH.a : MESH.b, namespace: MESH.namespace, selfIssue: false, lifetimeMs: 86_400_000 }
  // A's connect timeout covers the mTLS handshake, which takes B under callgrind ~50× as long.
  if (side === 'a') for (const s of config.services) Object.assign(s, { identity: `${MESH.b}.${MESH.namespace}`, connectTimeoutMs: 60_000 })
  else for (const l of config.listeners) l.mtls = 'required'
  return JSON.stringify(config)
}

/** What `callsPerRequest` counts: rustls records sealed and opened, and the socket syscalls (libc's wrappers). */
export const CALLS = {
  'TLS records sealed': /Tls13MessageEncrypter as rustls::crypto::cipher::MessageEncrypter>::encrypt$/,
  'TLS records opened': /Tls13MessageDecrypter as rustls::crypto::cipher::MessageDecrypter>::decrypt$/,
  'socket syscalls': /^(recv|recvfrom|read|send|sendto|sendmsg|write|writev|epoll_wait)$/,
}

/**
 * Calls per request to the functions of `CALLS` in one callgrind dump of `requests` requests:
 * the per-connection and per-record costs an instruction count hides (a syscall's kernel time is
 * not counted; a record's count is what batching decides).
 */
export function callsPerRequest(text, requests) {
  const names = new Map()
  const totals = Object.fromEntries(Object.keys(CALLS).map((k) => [k, 0]))
  let callee = null
  for (const line of text.split('\n')) {
    const fn = /^(c?fn)=\((\d+)\)(?: (.*))?$/.exec(line)
    if (fn) {
      if (fn[3]) names.set(fn[2], fn[3])
      if (fn[1] === 'cfn') callee = names.get(fn[2]) ?? null
    } else if (callee && line.startsWith('calls=')) {
      const n = Number(line.slice(6).split(' ')[0])
      for (const [k, re] of Object.entries(CALLS)) if (re.test(callee)) totals[k] += n
    }
  }
  return Object.fromEntries(Object.entries(totals).map(([k, v]) => [k, v / requests]))
}
