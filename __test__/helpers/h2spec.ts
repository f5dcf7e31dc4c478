/**
 * h2spec, the HTTP/2 conformance suite the h2c listener is tested against, at a pinned version:
 * built with `go install` into the project's `.cache/tools/h2spec@<version>/` the first time a
 * test asks for it (about 40 s with an empty Go module cache), then reused. Go is a prerequisite
 * of the tests; without it `h2spec()` rejects with a message saying so.
 */
import { execFile } from 'node:child_process'
import { accessSync, chmodSync, constants, existsSync, mkdirSync, mkdtempSync, renameSync, rmSync } from 'node:fs'
import { delimiter, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const H2SPEC_PACKAGE = 'github.com/summerwind/h2spec/cmd/h2spec'
export const H2SPEC_VERSION = 'v2.2.1+incompatible'

/** The project's cache of tools the tests build; one folder per tool and version. */
export const TOOLS_DIR = fileURLToPath(new URL('../../.cache/tools/', import.meta.url))
const H2SPEC_DIR = join(TOOLS_DIR, `h2spec@${H2SPEC_VERSION}`)

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/**
 * The `go` command: on PATH, else in `$GOROOT/bin`, else where Go's own installer puts it
 * (`/usr/local/go/bin`, which non-login shells often leave off PATH).
 */
export function findGo(): string | undefined {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter((d) => d !== '')
  if (process.env.GOROOT) dirs.push(join(process.env.GOROOT, 'bin'))
  dirs.push('/usr/local/go/bin')
  return dirs.map((d) => join(d, 'go')).find(isExecutable)
}

/** The path of the h2spec binary, built first if the cache does not have it. */
export async function h2spec(): Promise<string> {
  const bin = join(H2SPEC_DIR, 'h2spec')
  if (isExecutable(bin)) return bin
  const go = findGo()
  if (!go) {
    throw new Error(
      `Go is a prerequisite of the tests and was not found (not on PATH, in $GOROOT/bin or /usr/local/go/bin): ` +
        `the HTTP/2 conformance test builds h2spec with \`go install ${H2SPEC_PACKAGE}@${H2SPEC_VERSION}\`. ` +
        'Install Go (https://go.dev/dl/) and run the tests again.',
    )
  }
  mkdirSync(TOOLS_DIR, { recursive: true })
  // Built into a fresh folder and renamed into place, so an interrupted build leaves nothing
  // that looks usable.
  const staging = mkdtempSync(join(TOOLS_DIR, '.h2spec-'))
  try {
    await new Promise<void>((resolve, reject) => {
      execFile(go, ['install', `${H2SPEC_PACKAGE}@${H2SPEC_VERSION}`], { env: { ...process.env, GOBIN: staging }, timeout: 10 * 60_000 }, (err, _stdout, stderr) => {
        if (err) reject(new Error(`\`${go} install ${H2SPEC_PACKAGE}@${H2SPEC_VERSION}\` failed: ${err.message}\n${stderr}`))
        else resolve()
      })
    })
    chmodSync(staging, 0o755)
    try {
      renameSync(staging, H2SPEC_DIR)
    } catch (err) {
      // Another run finished first; its copy is as good as ours.
      if (!existsSync(bin)) throw err
    }
  } finally {
    rmSync(staging, { recursive: true, force: true })
  }
  return bin
}
