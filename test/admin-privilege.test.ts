import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AdminError,
  AdminStatusType,
  AdminTransportStatus,
  BlkConfig,
  BlkRequestType,
  BlockDevice,
  ErrorLogEntryType,
  Opcode,
  RemoteDevice,
  encodeRequestHeader,
  parsePskFile,
} from '../src/index.js';
import { startTarget, type StartedTarget } from '../scripts/start-target.mjs';
import { DeviceErrorLog } from '../src/target/admin/error-log.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { vofAsync } from './helpers/vof-cli.js';

/**
 * Issue 17, finding 4: no privilege separation on the admin queue. Any initiator admitted to an
 * export could FORMAT it, clear the shared error log, reset counters, and read other tenants'
 * IVQNs, instance ids and peer addresses from the log. Now export-wide commands need the
 * export's admin grant (proved like an allow entry) and an instance reads only its own entries.
 */

const MiB = 1024 * 1024;
const quiet = { keepaliveIntervalMs: 0 };
const DIR = join(import.meta.dirname, 'fixtures/tls');
const pem = (name: string) => readFileSync(join(DIR, name));
const PSKS = parsePskFile(readFileSync(join(DIR, 'psk.txt'), 'utf8'));
const psk = (identity: string) => ({ psk: { identity, key: PSKS.get(identity)! } });

async function adminRefusal(p: Promise<unknown>): Promise<[number, number, string]> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(AdminError);
  const e = err as AdminError;
  return [e.statusType, e.status, e.statusName];
}
const ACL_REJECTED: [number, number, string] = [AdminStatusType.TRANSPORT_SPECIFIC, AdminTransportStatus.ACL_REJECTED, 'ACL_REJECTED'];

/** A read past the end: VIRTIO_BLK_S_IOERR, one IO_ERROR entry of the reading instance. */
async function ioError(d: BlockDevice, capacity: number): Promise<void> {
  const status = Buffer.alloc(1, 0xff);
  await d.device.request(0, [encodeRequestHeader(BlkRequestType.IN, BigInt(capacity / 512))], [Buffer.alloc(512), status]);
  expect(status[0]).toBe(1);
}

async function blkSize(d: BlockDevice): Promise<number> {
  return Number((await d.device.getConfig(BlkConfig.blk_size, 4)).value);
}

