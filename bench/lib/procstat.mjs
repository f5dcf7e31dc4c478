// Linux /proc readers: machine-wide CPU (for steal time), per-process CPU seconds and peak RSS,
// and the process tree (nginx = master + worker; haproxy may fork).
import { readFileSync, readdirSync } from 'node:fs'
import { execFileSync } from 'node:child_process'

let clkTck
/** Kernel clock ticks per second (USER_HZ) — the unit of utime/stime in /proc/<pid>/stat. */
export function clockTicks() {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
    } catch {
      clkTck = 100 // the value on every mainstream Linux build
    }
  }
  return clkTck
}

/**
 * Aggregate CPU counters from /proc/stat's first line, in ticks. `total` excludes guest and
 * guest_nice, which the kernel already counts inside user and nice.
 */
export function machineCpu() {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]
  const [, ...f] = line.trim().split(/\s+/)
  const n = f.map(Number)
  const [user, nice, system, idle, iowait = 0, irq = 0, softirq = 0, steal = 0] = n
  return { total: user + nice + system + idle + iowait + irq + softirq + steal, steal, idle: idle + iowait }
}

/**
 * Percentage of all machine CPU used by processes outside the bench (a compiler, another
 * benchmark) between two snapshots { cpu: machineCpu(), own: treeCpuSeconds(process.pid) }.
 * Steal only shows the hypervisor's neighbours; this shows the ones inside the box.
 */
export function otherLoadPercent(a, b) {
  const total = b.cpu.total - a.cpu.total
  if (total <= 0) return 0
  const busy = total - (b.cpu.idle - a.cpu.idle) - (b.cpu.steal - a.cpu.steal)
  const own = (b.own - a.own) * clockTicks()
  return Math.max(0, (100 * (busy - own)) / total)
}

/** Steal as a percentage of all CPU time between two machineCpu() snapshots. */
export function stealPercent(a, b) {
  const total = b.total - a.total
  return total > 0 ? (100 * (b.steal - a.steal)) / total : 0
}

/** Machine busy percentage (all cores) between two snapshots: shows whether the box was saturated. */
export function busyPercent(a, b) {
  const total = b.total - a.total
  return total > 0 ? (100 * (total - (b.idle - a.idle))) / total : 0
}

/** Fields of /proc/<pid>/stat after the `(comm)` part (comm may contain spaces and parens). */
function statFields(pid) {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8')
  return s.slice(s.lastIndexOf(')') + 2).split(' ')
}

export function isAlive(pid) {
  try {
    // A zombie has exited: it holds no CPU or memory any more.
    return statFields(pid)[0] !== 'Z'
  } catch {
    return false
  }
}

/** utime+stime of one process (all its threads) in seconds; 0 if it is gone. */
export function cpuSeconds(pid) {
  try {
    const f = statFields(pid)
    // After the comm: state(0) ppid(1) … utime is field 14 of the full line, i.e. index 11 here.
    return (Number(f[11]) + Number(f[12])) / clockTicks()
  } catch {
    return 0
  }
}

/**
 * CPU seconds of `rootPid` and every live descendant, including what their already-reaped children
 * used (cutime+cstime): a wrk that exited between two samples still counts. The delta between two
 * samples is everything the bench itself burned, so machine busy time minus it is other load.
 */
export function treeCpuSeconds(rootPid) {
  let ticks = 0
  for (const pid of processTree(rootPid)) {
    try {
      const f = statFields(pid)
      ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])
    } catch {}
  }
  return ticks / clockTicks()
}

export function sumCpuSeconds(pids) {
  return pids.reduce((s, p) => s + cpuSeconds(p), 0)
}

/**
 * CPU seconds per thread of one process: Map tid -> { name, seconds }. Thread names (tokio's
 * "tokio-runtime-w", node's "node" main thread, libuv "libuv-worker", V8 platform threads) show
 * where a proxy's CPU goes.
 */
export function threadCpu(pid) {
  const out = new Map()
  let tids = []
  try {
    tids = readdirSync(`/proc/${pid}/task`)
  } catch {
    return out
  }
  for (const tid of tids) {
    try {
      const s = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
      const name = s.slice(s.indexOf('(') + 1, s.lastIndexOf(')'))
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
      out.set(tid, { name, seconds: (Number(f[11]) + Number(f[12])) / clockTicks() })
    } catch {}
  }
  return out
}

/** Per-thread-name CPU seconds between two threadCpu() snapshots, largest first. */
export function threadCpuDelta(before, after) {
  const byName = new Map()
  for (const [tid, t] of after) {
    const d = t.seconds - (before.get(tid)?.seconds ?? 0)
    if (d > 0) byName.set(t.name, (byName.get(t.name) ?? 0) + d)
  }
  return [...byName].map(([name, seconds]) => ({ name, seconds: Math.round(seconds * 100) / 100 })).sort((a, b) => b.seconds - a.seconds)
}

/** A /proc/<pid>/status field in kB (VmHWM = peak RSS, VmRSS = current), or null. */
export function statusKb(pid, field) {
  try {
    const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'))
    return m ? Number(m[1]) : null
  } catch {
    return null
  }
}

/** Sum of peak RSS over processes (double-counts pages shared between nginx master and worker). */
export function sumPeakRssKb(pids) {
  return pids.reduce((s, p) => s + (statusKb(p, 'VmHWM') ?? 0), 0)
}

/** All live descendants of `pid` (children, grandchildren…), found by scanning ppid in /proc. */
export function descendants(pid) {
  const children = new Map()
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      const ppid = Number(statFields(name)[1])
      if (!children.has(ppid)) children.set(ppid, [])
      children.get(ppid).push(Number(name))
    } catch {
      // raced with an exit
    }
  }
  const out = []
  const stack = [pid]
  while (stack.length) {
    for (const c of children.get(stack.pop()) ?? []) {
      out.push(c)
      stack.push(c)
    }
  }
  return out
}

/** `pid` plus its descendants: every process that makes up one target. */
export function processTree(pid) {
  return [pid, ...descendants(pid)]
}

/** The soft RLIMIT_NOFILE our children inherit (haproxy refuses to start if maxconn needs more). */
export function openFilesLimit() {
  try {
    const m = readFileSync('/proc/self/limits', 'utf8').match(/^Max open files\s+(\d+|unlimited)/m)
    return m && m[1] !== 'unlimited' ? Number(m[1]) : Infinity
  } catch {
    return 1024
  }
}
