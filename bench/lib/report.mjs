// Aggregation (median over repetitions) and the markdown report.
import { ALL_TARGETS } from './targets.mjs'

export function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b)
  if (!v.length) return null
  const mid = v.length >> 1
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2
}

export function ratio(a, b) {
  return typeof a === 'number' && typeof b === 'number' && b !== 0 ? a / b : null
}

/** The figures reported per target (median of reps). `get` reads one repetition's record. */
export const FIGURES = [
  { key: 'rps', phase: 'wrk', title: 'wrk req/s', get: (r) => r.wrk?.rps, fmt: fmtInt, better: 'higher' },
  { key: 'p50', phase: 'wrk', title: 'wrk p50', get: (r) => r.wrk?.latencyMs.p50, fmt: fmtMs, better: 'lower' },
  { key: 'p99', phase: 'wrk', title: 'wrk p99', get: (r) => r.wrk?.latencyMs.p99, fmt: fmtMs, better: 'lower' },
  { key: 'rateP50', phase: 'rate', title: 'fixed-rate p50', get: (r) => r.rate?.latencyMs.p50, fmt: fmtMs, better: 'lower' },
  { key: 'rateP99', phase: 'rate', title: 'fixed-rate p99', get: (r) => r.rate?.latencyMs.p99, fmt: fmtMs, better: 'lower' },
  { key: 'rateMax', phase: 'rate', title: 'fixed-rate max', get: (r) => r.rate?.latencyMs.max, fmt: fmtMs, better: 'lower' },
  { key: 'cpuPer10k', phase: 'wrk', title: 'CPU s/10k req', get: (r) => r.cpuPer10kWrk, fmt: fmt3, better: 'lower' },
  { key: 'peakRssMb', phase: null, title: 'peak RSS', get: (r) => r.peakRssKb / 1024, fmt: fmtMb, better: 'lower' },
]

/**
 * h2c scenario (closed-loop h2load). `noRatio` figures are shown as they are: the number of
 * upstream connections is a property of the proxy, not a cost to compare with direct.
 */
export const H2C_FIGURES = [
  { key: 'rps', phase: 'h2', title: 'req/s', get: (r) => r.h2?.rps, fmt: fmtInt, better: 'higher' },
  { key: 'p50', phase: 'h2', title: 'p50', get: (r) => r.h2?.latencyMs?.p50, fmt: fmtMs, better: 'lower' },
  { key: 'p99', phase: 'h2', title: 'p99', get: (r) => r.h2?.latencyMs?.p99, fmt: fmtMs, better: 'lower' },
  { key: 'cpuPer10k', phase: 'h2', title: 'CPU s/10k req', get: (r) => r.cpuPer10k, fmt: fmt3, better: 'lower' },
  { key: 'peakRssMb', phase: null, title: 'peak RSS', get: (r) => r.peakRssKb / 1024, fmt: fmtMb, better: 'lower' },
  { key: 'upOpened', phase: null, title: 'upstream conns opened', get: (r) => r.upstream?.openedLifetime, fmt: fmtCount, noRatio: true },
  { key: 'upOpenedRun', phase: 'h2', title: 'of which in measured run', get: (r) => r.upstream?.openedDuringRun, fmt: fmtCount, noRatio: true },
]

export const FIGURE_SETS = { http1: FIGURES, h2c: H2C_FIGURES }

function fmtCount(x) {
  return x == null ? 'n/a' : Math.round(x).toLocaleString('en-US')
}
function fmtInt(x) {
  return x == null ? '–' : Math.round(x).toLocaleString('en-US')
}
function fmtMs(x) {
  if (x == null) return '–'
  return x < 1 ? `${(x * 1000).toFixed(0)} µs` : x < 10 ? `${x.toFixed(2)} ms` : `${x.toFixed(1)} ms`
}
function fmt3(x) {
  return x == null ? '–' : x.toFixed(3)
}
function fmtMb(x) {
  return x == null ? '–' : `${x.toFixed(1)} MB`
}
function fmtRatio(x) {
  return x == null ? '–' : `${x.toFixed(2)}×`
}

/**
 * Medians per target plus ratios: every target to the scenario's baseline (`meshproxy/direct`) and
 * each proxy pair (`meshproxy/haproxy`, `meshproxy-h2/haproxy-h2`).
 */
