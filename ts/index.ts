/**
 * meshproxy: a service-mesh data plane (Rust, tokio + hyper) embeddable in Node.
 *
 * ```ts
 * import { Proxy, loadConfigFile } from 'meshproxy'
 * const { config, diagnostics } = await loadConfigFile('mesh.yaml')
 * const proxy = new Proxy(config!, { workers: 1 })
 * await proxy.start()
 * ```
 */
export * from './config/index.js'
export { MeshProxyError, type MeshProxyErrorCode } from './errors.js'
export { initLogging } from './logging.js'
export {
  checkIdentity,
  initIdentity,
  issueIdentity,
  DEFAULT_ANCHOR_VALIDITY_MS,
  DEFAULT_WORKLOAD_VALIDITY_MS,
  type CertificateStanding,
  type ExistingAnchor,
  type IdentityCertificate,
  type IdentityStatus,
  type InitIdentityOptions,
  type IssueIdentityOptions,
  type IssuedIdentity,
} from './identity.js'
export {
  Proxy,
  DEFAULT_GRACE_MS,
  type CloseOptions,
  type EndpointStats,
  type EndpointState,
  type WorkerStats,
  type ListenerInfo,
  type ProxyOptions,
  type ProxyStats,
  type StartInfo,
} from './proxy.js'