describe('admin privilege separation between two initiators of one export (no grants)', () => {
  let fx: TargetFixture;
  beforeAll(async () => {
    fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 } });
    await fx.addDisk('shared', MiB, { numQueues: 1 });
    await fx.addDisk('tenants', MiB, { numQueues: 1 });
    await fx.listen();
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('B cannot FORMAT, clear the error log or reset counters: TRANSPORT_SPECIFIC ACL_REJECTED, nothing changes', async () => {
    const b = await BlockDevice.open(`${fx.url}/shared`, { ivqn: 'tenant-b', ...quiet });
    const a = await BlockDevice.open(`${fx.url}/shared`, { ivqn: 'tenant-a', ...quiet }).catch(async (e: unknown) => {
      await b.close();
      throw e;
    });
    try {
      await a.close();
      // B alone on the export: the one case the device would otherwise let FORMAT through.
      expect(await adminRefusal(b.admin.format(4096))).toEqual(ACL_REJECTED);
      expect(await blkSize(b)).toBe(512);
      expect((await b.admin.formats()).current).toBe(0);
      // The refusal is the same whatever the data says: no hint about the export's state.
      expect(await adminRefusal(b.admin.format(4096, 8))).toEqual(ACL_REJECTED);

      const a2 = await BlockDevice.open(`${fx.url}/shared`, { ivqn: 'tenant-a', ...quiet });
      try {
        await ioError(a2, MiB);
        expect(await adminRefusal(b.admin.clearErrorLog())).toEqual(ACL_REJECTED);
        const aLog = await a2.admin.errorLog();
        expect(aLog.entries.map((e) => [e.type, e.instanceId])).toEqual([[ErrorLogEntryType.IO_ERROR, a2.device.instanceId]]);
      } finally {
        await a2.close();
      }

      await b.write(0, Buffer.alloc(4096, 7));
      const before = await b.admin.queues();
      expect(await adminRefusal(b.admin.resetCounters())).toEqual(ACL_REJECTED);
      const after = await b.admin.queues();
      // The virtqueue's counters survived (the admin queue's own went up by the two commands).
      expect(after[1]!.commands).toBe(before[1]!.commands);
      expect(after[1]!.bytesOut).toBe(before[1]!.bytesOut);
      expect(after[1]!.commands).toBeGreaterThan(0);

      // B's own log records its refusals; the operator's log says what is missing.
      const own = await b.admin.errorLog();
      expect(own.entries.filter((e) => e.type === ErrorLogEntryType.REFUSED_COMMAND).map((e) => e.detail)).toEqual([
        'admin 192/0: TRANSPORT_SPECIFIC ACL_REJECTED',
        'admin 192/1: TRANSPORT_SPECIFIC ACL_REJECTED',
        'admin 128/1: TRANSPORT_SPECIFIC ACL_REJECTED',
        'admin 128/1: TRANSPORT_SPECIFIC ACL_REJECTED',
      ]);
      expect(fx.logged(/"tenant-b" → "shared"\): admin device FORMAT refused: no admin grant on the export for this IVQN \(no identity\) \(vof target --admin\)$/)).toBe(true);
    } finally {
      await b.close();
    }
  });

  it("B's error log and LIST_QUEUES show only B's instance: not A's IVQN, instance id or peer address", async () => {
    const a = await BlockDevice.open(`${fx.url}/tenants`, { ivqn: 'tenant-a-secret', ...quiet });
    const b = await BlockDevice.open(`${fx.url}/tenants`, { ivqn: 'tenant-b', ...quiet });
    const aRaw = await RemoteDevice.connect(`${fx.url}/tenants`, { ivqn: 'tenant-a-secret', queueCount: () => 0, ...quiet });
    try {
      // A leaves traces of every kind: an I/O error, a refused command, a reset naming its IVQN.
      await ioError(a, MiB);
      await expect(a.device.getConfig(BlkConfig.SIZE, 8)).rejects.toMatchObject({ statusName: 'ECONFOFF' });
      await aRaw.command({ opcode: Opcode.ResetDevice });
      // B one of its own.
      await ioError(b, MiB);

      const aIds = [a.device.instanceId, aRaw.instanceId];
      const bLog = await b.admin.errorLog();
      expect(bLog.entries.map((e) => [e.type, e.instanceId])).toEqual([[ErrorLogEntryType.IO_ERROR, b.device.instanceId]]);
      expect([bLog.total, bLog.lost]).toEqual([1, 0]);
      const shown = JSON.stringify(bLog.entries);
      expect(shown).not.toContain('tenant-a-secret');
      for (const e of bLog.entries) expect(aIds).not.toContain(e.instanceId);
      // A still reads its own entries (per instance: aRaw's reset is aRaw's).
      expect((await a.admin.errorLog()).entries.map((e) => e.type)).toEqual([ErrorLogEntryType.REFUSED_COMMAND, ErrorLogEntryType.IO_ERROR]);

      const aPeers = new Set((await a.admin.queues()).map((q) => q.peer));
      const bQueues = await b.admin.queues();
      expect(bQueues.length).toBe(3); // control, virtqueue 0, admin queue: B's own
      for (const q of bQueues) expect(aPeers.has(q.peer)).toBe(false);
    } finally {
      await aRaw.close();
      await b.close();
      await a.close();
    }
  });
});

describe('the error log keeps each instance\'s entries apart', () => {
  it('by owner, not by wire instance id: a reused id sees nothing of the old instance; lost counts per owner', () => {
    const log = new DeviceErrorLog(4);
    const entry = (detail: string) => ({ type: ErrorLogEntryType.IO_ERROR, detail, vqIndex: 0, instanceId: 7, status: 1 });
    const a = log.newOwner();
    log.record(entry('a1'), a);
    log.record(entry('a2'), a);
    log.forget(a); // A's instance (id 7) is gone; B's new instance draws id 7 again
    const b = log.newOwner();
    expect(log.page(0, 0, b)).toEqual({ total: 0, lost: 0, entries: [] });
    for (const d of ['b1', 'b2', 'b3']) log.record(entry(d), b);
    // Capacity 4: a1 was dropped; it counts for the whole log, not for B.
    expect(log.page(0, 0, b)).toMatchObject({ total: 3, lost: 0 });
    expect(log.page(0, 0, b).entries.map((e) => e.detail)).toEqual(['b3', 'b2', 'b1']);
    expect(log.page(0, 0)).toMatchObject({ total: 4, lost: 1 });
    log.record(entry('b4'), b);
    log.record(entry('b5'), b);
    expect(log.page(0, 0, b)).toMatchObject({ total: 4, lost: 1 });
    expect(log.page(1, 2, b).entries.map((e) => e.detail)).toEqual(['b4', 'b3']);
    log.clear();
    expect(log.page(0, 0, b)).toEqual({ total: 0, lost: 0, entries: [] });
    expect(log.page(0, 0)).toEqual({ total: 0, lost: 0, entries: [] });
  });
});

