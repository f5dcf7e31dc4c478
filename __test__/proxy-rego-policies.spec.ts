/**
 * Rego policies on routes and services, evaluated by the data plane (regorus): the seed's health
 * check policy loaded unchanged (classify: failures in metrics, ejection), deny and warn on
 * responses, a request-phase deny, a body rule on a 50 MB streamed response, evaluation errors in
 * both error modes, and `meshproxy check` naming a Rego syntax error's line and column.
 */
import test, { type ExecutionContext } from 'ava'
import http from 'node:http'
import { copyFile, mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { startBackend, type Handler } from './helpers/backend.js'
import { request, get } from './helpers/http.js'
import { startProxy } from './helpers/proxy.js'
import { runCli, rssBytes, startCliProxy } from './helpers/cli.js'

const FIXTURES = fileURLToPath(new URL('./fixtures/policies/', import.meta.url))

/** A directory holding `files` (copied from the fixtures, unchanged) and `mesh.yaml`. */
async function configDir(yaml: string, files: string[]): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'meshproxy-rego-'))
  for (const f of files) await copyFile(join(FIXTURES, f), join(dir, f))
  await writeFile(join(dir, 'mesh.yaml'), yaml)
  return join(dir, 'mesh.yaml')
}

const answer = (status: number, body: string, headers: http.OutgoingHttpHeaders = {}): Handler => (_req, res) => {
  res.writeHead(status, { 'content-type': 'text/plain', ...headers })
  res.end(body)
}

async function metricsOf(adminPort: number): Promise<string> {
  return (await get(adminPort, '/metrics')).body
}

function counter(metrics: string, re: RegExp): number {
  const m = re.exec(metrics)
  return m ? Number(m[1]) : 0
}

test('the seed\'s Rego file, unchanged, through the CLI: 200 "OK" passes; "not ok" and 500 are failures and get their endpoints ejected', async (t) => {
  const ok = await startBackend(t, 'ok', answer(200, 'OK'))
  const notOk = await startBackend(t, 'not-ok', answer(200, 'not ok'))
  const err = await startBackend(t, 'err', answer(500, 'OK'))
  const file = await configDir(
    `
listeners:
  - name: web
    routes:
      - name: api
        service: api
        policies: [seed.rego]
services:
  - name: api
    endpoints: [${ok.address}, ${notOk.address}, ${err.address}]
    failureAccrual: { consecutiveFailures: 3, minPenalty: 1m, maxPenalty: 1m, maxEjectionPercent: 100 }
`,
    ['seed.rego'],
  )
  const proxy = await startCliProxy(t, ['-c', file])
  // Round robin: each endpoint gets every third request; three failures in a row eject.
  for (let i = 0; i < 9; i++) {
    const r = await get(proxy.port)
    // classify passes the response unchanged.
    t.true(r.status === 200 || r.status === 500)
  }
  const before = await metricsOf(proxy.adminPort)
  const failures = (a: string) => counter(before, new RegExp(`meshproxy_upstream_failures_total\\{endpoint="${a}"\\} (\\d+)`))
  t.is(failures(ok.address), 0)
  t.is(failures(notOk.address), 3, 'a 200 whose body is not "OK" is a failure')
  t.is(failures(err.address), 3)
  t.regex(before, new RegExp(`meshproxy_upstream_ejected\\{endpoint="${notOk.address}"\\} 1`))
  t.regex(before, new RegExp(`meshproxy_upstream_ejected\\{endpoint="${err.address}"\\} 1`))
  t.regex(before, /meshproxy_policy_evaluations_total\{owner="route:web\/api",policy="[^"]*seed\.rego",action="classify"\} 9/)
  t.regex(before, /meshproxy_policy_violations_total\{owner="route:web\/api",policy="[^"]*seed\.rego",action="classify"\} 6/)
  // Fault detected: every request now goes to the healthy endpoint.
  const served = ok.requests.length
  for (let i = 0; i < 6; i++) t.is((await get(proxy.port)).body, 'OK')
  t.is(ok.requests.length, served + 6)
})

async function policyProxy(t: ExecutionContext, policies: string, files: string[], endpoint: string) {
  const file = await configDir(
    `
admin: null
listeners:
  - address: 127.0.0.1:0
    routes:
      - service: api
        policies:
${policies}
services:
  - name: api
    endpoints: [${endpoint}]
`,
    files,
  )
  const { loadConfigFile } = await import('../ts/index.js')
  const loaded = await loadConfigFile(file)
  if (!loaded.config) throw new Error(JSON.stringify(loaded.diagnostics))
  return startProxy(t, loaded.config)
}

test('deny: a response violating the policy is replaced by 502 policy-violation with the messages; a good one passes', async (t) => {
  let body = 'not ok'
  const b = await startBackend(t, 'b', (_req, res) => answer(200, body)(_req, res, b))
  const { port, proxy } = await policyProxy(t, '          - { file: seed.rego, action: deny }', ['seed.rego'], b.address)
  const denied = await get(port)
  t.is(denied.status, 502)
  t.is(denied.headers['meshproxy-error'], 'policy-violation')
  t.is(denied.body, "Response body is not 'OK'\n")
  body = 'OK'
  const passed = await get(port)
  t.is(passed.status, 200)
  t.is(passed.body, 'OK')
  t.regex(proxy.metrics(), /meshproxy_proxy_errors_total\{[^}]*error="policy-violation"[^}]*\} 1/)
})

