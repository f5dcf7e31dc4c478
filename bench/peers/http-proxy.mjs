// Peer: the `http-proxy` package on Node's http server, round-robin over the backends through a
// keep-alive agent (without one, http-proxy opens a connection per request).
import http from 'node:http'
import httpProxy from 'http-proxy'
import { peerArgs, runPeer } from './common.mjs'

const { host, port, backends, workers } = peerArgs()
runPeer('http-proxy', workers, (listening) => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1024, maxFreeSockets: 1024 })
  // xfwd + Via: the forwarding headers every target adds (bench/lib/targets.mjs).
  const proxy = httpProxy.createProxyServer({ agent, xfwd: true })
  proxy.on('proxyReq', (proxyReq, req) => proxyReq.appendHeader('via', `${req.httpVersion} http-proxy`))
  proxy.on('proxyRes', (proxyRes) => {
    const via = `${proxyRes.httpVersion} http-proxy`
    proxyRes.headers.via = proxyRes.headers.via ? `${proxyRes.headers.via}, ${via}` : via
  })
  proxy.on('error', (err, _req, res) => {
    if (res.headersSent) return res.destroy()
    res.writeHead(502, { 'content-type': 'text/plain' }).end(`http-proxy: ${err.message}\n`)
  })
  const targets = backends.map((b) => `http://${b}`)
  let next = 0
  const server = http.createServer((req, res) => {
    proxy.web(req, res, { target: targets[next++ % targets.length] })
  })
  server.listen(port, host, () => listening(server))
})
