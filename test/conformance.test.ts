import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  BlkConfig,
  BlkFeature,
  BlkRequestType,
  BlkStatus,
  DeviceStatus,
  FileBlockExport,
  Opcode,
  VIRTIO_F_VERSION_1,
  encodeRequestHeader,
  encodeSegment,
  statusName,
  type DeviceExport,
} from '../src/index.js';
import { validateKeyedDescriptors } from '../src/protocol/keyed-descriptor.js';
import { withInstanceOverrides } from './helpers/device-proxy.js';
import { RawQueue } from './helpers/raw-queue.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { waitFor } from './helpers/wait-for.js';

/**
 * Issue 10, findings 6-9 on the target: reset with I/O in flight, per-instance writeback,
 * command ids, and the virtio / Virtio-oF conformance details. Every test talks raw bytes to a
 * live target so it sees what a real initiator would.
 */

const st = (c: Buffer) => statusName(c.readUInt16LE(0));
const cid = (c: Buffer) => c.readUInt16LE(2);
const MiB = 1024 * 1024;
const bit = (b: bigint) => 1n << b;
const FEATURES = bit(VIRTIO_F_VERSION_1) | bit(BlkFeature.FLUSH) | bit(BlkFeature.CONFIG_WCE) | bit(BlkFeature.WRITE_ZEROES) | bit(BlkFeature.DISCARD);

let fx: TargetFixture;
let bigPath: string;

beforeAll(async () => {
  fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 120000 } });
  await fx.addDisk('disk0', MiB, { numQueues: 2, queueSize: 8 });
  await fx.addDisk('ro', MiB, { readOnly: true });
  // 64 MiB of 0x55: a WRITE_ZEROES over all of it takes a while with the slowed writes below.
  bigPath = await fx.addDisk('big', 64 * MiB, { fill: (b) => b.fill(0x55) });
  await fx.listen();
});
afterAll(async () => {
  await fx?.close();
});
afterEach(() => {
  vi.restoreAllMocks();
});

let nextId = 100;
const id = () => nextId++;

async function control(tvqn = 'disk0', ivqn = 'conformance'): Promise<{ q: RawQueue; instance: number }> {
  const q = await RawQueue.open(fx.port);
  const c = await q.connectControl(tvqn, ivqn);
  expect(st(c)).toBe('SUCCESS');
  return { q, instance: c.readUInt16LE(4) };
}

async function setStatus(q: RawQueue, status: number): Promise<string> {
  return st(await q.call({ opcode: Opcode.SetStatus, commandId: id(), status }));
}

/** ACKNOWLEDGE, DRIVER, features, FEATURES_OK, then DRIVER_OK unless told to stop before. */
async function bringUp(q: RawQueue, features = FEATURES, driverOk = true): Promise<void> {
  expect(await setStatus(q, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)).toBe('SUCCESS');
  expect(st(await q.call({ opcode: Opcode.SetDriverFeature, commandId: id(), featureSelect: 0, feature: features }))).toBe('SUCCESS');
  expect(await setStatus(q, 0x0b)).toBe('SUCCESS');
  if (driverOk) expect(await setStatus(q, 0x0f)).toBe('SUCCESS');
}

async function virtqueue(instance: number, vqIndex = 0): Promise<RawQueue> {
  const v = await RawQueue.open(fx.port);
  expect(st(await v.call({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: instance, vqIndex, length: 0, queueSize: 0 }))).toBe('SUCCESS');
  return v;
}

/** A VQ command carrying a virtio-blk request: header (+ payload), one status byte back. */
function blkRequest(v: RawQueue, commandId: number, type: number, payload: Buffer, sector = 0n, inLength = 1): void {
  const out = Buffer.concat([encodeRequestHeader(type, sector), payload]);
  v.command({ opcode: Opcode.Vq, commandId, outLength: out.length, inLength }, out);
}

/** Read a VQ completion and its payload; returns [status, id, payload]. */
async function vqCompletion(v: RawQueue): Promise<[string, number, Buffer]> {
  const c = await v.completion();
  return [st(c), cid(c), await v.read(c.readUInt32LE(4))];
}


