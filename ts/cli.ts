#!/usr/bin/env node
/**
 * The `meshproxy` CLI: `run`, `check`, `schema`, `demo`, `identity`. Only this side handles signals: the first
 * SIGINT/SIGTERM drains and closes the proxy, a second one forces it; SIGHUP reloads the file.
 */
import { readFileSync } from 'node:fs'
import { Command, InvalidArgumentError, Option } from 'commander'
import {
  configFromEndpoints,
  DEFAULT_ADMIN,
  DEFAULT_LISTEN,
  formatDiagnostic,
  loadConfigFile,
  type LoadResult,
  type UpstreamProtocol,
} from './config/index.js'
import { modelSchema, nativeSchema } from './config/json-schema.js'
import { checkPolicies } from './config/policies.js'
import { MeshProxyError } from './errors.js'
import { DEFAULT_GRACE_MS, Proxy, type StartInfo } from './proxy.js'
import { runDemo } from './demo.js'
import { identityCommand } from './identity-cli.js'
import { closeOnSignals } from './signals.js'
import { initLogging } from './logging.js'

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }

function intOption(min: number, max: number) {
  return (value: string): number => {
    const n = Number(value)
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`expected an integer from ${min} to ${max}`)
    return n
  }
}

/** Prints diagnostics; returns true when there were errors. */
function report(result: LoadResult): boolean {
  for (const d of result.diagnostics) console.error(formatDiagnostic(d))
  return result.config === null
}

/** `tls`: the names of the listeners that terminate TLS (printed as https). */
function printStarted(info: StartInfo, tls: Set<string>): void {
  for (const l of info.listeners) console.log(`meshproxy: listening on ${tls.has(l.name) ? 'https' : 'http'}://${l.localAddress} (${l.name})`)
  if (info.admin) console.log(`meshproxy: admin on http://${info.admin} (/live /ready /metrics /config /endpoints /identity)`)
}

interface RunOptions {
  config?: string
  to?: string
  balancer: string
  protocol: string
  proxyHeaders: boolean
  listen?: string
  admin?: string
  workers: number
  grace: number
  log: string
}

async function run(opts: RunOptions): Promise<void> {
  if (opts.config && opts.to) throw new MeshProxyError('MESHPROXY_INVALID_CONFIG', 'use either --config or --to, not both')
  if (!opts.config && !opts.to) throw new MeshProxyError('MESHPROXY_INVALID_CONFIG', 'nothing to run: give --config FILE or --to HOST:PORT[,HOST:PORT...]')
  if (opts.config && !opts.proxyHeaders) {
    throw new MeshProxyError('MESHPROXY_INVALID_CONFIG', '--no-proxy-headers goes with --to; in a config file, set proxyHeaders: false on the listener')
  }
  const loadOpts = {
    ...(opts.listen !== undefined ? { listenOverride: opts.listen } : {}),
    ...(opts.admin !== undefined ? { adminOverride: opts.admin } : {}),
  }
  const load = (): Promise<LoadResult> | LoadResult =>
    opts.config
      ? loadConfigFile(opts.config, loadOpts)
      : configFromEndpoints(
          opts.to!.split(',').map((s) => s.trim()).filter(Boolean),
          opts.balancer,
          { ...loadOpts, proxyHeaders: opts.proxyHeaders },
          // Checked at run time by configFromEndpoints, with a diagnostic for bad values.
          opts.protocol as UpstreamProtocol,
        )
  const result = await load()
  if (report(result) || !result.config) {
    console.error('meshproxy: refusing to start with an invalid config')
    process.exitCode = 1
    return
  }
  initLogging(opts.log)
  const proxy = new Proxy(result.config, { workers: opts.workers })
  const started = await proxy.start()
  // Handlers first, then "listening": whoever waits for that line may signal at once, and a
  // SIGHUP before its handler exists would kill the process (the default action).
  closeOnSignals(proxy, opts.grace)
  if (opts.config) {
    process.on('SIGHUP', () => {
      void (async () => {
        const next = await load()
        if (report(next) || !next.config) {
          console.error('meshproxy: SIGHUP: the new config is invalid; keeping the running one')
          return
        }
        try {
          await proxy.reload(next.config)
          console.error('meshproxy: SIGHUP: config reloaded')
        } catch (err) {
          console.error(`meshproxy: SIGHUP: reload refused, keeping the running config: ${(err as Error).message}`)
        }
      })()
    })
  }
  printStarted(started, new Set(result.config.listeners.filter((l) => l.tls).map((l) => l.name)))
}

