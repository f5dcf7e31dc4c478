/** Data-plane logs (Rust `tracing` events) to stderr. Off unless asked for. */
import { fromNative } from './errors.js'
import { native } from './native.js'

/**
 * Starts printing the data plane's log events to stderr, filtered like `RUST_LOG`
 * (`warn`, `info`, `meshproxy_core=debug`). The first call wins.
 */
export function initLogging(filter: string): void {
  try {
    native().initLogging(filter)
  } catch (err) {
    throw fromNative(err)
  }
}
