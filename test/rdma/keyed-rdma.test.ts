import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkRequestType, BlockDevice, Opcode, encodeRequestHeader, statusName } from '../../src/index.js';
import { nativeBinding, type MemoryRegion } from '../../src/transport/rdma/native-binding.js';
import { RawRdmaQueue, descriptors } from '../helpers/raw-rdma-queue.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { rdmaAddress } from './rdma-env.js';
import { waitFor } from '../helpers/wait-for.js';

const st = (c: Buffer) => statusName(c.readUInt16LE(0));
const MiB = 1024 * 1024;

/** The raw queue's own protection domain, to register memory the target may legitimately use. */
const registerOn = (q: RawRdmaQueue, buf: Buffer, access: number): MemoryRegion => q.register(buf, access);

let fx: TargetFixture;
let diskPath: string;
let bystander: BlockDevice;

const READ_FAILED = /VQ command 1: RDMA READ of command 1: remote access error \(wc status 10\): EOUTVQBUF/;

beforeAll(async () => {
  // Keepalive off in practice: the bystander stays idle for long stretches under TCG.
  fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 600000 } });
  diskPath = await fx.addDisk('disk0', 4 * MiB, { numQueues: 2, queueSize: 16 });
  await fx.addDisk('bystander', MiB);
  await fx.listen(`rdma://${rdmaAddress()}:0`);
  bystander = await BlockDevice.open(`${fx.url}/bystander`, { keepaliveIntervalMs: 0 });
});
afterAll(async () => {
  await bystander?.close();
  await fx?.close();
});

async function bystanderStillWorks(round: number): Promise<void> {
  const data = Buffer.alloc(4096, round);
  await bystander.write(0, data);
  expect((await bystander.read(0, 4096)).equals(data)).toBe(true);
}

