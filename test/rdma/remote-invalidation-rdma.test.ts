import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDevice, VIRTIO_OF_F_KEYED_NUM_DESCS, VOF_F_INLINE_DATA, VOF_F_REMOTE_INVALIDATE } from '../../src/index.js';
import type { RdmaInitiatorConnection } from '../../src/transport/rdma/rdma-initiator-connection.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { rdmaAddress } from './rdma-env.js';
import { targetTransferCounts } from './target-transfer-counts.js';

/**
 * vof remote invalidation between vof's own target and initiator (docs/PROTOCOL.md "Remote
 * invalidation on keyed queues"): negotiated by default, each VQ completion of the data path is
 * a SEND with Invalidate of the request's first key, and the initiator posts LOCAL_INV only for
 * the keys after it. Not negotiated, every key is invalidated by the initiator itself.
 * (test/rdma/keys-rdma.test.ts proves the keys are dead afterwards, both ways.)
 */
const KiB = 1024;
const MiB = 1024 * KiB;
const KEYED = 1n << VIRTIO_OF_F_KEYED_NUM_DESCS;
const INLINE = 1n << VOF_F_INLINE_DATA;
const INVALIDATE = 1n << VOF_F_REMOTE_INVALIDATE;

let fx: TargetFixture;
let path: string;

beforeAll(async () => {
  fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 600000 } });
  path = await fx.addDisk('disk0', 4 * MiB, { numQueues: 1, queueSize: 16 });
  await fx.listen(`rdma://${rdmaAddress()}:0`);
});
afterAll(async () => {
  await fx?.close();
});

/** SEND with Invalidate completions the target's virtqueue connections have sent so far. */
function targetInvalidations(): number {
  return targetTransferCounts(fx).remoteInvalidations;
}

function initiatorKeys(disk: BlockDevice): { localInvalidations: number; remoteInvalidations: number } {
  const sum = { localInvalidations: 0, remoteInvalidations: 0 };
  for (const q of disk.device.queues) {
    const s = (q.connection as RdmaInitiatorConnection).keyStats;
    sum.localInvalidations += s.localInvalidations;
    sum.remoteInvalidations += s.remoteInvalidations;
  }
  return sum;
}

/** 8 writes and 8 reads of `size` bytes each at their own offsets, 4 in flight; data compared. */
async function io(disk: BlockDevice, base: number, size: number, buffer: (i: number) => Buffer): Promise<void> {
  const data = Array.from({ length: 8 }, () => randomBytes(size));
  for (let i = 0; i < 8; i += 4) await Promise.all(data.slice(i, i + 4).map((d, k) => disk.write(base + (i + k) * size, d)));
  for (let i = 0; i < 8; i += 4) {
    const got = await Promise.all(data.slice(i, i + 4).map((_d, k) => disk.read(base + (i + k) * size, buffer(i + k))));
    got.forEach((g, k) => expect(g.equals(data[i + k]!), `read ${i + k}`).toBe(true));
  }
  const file = readFileSync(path);
  data.forEach((d, i) => expect(file.subarray(base + i * size, base + (i + 1) * size).equals(d), `file at write ${i}`).toBe(true));
}

describe('vof target and initiator', () => {
  it('negotiated by default: every completion ends its first key; with plain Buffers only writes past the inline size need a LOCAL_INV', async () => {
    const disk = await BlockDevice.open(`${fx.url}/disk0`, { keepaliveIntervalMs: 0 });
    try {
      expect(disk.device.offeredOfFeatures & INVALIDATE).toBe(INVALIDATE);
      expect(disk.device.ofFeatures).toBe(KEYED | INLINE | INVALIDATE);
      const before = targetInvalidations();
      await io(disk, 0, 4 * KiB, (i) => Buffer.alloc(4 * KiB, i));
      await io(disk, MiB, 128 * KiB, (i) => Buffer.alloc(128 * KiB, i));
      // 32 VQ requests: 32 SENDs with Invalidate. Reads, and 4 KiB writes (readable part
      // inline), have one keyed descriptor (the bounced writable bytes are one run): no
      // LOCAL_INV. A 128 KiB write has its readable run and its status byte: one LOCAL_INV each.
      expect(targetInvalidations() - before).toBe(32);
      expect(initiatorKeys(disk)).toEqual({ remoteInvalidations: 32, localInvalidations: 8 });
    } finally {
      await disk.close();
    }
  });

  it('reads into allocateBuffer memory (two descriptors: data in place, status bounced): the first key remotely, the second locally', async () => {
    const disk = await BlockDevice.open(`${fx.url}/disk0`, { keepaliveIntervalMs: 0 });
    try {
      const buffers = Array.from({ length: 8 }, () => disk.device.allocateBuffer(64 * KiB));
      await io(disk, 2 * MiB, 64 * KiB, (i) => buffers[i]!);
      // 64 KiB writes (from plain Buffers, past the inline size): the bounced readable run and
      // the status byte. Reads: the data in place and the bounced status byte. Two keys each:
      // the first ended by the completion, the second by a LOCAL_INV.
      expect(initiatorKeys(disk)).toEqual({ remoteInvalidations: 16, localInvalidations: 16 });
      for (const b of buffers) disk.device.freeBuffer(b);
    } finally {
      await disk.close();
    }
  });

  it('remoteInvalidation: false leaves bit 57 unset: plain SEND completions, the initiator invalidates every key itself', async () => {
    const disk = await BlockDevice.open(`${fx.url}/disk0`, { keepaliveIntervalMs: 0, remoteInvalidation: false });
    try {
      expect(disk.device.ofFeatures).toBe(KEYED | INLINE);
      const before = targetInvalidations();
      await io(disk, 3 * MiB, 4 * KiB, (i) => Buffer.alloc(4 * KiB, i));
      expect(targetInvalidations() - before).toBe(0);
      expect(initiatorKeys(disk)).toEqual({ remoteInvalidations: 0, localInvalidations: 16 });
    } finally {
      await disk.close();
    }
  });
});
