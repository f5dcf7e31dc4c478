/**
 * Config loading and validation: YAML files (native meshproxy documents and Kubernetes Ingress /
 * Service / EndpointSlice resources) and command-line endpoint lists become the normalized
 * `ConfigModel` handed to the data plane; every problem is reported as a positioned diagnostic.
 */
export type * from './model.js'
export { formatDiagnostic, type Diagnostic } from './diagnostics.js'
export { loadConfigFile, loadConfigText, type LoadOptions, type LoadResult } from './load.js'
export { configFromEndpoints } from './from-endpoints.js'
export { validateModel } from './validate.js'
export { DEFAULT_ADMIN, DEFAULT_LISTEN } from './defaults.js'
export { meshPolicy, MeshPolicy, ListenerRoutes, POLICY_FILE, type PolicyBuildOptions, type PolicyBuildResult, type PolicyDiagnostic, type PolicyListenerSpec, type PolicyRouteSpec, type PolicyServiceSpec } from './policy.js'
export type * from './native-types.js'
