/**
 * A real gRPC server (@grpc/grpc-js) with one unary method, `/test.Echo/Unary`, that answers each
 * call with its request and counts the calls it served; and a client for it through any address
 * (a proxy's). Both closed at the end of the test.
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

export async function startGrpcEcho(t: ExecutionContext): Promise<GrpcEcho> {
  const server = new grpc.Server()
  let calls = 0
  server.addService(definition, {
    Unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      calls++
      cb(null, call.request)
    },
  })
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))))
  t.teardown(() => server.forceShutdown())
  return { port, calls: () => calls }
}

/** A client of the echo service at `address`: each call resolves to its error, null on OK. */
export function grpcEchoClient(t: ExecutionContext, address: string): () => Promise<grpc.ServiceError | null> {
  const Client = grpc.makeGenericClientConstructor(definition, 'Echo')
  const client = new Client(address, grpc.credentials.createInsecure()) as unknown as { Unary: (req: Buffer, cb: (e: grpc.ServiceError | null, r?: Buffer) => void) => void; close: () => void }
  t.teardown(() => client.close())
  return () => new Promise<grpc.ServiceError | null>((resolve) => client.Unary(Buffer.from('x'), (e) => resolve(e)))
}
