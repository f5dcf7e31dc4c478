/**
 * `meshproxy identity`: make a trust anchor, issue workload certificates, check expiry. Each
 * action returns or throws a `MeshProxyError`; `cli.ts` prints it and sets the exit code.
 */
import { Command, InvalidArgumentError, Option } from 'commander'
import { parseDuration } from './config/values.js'
import { checkIdentity, initIdentity, issueIdentity, type IdentityCertificate, type IssuedIdentity } from './identity.js'

function duration(value: string): number {
  const d = parseDuration(value)
  if (!d.ok) throw new InvalidArgumentError(d.hint ? `${d.error} (${d.hint})` : d.error)
  return d.value
}

function printIssued(what: string, i: IssuedIdentity): void {
  console.log(`${what} ${i.id}`)
  console.log(`  certificate: ${i.cert}`)
  console.log(`  key:         ${i.key}`)
  console.log(`  valid:       ${i.notBefore.toISOString()} to ${i.notAfter.toISOString()}`)
}

function left(c: IdentityCertificate, now: Date): string {
  const ms = c.notAfter.getTime() - now.getTime()
  const abs = Math.abs(ms)
  const text = abs >= 2 * 86_400_000 ? `${Math.floor(abs / 86_400_000)}d` : abs >= 3_600_000 ? `${Math.floor(abs / 3_600_000)}h` : `${Math.floor(abs / 60_000)}m`
  return ms >= 0 ? `${text} left` : `${text} ago`
}

export function identityCommand(): Command {
  const identity = new Command('identity').description('mesh identity: a trust anchor and SPIFFE workload certificates for mTLS')

  identity
    .command('init')
    .description('create a trust anchor (ca.crt, ca.key) in DIR')
    .argument('<dir>', 'identity directory (created if missing)')
    .requiredOption('--trust-domain <domain>', 'SPIFFE trust domain, e.g. cluster.local')
    .option('--validity <duration>', "the anchor's lifetime, e.g. 8760h", duration)
    .addOption(new Option('--force', 'replace an existing anchor (what it issued is no longer trusted)').conflicts('rotate'))
    .option('--rotate', 'add a new anchor that issues from now on; ca.crt keeps the old one until it expires')
    .action(async (dir: string, opts: { trustDomain: string; validity?: number; force?: boolean; rotate?: boolean }) => {
      const anchor = await initIdentity(dir, {
        trustDomain: opts.trustDomain,
        ...(opts.validity !== undefined ? { validityMs: opts.validity } : {}),
        existing: opts.force ? 'replace' : opts.rotate ? 'rotate' : 'refuse',
      })
      printIssued('trust anchor', anchor)
      if (anchor.bundle > 1) console.log(`  ca.crt holds ${anchor.bundle} anchors until the old one expires or is removed`)
    })

  identity
    .command('issue')
    .description("issue a workload certificate: NAME.NAMESPACE.crt and .key in DIR, signed by DIR's anchor")
    .argument('<name>', 'the workload (its Kubernetes service account)')
    .requiredOption('-n, --namespace <namespace>', "the workload's namespace")
    .requiredOption('--dir <dir>', 'identity directory holding the trust anchor')
    .option('--validity <duration>', "the certificate's lifetime (default 24h; never past the anchor's)", duration)
    .action(async (name: string, opts: { namespace: string; dir: string; validity?: number }) => {
      const leaf = await issueIdentity(opts.dir, name, {
        namespace: opts.namespace,
        ...(opts.validity !== undefined ? { validityMs: opts.validity } : {}),
      })
      printIssued('workload', leaf)
    })

  identity
    .command('check')
    .description('show each certificate in DIR and its expiry; exit code 1 if any is expired, untrusted or expires soon')
    .option('--dir <dir>', 'identity directory', '.')
    .option('--within <duration>', 'count as expiring soon with less than this left (default: under 30 % of its lifetime)', duration)
    .option('--json', 'print the result as JSON')
    .action(async (opts: { dir: string; within?: number; json?: boolean }) => {
      const status = await checkIdentity(opts.dir, opts.within !== undefined ? { withinMs: opts.within } : {})
      if (opts.json) {
        console.log(JSON.stringify(status, null, 2))
      } else {
        for (const c of status.certificates) {
          console.log(
            `${c.standing.padEnd(13)} ${c.role.padEnd(8)} ${c.id ?? c.subject}  ${c.path}  expires ${c.notAfter.toISOString()} (${left(c, status.checkedAt)})`,
          )
        }
      }
      if (!status.ok) process.exitCode = 1
    })

  return identity
}