/** Make every backing-file write slow, and count them: a long WRITE_ZEROES becomes observable. */
function slowWrites(delayMs = 20): { calls: () => number } {
  let calls = 0;
  const original = FileBlockExport.prototype.submitWrite;
  // submitWrite: every write of the export passes there (OUT, and WRITE_ZEROES through write()).
  vi.spyOn(FileBlockExport.prototype, 'submitWrite').mockImplementation(function (this: FileBlockExport, ...args: Parameters<FileBlockExport['submitWrite']>) {
    calls++;
    setTimeout(() => original.apply(this, args), delayMs);
  });
  return { calls: () => calls };
}

const wholeBigDisk = () => encodeSegment(0n, (64 * MiB) / 512, 0);

describe('finding 6: reset while I/O is in flight', () => {
  for (const how of ['Reset Device', 'Set Status 0'] as const) {
    it(`${how} fences a running WRITE_ZEROES: it ends without SUCCESS before the reset completes, and no zeros follow`, async () => {
      writeFileSync(bigPath, Buffer.alloc(64 * MiB, 0x55));
      const writes = slowWrites();
      const { q, instance } = await control('big');
      await bringUp(q);
      const v = await virtqueue(instance);
      const vqDone = vqCompletion(v);
      blkRequest(v, 7, BlkRequestType.WRITE_ZEROES, wholeBigDisk());
      await waitFor('the zeroing to start', () => writes.calls() >= 2, 10000);
      const reset = how === 'Reset Device' ? q.call({ opcode: Opcode.ResetDevice, commandId: id() }) : q.call({ opcode: Opcode.SetStatus, commandId: id(), status: 0 });
      let vqEnded = false;
      void vqDone.then(() => (vqEnded = true));
      const resetDone = await reset;
      expect(st(resetDone)).toBe('SUCCESS');
      const writesAtReset = writes.calls();
      // The target sent the VQ completion before the reset's; give the other socket a moment.
      const [status, commandId] = await vqDone;
      expect(vqEnded).toBe(true);
      expect([status, commandId]).toEqual(['ESTATUS', 7]);
      await new Promise((r) => setTimeout(r, 200));
      expect(writes.calls()).toBe(writesAtReset);
      // Far from done: the end of the disk still holds its old bytes.
      expect(readFileSync(bigPath).subarray(63 * MiB).every((x) => x === 0x55)).toBe(true);
      await v.close();
      await q.close();
    });
  }

  it('an abrupt close of the virtqueue cancels a running WRITE_ZEROES', async () => {
    writeFileSync(bigPath, Buffer.alloc(64 * MiB, 0x55));
    const writes = slowWrites();
    const { q, instance } = await control('big');
    await bringUp(q);
    const v = await virtqueue(instance);
    blkRequest(v, 8, BlkRequestType.WRITE_ZEROES, wholeBigDisk());
    await waitFor('the zeroing to start', () => writes.calls() >= 2, 10000);
    // A reset (RST), not a FIN: a FIN is a half-close, after which the target still finishes and
    // answers what is in flight (docs/PROTOCOL.md, "Peer limits").
    v.socket.resetAndDestroy();
    await new Promise((r) => setTimeout(r, 300));
    const after = writes.calls();
    await new Promise((r) => setTimeout(r, 300));
    expect(writes.calls()).toBe(after);
    expect(readFileSync(bigPath).subarray(63 * MiB).every((x) => x === 0x55)).toBe(true);
    await q.close();
  });

  it('target shutdown cancels a running WRITE_ZEROES once the drain time is over', async () => {
    const own = new TargetFixture();
    const path = await own.addDisk('big', 64 * MiB, { fill: (b) => b.fill(0x55) });
    await own.listen();
    const writes = slowWrites();
    const q = await RawQueue.open(own.port);
    const c = await q.connectControl('big');
    await bringUp(q);
    const v = await RawQueue.open(own.port);
    expect(st(await v.call({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: c.readUInt16LE(4), vqIndex: 0, length: 0, queueSize: 0 }))).toBe('SUCCESS');
    blkRequest(v, 9, BlkRequestType.WRITE_ZEROES, wholeBigDisk());
    await waitFor('the zeroing to start', () => writes.calls() >= 2, 10000);
    await own.target.close(100);
    const after = writes.calls();
    await new Promise((r) => setTimeout(r, 300));
    expect(writes.calls()).toBe(after);
    expect(readFileSync(path).subarray(63 * MiB).every((x) => x === 0x55)).toBe(true);
  });

  it('one WRITE_ZEROES is bounded: max_write_zeroes_sectors is at most 64 MiB and more is IOERR', async () => {
    const { q, instance } = await control();
    await bringUp(q);
    const max = (await q.call({ opcode: Opcode.GetConfig, commandId: id(), offset: BlkConfig.max_write_zeroes_sectors, bytes: 4 })).readUInt32LE(8);
    expect(max).toBeGreaterThan(0);
    expect(max * 512).toBeLessThanOrEqual(64 * MiB);
    const v = await virtqueue(instance);
    blkRequest(v, 10, BlkRequestType.WRITE_ZEROES, encodeSegment(0n, max + 1, 0));
    const [status, , payload] = await vqCompletion(v);
    expect([status, payload[0]]).toEqual(['SUCCESS', BlkStatus.IOERR]);
    await v.close();
    await q.close();
  });
});

