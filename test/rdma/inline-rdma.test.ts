import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  BlkRequestType,
  BlockDevice,
  COMMAND_SIZE,
  Opcode,
  VIRTIO_OF_F_KEYED_NUM_DESCS,
  VOF_F_INLINE_DATA,
  VOF_F_REMOTE_INVALIDATE,
  VOF_OP_GET_INLINE_DATA_SIZE,
  decodeInlineRequest,
  decodeKeyedDescriptors,
  encodeRequestHeader,
  statusName,
  validateKeyedDescriptors,
} from '../../src/index.js';
import { nativeBinding, WrOpcode, type MemoryRegion } from '../../src/transport/rdma/native-binding.js';
import { SendQueue, type SendChain } from '../../src/transport/rdma/send-queue.js';
import { RawRdmaQueue, descriptors } from '../helpers/raw-rdma-queue.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { rdmaAddress } from './rdma-env.js';
import { targetTransferCounts } from './target-transfer-counts.js';

/**
 * vof's inline-data extension on RDMA (docs/PROTOCOL.md "Inline data on keyed queues"): a
 * 4 KiB virtio-blk write has out_length 16 + 4096 = 4112, so targets offering 4111, 4112 and
 * 4113 bytes put it just past, at and just under the limit.
 */
const st = (c: Buffer) => statusName(c.readUInt16LE(0));
const MiB = 1024 * 1024;
const WRITE_OUT = 16 + 4096;
const KEEPALIVE = { intervalMs: 60000, timeoutMs: 600000 };
const INLINE = 1n << VOF_F_INLINE_DATA;
const INVALIDATE = 1n << VOF_F_REMOTE_INVALIDATE;
const KEYED = 1n << VIRTIO_OF_F_KEYED_NUM_DESCS;

interface Target {
  fx: TargetFixture;
  path: string;
}
const targets = new Map<number, Target>();

async function startTarget(inlineDataBytes: number): Promise<Target> {
  const fx = new TargetFixture({ keepalive: KEEPALIVE, inlineDataBytes });
  const path = await fx.addDisk('disk0', MiB, { numQueues: 2, queueSize: 16 });
  await fx.addDisk('bystander', MiB);
  await fx.listen(`rdma://${rdmaAddress()}:0`);
  return { fx, path };
}

/**
 * VQ request messages as the initiator puts them on the wire: the SEND ending each 'VQ command'
 * chain it posts, copied from its registered send buffer at the moment of posting.
 */
function captureVqRequests(): Buffer[] {
  const sent: Buffer[] = [];
  const original = SendQueue.prototype.postChain;
  vi.spyOn(SendQueue.prototype, 'postChain').mockImplementation(function (this: SendQueue, chain: SendChain) {
    const last = chain.wrs.at(-1);
    if (chain.what === 'VQ command' && last?.opcode === WrOpcode.Send) {
      // The message is its scatter-gather entries in order (a second one: inline bytes read
      // straight from the caller's registered memory).
      const pieces: Buffer[] = [];
      for (let j = 0; j < last.sg.length; j += 3) {
        const [mr, offset, length] = last.sg.slice(j, j + 3) as [MemoryRegion, number, number];
        pieces.push(Buffer.from(mr.buffer.subarray(offset, offset + length)));
      }
      const msg = Buffer.concat(pieces);
      if (msg.length >= COMMAND_SIZE && msg.readUInt16LE(0) === Opcode.Vq) sent.push(msg);
    }
    return original.call(this, chain);
  });
  return sent;
}

beforeAll(async () => {
  for (const s of [0, 4111, 4112, 4113]) targets.set(s, await startTarget(s));
});
afterEach(() => {
  vi.restoreAllMocks();
});
afterAll(async () => {
  for (const t of targets.values()) await t.fx.close();
});

