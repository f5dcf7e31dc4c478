// Shared start-up for the Node peer proxies: argument parsing and the worker model. With
// `--workers N > 1` the cluster module runs N processes sharing the listening socket (Node's
// way to use more than one core for HTTP); with 1 there is no primary process at all, so the
// process tree is the same as meshproxy's.
import cluster from 'node:cluster'
import { parseArgs } from 'node:util'

export function peerArgs() {
  const { values } = parseArgs({
    options: { listen: { type: 'string' }, to: { type: 'string' }, workers: { type: 'string', default: '1' } },
  })
  const [host, port] = (values.listen ?? '').split(':')
  const backends = (values.to ?? '').split(',').filter(Boolean)
  const workers = Number(values.workers)
  if (!host || !Number(port) || !backends.length || !Number.isInteger(workers) || workers < 1) {
    console.error('usage: node PEER.mjs --listen HOST:PORT --to HOST:PORT,HOST:PORT [--workers N]')
    process.exit(2)
  }
  return { host, port: Number(port), backends, workers }
}

/**
 * Runs `serve()` in this process (1 worker) or in N cluster workers; prints `listening` once
 * every worker listens, which is what the bench waits for.
 */
export function runPeer(name, workers, serve) {
  if (workers > 1 && cluster.isPrimary) {
    let ready = 0
    for (let i = 0; i < workers; i++) {
      cluster.fork().on('message', (m) => {
        if (m === 'listening' && ++ready === workers) console.log(`${name}: listening (${workers} workers)`)
      })
    }
    cluster.on('exit', (w, code, signal) => {
      if (!w.exitedAfterDisconnect) console.error(`${name}: worker ${w.process.pid} died (${code ?? signal})`)
    })
    const down = () => {
      for (const w of Object.values(cluster.workers ?? {})) w?.kill()
      process.exit(0)
    }
    process.on('SIGTERM', down)
    process.on('SIGINT', down)
    return
  }
  serve((server) => {
    // Idle keep-alive connections stay open as long as nginx's and haproxy's do in the bench
    // (Node's 5 s default would close the idle scenario's connections under it).
    server.keepAliveTimeout = 65_000
    server.headersTimeout = 66_000
    if (cluster.isWorker) process.send('listening')
    else console.log(`${name}: listening (1 worker)`)
    const down = () => server.close(() => process.exit(0))
    process.on('SIGTERM', down)
    process.on('SIGINT', down)
  })
}
