import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BlkConfig,
  BlkFeature,
  BlkRequestType,
  BlockDevice,
  DeviceStatus,
  Opcode,
  Status,
  VIRTIO_F_VERSION_1,
  VOF_F_INLINE_DATA,
  VOF_OP_GET_INLINE_DATA_SIZE,
  encodeCommand,
  encodeConnectBody,
  encodeRequestHeader,
  statusName,
} from '../src/index.js';
import { RawQueue } from './helpers/raw-queue.js';
import { TargetFixture } from './helpers/target-fixture.js';
import { waitFor } from './helpers/wait-for.js';

/** Status name of a completion, so failures read "ENOCMD" rather than 1. */
const st = (c: Buffer) => statusName(c.readUInt16LE(0));
const cid = (c: Buffer) => c.readUInt16LE(2);

const DISK_SIZE = 1024 * 1024;
const ALL_BLK = (1n << VIRTIO_F_VERSION_1) | (1n << BlkFeature.FLUSH) | (1n << BlkFeature.CONFIG_WCE) | (1n << BlkFeature.MQ);

let fx: TargetFixture;
let port: number;
/** A well-behaved initiator doing verified I/O for the whole file, beside all the bad input. */
let good: BlockDevice;
let goodLoop: Promise<number>;
let stopGood = false;

beforeAll(async () => {
  fx = new TargetFixture({ maxVqPayload: 64 * 1024, keepalive: { intervalMs: 60000, timeoutMs: 120000 } });
  await fx.addDisk('disk0', DISK_SIZE, { numQueues: 2, queueSize: 8 });
  await fx.addDisk('acl0', DISK_SIZE, { allow: ['good-initiator'] });
  await fx.addDisk('bystander', DISK_SIZE);
  await fx.listen();
  port = fx.port;
  good = await BlockDevice.open(`${fx.url}/bystander`, { keepaliveIntervalMs: 0 });
  goodLoop = (async () => {
    let rounds = 0;
    while (!stopGood) {
      const pattern = Buffer.alloc(4096, rounds & 0xff);
      await good.write((rounds % 16) * 4096, pattern);
      const back = await good.read((rounds % 16) * 4096, 4096);
      if (!back.equals(pattern)) throw new Error(`bystander read back wrong data in round ${rounds}`);
      rounds++;
    }
    return rounds;
  })();
});

afterAll(async () => {
  stopGood = true;
  await goodLoop?.catch(() => 0);
  await good?.close();
  await fx?.close();
});

/** A control queue on disk0 brought to the state the test needs. */
async function control(tvqn = 'disk0', ivqn = 'test-initiator'): Promise<{ q: RawQueue; id: number }> {
  const q = await RawQueue.open(port);
  const c = await q.connectControl(tvqn, ivqn);
  expect(st(c)).toBe('SUCCESS');
  return { q, id: c.readUInt16LE(4) };
}

let nextId = 100;
const id = () => nextId++;

async function driverOk(q: RawQueue, features = ALL_BLK): Promise<void> {
  expect(st(await q.call({ opcode: Opcode.SetStatus, commandId: id(), status: DeviceStatus.ACKNOWLEDGE }))).toBe('SUCCESS');
  expect(st(await q.call({ opcode: Opcode.SetStatus, commandId: id(), status: DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER }))).toBe('SUCCESS');
  expect(st(await q.call({ opcode: Opcode.SetDriverFeature, commandId: id(), featureSelect: 0, feature: features }))).toBe('SUCCESS');
  expect(st(await q.call({ opcode: Opcode.SetStatus, commandId: id(), status: 0x0b }))).toBe('SUCCESS');
  expect(st(await q.call({ opcode: Opcode.SetStatus, commandId: id(), status: 0x0f }))).toBe('SUCCESS');
}

async function virtqueue(instance: number, vqIndex = 0, queueSize = 0): Promise<RawQueue> {
  const v = await RawQueue.open(port);
  const c = await v.call({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: instance, vqIndex, length: 0, queueSize });
  expect(st(c)).toBe('SUCCESS');
  return v;
}

