/**
 * HTTP/2 conformance of the h2c listener against h2spec (a suite no one here wrote), at the
 * version `helpers/h2spec.ts` pins and builds into `.cache/tools/` with Go on first use.
 *
 * One case is an accepted exception (README, "HTTP/2 conformance"): 3.5/2, "Sends invalid
 * connection preface". The listener serves HTTP/1.1 and h2c on one port and detects the protocol
 * from the first bytes, so bytes that are not the h2 preface are read as an HTTP/1 request: the
 * peer gets an HTTP/1.1 400 and the connection is closed, where h2spec expects a bare close.
 */
import { execFile } from 'node:child_process'
import { readFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test from 'ava'
import { startBackend } from './helpers/backend.js'
import { h2spec as fetchH2spec } from './helpers/h2spec.js'
import { simpleYaml, startProxy } from './helpers/proxy.js'

const ALLOWED_FAILURES = ['http2/3.5: Sends invalid connection preface']

test('h2spec: every generic, HTTP/2 and HPACK case passes except the documented one', async (t) => {
  // Building h2spec the first time takes most of a minute, and the suite itself runs twice at most.
  t.timeout(10 * 60_000)
  let h2spec: string
  try {
    h2spec = await fetchH2spec()
  } catch (err) {
    t.fail((err as Error).message)
    return
  }
  const backend = await startBackend(t, 'b')
  const { port } = await startProxy(t, simpleYaml([backend.address]))
  const dir = mkdtempSync(join(tmpdir(), 'h2spec-'))
  const run = async (specs: string[], name: string): Promise<{ total: number; failed: string[] }> => {
    const report = join(dir, name)
    await new Promise<void>((resolve) => {
      execFile(h2spec, [...specs, '-h', '127.0.0.1', '-p', String(port), '-o', '10', '-j', report], { timeout: 120_000 }, () => resolve())
    })
    const xml = readFileSync(report, 'utf8')
    const cases = [...xml.matchAll(/<testcase[^>]*package="([^"]*)"[^>]*classname="([^"]*)"[^>]*>([\s\S]*?)<\/testcase>/g)]
    const failed = cases.filter(([, , , body]) => /<(failure|error)/.test(body ?? '')).map(([, pkg, n]) => `${pkg}: ${n}`)
    return { total: cases.length, failed }
  }
  const first = await run([], 'all.xml')
  t.true(first.total >= 140, `h2spec ran ${first.total} cases`)
  let unexpected = first.failed.filter((f) => !ALLOWED_FAILURES.includes(f))
  if (unexpected.length > 0) {
    // A few cases wait on timing (a frame that must or must not arrive); on a loaded 2-core CI
    // machine they are re-run once, alone. A real conformance bug fails both times.
    const packages = [...new Set(unexpected.map((f) => f.split(':')[0]!))]
    t.log(`re-running ${packages.join(', ')} after: ${unexpected.join('; ')}`)
    const again = await run(packages, 'rerun.xml')
    unexpected = again.failed.filter((f) => !ALLOWED_FAILURES.includes(f))
  }
  t.deepEqual(unexpected, [], `unexpected h2spec failures:\n${unexpected.join('\n')}`)
})
