/**
 * A real gRPC server (@grpc/grpc-js) with one unary method, `/test.Echo/Unary`, that answers each
 * call with its request (after a prefix, if given) and counts the calls it served; and clients for
 * it through any address (a proxy's), plaintext or TLS. All closed at the end of the test.
 */
import * as grpc from '@grpc/grpc-js'
import type { ExecutionContext } from 'ava'

const passthrough = (b: Buffer): Buffer => b
const definition = {
  Unary: { path: '/test.Echo/Unary', requestStream: false, responseStream: false, requestSerialize: passthrough, requestDeserialize: passthrough, responseSerialize: passthrough, responseDeserialize: passthrough },
} satisfies grpc.ServiceDefinition

export interface GrpcEcho {
  port: number
  /** Calls the server has answered. */
  calls(): number
}

export interface GrpcEchoOptions {
  /** Put before each reply (`echo:` answers `hi` with `echo:hi`); none by default. */
  prefix?: string
}

export async function startGrpcEcho(t: ExecutionContext, opts: GrpcEchoOptions = {}): Promise<GrpcEcho> {
  const prefix = Buffer.from(opts.prefix ?? '')
  const server = new grpc.Server()
  let calls = 0
  server.addService(definition, {
    Unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      calls++
      cb(null, Buffer.concat([prefix, call.request]))
    },
  })
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))))
  t.teardown(() => server.forceShutdown())
  return { port, calls: () => calls }
}

interface EchoClient {
  Unary: (req: Buffer, cb: (e: grpc.ServiceError | null, r?: Buffer) => void) => void
  close: () => void
}

function echoClient(t: ExecutionContext, address: string, credentials: grpc.ChannelCredentials, options: grpc.ChannelOptions): EchoClient {
  const Client = grpc.makeGenericClientConstructor(definition, 'Echo')
  const client = new Client(address, credentials, options) as unknown as EchoClient
  t.teardown(() => client.close())
  return client
}

/** A client of the echo service at `address`: each call resolves to its error, null on OK. */
export function grpcEchoClient(t: ExecutionContext, address: string): () => Promise<grpc.ServiceError | null> {
  const client = echoClient(t, address, grpc.credentials.createInsecure(), {})
  return () => new Promise<grpc.ServiceError | null>((resolve) => client.Unary(Buffer.from('x'), (e) => resolve(e)))
}

/**
 * A client of the echo service at `address` over `credentials` (by default plaintext) with
 * channel `options`: each call resolves to the reply, or rejects with the call's error.
 */
export function grpcEchoCaller(
  t: ExecutionContext,
  address: string,
  credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
  options: grpc.ChannelOptions = {},
): (req: Buffer) => Promise<Buffer> {
  const client = echoClient(t, address, credentials, options)
  return (req) => new Promise<Buffer>((resolve, reject) => client.Unary(req, (e, r) => (e || !r ? reject(e) : resolve(r))))
}
