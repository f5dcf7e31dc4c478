#!/usr/bin/env node
// `npm run pgo`: records the profile `npm run build:native` optimises the addon with.
//
//   1. builds the addon instrumented (-Cprofile-generate; its own target dir, target/pgo-train);
//   2. drives it the way it is used: `npm run bench` with meshproxy alone (HTTP/1.1, h2c to
//      HTTP/1.1 and to HTTP/2 backends, 16 KiB and 1 MiB bodies, churn, idle connections; 1 and 2
//      workers), then the whole ava suite for the paths the bench does not drive (opaque TCP,
//      WebSocket, gRPC, CONNECT, error and reload paths), so that none of them is left with a zero
//      count, which LLVM would take for cold code and optimise for size;
//   3. merges the raw profiles with the toolchain's llvm-profdata and writes
//      pgo/<target>.profdata.gz with pgo/<target>.json (the rustc/LLVM that wrote it, the commit);
//   4. rebuilds the addon with the new profile.
//
// Needs what `npm run bench` needs (nginx, wrk, h2load) and the rustup component llvm-tools.
// Options: --skip-tests (bench only), --duration N (seconds per bench run, default 3).
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { gzipSync } from 'node:zlib'
import { NAPI_ARGS, REPO, metaPath, napi, profilePath, rustcInfo, withRustflags } from './build.mjs'

const { values } = parseArgs({ options: { 'skip-tests': { type: 'boolean' }, duration: { type: 'string' } } })
const duration = values.duration ?? '3'

function run(cmd, args, env = process.env) {
  console.error(`\n$ ${cmd} ${args.join(' ')}`)
  return spawnSync(cmd, args, { cwd: REPO, env, stdio: 'inherit' }).status ?? 1
}

const rustc = rustcInfo()
const sysroot = execFileSync('rustc', ['--print', 'sysroot'], { encoding: 'utf8' }).trim()
const profdata = join(sysroot, 'lib', 'rustlib', rustc.host, 'bin', 'llvm-profdata')
if (!existsSync(profdata)) {
  console.error(`llvm-profdata not found at ${profdata}: run \`rustup component add llvm-tools\``)
  process.exit(1)
}

const work = mkdtempSync(join(tmpdir(), 'meshproxy-pgo-'))
// A fixed path: it is part of RUSTFLAGS, which cargo fingerprints, so a new path every run would
// rebuild the instrumented addon from scratch each time.
const trainTarget = join(REPO, 'target', 'pgo-train')
const raw = join(trainTarget, 'profraw')
rmSync(raw, { recursive: true, force: true })
let failed = null
try {
  // The bench drives the CLI (dist/); build the TypeScript if it is not there yet.
  if (!existsSync(join(REPO, 'dist', 'cli.js')) && run('npm', ['run', 'build:ts']) !== 0) throw new Error('npm run build:ts failed')
  // %m: one file per binary, merged online across processes (every ava worker loads the addon).
  const env = withRustflags({ ...process.env, CARGO_TARGET_DIR: trainTarget, MESHPROXY_PGO: '0' }, [`-Cprofile-generate=${raw}`])
  if (napi(NAPI_ARGS, env) !== 0) throw new Error('the instrumented build failed')

  const bench = ['bench/run.mjs', '--targets', 'meshproxy', '--workers', '1,2', '--reps', '1', '--warmup', '0', '--duration', duration, '--extra-duration', duration, '--rate-duration', '0', '--quiet-wait', '0', '--out', join(work, 'bench')]
  if (run(process.execPath, bench) !== 0) throw new Error('the bench workload failed')
  // A failing test still exercised its path; the profile is wanted either way, the failure shown.
  if (!values['skip-tests'] && run('npx', ['ava']) !== 0) console.error('pgo: some tests failed under the instrumented build (profile kept)')

  const files = readdirSync(raw).filter((f) => f.endsWith('.profraw')).map((f) => join(raw, f))
  if (files.length === 0) throw new Error(`no .profraw written under ${raw}`)
  const merged = join(work, 'merged.profdata')
  execFileSync(profdata, ['merge', '-o', merged, ...files], { stdio: 'inherit' })

  const target = rustc.host
  writeFileSync(profilePath(target), gzipSync(readFileSync(merged), { level: 9 }))
  const commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO, encoding: 'utf8' }).stdout.trim() || 'unknown'
  const meta = {
    target,
    rustc: rustc.release,
    llvm: rustc.llvm,
    commit,
    trained: new Date().toISOString().slice(0, 10),
    workload: `npm run bench (meshproxy, workers 1,2, ${duration}s per run)${values['skip-tests'] ? '' : ' + ava suite'}`,
  }
  writeFileSync(metaPath(target), `${JSON.stringify(meta, null, 2)}\n`)
  console.error(`\npgo: wrote ${profilePath(target)} (${meta.workload}); rebuilding the addon with it`)
} catch (e) {
  failed = e
  console.error(`\npgo: ${e.message}; the committed profile is unchanged. Rebuilding the normal addon over the instrumented one`)
} finally {
  rmSync(work, { recursive: true, force: true })
}
// Always: native/ must not be left holding the instrumented build.
const status = run(process.execPath, [join(REPO, 'pgo', 'build.mjs')])
process.exit(failed ? 1 : status)