describe('negotiated: the vof initiator sends small readable parts inline', () => {
  for (const [limit, inline] of [
    [4113, true],
    [4112, true],
    [4111, false],
  ] as const) {
    it(`target limit ${limit}: a 4 KiB write (out_length ${WRITE_OUT}) goes ${inline ? 'inline' : 'keyed'}; reads never need an RDMA READ`, async () => {
      const { fx, path } = targets.get(limit)!;
      const disk = await BlockDevice.open(`${fx.url}/disk0`, { keepaliveIntervalMs: 0 });
      try {
        expect(disk.device.ofFeatures & (INLINE | KEYED)).toBe(INLINE | KEYED);
        expect(disk.device.inlineDataBytes).toBe(limit);
        const sent = captureVqRequests();
        const before = targetTransferCounts(fx);
        const data = randomBytes(4096);
        await disk.write(8192, data);
        expect(readFileSync(path).subarray(8192, 8192 + 4096).equals(data)).toBe(true);
        const afterWrite = targetTransferCounts(fx);
        expect(afterWrite.rdmaReads - before.rdmaReads).toBe(inline ? 0 : 1);
        expect(afterWrite.inlineRequests - before.inlineRequests).toBe(inline ? 1 : 0);
        // The bytes the initiator sent: the inline layout carries header + data after one
        // descriptor (the status byte); the seed layout has descriptors only, covering all.
        const w = sent.at(-1)!;
        if (inline) {
          expect(w.length).toBe(16 + 16 + WRITE_OUT);
          const r = decodeInlineRequest(w, 32);
          expect([r.problem, r.writable.map((d) => d.length)]).toEqual([null, [1]]);
          expect(r.readable.subarray(16).equals(data)).toBe(true);
          expect(r.readable.subarray(0, 16).equals(encodeRequestHeader(BlkRequestType.OUT, 16n))).toBe(true);
        } else {
          expect((w.length - 16) % 16).toBe(0);
          expect(validateKeyedDescriptors(decodeKeyedDescriptors(w, 16), WRITE_OUT, 1, 32)).toBe('none');
        }
        // Reads: out_length 16 (the request header) is always inline here.
        for (const size of [512, 4096, 65536]) {
          const got = await disk.read(8192, size);
          expect(got.subarray(0, 4096).equals(data.subarray(0, Math.min(size, 4096)))).toBe(true);
        }
        const afterReads = targetTransferCounts(fx);
        expect(afterReads.rdmaReads).toBe(afterWrite.rdmaReads);
        expect(afterReads.inlineRequests - afterWrite.inlineRequests).toBe(3);
        // Around the limit in both directions at once, pipelined.
        const sizes = [3584, 4096, 4608, 8192];
        const blocks = sizes.map((n) => randomBytes(n));
        await Promise.all(blocks.map((b, i) => disk.write(65536 * (i + 1), b)));
        const back = await Promise.all(sizes.map((n, i) => disk.read(65536 * (i + 1), n)));
        back.forEach((b, i) => expect(b.equals(blocks[i]!)).toBe(true));
      } finally {
        await disk.close();
      }
    });
  }

  it('inline bytes in registered memory (allocateBuffer) go as the SEND\'s second scatter-gather entry: the same bytes on the wire, no copy', async () => {
    const { fx, path } = targets.get(4112)!;
    const disk = await BlockDevice.open(`${fx.url}/disk0`, { keepaliveIntervalMs: 0 });
    try {
      const tailBytes = () => disk.device.pinnedMemory.stats.inlineInPlaceBytes;
      const sent = captureVqRequests();
      const data = disk.device.allocateBuffer(4096);
      randomBytes(4096).copy(data);
      const before = targetTransferCounts(fx);
      const tail0 = tailBytes();
      await disk.write(16384, data);
      expect(readFileSync(path).subarray(16384, 16384 + 4096).equals(data)).toBe(true);
      expect(tailBytes() - tail0).toBe(4096);
      const after = targetTransferCounts(fx);
      expect([after.inlineRequests - before.inlineRequests, after.rdmaReads - before.rdmaReads]).toEqual([1, 0]);
      const w = sent.at(-1)!;
      expect(w.length).toBe(16 + 16 + WRITE_OUT);
      const r = decodeInlineRequest(w, 32);
      expect([r.problem, r.writable.map((d) => d.length)]).toEqual([null, [1]]);
      expect(r.readable.subarray(0, 16).equals(encodeRequestHeader(BlkRequestType.OUT, 32n))).toBe(true);
      expect(r.readable.subarray(16).equals(data)).toBe(true);
      disk.device.freeBuffer(data);
    } finally {
      await disk.close();
    }
  });

  it('the admin virtqueue inherits it too', async () => {
    const { fx } = targets.get(4112)!;
    const disk = await BlockDevice.open(`${fx.url}/disk0`, { keepaliveIntervalMs: 0 });
    try {
      const before = targetTransferCounts(fx);
      expect((await disk.admin.listCommands()).length).toBeGreaterThan(0);
      const after = targetTransferCounts(fx);
      expect([after.inlineRequests - before.inlineRequests, after.rdmaReads - before.rdmaReads]).toEqual([1, 0]);
    } finally {
      await disk.close();
    }
  });
});

