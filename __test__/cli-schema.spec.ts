/**
 * `meshproxy schema`: the JSON Schema editors use for config files (yaml-language-server's
 * `# yaml-language-server: $schema=...`), and `--model` for the normalized model.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import test from 'ava'
import { Ajv } from 'ajv'
import { parse } from 'yaml'
import { ROOT, runCli } from './helpers/cli.js'

const config = `# yaml-language-server: $schema=meshproxy.schema.json
admin: null
listeners:
  - name: main
    address: 127.0.0.1:4140
    idleTimeout: 30s
    routes:
      - match: { host: api.example.com, path: /v1 }
        service: api
        timeout: 2500
services:
  - name: api
    balancer: { hash: { header: x-user } }
    endpoints: [127.0.0.1:8081, { address: 127.0.0.1:8082, weight: 2 }]
`

test('schema prints the JSON Schema of the YAML form: a good file passes, a misspelt key is pointed at', async (t) => {
  const r = await runCli(t, ['schema'])
  t.is(r.code, 0, r.stderr)
  t.is(r.stderr, '')
  const schema = JSON.parse(r.stdout) as { $schema: string; title: string }
  t.is(schema.$schema, 'http://json-schema.org/draft-07/schema#')
  const validate = new Ajv({ allowUnionTypes: true }).compile(schema)
  t.true(validate(parse(config)), JSON.stringify(validate.errors))
  t.false(validate(parse(config.replace('idleTimeout: 30s', 'idleTimout: 30s'))))
  t.like(validate.errors?.[0], { instancePath: '/listeners/0', params: { additionalProperty: 'idleTimout' } })
  t.false(validate(parse(config.replace('timeout: 2500', 'timeout: soon'))))
})

test('schema --model prints the normalized model schema, as committed in schema/', async (t) => {
  const r = await runCli(t, ['schema', '--model'])
  t.is(r.code, 0, r.stderr)
  t.is(r.stdout, readFileSync(join(ROOT, 'schema/config-model.schema.json'), 'utf8'))
})

test('schema --help names the option and the editor use', async (t) => {
  const r = await runCli(t, ['schema', '--help'])
  t.is(r.code, 0)
  t.regex(r.stdout, /--model/)
  t.regex(r.stdout, /yaml-language-server/)
})
