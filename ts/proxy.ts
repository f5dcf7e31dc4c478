/**
 * The `Proxy` class: the library API over the native data plane.
 *
 * Threads: each proxy runs its data path on its own tokio runtime with `workers` threads
 * (default 1, the right size for a sidecar next to one Node process; edge proxies raise it).
 * Nothing here blocks Node's event loop: every call that waits is a promise resolved from
 * Rust, and no request ever calls into JavaScript. tokio's threads do not keep Node alive, so
 * a started proxy holds a timer that does; `unref()` lets the process exit anyway.
 */
import type { ConfigModel } from './config/index.js'
import { formatDiagnostic, validateModel } from './config/index.js'
import { MeshPolicy, type PolicyBuildOptions } from './config/policy.js'
import { MeshProxyError, fromNative } from './errors.js'
import { native, type BindingProxy } from './native.js'

export interface ProxyOptions {
  /** Data-path worker threads. Default 1. */
  workers?: number
}

export interface CloseOptions {
  /** How long in-flight requests may take to finish before connections are closed. Default 10000. */
  graceMs?: number
}

export interface ListenerInfo {
  name: string
  /** As configured. */
  address: string
  /** As bound: the real port when the configured one was 0. */
  localAddress: string
}

export interface StartInfo {
  listeners: ListenerInfo[]
  /** Bound admin address, or null when there is no admin listener. */
  admin: string | null
}

export interface EndpointStats {
  address: string
  /** Its connections are TLS (the service's `tls`): one address can have a plaintext and a TLS endpoint. */
  tls: boolean
  openConnections: number
  openedConnections: number
  idleConnections: number
  inflight: number
  requests: number
  failures: number
  /** Requests re-sent once after a failure that left them unprocessed or safe to repeat. */
  retries: number
  /** `healthy`; `ejected` by failure accrual; `probing` (its penalty is over and one request tests it); `unready` (its health check fails). */
  state: EndpointState
  /** While ejected: milliseconds until a probe may go; otherwise null. */
  ejectedForMs: number | null
  /** Times failure accrual ejected it. */
  ejections: number
  /** The peak-EWMA latency estimate in milliseconds (what `p2c-ewma` compares, times the requests in flight + 1). */
  latencyMs: number
}

export type EndpointState = 'healthy' | 'ejected' | 'probing' | 'unready'

export interface ProxyStats {
  state: 'created' | 'running' | 'closed'
  ready: boolean
  downstreamConnections: number
  requests: number
  reloads: number
  listeners: ListenerInfo[]
  admin: string | null
  endpoints: EndpointStats[]
  /** One entry per worker thread, in order. */
  workers: WorkerStats[]
  /** Requests the rate limits of the config in force refused (429 `rate-limited`). */
  rateLimited: number
  /** TLS handshakes completed on the listeners with `tls` (`meshproxy_tls_handshakes_total`, summed). */
  tlsHandshakes: number
  /** TLS handshakes that failed, any reason (`meshproxy_tls_handshake_failures_total`, summed). */
  tlsHandshakeFailures: number
}

export interface WorkerStats {
  /** Downstream connections dealt to this worker by the accept loop (round-robin). */
  connections: number
}

export const DEFAULT_GRACE_MS = 10_000

function checked(source: ConfigModel | MeshPolicy, options?: PolicyBuildOptions): string {
  const config = source instanceof MeshPolicy ? source.model(options) : source
  const errors = validateModel(config)
  if (errors.length > 0) {
    throw new MeshProxyError(
      'MESHPROXY_INVALID_CONFIG',
      `invalid config:\n${errors.map(formatDiagnostic).join('\n')}`,
      errors,
    )
  }
  return JSON.stringify(config)
}

export class Proxy {
  readonly #binding: BindingProxy
  #keepAlive: NodeJS.Timeout | undefined
  #refed = true
  #closing: Promise<void> | undefined

  /**
   * Validates and compiles `config` (a model, or a `meshPolicy()` built with default options);
   * throws `MeshProxyError` (`MESHPROXY_INVALID_CONFIG`).
   */
  constructor(config: ConfigModel | MeshPolicy, options: ProxyOptions = {}) {
    const workers = options.workers ?? 1
    if (!Number.isInteger(workers) || workers < 1 || workers > 256) {
      throw new MeshProxyError('MESHPROXY_INVALID_CONFIG', `workers must be an integer from 1 to 256, got ${workers}`)
    }
    const json = checked(config)
    try {
      this.#binding = new (native().BindingProxy)(json, workers)
    } catch (err) {
      throw fromNative(err)
    }
  }

  /** Binds every listener (all or nothing) and starts serving. */
  async start(): Promise<StartInfo> {
    let info
    try {
      info = await this.#binding.start()
    } catch (err) {
      throw fromNative(err)
    }
    this.#keepAlive = setInterval(() => {}, 1 << 30)
    if (!this.#refed) this.#keepAlive.unref()
    return { listeners: info.listeners, admin: info.admin ?? null }
  }

  /** Atomically replaces the config. A reload that fails (invalid, or a port that cannot be bound) changes nothing. */
  async reload(config: ConfigModel | MeshPolicy): Promise<void> {
    return this.apply(config)
  }

  /**
   * Atomically replaces the config with a policy (`meshPolicy()`) or a model, as `reload` does:
   * a policy that does not build throws `MESHPROXY_INVALID_CONFIG` with diagnostics naming its
   * builder paths, and changes nothing. Applying the previous policy again undoes a change.
   */
  async apply(policy: MeshPolicy | ConfigModel, options: PolicyBuildOptions = {}): Promise<void> {
    const json = checked(policy, options)
    try {
      await this.#binding.reload(json)
    } catch (err) {
      throw fromNative(err)
    }
  }

  async stats(): Promise<ProxyStats> {
    try {
      const s = await this.#binding.stats()
      const endpoints = s.endpoints.map((e) => ({ ...e, state: e.state as EndpointState, ejectedForMs: e.ejectedForMs ?? null }))
      return { ...s, state: s.state as ProxyStats['state'], admin: s.admin ?? null, endpoints }
    } catch (err) {
      throw fromNative(err)
    }
  }

  /** Prometheus text exposition (what the admin listener serves at `/metrics`). */
  metrics(): string {
    return this.#binding.metrics()
  }

  /**
   * Stops accepting, turns `/ready` to 503, lets in-flight requests finish for up to `graceMs`
   * (keep-alive clients are told `Connection: close`), then closes the rest and releases the
   * ports and threads. Idempotent: later calls return the first call's promise.
   */
  close(options: CloseOptions = {}): Promise<void> {
    const grace = Math.max(0, Math.min(options.graceMs ?? DEFAULT_GRACE_MS, 2 ** 31 - 1))
    this.#closing ??= this.#binding
      .close(grace)
      .catch((err: unknown) => {
        throw fromNative(err)
      })
      .finally(() => {
        clearInterval(this.#keepAlive)
        this.#keepAlive = undefined
      })
    return this.#closing
  }

  /** Keep the process alive while the proxy runs (the default). */
  ref(): this {
    this.#refed = true
    this.#keepAlive?.ref()
    return this
  }

  /** Let the process exit even though the proxy is running. */
  unref(): this {
    this.#refed = false
    this.#keepAlive?.unref()
    return this
  }
}