describe('control queue Connect', () => {
  it('creates an instance and returns its id in the completion', async () => {
    const q = await RawQueue.open(port);
    const c = await q.connectControl('disk0');
    expect(c.subarray(0, 4).equals(Buffer.from([0, 0, 1, 0]))).toBe(true);
    expect(c.subarray(6).equals(Buffer.alloc(10))).toBe(true);
    const before = fx.target.instanceCount;
    await q.close();
    await waitFor('the instance to be destroyed', () => fx.target.instanceCount === before - 1, 3000);
  });
  it('EACLREJECTED for an unknown TVQN (indistinguishable from a refusal), ENOTGT for a missing body', async () => {
    const q = await RawQueue.open(port);
    expect(st(await q.connectControl('nope'))).toBe('EACLREJECTED');
    expect(st(await q.call({ opcode: Opcode.Connect, commandId: 2, deviceInstanceId: 0xffff, vqIndex: 0, length: 0, queueSize: 0 }))).toBe('ENOTGT');
    await q.close();
  });
  it('EACLREJECTED for an IVQN outside the allow-list; the listed one gets in', async () => {
    const q = await RawQueue.open(port);
    expect(st(await q.connectControl('acl0', 'intruder'))).toBe('EACLREJECTED');
    expect(st(await q.connectControl('acl0', 'good-initiator'))).toBe('SUCCESS');
    await q.close();
    expect(fx.logged(/EACLREJECTED/)).toBe(true);
  });
  it('EQSIZEQUOT for a control queue larger than 32', async () => {
    const q = await RawQueue.open(port);
    expect(st(await q.connectControl('disk0', 'x', 33))).toBe('EQSIZEQUOT');
    await q.close();
  });
  it('ENOCMD for a command before Connect, and for a second Connect', async () => {
    const q = await RawQueue.open(port);
    expect(st(await q.call({ opcode: Opcode.GetStatus, commandId: 9 }))).toBe('ENOCMD');
    expect(st(await q.connectControl('disk0'))).toBe('SUCCESS');
    expect(st(await q.connectControl('disk0'))).toBe('ENOCMD');
    await q.close();
  });
  it('EBADVQN for a Connect Body whose VQN field has no NUL', async () => {
    const q = await RawQueue.open(port);
    const body = Buffer.alloc(1024, 0x41);
    expect(st(await q.call({ opcode: Opcode.Connect, commandId: 3, deviceInstanceId: 0xffff, vqIndex: 0, length: 1024, queueSize: 0 }, body))).toBe('EBADVQN');
    await q.close();
  });
});

