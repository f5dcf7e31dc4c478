/**
 * Tools the tests build with Go at a pinned version (h2spec, envoyproxy/ratelimit): `go install`
 * into the project's `.cache/tools/<name>@<version>/` the first time a test asks for one, then
 * reused. Go is a prerequisite of the tests; without it `goTool()` rejects with a message saying
 * so.
 */
import { execFile } from 'node:child_process'
import { accessSync, chmodSync, constants, existsSync, mkdirSync, mkdtempSync, renameSync, rmSync } from 'node:fs'
import { delimiter, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The project's cache of tools the tests build; one folder per tool and version. */
export const TOOLS_DIR = fileURLToPath(new URL('../../.cache/tools/', import.meta.url))

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

export interface GoTool {
  /** The cache folder's name. */
  name: string
  /** The package `go install` builds. */
  pkg: string
  version: string
  /** The binary it makes (the package path's last element). */
  bin: string
  /** What the tests use it for, for the message when Go is missing. */
  purpose: string
}

/** The path of `tool`'s binary, built first if the cache does not have it. */
export async function goTool(tool: GoTool): Promise<string> {
  const dir = join(TOOLS_DIR, `${tool.name}@${tool.version}`)
  const bin = join(dir, tool.bin)
  if (isExecutable(bin)) return bin
  const go = findGo()
  const spec = `${tool.pkg}@${tool.version}`
  if (!go) {
    throw new Error(
      `Go is a prerequisite of the tests and was not found (not on PATH, in $GOROOT/bin or /usr/local/go/bin): ` +
        `${tool.purpose} builds ${tool.name} with \`go install ${spec}\`. Install Go (https://go.dev/dl/) and run the tests again.`,
    )
  }
  mkdirSync(TOOLS_DIR, { recursive: true })
  // Built into a fresh folder and renamed into place, so an interrupted build leaves nothing
  // that looks usable.
  const staging = mkdtempSync(join(TOOLS_DIR, `.${tool.name}-`))
  try {
    await new Promise<void>((resolve, reject) => {
      execFile(go, ['install', spec], { env: { ...process.env, GOBIN: staging }, timeout: 10 * 60_000 }, (err, _stdout, stderr) => {
        if (err) reject(new Error(`\`${go} install ${spec}\` failed: ${err.message}\n${stderr}`))
        else resolve()
      })
    })
    chmodSync(staging, 0o755)
    try {
      renameSync(staging, dir)
    } catch (err) {
      // Another run finished first; its copy is as good as ours.
      if (!existsSync(bin)) throw err
    }
  } finally {
    rmSync(staging, { recursive: true, force: true })
  }
  return bin
}