test('warn: the response passes with the messages in meshproxy-policy-warning', async (t) => {
  const b = await startBackend(t, 'b', answer(503, 'busy'))
  const { port } = await policyProxy(t, '          - { file: seed.rego, action: warn }', ['seed.rego'], b.address)
  const r = await get(port)
  t.is(r.status, 503)
  t.is(r.body, 'busy')
  const warning = String(r.headers['meshproxy-policy-warning'])
  t.true(warning.includes('HTTP status code is not 200'), warning)
  t.true(warning.includes("Response body is not 'OK'"), warning)
})

test('a request-phase policy (Rego v1, rule deny) refuses with 403 forbidden before the request is sent', async (t) => {
  const b = await startBackend(t, 'b', answer(200, 'OK'))
  const { port } = await policyProxy(t, '          - { file: no-deletes.rego, phase: request, action: deny, rule: deny }', ['no-deletes.rego'], b.address)
  const refused = await request(port, { method: 'DELETE', path: '/items/7' })
  t.is(refused.status, 403)
  t.is(refused.headers['meshproxy-error'], 'forbidden')
  t.is(refused.body, 'DELETE /items/7 is not allowed\n')
  const blocked = await request(port, { path: '/', headers: { 'X-Block': '1' } })
  t.is(blocked.status, 403)
  t.is(blocked.body, 'x-block is set\n')
  const passed = await get(port, '/items/7')
  t.is(passed.status, 200)
  t.deepEqual(
    b.requests.map((r) => r.method),
    ['GET'],
    'the refused requests never reached the backend',
  )
})

/** Counts a response's bytes without keeping them. */
function download(port: number, path: string): Promise<{ status: number; bytes: number; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
        let bytes = 0
        res.on('data', (c: Buffer) => (bytes += c.length))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes, headers: res.headers }))
        res.on('error', reject)
      })
      .on('error', reject)
  })
}

