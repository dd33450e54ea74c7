import { randomBytes } from 'node:crypto';
import { mkdtempSync, openSync, closeSync, ftruncateSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTarget } from '../../scripts/start-target.mjs';
import { BlockDevice } from '../../src/index.js';
import { nativeBinding } from '../../src/transport/rdma/native-binding.js';
import { rdmaAddress } from './rdma-env.js';

// Initiator memory (issue 8 items 3 and 5, initiator half): registered when a queue connects,
// sized from its queue size, so that I/O at any queue depth up to the queue size registers
// nothing. The target runs in a child process, so this process's native counts are the
// initiator's alone.

const KiB = 1024;
const MiB = 1024 * KiB;
const QUEUE_SIZE = 32;
const SIZES = [4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, MiB];

/** One request per MiB of the disk, the sizes in turn. */
const JOBS = Array.from({ length: QUEUE_SIZE }, (_, index) => ({ index, offset: index * MiB, size: SIZES[index % SIZES.length]! }));

const dir = mkdtempSync(join(tmpdir(), 'vof-initiator-memory-'));
let target: Awaited<ReturnType<typeof startTarget>>;
let url: string;

beforeAll(async () => {
  const disk = join(dir, 'disk.img');
  const fd = openSync(disk, 'w');
  ftruncateSync(fd, QUEUE_SIZE * MiB);
  closeSync(fd);
  target = await startTarget(['--listen', `rdma://${rdmaAddress()}:0`, '--blk', `qd=${disk}`, '--queues', '1', '--queue-size', String(QUEUE_SIZE)], {
    timeoutMs: 120000,
  });
  url = `${target.urls[0]}/qd`;
});
afterAll(async () => {
  if (target) await target.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Native registrations of this process, sampled on every completion of the I/O phase. */
function registrationWatch(): { sample: () => void; seen: () => { min: number; max: number } } {
  const binding = nativeBinding();
  let min = Infinity;
  let max = -Infinity;
  return {
    sample: () => {
      const n = binding.resourceCounts().memoryRegions;
      min = Math.min(min, n);
      max = Math.max(max, n);
    },
    seen: () => ({ min, max }),
  };
}

/**
 * `qd` requests in flight at all times (each size of SIZES in turn, each at its own MiB of the
 * disk): writes of random data, then reads of it back, compared byte for byte.
 */
async function ioPhase(dev: BlockDevice, qd: number, buffer: (size: number, job: number) => Buffer, sample: () => void): Promise<void> {
  const jobs = JOBS;
  const written = new Map<number, Buffer>();
  const run = async (work: (job: (typeof jobs)[number]) => Promise<void>) => {
    let next = 0;
    const lane = async () => {
      while (next < jobs.length) {
        const job = jobs[next++]!;
        await work(job);
        sample();
      }
    };
    await Promise.all(Array.from({ length: qd }, lane));
  };
  await run(async ({ index, offset, size }) => {
    const data = buffer(size, index);
    randomBytes(size).copy(data);
    written.set(offset, Buffer.from(data));
    await dev.write(offset, data);
  });
  await run(async ({ index, offset, size }) => {
    const into = buffer(size, index);
    into.fill(0);
    await dev.read(offset, into);
    expect(into.equals(written.get(offset)!), `read back at ${offset} (${size} bytes)`).toBe(true);
  });
}

describe('initiator registered memory', () => {
  for (const qd of [1, 8, QUEUE_SIZE]) {
    it(`QD ${qd}, 4 KiB..1 MiB reads and writes of caller Buffers: correct data, no registration during the I/O`, async () => {
      const dev = await BlockDevice.open(url, { keepaliveIntervalMs: 0, queueSize: QUEUE_SIZE });
      try {
        const watch = registrationWatch();
        watch.sample();
        await ioPhase(dev, qd, (size) => Buffer.alloc(size), watch.sample);
        const { min, max } = watch.seen();
        expect(max, 'registrations made during the I/O phase').toBe(min);
      } finally {
        await dev.close();
      }
    });
  }

  it(`QD ${QUEUE_SIZE} with allocateBuffer memory (moved in place): correct data, no registration during the I/O`, async () => {
    const dev = await BlockDevice.open(url, { keepaliveIntervalMs: 0, queueSize: QUEUE_SIZE });
    try {
      // Allocated up front (allocateBuffer registers slabs; it is not the data path).
      const buffers = JOBS.map((j) => dev.device.allocateBuffer(j.size));
      const watch = registrationWatch();
      watch.sample();
      await ioPhase(dev, QUEUE_SIZE, (_size, job) => buffers[job]!, watch.sample);
      for (const b of buffers) dev.device.freeBuffer(b);
      const { min, max } = watch.seen();
      expect(max, 'registrations made during the I/O phase').toBe(min);
    } finally {
      await dev.close();
    }
  });

  it('the opt-in registration cache moves large caller buffers in place with correct data', async () => {
    const dev = await BlockDevice.open(url, { keepaliveIntervalMs: 0, queueSize: QUEUE_SIZE, keyedMemory: { registrationCache: true } });
    try {
      const buffers = JOBS.map((j) => Buffer.alloc(j.size));
      // The same caller buffers every round: registered once, then found in the cache.
      for (let round = 0; round < 3; round++) {
        const watch = registrationWatch();
        watch.sample();
        await ioPhase(dev, 8, (_size, job) => buffers[job]!, watch.sample);
        if (round > 0) expect(watch.seen().max, 'a warm cache registers nothing').toBe(watch.seen().min);
      }
    } finally {
      await dev.close();
    }
  });
});
