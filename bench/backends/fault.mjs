#!/usr/bin/env node
// A fault-injecting HTTP/1.1 backend for the `degraded` scenario: one process per backend, so a
// slow backend's timers never share an event loop with a healthy one. It answers `/` with
// `200 ok\n` and `/healthz` (the HAProxy target's health check) with `200 ok\n` always.
//
// The bench steers it over IPC (the process is spawned with an `ipc` channel):
//   { cmd: 'phase', phase: NAME, delayMs, errorPercent } → { ok: true }
//     from now on every `/` answer waits `delayMs` and `errorPercent` % of them are
//     `500 error\n` (drawn from a PRNG seeded by --seed, so every run sees the same sequence);
//     requests are counted under NAME.
//   { cmd: 'counts' } → { ok: true, counts: { NAME: { requests, errors, health } } }
// Usage: node bench/backends/fault.mjs --listen 127.0.0.1:PORT [--seed N]
import http from 'node:http'
import { parseArgs } from 'node:util'

const { values } = parseArgs({ options: { listen: { type: 'string' }, seed: { type: 'string', default: '1' } } })
const [host, port] = (values.listen ?? '').split(':')
if (host !== '127.0.0.1' || !Number(port)) {
  console.error('usage: node bench/backends/fault.mjs --listen 127.0.0.1:PORT [--seed N]')
  process.exit(2)
}

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
function prng(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const random = prng(Number(values.seed))
let mode = { phase: 'start', delayMs: 0, errorPercent: 0 }
const counts = {}
const countsFor = (phase) => (counts[phase] ??= { requests: 0, errors: 0, health: 0 })

function answer(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) })
  res.end(body)
}

const server = http.createServer((req, res) => {
  const c = countsFor(mode.phase)
  if (req.url === '/healthz') {
    c.health++
    answer(res, 200, 'ok\n')
    return
  }
  c.requests++
  // Decided when the request arrives, under the mode of that moment.
  const fail = mode.errorPercent > 0 && random() * 100 < mode.errorPercent
  if (fail) c.errors++
  const send = () => (fail ? answer(res, 500, 'error\n') : answer(res, 200, 'ok\n'))
  if (mode.delayMs > 0) setTimeout(send, mode.delayMs)
  else send()
})
// Idle keep-alive connections stay open as long as the proxies keep theirs (Node's default is 5 s).
server.keepAliveTimeout = 65_000
server.headersTimeout = 66_000

process.on('message', (m) => {
  if (m?.cmd === 'phase') {
    mode = { phase: String(m.phase), delayMs: Number(m.delayMs) || 0, errorPercent: Number(m.errorPercent) || 0 }
    countsFor(mode.phase)
    process.send({ ok: true, id: m.id })
  } else if (m?.cmd === 'counts') {
    process.send({ ok: true, id: m.id, counts })
  } else {
    process.send({ ok: false, id: m?.id, error: `unknown command ${JSON.stringify(m)}` })
  }
})
// The bench's IPC channel closing means the bench is gone: do not outlive it.
process.on('disconnect', () => process.exit(0))
process.on('SIGTERM', () => process.exit(0))
process.on('SIGINT', () => process.exit(0))

server.listen(Number(port), host, () => console.log(`fault backend: listening on ${host}:${port}`))
