// Peer: a Node http server forwarding through undici's BalancedPool (undici 7: version 8 needs
// Node 22), the connection-pooling client Node's own fetch is built on.
import http from 'node:http'
import { BalancedPool } from 'undici'
import { peerArgs, runPeer } from './common.mjs'

// Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded; undici rejects some of them anyway.
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'host'])

/** A list-valued field with `v` appended (`Via`, `X-Forwarded-For`). */
const append = (prev, v) => (prev ? `${prev}, ${v}` : v)

const { host, port, backends, workers } = peerArgs()
runPeer('undici', workers, (listening) => {
  const pool = new BalancedPool(backends.map((b) => `http://${b}`), { connections: 1024, keepAliveTimeout: 60_000 })
  const server = http.createServer(async (req, res) => {
    const headers = {}
    for (const [k, v] of Object.entries(req.headers)) if (!HOP.has(k)) headers[k] = v
    // The forwarding headers every target adds (bench/lib/targets.mjs).
    headers['x-forwarded-for'] = append(req.headers['x-forwarded-for'], req.socket.remoteAddress)
    headers['x-forwarded-proto'] ??= 'http'
    if (req.headers.host) headers['x-forwarded-host'] ??= req.headers.host
    headers.via = append(req.headers.via, `${req.httpVersion} undici`)
    try {
      const up = await pool.request({
        method: req.method,
        path: req.url,
        headers,
        body: req.method === 'GET' || req.method === 'HEAD' ? null : req,
      })
      const out = {}
      for (const [k, v] of Object.entries(up.headers)) if (!HOP.has(k)) out[k] = v
      out.via = append(out.via, '1.1 undici')
      res.writeHead(up.statusCode, out)
      for await (const chunk of up.body) {
        if (!res.write(chunk)) await new Promise((r) => res.once('drain', r))
      }
      res.end()
    } catch (err) {
      if (res.headersSent) return res.destroy()
      res.writeHead(502, { 'content-type': 'text/plain' }).end(`undici: ${err.message}\n`)
    }
  })
  server.listen(port, host, () => listening(server))
})
