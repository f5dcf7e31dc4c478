/**
 * Model objects with their defaults, for the YAML loader, the Kubernetes translation and
 * `configFromEndpoints`. The defaults themselves are declared in the field table (`model.ts`).
 */
import { complete, defaultOf, type IntField } from './fields.js'
import {
  LISTENER,
  LISTENER_PROTOCOLS,
  ROUTE,
  SERVICE,
  UPSTREAM_PROTOCOLS,
  type BalancerModel,
  type EndpointModel,
  type ListenerModel,
  type ListenerProtocol,
  type RouteModel,
  type ServiceModel,
  type UpstreamProtocol,
} from './model.js'

export { DEFAULT_ADMIN, DEFAULT_LISTEN, LISTENER_PROTOCOLS, UPSTREAM_PROTOCOLS } from './model.js'

export const DEFAULT_UPSTREAM_PROTOCOL = defaultOf(SERVICE.fields.protocol) as UpstreamProtocol

export function isListenerProtocol(v: unknown): v is ListenerProtocol {
  return (LISTENER_PROTOCOLS as readonly unknown[]).includes(v)
}

export function isUpstreamProtocol(v: unknown): v is UpstreamProtocol {
  return (UPSTREAM_PROTOCOLS as readonly unknown[]).includes(v)
}

/** The bounds of an integer field, as the YAML reader checks them (durations also as `10s`). */
export interface LimitSpec {
  min: number
  max: number
  duration: boolean
}

export const limitOf = (f: IntField): LimitSpec => ({ min: f.min, max: f.max, duration: f.duration })

export function makeListener(name: string, address: string, routes: RouteModel[] = []): ListenerModel {
  return complete(LISTENER, { name, address, routes })
}

/** A route matching every request (any host, any method, path prefix `/`). */
export function makeRoute(name: string, service: string): RouteModel {
  return complete(ROUTE, { name, service })
}

export function makeService(name: string, endpoints: EndpointModel[] = [], balancer?: BalancerModel, protocol: UpstreamProtocol = DEFAULT_UPSTREAM_PROTOCOL): ServiceModel {
  return complete(SERVICE, balancer === undefined ? { name, endpoints, protocol } : { name, endpoints, balancer, protocol })
}