export function aggregate(runs, scenario, targetNames) {
  const figures = FIGURE_SETS[scenario.name]
  const byTarget = {}
  for (const name of targetNames) {
    const reps = runs.filter((r) => r.target === name && !r.error)
    const med = {}
    for (const f of figures) med[f.key] = median(reps.map(f.get))
    med.reuse = median(reps.map((r) => r.upstream?.requestsPerConnection))
    med.cpuPer10kRate = median(reps.map((r) => r.cpuPer10kRate))
    // The same medians over only the runs that were not noisy (steal / other load under the
    // limits), per phase, so a run on a shared box still yields usable numbers.
    const clean = (r, phase) => !phase || (r[phase] && !r[phase].noise?.noisy)
    const medianClean = {}
    const cleanReps = {}
    for (const f of figures) {
      const ok = reps.filter((r) => clean(r, f.phase))
      medianClean[f.key] = median(ok.map(f.get))
      cleanReps[f.key] = ok.length
    }
    byTarget[name] = {
      reps: reps.length,
      failed: runs.filter((r) => r.target === name && r.error).length,
      median: med,
      medianClean,
      cleanReps,
    }
  }
  const ratios = {}
  const rated = figures.filter((f) => !f.noRatio)
  const d = byTarget[scenario.baseline]?.median
  for (const name of targetNames) {
    if (!d || name === scenario.baseline) continue
    ratios[`${name}/${scenario.baseline}`] = Object.fromEntries(rated.map((f) => [f.key, ratio(byTarget[name].median[f.key], d[f.key])]))
  }
  for (const [a, b] of scenario.pairs) {
    if (!byTarget[a] || !byTarget[b]) continue
    ratios[`${a}/${b}`] = Object.fromEntries(rated.map((f) => [f.key, ratio(byTarget[a].median[f.key], byTarget[b].median[f.key])]))
  }
  return { scenario: scenario.name, baseline: scenario.baseline, pairs: scenario.pairs, byTarget, ratios }
}

const label = (name) => ALL_TARGETS[name]?.label ?? name

/** The main table: medians, (ratio to the baseline), errors; then one row per proxy pair. */
function mainTable(agg, figures, flags) {
  const L = []
  const names = Object.keys(agg.byTarget)
  const head = ['target', ...figures.map((f) => f.title), 'errors']
  L.push(`| ${head.join(' | ')} |`)
  L.push(`|${head.map((_, i) => (i === 0 ? ':--' : '--:')).join('|')}|`)
  for (const name of names) {
    const t = agg.byTarget[name]
    const r = agg.ratios[`${name}/${agg.baseline}`]
    const cells = figures.map((f) => {
      const v = f.fmt(t.median[f.key])
      return r && r[f.key] != null ? `${v} (${fmtRatio(r[f.key])})` : v
    })
    const errs = flags.filter((x) => x.target === name && x.kind === 'error').length
    L.push(`| ${label(name)} | ${cells.join(' | ')} | ${errs ? `**${errs}** ⚠` : '0'} |`)
  }
  for (const [a, b] of agg.pairs) {
    const pr = agg.ratios[`${a}/${b}`]
    if (!pr) continue
    L.push(`| **${label(a)} ÷ ${label(b)}** | ${figures.map((f) => (f.noRatio ? '' : fmtRatio(pr[f.key]))).join(' | ')} | |`)
  }
  return L
}

/** Medians over the clean runs only, shown when any run of the scenario was noisy. */
function cleanTable(agg, figures) {
  const names = Object.keys(agg.byTarget)
  const anyNoisy = names.some((n) => figures.some((f) => agg.byTarget[n].cleanReps[f.key] < agg.byTarget[n].reps))
  if (!anyNoisy) return []
  const L = []
  L.push('Medians over the **clean runs only** (steal and other load under the limits); (n) = clean repetitions:')
  L.push('')
  const cf = figures.filter((f) => f.phase && !f.noRatio)
  L.push(`| target | ${cf.map((f) => f.title).join(' | ')} |`)
  L.push(`|:--|${cf.map(() => '--:').join('|')}|`)
  const cd = agg.byTarget[agg.baseline]?.medianClean
  for (const name of names) {
    const t = agg.byTarget[name]
    const cells = cf.map((f) => {
      const v = t.medianClean[f.key]
      const r = name !== agg.baseline && cd ? ratio(v, cd[f.key]) : null
      return `${f.fmt(v)}${r != null ? ` (${fmtRatio(r)})` : ''} (n=${t.cleanReps[f.key]})`
    })
    L.push(`| ${label(name)} | ${cells.join(' | ')} |`)
  }
  for (const [a, b] of agg.pairs) {
    const m = agg.byTarget[a]?.medianClean
    const h = agg.byTarget[b]?.medianClean
    if (m && h) L.push(`| **${label(a)} ÷ ${label(b)}** | ${cf.map((f) => fmtRatio(ratio(m[f.key], h[f.key]))).join(' | ')} |`)
  }
  L.push('')
  return L
}