describe('not negotiated: the seed format, unchanged', () => {
  it('the vof initiator with inlineData: false sends seed-layout requests and the target RDMA-READs them', async () => {
    const { fx, path } = targets.get(4112)!;
    const disk = await BlockDevice.open(`${fx.url}/disk0`, { keepaliveIntervalMs: 0, inlineData: false });
    try {
      expect(disk.device.offeredOfFeatures & INLINE).toBe(INLINE);
      expect([disk.device.ofFeatures, disk.device.inlineDataBytes]).toEqual([KEYED | INVALIDATE, 0]);
      const sent = captureVqRequests();
      const before = targetTransferCounts(fx);
      const data = randomBytes(4096);
      await disk.write(0, data);
      expect((await disk.read(0, 4096)).equals(data)).toBe(true);
      expect(readFileSync(path).subarray(0, 4096).equals(data)).toBe(true);
      const after = targetTransferCounts(fx);
      expect([after.inlineRequests - before.inlineRequests, after.rdmaReads - before.rdmaReads]).toEqual([0, 2]);
      expect(sent.length).toBe(2);
      for (const w of sent) {
        const out = w.readUInt32LE(8);
        const inn = w.readUInt32LE(12);
        expect((w.length - 16) % 16).toBe(0);
        expect(validateKeyedDescriptors(decodeKeyedDescriptors(w, 16), out, inn, 32)).toBe('none');
      }
    } finally {
      await disk.close();
    }
  });

  it('the vof initiator against a target with the offer off', async () => {
    const { fx, path } = targets.get(0)!;
    const disk = await BlockDevice.open(`${fx.url}/disk0`, { keepaliveIntervalMs: 0 });
    try {
      expect([disk.device.offeredOfFeatures, disk.device.ofFeatures, disk.device.inlineDataBytes]).toEqual([KEYED | INVALIDATE, KEYED | INVALIDATE, 0]);
      const data = randomBytes(4096);
      await disk.write(4096, data);
      expect((await disk.read(4096, 4096)).equals(data)).toBe(true);
      expect(readFileSync(path).subarray(4096, 8192).equals(data)).toBe(true);
      expect(targetTransferCounts(fx).inlineRequests).toBe(0);
      expect(targetTransferCounts(fx).rdmaReads).toBeGreaterThanOrEqual(2);
    } finally {
      await disk.close();
    }
  });

  it('a raw seed client sets only bit 0 and sends a keyed request with out_length below the limit: read by RDMA READ', async () => {
    const { fx, path } = targets.get(4113)!;
    const control = await RawRdmaQueue.open(fx.url);
    const id = await control.bringUp('disk0', async () => {
      const offered = await control.call({ opcode: Opcode.GetFeature, commandId: 11, featureSelect: 0 });
      expect(offered.readBigUInt64LE(8)).toBe(KEYED | INLINE | INVALIDATE);
      expect(st(await control.call({ opcode: VOF_OP_GET_INLINE_DATA_SIZE, commandId: 12 }))).toBe('ENOCMD');
      expect(st(await control.call({ opcode: Opcode.SetFeature, commandId: 13, featureSelect: 0, feature: KEYED }))).toBe('SUCCESS');
      expect(st(await control.call({ opcode: VOF_OP_GET_INLINE_DATA_SIZE, commandId: 14 }))).toBe('ENOCMD');
    });
    const vq = await RawRdmaQueue.open(fx.url);
    expect(st(await vq.connectVq(id, 0))).toBe('SUCCESS');
    const { REMOTE_READ, REMOTE_WRITE } = nativeBinding().access;
    const out = Buffer.concat([encodeRequestHeader(BlkRequestType.OUT, 24n), Buffer.alloc(4096, 0x5e)]);
    const status = Buffer.alloc(1, 0xff);
    const outMr = vq.register(out, REMOTE_READ);
    const inMr = vq.register(status, REMOTE_WRITE);
    const before = targetTransferCounts(fx);
    const c = await vq.call(
      { opcode: Opcode.Vq, commandId: 7, outLength: WRITE_OUT, inLength: 1 },
      descriptors([
        { addr: outMr.address, length: WRITE_OUT, key: outMr.rkey },
        { addr: inMr.address, length: 1, key: inMr.rkey },
      ]),
    );
    expect([st(c), c.readUInt16LE(2), status[0]]).toEqual(['SUCCESS', 7, 0]);
    expect(readFileSync(path).subarray(24 * 512, 24 * 512 + 4096).every((b) => b === 0x5e)).toBe(true);
    expect(targetTransferCounts(fx).rdmaReads - before.rdmaReads).toBe(1);
    // Bit 57 was not set: a plain SEND, which leaves this client's (non-invalidatable) MR keys alone.
    expect(targetTransferCounts(fx).remoteInvalidations - before.remoteInvalidations).toBe(0);
    await vq.close();
    outMr.deregister();
    inMr.deregister();
    await control.close();
  });
});

