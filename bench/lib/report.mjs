// Aggregation (median over repetitions) and the markdown report.

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

/** Medians per target plus ratios to direct and meshproxy÷haproxy. */
export function aggregate(runs, targetNames) {
  const byTarget = {}
  for (const name of targetNames) {
    const reps = runs.filter((r) => r.target === name && !r.error)
    const med = {}
    for (const f of FIGURES) med[f.key] = median(reps.map(f.get))
    med.reuse = median(reps.map((r) => r.upstream?.requestsPerConnection))
    med.cpuPer10kRate = median(reps.map((r) => r.cpuPer10kRate))
    // The same medians over only the runs that were not noisy (steal / other load under the
    // limits), per phase, so a run on a shared box still yields usable numbers.
    const clean = (r, phase) => !phase || (r[phase] && !r[phase].noise?.noisy)
    const medianClean = {}
    const cleanReps = {}
    for (const f of FIGURES) {
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
  const d = byTarget.direct?.median
  for (const name of targetNames) {
    if (!d || name === 'direct') continue
    ratios[`${name}/direct`] = Object.fromEntries(FIGURES.map((f) => [f.key, ratio(byTarget[name].median[f.key], d[f.key])]))
  }
  if (byTarget.meshproxy && byTarget.haproxy) {
    ratios['meshproxy/haproxy'] = Object.fromEntries(
      FIGURES.map((f) => [f.key, ratio(byTarget.meshproxy.median[f.key], byTarget.haproxy.median[f.key])]),
    )
  }
  return { byTarget, ratios }
}

export function markdown(result) {
  const { config, versions, aggregate: agg, bare, flags, steal, skipped } = result
  const names = Object.keys(agg.byTarget)
  const L = []
  L.push(`# meshproxy bench — ${result.date}`)
  L.push('')
  const noisy = flags.filter((f) => f.kind === 'noise').length
  if (noisy) {
    L.push(
      `> **⚠ ${noisy} noise flag(s): measured runs noisy even after a redo (steal or other processes' load above the limit) or a rebuilt addon. ` +
        `Treat the main table with care; the clean-runs table below excludes the noisy runs.**`,
    )
    L.push('')
  }
  L.push(
    `HTTP/1.1 keep-alive, ${JSON.stringify(config.body)} body from nginx. ` +
      `Throughput: \`${config.wrkCommand}\`. Fixed rate: \`${config.h2loadCommand ?? 'skipped (no h2load)'}\` ` +
      `(${config.rate} req/s total). ${config.reps} repetition(s), target order rotated each time; **median** of the repetitions, ` +
      `each column independently. Ratios in parentheses are to \`direct\` (same run).`,
  )
  L.push('')
  const head = ['target', ...FIGURES.map((f) => f.title), 'errors']
  L.push(`| ${head.join(' | ')} |`)
  L.push(`|${head.map((_, i) => (i === 0 ? ':--' : '--:')).join('|')}|`)
  for (const name of names) {
    const t = agg.byTarget[name]
    const r = agg.ratios[`${name}/direct`]
    const cells = FIGURES.map((f) => {
      const v = f.fmt(t.median[f.key])
      return r && r[f.key] != null ? `${v} (${fmtRatio(r[f.key])})` : v
    })
    const errs = flags.filter((x) => x.target === name && x.kind === 'error').length
    L.push(`| ${name === 'direct' ? 'direct (nginx B1)' : name} | ${cells.join(' | ')} | ${errs ? `**${errs}** ⚠` : '0'} |`)
  }
  const mh = agg.ratios['meshproxy/haproxy']
  if (mh) L.push(`| **meshproxy ÷ haproxy** | ${FIGURES.map((f) => fmtRatio(mh[f.key])).join(' | ')} | |`)
  L.push('')
  const anyNoisy = names.some((n) => FIGURES.some((f) => agg.byTarget[n].cleanReps[f.key] < agg.byTarget[n].reps))
  if (anyNoisy) {
    L.push('Medians over the **clean runs only** (steal and other load under the limits); (n) = clean repetitions:')
    L.push('')
    const cf = FIGURES.filter((f) => f.phase)
    L.push(`| target | ${cf.map((f) => f.title).join(' | ')} |`)
    L.push(`|:--|${cf.map(() => '--:').join('|')}|`)
    const cd = agg.byTarget.direct?.medianClean
    for (const name of names) {
      const t = agg.byTarget[name]
      const cells = cf.map((f) => {
        const v = t.medianClean[f.key]
        const r = name !== 'direct' && cd ? ratio(v, cd[f.key]) : null
        return `${f.fmt(v)}${r != null ? ` (${fmtRatio(r)})` : ''} (n=${t.cleanReps[f.key]})`
      })
      L.push(`| ${name} | ${cells.join(' | ')} |`)
    }
    const m = agg.byTarget.meshproxy?.medianClean
    const h = agg.byTarget.haproxy?.medianClean
    if (m && h) L.push(`| **meshproxy ÷ haproxy** | ${cf.map((f) => fmtRatio(ratio(m[f.key], h[f.key]))).join(' | ')} |`)
    L.push('')
  }
  L.push(`- CPU and RSS are the target's own processes (for \`direct\`: backend nginx master+worker). CPU s/10k req is utime+stime over the wrk run ÷ requests × 10,000.`)
  const cpuRate = names.map((n) => `${n} ${fmt3(agg.byTarget[n].median.cpuPer10kRate)}`).join(', ')
  L.push(`- CPU s/10k req at the fixed rate (not saturated): ${cpuRate}.`)
  if (agg.byTarget.meshproxy) {
    const mp = agg.byTarget.meshproxy.median.peakRssMb
    const own = mp != null && bare.nodeAddonKb != null ? mp - bare.nodeAddonKb / 1024 : null
    L.push(
      `- Memory: meshproxy peak RSS ${fmtMb(mp)}; bare \`node\` ${fmtMb(bare.nodeKb / 1024)}, bare \`node\` + addon loaded ${fmtMb(bare.nodeAddonKb / 1024)} ` +
        `→ the proxy's own cost ≈ **${fmtMb(own)}** (CLI deps + config + runtime + buffers).`,
    )
  }
  const threads = names
    .filter((n) => n !== 'direct')
    .map((n) => {
      const rep = result.runs.find((r) => r.target === n && r.wrk?.cpuByThread && !r.wrk.noise?.noisy) ?? result.runs.find((r) => r.target === n && r.wrk?.cpuByThread)
      if (!rep) return null
      const top = rep.wrk.cpuByThread.slice(0, 4).map((t) => `${t.name} ${t.seconds.toFixed(2)} s`).join(', ')
      return `${n} (rep ${rep.rep + 1}, ${rep.wrk.cpuSeconds.toFixed(2)} s in ${config.duration} s): ${top}`
    })
    .filter(Boolean)
  if (threads.length) L.push(`- CPU by thread during wrk: ${threads.join('; ')}.`)
  const reuse = names
    .filter((n) => agg.byTarget[n].median.reuse != null)
    .map((n) => `${n} ${agg.byTarget[n].median.reuse.toFixed(0)} req/conn`)
  if (reuse.length) {
    L.push(`- Upstream connection reuse (requests ÷ upstream connections opened, over each target's lifetime: warm-up + wrk + fixed rate): ${reuse.join(', ')}.`)
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
