// Aggregation (median over repetitions), the issue's targets checked against the medians, and the
// markdown report.
import { ALL_TARGETS, BENCH_RATE_LIMIT, DEGRADED_PHASES, SCENARIOS } from './targets.mjs'
import { TLS_PIN } from './tls-common.mjs'

export function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b)
  if (!v.length) return null
  const mid = v.length >> 1
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2
}

export function ratio(a, b) {
  return typeof a === 'number' && typeof b === 'number' && b !== 0 ? a / b : null
}

function fmtCount(x) {
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
function fmtKb(x) {
  return x == null ? '–' : `${x.toFixed(1)} KB`
}
function fmtPct(x) {
  return x == null ? '–' : `${(x * 100).toFixed(x > 0.999 && x < 1 ? 3 : 2)} %`
}
export function fmtRatio(x) {
  return x == null ? '–' : `${x.toFixed(2)}×`
}

// Figures per scenario kind. `phase`: the record field whose noise flag decides whether a rep is
// clean for this figure. `noRatio`: shown as is (a reuse share is not a cost to divide).
const LOAD = [
  { key: 'rps', phase: 'load', title: 'req/s', get: (r) => r.load?.rps, fmt: fmtCount, better: 'higher' },
  { key: 'p50', phase: 'load', title: 'p50', get: (r) => r.load?.latencyMs?.p50, fmt: fmtMs, better: 'lower' },
  { key: 'p99', phase: 'load', title: 'p99', get: (r) => r.load?.latencyMs?.p99, fmt: fmtMs, better: 'lower' },
]
const COST = [
  { key: 'cpuPer10k', phase: 'load', title: 'CPU s/10k req', get: (r) => r.cpuPer10k, fmt: fmt3, better: 'lower' },
  { key: 'peakRssMb', phase: null, title: 'peak RSS', get: (r) => r.peakRssKb / 1024, fmt: fmtMb, better: 'lower' },
  { key: 'reuse', phase: 'load', title: 'upstream reuse', get: (r) => r.upstream?.reuse, fmt: fmtPct, noRatio: true },
  { key: 'upOpened', phase: 'load', title: 'upstream conns opened', get: (r) => r.upstream?.opened, fmt: fmtCount, noRatio: true },
]
const RATE = [
  { key: 'rateP50', phase: 'rate', title: '2k/s p50', get: (r) => r.rate?.latencyMs.p50, fmt: fmtMs, better: 'lower' },
  { key: 'rateP99', phase: 'rate', title: '2k/s p99', get: (r) => r.rate?.latencyMs.p99, fmt: fmtMs, better: 'lower' },
  { key: 'rateMax', phase: 'rate', title: '2k/s max', get: (r) => r.rate?.latencyMs.max, fmt: fmtMs, better: 'lower' },
]
const IDLE = [
  { key: 'held', phase: null, title: 'idle conns held', get: (r) => r.idle?.held, fmt: fmtCount, noRatio: true },
  { key: 'rssIdleMb', phase: null, title: 'RSS with them', get: (r) => r.idle?.rssIdleKb / 1024, fmt: fmtMb, better: 'lower' },
  { key: 'kbPerConn', phase: null, title: 'per connection', get: (r) => r.idle?.kbPerConnection, fmt: fmtKb, better: 'lower' },
]

// The degraded scenario: per recorded phase, the client's success rate (2xx ÷ sent), p99 over
// every answer, and the degraded endpoint's share of the attempts the backends saw; then the
// target's own counters in the error phases. Shares and rates are not costs: no ratios.
const phaseOf = (r, name) => r.degraded?.phases.find((p) => p.name === name)
const DEGRADED_PHASE_FIGURES = DEGRADED_PHASES.filter((p) => p.recorded).flatMap((p) => [
  { key: `${p.name}Success`, phase: 'degraded', title: `${p.title}: success`, get: (r) => phaseOf(r, p.name)?.success, fmt: fmtPct, noRatio: true },
  { key: `${p.name}P99`, phase: 'degraded', title: `${p.title}: p99`, get: (r) => phaseOf(r, p.name)?.latencyMs.p99, fmt: fmtMs, noRatio: true },
  { key: `${p.name}Share`, phase: 'degraded', title: `${p.title}: to degraded`, get: (r) => phaseOf(r, p.name)?.degradedShare, fmt: fmtPct, noRatio: true },
])
// The target's own counters in the error phases (there are none in the slow one), shown as
// "then errors / errors only".
const ERROR_PHASES = ['errors', 'errors-only']
const DEGRADED_COUNTERS = [
  { key: 'ejections', title: 'ejections / mark-downs' },
  { key: 'retries', title: 'retries' },
].map((c) => ({ ...c, keys: ERROR_PHASES.map((n) => `${n}:${c.key}`) }))
const DEGRADED_COUNTER_FIGURES = DEGRADED_COUNTERS.flatMap((c) =>
  ERROR_PHASES.map((n) => ({ key: `${n}:${c.key}`, phase: 'degraded', title: `${n}: ${c.title}`, get: (r) => phaseOf(r, n)?.proxy?.[c.key], fmt: fmtCount, noRatio: true })),
)
const DEGRADED = [...DEGRADED_PHASE_FIGURES, ...DEGRADED_COUNTER_FIGURES]

// The ratelimit scenario: the offered rate, what the target admitted and refused, and what the
// limit allows over the run (its burst, then its rate); rates, not costs: no ratios.
const LIMITED = [
  { key: 'offeredRps', phase: 'limited', title: 'offered req/s', get: (r) => r.limited?.offeredRps, fmt: fmtCount, noRatio: true },
  { key: 'allowedRps', phase: 'limited', title: 'allowed req/s', get: (r) => r.limited?.allowedRps, fmt: fmtCount, noRatio: true },
  { key: 'admittedRps', phase: 'limited', title: 'admitted (2xx) req/s', get: (r) => r.limited?.admittedRps, fmt: fmtCount, noRatio: true },
  { key: 'refusedRps', phase: 'limited', title: 'refused (429) req/s', get: (r) => r.limited?.refusedRps, fmt: fmtCount, noRatio: true },
  { key: 'limitedP99', phase: 'limited', title: 'p99', get: (r) => r.limited?.latencyMs?.p99, fmt: fmtMs, noRatio: true },
]

export function figuresFor(scenario) {
  const sc = SCENARIOS[scenario]
  if (sc.figures) return sc.figures // a scenario from a module of its own (tls.mjs, mtls.mjs) brings its columns
  if (sc.kind === 'degraded') return DEGRADED
  if (sc.kind === 'limited') return LIMITED
  if (sc.kind === 'idle') return IDLE
  return sc.rate ? [...LOAD, ...RATE, ...COST] : [...LOAD, ...COST]
}

/**
 * Medians per target plus ratios: every target to the scenario's baseline (`meshproxy/direct`)
 * and each proxy pair (`meshproxy/haproxy`, …), at one worker count.
 */
export function aggregate(runs, scenario, targetNames, workers) {
  const figures = figuresFor(scenario.name)
  const byTarget = {}
  for (const name of targetNames) {
    const reps = runs.filter((r) => r.target === name && !r.error)
    const med = {}
    for (const f of figures) med[f.key] = median(reps.map(f.get))
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
    byTarget[name] = { reps: reps.length, failed: runs.filter((r) => r.target === name && r.error).length, median: med, medianClean, cleanReps }
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
  return { scenario: scenario.name, workers, baseline: scenario.baseline, pairs: scenario.pairs, byTarget, ratios }
}

const label = (name) => ALL_TARGETS[name]?.label ?? name

/**
 * The issue's performance targets, each checked at every worker count against the medians of the
 * same run. `met` is null when a figure is missing (target skipped or failed).
 */
export function checkTargets(result) {
  const out = []
  const agg = (s, w) => result.aggregates.find((a) => a.scenario === s && a.workers === w)
  const med = (s, w, t, k) => agg(s, w)?.byTarget[t]?.median[k] ?? null
  const bare = result.bare?.nodeAddonKb != null ? result.bare.nodeAddonKb / 1024 : null
  for (const w of result.config.workers) {
    const add = (what, value, goal, met, detail) => out.push({ workers: w, what, value, goal, met: value == null ? null : met, detail })
    for (const [s, mp, peer, goal] of [
      ['http1', 'meshproxy', 'haproxy', 1.2],
      ['http1', 'meshproxy', 'nginx', 1.2],
      ['h2c', 'meshproxy-h1', 'haproxy-h1', 1.2],
      ['h2c', 'meshproxy-h1', 'nginx-h1', 1.2],
      ['h2c', 'meshproxy-h2', 'haproxy-h2', 1.2],
      // Both without the proxy headers (meshproxy --no-proxy-headers, HAProxy as it comes): #3's
      // floor holds there too.
      ['h2c', 'meshproxy-h1-bare', 'haproxy-h1-bare', 1.0],
      ['h2c', 'meshproxy-h2-bare', 'haproxy-h2-bare', 1.0],
      ['16k', 'meshproxy', 'haproxy', 1.0],
      ['16k', 'meshproxy', 'nginx', 1.0],
    ]) {
      const r = ratio(med(s, w, mp, 'rps'), med(s, w, peer, 'rps'))
      add(`${s} throughput, ${label(mp)} ÷ ${label(peer)}`, r, `≥ ${goal.toFixed(1)}×`, r >= goal, `${fmtCount(med(s, w, mp, 'rps'))} vs ${fmtCount(med(s, w, peer, 'rps'))} req/s`)
    }
    const p50 = med('http1', w, 'meshproxy', 'rateP50')
    const nginxP50 = med('http1', w, 'nginx', 'rateP50')
    add('2k/s p50 ≤ nginx', ratio(p50, nginxP50), '≤ 1.00×', p50 <= nginxP50, `${fmtMs(p50)} vs ${fmtMs(nginxP50)}`)
    const peers = ['haproxy', 'nginx', 'http-proxy', 'undici'].map((t) => [t, med('http1', w, t, 'rateP99')]).filter(([, v]) => v != null)
    const best = peers.sort((a, b) => a[1] - b[1])[0]
    const p99 = med('http1', w, 'meshproxy', 'rateP99')
    add(`2k/s p99 ≤ the best peer${best ? ` (${best[0]})` : ''}`, best ? ratio(p99, best[1]) : null, '≤ 1.00×', best && p99 <= best[1], best ? `${fmtMs(p99)} vs ${fmtMs(best[1])}` : '')
    const cpu = med('http1', w, 'meshproxy', 'cpuPer10k')
    const hcpu = med('http1', w, 'haproxy', 'cpuPer10k')
    add('CPU s/10k req ≤ haproxy (http1)', ratio(cpu, hcpu), '≤ 1.00×', cpu <= hcpu, `${fmt3(cpu)} vs ${fmt3(hcpu)} s`)
    const reuses = Object.keys(SCENARIOS)
      .filter((s) => SCENARIOS[s].kind !== 'idle')
      .flatMap((s) => ['meshproxy', 'meshproxy-h1', 'meshproxy-h2'].map((t) => [`${s}/${t}`, med(s, w, t, 'reuse')]))
      .filter(([, v]) => v != null)
    const worst = reuses.sort((a, b) => a[1] - b[1])[0]
    add('upstream connection reuse (worst scenario)', worst?.[1] ?? null, '≥ 99.9 %', worst?.[1] >= 0.999, worst ? `${fmtPct(worst[1])} in ${worst[0]}` : '')
    // TLS termination (the `tls` scenario): requests on kept-alive TLS connections ≥ 1.0× HAProxy.
    for (const [k, what] of [
      ['h1Rps', 'HTTP/1.1'],
      ['h2Rps', 'h2'],
    ]) {
      const r = ratio(med('tls', w, 'meshproxy-tls', k), med('tls', w, 'haproxy-tls', k))
      add(`tls keep-alive ${what} throughput, meshproxy ÷ haproxy`, r, '≥ 1.0×', r >= 1.0, `${fmtCount(med('tls', w, 'meshproxy-tls', k))} vs ${fmtCount(med('tls', w, 'haproxy-tls', k))} req/s`)
    }
    const rss = med('http1', w, 'meshproxy', 'peakRssMb')
    const hrss = med('http1', w, 'haproxy', 'peakRssMb')
    const own = rss != null && bare != null ? rss - bare : null
    add('peak RSS − bare node+addon ≤ haproxy RSS (http1)', ratio(own, hrss), '≤ 1.00×', own <= hrss, `${fmtMb(own)} vs ${fmtMb(hrss)}`)
  }
  return out
}

/** The main table of one scenario at one worker count: medians, (ratio to the baseline), errors; then the pairs. */
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
    const errs = flags.filter((x) => x.target === name && x.scenario === agg.scenario && x.workers === agg.workers && x.kind === 'error').length
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
  const L = ['Medians over the **clean runs only** (steal and other load under the limits); (n) = clean repetitions:', '']
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
  L.push('')
  return L
}

/** "CPU by thread": the top threads of each proxy in one (preferably clean) repetition. */
function threadNote(result, agg) {
  return Object.keys(agg.byTarget)
    .filter((n) => n !== agg.baseline)
    .map((n) => {
      const ok = (r) => r.target === n && r.scenario === agg.scenario && r.workers === agg.workers && r.load?.cpuByThread
      const rep = result.runs.find((r) => ok(r) && !r.load.noise?.noisy) ?? result.runs.find(ok)
      if (!rep) return null
      const top = rep.load.cpuByThread.slice(0, 3).map((t) => `${t.name} ${t.seconds.toFixed(2)} s`).join(', ')
      return `${label(n)} ${rep.load.cpuSeconds.toFixed(2)} s: ${top}`
    })
    .filter(Boolean)
}

/**
 * The degraded scenario's table: one row per target, per phase its success rate, p99 and the
 * degraded endpoint's share; medians over the repetitions; then, when a repetition was noisy, the
 * same over the clean ones.
 */
export function degradedTable(agg, flags) {
  const phaseFigures = DEGRADED_PHASE_FIGURES
  const names = Object.keys(agg.byTarget)
  const L = []
  const table = (med, n) => {
    const cell = (t, key, fmt) => `${fmt(t[med][key])}${n ? ` (n=${t.cleanReps[key]})` : ''}`
    L.push(`| target | ${phaseFigures.map((f) => f.title).join(' | ')} | ${DEGRADED_COUNTERS.map((c) => c.title).join(' | ')} | errors |`)
    L.push(`|:--|${phaseFigures.map(() => '--:').join('|')}|${DEGRADED_COUNTERS.map(() => '--:').join('|')}|--:|`)
    for (const name of names) {
      const t = agg.byTarget[name]
      const errs = flags.filter((x) => x.target === name && x.scenario === agg.scenario && x.workers === agg.workers && x.kind === 'error').length
      const counters = DEGRADED_COUNTERS.map((c) => c.keys.map((k) => cell(t, k, fmtCount)).join(' / '))
      L.push(`| ${label(name)} | ${phaseFigures.map((f) => cell(t, f.key, f.fmt)).join(' | ')} | ${counters.join(' | ')} | ${t.failed ? `**${t.failed} failed** ⚠` : errs ? `**${errs}** ⚠` : '0'} |`)
    }
    L.push('')
  }
  table('median', false)
  const anyNoisy = names.some((n) => agg.byTarget[n].cleanReps[phaseFigures[0].key] < agg.byTarget[n].reps)
  if (anyNoisy) {
    L.push("Medians over the **clean runs only** (steal, other load and the load generator's lag under the limits); (n) = clean repetitions:", '')
    table('medianClean', true)
  }
  return L
}

/** One line per worker count and target: the headline figures across scenarios. */
export function summaryTable(result, workers) {
  const get = (s, t, k) => result.aggregates.find((a) => a.scenario === s && a.workers === workers)?.byTarget[t]?.median[k]
  const rel = (s, t) => {
    const a = result.aggregates.find((x) => x.scenario === s && x.workers === workers)
    return a?.ratios[`${t}/${a.baseline}`]?.rps
  }
  const cell = (s, t) => {
    const v = get(s, t, 'rps')
    const r = rel(s, t)
    return v == null ? '–' : `${fmtCount(v)}${r != null ? ` (${fmtRatio(r)})` : ''}`
  }
  const rows = [
    ['direct', 'direct-h2'],
    ['meshproxy', 'meshproxy-h1'],
    ['haproxy', 'haproxy-h1'],
    ['nginx', 'nginx-h1'],
    ['http-proxy', null],
    ['undici', null],
  ]
  const L = [
    `| target | http1 req/s | h2c req/s | 16 KiB req/s | 1 MiB req/s | churn req/s | 2k/s p50 | 2k/s p99 | CPU s/10k | peak RSS | idle: per conn | reuse |`,
    `|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|`,
  ]
  for (const [t, th2] of rows) {
    if (!result.aggregates.some((a) => a.workers === workers && a.byTarget[t])) continue
    L.push(
      `| ${t} | ${cell('http1', t)} | ${th2 ? cell('h2c', th2) : 'n/a'} | ${cell('16k', t)} | ${cell('1m', t)} | ${cell('churn', t)} | ` +
        `${fmtMs(get('http1', t, 'rateP50'))} | ${fmtMs(get('http1', t, 'rateP99'))} | ${fmt3(get('http1', t, 'cpuPer10k'))} | ${fmtMb(get('http1', t, 'peakRssMb'))} | ` +
        `${fmtKb(get('idle', t, 'kbPerConn'))} | ${t.startsWith('direct') ? 'n/a' : fmtPct(get('http1', t, 'reuse'))} |`,
    )
  }
  return L.length > 2 ? L : [] // none of its targets ran (e.g. only the tls scenario)
}

export function targetsTable(result, workers) {
  const L = ['| target (issue #4) | goal | measured | | |', '|:--|:--|--:|:--|:--|']
  // A target whose scenario did not run has no value: left out.
  for (const t of result.targets.filter((x) => x.workers === workers && x.value != null)) {
    const v = t.what.startsWith('upstream') ? fmtPct(t.value) : fmtRatio(t.value)
    L.push(`| ${t.what} | ${t.goal} | ${v} | ${t.met == null ? 'n/a' : t.met ? '✅ met' : '❌ not met'} | ${t.detail} |`)
  }
  return L
}

/** What each target's A → B hop negotiated (the probe of each repetition; distinct values joined). */
function hopNote(result, agg) {
  const parts = Object.keys(agg.byTarget).map((name) => {
    const seen = result.runs.filter((r) => r.scenario === agg.scenario && r.workers === agg.workers && r.target === name && r.negotiated)
    const hops = [...new Set(seen.map(({ negotiated: { hop: h } }) => (h ? `${h.protocol} ${h.cipher} ALPN ${h.alpn ?? 'none'}` : 'not seen')))]
    const inbound = [...new Set(seen.map((r) => `${r.negotiated.inbound?.protocol} ${r.negotiated.inbound?.cipher}`))]
    return `**${label(name)}**: ${hops.join(' / ') || '–'} (a client of B pinned to ${TLS_PIN.cipher}: ${inbound.join(' / ') || '–'})`
  })
  return `What the A → B hop negotiated: ${parts.join('; ')}.`
}

export function markdown(result) {
  const { config, versions, bare, flags, steal, skipped } = result
  const L = [`# meshproxy bench — ${result.date}`, '']
  const noisy = flags.filter((f) => f.kind === 'noise').length
  if (noisy) {
    L.push(
      `> **⚠ ${noisy} noise flag(s): measured runs noisy even after a redo (steal or other processes' load above the limit) or a rebuilt addon. ` +
        `Treat the main tables with care; the clean-runs tables exclude the noisy runs.**`,
      '',
    )
  }
  // The nginx-backed scenarios share the summary, the issue's targets and the notes below; the
  // degraded scenario has its own backends and table.
  const throughput = result.aggregates.some((a) => !['degraded', 'limited'].includes(SCENARIOS[a.scenario].kind))
  L.push(
    `${config.reps} repetition(s) per target, target order rotated each time; **median** of the repetitions, each column independently. ` +
      (throughput ? `Ratios in parentheses are to the direct path in the same run. Each target proxies round-robin over the same two nginx backends with upstream keep-alive.` : ''),
    '',
  )
  for (const w of config.workers) {
    L.push(`## ${w} worker thread${w > 1 ? 's' : ''}`, '')
    if (throughput) L.push(...summaryTable(result, w), '')
    if (throughput && result.targets.some((t) => t.workers === w && t.value != null)) L.push(...targetsTable(result, w), '')
    for (const agg of result.aggregates.filter((a) => a.workers === w)) {
      const sc = SCENARIOS[agg.scenario]
      L.push(`### ${sc.title} — ${w} worker${w > 1 ? 's' : ''}`, '')
      if (sc.kind === 'degraded') {
        L.push(
          'Three Node backends (bench/backends/fault.mjs), the third degraded: every answer +50 ms, then half of its answers 500 (fast). ' +
            'Success = 2xx ÷ requests sent; p99 over every answer, from each request\'s due time; "to degraded" = the degraded backend\'s share of the requests the three backends received (retries included); ' +
            '"then errors" follows "slow" in one run; "errors only" is a second run, fresh, without the slow phase. ' +
            'Ejections and retries in the two error phases (then errors / errors only), as the target counts them (meshproxy: `meshproxy_upstream_ejections_total`, `meshproxy_retries_total`; HAProxy: `chkdown`, `wretr`).',
          '',
        )
        L.push(...degradedTable(agg, flags))
        continue
      }
      const figures = figuresFor(agg.scenario)
      L.push(...mainTable(agg, figures, flags), '')
      // The ratelimit figures are rates, not costs (no ratios), but its clean-runs table shows them.
      L.push(...cleanTable(agg, sc.kind === 'limited' ? figures.map((f) => ({ ...f, noRatio: false })) : figures))
      if (sc.kind === 'limited') {
        L.push(`Open loop: \`h2load --h1\` at the offered rate over the same two nginx backends; the limited target's service has \`rateLimits: [{ rate: ${BENCH_RATE_LIMIT.rate}, burst: ${BENCH_RATE_LIMIT.burst} }]\`, so it may admit its burst and then ${BENCH_RATE_LIMIT.rate} a second ("allowed") and answers the rest 429 rate-limited.`, '')
      } else if (sc.kind !== 'idle') {
        if (sc.kind === 'mtls') L.push(hopNote(result, agg), '')
        const threads = threadNote(result, agg)
        if (threads.length) L.push(`CPU by thread during the measured run: ${threads.join('; ')}.`, '')
      }
    }
  }
  L.push('## How it was measured', '')
  const c = config.commands
  const plaintext = result.aggregates.some((a) => ['wrk', 'h2c', 'idle'].includes(SCENARIOS[a.scenario].kind))
  if (plaintext) {
    L.push(`- Throughput (closed loop): \`${c.wrk}\`; h2c: \`${c.h2c}\` after a ${config.warmup} s unrecorded warm-up.`)
    if (c.rate) L.push(`- Fixed rate (open loop, http1): \`${c.rate}\` = ${config.rate} req/s in total; p50/p99/max by nearest rank over h2load's per-request log.`)
    L.push(`- Idle: ${c.idle}; RSS of the target's processes one second later, minus before, ÷ connections.`)
    L.push(
      `- CPU s/10k req: utime+stime of all the target's processes (threads and cluster workers included) over the measured run ÷ requests × 10,000. ` +
        `Peak RSS: VmHWM summed over its processes. Upstream reuse: 1 − connections accepted ÷ requests served, read from the backends' nginx stub_status around the measured run (the same for every target).`,
    )
  }
  if (c.degraded && result.aggregates.some((a) => a.scenario === 'degraded')) L.push(`- Degraded: ${c.degraded}.`)
  if (c.tls && result.aggregates.some((a) => a.scenario === 'tls')) {
    L.push(`- TLS: ${c.tls}. Handshakes/s = connections/s, each one GET (HTTP/1.0) answered and closed; CPU s/10k = the target's CPU over the phase ÷ connections (handshake phases) or requests × 10,000.`)
  }
  if (c.mtls && result.aggregates.some((a) => a.scenario === 'mtls')) {
    L.push(`- mTLS: ${c.mtls}. Handshakes are B's (a client presenting a's certificate), each connection one GET (HTTP/1.0) answered and closed; requests go client → A → B → backends; CPU s/10k = A's and B's CPU over the phase ÷ connections or requests × 10,000. What each A → B hop negotiated is in the JSON (\`negotiated.hop\`).`)
  }
  const ka = config.nginxKeepalive
  if (ka && (plaintext || result.aggregates.some((a) => ['tls', 'mtls'].includes(a.scenario)))) L.push(`- Backends: two nginx, \`worker_processes 1\`, \`return 200\` for \`/\` and static files (sendfile) for 16 KiB and 1 MiB, \`keepalive_requests ${ka.requests}; keepalive_timeout ${ka.timeout};\`.`)
  const setups = Object.entries(config.setups ?? {})
  if (setups.length) L.push(`- Targets: ${setups.map(([k, v]) => `**${k.replace('@', '** (workers ')}): ${v.setup}`).join('; ')}.`)
  const mp = result.aggregates.find((a) => a.scenario === 'http1')?.byTarget.meshproxy?.median.peakRssMb
  if (mp != null && bare) {
    L.push(
      `- Memory: bare \`node\` ${fmtMb(bare.nodeKb / 1024)}, bare \`node\` + addon loaded ${fmtMb(bare.nodeAddonKb / 1024)}; meshproxy's http1 peak RSS ${fmtMb(mp)} → its own cost ≈ **${fmtMb(mp - bare.nodeAddonKb / 1024)}**.`,
    )
  }
  const other = result.otherLoad
  L.push(
    `- Noise: steal max ${steal.max.toFixed(2)}% / mean ${steal.mean.toFixed(2)}% of CPU during measured runs; ` +
      `other processes max ${other.max.toFixed(1)}% / mean ${other.mean.toFixed(1)}% of the machine (${other.before.toFixed(1)}% before start); ` +
      `runs redone: ${steal.redone}; still noisy after a redo: ${steal.noisy}.`,
  )
  if (skipped.length) L.push(`- **Skipped**: ${skipped.map((s) => `${s.what} (${s.why})`).join('; ')}.`)
  const order = { error: 0, noise: 1 }
  const sorted = [...flags].sort((a, b) => (order[a.kind] ?? 2) - (order[b.kind] ?? 2))
  if (sorted.length) {
    L.push('', '**Flags** (⚠ = error responses or failures; ~ = measurement noise)', '')
    for (const f of sorted) {
      const where = [f.target, f.scenario, f.workers != null ? `w${f.workers}` : null, f.rep != null ? `rep ${f.rep + 1}` : null].filter(Boolean).join(' ')
      L.push(`- ${{ error: '⚠ ', noise: '~ ' }[f.kind] ?? ''}${where}: ${f.message}`)
    }
  }
  L.push('')
  const v = versions
  L.push(
    `Machine: ${v.cpuModel}, ${v.cores} cores, Linux ${v.kernel}. node ${v.node}, rustc ${v.rust ?? '?'}, nginx ${v.nginx}, haproxy ${v.haproxy ?? '–'}, ` +
      `http-proxy ${v.httpProxy ?? '–'}, undici ${v.undici ?? '–'}, wrk ${v.wrk}, h2load ${v.h2load ?? '–'}${v.openssl ? `, OpenSSL ${v.openssl}` : ''}. Commit ${v.gitCommit?.slice(0, 12) ?? '?'}${v.gitDirty ? ' (dirty)' : ''}` +
      (v.addon ? `, addon ${v.addon.sha256} built ${v.addon.mtime}` : '') +
      '.',
  )
  return L.join('\n') + '\n'
}
