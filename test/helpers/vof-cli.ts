import { spawnSync } from 'node:child_process';
import { VOF_CLI } from '../../scripts/start-target.mjs';
import { shAsync } from './shell.js';

/** Run the vof CLI in a child process without blocking this process's event loop (a target may run here). */
export async function vofAsync(args: string[], timeoutMs = 30000): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const { status, stdout, stderr } = await shAsync(process.execPath, [VOF_CLI, ...args], timeoutMs);
  return { status, stdout, stderr };
}

/** Run the built vof CLI to completion (no target in this process may need the event loop meanwhile). */
export function vofSync(args: string[], opts: { uid?: number; gid?: number; cwd?: string } = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [VOF_CLI, ...args], { encoding: 'utf8', timeout: 20000, ...opts });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
