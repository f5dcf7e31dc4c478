import test from 'ava'
import { formatDiagnostic, loadConfigText, validateModel, type LoadResult } from '../ts/config/index.js'
import { normalizeCidr, cidrsCover } from '../ts/config/cidr.js'

const load = (text: string): LoadResult => loadConfigText(text, { file: 'a.yaml' })
const lines = (r: LoadResult, severity: 'error' | 'warning'): string[] => r.diagnostics.filter((d) => d.severity === severity).map(formatDiagnostic)

test('listener and route authorization load into the model, normalized', (t) => {
  const r = load(`
listeners:
  - name: web
    authorization:
      default: deny
      rules:
        - { action: allow, networks: [127.0.0.0/8, "::1", "2001:DB8:0:0::/32"] }
        - action: allow
          networks: 10.0.0.0/8
          methods: [get, HEAD]
          path: /public/../status
          headers: { X-Probe: "1" }
    routes:
      - name: admin
        match: { path: /admin }
        service: api
        authorization:
          - { action: deny, methods: POST, path: /admin/users/, pathType: Exact }
services:
  - { name: api, endpoints: [127.0.0.1:8081] }
`)
  t.deepEqual(lines(r, 'error'), [])
  const l = r.config!.listeners[0]!
  t.deepEqual(l.authorization, {
    default: 'deny',
    rules: [
      { action: 'allow', networks: ['127.0.0.0/8', '::1/128', '2001:db8::/32'], methods: [], path: { type: 'Prefix', value: '/' }, headers: [], identities: [] },
      { action: 'allow', networks: ['10.0.0.0/8'], methods: ['GET', 'HEAD'], path: { type: 'Prefix', value: '/status' }, headers: [{ name: 'x-probe', value: '1' }], identities: [] },
    ],
  })
  t.deepEqual(l.routes[0]!.authorization, [
    { action: 'deny', networks: [], methods: ['POST'], path: { type: 'Exact', value: '/admin/users/' }, headers: [], identities: [] },
  ])
  t.deepEqual(validateModel(r.config), [], 'the model the loader writes is valid as it is')
})

test('bad rules are errors at their positions, with what would be valid', (t) => {
  const r = load(`
listeners:
  - authorization:
      default: maybe
      rules:
        - { networks: [10.0.0.0/8] }
        - { action: permit }
        - { action: deny, networks: [10.1.0.0/8, "300.0.0.1", "10.0.0.0/33"], colour: red }
    routes: [{ service: api }]
services:
  - { name: api, endpoints: [127.0.0.1:8081] }
`)
  t.deepEqual(lines(r, 'error'), [
    'a.yaml:4:16: error: unknown listener authorization default "maybe" (valid actions: allow, deny)',
    'a.yaml:6:11: error: listener authorization rule is missing required field "action"',
    'a.yaml:7:21: error: unknown listener authorization rule action "permit" (valid actions: allow, deny)',
    'a.yaml:8:38: error: invalid network: "10.1.0.0/8" has address bits set past its /8 prefix (did you mean 10.0.0.0/8, or 10.1.0.0/32 for the one host?)',
    'a.yaml:8:50: error: invalid network: "300.0.0.1" is not a network: "300.0.0.1" is not an IP address (write a network as address/prefix, e.g. 10.0.0.0/8 or 2001:db8::/32, or an address alone for one host)',
    'a.yaml:8:63: error: invalid network: prefix length 33 of "10.0.0.0/33" is over 32 (an IPv4 prefix is 0 to 32 bits)',
    'a.yaml:8:79: error: unknown field "colour" in listener authorization rule (valid fields: action, networks, methods, path, pathType, headers, identities)',
  ])
  t.is(r.config, null)
})

test('CIDRs normalize and cover as the data plane matches them (IPv4 as IPv4-mapped IPv6)', (t) => {
  const norm = (s: string) => {
    const p = normalizeCidr(s)
    return p.ok ? p.value : p.error
  }
  t.is(norm('10.0.0.0/8'), '10.0.0.0/8')
  t.is(norm('192.168.1.7'), '192.168.1.7/32')
  t.is(norm('2001:0DB8:0000::/32'), '2001:db8::/32')
  t.is(norm('::ffff:10.0.0.0/104'), '::ffff:a00:0/104')
  t.is(norm('fe80::1:0:0:1'), 'fe80::1:0:0:1/128')
  t.true(cidrsCover(['10.0.0.0/8'], ['10.2.0.0/16', '10.255.255.255/32']))
  t.false(cidrsCover(['10.0.0.0/8'], ['11.0.0.0/8']))
  t.true(cidrsCover(['10.0.0.0/9', '10.128.0.0/9'], ['10.0.0.0/8']), 'a union covers what no one network does')
  t.true(cidrsCover(['::ffff:0:0/96'], ['127.0.0.0/8']), 'the IPv4-mapped range holds every IPv4 network')
  t.true(cidrsCover(['::/0'], ['0.0.0.0/0', '2001:db8::/32']))
  t.false(cidrsCover(['0.0.0.0/0'], ['::1/128']), 'an IPv4 network holds no IPv6 client')
})

