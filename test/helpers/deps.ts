import { checkTestDeps, type TestDeps } from '../../scripts/debian-deps.mjs';

/**
 * What a test file (or a part of one) needs from scripts/debian-deps.json: group or package
 * names, and optionally a further check asked when they are all there (e.g. "the addon loads").
 * When something is missing it prints a loud banner with the exact `sudo apt-get install` line
 * and returns ok: false (skip with `describe.skipIf(!x.ok)(\`name${x.skipNote}\`)`), or with
 * VOF_REQUIRE_ALL=1 throws, failing the file. `npm test` installs the packages itself as root.
 */
export function needs(what: string, names: readonly string[], problem?: () => string | null): TestDeps {
  return checkTestDeps(what, names, { problem: problem ?? null });
}
