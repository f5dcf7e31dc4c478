/**
 * `meshproxy demo` (what `npm start` runs) does what it tells the user to try: every command it
 * prints under "Try:" is run here as printed, with bash and curl, and its output checked.
 */
import { spawnSync } from 'node:child_process'
import test from 'ava'
import { spawnCli } from './helpers/cli.js'

/** The commands printed under "Try:", without their comments' continuation lines. */
function commands(stdout: string): string[] {
  const tryAt = stdout.indexOf('Try:')
  const end = stdout.indexOf('Ctrl-C drains')
  return stdout
    .slice(tryAt + 'Try:'.length, end)
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.startsWith('curl '))
}

function bash(command: string): string {
  const r = spawnSync('bash', ['-c', command], { encoding: 'utf8', timeout: 20_000 })
  if (r.status !== 0 && !command.includes('| grep')) throw new Error(`${command}\nexit ${r.status}\n${r.stderr}`)
  return r.stdout
}

test('npm start: the demo mesh answers every command it prints, as described, and stops on Ctrl-C', async (t) => {
  const demo = spawnCli(t, ['demo', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'])
  await demo.waitForStdout(/Ctrl-C drains and stops/, 30_000)
  const brokenPort = /broken :(\d+)/.exec(demo.stdout())![1]!
  const cmds = commands(demo.stdout())
  const find = (part: string): string => {
    const c = cmds.find((x) => x.includes(part))
    if (!c) throw new Error(`no printed command with ${part}:\n${cmds.join('\n')}`)
    return c
  }
  const json = (out: string): Record<string, unknown> => JSON.parse(out) as Record<string, unknown>

  // The split: web's two instances or the canary.
  const seen = new Set<unknown>()
  for (let i = 0; i < 30; i++) seen.add(json(bash(cmds[0]!)).service)
  t.true([...seen].every((s) => ['web-1', 'web-2', 'web-canary'].includes(String(s))), `split served by ${[...seen].join(', ')}`)
  t.true(seen.has('web-1') && seen.has('web-2'), 'both web instances serve the 90 %')

  t.is(json(bash(find("x-canary: 1"))).service, 'web-canary')
  const sticky = find('x-user: alice')
  const first = json(bash(sticky)).service
  for (let i = 0; i < 5; i++) t.is(json(bash(sticky)).service, first, 'one user, one instance')
  t.regex(String(json(bash(find('--path-as-is'))).service), /^orders-[12]$/, 'routed as /orders')

  // A failing endpoint: clients see no failure, and failure accrual ejects it.
  t.is(bash(find('/orders?n=')).trim(), Array(12).fill('200').join(' '))
  const endpoints = bash(find('/endpoints'))
  t.regex(endpoints, new RegExp(`"127\\.0\\.0\\.1:${brokenPort}",\\s+"state": "ejected"`), endpoints)

  // The seed's Rego rule and RateLimiter.
  t.is(bash(find('/api/broken')), 'NOT OK')
  const codes = bash(find('/api/?n=')).trim().split(' ')
  t.is(codes.length, 20)
  t.is(codes[0], '200')
  t.true(codes.includes('429'), `rate 5/s, burst 10: ${codes.join(' ')}`)
  const refused = bash(find('grep -iE'))
  t.regex(refused, /meshproxy-error: rate-limited/i)
  t.regex(refused, /retry-after: \d+/i)
  // mTLS to the orders workload's sidecar, identities checked at both ends.
  t.like(json(bash(find('/mesh/orders'))), { service: 'orders-1', url: '/mesh/orders' })
  t.regex(bash(find('mTLS-only port')), /tls-required|TLS/i)
  t.like(json(bash(find('/identity'))), { id: 'spiffe://cluster.local/ns/shop/sa/web' })
  const metrics = bash(find('/metrics'))
  t.regex(metrics, /meshproxy_policy_violations_total\{[^}]*\} [1-9]/)
  t.regex(metrics, /meshproxy_rate_limited_total\{[^}]*\} [1-9]/)
  t.regex(metrics, /meshproxy_retries_total\{[^}]*\} [1-9]/)
  t.truthy(json(bash(find('/config'))).listeners)

  demo.child.kill('SIGINT')
  t.like(await demo.exited, { code: 0 })
})
