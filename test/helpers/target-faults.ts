import type { StartedTarget } from '../../scripts/start-target.mjs';

/**
 * What the fault tests (test/reconnect.test.ts over TCP, test/rdma/faults-rdma.test.ts over
 * RDMA) share: killing a `vof target` child the hard way, and the self-describing blocks their
 * writers write.
 */

/** SIGKILL the target and wait for it to be gone (at once if it has already exited). */
export function kill9(t: StartedTarget): Promise<void> {
  if (t.child.exitCode !== null || t.child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    t.child.once('exit', () => resolve());
    t.child.kill('SIGKILL');
  });
}

/**
 * Block `n`'s contents in writing round `round`: its number and round in the first 8 bytes
 * (little-endian u32s), then `n:round;` repeated, so a block read back names which write it
 * holds and a torn or misplaced one shows.
 */
export function block(n: number, round: number, size = 4096): Buffer {
  const b = Buffer.alloc(size);
  b.writeUInt32LE(n, 0);
  b.writeUInt32LE(round, 4);
  b.fill(`${n}:${round};`, 8);
  return b;
}
