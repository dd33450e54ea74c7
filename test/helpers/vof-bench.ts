import { vofAsync } from './vof-cli.js';

/**
 * Runs `vof bench ARGS` as a child without blocking the test worker (a long spawnSync starves
 * vitest's worker RPC), collecting its output.
 */
export async function vofBench(args: string[], timeoutMs = 600_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { status, stdout, stderr } = await vofAsync(['bench', ...args], timeoutMs);
  return { code: status, stdout, stderr };
}
