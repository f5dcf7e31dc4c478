#!/usr/bin/env node
// `npm run build:native`: the addon's release build, profile-guided when this repository holds a
// profile for the target being built (pgo/<target>.profdata.gz, made by `npm run pgo`).
//
// Why PGO: the proxy's per-request cost is spread over hyper, h2, http and our own code, in
// branchy parsing and bookkeeping whose hot paths LLVM cannot tell from its cold ones without a
// profile. With one, an h2c → h2 request costs ~21 % fewer instructions (see pgo/README.md).
//
// The profile is used only where it applies: MESHPROXY_PGO=0 turns it off; a target with no
// profile, or a rustc other than the one that recorded it, builds without one. If the
// profile-guided build fails, the build is retried once without it, so an install never fails on
// account of the profile alone.
import { spawnSync, execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { gunzipSync } from 'node:zlib'

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..')
export const PGO_DIR = join(REPO, 'pgo')

/** The napi build of the addon, as the package ships it. */
export const NAPI_ARGS = [
  'build', '--platform', '--release',
  '--manifest-path', 'crates/meshproxy-napi/Cargo.toml', '-p', 'meshproxy-napi',
  '-o', 'native', '--js', 'index.cjs', '--dts', 'index.d.cts',
]

/** rustc's host triple, release and LLVM version. */
export function rustcInfo() {
  const out = execFileSync('rustc', ['-vV'], { encoding: 'utf8' })
  const field = (name) => new RegExp(`^${name}: (.+)$`, 'm').exec(out)?.[1].trim() ?? ''
  return { host: field('host'), release: field('release'), llvm: field('LLVM version') }
}

export const profilePath = (target) => join(PGO_DIR, `${target}.profdata.gz`)
export const metaPath = (target) => join(PGO_DIR, `${target}.json`)

/** The target a napi argument list builds for: its --target, or rustc's host. */
function targetOf(args, host) {
  const i = args.findIndex((a) => a === '--target' || a === '-t')
  return i >= 0 && args[i + 1] ? args[i + 1] : host
}

/**
 * The rustc flags that apply the committed profile to a build for `target`, or why not.
 * The profile is unpacked under target/pgo/ at a path named by its content hash: cargo's
 * fingerprint covers RUSTFLAGS, not the file behind a path in it, so a new profile must be a
 * new path for cargo to rebuild with it.
 */
export function pgoFlags(target, rustc = rustcInfo()) {
  if (process.env.MESHPROXY_PGO === '0') return { flags: null, why: 'MESHPROXY_PGO=0' }
  const gz = profilePath(target)
  if (!existsSync(gz)) return { flags: null, why: `no profile for ${target} in pgo/` }
  let meta
  try {
    meta = JSON.parse(readFileSync(metaPath(target), 'utf8'))
  } catch (e) {
    return { flags: null, why: `${metaPath(target)} is unreadable (${e.message}); re-record with npm run pgo` }
  }
  // cargo hashes the compiler's version into every crate's metadata, hence into every symbol
  // name, and LLVM finds a function's profile by that name: another rustc would match nothing.
  if (rustc.release !== meta.rustc) {
    return { flags: null, why: `the profile was recorded with rustc ${meta.rustc} and this is ${rustc.release}, whose symbol names differ, so it would match nothing; npm run pgo re-records it` }
  }
  const data = gunzipSync(readFileSync(gz))
  const hash = createHash('sha256').update(data).digest('hex').slice(0, 16)
  const dir = join(REPO, 'target', 'pgo')
  const file = join(dir, `${target}-${hash}.profdata`)
  if (!existsSync(file)) {
    // Written whole or not at all: a truncated file at this path would be taken as the profile
    // by every later build (and fail each, falling back to no PGO) until target/ is cleaned.
    mkdirSync(dir, { recursive: true })
    const tmp = `${file}.${process.pid}.tmp`
    writeFileSync(tmp, data)
    renameSync(tmp, file)
  }
  // Functions changed since the profile was recorded keep their non-PGO code; LLVM would warn
  // once per such function, which says nothing actionable during an install.
  return { flags: [`-Cprofile-use=${file}`, '-Cllvm-args=-no-pgo-warn-mismatch'], why: `profile from commit ${meta.commit} (${meta.trained})`, meta }
}

export function withRustflags(env, flags) {
  const prior = env.RUSTFLAGS ? `${env.RUSTFLAGS} ` : ''
  return { ...env, RUSTFLAGS: prior + flags.join(' ') }
}

/** Runs the napi CLI from this repository's node_modules; returns its exit status. */
export function napi(args, env = process.env) {
  const bin = join(REPO, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js')
  const r = spawnSync(process.execPath, [bin, ...args], { cwd: REPO, env, stdio: 'inherit' })
  return r.status ?? 1
}

function main() {
  const extra = process.argv.slice(2)
  const args = [...NAPI_ARGS, ...extra]
  const rustc = rustcInfo()
  const pgo = pgoFlags(targetOf(extra, rustc.host), rustc)
  if (!pgo.flags) {
    console.error(`meshproxy: building without PGO: ${pgo.why}`)
    process.exit(napi(args))
  }
  console.error(`meshproxy: building with PGO: ${pgo.why}`)
  const status = napi(args, withRustflags(process.env, pgo.flags))
  if (status === 0) process.exit(0)
  console.error('meshproxy: the profile-guided build failed; retrying once without the profile (MESHPROXY_PGO=0 skips it)')
  process.exit(napi(args))
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main()
