/**
 * The bench's `tls` scenario (bench/lib/tls.mjs), run for real and briefly: meshproxy, HAProxy and
 * nginx terminate TLS with one ECDSA P-256 certificate in front of the bench's nginx backends, and
 * the harness must report every figure (full and resumed handshakes, HTTP/1.1 and h2 requests on
 * kept-alive connections, CPU per connection and per request, peak RSS) for every target, with
 * what each negotiated. No performance assertion: only that each figure was measured and that the
 * measurement is of what it says (TLS 1.3 with the pinned suite, sessions really resumed).
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { once } from 'node:events'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ROOT } from './helpers/cli.js'
import { formatDiagnostic, loadConfigText } from '../ts/index.js'
// @ts-expect-error: plain ESM module of the bench
import { haproxyConf, proxyNginxConf } from '../bench/lib/targets.mjs'
// @ts-expect-error: plain ESM module of the bench
import { makeCertificate, meshproxyTlsYaml, parseSTime, TLS_FIGURES, TLS_PIN, TLS_TARGETS } from '../bench/lib/tls.mjs'
// @ts-expect-error: plain ESM module of the bench
import { which } from '../bench/lib/tools.mjs'

interface Figure {
  key: string
  noRatio?: boolean
}
interface Negotiated {
  protocol: string | null
  cipher: string | null
  alpn?: string | null
}
interface TlsRun {
  target: string
  error?: string
  negotiated: { sClient: Negotiated; tlsH1: Negotiated; tlsH2: Negotiated }
  tlsFull: { connections: number; reused: number }
  tlsResumed: { connections: number; reused: number; backends: { requests: number } }
}

const TOOLS = ['nginx', 'haproxy', 'h2load', 'openssl', 'wrk']

test('s_time output: connections, resumed ones and bytes per connection, also when a connection failed', (t) => {
  const text = `Collecting connection statistics for 1 seconds
rrrrrrrrrr*rrrr
rrr

18 connections in 0.05s; 360.00 connections/user sec, bytes read 2610
18 connections in 2 real seconds, 145 bytes read per connection
`
  t.deepEqual(parseSTime(text), { connections: 18, reused: 17, bytesPerConnection: 145, complete: true })
  // A failed connection ends s_time without its counts: the completed ones still count.
  t.deepEqual(parseSTime('\n\nNow timing with session id reuse.\nstarting\nrrrrr*rr'), { connections: 8, reused: 7, bytesPerConnection: null, complete: false })
  t.throws(() => parseSTime('s_time: Unknown option: -foo\n'))
})

test('tls scenario configs: meshproxy terminates TLS with the bench certificate, HAProxy binds ssl crt, nginx listens ssl with HTTP/2', async (t) => {
  const openssl = which('openssl')
  if (!openssl) return t.fail('needs openssl (.ci/run installs it)')
  const dir = mkdtempSync(join(tmpdir(), 'bench-tls-cert-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const tls = await makeCertificate(openssl, dir)
  t.regex(tls.certText, /^-----BEGIN CERTIFICATE-----/)
  t.regex(readFileSync(tls.pem, 'utf8'), /-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----/)
  const backends = [{ addr: '127.0.0.1:9001' }, { addr: '127.0.0.1:9002' }]
  const r = loadConfigText(meshproxyTlsYaml('127.0.0.1:9443', '127.0.0.1:9100', backends, tls), { file: join(dir, 'tls.yaml') })
  t.deepEqual(r.diagnostics.map(formatDiagnostic), [])
  const listener = r.config!.listeners[0]!
  t.deepEqual(listener.tls!.certificates.map((c: { cert: string | null; key: string | null }) => [c.cert, c.key]), [[tls.cert, tls.key]])
  t.deepEqual(r.config!.services[0]!.balancer, { kind: 'round-robin' })
  const h = haproxyConf(dir, 9443, backends, 256, 1, { upstream: 'h1', tls }) as string
  t.true(h.includes(`bind 127.0.0.1:9443 ssl crt ${tls.pem} alpn h2,http/1.1\n`), h)
  t.regex(h, /set-header X-Forwarded-Proto https /)
  t.notRegex(haproxyConf(dir, 9443, backends, 256, 1, { upstream: 'h1' }) as string, /ssl|https/)
  const n = proxyNginxConf(dir, 9443, backends, 1, false, tls) as string
  t.true(n.includes(`listen 127.0.0.1:9443 ssl http2 backlog=4096;\n    ssl_certificate ${tls.cert};\n    ssl_certificate_key ${tls.key};\n    ssl_protocols TLSv1.2 TLSv1.3;\n`), n)
})

test('tls scenario: a short run reports every figure for every target, TLS 1.3 with the pinned suite, sessions resumed', async (t) => {
  t.timeout(240_000)
  const missing = TOOLS.filter((x) => !which(x))
  if (missing.length) return t.fail(`the bench's TLS scenario needs ${missing.join(', ')} (.ci/run installs them)`)
  const out = mkdtempSync(join(tmpdir(), 'bench-tls-'))
  t.teardown(() => rmSync(out, { recursive: true, force: true }))
  // Short phases, small loads, no waiting for a quiet machine and no noise redo: this checks the
  // harness, not the figures.
  const args = [
    'bench/run.mjs',
    '--scenarios', 'tls',
    '--workers', '1',
    '--reps', '1',
    '--duration', '1',
    '--extra-duration', '1',
    '--warmup', '0',
    '--quiet-wait', '0',
    '--other-limit', '100',
    '--steal-limit', '100',
    '--tls-clients', '2',
    '--connections', '4',
    '--h2-clients', '2',
    '--h2-streams', '2',
    '--out', out,
  ]
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  let log = ''
  child.stdout.setEncoding('utf8').on('data', (d) => (log += d))
  child.stderr.setEncoding('utf8').on('data', (d) => (log += d))
  t.teardown(() => child.kill('SIGTERM'))
  const [code] = await once(child, 'exit')
  t.is(code, 0, log.slice(-4000))
  const result = JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8'))
  t.deepEqual(result.skipped, [])
  t.deepEqual(result.flags.filter((f: { kind: string }) => f.kind === 'error'), [])
  const agg = result.aggregates.find((a: { scenario: string }) => a.scenario === 'tls')
  const names = TLS_TARGETS.map((x: { name: string }) => x.name)
  t.deepEqual(Object.keys(agg.byTarget), names)
  for (const name of names) {
    const med = agg.byTarget[name].median
    for (const f of TLS_FIGURES as Figure[]) t.true(typeof med[f.key] === 'number' && med[f.key] >= 0, `${name}: ${f.key} = ${med[f.key]}`)
    const run: TlsRun = result.runs.find((r: TlsRun) => r.target === name)
    t.falsy(run.error)
    for (const [phase, alpn] of [['sClient', undefined], ['tlsH1', 'http/1.1'], ['tlsH2', 'h2']] as const) {
      const n = run.negotiated[phase]
      t.like(n, { protocol: TLS_PIN.protocol, cipher: TLS_PIN.cipher, ...(alpn ? { alpn } : {}) }, `${name} ${phase}`)
    }
    t.is(run.tlsFull.reused, 0, `${name}: full handshakes resumed nothing`)
    t.true(run.tlsResumed.connections > 0 && run.tlsResumed.reused === run.tlsResumed.connections, `${name}: ${run.tlsResumed.reused} of ${run.tlsResumed.connections} resumed`)
    // One GET per connection, forwarded to the backends.
    t.true(run.tlsResumed.backends.requests >= run.tlsResumed.connections, `${name}: backends served ${run.tlsResumed.backends.requests}`)
  }
  for (const [a, b] of agg.pairs) {
    for (const f of (TLS_FIGURES as Figure[]).filter((x) => !x.noRatio)) t.true(typeof agg.ratios[`${a}/${b}`][f.key] === 'number', `${a}/${b} ${f.key}`)
  }
  const md = readFileSync(join(out, 'latest.md'), 'utf8')
  t.regex(md, /\| target \| full handshakes\/s \| CPU s\/10k full \| resumed handshakes\/s \|/)
  t.regex(md, /\| \*\*meshproxy \(TLS\) ÷ haproxy \(TLS\)\*\* \|/)
  t.regex(md, /\| tls keep-alive HTTP\/1\.1 throughput, meshproxy ÷ haproxy \| ≥ 1\.0× \|/)
  t.regex(md, /- TLS: ECDSA P-256 certificate/)
})
