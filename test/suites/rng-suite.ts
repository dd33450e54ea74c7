import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AdminClass,
  AdminGenericStatus,
  EntropyDevice,
  EntropyExport,
  Opcode,
  QueueRole,
  VofConnectionError,
} from '../../src/index.js';
import { TargetFixture } from '../helpers/target-fixture.js';

const opts = { keepaliveIntervalMs: 0 };

/** A crude check that bytes are not constant or repeating: all 256 values show up in 64 KiB. */
function looksRandom(b: Buffer): boolean {
  return new Set(b).size === 256;
}

/** virtio-rng end to end over one transport: bytes, the per-instance rate limit, instances, admin. */
export function rngSuite(name: string, listenUrl: string): void {
  describe(`virtio-rng over ${name}`, () => {
    let fx: TargetFixture;
    let url: string;
    const slow = { rate: 32 * 1024, burst: 8 * 1024 };

    beforeAll(async () => {
      fx = new TargetFixture();
      fx.target.addExport('rng', new EntropyExport());
      fx.target.addExport('slow', new EntropyExport(slow));
      fx.target.addExport('rng2', new EntropyExport({ rate: 4 * 1024 * 1024 }));
      await fx.addDisk('disk', 1024 * 1024);
      url = await fx.listen(listenUrl);
    });
    afterAll(async () => {
      await fx?.close();
    });

    it('is device id 4 with one virtqueue, and returns the bytes asked for', async () => {
      const rng = await EntropyDevice.open(`${url}/rng`, opts);
      try {
        expect(rng.device.deviceId).toBe(4);
        expect(rng.device.vendorId).toBe(0x1af4);
        await expect(rng.device.command({ opcode: Opcode.GetVqSize, vqIndex: 0 })).resolves.toMatchObject({ size: 64 });
        const a = await rng.read(100_000);
        const b = await rng.read(100_000);
        expect(a.length).toBe(100_000);
        expect(looksRandom(a.subarray(0, 65536))).toBe(true);
        expect(a.equals(b)).toBe(false);
        expect((await rng.read(1)).length).toBe(1);
        expect((await rng.read(0)).length).toBe(0);
      } finally {
        await rng.close();
      }
    });

    it('rate limit: one request gets at most the burst, and further requests wait rather than fail', async () => {
      const rng = await EntropyDevice.open(`${url}/slow`, opts);
      try {
        const big = Buffer.alloc(64 * 1024);
        expect(await rng.device.request(0, [], [big])).toBe(slow.burst);
        // 6 bursts at 32 KiB/s after an (almost) empty bucket: at least (6 - 1) * 8 KiB / 32 KiB/s.
        const started = performance.now();
        const all = await Promise.all(Array.from({ length: 6 }, () => rng.read(slow.burst)));
        const elapsed = performance.now() - started;
        for (const r of all) expect(r.length).toBe(slow.burst);
        expect(elapsed).toBeGreaterThanOrEqual(((5 * slow.burst) / slow.rate) * 1000 * 0.9);
      } finally {
        await rng.close();
      }
    });

    it('several instances of one export and of two exports at once, each its own stream', async () => {
      const devs = await Promise.all([
        EntropyDevice.open(`${url}/rng`, opts),
        EntropyDevice.open(`${url}/rng`, opts),
        EntropyDevice.open(`${url}/rng2`, opts),
      ]);
      try {
        expect(new Set(devs.map((d) => d.device.instanceId)).size).toBe(3);
        const out = await Promise.all(devs.map((d) => d.read(200_000)));
        for (const o of out) expect(o.length).toBe(200_000);
        expect(out[0]!.equals(out[1]!)).toBe(false);
        expect(out[1]!.equals(out[2]!)).toBe(false);
      } finally {
        await Promise.all(devs.map((d) => d.close()));
      }
    });

    it('admin common and transport classes work on it; it has no device class', async () => {
      const rng = await EntropyDevice.open(`${url}/rng`, opts);
      try {
        expect(await rng.admin.listCommands()).toEqual([
          { cls: 0, command: 0 },
          { cls: 0, command: 1 },
          { cls: 0, command: 2 },
          { cls: 64, command: 0 },
          { cls: 192, command: 0 },
          { cls: 192, command: 1 },
        ]);
        expect(rng.device.adminQueueIndex).toBe(1);
        expect(await rng.admin.raw(AdminClass.BLK, 0)).toMatchObject({ statusType: 0, status: AdminGenericStatus.INVALID_CLASS });
        const health = await rng.admin.healthTest(8);
        expect(health).toMatchObject({ passed: true, samples: 8, errors: 0, bytesChecked: 8 * 2500 });
        await rng.read(1000);
        const qs = await rng.admin.queues();
        expect(qs.map((q) => [q.vqIndex, q.role])).toEqual([
          [0xffff, QueueRole.CONTROL],
          [0, QueueRole.VIRTQUEUE],
          [1, QueueRole.ADMIN],
        ]);
        expect(qs[1]!.bytesIn).toBe(1000);
        // Only the INVALID_CLASS above: finding the admin queue (Get VQ Size probes) is not an error.
        const log = await rng.admin.errorLog();
        expect(log.entries.map((e) => [e.type, e.vqIndex, e.detail])).toEqual([[2, 1, 'admin 128/0: GENERIC INVALID_CLASS']]);
      } finally {
        await rng.close();
      }
    });

    it('EntropyDevice refuses a device that is not an entropy device', async () => {
      await expect(EntropyDevice.open(`${url}/disk`, opts)).rejects.toBeInstanceOf(VofConnectionError);
    });
  });
}