describe('admin grants proved like allow entries: a TLS identity-bound grant', () => {
  let fx: TargetFixture;
  let tlsUrl: string;
  let tcpUrl: string;
  beforeAll(async () => {
    fx = new TargetFixture({
      keepalive: { intervalMs: 60000, timeoutMs: 120000 },
      tls: { cert: pem('target.crt'), key: pem('target.key'), ca: pem('ca.crt'), psk: PSKS },
    });
    await fx.addDisk('bound', MiB, { numQueues: 1, admin: [{ ivqn: 'host-b', identity: 'id-b' }] });
    tlsUrl = await fx.target.listen('tls://127.0.0.1:0');
    tcpUrl = await fx.target.listen('tcp://127.0.0.1:0');
  });
  afterAll(async () => {
    await fx?.close();
  });

  it('host-b with identity id-a, or over plain TCP, is refused; with id-b it formats and reads the whole log', async () => {
    const tenant = await BlockDevice.open(`${tlsUrl}/bound`, { ivqn: 'tenant-a', tls: psk('id-a'), ...quiet });
    await ioError(tenant, MiB);
    await tenant.close();
    for (const [url, tls] of [[tlsUrl, psk('id-a')], [tcpUrl, undefined]] as const) {
      const wrong = await BlockDevice.open(`${url}/bound`, { ivqn: 'host-b', ...(tls && { tls }), ...quiet });
      try {
        expect(await adminRefusal(wrong.admin.format(4096))).toEqual(ACL_REJECTED);
        expect(await adminRefusal(wrong.admin.clearErrorLog())).toEqual(ACL_REJECTED);
        expect(await blkSize(wrong)).toBe(512);
      } finally {
        await wrong.close();
      }
    }
    expect(fx.logged(/"host-b" → "bound"\): admin device FORMAT refused: no admin grant on the export for this IVQN with identity "id-a"/)).toBe(true);

    const granted = await BlockDevice.open(`${tlsUrl}/bound`, { ivqn: 'host-b', tls: psk('id-b'), ...quiet });
    try {
      // The whole export's log: the other tenant's I/O error and the refusals above included.
      const all = await granted.admin.errorLog();
      expect(all.entries.some((e) => e.type === ErrorLogEntryType.IO_ERROR)).toBe(true);
      expect(all.entries.filter((e) => e.detail.includes('ACL_REJECTED')).length).toBe(4);
      await granted.admin.format(4096);
      await granted.refreshConfig();
      expect(granted.blockSize).toBe(4096);
      await granted.admin.format(512);
      await granted.admin.resetCounters();
      await granted.admin.clearErrorLog();
      expect((await granted.admin.errorLog()).total).toBe(0);
    } finally {
      await granted.close();
    }
  });
});

describe('vof target --admin and "admin" in --config; vof admin names --admin when refused', () => {
  const scratch = new TargetFixture(); // only for its temp dir
  let target: StartedTarget;
  let url: string;
  beforeAll(async () => {
    for (const name of ['d1', 'd2']) writeFileSync(join(scratch.dir, `${name}.img`), Buffer.alloc(MiB));
    const config = join(scratch.dir, 'target.json');
    writeFileSync(
      config,
      JSON.stringify({
        blk: [{ tvqn: 'd1', path: join(scratch.dir, 'd1.img'), admin: ['cfg-admin'] }],
        admin: [{ ivqn: 'top-admin' }],
      }),
    );
    target = await startTarget(['--config', config, '--listen', 'tcp://127.0.0.1:0', '--blk', `d2=${join(scratch.dir, 'd2.img')}`, '--admin', 'host-b', '--log', 'warn']);
    url = target.urls[0]!;
  });
  afterAll(async () => {
    await target?.stop();
    await scratch.close();
  });

  it('--admin grants every export, "admin" of a --config entry only that one, top-level "admin" every export', async () => {
    const viaFlag = await vofAsync(['admin', `${url}/d2`, 'format', '4096', '--ivqn', 'host-b']);
    expect(viaFlag.status, viaFlag.stderr).toBe(0);
    const info = JSON.parse((await vofAsync(['info', `${url}/d2`, '--json'])).stdout);
    expect(info.blk.blkSize).toBe(4096);

    const perExport = await vofAsync(['admin', `${url}/d1`, 'clear-log', '--ivqn', 'cfg-admin']);
    expect(perExport.status, perExport.stderr).toBe(0);
    const elsewhere = await vofAsync(['admin', `${url}/d2`, 'clear-log', '--ivqn', 'cfg-admin']);
    expect(elsewhere.status).toBe(1);
    expect(elsewhere.stderr).toMatch(/^vof: admin vof-vendor CLEAR_ERROR_LOG: TRANSPORT_SPECIFIC ACL_REJECTED: IVQN "cfg-admin" has no admin grant on this export; the target must run with --admin cfg-admin/m);

    const topLevel = await vofAsync(['admin', `${url}/d2`, 'reset-counters', '--ivqn', 'top-admin']);
    expect(topLevel.status, topLevel.stderr).toBe(0);

    const nobody = await vofAsync(['admin', `${url}/d1`, 'format', '4096']);
    expect(nobody.status).toBe(1);
    expect(nobody.stderr).toMatch(/ACL_REJECTED: IVQN "vof-initiator" has no admin grant on this export; the target must run with --admin vof-initiator/);
  });
});
