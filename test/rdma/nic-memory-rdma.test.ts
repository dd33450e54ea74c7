import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlkRequestType, BlockDevice, Opcode, encodeCommand, encodeRequestHeader, statusName } from '../../src/index.js';
import { nicMemories } from '../../src/transport/rdma/nic-memory.js';
import { WorkRequestStaging } from '../../src/transport/rdma/send-queue.js';
import { nativeBinding, type CmEvent, type CmId, type CompletionQueue, type EventChannel, type MemoryRegion, type ProtectionDomain, type QueuePair } from '../../src/transport/rdma/native-binding.js';
import { RNR_RETRY_COUNT } from '../../src/transport/rdma/rdma-limits.js';
import { RdmaTargetConnection } from '../../src/transport/rdma/rdma-target-connection.js';
import { RawRdmaQueue, descriptors } from '../helpers/raw-rdma-queue.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { rdmaAddress } from './rdma-env.js';
import { waitFor } from '../helpers/wait-for.js';

// Target registered memory per RDMA device (one PD, size-class pools, no registration on the
// data path) and a send path a peer cannot abuse (finite RNR retry, bounded backlog, stall
// timeout, callbacks that cannot end the process). docs/PROTOCOL.md "RDMA target memory".

const MiB = 1024 * 1024;
const STALL_MS = 5000;
const st = (c: Buffer) => statusName(c.readUInt16LE(0));
const binding = nativeBinding();

let fx: TargetFixture;

beforeAll(async () => {
  fx = new TargetFixture({ keepalive: { intervalMs: 60000, timeoutMs: 600000 }, limits: { sendStallTimeoutMs: STALL_MS } });
  await fx.addDisk('disk0', 128 * MiB, { numQueues: 4, queueSize: 128 });
  await fx.addDisk('other', 4 * MiB);
  await fx.listen(`rdma://${rdmaAddress()}:0`);
});
afterAll(async () => {
  await fx?.close();
});

/** The target's device memory (exists while a target connection is up). */
function targetMemory() {
  const name = nicMemories.devices[0];
  if (!name) throw new Error('no RDMA device memory: no target connection is up');
  return nicMemories.get(name)!;
}

describe('one protection domain per RDMA device', () => {
  it('every target connection on the device shares one PD, and I/O works on all of them', async () => {
    const before = binding.resourceCounts().protectionDomains;
    const dev = await BlockDevice.open(`${fx.url}/disk0`, { keepaliveIntervalMs: 0, maxQueues: 4 });
    // 5 connections (control + 4 virtqueues) on both ends, yet one PD for the device: the
    // process's NIC memory, which both ends lease, allocated from the first connection's CM id.
    const after = binding.resourceCounts().protectionDomains;
    expect(after - before).toBe(1);
    expect(nicMemories.devices).toHaveLength(1);
    const data = Array.from({ length: 16 }, (_, i) => Buffer.alloc(64 * 1024, i + 1));
    await Promise.all(data.map((d, i) => dev.write(i * d.length, d))); // spread over the 4 queues
    const back = await Promise.all(data.map((d, i) => dev.read(i * d.length, d.length)));
    back.forEach((b, i) => expect(b.equals(data[i]!)).toBe(true));
    await dev.close();
    await waitFor('the device memory to go with its last connection', () => nicMemories.devices.length === 0, 120000);
    expect(binding.resourceCounts().protectionDomains).toBe(before);
  });
});

