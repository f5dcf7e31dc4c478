/**
 * The typed policy API: the native YAML form's types are what the field tables generate.
 */
import { readFileSync } from 'node:fs'
import test from 'ava'
import { NATIVE_TYPES_FILE, generateNativeTypes } from '../ts/config/native-types-gen.js'
import { count, duration, table, text } from '../ts/config/fields.js'
import { ok } from '../ts/config/values.js'

test('the committed native types are what the field tables generate', (t) => {
  t.is(readFileSync(NATIVE_TYPES_FILE, 'utf8'), generateNativeTypes(), 'regenerate them: npm run gen:native-types')
})

test('a field added to a table reaches the generated types by regeneration, under its YAML key', (t) => {
  const limit = table('Limit', 'A made-up limit.', {
    name: text('Its name.', ok, { yaml: { required: true } }),
    requestsPerSecond: count('Requests per second.', { min: 1, default: 10 }),
    windowMs: duration('The window.', { min: 1, default: 1000 }),
  })
  const out = generateNativeTypes(limit)
  t.regex(out, /export interface NativeLimit \{/)
  t.regex(out, /\n {2}name: string\n/)
  t.regex(out, /\n {2}requestsPerSecond\?: number\n/)
  t.regex(out, /\n {2}window\?: NativeDuration\n/, 'a duration is written under its YAML key and takes `10s`')
})