describe('control queue commands', () => {
  it('answers unknown opcodes and VQ commands with ENOCMD and keeps the framing', async () => {
    const { q } = await control();
    const unknown = Buffer.alloc(16);
    unknown.writeUInt16LE(0x0777, 0);
    unknown.writeUInt16LE(42, 2);
    q.send(unknown);
    const c = await q.completion();
    expect([st(c), cid(c)]).toEqual(['ENOCMD', 42]);
    // A VQ command carries out_length payload bytes even here; they must be skipped, not parsed.
    const payload = Buffer.alloc(32, 0xee);
    expect(st(await q.call({ opcode: Opcode.Vq, commandId: 43, outLength: 32, inLength: 1 }, payload))).toBe('ENOCMD');
    const vendor = await q.call({ opcode: Opcode.GetVendorId, commandId: 44 });
    expect([st(vendor), cid(vendor), vendor.readUInt32LE(4)]).toEqual(['SUCCESS', 44, 0x1af4]);
    await q.close();
  });
  it('vendor id, device id, keepalive', async () => {
    const { q } = await control();
    expect((await q.call({ opcode: Opcode.GetDeviceId, commandId: 1 })).readUInt32LE(4)).toBe(2);
    expect(st(await q.call({ opcode: Opcode.Keepalive, commandId: 2 }))).toBe('SUCCESS');
    await q.close();
  });
  it('Virtio-oF features over TCP: none offered, EFEATURE for others, keyed descriptors not available', async () => {
    const { q } = await control();
    const f = await q.call({ opcode: Opcode.GetFeature, commandId: 1, featureSelect: 0 });
    expect([st(f), f.readBigUInt64LE(8)]).toEqual(['SUCCESS', 0n]);
    // Windows above 0 hold no Virtio-oF features: empty, like the Set Feature that accepts 0 there.
    const hi = await q.call({ opcode: Opcode.GetFeature, commandId: 2, featureSelect: 1 });
    expect([st(hi), hi.readBigUInt64LE(8)]).toEqual(['SUCCESS', 0n]);
    expect(st(await q.call({ opcode: Opcode.SetFeature, commandId: 3, featureSelect: 0, feature: 1n }))).toBe('EFEATURE');
    expect(st(await q.call({ opcode: Opcode.SetFeature, commandId: 4, featureSelect: 0, feature: 0n }))).toBe('SUCCESS');
    expect(st(await q.call({ opcode: Opcode.GetKeyedNumDescs, commandId: 5 }))).toBe('ENOCMD');
    // vof inline data (VOF_F_INLINE_DATA) is a keyed-transport extension: never offered on TCP.
    expect(st(await q.call({ opcode: VOF_OP_GET_INLINE_DATA_SIZE, commandId: 6 }))).toBe('ENOCMD');
    expect(st(await q.call({ opcode: Opcode.SetFeature, commandId: 7, featureSelect: 0, feature: 1n << VOF_F_INLINE_DATA }))).toBe('EFEATURE');
    await q.close();
  });
  it('device feature windows: 0 and 1 readable, 2 is EDEVFEATURE', async () => {
    const { q } = await control();
    const lo = await q.call({ opcode: Opcode.GetDeviceFeature, commandId: 1, featureSelect: 0 });
    expect(st(lo)).toBe('SUCCESS');
    const bits = lo.readBigUInt64LE(8);
    expect(bits & (1n << VIRTIO_F_VERSION_1)).not.toBe(0n);
    expect(bits & (1n << BlkFeature.MQ)).not.toBe(0n);
    expect((await q.call({ opcode: Opcode.GetDeviceFeature, commandId: 2, featureSelect: 1 })).readBigUInt64LE(8)).toBe(0n);
    expect(st(await q.call({ opcode: Opcode.GetDeviceFeature, commandId: 3, featureSelect: 2 }))).toBe('EDEVFEATURE');
    expect(st(await q.call({ opcode: Opcode.SetDriverFeature, commandId: 4, featureSelect: 2, feature: 1n }))).toBe('EDEVFEATURE');
    await q.close();
  });
  it('device status follows the virtio rules', async () => {
    const { q } = await control();
    const set = async (status: number) => st(await q.call({ opcode: Opcode.SetStatus, commandId: id(), status }));
    const get = async () => (await q.call({ opcode: Opcode.GetStatus, commandId: id() })).readUInt32LE(4);
    expect(await set(DeviceStatus.DRIVER)).toBe('ESTATUS'); // DRIVER before ACKNOWLEDGE
    expect(await set(DeviceStatus.ACKNOWLEDGE)).toBe('SUCCESS');
    expect(await set(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.DRIVER_OK)).toBe('ESTATUS');
    expect(await set(0x03)).toBe('SUCCESS');
    // Driver features that the device does not offer: FEATURES_OK is refused and not set.
    expect(st(await q.call({ opcode: Opcode.SetDriverFeature, commandId: id(), featureSelect: 0, feature: 1n << 63n }))).toBe('SUCCESS');
    expect(await set(0x0b)).toBe('ESTATUS');
    expect(await get()).toBe(0x03);
    expect(st(await q.call({ opcode: Opcode.SetDriverFeature, commandId: id(), featureSelect: 0, feature: ALL_BLK }))).toBe('SUCCESS');
    expect(await set(0x0b)).toBe('SUCCESS');
    expect(st(await q.call({ opcode: Opcode.SetDriverFeature, commandId: id(), featureSelect: 0, feature: ALL_BLK }))).toBe('ESTATUS');
    expect(await set(0x01)).toBe('ESTATUS'); // clearing bits needs a reset
    expect(await set(0x0b | DeviceStatus.DEVICE_NEEDS_RESET)).toBe('ESTATUS'); // the device's bit
    expect(await set(0x0f)).toBe('SUCCESS');
    expect(await get()).toBe(0x0f);
    expect(st(await q.call({ opcode: Opcode.ResetDevice, commandId: id() }))).toBe('SUCCESS');
    expect(await get()).toBe(0);
    expect(await set(DeviceStatus.ACKNOWLEDGE)).toBe('SUCCESS');
    expect(await set(0)).toBe('SUCCESS'); // status 0 resets too
    expect(await get()).toBe(0);
    await q.close();
  });
  it('FAILED (0x80): the driver may set it at any point; it stops VQ commands until a reset', async () => {
    const { q, id: inst } = await control();
    const set = async (status: number) => st(await q.call({ opcode: Opcode.SetStatus, commandId: id(), status }));
    const get = async () => (await q.call({ opcode: Opcode.GetStatus, commandId: id() })).readUInt32LE(4);
    // Even before anything else (a driver that does not recognise the device gives up at once).
    expect(await set(DeviceStatus.FAILED)).toBe('SUCCESS');
    expect(await get()).toBe(0x80);
    expect(await set(DeviceStatus.FAILED | DeviceStatus.ACKNOWLEDGE)).toBe('ESTATUS'); // FAILED: reset first
    expect(st(await q.call({ opcode: Opcode.ResetDevice, commandId: id() }))).toBe('SUCCESS');
    expect(await get()).toBe(0);

    // A live device: I/O works, then the driver sets FAILED on top of DRIVER_OK.
    await driverOk(q);
    const v = await virtqueue(inst);
    const header = encodeRequestHeader(BlkRequestType.IN, 0n);
    v.command({ opcode: Opcode.Vq, commandId: 1, outLength: 16, inLength: 513 }, header);
    const ok = await v.completion();
    expect([st(ok), cid(ok), ok.readUInt32LE(4)]).toEqual(['SUCCESS', 1, 513]);
    expect((await v.read(513))[512]).toBe(0);
    expect(await set(0x0f | DeviceStatus.FAILED)).toBe('SUCCESS');
    expect(await get()).toBe(0x8f);
    const refused = await v.call({ opcode: Opcode.Vq, commandId: 2, outLength: 16, inLength: 513 }, header);
    expect([st(refused), cid(refused), refused.readUInt32LE(4)]).toEqual(['ESTATUS', 2, 0]);
    // FAILED cannot be cleared, nor anything else changed, other than by a reset.
    expect(await set(0x0f)).toBe('ESTATUS');
    expect(await set(DeviceStatus.FAILED)).toBe('ESTATUS');
    expect(await get()).toBe(0x8f);
    expect(st(await v.call({ opcode: Opcode.Vq, commandId: 3, outLength: 16, inLength: 513 }, header))).toBe('ESTATUS');
    expect(st(await q.call({ opcode: Opcode.ResetDevice, commandId: id() }))).toBe('SUCCESS');
    expect(await get()).toBe(0);
    // Reset is not DRIVER_OK: still no I/O until the driver sets the device up again.
    expect(st(await v.call({ opcode: Opcode.Vq, commandId: 4, outLength: 16, inLength: 513 }, header))).toBe('ESTATUS');
    // Status 0 resets a FAILED device as well.
    expect(await set(DeviceStatus.ACKNOWLEDGE | DeviceStatus.FAILED)).toBe('SUCCESS');
    expect(await set(0)).toBe('SUCCESS');
    expect(await get()).toBe(0);
    expect(await set(DeviceStatus.ACKNOWLEDGE)).toBe('SUCCESS');
    await Promise.all([v.close(), q.close()]);
  });
  it('Get VQ Size: per queue, EQUEUEQUOT past the last', async () => {
    const { q } = await control();
    const s = await q.call({ opcode: Opcode.GetVqSize, commandId: 1, vqIndex: 1 });
    expect([st(s), s.readUInt16LE(4)]).toEqual(['SUCCESS', 8]);
    expect(st(await q.call({ opcode: Opcode.GetVqSize, commandId: 2, vqIndex: 2 }))).toBe('EQUEUEQUOT');
    await q.close();
  });
  it('config space: 1/2/4/8-byte reads, ECONFBYTES, ECONFOFF, read-only fields', async () => {
    const { q } = await control();
    const cap = await q.call({ opcode: Opcode.GetConfig, commandId: 1, offset: BlkConfig.capacity, bytes: 8 });
    expect([st(cap), cap.readBigUInt64LE(8)]).toEqual(['SUCCESS', BigInt(DISK_SIZE / 512)]);
    const nq = await q.call({ opcode: Opcode.GetConfig, commandId: 2, offset: BlkConfig.num_queues, bytes: 2 });
    expect(nq.readBigUInt64LE(8)).toBe(2n);
    const low = await q.call({ opcode: Opcode.GetConfig, commandId: 3, offset: 0, bytes: 1 });
    expect(low.readBigUInt64LE(8)).toBe(BigInt((DISK_SIZE / 512) & 0xff));
    expect(st(await q.call({ opcode: Opcode.GetConfig, commandId: 4, offset: 0, bytes: 3 }))).toBe('ECONFBYTES');
    expect(st(await q.call({ opcode: Opcode.GetConfig, commandId: 5, offset: 0, bytes: 16 }))).toBe('ECONFBYTES');
    expect(st(await q.call({ opcode: Opcode.GetConfig, commandId: 6, offset: BlkConfig.SIZE, bytes: 1 }))).toBe('ECONFOFF');
    expect(st(await q.call({ opcode: Opcode.GetConfig, commandId: 7, offset: BlkConfig.SIZE - 4, bytes: 8 }))).toBe('ECONFOFF');
    expect(st(await q.call({ opcode: Opcode.SetConfig, commandId: 8, offset: 0, bytes: 8, config: 1n }))).toBe('ECONFOFF');
    expect(st(await q.call({ opcode: Opcode.SetConfig, commandId: 9, offset: 0, bytes: 5, config: 1n }))).toBe('ECONFBYTES');
    // writeback is writable only with VIRTIO_BLK_F_CONFIG_WCE negotiated.
    expect(st(await q.call({ opcode: Opcode.SetConfig, commandId: 10, offset: BlkConfig.writeback, bytes: 1, config: 0n }))).toBe('ECONFOFF');
    await q.close();
  });
  it('sends one Config Change Completion per change until the next Get Config', async () => {
    const { q } = await control();
    await driverOk(q);
    const gen0 = (await q.call({ opcode: Opcode.GetConfig, commandId: 1, offset: 0, bytes: 1 })).readUInt32LE(4);
    q.command({ opcode: Opcode.SetConfig, commandId: 2, offset: BlkConfig.writeback, bytes: 1, config: 0n });
    const a = await q.completion();
    const b = await q.completion();
    const [event, done] = cid(a) === 0xfffe ? [a, b] : [b, a];
    expect([st(done), cid(done)]).toEqual(['SUCCESS', 2]);
    expect(event.equals(Buffer.from([0, 0, 0xfe, 0xff, ...u32(gen0 + 1), 0, 0, 0, 0, 0, 0, 0, 0]))).toBe(true);
    // A second change is not announced before the initiator reads the config...
    expect(st(await q.call({ opcode: Opcode.SetConfig, commandId: 3, offset: BlkConfig.writeback, bytes: 1, config: 1n }))).toBe('SUCCESS');
    const g = await q.call({ opcode: Opcode.GetConfig, commandId: 4, offset: BlkConfig.writeback, bytes: 1 });
    expect([cid(g), g.readUInt32LE(4), g.readBigUInt64LE(8)]).toEqual([4, gen0 + 2, 1n]);
    // ...and announced again after it did.
    q.command({ opcode: Opcode.SetConfig, commandId: 5, offset: BlkConfig.writeback, bytes: 1, config: 0n });
    const ids = [cid(await q.completion()), cid(await q.completion())].sort();
    expect(ids).toEqual([5, 0xfffe]);
    await q.close();
  });
  it('ECMDQUOT when more commands are in flight than the queue size', async () => {
    const q = await RawQueue.open(port);
    expect(st(await q.connectControl('disk0', 'quota', 4))).toBe('SUCCESS');
    // Five commands in one write: the fifth arrives while four are outstanding (Reset Device
    // waits for the instance's queues; an answer sent at once would free its slot at once).
    q.send(
      ...Array.from({ length: 4 }, (_, i) => encodeCommand({ opcode: Opcode.ResetDevice, commandId: 10 + i })),
      encodeCommand({ opcode: Opcode.GetVendorId, commandId: 14 }),
    );
    const got = new Map<number, string>();
    for (let i = 0; i < 5; i++) {
      const c = await q.completion();
      got.set(cid(c), st(c));
    }
    expect(got.get(14)).toBe('ECMDQUOT');
    expect([10, 11, 12, 13].map((i) => got.get(i))).toEqual(['SUCCESS', 'SUCCESS', 'SUCCESS', 'SUCCESS']);
    // A command stops counting once its completion is sent: five answered at once, one after
    // the other, all fit in a queue of four, and an id may be reused right after its answer.
    q.send(...[20, 21, 22, 23, 20].map((id) => encodeCommand({ opcode: Opcode.GetVendorId, commandId: id })));
    const again: string[] = [];
    for (let i = 0; i < 5; i++) again.push(st(await q.completion()));
    expect(again).toEqual(['SUCCESS', 'SUCCESS', 'SUCCESS', 'SUCCESS', 'SUCCESS']);
    expect(q.socket.destroyed).toBe(false);
    await q.close();
  });
});

