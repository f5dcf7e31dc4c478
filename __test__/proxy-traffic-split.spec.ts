/**
 * Traffic splits through the real proxy: a route's `backends` share its requests by weight
 * (within ±2 % over 10,000 requests), a header or cookie match pins chosen requests to one side, and a
 * reload moves the weights (a blue-green switch) without failing a request in flight.
 */
import http from 'node:http'
import test from 'ava'
import { startBackend } from './helpers/backend.js'
import { get, inParallel } from './helpers/http.js'
import { load, startProxy } from './helpers/proxy.js'
import { loadConfigText } from '../ts/index.js'

const split = (blue: string, green: string, weights: [number, number], extraRoutes = ''): string => `
admin: null
listeners:
  - name: main
    address: 127.0.0.1:0
    routes:${extraRoutes}
      - name: app
        backends:
          - { service: blue, weight: ${weights[0]} }
          - { service: green, weight: ${weights[1]} }
services:
  - { name: blue, endpoints: [${blue}] }
  - { name: green, endpoints: [${green}] }
`

test('a 90/10 split over 10,000 requests is within 2 % of its weights', async (t) => {
  const blue = await startBackend(t, 'blue')
  const green = await startBackend(t, 'green')
  const { port } = await startProxy(t, split(blue.address, green.address, [90, 10]))
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 })
  t.teardown(() => agent.destroy())
  const n = 10_000
  await inParallel(16, n, async () => {
    const res = await get(port, '/', {}, agent)
    if (res.status !== 200) t.fail(`status ${res.status}`)
  })
  const share = green.requests.length / n
  t.is(blue.requests.length + green.requests.length, n)
  t.true(Math.abs(share - 0.1) <= 0.02, `green's share: ${(share * 100).toFixed(2)} %`)
})

test('a header match in an earlier route pins test users to the canary', async (t) => {
  const blue = await startBackend(t, 'blue')
  const green = await startBackend(t, 'green')
  const pin = `
      - name: testers
        match: { headers: { x-canary: "1" } }
        service: green`
  const { port } = await startProxy(t, split(blue.address, green.address, [100, 0], pin))
  for (let i = 0; i < 20; i++) {
    t.is((await get(port, '/', { 'x-canary': '1' })).body, 'green')
    t.is((await get(port, '/')).body, 'blue', 'weight 0: no other request reaches green')
  }
})

test('a cookie match in an earlier route pins chosen users to the canary', async (t) => {
  const blue = await startBackend(t, 'blue')
  const green = await startBackend(t, 'green')
  const pin = `
      - name: beta-users
        match: { cookies: { channel: beta } }
        service: green`
  const { port } = await startProxy(t, split(blue.address, green.address, [100, 0], pin))
  for (let i = 0; i < 20; i++) {
    t.is((await get(port, '/', { cookie: 'session=abc; channel=beta' })).body, 'green')
    t.is((await get(port, '/', { cookie: 'channel=stable' })).body, 'blue')
    t.is((await get(port, '/')).body, 'blue')
  }
})

test('a reload moves the weights (blue-green switch) without failing a request', async (t) => {
  const blue = await startBackend(t, 'blue')
  const green = await startBackend(t, 'green')
  const { port, proxy } = await startProxy(t, split(blue.address, green.address, [100, 0]))
  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 })
  t.teardown(() => agent.destroy())
  let running = true
  let failures = 0
  let sent = 0
  const load_ = Promise.all(
    Array.from({ length: 8 }, async () => {
      while (running) {
        sent++
        if ((await get(port, '/', {}, agent)).status !== 200) failures++
      }
    }),
  )
  await new Promise((r) => setTimeout(r, 200))
  await proxy.reload(load(split(blue.address, green.address, [0, 100])))
  const after = green.requests.length
  await new Promise((r) => setTimeout(r, 200))
  running = false
  await load_
  t.is(failures, 0, `${sent} requests, none failed`)
  t.true(green.requests.length > after, 'green serves after the switch')
  const blueBefore = blue.requests.length
  for (let i = 0; i < 10; i++) t.is((await get(port, '/', {}, agent)).body, 'green')
  t.is(blue.requests.length, blueBefore, 'blue gets nothing after the switch')
})

test('bad splits are refused with their position', (t) => {
  const errors = (yaml: string): string[] =>
    loadConfigText(yaml, { file: 'm.yaml' }).diagnostics.filter((d) => d.severity === 'error').map((d) => `${d.line}:${d.column} ${d.message}`)
  t.deepEqual(errors(split('127.0.0.1:1', '127.0.0.1:2', [0, 0])), ['7:9 route "app": every backend has weight 0, so no request could be sent'])
  t.deepEqual(errors(split('127.0.0.1:1', '127.0.0.1:2', [1, 1]).replace('service: green, weight', 'service: gren, weight')), [
    '10:13 route "app" backend refers to undefined service "gren"',
  ])
  t.deepEqual(errors(split('127.0.0.1:1', '127.0.0.1:2', [1, 1]).replace('service: green, weight', 'service: blue, weight')), ['10:13 route "app" lists backend "blue" twice'])
  t.deepEqual(errors(split('127.0.0.1:1', '127.0.0.1:2', [1, 1]).replace('weight: 1 }\n          - { service: green', 'weight: -1 }\n          - { service: green')), [
    '9:38 "weight" in route backend must be between 0 and 1000000, got -1',
  ])
  const ok = loadConfigText(split('127.0.0.1:1', '127.0.0.1:2', [3, 1]))
  t.like(ok.config?.listeners[0]?.routes[0], { service: 'blue', backends: [{ service: 'blue', weight: 3 }, { service: 'green', weight: 1 }] })
})
