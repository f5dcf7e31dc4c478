/**
 * h2spec, the HTTP/2 conformance suite the h2c listener is tested against, at a pinned version:
 * built with `go install` into the project's `.cache/tools/h2spec@<version>/` the first time a
 * test asks for it (about 40 s with an empty Go module cache), then reused ([`goTool`]).
 */
import { goTool } from './go-tool.js'

export { findGo, TOOLS_DIR } from './go-tool.js'

export const H2SPEC_PACKAGE = 'github.com/summerwind/h2spec/cmd/h2spec'
export const H2SPEC_VERSION = 'v2.2.1+incompatible'

/** The path of the h2spec binary, built first if the cache does not have it. */
export function h2spec(): Promise<string> {
  return goTool({ name: 'h2spec', pkg: H2SPEC_PACKAGE, version: H2SPEC_VERSION, bin: 'h2spec', purpose: 'the HTTP/2 conformance test' })
}
