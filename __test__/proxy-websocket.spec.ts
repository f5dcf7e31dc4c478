/**
 * WebSocket (HTTP/1.1 Upgrade) through meshproxy with the `ws` package on both sides: messages
 * both ways, a 10 MB message, close codes, many concurrent sockets, a refused upgrade passed back.
 */
import test, { type ExecutionContext } from 'ava'
import WebSocket from 'ws'
import { startProxy, simpleYaml } from './helpers/proxy.js'
import { startWsBackend } from './helpers/ws.js'

function open(t: ExecutionContext, url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { maxPayload: 64 * 1024 * 1024 })
    t.teardown(() => ws.terminate())
    ws.once('open', () => resolve(ws))
    ws.once('error', reject)
  })
}

function next(ws: WebSocket): Promise<{ data: Buffer; binary: boolean }> {
  return new Promise((resolve) => ws.once('message', (data: Buffer, binary: boolean) => resolve({ data, binary })))
}

test('messages both ways, a 10 MB binary message, and the close code', async (t) => {
  const { address: backend } = await startWsBackend(t)
  const { address } = await startProxy(t, simpleYaml([backend]))
  const ws = await open(t, `ws://${address}/chat`)
  ws.send('hello')
  t.is((await next(ws)).data.toString(), 'echo:hello')
  const big = Buffer.alloc(10 * 1024 * 1024, 7)
  big[12345] = 42
  ws.send(big)
  const back = await next(ws)
  t.true(back.binary)
  t.true(back.data.equals(big))
  const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)))
  ws.send('close:4001')
  t.is(await closed, 4001)
})

test('many concurrent sockets', async (t) => {
  const { address: backend } = await startWsBackend(t)
  const { address } = await startProxy(t, simpleYaml([backend]))
  const sockets = await Promise.all(Array.from({ length: 50 }, () => open(t, `ws://${address}/`)))
  const replies = await Promise.all(
    sockets.map((ws, i) => {
      const reply = next(ws)
      ws.send(`n${i}`)
      return reply
    }),
  )
  t.deepEqual(
    replies.map((r) => r.data.toString()),
    sockets.map((_, i) => `echo:n${i}`),
  )
})

test('a backend that refuses the upgrade gets its status passed back', async (t) => {
  const { address: backend } = await startWsBackend(t, 'refuse')
  const { address } = await startProxy(t, simpleYaml([backend]))
  const status = await new Promise<number>((resolve, reject) => {
    const ws = new WebSocket(`ws://${address}/`)
    ws.on('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0)
      res.resume()
    })
    ws.on('error', () => {})
    ws.on('open', () => reject(new Error('upgrade should have been refused')))
  })
  t.is(status, 403)
})
