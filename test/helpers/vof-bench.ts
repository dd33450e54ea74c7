import { spawn } from 'node:child_process';
import { VOF_CLI } from '../../scripts/start-target.mjs';

/**
 * Runs `vof bench ARGS` as a child without blocking the test worker (a long spawnSync starves
 * vitest's worker RPC), collecting its output.
 */
export function vofBench(args: string[], timeoutMs = 600_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [VOF_CLI, 'bench', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
