/**
 * Diagnostics: the one way every config problem is reported, whether it comes from YAML syntax,
 * a field check, a cross-reference check, or an object built in code.
 */

export interface Diagnostic {
  severity: 'error' | 'warning'
  /** Config file name as given by the caller, `<object>` for models built in code. */
  file: string
  /** 1-based; 0 when there is no source position (objects built in code, command-line options). */
  line: number
  /** 1-based; 0 when there is no source position. */
  column: number
  message: string
  /** What would be valid, e.g. `did you mean "address"?`. */
  hint?: string
}

/** A source position; `line`/`column` 0 means "no position". */
export interface Loc {
  file: string
  line: number
  column: number
}

/**
 * One line, compiler style: `file:line:col: error: message (hint)`. The position is left out when
 * there is none, so objects built in code read `<object>: error: listeners[0].address: ...`.
 */
export function formatDiagnostic(d: Diagnostic): string {
  const where = d.line > 0 ? `${d.file}:${d.line}:${d.column}` : d.file
  const hint = d.hint ? ` (${oneLine(d.hint)})` : ''
  return `${where}: ${d.severity}: ${oneLine(d.message)}${hint}`
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim()
}

/** Collects diagnostics in the order found; the loader sorts them by position at the end. */
export class DiagnosticSink {
  readonly list: Diagnostic[] = []

  error(loc: Loc, message: string, hint?: string): void {
    this.add('error', loc, message, hint)
  }

  warn(loc: Loc, message: string, hint?: string): void {
    this.add('warning', loc, message, hint)
  }

  add(severity: Diagnostic['severity'], loc: Loc, message: string, hint?: string): void {
    const d: Diagnostic = { severity, file: loc.file, line: loc.line, column: loc.column, message }
    if (hint) d.hint = hint
    this.list.push(d)
  }

  get errorCount(): number {
    return this.list.filter((d) => d.severity === 'error').length
  }
}

/**
 * Remembers where each piece of the built model came from, so checks that run on the finished
 * model (duplicates, dangling references) can still point at the right line of the file.
 * Keyed by model object identity plus field name; `''` is the object itself.
 */
export class Origins {
  private readonly map = new WeakMap<object, Map<string, Loc>>()

  set(obj: object, field: string, loc: Loc): void {
    let fields = this.map.get(obj)
    if (!fields) {
      fields = new Map()
      this.map.set(obj, fields)
    }
    fields.set(field, loc)
  }

  /** The field's position, else the object's, else undefined. */
  get(obj: object, field?: string): Loc | undefined {
    const fields = this.map.get(obj)
    if (!fields) return undefined
    return (field !== undefined ? fields.get(field) : undefined) ?? fields.get('')
  }
}

export function levenshtein(a: string, b: string): number {
  if (a === b) return 0
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i)
  for (let i = 1; i <= a.length; i++) {
    const cur = [i]
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      cur[j] = Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + cost)
    }
    prev = cur
  }
  return prev[b.length] ?? 0
}

/**
 * The candidate closest to `input`, or undefined when nothing is plausibly a typo of it.
 * Case, `_` and `-` are ignored first so `max_connections` and `MaxConnections` find
 * `maxConnections` whatever their edit distance.
 */
export function closest(input: string, candidates: Iterable<string>): string | undefined {
  const squash = (s: string) => s.toLowerCase().replace(/[-_]/g, '')
  const target = squash(input)
  let best: string | undefined
  let bestScore = Infinity
  for (const c of candidates) {
    const squashed = squash(c)
    // A truncated name (`maxIdle` for `maxIdlePerEndpoint`) is far in edits but obvious to a reader.
    const truncated = target.length >= 4 && squashed.startsWith(target)
    // An exact match after squashing scores 0, not 1, so `HTTP2` finds `http2` rather than tying with `http1`.
    const score = Math.min(levenshtein(target, squashed), truncated ? 1 : Infinity)
    if (score < bestScore) {
      best = c
      bestScore = score
    }
  }
  // Beyond about a third of the word changed, a suggestion is noise rather than help.
  const limit = Math.max(1, Math.floor(target.length / 3))
  return bestScore <= limit ? best : undefined
}

/** `did you mean "x"?` when something is close, else the full list so the user can pick. */
export function suggest(input: string, candidates: readonly string[], noun = 'valid'): string | undefined {
  const best = closest(input, candidates)
  if (best !== undefined) return `did you mean "${best}"?`
  if (candidates.length === 0) return undefined
  return `${noun}: ${candidates.join(', ')}`
}
