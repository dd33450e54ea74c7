import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkConfig, BlkFeature, DeviceStatus, Opcode, Status, VIRTIO_F_VERSION_1, encodeCommand, statusName } from '../../src/index.js';
import { RawRdmaQueue } from '../helpers/raw-rdma-queue.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { rdmaAddress } from './rdma-env.js';

const st = (c: Buffer) => statusName(c.readUInt16LE(0));
const DISK = 1024 * 1024;

let fx: TargetFixture;

beforeAll(async () => {
  fx = new TargetFixture();
  await fx.addDisk('disk0', DISK, { numQueues: 2, queueSize: 16 });
  await fx.listen(`rdma://${rdmaAddress()}:0`);
});
afterAll(async () => {
  await fx?.close();
});

describe('every control-queue command over RDMA (one SEND per PDU)', () => {
  it('Connect, features, keyed descriptors, ids, status, config, VQ sizes, keepalive, Disconnect', async () => {
    const q = await RawRdmaQueue.open(fx.url);
    const c = await q.connectControl('disk0');
    expect(st(c)).toBe('SUCCESS');
    expect(c.readUInt16LE(2)).toBe(1);
    expect(c.readUInt16LE(4)).not.toBe(0xffff);

    // Virtio-oF features: keyed descriptors offered on RDMA, and vof's inline data (bit 56) and
    // remote invalidation (bit 57, docs/PROTOCOL.md); Get Keyed Number Descriptors only once negotiated.
    const f = await q.call({ opcode: Opcode.GetFeature, commandId: 2, featureSelect: 0 });
    expect(st(f)).toBe('SUCCESS');
    expect(f.readBigUInt64LE(8)).toBe(1n | (1n << 56n) | (1n << 57n));
    expect(st(await q.call({ opcode: Opcode.GetKeyedNumDescs, commandId: 3 }))).toBe('ENOCMD');
    expect(st(await q.call({ opcode: Opcode.SetFeature, commandId: 4, featureSelect: 0, feature: 2n }))).toBe('EFEATURE');
    expect(st(await q.call({ opcode: Opcode.SetFeature, commandId: 5, featureSelect: 0, feature: 1n }))).toBe('SUCCESS');
    const k = await q.call({ opcode: Opcode.GetKeyedNumDescs, commandId: 6 });
    expect([st(k), k.readUInt16LE(2), k.readUInt8(4)]).toEqual(['SUCCESS', 6, 32]);

    const vendor = await q.call({ opcode: Opcode.GetVendorId, commandId: 7 });
    expect(vendor.readUInt32LE(4)).toBe(0x1af4);
    const device = await q.call({ opcode: Opcode.GetDeviceId, commandId: 8 });
    expect(device.readUInt32LE(4)).toBe(2);
    expect(st(await q.call({ opcode: Opcode.Keepalive, commandId: 9 }))).toBe('SUCCESS');

    expect(st(await q.call({ opcode: Opcode.ResetDevice, commandId: 10 }))).toBe('SUCCESS');
    expect((await q.call({ opcode: Opcode.GetStatus, commandId: 11 })).readUInt32LE(4)).toBe(0);
    expect(st(await q.call({ opcode: Opcode.SetStatus, commandId: 12, status: DeviceStatus.ACKNOWLEDGE }))).toBe('SUCCESS');
    expect(st(await q.call({ opcode: Opcode.SetStatus, commandId: 13, status: DeviceStatus.FEATURES_OK }))).toBe('ESTATUS');
    expect(st(await q.call({ opcode: Opcode.SetStatus, commandId: 14, status: DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER }))).toBe('SUCCESS');

    const df = await q.call({ opcode: Opcode.GetDeviceFeature, commandId: 15, featureSelect: 0 });
    expect(st(df)).toBe('SUCCESS');
    expect(df.readBigUInt64LE(8) & (1n << VIRTIO_F_VERSION_1)).not.toBe(0n);
    expect(st(await q.call({ opcode: Opcode.GetDeviceFeature, commandId: 16, featureSelect: 2 }))).toBe('EDEVFEATURE');
    expect(st(await q.call({ opcode: Opcode.SetDriverFeature, commandId: 17, featureSelect: 0, feature: (1n << VIRTIO_F_VERSION_1) | (1n << BlkFeature.CONFIG_WCE) }))).toBe('SUCCESS');

    const vq0 = await q.call({ opcode: Opcode.GetVqSize, commandId: 18, vqIndex: 0 });
    expect([st(vq0), vq0.readUInt16LE(4)]).toEqual(['SUCCESS', 16]);
    expect(st(await q.call({ opcode: Opcode.GetVqSize, commandId: 19, vqIndex: 2 }))).toBe('EQUEUEQUOT');

    const cap = await q.call({ opcode: Opcode.GetConfig, commandId: 20, offset: BlkConfig.capacity, bytes: 8 });
    expect([st(cap), cap.readBigUInt64LE(8)]).toEqual(['SUCCESS', BigInt(DISK / 512)]);
    expect(st(await q.call({ opcode: Opcode.GetConfig, commandId: 21, offset: 0, bytes: 3 }))).toBe('ECONFBYTES');
    expect(st(await q.call({ opcode: Opcode.GetConfig, commandId: 22, offset: 0xfff0, bytes: 4 }))).toBe('ECONFOFF');
    expect(st(await q.call({ opcode: Opcode.SetStatus, commandId: 27, status: DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK }))).toBe('SUCCESS');
    // CONFIG_WCE without FLUSH: writethrough only (docs/PROTOCOL.md), so 0 is accepted and 1 is not.
    expect(st(await q.call({ opcode: Opcode.SetConfig, commandId: 23, offset: BlkConfig.writeback, bytes: 1, config: 0n }))).toBe('SUCCESS');
    expect(st(await q.call({ opcode: Opcode.SetConfig, commandId: 28, offset: BlkConfig.writeback, bytes: 1, config: 1n }))).toBe('ECONFOFF');

    // Wrong queue type and unknown opcode: ENOCMD, the queue keeps working.
    expect(st(await q.call({ opcode: Opcode.Vq, commandId: 24, outLength: 0, inLength: 0 }))).toBe('ENOCMD');
    const unknown = encodeCommand({ opcode: Opcode.Keepalive, commandId: 25 });
    unknown.writeUInt16LE(0x0777, 0);
    q.send(unknown);
    expect(st(await q.completion())).toBe('ENOCMD');

    expect(fx.target.instanceCount).toBe(1);
    const d = await q.call({ opcode: Opcode.Disconnect, commandId: 26 });
    expect([st(d), d.readUInt16LE(2)]).toEqual(['SUCCESS', 26]);
    await q.whenClosed();
    expect(fx.target.instanceCount).toBe(0);
  });

  it('a virtqueue Connect without a body binds to the instance; bad instance ids are EBADDEV', async () => {
    const control = await RawRdmaQueue.open(fx.url);
    const id = await control.bringUp('disk0');
    const vq = await RawRdmaQueue.open(fx.url);
    expect(st(await vq.connectVq(0x4242, 0))).toBe('EBADDEV');
    const ok = await vq.connectVq(id, 1);
    expect([st(ok), ok.readUInt16LE(4)]).toEqual(['SUCCESS', id]);
    expect(st(await vq.call({ opcode: Opcode.GetStatus, commandId: 2 }))).toBe('ENOCMD');
    await vq.close();
    await control.close();
  });

  it('a Connect whose message length disagrees with its body length is closed with a log line', async () => {
    const q = await RawRdmaQueue.open(fx.url);
    q.command({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: 0xffff, vqIndex: 0, length: 1024, queueSize: 32 }, Buffer.alloc(100));
    await q.whenClosed();
    expect(fx.logged(/Connect announces a 1024-byte body and carries 100 bytes/)).toBe(true);
  });
});
