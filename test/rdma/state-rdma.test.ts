import { readFileSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { BlkConfig, BlkRequestType, FileBlockExport, Opcode, encodeRequestHeader, statusName, type KeyedDescriptor } from '../../src/index.js';
import { nativeBinding } from '../../src/transport/rdma/native-binding.js';
import { RawRdmaQueue, descriptors } from '../helpers/raw-rdma-queue.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { rdmaAddress } from './rdma-env.js';
import { waitFor } from '../helpers/wait-for.js';

/** Issue 10 over RDMA: reused command ids (finding 8), zero-length descriptors and seg_max (finding 9). */

const st = (c: Buffer) => statusName(c.readUInt16LE(0));
const MiB = 1024 * 1024;


let fx: TargetFixture;
let diskPath: string;

beforeAll(async () => {
  fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 600000 } });
  diskPath = await fx.addDisk('disk0', 4 * MiB, { numQueues: 1, queueSize: 16 });
  await fx.listen(`rdma://${rdmaAddress()}:0`);
});
afterAll(async () => {
  await fx?.close();
});
afterEach(() => {
  vi.restoreAllMocks();
});

/** A keyed OUT request of `fill` at `sector`: header and data device-readable, status writable. */
function writeRequest(vq: RawRdmaQueue, sector: bigint, fill: number) {
  const { REMOTE_READ, REMOTE_WRITE } = nativeBinding().access;
  const out = Buffer.concat([encodeRequestHeader(BlkRequestType.OUT, sector), Buffer.alloc(4096, fill)]);
  const status = Buffer.alloc(1, 0xff);
  const outMr = vq.register(out, REMOTE_READ);
  const inMr = vq.register(status, REMOTE_WRITE);
  return {
    status,
    descs: [
      { addr: outMr.address, length: 16, key: outMr.rkey },
      { addr: outMr.address + 16n, length: 4096, key: outMr.rkey },
      { addr: inMr.address, length: 1, key: inMr.rkey },
    ],
    release: () => {
      outMr.deregister();
      inMr.deregister();
    },
  };
}

describe('RDMA: command ids and keyed descriptors', () => {
  it('a second VQ command under an id in flight closes the queue; the first keeps its buffer, the second never runs', async () => {
    const control = await RawRdmaQueue.open(fx.url);
    const id = await control.bringUp('disk0');
    const vq = await RawRdmaQueue.open(fx.url);
    expect(st(await vq.connectVq(id, 0))).toBe('SUCCESS');
    // Hold the first write inside the device long enough for the duplicate to arrive.
    let started = 0;
    // Every write of the export goes through submitWrite (the per-command entry point).
    const original = FileBlockExport.prototype.submitWrite;
    vi.spyOn(FileBlockExport.prototype, 'submitWrite').mockImplementation(function (this: FileBlockExport, ...args: Parameters<FileBlockExport['submitWrite']>) {
      started++;
      setTimeout(() => original.apply(this, args), 1500);
    });
    const first = writeRequest(vq, 8n, 0x3c);
    const second = writeRequest(vq, 16n, 0xc3);
    vq.command({ opcode: Opcode.Vq, commandId: 1, outLength: 4112, inLength: 1 }, descriptors(first.descs));
    await waitFor('the first request to start', () => started === 1, 60000, 50);
    vq.command({ opcode: Opcode.Vq, commandId: 1, outLength: 4112, inLength: 1 }, descriptors(second.descs));
    await vq.whenClosed();
    expect(fx.logged(/closing the queue: \w+: command id 1 is already in flight/)).toBe(true);
    await new Promise((r) => setTimeout(r, 2000));
    const disk = readFileSync(diskPath);
    // The first write landed with its own bytes; the second touched nothing.
    expect(disk.subarray(8 * 512, 8 * 512 + 4096).every((x) => x === 0x3c)).toBe(true);
    expect(disk.subarray(16 * 512, 16 * 512 + 4096).every((x) => x === 0)).toBe(true);
    expect(started).toBe(1);
    first.release();
    second.release();
    await control.close();
  });

  it('zero-length keyed descriptors are accepted and move nothing', async () => {
    const control = await RawRdmaQueue.open(fx.url);
    const id = await control.bringUp('disk0');
    const vq = await RawRdmaQueue.open(fx.url);
    expect(st(await vq.connectVq(id, 0))).toBe('SUCCESS');
    const w = writeRequest(vq, 32n, 0x5e);
    const [hdr, data, status] = w.descs as [KeyedDescriptor, KeyedDescriptor, KeyedDescriptor];
    const empty = { addr: data.addr, length: 0, key: data.key };
    const c = await vq.call({ opcode: Opcode.Vq, commandId: 2, outLength: 4112, inLength: 1 }, descriptors([empty, hdr, empty, data, empty, status, empty]));
    expect([st(c), c.readUInt32LE(4), w.status[0]]).toEqual(['SUCCESS', 1, 0]);
    expect(readFileSync(diskPath).subarray(32 * 512, 32 * 512 + 4096).every((x) => x === 0x5e)).toBe(true);
    w.release();
    await vq.close();
    await control.close();
  });

  it('seg_max on a keyed queue is the descriptor limit minus header and status', async () => {
    const control = await RawRdmaQueue.open(fx.url);
    await control.bringUp('disk0');
    expect(st(await control.call({ opcode: Opcode.SetFeature, commandId: 10, featureSelect: 0, feature: 1n }))).toBe('SUCCESS');
    const k = await control.call({ opcode: Opcode.GetKeyedNumDescs, commandId: 11 });
    const seg = await control.call({ opcode: Opcode.GetConfig, commandId: 12, offset: BlkConfig.seg_max, bytes: 4 });
    expect(Number(seg.readBigUInt64LE(8))).toBe(k.readUInt8(4) - 2);
    await control.close();
  });
});