test('check reports rules that contradict or repeat an earlier one, and rules the default makes redundant', (t) => {
  const r = load(`
listeners:
  - name: web
    authorization:
      default: deny
      rules:
        - { action: allow, networks: [127.0.0.0/8] }
        - { action: deny, networks: [127.0.0.1], methods: [POST] }
        - { action: allow, networks: [127.0.0.0/16], path: /api }
        - { action: deny, networks: [10.0.0.0/8] }
    routes:
      - name: admin
        match: { path: /admin }
        service: api
        authorization:
          - { action: deny, path: /admin, headers: { x-role: guest } }
          - { action: deny, path: /admin/users, headers: { x-role: guest, x-tenant: a } }
          - { action: allow, networks: ["::ffff:0:0/96"] }
          - { action: deny, networks: [10.0.0.0/8], methods: [GET] }
      - name: other
        match: { path: /other }
        service: api
        authorization:
          - { action: allow, methods: [GET] }
          - { action: deny, networks: [10.0.0.0/8] }
services:
  - { name: api, endpoints: [127.0.0.1:8081] }
`)
  t.deepEqual(lines(r, 'error'), [])
  t.deepEqual(lines(r, 'warning'), [
    'a.yaml:8:11: warning: listener "web" authorization rule 2 (deny) can never apply on listener "web": listener "web" authorization rule 1 allows every request it matches first (first match wins: move it before that rule, narrow that rule, or remove this one)',
    'a.yaml:9:11: warning: listener "web" authorization rule 3 is redundant on listener "web": listener "web" authorization rule 1 already allows every request it matches (remove it)',
    'a.yaml:10:11: warning: listener "web" authorization rule 4 is redundant on listener "web": it denies what the default (deny) would, and no rule after it decides otherwise (remove it)',
    'a.yaml:17:13: warning: route "admin" authorization rule 2 is redundant on route "admin": route "admin" authorization rule 1 already denies every request it matches (remove it)',
    'a.yaml:19:13: warning: route "admin" authorization rule 4 (deny) can never apply on route "admin": route "admin" authorization rule 3 allows every request it matches first (first match wins: move it before that rule, narrow that rule, or remove this one)',
  ])
})

test('check reports a route that can never match, and only when certain', (t) => {
  const r = load(`
listeners:
  - name: web
    routes:
      - { name: read-write, match: { path: /v2, methods: [GET, POST] }, service: api }
      - { name: read, match: { path: /v2, method: GET }, service: api }
      - { name: two-hosts, match: { hosts: [a.example, b.example], path: /v3 }, service: api }
      - { name: one-host, match: { host: a.example, path: /v3 }, service: api }
      - { name: put-x, match: { hosts: [a.example, c.example], path: /v3/x, method: PUT }, service: api }
      - { name: any-x, match: { hosts: [a.example, c.example], path: /v3/x }, service: api }
      - { name: canary, match: { path: /v4, headers: { x-canary: "1" } }, service: api }
      - { name: beta, match: { path: /v4, cookies: { beta: "1" } }, service: api }
      - { name: exact, match: { path: /v5, pathType: Exact }, service: api }
      - { name: longer, match: { path: /v5/a }, service: api }
      - { name: all, match: { path: / }, service: api }
      - { name: root-query, match: { query: { debug: "1" } }, service: api }
      - { name: catch-all, service: api }
services:
  - { name: api, endpoints: [127.0.0.1:8081] }
`)
  t.deepEqual(lines(r, 'warning'), [
    'a.yaml:6:9: warning: route "read" can never match on listener "web": route "read-write" comes first in the routing precedence and matches every request it matches (give it a more specific match (an Exact or longer path, a method, header, query or cookie match) or remove it)',
    'a.yaml:8:9: warning: route "one-host" can never match on listener "web": route "two-hosts" comes first in the routing precedence and matches every request it matches (give it a more specific match (an Exact or longer path, a method, header, query or cookie match) or remove it)',
    'a.yaml:17:9: warning: route "catch-all" has the same match as route "all"; only one of them can serve requests',
  ])
})

test('Linkerd\'s authorization resources are skipped with a warning that points to the native rules', (t) => {
  const r = load(`
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: { name: cluster }
spec:
  networks: [{ cidr: 10.0.0.0/8 }]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: { name: web }
spec:
  targetRef: { group: policy.linkerd.io, kind: Server, name: web-http }
  requiredAuthenticationRefs: [{ group: policy.linkerd.io, kind: NetworkAuthentication, name: cluster }]
`)
  t.deepEqual(lines(r, 'warning'), [
    'a.yaml:3:7: warning: Linkerd\'s NetworkAuthentication is not supported; skipped (Linkerd\'s authorization applies to a Server (a port of selected pods), which meshproxy has no equivalent of: write its networks as a listener\'s authorization rules (README "Authorization"))',
    'a.yaml:9:7: warning: Linkerd\'s AuthorizationPolicy is not supported; skipped (Linkerd\'s authorization applies to a Server (a port of selected pods), which meshproxy has no equivalent of: write its networks as a listener\'s authorization rules (README "Authorization"))',
  ])
})
