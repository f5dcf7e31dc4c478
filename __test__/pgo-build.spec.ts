/**
 * pgo/build.mjs decides whether the addon's release build uses the committed PGO profile: only
 * for its own target and with the rustc that recorded it (another one names every symbol
 * differently), and a new profile must reach cargo as a new path (cargo fingerprints RUSTFLAGS,
 * not the file behind it).
 */
import test from 'ava'
import { existsSync, readFileSync } from 'node:fs'
import { gunzipSync } from 'node:zlib'
// @ts-expect-error: plain ESM module of the build, no type declarations
import { metaPath, pgoFlags, profilePath } from '../pgo/build.mjs'

const TARGET = 'x86_64-unknown-linux-gnu'
const meta = JSON.parse(readFileSync(metaPath(TARGET), 'utf8')) as { llvm: string; rustc: string; commit: string }
const rustc = (release: string) => ({ host: TARGET, release, llvm: meta.llvm })

test.serial('the committed profile is applied, unpacked at a path named by its content', (t) => {
  const a = pgoFlags(TARGET, rustc(meta.rustc))
  t.truthy(a.flags, a.why)
  const use = (a.flags as string[]).find((f) => f.startsWith('-Cprofile-use='))
  t.truthy(use)
  const file = (use as string).slice('-Cprofile-use='.length)
  t.true(existsSync(file))
  t.deepEqual(readFileSync(file), gunzipSync(readFileSync(profilePath(TARGET))))
  t.regex(file, /x86_64-unknown-linux-gnu-[0-9a-f]{16}\.profdata$/)
  t.regex(a.why, new RegExp(meta.commit))
  // The same content unpacks to the same path: cargo sees no change and rebuilds nothing.
  t.deepEqual(pgoFlags(TARGET, rustc(meta.rustc)).flags, a.flags)
})

test.serial('another rustc builds without it (its symbol names differ), and says why', (t) => {
  const r = pgoFlags(TARGET, rustc('1.0.0'))
  t.is(r.flags, null)
  t.regex(r.why, new RegExp(`recorded with rustc ${meta.rustc.replace(/\./g, '\\.')} and this is 1\\.0\\.0`))
})

test.serial('a target with no profile builds without one', (t) => {
  const r = pgoFlags('riscv64gc-unknown-linux-gnu', rustc(meta.rustc))
  t.is(r.flags, null)
  t.regex(r.why, /no profile for riscv64gc-unknown-linux-gnu/)
})

test.serial('MESHPROXY_PGO=0 turns it off', (t) => {
  process.env.MESHPROXY_PGO = '0'
  try {
    const r = pgoFlags(TARGET, rustc(meta.rustc))
    t.is(r.flags, null)
    t.is(r.why, 'MESHPROXY_PGO=0')
  } finally {
    delete process.env.MESHPROXY_PGO
  }
})