describe('virtqueues', () => {
  it('Connect errors: EBADDEV, EQUEUEQUOT, EQSIZEQUOT, EBADVQN; then success without a body', async () => {
    const { q, id: inst } = await control();
    const v = await RawQueue.open(port);
    const connect = (fields: { deviceInstanceId: number; vqIndex: number; queueSize: number; length?: number }, body?: Buffer) =>
      v.call({ opcode: Opcode.Connect, commandId: 7, length: 0, ...fields }, body);
    const unused = inst ^ 0x8000;
    expect(fx.target.hasInstance(unused)).toBe(false);
    expect(st(await connect({ deviceInstanceId: unused, vqIndex: 0, queueSize: 0 }))).toBe('EBADDEV');
    expect(st(await connect({ deviceInstanceId: inst, vqIndex: 2, queueSize: 0 }))).toBe('EQUEUEQUOT');
    expect(st(await connect({ deviceInstanceId: inst, vqIndex: 0, queueSize: 9 }))).toBe('EQSIZEQUOT');
    const otherBody = encodeConnectBody({ ivqn: 'someone-else', tvqn: 'disk0' });
    expect(st(await connect({ deviceInstanceId: inst, vqIndex: 0, queueSize: 0, length: 1024 }, otherBody))).toBe('EBADVQN');
    const okBody = encodeConnectBody({ ivqn: 'test-initiator', tvqn: 'disk0' });
    const c = await connect({ deviceInstanceId: inst, vqIndex: 0, queueSize: 0, length: 1024 }, okBody);
    expect([st(c), c.readUInt16LE(4)]).toEqual(['SUCCESS', inst]);
    const v2 = await RawQueue.open(port);
    expect(st(await v2.call({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: inst, vqIndex: 0, length: 0, queueSize: 0 }))).toBe('EQUEUEQUOT');
    expect(st(await v2.call({ opcode: Opcode.Connect, commandId: 2, deviceInstanceId: inst, vqIndex: 1, length: 0, queueSize: 0 }))).toBe('SUCCESS');
    await Promise.all([v.close(), v2.close(), q.close()]);
  });
  it('no VQ command is served before DRIVER_OK (ESTATUS); control commands are ENOCMD here', async () => {
    const { q, id: inst } = await control();
    const v = await virtqueue(inst);
    const header = encodeRequestHeader(BlkRequestType.IN, 0n);
    const c = await v.call({ opcode: Opcode.Vq, commandId: 5, outLength: 16, inLength: 513 }, header);
    expect([st(c), cid(c), c.readUInt32LE(4)]).toEqual(['ESTATUS', 5, 0]);
    expect(st(await v.call({ opcode: Opcode.GetStatus, commandId: 6 }))).toBe('ENOCMD');
    expect(st(await v.call({ opcode: Opcode.Keepalive, commandId: 7 }))).toBe('ENOCMD');
    await Promise.all([v.close(), q.close()]);
  });
  it('a read returns exactly `length` bytes after the completion', async () => {
    const { q, id: inst } = await control();
    await driverOk(q);
    const v = await virtqueue(inst);
    v.command({ opcode: Opcode.Vq, commandId: 9, outLength: 16, inLength: 1025 }, encodeRequestHeader(BlkRequestType.IN, 2n));
    const c = await v.completion();
    expect([st(c), cid(c), c.readUInt32LE(4)]).toEqual(['SUCCESS', 9, 1025]);
    const data = await v.read(1025);
    expect(data[1024]).toBe(0); // VIRTIO_BLK_S_OK in the last writable byte
    await Promise.all([v.close(), q.close()]);
  });
  it('EOUTVQBUF for a payload over the limit (skipped, not buffered), EINVQBUF for a huge in_length', async () => {
    const { q, id: inst } = await control();
    await driverOk(q);
    const v = await virtqueue(inst);
    const big = Buffer.alloc(64 * 1024 + 1);
    const c = await v.call({ opcode: Opcode.Vq, commandId: 1, outLength: big.length, inLength: 1 }, big);
    expect([st(c), cid(c)]).toEqual(['EOUTVQBUF', 1]);
    const h = encodeRequestHeader(BlkRequestType.IN, 0n);
    const d = await v.call({ opcode: Opcode.Vq, commandId: 2, outLength: 16, inLength: 0xffffffff }, h);
    expect([st(d), cid(d)]).toEqual(['EINVQBUF', 2]);
    // The queue is still in sync.
    v.command({ opcode: Opcode.Vq, commandId: 3, outLength: 16, inLength: 513 }, h);
    const e = await v.completion();
    expect([st(e), e.readUInt32LE(4)]).toEqual(['SUCCESS', 513]);
    await v.read(513);
    await Promise.all([v.close(), q.close()]);
  });
  it('ECMDQUOT on a virtqueue beyond its negotiated size', async () => {
    const { q, id: inst } = await control();
    await driverOk(q);
    const v = await virtqueue(inst, 0, 2);
    const h = encodeRequestHeader(BlkRequestType.IN, 0n);
    v.send(...[1, 2, 3].flatMap((i) => [encodeCommand({ opcode: Opcode.Vq, commandId: i, outLength: 16, inLength: 4097 }), h]));
    const first = await v.completion();
    expect([cid(first), st(first), first.readUInt32LE(4)]).toEqual([3, 'ECMDQUOT', 0]);
    for (let i = 0; i < 2; i++) {
      const c = await v.completion();
      expect(st(c)).toBe('SUCCESS');
      await v.read(c.readUInt32LE(4));
    }
    await Promise.all([v.close(), q.close()]);
  });
  it('Disconnect completes after the commands in flight', async () => {
    const { q, id: inst } = await control();
    await driverOk(q);
    const v = await virtqueue(inst);
    v.send(
      encodeCommand({ opcode: Opcode.Vq, commandId: 1, outLength: 16, inLength: 65537 }),
      encodeRequestHeader(BlkRequestType.IN, 0n),
      encodeCommand({ opcode: Opcode.Disconnect, commandId: 2 }),
    );
    const c = await v.completion();
    expect([cid(c), st(c)]).toEqual([1, 'SUCCESS']);
    await v.read(65537);
    const d = await v.completion();
    expect([cid(d), st(d)]).toEqual([2, 'SUCCESS']);
    await v.whenClosed();
    await q.close();
  });
  it('disconnecting the control queue destroys the instance and closes its virtqueues', async () => {
    const before = fx.target.instanceCount;
    const { q, id: inst } = await control();
    const v = await virtqueue(inst);
    expect(fx.target.instanceCount).toBe(before + 1);
    expect(st(await q.call({ opcode: Opcode.Disconnect, commandId: 3 }))).toBe('SUCCESS');
    await q.whenClosed();
    await v.whenClosed();
    expect(fx.target.instanceCount).toBe(before);
    // The id is gone: a virtqueue Connect to it is EBADDEV.
    const w = await RawQueue.open(port);
    expect(st(await w.call({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: inst, vqIndex: 0, length: 0, queueSize: 0 }))).toBe('EBADDEV');
    await w.close();
  });
});

