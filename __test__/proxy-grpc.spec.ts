/**
 * gRPC end to end through meshproxy with @grpc/grpc-js on both sides: the four call shapes,
 * statuses and messages passed through unchanged, deadlines that cancel the upstream call, and
 * proxy-made failures answered the way gRPC clients expect.
 */
import test from 'ava'
import * as grpc from '@grpc/grpc-js'
import { load, startProxy } from './helpers/proxy.js'
import { closedPort } from './helpers/backend.js'

const passthrough = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b }
const method = (name: string, requestStream: boolean, responseStream: boolean) => ({
  path: `/test.Echo/${name}`,
  requestStream,
  responseStream,
  requestSerialize: passthrough.serialize,
  requestDeserialize: passthrough.deserialize,
  responseSerialize: passthrough.serialize,
  responseDeserialize: passthrough.deserialize,
})
const definition = {
  Unary: method('Unary', false, false),
  ServerStream: method('ServerStream', false, true),
  ClientStream: method('ClientStream', true, false),
  Bidi: method('Bidi', true, true),
  Fail: method('Fail', false, false),
  Slow: method('Slow', false, false),
} satisfies grpc.ServiceDefinition
const Client = grpc.makeGenericClientConstructor(definition, 'Echo')
type EchoClient = InstanceType<typeof Client> & Record<string, (...args: unknown[]) => unknown>

interface Server {
  address: string
  cancelled: number
}

async function startServer(t: import('ava').ExecutionContext): Promise<Server> {
  const server = new grpc.Server()
  const state: Server = { address: '', cancelled: 0 }
  server.addService(definition, {
    Unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, Buffer.concat([Buffer.from('echo:'), call.request])),
    ServerStream: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
      for (let i = 0; i < 5; i++) call.write(Buffer.from(`part${i}`))
      call.end()
    },
    ClientStream: (call: grpc.ServerReadableStream<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      const parts: Buffer[] = []
      call.on('data', (b: Buffer) => parts.push(b))
      call.on('end', () => cb(null, Buffer.from(`got ${parts.length}: ${Buffer.concat(parts).toString()}`)))
    },
    Bidi: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      call.on('data', (b: Buffer) => call.write(Buffer.concat([Buffer.from('re:'), b])))
      call.on('end', () => call.end())
    },
    Fail: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) =>
      cb({ code: grpc.status.NOT_FOUND, details: 'no such thing: é%' }),
    Slow: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      const timer = setTimeout(() => cb(null, Buffer.from('late')), 5000)
      call.on('cancelled', () => {
        state.cancelled += 1
        clearTimeout(timer)
      })
    },
  })
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  )
  state.address = `127.0.0.1:${port}`
  t.teardown(() => server.forceShutdown())
  return state
}

/** A proxy with one route (`path`, default the Echo service) to `endpoint` over h2c, and a client to it. */
async function proxyTo(
  t: import('ava').ExecutionContext,
  endpoint: string,
  path = '/test.Echo',
): Promise<EchoClient & { proxy: import('../ts/index.js').Proxy }> {
  const { address, proxy } = await startProxy(
    t,
    load(`
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:
      - name: grpc
        match: { path: ${path} }
        service: echo
services:
  - name: echo
    protocol: http2
    endpoints: [${endpoint}]
`),
  )
  const client = new Client(address, grpc.credentials.createInsecure()) as EchoClient
  t.teardown(() => client.close())
  return Object.assign(client, { proxy })
}

function unary(client: EchoClient, name: string, body: string, options: grpc.CallOptions = {}): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    client[name]!(Buffer.from(body), new grpc.Metadata(), options, (err: grpc.ServiceError | null, res: Buffer) => (err ? reject(err) : resolve(res))),
  )
}

