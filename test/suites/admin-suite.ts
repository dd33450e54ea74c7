import { truncateSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AdminBlkStatus,
  AdminClass,
  AdminError,
  AdminGenericStatus,
  AdminStatusType,
  AdminTransportStatus,
  BlkConfig,
  BlkRequestType,
  BlockDevice,
  EntropyExport,
  ErrorLogEntryType,
  Opcode,
  QueueRole,
  QueueTransport,
  RemoteDevice,
  VIRTIO_F_ADMIN_VQ,
  VofConnectionError,
  encodeAdminCommand,
  encodeRequestHeader,
  type DeviceExport,
  type DeviceModel,
} from '../../src/index.js';
import { TargetFixture } from '../helpers/target-fixture.js';

const MiB = 1024 * 1024;
const opts = { keepaliveIntervalMs: 0 };
/** The IVQN RemoteDevice and BlockDevice use when none is given. */
const DEFAULT_IVQN = 'vof-initiator';

async function adminFailure(p: Promise<unknown>): Promise<AdminError> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(AdminError);
  return err as AdminError;
}

/** An rng export whose instances add a vendor command that throws: DEVICE_INTERNAL_ERR. */
function faultyExport(): DeviceExport {
  const rng = new EntropyExport();
  return {
    description: 'faulty admin device',
    close: () => rng.close(),
    createInstance(): DeviceModel {
      const inst = rng.createInstance();
      return new Proxy(inst, {
        get(t, p) {
          if (p === 'admin') {
            return {
              register: (c: import('../../src/index.js').AdminCommandSet) =>
                c.add(AdminClass.VOF, 0x80, () => {
                  throw new Error('simulated device fault');
                }),
            };
          }
          const v = Reflect.get(t, p) as unknown;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
        },
      });
    },
  };
}

/**
 * The Admin Virtqueue over one transport (tcp://127.0.0.1:0 or rdma://…): every command of
 * every class and every generic status, as a real initiator sees them.
 */