describe('finding 7: writeback belongs to each instance', () => {
  it("one initiator's writeback change does not change another's cache mode", async () => {
    const a = await control('disk0', 'a');
    const b = await control('disk0', 'b');
    await bringUp(a.q);
    await bringUp(b.q);
    expect(st(await a.q.call({ opcode: Opcode.SetConfig, commandId: id(), offset: BlkConfig.writeback, bytes: 1, config: 0n }))).toBe('SUCCESS');
    const wbA = await a.q.call({ opcode: Opcode.GetConfig, commandId: id(), offset: BlkConfig.writeback, bytes: 1 });
    const wbB = await b.q.call({ opcode: Opcode.GetConfig, commandId: id(), offset: BlkConfig.writeback, bytes: 1 });
    expect([wbA.readBigUInt64LE(8), wbB.readBigUInt64LE(8)]).toEqual([0n, 1n]);
    await a.q.close();
    await b.q.close();
  });

  it('with CONFIG_WCE negotiated but not FLUSH, writeback reads 0 and writes are write-through', async () => {
    const { q, instance } = await control();
    await bringUp(q, bit(VIRTIO_F_VERSION_1) | bit(BlkFeature.CONFIG_WCE));
    const wb = await q.call({ opcode: Opcode.GetConfig, commandId: id(), offset: BlkConfig.writeback, bytes: 1 });
    expect(wb.readBigUInt64LE(8)).toBe(0n);
    const sync = vi.spyOn(FileBlockExport.prototype, 'submitSync');
    const v = await virtqueue(instance);
    blkRequest(v, 1, BlkRequestType.OUT, Buffer.alloc(512, 3));
    expect((await vqCompletion(v))[2][0]).toBe(BlkStatus.OK);
    expect(sync).toHaveBeenCalledTimes(1);
    await v.close();
    await q.close();
  });
});

describe('finding 8: command ids', () => {
  it('a second command with the id of one in flight closes the virtqueue; it is not executed', async () => {
    const path = join(fx.dir, 'disk0.img');
    writeFileSync(path, Buffer.alloc(MiB));
    const writes = slowWrites(1000);
    const { q, instance } = await control();
    await bringUp(q);
    const v = await virtqueue(instance);
    // A slow 512-byte write, then a second write of 0xee under the same id.
    blkRequest(v, 5, BlkRequestType.OUT, Buffer.alloc(512, 0x11), 0n);
    await waitFor('the first write to run', () => writes.calls() >= 1, 10000);
    blkRequest(v, 5, BlkRequestType.OUT, Buffer.alloc(512, 0xee), 8n);
    await v.whenClosed();
    expect(fx.logged(/command id 5 is already in flight/)).toBe(true);
    await new Promise((r) => setTimeout(r, 100));
    expect(readFileSync(path).subarray(8 * 512, 9 * 512).every((x) => x === 0)).toBe(true);
    await q.close();
  });

  it('command ids 0xff00-0xffff from the initiator on the control queue close it', async () => {
    for (const reserved of [0xff00, 0xfffe, 0xffff]) {
      const { q } = await control();
      q.command({ opcode: Opcode.GetVendorId, commandId: reserved });
      await q.whenClosed();
    }
    expect(fx.logged(/command id 0xff00 is reserved for target events/)).toBe(true);
  });

  it('a command id may be reused once its command completed', async () => {
    const { q } = await control();
    for (let i = 0; i < 3; i++) expect(st(await q.call({ opcode: Opcode.GetVendorId, commandId: 9 }))).toBe('SUCCESS');
    await q.close();
  });
});