describe('malformed input closes cleanly and harms nobody else', () => {
  it('a truncated PDU followed by close', async () => {
    const before = fx.target.instanceCount;
    const logsBefore = fx.logs.length;
    const q = await RawQueue.open(port);
    q.send(encodeCommand({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: 0xffff, vqIndex: 0, length: 1024, queueSize: 0 }), Buffer.alloc(100));
    await q.close();
    const r = await RawQueue.open(port);
    r.send(Buffer.alloc(7));
    await r.close();
    const { q: fine } = await control();
    expect(fx.target.instanceCount).toBe(before + 1);
    expect(st(await fine.call({ opcode: Opcode.GetVendorId, commandId: 1 }))).toBe('SUCCESS');
    await fine.close();
    // Neither half-sent PDU created (or leaked) an instance, and nothing was an error.
    await waitFor('the instance count to be back where it was', () => fx.target.instanceCount === before, 3000);
    await new Promise((r) => setTimeout(r, 20));
    expect(fx.target.instanceCount).toBe(before);
    expect(fx.logs.slice(logsBefore).filter((l) => l.level === 'error')).toEqual([]);
  });
  it('a Connect announcing an impossible body length is closed with a log line', async () => {
    const q = await RawQueue.open(port);
    q.command({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: 0xffff, vqIndex: 0, length: 0x7fffffff, queueSize: 0 });
    await q.whenClosed();
    expect(fx.logged(/closing: Connect announces a 2147483647-byte body/)).toBe(true);
  });
  it('the bystander kept working throughout', async () => {
    stopGood = true;
    const rounds = await goodLoop;
    expect(rounds).toBeGreaterThan(0);
  });
});