/** "CPU by thread" note: the top threads of each proxy in one (preferably clean) repetition. */
function threadNote(result, agg, phase, seconds) {
  return Object.keys(agg.byTarget)
    .filter((n) => n !== agg.baseline)
    .map((n) => {
      const ok = (r) => r.target === n && r[phase]?.cpuByThread
      const rep = result.runs.find((r) => ok(r) && !r[phase].noise?.noisy) ?? result.runs.find(ok)
      if (!rep) return null
      const top = rep[phase].cpuByThread.slice(0, 4).map((t) => `${t.name} ${t.seconds.toFixed(2)} s`).join(', ')
      return `${label(n)} (rep ${rep.rep + 1}, ${rep[phase].cpuSeconds.toFixed(2)} s in ${seconds} s): ${top}`
    })
    .filter(Boolean)
}

export function markdown(result) {
  const { config, versions, bare, flags, steal, skipped } = result
  const L = []
  L.push(`# meshproxy bench — ${result.date}`)
  L.push('')
  const noisy = flags.filter((f) => f.kind === 'noise').length
  if (noisy) {
    L.push(
      `> **⚠ ${noisy} noise flag(s): measured runs noisy even after a redo (steal or other processes' load above the limit) or a rebuilt addon. ` +
        `Treat the main tables with care; the clean-runs tables below them exclude the noisy runs.**`,
    )
    L.push('')
  }
  const method = `${config.reps} repetition(s), target order rotated each time; **median** of the repetitions, each column independently.`

  // --- HTTP/1.1 -------------------------------------------------------------------------------
  const agg = result.aggregate
  if (agg) {
    const names = Object.keys(agg.byTarget)
    if (result.aggregateH2c) {
      L.push('## HTTP/1.1')
      L.push('')
    }
    L.push(
      `HTTP/1.1 keep-alive, ${JSON.stringify(config.body)} body from nginx. ` +
        `Throughput: \`${config.wrkCommand}\`. Fixed rate: \`${config.h2loadCommand ?? 'skipped (no h2load)'}\` ` +
        `(${config.rate} req/s total). ${method} Ratios in parentheses are to \`direct\` (same run).`,
    )
    L.push('')
    L.push(...mainTable(agg, FIGURES, flags))
    L.push('')
    L.push(...cleanTable(agg, FIGURES))
    L.push(`- CPU and RSS are the target's own processes (for \`direct\`: backend nginx master+worker). CPU s/10k req is utime+stime over the wrk run ÷ requests × 10,000.`)
    const cpuRate = names.map((n) => `${n} ${fmt3(agg.byTarget[n].median.cpuPer10kRate)}`).join(', ')
    L.push(`- CPU s/10k req at the fixed rate (not saturated): ${cpuRate}.`)
    const threads = threadNote(result, agg, 'wrk', config.duration)
    if (threads.length) L.push(`- CPU by thread during wrk: ${threads.join('; ')}.`)
    const reuse = names
      .filter((n) => agg.byTarget[n].median.reuse != null)
      .map((n) => `${n} ${agg.byTarget[n].median.reuse.toFixed(0)} req/conn`)
    if (reuse.length) {
      L.push(`- Upstream connection reuse (requests ÷ upstream connections opened, over each target's lifetime: warm-up + wrk + fixed rate): ${reuse.join(', ')}.`)
    }
    L.push('')
  }

  // --- h2c --------------------------------------------------------------------------------------
  const h2 = result.aggregateH2c
  if (h2) {
    const names = Object.keys(h2.byTarget)
    if (agg) {
      L.push('## h2c (HTTP/2 cleartext, prior knowledge)')
      L.push('')
    }
    L.push(
      `h2c with prior knowledge from the client, same body and backends. Closed loop: \`${config.h2cCommand}\` ` +
        `(${config['h2-clients']} connections × ${config['h2-streams']} streams in flight), after a ${config.warmup} s unrecorded h2load warm-up. ` +
        `\`→ h1\` / \`→ h2\`: the proxy talks HTTP/1.1 / h2c to the backends' HTTP/1.1 / h2c ports. ${method} ` +
        `Ratios in parentheses are to \`direct-h2\` (same run).`,
    )
    L.push('')
    L.push(...mainTable(h2, H2C_FIGURES, flags))
    L.push('')
    L.push(...cleanTable(h2, H2C_FIGURES))
    L.push(
      `- p50/p99: nearest rank over h2load's \`--log-file\` (one line per request; h2load 1.52 prints only min/max/mean/sd). ` +
        `CPU s/10k req: utime+stime of the target's processes over the measured run ÷ succeeded requests × 10,000.`,
    )
    L.push(
      `- Upstream conns opened: meshproxy \`meshproxy_upstream_connections_opened_total\` from \`/metrics\`, haproxy \`connect\` from \`show stat\`, summed over both backends; ` +
        `first over the instance's lifetime (4 sanity GETs + warm-up + measured run), then the delta over the measured run alone. n/a for \`direct-h2\` (no upstream).`,
    )
    const reuse = names
      .filter((n) => h2.byTarget[n].median.reuse != null)
      .map((n) => `${label(n)} ${fmtInt(h2.byTarget[n].median.reuse)}`)
    if (reuse.length) L.push(`- Upstream requests per connection opened (lifetime): ${reuse.join(', ')}.`)
    const threads = threadNote(result, h2, 'h2', config['h2-duration'])
    if (threads.length) L.push(`- CPU by thread during h2load: ${threads.join('; ')}.`)
    L.push('')
  }

  // --- common notes ---------------------------------------------------------------------------
  if (agg || h2) L.push('Notes:')
  L.push('')
  const ka = config.nginxKeepalive
  if (ka) {
    L.push(
      `- Backends: two nginx, \`worker_processes 1\`, HTTP/1.1 and h2c (\`listen … http2\`) ports each, with \`keepalive_requests ${ka.requests}; keepalive_timeout ${ka.timeout};\` ` +
        `so that nginx's default of 1000 requests per connection limits no target's upstream reuse (in nginx ≥ 1.19.7 these also apply to HTTP/2 connections).`,
    )
  }
  const mp = agg?.byTarget.meshproxy?.median.peakRssMb ?? h2?.byTarget['meshproxy-h1']?.median.peakRssMb
  if (mp != null && bare) {
    const own = bare.nodeAddonKb != null ? mp - bare.nodeAddonKb / 1024 : null
    L.push(
      `- Memory: meshproxy peak RSS ${fmtMb(mp)}${agg?.byTarget.meshproxy ? '' : ' (→ h1, h2c)'}; bare \`node\` ${fmtMb(bare.nodeKb / 1024)}, bare \`node\` + addon loaded ${fmtMb(bare.nodeAddonKb / 1024)} ` +
        `→ the proxy's own cost ≈ **${fmtMb(own)}** (CLI deps + config + runtime + buffers).`,
    )
  }
  const other = result.otherLoad
  L.push(
    `- Noise: steal max ${steal.max.toFixed(2)}% / mean ${steal.mean.toFixed(2)}% of CPU during measured runs; ` +
      `other processes (outside the bench) max ${other.max.toFixed(1)}% / mean ${other.mean.toFixed(1)}% of the machine (${other.before.toFixed(1)}% before start); ` +
      `runs redone (steal > ${config.stealLimit}% or other load > ${config['other-limit']}%): ${steal.redone}.`,
  )
  if (skipped.length) L.push(`- **Skipped**: ${skipped.map((s) => `${s.what} (${s.why})`).join('; ')}.`)
  // Errors first (non-2xx, socket errors, proxy errors), then noise, then plain notes.
  const order = { error: 0, noise: 1 }
  const sorted = [...flags].sort((a, b) => (order[a.kind] ?? 2) - (order[b.kind] ?? 2))
  if (sorted.length) {
    L.push('')
    L.push('**Flags** (⚠ = error responses or failures; ~ = measurement noise)')
    L.push('')
    for (const f of sorted) L.push(`- ${{ error: '⚠ ', noise: '~ ' }[f.kind] ?? ''}${f.target}${f.rep == null ? '' : ` rep ${f.rep + 1}`}: ${f.message}`)
  }
  L.push('')
  const v = versions
  L.push(
    `Machine: ${v.cpuModel}, ${v.cores} cores, Linux ${v.kernel}. node ${v.node}, rustc ${v.rust ?? '?'}, nginx ${v.nginx}, haproxy ${v.haproxy ?? '–'}, ` +
      `wrk ${v.wrk}, h2load ${v.h2load ?? '–'}. Commit ${v.gitCommit?.slice(0, 12) ?? '?'}${v.gitDirty ? ' (dirty)' : ''}` +
      (v.addon ? `, addon ${v.addon.sha256} built ${v.addon.mtime}` : '') +
      '.',
  )
  return L.join('\n') + '\n'
}
