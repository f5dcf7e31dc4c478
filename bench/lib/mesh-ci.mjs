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
