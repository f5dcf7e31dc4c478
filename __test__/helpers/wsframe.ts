/**
 * WebSocket frames by hand (RFC 6455 §5), for tests whose client side is not a WebSocket library:
 * over HTTP/2 extended CONNECT the client speaks frames on a bare HTTP/2 stream. Client frames
 * are masked (as §5.3 requires of clients); server frames are read with or without a mask.
 */
import { randomBytes } from 'node:crypto'
import type { Duplex } from 'node:stream'

export const OP = { continuation: 0x0, text: 0x1, binary: 0x2, close: 0x8, ping: 0x9, pong: 0xa } as const

export interface Frame {
  fin: boolean
  opcode: number
  payload: Buffer
}

/** One masked client frame. */
export function clientFrame(opcode: number, payload: Buffer | string, fin = true): Buffer {
  const data = typeof payload === 'string' ? Buffer.from(payload) : payload
  let head: Buffer
  if (data.length < 126) {
    head = Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | data.length])
  } else if (data.length <= 0xffff) {
    head = Buffer.alloc(4)
    head[0] = (fin ? 0x80 : 0) | opcode
    head[1] = 0x80 | 126
    head.writeUInt16BE(data.length, 2)
  } else {
    head = Buffer.alloc(10)
    head[0] = (fin ? 0x80 : 0) | opcode
    head[1] = 0x80 | 127
    head.writeBigUInt64BE(BigInt(data.length), 2)
  }
  const mask = randomBytes(4)
  const masked = Buffer.alloc(data.length)
  for (let i = 0; i < data.length; i++) masked[i] = data[i]! ^ mask[i % 4]!
  return Buffer.concat([head, mask, masked])
}

/** A close frame's payload: the 2-byte code and a reason. */
export function closePayload(code: number, reason = ''): Buffer {
  const b = Buffer.alloc(2 + Buffer.byteLength(reason))
  b.writeUInt16BE(code, 0)
  b.write(reason, 2)
  return b
}

/** Parses one frame from the front of `buf`; null when `buf` does not hold a whole frame yet. */
export function parseFrame(buf: Buffer): { frame: Frame; rest: Buffer } | null {
  if (buf.length < 2) return null
  const fin = (buf[0]! & 0x80) !== 0
  const opcode = buf[0]! & 0x0f
  const masked = (buf[1]! & 0x80) !== 0
  let len = buf[1]! & 0x7f
  let at = 2
  if (len === 126) {
    if (buf.length < 4) return null
    len = buf.readUInt16BE(2)
    at = 4
  } else if (len === 127) {
    if (buf.length < 10) return null
    len = Number(buf.readBigUInt64BE(2))
    at = 10
  }
  const mask = masked ? buf.subarray(at, at + 4) : undefined
  if (masked) at += 4
  if (buf.length < at + len) return null
  const payload = Buffer.from(buf.subarray(at, at + len))
  if (mask) for (let i = 0; i < payload.length; i++) payload[i] = payload[i]! ^ mask[i % 4]!
  return { frame: { fin, opcode, payload }, rest: buf.subarray(at + len) }
}

/** Reads the frames a server sends on `stream`, one `next()` at a time. */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0)
  private readonly frames: Frame[] = []
  private waiter: (() => void) | undefined
  ended = false

  constructor(stream: Duplex) {
    stream.on('data', (chunk: Buffer) => {
      this.buf = Buffer.concat([this.buf, chunk])
      for (let parsed = parseFrame(this.buf); parsed; parsed = parseFrame(this.buf)) {
        this.frames.push(parsed.frame)
        this.buf = parsed.rest
      }
      this.wake()
    })
    stream.on('end', () => {
      this.ended = true
      this.wake()
    })
    stream.on('close', () => {
      this.ended = true
      this.wake()
    })
  }

  private wake(): void {
    const w = this.waiter
    this.waiter = undefined
    w?.()
  }

  /** The next frame; rejects after `ms` or when the stream ends first. */
  async next(ms = 5000): Promise<Frame> {
    const deadline = Date.now() + ms
    for (;;) {
      const frame = this.frames.shift()
      if (frame) return frame
      if (this.ended) throw new Error('stream ended before the next frame')
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`no frame within ${ms} ms`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        this.waiter = () => {
          clearTimeout(timer)
          resolve()
        }
      })
    }
  }
}