test('unary, server-streaming, client-streaming and bidi calls', async (t) => {
  const server = await startServer(t)
  const client = await proxyTo(t, server.address)
  t.is((await unary(client, 'Unary', 'hi')).toString(), 'echo:hi')

  const parts: string[] = []
  await new Promise<void>((resolve, reject) => {
    const call = client['ServerStream']!(Buffer.from('x')) as grpc.ClientReadableStream<Buffer>
    call.on('data', (b: Buffer) => parts.push(b.toString()))
    call.on('end', () => resolve())
    call.on('error', reject)
  })
  t.deepEqual(parts, ['part0', 'part1', 'part2', 'part3', 'part4'])

  const summary = await new Promise<string>((resolve, reject) => {
    const call = client['ClientStream']!((err: grpc.ServiceError | null, res: Buffer) => (err ? reject(err) : resolve(res.toString()))) as grpc.ClientWritableStream<Buffer>
    for (const s of ['a', 'b', 'c']) call.write(Buffer.from(s))
    call.end()
  })
  t.is(summary, 'got 3: abc')

  const replies: string[] = []
  await new Promise<void>((resolve, reject) => {
    const call = client['Bidi']!() as grpc.ClientDuplexStream<Buffer, Buffer>
    call.on('data', (b: Buffer) => {
      replies.push(b.toString())
      if (replies.length < 3) call.write(Buffer.from(`m${replies.length}`))
      else call.end()
    })
    call.on('end', () => resolve())
    call.on('error', reject)
    call.write(Buffer.from('m0'))
  })
  t.deepEqual(replies, ['re:m0', 're:m1', 're:m2'])
})

test('a server error status and message arrive unchanged', async (t) => {
  const server = await startServer(t)
  const client = await proxyTo(t, server.address)
  const err = await t.throwsAsync<grpc.ServiceError>(unary(client, 'Fail', ''))
  t.is(err?.code, grpc.status.NOT_FOUND)
  t.is(err?.details, 'no such thing: é%')
})

test('a deadline that expires cancels the upstream call', async (t) => {
  const server = await startServer(t)
  const client = await proxyTo(t, server.address)
  const err = await t.throwsAsync<grpc.ServiceError>(unary(client, 'Slow', '', { deadline: Date.now() + 300 }))
  t.is(err?.code, grpc.status.DEADLINE_EXCEEDED)
  for (let i = 0; i < 40 && server.cancelled === 0; i++) await new Promise((r) => setTimeout(r, 50))
  t.is(server.cancelled, 1, 'the backend saw its call cancelled')
})

test('an unreachable backend gives UNAVAILABLE with meshproxy-error', async (t) => {
  const port = await closedPort()
  const client = await proxyTo(t, `127.0.0.1:${port}`)
  const err = await t.throwsAsync<grpc.ServiceError>(unary(client, 'Unary', 'x'))
  t.is(err?.code, grpc.status.UNAVAILABLE)
  t.deepEqual(err?.metadata.get('meshproxy-error'), ['upstream-connect'])
})

test('no route answers UNIMPLEMENTED', async (t) => {
  const server = await startServer(t)
  const client = await proxyTo(t, server.address, '/other')
  const err = await t.throwsAsync<grpc.ServiceError>(unary(client, 'Unary', 'x'))
  t.is(err?.code, grpc.status.UNIMPLEMENTED)
})

test('gRPC responses are counted by protocol and grpc-status', async (t) => {
  const server = await startServer(t)
  const client = await proxyTo(t, server.address, '/')
  const { proxy } = client
  await unary(client, 'Unary', 'a')
  await t.throwsAsync(unary(client, 'Fail', ''))
  const text = proxy.metrics()
  const labels = 'listener="main",route="grpc",service="echo"'
  t.true(text.includes(`meshproxy_requests_by_protocol_total{${labels},protocol="grpc"} 2\n`), text)
  t.true(text.includes(`meshproxy_grpc_responses_total{${labels},grpc_status="0"} 1\n`))
  t.true(text.includes(`meshproxy_grpc_responses_total{${labels},grpc_status="5"} 1\n`))
})
