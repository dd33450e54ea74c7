import { spawn, spawnSync } from 'node:child_process';
import { expect } from 'vitest';

/** Runs a command to its end; `out` names it with everything it printed (for assertion messages). */
export function sh(cmd: string, args: string[], timeout = 300000): { status: number | null; out: string; stdout: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout });
  return { status: r.status, out: `${cmd} ${args.join(' ')}: ${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? ` (${r.error.message})` : ''}`, stdout: r.stdout ?? '' };
}

/** The same, failing the test unless the command exits 0; returns its standard output. */
export function must(cmd: string, args: string[], timeout?: number): string {
  const r = sh(cmd, args, timeout);
  expect(r.status, r.out).toBe(0);
  return r.stdout;
}

/**
 * Runs a command without blocking this process (the test acts while it runs); bounded by
 * `timeoutMs` (then SIGKILL). `out` names it with everything it printed, as sh() does.
 */
export function shAsync(cmd: string, args: string[], timeoutMs: number): Promise<{ status: number | null; out: string; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (status) => {
      clearTimeout(timer);
      resolve({ status, out: `${cmd} ${args.join(' ')}: ${stdout}${stderr}`, stdout, stderr });
    });
  });
}
