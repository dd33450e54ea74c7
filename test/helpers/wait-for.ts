import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';

/**
 * The tests' one poll-until: calls `cond` every `everyMs` until it returns a truthy value, and
 * throws naming `what` once `timeoutMs` has passed. The deadline is required:
 * a loop in a test is bounded, and its error says what never happened (not "timed out"). `cond`
 * may throw to give up early (a child process that died). For what an event can say instead
 * (a promise, 'exit'), await that rather than polling.
 */
export async function waitFor(what: string, cond: () => unknown, timeoutMs: number, everyMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Waits until `child` (a server: nbdkit, qemu-nbd) has made its Unix socket at `path`; fails at once if it exits. */
export function waitForSocket(path: string, child: ChildProcess, what: string, timeoutMs: number): Promise<void> {
  return waitFor(
    `${what} to make its socket at ${path}`,
    () => {
      if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}`);
      return existsSync(path);
    },
    timeoutMs,
    25,
  );
}
