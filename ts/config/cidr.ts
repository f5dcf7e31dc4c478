/**
 * Client networks in CIDR notation, as authorization rules name them: parsing and normalizing
 * (`normalizeCidr`, the form the model holds) and the arithmetic `meshproxy check` needs to tell
 * whether one rule's networks cover another's. Every network is placed in one 128-bit space,
 * IPv4 as its IPv4-mapped IPv6 range (`10.0.0.0/8` is `::ffff:10.0.0.0/104`), which is how the
 * data plane matches them: an IPv4 client is also in an IPv6 network that holds its mapped
 * address, and an IPv4 client connected over IPv6 (`::ffff:10.0.0.1`) is an IPv4 client.
 */
import { isIPv4, isIPv6 } from 'node:net'
import { fail, ok, type Parsed } from './values.js'

/** A network as an inclusive range of the 128-bit space. */
export interface Range {
  start: bigint
  end: bigint
}

const MAPPED = 0xffffn << 32n
const ALL_128 = (1n << 128n) - 1n

function ipv4Bits(text: string): bigint {
  return text.split('.').reduce((n, part) => (n << 8n) | BigInt(Number(part)), 0n)
}

function ipv6Bits(text: string): bigint {
  let s = text
  // A trailing dotted quad (`::ffff:10.0.0.1`) is the last two groups.
  const quad = /(\d+\.\d+\.\d+\.\d+)$/.exec(s)
  let tail: number[] = []
  if (quad?.[1]) {
    const v4 = Number(ipv4Bits(quad[1]))
    tail = [v4 >>> 16, v4 & 0xffff]
    s = s.slice(0, -quad[1].length)
    if (s.endsWith(':') && !s.endsWith('::')) s = s.slice(0, -1)
  }
  const [head = '', rest] = s.split('::') as [string, string | undefined]
  const groups = (x: string): number[] => (x === '' ? [] : x.split(':').map((g) => parseInt(g, 16)))
  const left = groups(head)
  const right = [...groups(rest ?? ''), ...tail]
  const fill = rest === undefined ? [] : new Array<number>(8 - left.length - right.length).fill(0)
  const all = rest === undefined ? [...left, ...tail] : [...left, ...fill, ...right]
  return all.reduce((n, g) => (n << 16n) | BigInt(g), 0n)
}

function formatIpv4(bits: bigint): string {
  return [24n, 16n, 8n, 0n].map((s) => String((bits >> s) & 0xffn)).join('.')
}

/** RFC 5952: lowercase, no leading zeros, the longest run of two or more zero groups as `::`. */
function formatIpv6(bits: bigint): string {
  const groups = Array.from({ length: 8 }, (_, i) => Number((bits >> BigInt(112 - 16 * i)) & 0xffffn))
  let best = { at: -1, len: 0 }
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++
      continue
    }
    let j = i
    while (j < 8 && groups[j] === 0) j++
    if (j - i > best.len) best = { at: i, len: j - i }
    i = j
  }
  const hex = (gs: number[]) => gs.map((g) => g.toString(16)).join(':')
  if (best.len < 2) return hex(groups)
  return `${hex(groups.slice(0, best.at))}::${hex(groups.slice(best.at + best.len))}`
}

interface Network {
  v4: boolean
  /** The address's bits in its own family (32 or 128). */
  bits: bigint
  prefix: number
}

function parse(input: string): Parsed<Network> {
  const hint = 'write a network as address/prefix, e.g. 10.0.0.0/8 or 2001:db8::/32, or an address alone for one host'
  const slash = input.indexOf('/')
  const address = slash < 0 ? input : input.slice(0, slash)
  const prefixText = slash < 0 ? undefined : input.slice(slash + 1)
  const v4 = isIPv4(address)
  if (!v4 && !isIPv6(address)) return fail(`"${input}" is not a network: "${address}" is not an IP address`, hint)
  const width = v4 ? 32 : 128
  if (prefixText !== undefined && !/^\d{1,3}$/.test(prefixText)) return fail(`"${input}" has no valid prefix length after "/"`, hint)
  const prefix = prefixText === undefined ? width : Number(prefixText)
  if (prefix > width) return fail(`prefix length ${prefix} of "${input}" is over ${width}`, `an IPv${v4 ? 4 : 6} prefix is 0 to ${width} bits`)
  return ok({ v4, bits: v4 ? ipv4Bits(address) : ipv6Bits(address), prefix })
}

function hostMask(width: number, prefix: number): bigint {
  return (1n << BigInt(width - prefix)) - 1n
}

/**
 * A client network, normalized: `10.0.0.0/8`, `2001:db8::/32`; an address alone is one host
 * (`/32`, `/128`). An address with bits set past the prefix (`10.1.0.0/8`) is refused, as it is
 * most likely a mistake in the prefix.
 */
export function normalizeCidr(input: string): Parsed<string> {
  const parsed = parse(input.trim())
  if (!parsed.ok) return parsed
  const { v4, bits, prefix } = parsed.value
  const width = v4 ? 32 : 128
  const host = bits & hostMask(width, prefix)
  const format = v4 ? formatIpv4 : formatIpv6
  if (host !== 0n) {
    const net = `${format(bits & ~hostMask(width, prefix))}/${prefix}`
    return fail(`"${input}" has address bits set past its /${prefix} prefix`, `did you mean ${net}, or ${format(bits)}/${width} for the one host?`)
  }
  return ok(`${format(bits)}/${prefix}`)
}

/** A normalized network's range in the shared 128-bit space (IPv4 as its IPv4-mapped range). */
export function cidrRange(cidr: string): Range | undefined {
  const parsed = parse(cidr)
  if (!parsed.ok) return undefined
  const { v4, bits, prefix } = parsed.value
  const start = v4 ? MAPPED | bits : bits
  const size = v4 ? hostMask(32, prefix) : hostMask(128, prefix)
  return { start: start & (ALL_128 ^ size), end: (start & (ALL_128 ^ size)) | size }
}

/** Whether the union of `outer` covers every address of `inner` (both normalized networks). */
export function cidrsCover(outer: readonly string[], inner: readonly string[]): boolean {
  const merged = outer
    .map(cidrRange)
    .filter((r): r is Range => r !== undefined)
    .sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0))
    .reduce<Range[]>((out, r) => {
      const last = out[out.length - 1]
      if (last && r.start <= last.end + 1n) {
        if (r.end > last.end) last.end = r.end
      } else out.push({ ...r })
      return out
    }, [])
  return inner.every((cidr) => {
    const r = cidrRange(cidr)
    return r !== undefined && merged.some((m) => m.start <= r.start && r.end <= m.end)
  })
}
