/**
 * pgo/build.mjs decides whether the addon's release build uses the committed PGO profile. An
 * install must never fail on its account: the profile is applied only for its own target and by
 * an LLVM that can read it, and a new profile must reach cargo as a new path (cargo fingerprints
 * RUSTFLAGS, not the file behind it).
 */
import test from 'ava'
import { existsSync, readFileSync } from 'node:fs'
import { gunzipSync } from 'node:zlib'
// @ts-expect-error: plain ESM module of the build, no type declarations
import { metaPath, pgoFlags, profilePath } from '../pgo/build.mjs'

const TARGET = 'x86_64-unknown-linux-gnu'
const meta = JSON.parse(readFileSync(metaPath(TARGET), 'utf8')) as { llvm: string; rustc: string; commit: string }
const llvmMajor = Number.parseInt(meta.llvm, 10)
const rustc = (llvm: string) => ({ host: TARGET, release: '1.99.0', llvm })

test.serial('the committed profile is applied, unpacked at a path named by its content', (t) => {
  const a = pgoFlags(TARGET, rustc(meta.llvm))
  t.truthy(a.flags, a.why)
  const use = (a.flags as string[]).find((f) => f.startsWith('-Cprofile-use='))
  t.truthy(use)
  const file = (use as string).slice('-Cprofile-use='.length)
  t.true(existsSync(file))
  t.deepEqual(readFileSync(file), gunzipSync(readFileSync(profilePath(TARGET))))
  t.regex(file, /x86_64-unknown-linux-gnu-[0-9a-f]{16}\.profdata$/)
  t.regex(a.why, new RegExp(meta.commit))
  // A newer LLVM reads older profile formats.
  t.deepEqual(pgoFlags(TARGET, rustc(`${llvmMajor + 1}.0.0`)).flags, a.flags)
})

test.serial('an LLVM older than the profile\'s builds without it, and says why', (t) => {
  const r = pgoFlags(TARGET, rustc(`${llvmMajor - 1}.1.0`))
  t.is(r.flags, null)
  t.regex(r.why, /cannot read it/)
})

test.serial('a target with no profile builds without one', (t) => {
  const r = pgoFlags('riscv64gc-unknown-linux-gnu', rustc(meta.llvm))
  t.is(r.flags, null)
  t.regex(r.why, /no profile for riscv64gc-unknown-linux-gnu/)
})

test.serial('MESHPROXY_PGO=0 turns it off', (t) => {
  process.env.MESHPROXY_PGO = '0'
  try {
    const r = pgoFlags(TARGET, rustc(meta.llvm))
    t.is(r.flags, null)
    t.is(r.why, 'MESHPROXY_PGO=0')
  } finally {
    delete process.env.MESHPROXY_PGO
  }
})