describe('instance limits', () => {
  it('ENODEV when the target cannot create another instance', async () => {
    const k = new TargetFixture({ maxInstances: 1 });
    await k.addDisk('d', 65536);
    await k.listen();
    try {
      const a = await RawQueue.open(k.port);
      expect(st(await a.connectControl('d'))).toBe('SUCCESS');
      const b = await RawQueue.open(k.port);
      expect(st(await b.connectControl('d'))).toBe('ENODEV');
      await a.close();
      await waitFor('every instance to be destroyed', () => k.target.instanceCount === 0, 3000);
      expect(st(await b.connectControl('d'))).toBe('SUCCESS');
      await b.close();
    } finally {
      await k.close();
    }
  });
});

describe('keepalive', () => {
  it('the target sends keepalives and drops an instance whose initiator went silent', async () => {
    const k = new TargetFixture({ keepalive: { intervalMs: 50, timeoutMs: 300 } });
    await k.addDisk('d', 65536);
    await k.listen();
    try {
      const q = await RawQueue.open(k.port);
      expect(st(await q.connectControl('d'))).toBe('SUCCESS');
      const ka = await q.completion(true);
      expect(ka.equals(Buffer.from([0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))).toBe(true);
      // A talkative initiator survives past the timeout...
      const talker = await RawQueue.open(k.port);
      expect(st(await talker.connectControl('d'))).toBe('SUCCESS');
      const chat = setInterval(() => talker.command({ opcode: Opcode.Keepalive, commandId: 1 }), 50);
      await q.whenClosed(3000);
      expect(k.logged(/initiator silent for \d+ ms, destroying/)).toBe(true);
      expect(talker.closed).toBe(false);
      expect(k.target.instanceCount).toBe(1);
      clearInterval(chat);
      await talker.close();
    } finally {
      await k.close();
    }
  });
});

function u32(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
}

