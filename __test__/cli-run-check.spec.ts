/**
 * The CLI as operators run it — `check` on bad and good files, `run -c` refusing a bad
 * file, `run --to` serving and exiting 0 on SIGTERM, SIGHUP reloading the file.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test, { type ExecutionContext } from 'ava'
import { closedPort, startBackend } from './helpers/backend.js'
import { runCli, startCliProxy } from './helpers/cli.js'
import { get, sleep, tryConnect } from './helpers/http.js'

function tempFile(t: ExecutionContext, name: string, text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'meshproxy-cli-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, name)
  writeFileSync(file, text)
  return file
}

const goodYaml = (listenPort: number, endpoint: string): string => `admin: null
listeners:
  - name: main
    address: 127.0.0.1:${listenPort}
    routes:
      - service: s
services:
  - name: s
    endpoints: [${endpoint}]
`

test('check: an unknown field exits 1 and prints FILE:line:col:', async (t) => {
  const port = await closedPort()
  const file = tempFile(
    t,
    'bad.yaml',
    `admin: null
listeners:
  - address: 127.0.0.1:${port}
    routes:
      - service: s
        bogus: 1
services:
  - name: s
    endpoints: [127.0.0.1:1]
`,
  )
  const r = await runCli(t, ['check', file])
  t.is(r.code, 1)
  t.is(r.stdout, '')
  const lines = r.stderr.trim().split('\n')
  t.is(lines.length, 1, r.stderr)
  t.true(lines[0]!.startsWith(`${file}:6:9: error: unknown field "bogus"`), r.stderr)
})

test('run -c with a bad file exits 1 without listening', async (t) => {
  const port = await closedPort()
  const file = tempFile(t, 'bad.yaml', goodYaml(port, '127.0.0.1:1').replace('    routes:', '    bogus: true\n    routes:'))
  const r = await runCli(t, ['run', '-c', file])
  t.is(r.code, 1)
  t.notRegex(r.stdout, /listening/)
  t.regex(r.stderr, new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:\\d+:\\d+: error: unknown field "bogus"`, 'm'))
  t.regex(r.stderr, /refusing to start/)
  // No check that the port is free afterwards: the process has exited by now, so its sockets are
  // closed either way, and another test running in parallel may have been given the same port
  // (it failed once in CI although the CLI had refused to start). `listening` missing
  // from stdout is the proof that nothing was bound.
})

test('check: a good file exits 0 with a one-line summary', async (t) => {
  const file = tempFile(t, 'good.yaml', goodYaml(0, '127.0.0.1:1'))
  const r = await runCli(t, ['check', file])
  t.is(r.code, 0, r.stderr)
  t.is(r.stdout, `${file}: ok: 1 listener(s), 1 route(s), 1 service(s), 1 endpoint(s)\n`)
  t.is(r.stderr, '')
})

test('check: a missing file exits 1', async (t) => {
  const r = await runCli(t, ['check', join(tmpdir(), 'meshproxy-no-such-file.yaml')])
  t.is(r.code, 1)
  t.regex(r.stderr, /cannot read config file: no such file/)
})

test('run --to: serves, admin answers, SIGTERM exits 0', async (t) => {
  const backend = await startBackend(t, 'cli-backend')
  const cli = await startCliProxy(t, ['--to', backend.address])
  const res = await get(cli.port, '/hello')
  t.is(res.status, 200)
  t.is(res.body, 'cli-backend')
  t.is(res.headers['via'], '1.1 meshproxy')
  t.is(backend.requests[0]!.url, '/hello')
  t.is((await get(cli.adminPort, '/ready')).status, 200)
  cli.child.kill('SIGTERM')
  const exit = await cli.exited
  t.deepEqual(exit, { code: 0, signal: null }, cli.stderr())
  t.is(await tryConnect(cli.port), 'ECONNREFUSED')
})

test('run --to --no-proxy-headers: no x-forwarded-* or via either way; with -c it is refused', async (t) => {
  const backend = await startBackend(t, 'plain')
  const cli = await startCliProxy(t, ['--to', backend.address, '--no-proxy-headers'])
  const res = await get(cli.port, '/')
  t.is(res.status, 200)
  t.is(res.headers['via'], undefined)
  t.is(backend.requests[0]!.headers['x-forwarded-for'], undefined)
  t.is(backend.requests[0]!.headers['via'], undefined)
  const withFile = await runCli(t, ['run', '-c', 'x.yaml', '--no-proxy-headers', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'])
  t.is(withFile.code, 1)
  t.regex(withFile.stderr, /--no-proxy-headers goes with --to; in a config file, set proxyHeaders: false on the listener/)
})

test('run: --config and --to together, or neither, exit 1', async (t) => {
  const both = await runCli(t, ['run', '--to', '127.0.0.1:1', '-c', 'x.yaml', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'])
  t.is(both.code, 1)
  t.regex(both.stderr, /MESHPROXY_INVALID_CONFIG/)
  const neither = await runCli(t, ['run', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'])
  t.is(neither.code, 1)
  t.notRegex(neither.stdout, /listening/)
})

test('run -c: SIGHUP reloads the file; an invalid file on SIGHUP keeps the running config', async (t) => {
  const a = await startBackend(t, 'a')
  const b = await startBackend(t, 'b')
  const file = tempFile(t, 'mesh.yaml', goodYaml(0, a.address))
  const cli = await startCliProxy(t, ['-c', file])
  t.is((await get(cli.port, '/')).body, 'a')

  writeFileSync(file, goodYaml(0, b.address))
  cli.child.kill('SIGHUP')
  await waitFor(() => /config reloaded/.test(cli.stderr()), cli)
  t.is((await get(cli.port, '/')).body, 'b')

  writeFileSync(file, goodYaml(0, a.address).replace('routes:', 'nonsense: 1\n    routes:'))
  cli.child.kill('SIGHUP')
  await waitFor(() => /new config is invalid; keeping the running one/.test(cli.stderr()), cli)
  t.is((await get(cli.port, '/')).body, 'b')

  cli.child.kill('SIGTERM')
  t.is((await cli.exited).code, 0)
})

/** Polls a condition on the CLI's output (failure detection only, not a timing assertion). */
async function waitFor(cond: () => boolean, cli: { stderr(): string }, ms = 10_000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`condition not met; stderr:\n${cli.stderr()}`)
    await sleep(20)
  }
}
