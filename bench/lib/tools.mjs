// Finding the external programs and recording their versions (a number without the versions
// that produced it cannot be compared with the next one).
import { accessSync, constants, readFileSync, statSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { spawnSync } from 'node:child_process'
import { cpus } from 'node:os'
import { delimiter, join } from 'node:path'

export const INSTALL_HINT = 'apt-get install nginx-light haproxy wrk nghttp2-client openssl'

/** Absolute path of `name` on PATH or in the sbin dirs (Debian puts nginx/haproxy in /usr/sbin), or null. */
export function which(name) {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin']
  for (const d of dirs) {
    if (!d) continue
    const p = join(d, name)
    try {
      accessSync(p, constants.X_OK)
      if (statSync(p).isFile()) return p
    } catch {}
  }
  return null
}

/** First line of a program's version output (some print it on stderr, wrk exits 1 after it). */
function versionLine(cmd, args, re) {
  if (!cmd) return null
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 5_000 })
  const text = `${r.stdout ?? ''}${r.stderr ?? ''}`
  const m = re ? re.exec(text) : null
  return m ? m[1] : text.split('\n')[0].trim() || null
}

export function findTools() {
  return {
    nginx: which('nginx'),
    haproxy: which('haproxy'),
    wrk: which('wrk'),
    h2load: which('h2load'),
    openssl: which('openssl'),
  }
}

export function collectVersions(tools, repoDir) {
  const git = (args) => {
    const r = spawnSync('git', args, { cwd: repoDir, encoding: 'utf8' })
    return r.status === 0 ? r.stdout.trim() : null
  }
  const cpuInfo = (() => {
    try {
      return /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpus()[0]?.model
    } catch {
      return cpus()[0]?.model ?? null
    }
  })()
  const addon = addonInfo(repoDir)
  const pkgVersion = (name) => {
    try {
      return JSON.parse(readFileSync(join(repoDir, 'node_modules', name, 'package.json'), 'utf8')).version
    } catch {
      return null
    }
  }
  return {
    node: process.version,
    rust: versionLine(which('rustc'), ['--version'], /rustc (\S+)/),
    nginx: versionLine(tools.nginx, ['-v'], /nginx\/(\S+)/),
    haproxy: versionLine(tools.haproxy, ['-v'], /HAProxy version (\S+)/),
    wrk: versionLine(tools.wrk, ['-v'], /wrk (\S+)/),
    h2load: versionLine(tools.h2load, ['--version'], /nghttp2\/(\S+)/),
    openssl: versionLine(tools.openssl, ['version'], /OpenSSL (\S+)/),
    httpProxy: pkgVersion('http-proxy'),
    undici: pkgVersion('undici'),
    gitCommit: git(['rev-parse', 'HEAD']),
    gitDirty: (git(['status', '--porcelain', '--untracked-files=no']) ?? '') !== '',
    addon,
    cpuModel: cpuInfo,
    cores: cpus().length,
    kernel: (() => {
      try {
        return readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim()
      } catch {
        return null
      }
    })(),
  }
}

/**
 * The addon is rebuilt independently of git: its hash and mtime tie the numbers to one build (and
 * show when a rebuild happened in the middle of a run).
 */
export function addonInfo(repoDir) {
  const p = join(repoDir, 'native', `meshproxy.${process.platform}-${process.arch}-gnu.node`)
  try {
    return {
      path: p,
      sha256: createHash('sha256').update(readFileSync(p)).digest('hex').slice(0, 16),
      mtime: statSync(p).mtime.toISOString(),
    }
  } catch {
    return null
  }
}