describe('keyed descriptors checked by the target', () => {
  it('a valid raw keyed write lands in the file; descriptor count and length errors get EOUTVQBUF and the queue goes on', async () => {
    const control = await RawRdmaQueue.open(fx.url);
    const id = await control.bringUp('disk0');
    const vq = await RawRdmaQueue.open(fx.url);
    expect(st(await vq.connectVq(id, 0))).toBe('SUCCESS');
    const { REMOTE_READ, REMOTE_WRITE } = nativeBinding().access;

    // header (16) + 4096 data, device-readable; 1 status byte, device-writable.
    const out = Buffer.concat([encodeRequestHeader(BlkRequestType.OUT, 8n), Buffer.alloc(4096, 0x3c)]);
    const status = Buffer.alloc(1, 0xff);
    const outMr = registerOn(vq, out, REMOTE_READ);
    const inMr = registerOn(vq, status, REMOTE_WRITE);
    const good = [
      { addr: outMr.address, length: 16, key: outMr.rkey },
      { addr: outMr.address + 16n, length: 4096, key: outMr.rkey },
      { addr: inMr.address, length: 1, key: inMr.rkey },
    ];
    const ok = await vq.call({ opcode: Opcode.Vq, commandId: 1, outLength: 4112, inLength: 1 }, descriptors(good));
    expect([st(ok), ok.readUInt32LE(4), status[0]]).toEqual(['SUCCESS', 1, 0]);
    expect(readFileSync(diskPath).subarray(8 * 512, 8 * 512 + 4096).every((x) => x === 0x3c)).toBe(true);

    // 33 descriptors: one more than Get Keyed Number Descriptors allows.
    const many = Array.from({ length: 33 }, (_, i) => ({ addr: outMr.address + BigInt(i), length: 1, key: outMr.rkey }));
    const tooMany = await vq.call({ opcode: Opcode.Vq, commandId: 2, outLength: 32, inLength: 1 }, descriptors(many));
    expect([st(tooMany), tooMany.readUInt16LE(2)]).toEqual(['EOUTVQBUF', 2]);
    // Lengths that do not add up, and a descriptor straddling the readable/writable boundary.
    const short = await vq.call({ opcode: Opcode.Vq, commandId: 3, outLength: 4112, inLength: 1 }, descriptors(good.slice(0, 2)));
    expect(st(short)).toBe('EOUTVQBUF');
    const straddle = [{ addr: outMr.address, length: 4113, key: outMr.rkey }];
    expect(st(await vq.call({ opcode: Opcode.Vq, commandId: 4, outLength: 4112, inLength: 1 }, descriptors(straddle)))).toBe('EOUTVQBUF');
    // Trailing bytes that are not a whole descriptor.
    expect(st(await vq.call({ opcode: Opcode.Vq, commandId: 5, outLength: 4112, inLength: 1 }, Buffer.concat([descriptors(good), Buffer.alloc(5)])))).toBe('EOUTVQBUF');

    // The same queue still serves a correct request.
    status[0] = 0xff;
    const again = await vq.call({ opcode: Opcode.Vq, commandId: 6, outLength: 4112, inLength: 1 }, descriptors(good));
    expect([st(again), status[0]]).toEqual(['SUCCESS', 0]);
    await vq.close();
    outMr.deregister();
    inMr.deregister();
    await control.close();
    await bystanderStillWorks(1);
  });

  it('a wrong key or an address outside the region fails that queue cleanly; the instance, other connections and the target go on', async () => {
    const control = await RawRdmaQueue.open(fx.url);
    const id = await control.bringUp('disk0');
    const { REMOTE_READ } = nativeBinding().access;
    const before = readFileSync(diskPath);

    let failures = 0;
    for (const [vqIndex, bad] of [
      [0, (mr: MemoryRegion) => ({ addr: mr.address, length: 4112, key: (mr.rkey ^ 0x5a5a00) >>> 0 })],
      [1, (mr: MemoryRegion) => ({ addr: mr.address + BigInt(MiB), length: 4112, key: mr.rkey })],
    ] as const) {
      const vq = await RawRdmaQueue.open(fx.url);
      expect(st(await vq.connectVq(id, vqIndex))).toBe('SUCCESS');
      const out = Buffer.concat([encodeRequestHeader(BlkRequestType.OUT, 0n), Buffer.alloc(4096, 0x77)]);
      const mr = registerOn(vq, out, REMOTE_READ);
      const statusMr = registerOn(vq, Buffer.alloc(1), nativeBinding().access.REMOTE_WRITE);
      vq.command({ opcode: Opcode.Vq, commandId: 1, outLength: 4112, inLength: 1 }, descriptors([bad(mr), { addr: statusMr.address, length: 1, key: statusMr.rkey }]));
      // An RC queue pair cannot survive a remote access error (the NIC moves both ends to the
      // error state), so no completion can arrive: the queue is closed on both sides instead,
      // and the target says why.
      await vq.whenClosed();
      await waitFor('the target to report the failed RDMA READ', () => fx.logs.filter((l) => READ_FAILED.test(l.msg)).length > failures, 60000);
      failures++;
      await vq.close();
      mr.deregister();
      statusMr.deregister();
    }
    // Nothing was written, the control queue still answers, and other devices keep working.
    expect(readFileSync(diskPath).equals(before)).toBe(true);
    expect(st(await control.call({ opcode: Opcode.Keepalive, commandId: 50 }))).toBe('SUCCESS');
    const vq = await RawRdmaQueue.open(fx.url);
    expect(st(await vq.connectVq(id, 0))).toBe('SUCCESS');
    await vq.close();
    await control.close();
    await bystanderStillWorks(2);
  });

  it('an initiator process killed mid-transfer: the target releases its QPs and MRs back to the baseline', async () => {
    const binding = nativeBinding();
    // Live resources only: registrationsTotal is a cumulative count.
    const live = () => {
      const { registrationsTotal: _, ...now } = binding.resourceCounts();
      return now;
    };
    const baseline = live();
    const instancesBefore = fx.target.instanceCount;
    const script = `
      const { BlockDevice } = await import(${JSON.stringify(new URL('../../dist/index.js', import.meta.url).href)});
      const d = await BlockDevice.open(${JSON.stringify(`${fx.url}/disk0`)}, { keepaliveIntervalMs: 0 });
      const data = Buffer.alloc(${MiB}, 0x11);
      let n = 0;
      for (;;) {
        await Promise.all([d.write(0, data), d.write(${MiB}, data), d.read(${2 * MiB}, ${MiB})]);
        if (++n === 2) console.log('transferring');
      }`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => d.toString().includes('transferring') && resolve());
      child.once('exit', (code) => reject(new Error(`initiator exited early with ${code}`)));
    });
    expect(fx.target.instanceCount).toBe(instancesBefore + 1);
    expect(binding.resourceCounts().queuePairs).toBeGreaterThan(baseline.queuePairs);
    child.kill('SIGKILL');
    // Not thrown here: the expects below show which resource stayed (a diff beats a timeout).
    await waitFor('the killed initiator\'s instance and resources to go', () => fx.target.instanceCount === instancesBefore && JSON.stringify(live()) === JSON.stringify(baseline), 120000, 100).catch(() => {});
    expect(live()).toEqual(baseline);
    expect(fx.target.instanceCount).toBe(instancesBefore);
    await bystanderStillWorks(3);
  });
});
