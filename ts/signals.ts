/** Signal handling for the CLI (only the JS side handles signals; the native side never does). */
import type { Proxy } from './proxy.js'

/** Drains on the first signal, forces on the second. */
export function closeOnSignals(proxy: Proxy, graceMs: number, onClosed: () => void = () => process.exit(0)): void {
  let signals = 0
  const handler = (signal: NodeJS.Signals) => {
    signals += 1
    if (signals === 1) {
      console.error(`meshproxy: ${signal}: draining (up to ${graceMs} ms; send again to force)`)
      proxy.close({ graceMs }).then(onClosed, (err: unknown) => {
        console.error(`meshproxy: close failed: ${String(err)}`)
        process.exit(1)
      })
    } else {
      console.error(`meshproxy: ${signal}: forcing shutdown`)
      void proxy.close({ graceMs: 0 })
      process.exit(1)
    }
  }
  process.on('SIGINT', handler)
  process.on('SIGTERM', handler)
}