test('a body rule on a 50 MB streamed response keeps at most its bound: the client gets every byte, memory stays bounded', async (t) => {
  const SIZE = 50 * 1024 * 1024
  const chunk = Buffer.alloc(64 * 1024, 'x')
  const big = await startBackend(t, 'big', (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    let sent = 0
    const pump = (): void => {
      while (sent < SIZE) {
        sent += chunk.length
        if (!res.write(chunk)) {
          res.once('drain', pump)
          return
        }
      }
      res.end()
    }
    pump()
  })
  const file = await configDir(
    `
listeners:
  - name: web
    routes:
      - name: classify
        match: { path: /classify }
        service: big
        policies: [{ file: seed.rego, maxBodyBytes: 65536 }]
      - name: deny
        match: { path: /deny }
        service: big
        policies: [{ file: seed.rego, action: deny, maxBodyBytes: 65536 }]
services:
  - name: big
    endpoints: [${big.address}]
`,
    ['seed.rego'],
  )
  const proxy = await startCliProxy(t, ['-c', file])
  await download(proxy.port, '/classify') // warm up: pools, allocator
  const rssBefore = await rssBytes(proxy.pid)
  let peak = rssBefore
  const sampler = setInterval(() => {
    rssBytes(proxy.pid).then((r) => (peak = Math.max(peak, r)), () => {})
  }, 20)
  t.teardown(() => clearInterval(sampler))
  // classify: streams while a bounded copy is kept; past the bound the body is absent, so the
  // seed's body rule is undefined and a 200 passes.
  const streamed = await download(proxy.port, '/classify')
  t.is(streamed.status, 200)
  t.is(streamed.bytes, SIZE)
  // deny: the head waits for the bound only, then the policy judges what came (truncated).
  const held = await download(proxy.port, '/deny')
  t.is(held.status, 200)
  t.is(held.bytes, SIZE)
  clearInterval(sampler)
  const grown = peak - rssBefore
  t.true(grown < 24 * 1024 * 1024, `the proxy grew by ${(grown / 1048576).toFixed(1)} MiB streaming 2 x 50 MiB`)
  const metrics = await metricsOf(proxy.adminPort)
  t.regex(metrics, /meshproxy_policy_violations_total\{owner="route:web\/classify"[^}]*\} 0/)
  t.regex(metrics, new RegExp(`meshproxy_upstream_failures_total\\{endpoint="${big.address}"\\} 0`))
})

test('an evaluation error fails closed (a violation) or open (a pass) as configured', async (t) => {
  const b = await startBackend(t, 'b', answer(200, 'OK', { 'x-count': 'many' }))
  const closed = await policyProxy(t, '          - { file: numbers.rego, action: deny }', ['numbers.rego'], b.address)
  const r1 = await get(closed.port)
  t.is(r1.status, 502)
  t.is(r1.headers['meshproxy-error'], 'policy-violation')
  t.true(r1.body.startsWith('policy error: '), r1.body)
  t.regex(closed.proxy.metrics(), /meshproxy_policy_errors_total\{[^}]*numbers\.rego",action="deny"\} 1/)
  const open = await policyProxy(t, '          - { file: numbers.rego, action: deny, onError: open }', ['numbers.rego'], b.address)
  const r2 = await get(open.port)
  t.is(r2.status, 200)
  t.is(r2.body, 'OK')
  t.regex(open.proxy.metrics(), /meshproxy_policy_errors_total\{[^}]*numbers\.rego",action="deny"\} 1/)
})

test('meshproxy check reports a Rego syntax error at the .rego file\'s line and column; run refuses it', async (t) => {
  const file = await configDir(
    `
listeners:
  - routes:
      - service: api
        policies: [broken.rego]
services:
  - name: api
    endpoints: [127.0.0.1:9]
`,
    ['broken.rego'],
  )
  const rego = join(file, '..', 'broken.rego')
  const checked = await runCli(t, ['check', file])
  t.is(checked.code, 1)
  t.is(checked.stderr.trim(), `${rego}:4:33: error: Rego: expecting expression`)
  const ran = await runCli(t, ['run', '-c', file, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'])
  t.is(ran.code, 1)
  t.true(ran.stderr.includes(`${rego}:4:33: expecting expression`), ran.stderr)
})

test('a missing .rego file is a config error at the policy\'s position in the YAML', async (t) => {
  const file = await configDir(
    `
listeners:
  - routes:
      - service: api
        policies: [nowhere.rego]
services:
  - name: api
    endpoints: [127.0.0.1:9]
`,
    [],
  )
  const checked = await runCli(t, ['check', file])
  t.is(checked.code, 1)
  t.regex(checked.stderr, /mesh\.yaml:5:20: error: cannot read policy file ".*nowhere\.rego": no such file/)
})
