import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

/**
 * Issue 10, durability: a bounded run of scripts/durability.mjs (the full run is
 * `node scripts/durability.mjs`, see README). The target process is SIGKILLed at random moments
 * while writes and flushes run; after a restart every write acknowledged before the last
 * successful flush must be on disk. The sabotage run proves the checker can see a loss.
 */

const run = promisify(execFile);

interface Summary {
  trials: number;
  writesAcked: number;
  blocksChecked: number;
  lost: number;
}

async function durability(...extra: string[]): Promise<{ code: number; summary: Summary }> {
  const args = ['scripts/durability.mjs', '--trials', '3', '--max-ms', '800', '--blocks', '256', '--json', ...extra];
  const r = await run(process.execPath, args, { timeout: 240_000 }).then(
    (ok) => ({ code: 0, stdout: ok.stdout }),
    (err: { code?: number; stdout?: string }) => ({ code: err.code ?? -1, stdout: err.stdout ?? '' }),
  );
  const line = r.stdout.trim().split('\n').pop() ?? '';
  return { code: r.code, summary: (JSON.parse(line) as { summary: Summary }).summary };
}

describe('durability under SIGKILL of the target', () => {
  it('every write acknowledged before the last successful flush survives a kill and restart', async () => {
    const { code, summary } = await durability();
    expect(summary.trials).toBe(3);
    expect(summary.blocksChecked).toBeGreaterThan(0);
    expect(summary.lost).toBe(0);
    expect(code).toBe(0);
  }, 300_000);

  it('the checker reports a loss when a flushed block is destroyed behind its back', async () => {
    const { code, summary } = await durability('--sabotage');
    expect(summary.lost).toBeGreaterThan(0);
    expect(code).toBe(1);
  }, 300_000);
});