async function check(file: string): Promise<void> {
  const result = await loadConfigFile(file)
  if (report(result)) {
    process.exitCode = 1
    return
  }
  // Rego policies compile in the data plane: checked with its compiler, at their own positions.
  const policyProblems = result.config ? checkPolicies(result.config) : []
  for (const d of policyProblems) console.error(formatDiagnostic(d))
  if (policyProblems.length > 0) {
    process.exitCode = 1
    return
  }
  const s = result.summary
  const warnings = result.diagnostics.filter((d) => d.severity === 'warning').length
  console.log(
    `${file}: ok: ${s.listeners} listener(s), ${s.routes} route(s), ${s.services} service(s), ${s.endpoints} endpoint(s)` +
      (warnings ? `, ${warnings} warning(s)` : ''),
  )
}

const program = new Command()
  .name('meshproxy')
  .description('A service-mesh data plane: routing, load balancing and connection reuse, in Rust.')
  .version(pkg.version)
  .showHelpAfterError()

program
  .command('run')
  .description('run the proxy from a config file, or in front of a list of endpoints')
  .option('-c, --config <file>', 'YAML config (native and/or Kubernetes Ingress, Service, EndpointSlice)')
  .option('--to <endpoints>', 'comma-separated HOST:PORT list: one service, one catch-all route')
  .addOption(
    new Option('--balancer <kind>', 'balancer for --to: round-robin, random, least-request, p2c-ewma, hash, hash:header:<name>, hash:cookie:<name>').default(
      'round-robin',
    ),
  )
  .addOption(new Option('--protocol <protocol>', 'protocol to the --to endpoints: http1, http2 (h2c) or auto').default('http1'))
  .option('--no-proxy-headers', 'with --to: add no X-Forwarded-For/-Proto/-Host or Via headers (the listener\'s proxyHeaders: false)')
  .option('--listen <host:port>', `proxy listener address (default ${DEFAULT_LISTEN} unless the file names one)`)
  .option('--admin <host:port>', `admin listener address (default ${DEFAULT_ADMIN} unless the file names one)`)
  .option('--workers <n>', 'data-path worker threads', intOption(1, 256), 1)
  .option('--grace <ms>', 'drain time on SIGINT/SIGTERM', intOption(0, 2 ** 31 - 1), DEFAULT_GRACE_MS)
  .option('--log <filter>', 'data-plane log filter, as RUST_LOG (off, warn, info, debug, meshproxy_core=debug)', process.env.MESHPROXY_LOG ?? 'warn')
  .action((opts: RunOptions) => run(opts))

program
  .command('check')
  .description('validate a config file and print every problem (exit code 1 on errors)')
  .argument('<file>', 'YAML config file')
  .action((file: string) => check(file))

program
  .command('schema')
  .description('print the JSON Schema of the YAML config, for editors (yaml-language-server)')
  .option('--model', 'the normalized model the data plane reads instead (schema/config-model.schema.json)')
  .action((opts: { model?: boolean }) => {
    process.stdout.write(JSON.stringify(opts.model ? modelSchema() : nativeSchema(), null, 2) + '\n')
  })

program
  .command('demo')
  .description('start a demo mesh: seven small services behind a proxy with a canary split, the seed\'s rate limit and Rego rule, failure recovery, and mTLS to a second proxy')
  .option('--listen <host:port>', 'proxy address', DEFAULT_LISTEN)
  .option('--admin <host:port>', 'admin address', DEFAULT_ADMIN)
  .option('--workers <n>', 'data-path worker threads', intOption(1, 256), 1)
  .action((opts: { listen: string; admin: string; workers: number }) => runDemo(opts))

program.addCommand(identityCommand())

program.parseAsync().catch((err: unknown) => {
  if (err instanceof MeshProxyError) {
    console.error(`meshproxy: ${err.message} (${err.code})`)
  } else {
    console.error(err)
  }
  process.exit(1)
})
