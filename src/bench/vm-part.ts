import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VOF_CLI } from '../../scripts/start-target.mjs';
import type { BenchReport } from './types.js';

const RXE_RUN = fileURLToPath(new URL('../../scripts/rxe/run.mjs', import.meta.url));
const PACKAGE_ROOT = fileURLToPath(new URL('../..', import.meta.url));

/**
 * Runs `vof bench --vm-part` inside the soft-RoCE QEMU VM (scripts/rxe/run.mjs --vm), where rxe0
 * exists, and returns its report. The VM shares this host's root file system, so the report
 * comes back through a file in /tmp. `benchArgs` are the workload options to pass on.
 */
export async function runInVm(benchArgs: readonly string[], timeoutSec: number): Promise<BenchReport> {
  const out = join(tmpdir(), `vof-bench-vm-${process.pid}.json`);
  rmSync(out, { force: true });
  const args = [RXE_RUN, '--vm', '--timeout', String(Math.round(timeoutSec)), process.execPath, VOF_CLI, 'bench', '--vm-part', '--json', out, ...benchArgs];
  const child = spawn(process.execPath, args, { cwd: PACKAGE_ROOT, stdio: ['ignore', 'inherit', 'inherit'] });
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  let report: BenchReport;
  try {
    report = JSON.parse(readFileSync(out, 'utf8')) as BenchReport;
  } catch {
    const why = code === 124 ? `timed out after ${timeoutSec} s` : code === 125 ? 'the VM could not set up rxe (see its log above)' : code === 2 ? 'no way to run the soft-RoCE VM here (see above)' : `exited with ${code}`;
    throw new Error(`the soft-RoCE VM part wrote no report: ${why}`);
  } finally {
    rmSync(out, { force: true });
  }
  return report;
}