describe('a raw inline client', () => {
  /** Control queue with VOF_F_INLINE_DATA set, then DRIVER_OK; returns the instance and S. */
  async function negotiate(control: RawRdmaQueue): Promise<{ id: number; size: number }> {
    let size = 0;
    const id = await control.bringUp('disk0', async () => {
      expect(st(await control.call({ opcode: Opcode.SetFeature, commandId: 11, featureSelect: 0, feature: KEYED | INLINE }))).toBe('SUCCESS');
      const s = await control.call({ opcode: VOF_OP_GET_INLINE_DATA_SIZE, commandId: 12 });
      expect(st(s)).toBe('SUCCESS');
      size = s.readUInt32LE(4);
    });
    return { id, size };
  }

  it('a write whose only registered memory is the status byte lands in the file (no RDMA READ is possible); malformed requests get EOUTVQBUF and the queue goes on', async () => {
    const { fx, path } = targets.get(4112)!;
    const control = await RawRdmaQueue.open(fx.url);
    const { id, size } = await negotiate(control);
    expect(size).toBe(4112);
    const vq = await RawRdmaQueue.open(fx.url, { bytes: 16384, maxDescriptors: 64 });
    expect(st(await vq.connectVq(id, 0))).toBe('SUCCESS');
    const status = Buffer.alloc(1, 0xff);
    const inMr = vq.register(status, nativeBinding().access.REMOTE_WRITE);
    const statusDesc = descriptors([{ addr: inMr.address, length: 1, key: inMr.rkey }]);
    const write = (sector: bigint, fill: number) => Buffer.concat([encodeRequestHeader(BlkRequestType.OUT, sector), Buffer.alloc(4096, fill)]);
    const before = targetTransferCounts(fx);

    const ok = await vq.call({ opcode: Opcode.Vq, commandId: 1, outLength: WRITE_OUT, inLength: 1 }, Buffer.concat([statusDesc, write(40n, 0xa1)]));
    expect([st(ok), ok.readUInt32LE(4), status[0]]).toEqual(['SUCCESS', 1, 0]);
    expect(readFileSync(path).subarray(40 * 512, 40 * 512 + 4096).every((b) => b === 0xa1)).toBe(true);

    // Malformed: each answered EOUTVQBUF with its own command id, nothing written.
    const fileBefore = readFileSync(path);
    // (33 descriptors with a 16-byte readable part: the message still fits the receive buffer.)
    const cases: Array<[string, number, number, Buffer]> = [
      ['fewer bytes than out_length', WRITE_OUT, 1, Buffer.concat([statusDesc, write(48n, 0xb2).subarray(0, 4000)])],
      ['not whole descriptors', WRITE_OUT, 1, Buffer.concat([statusDesc, Buffer.alloc(8), write(48n, 0xb2)])],
      ['descriptors that do not add up to in_length', WRITE_OUT, 1, Buffer.concat([descriptors([{ addr: inMr.address, length: 2, key: inMr.rkey }]), write(48n, 0xb2)])],
      ['33 descriptors', 16, 0, Buffer.concat([descriptors(Array.from({ length: 33 }, () => ({ addr: inMr.address, length: 0, key: inMr.rkey }))), write(48n, 0xb2).subarray(0, 16)])],
    ];
    let cid = 10;
    for (const [what, out, inLength, rest] of cases) {
      status[0] = 0xff;
      const c = await vq.call({ opcode: Opcode.Vq, commandId: cid, outLength: out, inLength }, rest);
      expect([what, st(c), c.readUInt16LE(2), c.readUInt32LE(4), status[0]]).toEqual([what, 'EOUTVQBUF', cid, 0, 0xff]);
      cid++;
    }
    expect(readFileSync(path).equals(fileBefore)).toBe(true);
    expect(fx.logged(/VQ command 11: 24 bytes between the command and the inline data are not whole keyed descriptors: EOUTVQBUF/)).toBe(true);

    // The same queue still serves inline requests; none of them was RDMA-READ.
    status[0] = 0xff;
    const again = await vq.call({ opcode: Opcode.Vq, commandId: 20, outLength: WRITE_OUT, inLength: 1 }, Buffer.concat([statusDesc, write(56n, 0xc3)]));
    expect([st(again), status[0]]).toEqual(['SUCCESS', 0]);
    expect(readFileSync(path).subarray(56 * 512, 56 * 512 + 4096).every((b) => b === 0xc3)).toBe(true);
    const after = targetTransferCounts(fx);
    expect([after.inlineRequests - before.inlineRequests, after.rdmaReads - before.rdmaReads]).toEqual([6, 0]);

    // A message longer than the target's receive buffers (16 + 32 × 16 + S) costs the
    // connection (DECISIONS.md item 4): the instance's control queue and other devices go on.
    vq.send(Buffer.alloc(16), Buffer.alloc(16 + 32 * 16 + 8192 + 64));
    await vq.whenClosed(60000);
    await vq.close();
    inMr.deregister();
    expect(st(await control.call({ opcode: Opcode.Keepalive, commandId: 30 }))).toBe('SUCCESS');
    await control.close();
    const other = await BlockDevice.open(`${fx.url}/bystander`, { keepaliveIntervalMs: 0 });
    const data = randomBytes(4096);
    await other.write(0, data);
    expect((await other.read(0, 4096)).equals(data)).toBe(true);
    await other.close();
  });

  it('a virtqueue keeps the layout negotiated when it connected: clearing the bit later changes only virtqueues connected after', async () => {
    const { fx, path } = targets.get(4112)!;
    const control = await RawRdmaQueue.open(fx.url);
    const { id } = await negotiate(control);
    const vq0 = await RawRdmaQueue.open(fx.url, { bytes: 4112, maxDescriptors: 32 });
    expect(st(await vq0.connectVq(id, 0))).toBe('SUCCESS');
    expect(st(await control.call({ opcode: Opcode.SetFeature, commandId: 40, featureSelect: 0, feature: KEYED }))).toBe('SUCCESS');
    expect(st(await control.call({ opcode: VOF_OP_GET_INLINE_DATA_SIZE, commandId: 41 }))).toBe('ENOCMD');
    const vq1 = await RawRdmaQueue.open(fx.url);
    expect(st(await vq1.connectVq(id, 1))).toBe('SUCCESS');
    const { REMOTE_READ, REMOTE_WRITE } = nativeBinding().access;
    const status = Buffer.alloc(2, 0xff);
    const inMr0 = vq0.register(status.subarray(0, 1), REMOTE_WRITE);
    const inMr1 = vq1.register(status.subarray(1, 2), REMOTE_WRITE);
    const out = Buffer.concat([encodeRequestHeader(BlkRequestType.OUT, 64n), Buffer.alloc(4096, 0xd4)]);
    const before = targetTransferCounts(fx);
    // vq0: still inline.
    const a = await vq0.call({ opcode: Opcode.Vq, commandId: 1, outLength: WRITE_OUT, inLength: 1 }, Buffer.concat([descriptors([{ addr: inMr0.address, length: 1, key: inMr0.rkey }]), out]));
    expect([st(a), status[0]]).toEqual(['SUCCESS', 0]);
    // vq1: the seed's layout, read by RDMA READ.
    const outMr = vq1.register(out, REMOTE_READ);
    const b = await vq1.call(
      { opcode: Opcode.Vq, commandId: 1, outLength: WRITE_OUT, inLength: 1 },
      descriptors([
        { addr: outMr.address, length: WRITE_OUT, key: outMr.rkey },
        { addr: inMr1.address, length: 1, key: inMr1.rkey },
      ]),
    );
    expect([st(b), status[1]]).toEqual(['SUCCESS', 0]);
    expect(readFileSync(path).subarray(64 * 512, 64 * 512 + 4096).every((x) => x === 0xd4)).toBe(true);
    const after = targetTransferCounts(fx);
    expect([after.inlineRequests - before.inlineRequests, after.rdmaReads - before.rdmaReads]).toEqual([1, 1]);
    for (const q of [vq0, vq1]) await q.close();
    for (const mr of [inMr0, inMr1, outMr]) mr.deregister();
    await control.close();
  });
});
