import { readFileSync, statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BlkConfig,
  BlkFeature,
  BlkRequestType,
  BlockDevice,
  BlockIoError,
  VofError,
  encodeRequestHeader,
  encodeSegment,
} from '../../src/index.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { pattern } from '../helpers/pattern.js';
import { waitFor } from '../helpers/wait-for.js';

const MiB = 1024 * 1024;

/**
 * End-to-end virtio-blk behaviour over one transport. The same suite runs over TCP and RDMA so
 * the two can never drift apart: `listenUrl` picks the transport (tcp://127.0.0.1:0, rdma://…).
 */
export function blkEndToEndSuite(name: string, listenUrl: string, opts: { diskMiB?: number } = {}): void {
  describe(`virtio-blk end to end over ${name}`, () => {
    const diskSize = (opts.diskMiB ?? 8) * MiB;
    let fx: TargetFixture;
    let rwPath: string;
    let url: string;

    beforeAll(async () => {
      fx = new TargetFixture();
      rwPath = await fx.addDisk('disk', diskSize, { numQueues: 2, queueSize: 16, serial: 'vof-serial-01' });
      await fx.addDisk('ro', MiB, { readOnly: true, fill: (b) => b.fill(0x5a) });
      await fx.addDisk('acl', MiB, { allow: ['allowed'] });
      url = await fx.listen(listenUrl);
    });
    afterAll(async () => {
      await fx?.close();
    });

    it('write a pattern, flush, disconnect, reconnect, read it back', async () => {
      const data = pattern(3 * MiB + 4096, 1);
      const a = await BlockDevice.open(`${url}/disk`, { keepaliveIntervalMs: 0 });
      expect(a.capacity).toBe(diskSize);
      expect(a.numQueues).toBe(2);
      await a.write(MiB, data);
      await a.flush();
      await a.close();
      // On the backing file, byte for byte, and nothing outside the written range.
      const file = readFileSync(rwPath);
      expect(file.subarray(MiB, MiB + data.length).equals(data)).toBe(true);
      expect(file.subarray(0, MiB).every((x) => x === 0)).toBe(true);
      const b = await BlockDevice.open(`${url}/disk`, { keepaliveIntervalMs: 0 });
      expect((await b.read(MiB, data.length)).equals(data)).toBe(true);
      await b.close();
    });

    it('sizes from 512 B to 1 MiB, concurrently, spread over both queues', async () => {
      const d = await BlockDevice.open(`${url}/disk`, { keepaliveIntervalMs: 0 });
      try {
        const sizes = [512, 1024, 4096, 8192, 65536, 131072, 512 * 1024, MiB];
        const writes = sizes.map((s, i) => d.write(i * MiB, pattern(s, 100 + i)));
        expect(d.device.queues.map((q) => q.inFlight > 0)).toEqual([true, true]);
        await Promise.all(writes);
        const reads = await Promise.all(sizes.map((s, i) => d.read(i * MiB, s)));
        reads.forEach((r, i) => expect(r.equals(pattern(sizes[i]!, 100 + i))).toBe(true));
      } finally {
        await d.close();
      }
    });

    it('requests of many buffers: within the keyed-descriptor limit, and past it', async () => {
      const d = await BlockDevice.open(`${url}/disk`, { keepaliveIntervalMs: 0, maxQueues: 1 });
      try {
        // 20 and 40 data buffers of 16 KiB (large enough to be described one by one on RDMA)
        // plus header and status: 22 descriptors fit the target's 32, 42 do not.
        for (const [count, sector] of [[20, 4096n], [40, 8192n]] as const) {
          const pieces = Array.from({ length: count }, (_, i) => pattern(16384, 1000 * count + i));
          const status = Buffer.alloc(1, 0xff);
          await d.device.request(0, [encodeRequestHeader(BlkRequestType.OUT, sector), ...pieces], [status]);
          expect(status[0]).toBe(0);
          const back = Array.from({ length: count }, () => Buffer.alloc(16384));
          const st2 = Buffer.alloc(1, 0xff);
          await d.device.request(0, [encodeRequestHeader(BlkRequestType.IN, sector)], [...back, st2]);
          expect(st2[0]).toBe(0);
          expect(Buffer.concat(back).equals(Buffer.concat(pieces))).toBe(true);
        }
        // Many small buffers in both directions at once.
        const smalls = Array.from({ length: 64 }, (_, i) => pattern(512, 7000 + i));
        const st3 = Buffer.alloc(1, 0xff);
        await d.device.request(0, [encodeRequestHeader(BlkRequestType.OUT, 100n), ...smalls], [st3]);
        const into = Array.from({ length: 64 }, () => Buffer.alloc(512));
        const st4 = Buffer.alloc(1, 0xff);
        await d.device.request(0, [encodeRequestHeader(BlkRequestType.IN, 100n)], [...into, st4]);
        expect([st3[0], st4[0]]).toEqual([0, 0]);
        expect(Buffer.concat(into).equals(Buffer.concat(smalls))).toBe(true);
      } finally {
        await d.close();
      }
    });

    it('pipelines up to the queue size and queues the rest', async () => {
      const d = await BlockDevice.open(`${url}/disk`, { keepaliveIntervalMs: 0, queueSize: 4, maxQueues: 1 });
      try {
        expect(d.device.queues[0]!.queueSize).toBe(4);
        const all = Array.from({ length: 40 }, (_, i) => d.read(i * 4096, 4096));
        expect(d.device.queues[0]!.inFlight).toBe(4);
        await Promise.all(all);
      } finally {
        await d.close();
      }
    });

    it('write zeroes, discard, get id', async () => {
      const d = await BlockDevice.open(`${url}/disk`, { keepaliveIntervalMs: 0 });
      try {
        await d.write(0, pattern(65536, 9));
        await d.writeZeroes(4096, 8192);
        const back = await d.read(0, 65536);
        expect(back.subarray(4096, 12288).every((x) => x === 0)).toBe(true);
        expect(back.subarray(0, 4096).equals(pattern(65536, 9).subarray(0, 4096))).toBe(true);
        expect(back.subarray(12288).equals(pattern(65536, 9).subarray(12288))).toBe(true);
        await d.discard(0, 4096);
        expect(await d.getId()).toBe('vof-serial-01');
      } finally {
        await d.close();
      }
    });

    it('a request outside the capacity gets IOERR and leaves the file alone', async () => {
      const d = await BlockDevice.open(`${url}/disk`, { keepaliveIntervalMs: 0 });
      try {
        await expect(d.read(diskSize, 512)).rejects.toThrow(RangeError);
        const tailBefore = readFileSync(rwPath).subarray(diskSize - 512);
        // Bypass the client's own check: a raw request straddling the end.
        const status = Buffer.alloc(1, 0xff);
        const header = encodeRequestHeader(BlkRequestType.OUT, BigInt(diskSize / 512 - 1));
        await d.device.request(0, [header, Buffer.alloc(1024, 0xee)], [status]);
        expect(status[0]).toBe(1);
        const far = encodeRequestHeader(BlkRequestType.IN, 1n << 60n);
        const st2 = Buffer.alloc(1, 0xff);
        await d.device.request(0, [far], [Buffer.alloc(512), st2]);
        expect(st2[0]).toBe(1);
        expect(statSync(rwPath).size).toBe(diskSize);
        expect(readFileSync(rwPath).subarray(diskSize - 512).equals(tailBefore)).toBe(true);
      } finally {
        await d.close();
      }
    });

    it('WRITE_ZEROES and DISCARD straddling the end get IOERR and leave the file alone', async () => {
      const d = await BlockDevice.open(`${url}/disk`, { keepaliveIntervalMs: 0, maxQueues: 1 });
      try {
        const lastSectors = BigInt(diskSize / 512);
        const tail = pattern(2048, 77);
        await d.write(diskSize - tail.length, tail);
        const before = readFileSync(rwPath);
        const send = async (type: number, sector: bigint, sectors: number): Promise<number> => {
          const status = Buffer.alloc(1, 0xff);
          await d.device.request(0, [encodeRequestHeader(type, 0n), encodeSegment(sector, sectors, 0)], [status]);
          return status[0]!;
        };
        const cases: Array<[bigint, number]> = [
          [lastSectors - 1n, 2], // one sector in, one past the end
          [lastSectors - 4n, 5],
          [lastSectors, 1], // starts right at the end
          [0n, diskSize / 512 + 1], // covers the whole disk and one more
          [1n << 60n, 1], // far away
        ];
        for (const [sector, sectors] of cases) {
          expect([BlkRequestType.WRITE_ZEROES, sector, await send(BlkRequestType.WRITE_ZEROES, sector, sectors)]).toEqual([BlkRequestType.WRITE_ZEROES, sector, 1]);
          expect([BlkRequestType.DISCARD, sector, await send(BlkRequestType.DISCARD, sector, sectors)]).toEqual([BlkRequestType.DISCARD, sector, 1]);
        }
        // The same requests one sector shorter fit exactly and succeed: the boundary is exact.
        expect(await send(BlkRequestType.DISCARD, lastSectors - 1n, 1)).toBe(0);
        expect(statSync(rwPath).size).toBe(diskSize);
        expect(readFileSync(rwPath).equals(before)).toBe(true);
        expect(await send(BlkRequestType.WRITE_ZEROES, lastSectors - 1n, 1)).toBe(0);
        const after = readFileSync(rwPath);
        expect(after.subarray(diskSize - 512).every((x) => x === 0)).toBe(true);
        expect(after.subarray(diskSize - tail.length, diskSize - 512).equals(tail.subarray(0, tail.length - 512))).toBe(true);
      } finally {
        await d.close();
      }
    });

    it('DISCARD on the read-only export gets IOERR (virtio 5.2.6.2: a write request on an F_RO device)', async () => {
      const d = await BlockDevice.open(`${url}/ro`, { keepaliveIntervalMs: 0, maxQueues: 1 });
      try {
        expect(d.device.hasFeature(BlkFeature.DISCARD)).toBe(true);
        const err = await d.discard(0, 4096).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(BlockIoError);
        expect((err as BlockIoError).status).toBe(1);
        const status = Buffer.alloc(1, 0xff);
        await d.device.request(0, [encodeRequestHeader(BlkRequestType.DISCARD, 0n), encodeSegment(0n, 8, 0)], [status]);
        expect(status[0]).toBe(1);
        expect((await d.read(0, 4096)).every((x) => x === 0x5a)).toBe(true);
      } finally {
        await d.close();
      }
    });

    it('read(offset, buffer) fills the caller\'s buffer and returns that same object', async () => {
      const d = await BlockDevice.open(`${url}/disk`, { keepaliveIntervalMs: 0 });
      try {
        const data = pattern(MiB + 64 * 1024, 31); // more than one request's worth (1 MiB)
        await d.write(2 * MiB, data);
        // A view into a larger allocation, with guard bytes on both sides.
        const backing = Buffer.alloc(data.length + 1024, 0xcc);
        const into = backing.subarray(512, 512 + data.length);
        const got = await d.read(2 * MiB, into);
        expect(got).toBe(into);
        expect(into.equals(data)).toBe(true);
        expect(backing.subarray(0, 512).every((x) => x === 0xcc)).toBe(true);
        expect(backing.subarray(512 + data.length).every((x) => x === 0xcc)).toBe(true);
        // A plain buffer, one sector.
        const one = Buffer.alloc(512, 0xff);
        expect(await d.read(2 * MiB + 512, one)).toBe(one);
        expect(one.equals(data.subarray(512, 1024))).toBe(true);
      } finally {
        await d.close();
      }
    });

    it('a read-only export refuses writes with IOERR and serves reads', async () => {
      const d = await BlockDevice.open(`${url}/ro`, { keepaliveIntervalMs: 0 });
      try {
        expect(d.readOnly).toBe(true);
        expect(d.device.hasFeature(BlkFeature.RO)).toBe(true);
        expect((await d.read(0, 512)).every((x) => x === 0x5a)).toBe(true);
        const err = await d.write(0, Buffer.alloc(512)).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(BlockIoError);
        expect((err as BlockIoError).statusName).toBe('IOERR');
        await expect(d.writeZeroes(0, 512)).rejects.toThrow(/IOERR/);
      } finally {
        await d.close();
      }
    });

    it('config change: event on a writeback change, re-armed by reading the config', async () => {
      const d = await BlockDevice.open(`${url}/disk`, { keepaliveIntervalMs: 0 });
      try {
        const g0 = (await d.device.getConfig(BlkConfig.writeback, 1)).generation;
        const event = new Promise<number>((r) => d.device.once('configChange', r));
        await d.device.setConfig(BlkConfig.writeback, 1, 0);
        expect(await event).toBe(g0 + 1);
        const now = await d.device.getConfig(BlkConfig.writeback, 1);
        expect([now.value, now.generation]).toEqual([0n, g0 + 1]);
        await d.device.setConfig(BlkConfig.writeback, 1, 1);
      } finally {
        await d.close();
      }
    });

    it('errors are typed and carry the status name', async () => {
      const err = await BlockDevice.open(`${url}/acl`, { keepaliveIntervalMs: 0, ivqn: 'stranger' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VofError);
      expect(String(err)).toMatch(/^VofError: EACLREJECTED \(0x1003\) on Connect/);
      const ok = await BlockDevice.open(`${url}/acl`, { keepaliveIntervalMs: 0, ivqn: 'allowed' });
      await ok.close();
      // An unknown TVQN looks exactly like a refused one: exports cannot be listed by probing.
      await expect(BlockDevice.open(`${url}/missing`, { keepaliveIntervalMs: 0 })).rejects.toThrow(/EACLREJECTED \(0x1003\)/);
    });

    it('closing the device releases its instance on the target', async () => {
      const before = fx.target.instanceCount;
      const d = await BlockDevice.open(`${url}/disk`, { keepaliveIntervalMs: 0 });
      expect(d.numQueues).toBe(2);
      const instance = d.device.instanceId;
      expect(fx.target.instanceCount).toBe(before + 1);
      expect(fx.logged(new RegExp(`instance ${instance} created`))).toBe(true);
      await d.read(0, 512);
      await d.close();
      await waitFor('the instance to go', () => fx.target.instanceCount === before, 1000, 10);
      expect(fx.target.instanceCount).toBe(before);
      // Every queue said Disconnect before its connection went away: the target logs
      // "<queue> of instance N closed" only for a connection that closed while still bound.
      await new Promise((r) => setTimeout(r, 50));
      const unclean = new RegExp(`(control queue|virtqueue \\d+) of instance ${instance} closed`);
      expect(fx.logs.filter((l) => unclean.test(l.msg))).toEqual([]);
    });
  });
}
