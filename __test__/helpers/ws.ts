/** A real `ws` WebSocket server behind a plain node:http server, for the upgrade tests. */
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { ExecutionContext } from 'ava'
import { WebSocketServer } from 'ws'

export interface WsBackend {
  address: string
  /** Heads of the upgrade requests the backend saw. */
  upgrades: http.IncomingHttpHeaders[]
}

/**
 * Echoes text as `echo:<text>` and binary as is; `close:<code>` makes it close with that code;
 * picks the `chat` subprotocol when offered. `refuse` answers every upgrade 403 (with a body and
 * an `x-refused` header to check they pass back); `plain` has no upgrade handling at all, so the
 * handshake request gets an ordinary 200.
 */
export async function startWsBackend(t: ExecutionContext, mode: 'ok' | 'refuse' | 'plain' = 'ok'): Promise<WsBackend> {
  const upgrades: http.IncomingHttpHeaders[] = []
  const server = http.createServer((_req, res) => res.end('plain'))
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: 64 * 1024 * 1024,
    handleProtocols: (protocols) => (protocols.has('chat') ? 'chat' : false),
  })
  if (mode !== 'plain') {
    server.on('upgrade', (req, socket, head) => {
      upgrades.push(req.headers)
      if (mode === 'refuse') {
        socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\nx-refused: yes\r\n\r\nno way')
        return
      }
      wss.handleUpgrade(req, socket, head, (ws) => {
        ws.on('message', (data, isBinary) => {
          const text = data.toString()
          if (!isBinary && text.startsWith('close:')) ws.close(Number(text.slice(6)), 'bye')
          else ws.send(isBinary ? data : `echo:${text}`, { binary: isBinary })
        })
      })
    })
  }
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const c of wss.clients) c.terminate()
    server.closeAllConnections()
    return new Promise<void>((resolve) => server.close(() => resolve()))
  })
  return { address: `127.0.0.1:${(server.address() as AddressInfo).port}`, upgrades }
}