describe('finding 9: conformance details', () => {
  it('no Config Change Completion before DRIVER_OK', async () => {
    const { q } = await control();
    await bringUp(q, FEATURES, false);
    expect(st(await q.call({ opcode: Opcode.SetConfig, commandId: 3, offset: BlkConfig.writeback, bytes: 1, config: 0n }))).toBe('SUCCESS');
    const next = await q.call({ opcode: Opcode.GetVendorId, commandId: 4 });
    expect(cid(next)).toBe(4);
    await q.close();
  });

  it('a DEVICE_NEEDS_RESET notice is not swallowed by an outstanding config change: it follows the next Get Config', async () => {
    const own = new TargetFixture();
    const path = join(own.dir, 'flaky.img');
    writeFileSync(path, Buffer.alloc(MiB));
    const real = await FileBlockExport.open(path);
    own.target.addExport('flaky', faulty(real, () => Promise.reject(new Error('backing store vanished'))));
    await own.listen();
    const q = await RawQueue.open(own.port);
    const c = await q.connectControl('flaky');
    await bringUp(q);
    // A config change the initiator has not read yet: notifications are now suppressed.
    q.command({ opcode: Opcode.SetConfig, commandId: 3, offset: BlkConfig.writeback, bytes: 1, config: 0n });
    expect([cid(await q.completion()), cid(await q.completion())].sort()).toEqual([3, 0xfffe]);
    const v = await RawQueue.open(own.port);
    expect(st(await v.call({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: c.readUInt16LE(4), vqIndex: 0, length: 0, queueSize: 0 }))).toBe('SUCCESS');
    blkRequest(v, 1, BlkRequestType.IN, Buffer.alloc(0), 0n, 513);
    const [status] = await vqCompletion(v);
    // Device exception: the virtio-oF status says the instance is in no state to run it.
    expect(status).toBe('ESTATUS');
    q.command({ opcode: Opcode.GetConfig, commandId: 4, offset: 0, bytes: 1 });
    const ids = [cid(await q.completion()), cid(await q.completion())];
    expect(ids).toEqual([4, 0xfffe]);
    const s = await q.call({ opcode: Opcode.GetStatus, commandId: 5 });
    expect(s.readUInt32LE(4) & DeviceStatus.DEVICE_NEEDS_RESET).toBe(DeviceStatus.DEVICE_NEEDS_RESET);
    await v.close();
    await q.close();
    await own.close();
  });

  it('FEATURES_OK without VIRTIO_F_VERSION_1 is ESTATUS', async () => {
    const { q } = await control();
    expect(await setStatus(q, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)).toBe('SUCCESS');
    expect(st(await q.call({ opcode: Opcode.SetDriverFeature, commandId: id(), featureSelect: 0, feature: bit(BlkFeature.FLUSH) }))).toBe('SUCCESS');
    expect(await setStatus(q, 0x0b)).toBe('ESTATUS');
    await q.close();
  });

  it('Get Feature and Set Feature agree on every feature_select: windows above 0 are empty', async () => {
    const { q } = await control();
    const g = await q.call({ opcode: Opcode.GetFeature, commandId: 1, featureSelect: 1 });
    expect([st(g), g.readBigUInt64LE(8)]).toEqual(['SUCCESS', 0n]);
    expect(st(await q.call({ opcode: Opcode.SetFeature, commandId: 2, featureSelect: 1, feature: 0n }))).toBe('SUCCESS');
    expect(st(await q.call({ opcode: Opcode.SetFeature, commandId: 3, featureSelect: 1, feature: 1n }))).toBe('EFEATURE');
    await q.close();
  });

  it('seg_max counts data segments: the keyed descriptor limit minus header and status', () => {
    const export_ = fx.target.devices.get('disk0')!.device as FileBlockExport;
    const keyed = export_.createInstance({ maxDescriptors: 32 });
    const stream = export_.createInstance({ maxDescriptors: 0 });
    expect(Number(keyed.readConfig(BlkConfig.seg_max, 4))).toBe(30);
    expect(Number(stream.readConfig(BlkConfig.seg_max, 4))).toBe(128);
  });

  it('malformed DISCARD/WRITE_ZEROES payloads are IOERR; unknown flags are UNSUPP even on a read-only disk', async () => {
    const { q, instance } = await control();
    await bringUp(q);
    const v = await virtqueue(instance);
    blkRequest(v, 1, BlkRequestType.WRITE_ZEROES, Buffer.alloc(8));
    expect((await vqCompletion(v))[2][0]).toBe(BlkStatus.IOERR);
    blkRequest(v, 2, BlkRequestType.DISCARD, Buffer.alloc(24));
    expect((await vqCompletion(v))[2][0]).toBe(BlkStatus.IOERR);
    await v.close();
    await q.close();

    const ro = await control('ro');
    await bringUp(ro.q, FEATURES | bit(BlkFeature.RO));
    const rv = await virtqueue(ro.instance);
    blkRequest(rv, 3, BlkRequestType.WRITE_ZEROES, encodeSegment(0n, 1, 0x80));
    expect((await vqCompletion(rv))[2][0]).toBe(BlkStatus.UNSUPP);
    blkRequest(rv, 4, BlkRequestType.WRITE_ZEROES, encodeSegment(0n, 1, 0));
    expect((await vqCompletion(rv))[2][0]).toBe(BlkStatus.IOERR);
    await rv.close();
    await ro.q.close();
  });

  it('zero-length keyed descriptors are legal (DECISIONS.md item 4)', () => {
    const d = (length: number) => ({ addr: 0x1000n, length, key: 1 });
    expect(validateKeyedDescriptors([d(16), d(0), d(512), d(0), d(1)], 16, 513, 32)).toBe('none');
    expect(validateKeyedDescriptors([d(0), d(16), d(513)], 16, 513, 32)).toBe('none');
  });

  it('a device that reports more bytes written than in_length: the command ends with ESTATUS and the device needs a reset', async () => {
    const own = new TargetFixture();
    const path = join(own.dir, 'chatty.img');
    writeFileSync(path, Buffer.alloc(MiB));
    const real = await FileBlockExport.open(path);
    own.target.addExport('chatty', faulty(real, (writable) => Promise.resolve(writable.length + 100)));
    await own.listen();
    const q = await RawQueue.open(own.port);
    const c = await q.connectControl('chatty');
    await bringUp(q);
    const v = await RawQueue.open(own.port);
    expect(st(await v.call({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: c.readUInt16LE(4), vqIndex: 0, length: 0, queueSize: 0 }))).toBe('SUCCESS');
    blkRequest(v, 1, BlkRequestType.IN, Buffer.alloc(0), 0n, 513);
    const [status, commandId, payload] = await vqCompletion(v);
    expect([status, commandId, payload.length]).toEqual(['ESTATUS', 1, 0]);
    q.command({ opcode: Opcode.GetStatus, commandId: 5 });
    let s = await q.completion();
    if (cid(s) === 0xfffe) s = await q.completion(); // the DEVICE_NEEDS_RESET notice
    expect(s.readUInt32LE(4) & DeviceStatus.DEVICE_NEEDS_RESET).toBe(DeviceStatus.DEVICE_NEEDS_RESET);
    await v.close();
    await q.close();
    await own.close();
  });
});

/** `real`, with every instance's handleRequest replaced by `handle`. */
function faulty(real: FileBlockExport, handle: (writable: Buffer) => Promise<number>): DeviceExport {
  return withInstanceOverrides(real, 'faulty', () => ({ handleRequest: (_vq, _readable, writable) => handle(writable) }));
}
