/**
 * Starting an in-process `Proxy` for a test: config from native YAML (or a model), listener and
 * admin on port 0, bound addresses returned, `close({ graceMs: 0 })` registered as a teardown.
 */
import type { ExecutionContext } from 'ava'
import { Proxy, formatDiagnostic, loadConfigText, type ConfigModel, type LoadOptions, type ProxyOptions, type StartInfo } from '../../ts/index.js'

/** Loads native YAML (or Kubernetes resources) that must be free of errors. */
export function load(yaml: string, opts: LoadOptions = {}): ConfigModel {
  const r = loadConfigText(yaml, { file: 'test.yaml', ...opts })
  if (!r.config) throw new Error(`test config has errors:\n${r.diagnostics.map(formatDiagnostic).join('\n')}`)
  return r.config
}

export interface Started {
  proxy: Proxy
  info: StartInfo
  /** Port of the first listener. */
  port: number
  /** `127.0.0.1:PORT` of the first listener. */
  address: string
  /** Port of the admin listener (0 when there is none). */
  adminPort: number
}

export function portOf(address: string): number {
  const m = /:(\d+)$/.exec(address)
  if (!m) throw new Error(`no port in ${address}`)
  return Number(m[1])
}

export async function startProxy(
  t: ExecutionContext,
  config: string | ConfigModel,
  loadOpts: LoadOptions = {},
  proxyOpts: ProxyOptions = {},
): Promise<Started> {
  const model = typeof config === 'string' ? load(config, loadOpts) : config
  const proxy = new Proxy(model, proxyOpts)
  t.teardown(() => proxy.close({ graceMs: 0 }))
  const info = await proxy.start()
  const first = info.listeners[0]
  if (!first) throw new Error('proxy started without listeners')
  return {
    proxy,
    info,
    port: portOf(first.localAddress),
    address: first.localAddress,
    adminPort: info.admin ? portOf(info.admin) : 0,
  }
}

/** One listener, one catch-all route to service `s` over `endpoints` (YAML list items). */
export function simpleYaml(endpoints: string[], extra: { balancer?: string; routeTimeout?: string; service?: string; admin?: boolean } = {}): string {
  return `
admin: ${extra.admin ? '127.0.0.1:0' : 'null'}
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - name: all
        service: s${extra.routeTimeout ? `\n        timeout: ${extra.routeTimeout}` : ''}
services:
  - name: s${extra.balancer ? `\n    balancer: ${extra.balancer}` : ''}
    endpoints: ${endpoints.length === 0 ? '[]' : ''}${endpoints.map((e) => `\n      - ${e}`).join('')}
${extra.service ?? ''}`
}
