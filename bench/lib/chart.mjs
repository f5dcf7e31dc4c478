// The SVG chart of a run: throughput (relative to the direct path) and p99 per target, one column
// per scenario, one row per worker count. vega-lite compiled to vega, rendered headless by vega's
// SVG renderer (no browser, no canvas).
import { ALL_TARGETS } from './targets.mjs'

const FAMILY_COLORS = {
  direct: '#9e9e9e',
  meshproxy: '#1565c0',
  haproxy: '#ef6c00',
  nginx: '#2e7d32',
  'http-proxy': '#6a1b9a',
  undici: '#c62828',
}

export function chartData(result) {
  const rows = []
  for (const agg of result.aggregates) {
    // Memory, failure handling and rate limits are not throughput, and a scenario without a direct
    // baseline (tls) has no ratio to draw: their tables say it all.
    if (agg.scenario === 'idle' || !agg.baseline) continue
    for (const [target, t] of Object.entries(agg.byTarget)) {
      const rel = target === agg.baseline ? 1 : agg.ratios[`${target}/${agg.baseline}`]?.rps
      rows.push({
        workers: `${agg.workers} worker${agg.workers > 1 ? 's' : ''}`,
        scenario: agg.scenario,
        target: ALL_TARGETS[target]?.label ?? target,
        family: ALL_TARGETS[target]?.family ?? target,
        rpsRel: rel ?? null,
        rps: t.median.rps,
        p99: t.median.p99,
      })
    }
  }
  return rows
}

/** The chart as SVG text, or null when the run had no throughput scenario to draw. */
export async function renderChart(result) {
  const data = chartData(result)
  if (!data.length) return null
  const [vega, vl] = await Promise.all([import('vega'), import('vega-lite')])
  const families = Object.keys(FAMILY_COLORS)
  const panel = (field, title, scale = {}) => ({
    facet: {
      row: { field: 'workers', title: null },
      column: { field: 'scenario', title: null, sort: result.config.scenarios },
    },
    spec: {
      width: { step: 14 },
      height: 160,
      mark: { type: 'bar', tooltip: true },
      encoding: {
        x: { field: 'target', type: 'nominal', title: null, axis: { labelAngle: -60, labelFontSize: 9 } },
        y: { field, type: 'quantitative', title, scale },
        color: { field: 'family', type: 'nominal', scale: { domain: families, range: families.map((f) => FAMILY_COLORS[f]) }, title: 'proxy' },
      },
    },
    resolve: { scale: { x: 'independent' } },
  })
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: `meshproxy bench ${result.date.slice(0, 16).replace('T', ' ')} UTC`, subtitle: `${result.versions.cpuModel}, ${result.versions.cores} cores; medians of ${result.config.reps}` },
    data: { values: data },
    vconcat: [panel('rpsRel', 'throughput ÷ direct (higher is better)'), panel('p99', 'p99 at saturation, ms (lower is better)')],
    config: { font: 'sans-serif', view: { stroke: '#ddd' } },
  }
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' })
  const svg = await view.toSVG()
  view.finalize()
  return svg
}
