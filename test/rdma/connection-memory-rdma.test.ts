import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice } from '../../src/index.js';
import { nativeBinding } from '../../src/transport/rdma/native-binding.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { rdmaAddress } from './rdma-env.js';
import { waitFor } from '../helpers/wait-for.js';

// Memory given back after RDMA connections close. Each virtqueue connection registers a data
// pool of 8 × (1 MiB + 4 KiB) on the target plus receive and send slots on both ends; the
// registrations were released on close, but the Buffers were not: the CompletionQueue's
// callback (a strong persistent handle closing over the connection) was kept after destroy(),
// so every connection with its pools stayed reachable forever (~10 MiB each, found by the fuzzer).

const MiB = 1024 * 1024;
const ROUNDS = 12;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

let fx: TargetFixture;

/** arrayBuffers after full collections (finalizers of native wrappers run between them). */
async function settledArrayBuffers(): Promise<number> {
  for (let i = 0; i < 4; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 20));
  }
  return process.memoryUsage().arrayBuffers;
}

beforeAll(async () => {
  fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 600000 } });
  await fx.addDisk('disk0', MiB, { numQueues: 1, queueSize: 16 });
  await fx.listen(`rdma://${rdmaAddress()}:0`);
});
afterAll(async () => {
  await fx?.close();
});

describe('memory of closed RDMA connections', () => {
  it(`${ROUNDS} devices opened, used and closed give their registered Buffers back`, async () => {
    const binding = nativeBinding();
    const cycle = async (round: number): Promise<void> => {
      const dev = await BlockDevice.open(`${fx.url}/disk0`, { keepaliveIntervalMs: 0 });
      const data = Buffer.alloc(64 * 1024, round);
      await dev.write(0, data); // the target's data pool is created on the first data transfer
      expect((await dev.read(0, data.length)).equals(data)).toBe(true);
      await dev.close();
    };
    const idle = binding.resourceCounts();
    // The target releases its end on the DISCONNECTED event, a little after close() resolves.
    const released = (): Promise<void> =>
      waitFor(
        'every registration to be released',
        () => {
          const now = binding.resourceCounts();
          return now.queuePairs === idle.queuePairs && now.memoryRegions === idle.memoryRegions;
        },
        120000,
      );
    // One warm-up round: lazily created per-process state (code, caches) is not a leak.
    await cycle(0);
    await released();
    const baseline = await settledArrayBuffers();

    for (let round = 1; round <= ROUNDS; round++) await cycle(round);
    await released();
    const after = await settledArrayBuffers();
    const grownMiB = (after - baseline) / MiB;
    console.log(`arrayBuffers after gc: baseline ${(baseline / MiB).toFixed(1)} MiB, after ${ROUNDS} connections ${(after / MiB).toFixed(1)} MiB (+${grownMiB.toFixed(1)} MiB)`);
    // A leak keeps ≥ 8 MiB per virtqueue connection (its target data pool) — ~100 MiB here.
    // Less than one pool's worth of slack is allowed for allocator and GC noise.
    expect(grownMiB).toBeLessThan(8);
  });
});