describe('no memory registration on the data path', () => {
  it('QD 1..128 of mixed 4 KiB..1 MiB reads and writes: data correct, 0 ibv_reg_mr in the target', async () => {
    // The initiator runs in a child process: this process's native counter is the target's alone.
    const script = `
      const { BlockDevice } = await import(${JSON.stringify(new URL('../../dist/index.js', import.meta.url).href)});
      const dev = await BlockDevice.open(${JSON.stringify(`${fx.url}/disk0`)}, { keepaliveIntervalMs: 0, maxQueues: 1 });
      const sizes = [4096, 64 * 1024, 256 * 1024, ${MiB}];
      const pattern = (qd, i, gen, size) => { const b = Buffer.alloc(size); for (let j = 0; j < size; j += 512) b.writeUInt32LE((qd << 20) ^ (i << 8) ^ gen ^ j, j); return b; };
      await new Promise((r) => process.stdin.once('data', r));
      let ops = 0;
      for (const qd of [1, 4, 16, 64, 128]) {
        const size = (i) => sizes[(i + qd) % sizes.length];
        await Promise.all(Array.from({ length: qd }, (_, i) => dev.write(i * ${MiB}, pattern(qd, i, 1, size(i)))));
        // Mixed: even slots are read back while odd slots are rewritten, all at once.
        await Promise.all(Array.from({ length: qd }, async (_, i) => {
          if (i % 2 === 1) return dev.write(i * ${MiB}, pattern(qd, i, 2, size(i)));
          const b = await dev.read(i * ${MiB}, size(i));
          if (!b.equals(pattern(qd, i, 1, size(i)))) throw new Error('QD ' + qd + ' slot ' + i + ': wrong data');
        }));
        const back = await Promise.all(Array.from({ length: qd }, (_, i) => dev.read(i * ${MiB}, size(i))));
        back.forEach((b, i) => { if (!b.equals(pattern(qd, i, i % 2 ? 2 : 1, size(i)))) throw new Error('QD ' + qd + ' slot ' + i + ': wrong data after the mixed phase'); });
        ops += 3 * qd;
      }
      console.log('done ' + ops);
      await dev.close();
      process.exit(0);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    // The queues are set up (connected) once the target has reserved their memory.
    await waitFor('the initiator to connect its virtqueue', () => nicMemories.devices.length > 0 && targetMemory().stats().registeredBytes > 8 * MiB, 120000);
    await new Promise((r) => setTimeout(r, 1000));
    const regsBefore = binding.resourceCounts().registrationsTotal;
    const pdRegsBefore = targetMemory().stats().registrations;
    const waitsBefore = targetMemory().stats().waits;
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stdin.end('go\n');
    await waitFor('the I/O phase to end', () => /done \d+/.test(out), 600000);
    const stats = targetMemory().stats();
    const regsAfter = binding.resourceCounts().registrationsTotal;
    console.log(
      `I/O phase: ${/done (\d+)/.exec(out)![1]} requests, target ibv_reg_mr ${regsAfter - regsBefore} (process) / ${stats.registrations - pdRegsBefore} (device PD), ` +
        `${stats.waits - waitsBefore} waited for pool memory; registered ${(stats.registeredBytes / MiB).toFixed(1)} MiB in ` +
        stats.classes.map((c) => `${c.buffers}×${c.size}`).join(', '),
    );
    expect(await exited).toBe(0);
    expect(regsAfter - regsBefore).toBe(0);
    expect(stats.registrations - pdRegsBefore).toBe(0);
    await waitFor('the device memory to go with its last connection', () => nicMemories.devices.length === 0, 120000);
  });
});

/**
 * A raw verbs client from the binding: one RC queue pair that posts exactly the receives it is
 * told to, so it can stop receiving whenever the test wants.
 */
class RawVerbsPeer {
  readonly events: CmEvent[] = [];
  recvCompletions = 0;
  private readonly channel: EventChannel;
  private readonly cmId: CmId;
  private cq!: CompletionQueue;
  private pd!: ProtectionDomain;
  qp!: QueuePair;
  private sendMr!: MemoryRegion;
  private recvMr!: MemoryRegion;
  private nextSend = 0;
  private readonly staging = new WorkRequestStaging();

  private constructor() {
    this.channel = new binding.EventChannel((ev) => this.events.push(ev));
    this.cmId = new binding.CmId(this.channel);
  }

  private onCompletions(n: number): void {
    const wc = this.cq.completions;
    for (let i = 0; i < n; i++) if ((wc[this.cq.wordsPerCompletion * i + 2]! & 128) !== 0 && wc[this.cq.wordsPerCompletion * i + 1] === 0) this.recvCompletions++; // IBV_WC_RECV
  }

  private async expect(type: string): Promise<CmEvent> {
    await waitFor(`CM ${type}`, () => this.events.length > 0, 60000);
    const ev = this.events.shift()!;
    if (ev.type !== type) throw new Error(`expected ${type}, got ${ev.type}`);
    return ev;
  }

  static async connect(url: string, receives: number): Promise<RawVerbsPeer> {
    const p = new RawVerbsPeer();
    const u = new URL(url.replace(/^rdma:/, 'http:'));
    p.cmId.resolveAddr(u.hostname, Number(u.port), 2000);
    await p.expect('ADDR_RESOLVED');
    p.cmId.resolveRoute(2000);
    await p.expect('ROUTE_RESOLVED');
    p.pd = new binding.ProtectionDomain(p.cmId);
    p.cq = new binding.CompletionQueue(p.cmId, 2048, (n) => p.onCompletions(n));
    p.qp = p.cmId.createQp(p.pd, p.cq, { maxSendWr: 1024, maxRecvWr: 64, maxSendSge: 1, maxRecvSge: 1 });
    p.sendMr = p.pd.registerMemory(Buffer.alloc(1024 * 64), 0);
    p.recvMr = p.pd.registerMemory(Buffer.alloc(64 * 64), binding.access.LOCAL_WRITE);
    for (let i = 0; i < receives; i++) p.qp.postRecv(0x8000_0000 | i, p.recvMr, i * 64, 64);
    // The worst case: this peer asks for infinite RNR retries.
    p.cmId.connect({ responderResources: 16, initiatorDepth: 16, retryCount: 7, rnrRetryCount: 7 });
    await p.expect('ESTABLISHED');
    return p;
  }

  register(buf: Buffer, access: number): MemoryRegion {
    return this.pd.registerMemory(buf, access);
  }

  /** One SEND of `bytes` (≤ 64). */
  send(bytes: Buffer): void {
    const slot = this.nextSend++ % 1024;
    bytes.copy(this.sendMr.buffer, slot * 64);
    this.staging.reset();
    this.staging.add({ wrId: slot, opcode: 0, signaled: true, sg: [this.sendMr, slot * 64, bytes.length] });
    this.staging.post(this.qp);
  }

  received(slot: number): Buffer {
    return this.recvMr.buffer.subarray(slot * 64, slot * 64 + 16);
  }

  get disconnected(): boolean {
    return this.events.some((e) => e.type === 'DISCONNECTED');
  }

  destroy(): void {
    this.cmId.destroy();
    this.cq.destroy();
    this.sendMr.deregister();
    this.recvMr.deregister();
    this.pd.dealloc();
    this.channel.close();
  }
}

describe('a peer that stops posting receives', () => {
  it('gets its queue closed in bounded time; target memory bounded and given back; others keep working', async () => {
    const control = await RawRdmaQueue.open(fx.url);
    const id = await control.bringUp('disk0');
    const other = await BlockDevice.open(`${fx.url}/other`, { keepaliveIntervalMs: 0 });
    const live = () => binding.resourceCounts().memoryRegions;
    const mem = targetMemory();
    const regionsBefore = live();

    // One receive: for the answer to its virtqueue Connect. After that it never posts another.
    const peer = await RawVerbsPeer.connect(fx.url, 1);
    // The target's accept gave this QP a finite RNR retry count (rdma_cm: each end sets the other's).
    const attrs = peer.qp.query();
    console.log(`raw peer QP (asked for rnr_retry 7 on the target's): rnr_retry ${attrs.rnrRetry}, retry_cnt ${attrs.retryCount}, timeout ${attrs.timeout}`);
    expect(attrs.rnrRetry).toBe(RNR_RETRY_COUNT);
    peer.send(encodeCommand({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: id, vqIndex: 0, length: 0, queueSize: 64 }));
    await waitFor('the virtqueue Connect answer', () => peer.recvCompletions === 1, 60000);
    expect(st(peer.received(0))).toBe('SUCCESS');

    // Writes of 64 KiB whose data the target fetches (RDMA READ) and whose completions it can
    // never deliver: every request holds a pool buffer until its queue closes.
    const out = Buffer.concat([encodeRequestHeader(BlkRequestType.OUT, 0n), Buffer.alloc(64 * 1024, 0x5a)]);
    const outMr = peer.register(out, binding.access.REMOTE_READ);
    const statusMr = peer.register(Buffer.alloc(1), binding.access.REMOTE_WRITE);
    const started = Date.now();
    for (let i = 0; i < 200; i++) {
      peer.send(
        Buffer.concat([
          encodeCommand({ opcode: Opcode.Vq, commandId: i, outLength: out.length, inLength: 1 }),
          descriptors([
            { addr: outMr.address, length: out.length, key: outMr.rkey },
            { addr: statusMr.address, length: 1, key: statusMr.rkey },
          ]),
        ]),
      );
    }
    let peak = 0;
    await waitFor(
      'the target to close the stalled queue',
      () => {
        peak = Math.max(peak, mem.stats().registeredBytes);
        return peer.disconnected;
      },
      180000,
    );
    const closedAfter = Date.now() - started;
    console.log(`stalled queue closed ${closedAfter} ms after its first command; peak registered ${(peak / MiB).toFixed(1)} MiB (limit ${(mem.stats().limitBytes / MiB).toFixed(0)} MiB)`);
    expect(fx.logged(/queue pair failed \((no send completion|send queue: RNR retry|.*chains already wait).*\): closing the queue/)).toBe(true);
    expect(peak).toBeLessThanOrEqual(mem.stats().limitBytes);

    // Its requests' buffers are back in the pools, and its share of them is deregistered.
    await waitFor('the stalled queue to give its memory back', () => mem.stats().classes.every((c) => c.free === c.buffers && c.waiting === 0) && live() === regionsBefore + 4, 120000);
    // Everyone else: the control queue answers, another device reads and writes.
    expect(st(await control.call({ opcode: Opcode.Keepalive, commandId: 60 }))).toBe('SUCCESS');
    const data = Buffer.alloc(128 * 1024, 0x42);
    await other.write(0, data);
    expect((await other.read(0, data.length)).equals(data)).toBe(true);
    peer.destroy();
    await other.close();
    await control.close();
  });
});

describe('exceptions at the native callback boundary', () => {
  it('a throw while handling a received message closes that queue only; the process lives', async () => {
    const proto = RdmaTargetConnection.prototype as unknown as { onMessage(m: Buffer): void };
    const original = proto.onMessage;
    proto.onMessage = function (this: unknown, m: Buffer) {
      if (m.length >= 2 && m.readUInt16LE(0) === 0xbeef) throw new Error('injected fault in a CQ callback');
      return original.call(this, m);
    };
    try {
      const victim = await RawRdmaQueue.open(fx.url);
      const bystander = await RawRdmaQueue.open(fx.url);
      await bystander.bringUp('other');
      const bad = Buffer.alloc(16);
      bad.writeUInt16LE(0xbeef, 0);
      victim.send(bad);
      await victim.whenClosed(120000);
      await waitFor('the log line', () => fx.logged(/completion handler threw: injected fault in a CQ callback\): closing the queue/), 60000);
      expect(st(await bystander.call({ opcode: Opcode.Keepalive, commandId: 70 }))).toBe('SUCCESS');
      await bystander.close();
    } finally {
      proto.onMessage = original;
    }
  });

  it('a throw while handling a CM event closes that connection only; the process lives', async () => {
    const proto = RdmaTargetConnection.prototype as unknown as { onCmEvent(ev: CmEvent): void };
    const original = proto.onCmEvent;
    let armed = true;
    proto.onCmEvent = function (this: unknown, ev: CmEvent) {
      if (armed && ev.type === 'ESTABLISHED') {
        armed = false;
        throw new Error('injected fault in a CM callback');
      }
      return original.call(this, ev);
    };
    try {
      const victim = await RawRdmaQueue.open(fx.url);
      await waitFor('the log line', () => fx.logged(/RDMA CM ESTABLISHED event handler failed \(injected fault in a CM callback\): closing the connection/), 60000);
      await victim.whenClosed(120000);
      const next = await RawRdmaQueue.open(fx.url);
      await next.bringUp('other');
      expect(st(await next.call({ opcode: Opcode.Keepalive, commandId: 71 }))).toBe('SUCCESS');
      await next.close();
    } finally {
      proto.onCmEvent = original;
    }
  });
});
