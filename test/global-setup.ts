import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { skipSummary } from '../scripts/debian-deps.mjs';
import { HOST_GROUPS, prepareTestDeps } from '../scripts/test-deps.mjs';

/**
 * Before any test file: the Debian packages the host suite drives (scripts/debian-deps.json),
 * installed when missing and possible, and the native addon built if it does not load (a no-op
 * after `npm test`'s first step, which did the same for every suite); then the CLI tests' `vof`
 * is compiled once. Test files whose packages are still missing say so in a banner
 * (test/helpers/deps.ts) and log it; after the run, the skips are listed once more, last.
 */
export default function setup(): () => void {
  prepareTestDeps(HOST_GROUPS, { who: 'vitest' });
  execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
  const dir = mkdtempSync(join(tmpdir(), 'vof-test-skips-'));
  const log = join(dir, 'skips.jsonl');
  process.env.VOF_TEST_SKIP_LOG = log; // the test workers inherit it
  return () => {
    let text = '';
    try {
      text = readFileSync(log, 'utf8');
    } catch {
      /* nothing was skipped */
    }
    rmSync(dir, { recursive: true, force: true });
    process.stderr.write(skipSummary(text));
  };
}
