import { spawn, spawnSync } from 'node:child_process';
import { VOF_CLI } from '../../scripts/start-target.mjs';

/** Run the vof CLI in a child process without blocking this process's event loop (a target may run here). */
export function vofAsync(args: string[], timeoutMs = 30000): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [VOF_CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

/** Run the built vof CLI to completion (no target in this process may need the event loop meanwhile). */
export function vofSync(args: string[], opts: { uid?: number; gid?: number; cwd?: string } = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [VOF_CLI, ...args], { encoding: 'utf8', timeout: 20000, ...opts });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