export function adminSuite(name: string, listenUrl: string): void {
  describe(`admin virtqueue over ${name}`, () => {
    let fx: TargetFixture;
    let url: string;
    let truncPath: string;

    beforeAll(async () => {
      fx = new TargetFixture();
      // The library's default IVQN holds the admin grant: these tests format, clear logs and
      // reset counters (admin-privilege.test.ts covers initiators without it).
      const admin = [DEFAULT_IVQN];
      await fx.addDisk('disk', 8 * MiB, { numQueues: 2, queueSize: 16, admin });
      await fx.addDisk('fmt', 4 * MiB, { numQueues: 1, admin });
      await fx.addDisk('ro', MiB, { readOnly: true, admin });
      await fx.addDisk('log', MiB, { numQueues: 1, admin });
      truncPath = await fx.addDisk('trunc', 2 * MiB, { numQueues: 1, admin });
      fx.target.addExport('faulty', faultyExport());
      url = await fx.listen(listenUrl);
    });
    afterAll(async () => {
      await fx?.close();
    });

    it('VIRTIO_F_ADMIN_VQ (bit 40) is offered; the admin queue is index num_queues and Get VQ Size answers for it', async () => {
      const d = await BlockDevice.open(`${url}/disk`, opts);
      try {
        expect(d.device.deviceFeatures & (1n << VIRTIO_F_ADMIN_VQ)).not.toBe(0n);
        expect(d.device.hasFeature(VIRTIO_F_ADMIN_VQ)).toBe(true);
        const size = await d.device.command({ opcode: Opcode.GetVqSize, vqIndex: 2 });
        expect(size.kind === 'vqSize' && size.size).toBe(16);
        await expect(d.device.command({ opcode: Opcode.GetVqSize, vqIndex: 3 })).rejects.toMatchObject({ statusName: 'EQUEUEQUOT' });
        // Normal queues keep their indexes and sizes.
        const q0 = await d.device.command({ opcode: Opcode.GetVqSize, vqIndex: 0 });
        expect(q0.kind === 'vqSize' && q0.size).toBe(16);
        await d.admin.listCommands();
        expect(d.device.adminQueueIndex).toBe(2);
      } finally {
        await d.close();
      }
    });

    it('without VIRTIO_F_ADMIN_VQ there is no admin queue', async () => {
      const d = await BlockDevice.open(`${url}/disk`, { ...opts, negotiateFeatures: (f) => f & ~(1n << VIRTIO_F_ADMIN_VQ) });
      try {
        await expect(d.device.command({ opcode: Opcode.GetVqSize, vqIndex: 2 })).rejects.toMatchObject({ statusName: 'EQUEUEQUOT' });
        await expect(d.admin.listCommands()).rejects.toBeInstanceOf(VofConnectionError);
        // I/O is unaffected.
        await d.write(0, Buffer.alloc(4096, 1));
      } finally {
        await d.close();
      }
    });

    it('common LIST_COMMANDS lists every class and command of a virtio-blk device', async () => {
      const d = await BlockDevice.open(`${url}/disk`, opts);
      try {
        expect(await d.admin.listCommands()).toEqual([
          { cls: 0, command: 0 },
          { cls: 0, command: 1 },
          { cls: 0, command: 2 },
          { cls: 64, command: 0 },
          { cls: 128, command: 0 },
          { cls: 128, command: 1 },
          { cls: 192, command: 0 },
          { cls: 192, command: 1 },
        ]);
      } finally {
        await d.close();
      }
    });

    it('generic statuses: INVALID_CLASS, INVALID_COMMAND, DATA_TRANSFER_ERR (short, malformed, small buffer), DEVICE_INTERNAL_ERR, ERR', async () => {
      const d = await BlockDevice.open(`${url}/disk`, opts);
      try {
        const a = d.admin;
        const generic = (status: number) => ({ statusType: AdminStatusType.GENERIC, status });
        // Classes the device does not serve, in each range.
        for (const cls of [1, 65, 129, 200]) {
          expect(await a.raw(cls, 0)).toMatchObject(generic(AdminGenericStatus.INVALID_CLASS));
        }
        expect(await a.raw(AdminClass.COMMON, 99)).toMatchObject(generic(AdminGenericStatus.INVALID_COMMAND));
        expect(await a.raw(AdminClass.BLK, 2)).toMatchObject(generic(AdminGenericStatus.INVALID_COMMAND));
        // Malformed data: READ_ERROR_LOG takes 4 bytes; FORMAT 8; LIST_COMMANDS none.
        expect(await a.raw(AdminClass.COMMON, 1, Buffer.alloc(3))).toMatchObject(generic(AdminGenericStatus.DATA_TRANSFER_ERR));
        expect(await a.raw(AdminClass.BLK, 1, Buffer.alloc(4))).toMatchObject(generic(AdminGenericStatus.DATA_TRANSFER_ERR));
        expect(await a.raw(AdminClass.COMMON, 0, Buffer.alloc(1))).toMatchObject(generic(AdminGenericStatus.DATA_TRANSFER_ERR));
        // Short: one byte cannot hold class and command. The status ends the writable part.
        const short = await a.sendRaw(Buffer.from([0]), 8);
        expect(short.length).toBe(8);
        expect([short[6], short[7]]).toEqual([AdminStatusType.GENERIC, AdminGenericStatus.DATA_TRANSFER_ERR]);
        // Result buffer too small: 8 commands need 4 + 16 bytes; the device says so in le32.
        const small = await a.raw(AdminClass.COMMON, 0, Buffer.alloc(0), 8);
        expect(small).toMatchObject(generic(AdminGenericStatus.DATA_TRANSFER_ERR));
        expect(small.result.readUInt32LE(0)).toBe(20);
        // Over 64 KiB of device-writable room: refused like any oversized VQ command.
        await expect(a.sendRaw(encodeAdminCommand({ cls: 0, command: 0, data: Buffer.alloc(0) }), 65537)).rejects.toMatchObject({ statusName: 'EINVQBUF' });
        // Writable part shorter than the status: nothing written at all.
        expect((await a.sendRaw(encodeAdminCommand({ cls: 0, command: 0, data: Buffer.alloc(0) }), 1)).length).toBe(0);
        // A second health test while one runs: ERR (valid command, cannot run now). 5000 block
        // reads keep the first one running while the second arrives, and stay well inside the
        // target's 15 s keepalive timeout in the slow RDMA VM (this initiator sends no keepalives).
        const results = await Promise.all([a.raw(AdminClass.COMMON, 2, u32(5000), 64), a.raw(AdminClass.COMMON, 2, u32(5000), 64)]);
        expect(results.map((r) => r.status).sort()).toEqual([AdminGenericStatus.OK, AdminGenericStatus.ERR]);
        const err = await adminFailure(Promise.all([a.healthTest(5000), a.healthTest(5000)]));
        expect(err.statusName).toBe('ERR');
        // The OK status in full: type GENERIC, status OK, the result before it.
        const ok = await a.raw(AdminClass.COMMON, 0);
        expect(ok).toMatchObject(generic(AdminGenericStatus.OK));
      } finally {
        await d.close();
      }
      // A handler that throws: DEVICE_INTERNAL_ERR, and the target logs it.
      const f = await RemoteDevice.connect(`${url}/faulty`, { ...opts, queueCount: () => 1 });
      try {
        expect(await f.admin.raw(AdminClass.VOF, 0x80)).toMatchObject({ statusType: 0, status: AdminGenericStatus.DEVICE_INTERNAL_ERR });
        expect(fx.logged(/simulated device fault/)).toBe(true);
        expect((await f.admin.listCommands()).length).toBe(6);
      } finally {
        await f.close();
      }
    });

    it('common READ_ERROR_LOG: I/O errors, refused commands, resets, config changes; newest first, bounded, lost entries', async () => {
      const d = await BlockDevice.open(`${url}/log`, opts);
      try {
        await d.admin.clearErrorLog();
        const before = Date.now();
        // An I/O error: a read past the capacity (the library would refuse it, so raw).
        const status = Buffer.alloc(1, 0xff);
        await d.device.request(0, [encodeRequestHeader(BlkRequestType.IN, BigInt(MiB / 512))], [Buffer.alloc(512), status]);
        expect(status[0]).toBe(1);
        // A refused control command: Get Config past the config space.
        await expect(d.device.getConfig(BlkConfig.SIZE, 8)).rejects.toMatchObject({ statusName: 'ECONFOFF' });
        // A refused admin command.
        await d.admin.raw(AdminClass.COMMON, 77);
        const log = await d.admin.errorLog();
        expect(log.lost).toBe(0);
        expect(log.entries.map((e) => e.type)).toEqual([ErrorLogEntryType.REFUSED_COMMAND, ErrorLogEntryType.REFUSED_COMMAND, ErrorLogEntryType.IO_ERROR]);
        expect(log.entries[0]!.detail).toMatch(/admin 0\/77: GENERIC INVALID_COMMAND/);
        expect(log.entries[1]!.detail).toMatch(/ECONFOFF/);
        expect(log.entries[1]!.status).toBe(0x2030);
        expect(log.entries[2]!).toMatchObject({ vqIndex: 0, status: 1, instanceId: d.device.instanceId });
        expect(log.entries[2]!.detail).toMatch(/IN sector 2048: IOERR/);
        for (const e of log.entries) expect(e.timestampMs).toBeGreaterThanOrEqual(before - 1000);
        const ts = log.entries.map((e) => e.timestampMs);
        expect(ts).toEqual([...ts].sort((x, y) => y - x));
        // skip / max page through it.
        expect((await d.admin.errorLog({ skip: 1, max: 1 })).entries.map((e) => e.type)).toEqual([ErrorLogEntryType.REFUSED_COMMAND]);
        // Bounded: 300 more refusals keep 256 entries and count the rest as lost.
        await Promise.all(Array.from({ length: 300 }, () => d.device.setConfig(0, 8, 0).catch(() => {})));
        const full = await d.admin.errorLog({ max: 256 });
        expect(full.total).toBe(256);
        expect(full.entries.length).toBe(256);
        expect(full.lost).toBe(300 + 3 - 256);
      } finally {
        await d.close();
      }
      // A reset of a live device and a config change (another driver's writeback write).
      const a = await BlockDevice.open(`${url}/log`, opts);
      const b = await RemoteDevice.connect(`${url}/log`, { ...opts, queueCount: () => 0 });
      try {
        await a.admin.clearErrorLog();
        await a.device.setConfig(BlkConfig.writeback, 1, 0);
        await b.command({ opcode: Opcode.ResetDevice });
        const log = await a.admin.errorLog();
        expect(log.entries.map((e) => e.type)).toEqual([ErrorLogEntryType.RESET, ErrorLogEntryType.CONFIG_CHANGE]);
        expect(log.entries[0]!.instanceId).toBe(b.instanceId);
      } finally {
        await b.close();
        await a.device.setConfig(BlkConfig.writeback, 1, 1);
        await a.close();
      }
    });

    it('common HEALTH_TEST: passes on a healthy backing file, fails on a truncated one', async () => {
      const d = await BlockDevice.open(`${url}/trunc`, opts);
      try {
        const healthy = await d.admin.healthTest();
        expect(healthy).toMatchObject({ passed: true, samples: 64, errors: 0, bytesChecked: 64 * 512, firstError: null });
        const more = await d.admin.healthTest(500);
        expect(more).toMatchObject({ passed: true, samples: 500, errors: 0 });
        await d.admin.clearErrorLog();
        truncateSync(truncPath, MiB);
        const bad = await d.admin.healthTest(200);
        expect(bad.passed).toBe(false);
        expect(bad.samples).toBe(200);
        expect(bad.errors).toBeGreaterThanOrEqual(1);
        expect(bad.firstError).not.toBeNull();
        expect(bad.firstError! >= BigInt(MiB)).toBe(true);
        expect(bad.bytesChecked).toBe((200 - bad.errors) * 512);
        const log = await d.admin.errorLog();
        expect(log.entries[0]!.type).toBe(ErrorLogEntryType.HEALTH_TEST_FAILED);
      } finally {
        await d.close();
      }
    });

    it('transport LIST_QUEUES: transport, peer, size, in-flight and counters per queue; vendor RESET_COUNTERS', async () => {
      const d = await BlockDevice.open(`${url}/disk`, opts);
      try {
        for (let i = 0; i < 4; i++) await d.write(i * 4096, Buffer.alloc(4096, i));
        await expect(d.read(8 * MiB, 512)).rejects.toBeInstanceOf(RangeError);
        const st = Buffer.alloc(1, 0xff);
        await d.device.request(1, [encodeRequestHeader(BlkRequestType.IN, BigInt((8 * MiB) / 512))], [Buffer.alloc(512), st]);
        expect(st[0]).toBe(1);
        const qs = await d.admin.queues();
        const kind = name === 'TCP' ? QueueTransport.TCP : QueueTransport.RDMA;
        expect(qs.map((q) => [q.vqIndex, q.role, q.transport])).toEqual([
          [0xffff, QueueRole.CONTROL, kind],
          [0, QueueRole.VIRTQUEUE, kind],
          [1, QueueRole.VIRTQUEUE, kind],
          [2, QueueRole.ADMIN, kind],
        ]);
        expect(qs.map((q) => q.queueSize)).toEqual([32, 16, 16, 16]);
        for (const q of qs) expect(q.peer).toMatch(name === 'TCP' ? /^tcp:\/\/127\.0\.0\.1:\d+$/ : /^rdma:\/\//);
        const vqs = qs.filter((q) => q.role === QueueRole.VIRTQUEUE);
        // 4 writes and the failed read, each with a Connect on its queue.
        expect(vqs.reduce((s, q) => s + q.commands, 0)).toBe(5 + 2);
        expect(vqs.reduce((s, q) => s + q.bytesOut, 0)).toBe(4 * (16 + 4096) + 16);
        expect(vqs.reduce((s, q) => s + q.bytesIn, 0)).toBe(4 * 1 + 513);
        expect(qs[2]!.errors).toBe(1);
        expect(qs[3]!.inFlight).toBe(1); // the LIST_QUEUES itself
        await d.admin.resetCounters();
        const after = await d.admin.queues();
        for (const q of after.slice(0, 3)) expect([q.commands, q.bytesOut, q.bytesIn, q.errors]).toEqual([0, 0, 0, 0]);
        expect(after[3]!.commands).toBe(1);
      } finally {
        await d.close();
      }
    });

    it('export-wide commands without the admin grant: TRANSPORT_SPECIFIC ACL_REJECTED; the log shows only the own instance', async () => {
      const granted = await BlockDevice.open(`${url}/fmt`, opts);
      await granted.admin.raw(AdminClass.COMMON, 77); // an entry of another instance
      const d = await BlockDevice.open(`${url}/fmt`, { ...opts, ivqn: 'not-granted' });
      try {
        const refused = { statusType: AdminStatusType.TRANSPORT_SPECIFIC, status: AdminTransportStatus.ACL_REJECTED };
        expect(await d.admin.raw(AdminClass.BLK, 1, Buffer.from([0, 16, 0, 0, 0, 0, 0, 0]))).toMatchObject(refused);
        expect(await d.admin.raw(AdminClass.VOF, 0)).toMatchObject(refused);
        expect(await d.admin.raw(AdminClass.VOF, 1)).toMatchObject(refused);
        expect(await d.admin.formats()).toMatchObject({ current: 0 });
        const log = await d.admin.errorLog();
        expect(log.entries.map((e) => e.instanceId)).toEqual([d.device.instanceId, d.device.instanceId, d.device.instanceId]);
      } finally {
        await d.close();
        await granted.close();
      }
    });

    it('virtio-blk LIST_FORMATS and FORMAT to 4096: blk_size, alignment, a Config Change; refusals with class-specific statuses', async () => {
      const d = await BlockDevice.open(`${url}/fmt`, opts);
      try {
        const list = await d.admin.formats();
        expect(list).toEqual({
          current: 0,
          formats: [
            { blockSize: 512, metadataBytes: 0, supported: true },
            { blockSize: 512, metadataBytes: 8, supported: false },
            { blockSize: 4096, metadataBytes: 0, supported: true },
            { blockSize: 4096, metadataBytes: 8, supported: false },
          ],
        });
        for (const [size, pi] of [[4096, 8], [512, 8], [1024, 0]] as const) {
          const e = await adminFailure(d.admin.format(size, pi));
          expect([e.statusType, e.status, e.statusName]).toEqual([AdminStatusType.CLASS_SPECIFIC, AdminBlkStatus.FORMAT_UNSUPPORTED, 'FORMAT_UNSUPPORTED']);
        }
        // Another instance of the export: refused.
        const other = await RemoteDevice.connect(`${url}/fmt`, { ...opts, queueCount: () => 0 });
        const busy = await adminFailure(d.admin.format(4096));
        expect([busy.statusType, busy.status, busy.statusName]).toEqual([AdminStatusType.CLASS_SPECIFIC, AdminBlkStatus.EXPORT_IN_USE, 'EXPORT_IN_USE']);
        await other.close();

        await d.write(0, Buffer.alloc(8192, 0xab));
        const change = new Promise<number>((r) => d.device.once('configChange', r));
        await d.admin.format(4096);
        await change;
        await d.refreshConfig();
        expect(d.blockSize).toBe(4096);
        expect(Number((await d.device.getConfig(BlkConfig.blk_size, 4)).value)).toBe(4096);
        expect((await d.admin.formats()).current).toBe(2);
        // I/O in whole 4096-byte blocks works; the data survived the format.
        expect((await d.read(0, 8192)).every((x) => x === 0xab)).toBe(true);
        await d.write(4096, Buffer.alloc(4096, 0xcd));
        expect((await d.read(4096, 4096)).every((x) => x === 0xcd)).toBe(true);
        // 512-byte granularity is refused by the library, and by the device when sent raw.
        await expect(d.read(512, 512)).rejects.toThrow(/block size 4096/);
        const st = Buffer.alloc(1, 0xff);
        await d.device.request(0, [encodeRequestHeader(BlkRequestType.IN, 1n)], [Buffer.alloc(4096), st]);
        expect(st[0]).toBe(1);
        const st2 = Buffer.alloc(1, 0xff);
        await d.device.request(0, [encodeRequestHeader(BlkRequestType.IN, 8n)], [Buffer.alloc(512), st2]);
        expect(st2[0]).toBe(1);
        await expect(d.writeZeroes(0, 4096)).resolves.toBeUndefined();
        // And back to 512.
        await d.admin.format(512);
        await d.refreshConfig();
        expect(d.blockSize).toBe(512);
        await d.read(512, 512);
      } finally {
        await d.close();
      }
      const ro = await BlockDevice.open(`${url}/ro`, opts);
      try {
        const e = await adminFailure(ro.admin.format(4096));
        expect([e.statusType, e.status, e.statusName]).toEqual([AdminStatusType.CLASS_SPECIFIC, AdminBlkStatus.READ_ONLY, 'READ_ONLY']);
        await expect(ro.read(0, 512)).resolves.toBeInstanceOf(Buffer);
      } finally {
        await ro.close();
      }
    });
  });
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}
