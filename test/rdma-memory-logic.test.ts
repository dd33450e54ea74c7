import { describe, expect, it } from 'vitest';
import { NicMemory, NicMemoryTable, QUEUE_CLASS_BYTES, SIZE_CLASSES } from '../src/transport/rdma/nic-memory.js';
import type { MemoryRegion, NativeBinding, ProtectionDomain, QueuePair, SendWr } from '../src/transport/rdma/native-binding.js';
import type { RegisteredBuffer } from '../src/transport/rdma/registered-pool.js';
import { SendQueue, SendStalledError, WR_WORDS } from '../src/transport/rdma/send-queue.js';

// Host-side tests of the RDMA memory and send-path logic, with fake verbs objects: the pool's
// wait queue, its bounds and its registration count, and the send queue's backlog bound and
// stall watchdog. The same code runs against rxe in test/rdma/nic-memory-rdma.test.ts.

const KiB = 1024;
const MiB = 1024 * KiB;

/** A PD that hands out fake regions and counts registrations like the addon does. */
class FakePd implements ProtectionDomain {
  regs = 0;
  live = new Set<MemoryRegion>();
  deallocated = false;
  failNext = false;
  registerMemory(buffer: Uint8Array, _access: number): MemoryRegion {
    if (this.failNext) {
      this.failNext = false;
      throw new Error('ibv_reg_mr failed: Cannot allocate memory');
    }
    this.regs++;
    const buf = Buffer.from(buffer.buffer, buffer.byteOffset, buffer.byteLength);
    const mr: MemoryRegion = { lkey: this.regs, rkey: this.regs, address: 0n, length: buf.length, buffer: buf, deregister: () => this.live.delete(mr) };
    this.live.add(mr);
    return mr;
  }
  dealloc(): boolean {
    this.deallocated = true;
    return true;
  }
  registrations(): number {
    return this.regs;
  }
  get liveBytes(): number {
    let n = 0;
    for (const mr of this.live) n += mr.length;
    return n;
  }
}

const LARGEST = 4 * MiB + 8 * KiB;
const options = (limitBytes: number) => ({ largestBuffer: LARGEST, limitBytes, access: 1 });

describe('device memory (size classes, FIFO wait queue, limit)', () => {
  it('starts with one buffer per class; a queue grows each class at setup, within the limit', () => {
    const pd = new FakePd();
    const mem = new NicMemory(pd, options(256 * MiB));
    const sizes = mem.stats().classes.map((c) => c.size);
    expect(sizes).toEqual([...SIZE_CLASSES, LARGEST]);
    expect(mem.stats().classes.every((c) => c.buffers === 1)).toBe(true);
    const r = mem.reserve(128);
    const byClass = mem.stats().classes.map((c) => c.buffers);
    // 1 + min(128, 8 MiB / size) per class (at least one more).
    expect(byClass).toEqual(sizes.map((s) => 1 + Math.max(1, Math.min(128, Math.floor(QUEUE_CLASS_BYTES / s)))));
    expect(mem.stats().registeredBytes).toBe(pd.liveBytes);
    // A second queue shares the classes; when both go, the pools shrink back to one buffer
    // each, a slab as soon as all its buffers are back.
    mem.reserve(128).release();
    const r2 = mem.reserve(128);
    const held = mem.tryAcquire(100)!;
    r.release();
    r2.release();
    expect(mem.stats().classes[0]!.buffers).toBe(1 + 128); // the slab `held` is in stays
    expect(mem.stats().classes.slice(1).every((c) => c.buffers === 1)).toBe(true);
    held.release();
    expect(mem.stats().classes.every((c) => c.buffers === 1)).toBe(true);
    expect(mem.stats().registeredBytes).toBe(pd.liveBytes);
  });

  it('never registers more than the limit (beyond one buffer per class)', () => {
    const pd = new FakePd();
    const mem = new NicMemory(pd, options(16 * MiB));
    for (let i = 0; i < 20; i++) mem.reserve(256);
    expect(mem.stats().registeredBytes).toBeLessThanOrEqual(16 * MiB);
    expect(pd.liveBytes).toBe(mem.stats().registeredBytes);
  });

  it('a request takes one buffer of the smallest class that holds out + in', async () => {
    const mem = new NicMemory(new FakePd(), options(64 * MiB));
    const small = await mem.acquire(16 + 1);
    const io4k = await mem.acquire(16 + 4096 + 1);
    const io1m = await mem.acquire(16 + MiB + 1);
    const io4m = await mem.acquire(16 + 4 * MiB + 1);
    expect(small.mr.length).toBe(512);
    expect(io4k.mr.length).toBe(16 * KiB + 4096);
    expect(io1m.mr.length).toBe(MiB + 4096);
    expect(io4m.mr.length).toBe(LARGEST);
    expect(io4k.view.length).toBe(16 + 4096 + 1);
    expect(() => mem.tryAcquire(LARGEST + 1)).toThrow(RangeError);
  });

  it('a short pool makes requests wait in FIFO order, and never registers on the data path', async () => {
    const pd = new FakePd();
    const mem = new NicMemory(pd, options(0)); // one buffer per class, nothing more
    const regs = pd.regs;
    const first = await mem.acquire(4096);
    const order: number[] = [];
    const waiting = [1, 2, 3, 4, 5].map((i) => mem.acquire(4096).then((b) => (order.push(i), b)));
    await Promise.resolve();
    expect(mem.stats().classes[1]!.waiting).toBe(5);
    let held: RegisteredBuffer = first;
    for (let i = 0; i < 5; i++) {
      held.release();
      held = await waiting[i]!;
    }
    held.release();
    expect(order).toEqual([1, 2, 3, 4, 5]);
    expect(pd.regs).toBe(regs);
    expect(mem.stats().waits).toBe(5);
    expect(mem.stats().classes[1]!.free).toBe(1);
  });

  it('many concurrent requests through a one-buffer pool all complete with their own data', async () => {
    const mem = new NicMemory(new FakePd(), options(0));
    const results = await Promise.all(
      Array.from({ length: 64 }, async (_, i) => {
        const b = await mem.acquire(8192);
        b.view.fill(i);
        await new Promise((r) => setTimeout(r, 0));
        const ok = b.view.every((x) => x === i);
        b.release();
        return ok;
      }),
    );
    expect(results.every(Boolean)).toBe(true);
  });

  it('a growing pool serves its waiters; an aborted wait leaves the queue', async () => {
    const pd = new FakePd();
    const mem = new NicMemory(pd, options(64 * MiB));
    const first = await mem.acquire(100);
    const ac = new AbortController();
    const aborted = mem.acquire(100, ac.signal);
    const served = mem.acquire(100);
    ac.abort(new Error('connection closed'));
    await expect(aborted).rejects.toThrow('connection closed');
    mem.reserve(4); // queue setup: more 512-byte buffers
    const b = await served;
    expect(b.view.length).toBe(100);
    expect(mem.stats().classes[0]!.waiting).toBe(0);
    first.release();
    b.release();
  });

  it('a failed registration while growing is logged, not thrown: requests wait instead', async () => {
    const pd = new FakePd();
    const warnings: string[] = [];
    const log = { debug() {}, info() {}, warn: (m: string) => warnings.push(m), error() {} };
    const mem = new NicMemory(pd, options(64 * MiB), log as never);
    pd.failNext = true;
    mem.reserve(8);
    expect(warnings.join()).toMatch(/cannot register/);
    const b = await mem.acquire(10);
    b.release();
  });

  it('the table shares one PD per device and releases it with the last user', () => {
    const table = new NicMemoryTable();
    const pds: FakePd[] = [];
    const make = () => {
      const pd = new FakePd();
      pds.push(pd);
      return pd;
    };
    const a = table.lease('rxe0', make, options(64 * MiB));
    const b = table.lease('rxe0', make, options(64 * MiB));
    const c = table.lease('mlx5_0', make, options(64 * MiB));
    expect(pds).toHaveLength(2);
    expect(a.memory).toBe(b.memory);
    a.release();
    a.release(); // once only
    expect(pds[0]!.deallocated).toBe(false);
    b.release();
    expect(pds[0]!.deallocated).toBe(true);
    expect(pds[0]!.live.size).toBe(0);
    expect(table.devices).toEqual(['mlx5_0']);
    c.release();
    expect(table.devices).toEqual([]);
  });
});

/** A QP whose sends complete only when the test says so; records the wr_id of each request posted. */
class FakeQp implements QueuePair {
  posted: Array<Array<{ wrId: number }>> = [];
  postSend(staging: Uint32Array, count: number): void {
    this.posted.push(Array.from({ length: count }, (_, i) => ({ wrId: staging[i * WR_WORDS]! })));
  }
  postRecv(): void {}
  query() {
    return { state: 3, rnrRetry: 6, retryCount: 7, minRnrTimer: 0, timeout: 14 };
  }
}
const binding = { wcStatusName: (s: number) => `status ${s}` } as unknown as NativeBinding;
const send = (): SendWr[] => [{ wrId: 0, opcode: 0, signaled: true, sg: [] }];

describe('send queue limits (a peer that stops receiving)', () => {
  it('a backlog beyond its bound fails the queue and tells the owner once', async () => {
    const qp = new FakeQp();
    const stalls: Error[] = [];
    const sq = new SendQueue(qp, 2, binding, { maxBacklog: 3, onFail: (e) => stalls.push(e) });
    const chains = Array.from({ length: 6 }, () => sq.post(send(), 'completion').catch((e: Error) => e));
    const results = await Promise.all(chains);
    expect(qp.posted).toHaveLength(0); // the queue failed before the turn ended: the accepted chains were never posted
    expect(results.every((r) => r instanceof SendStalledError)).toBe(true);
    expect(stalls).toHaveLength(1);
    await expect(sq.post(send(), 'later')).rejects.toBeInstanceOf(SendStalledError);
  });

  it('work outstanding with no completion for the stall timeout fails the queue', async () => {
    const qp = new FakeQp();
    let stalled: Error | null = null;
    const sq = new SendQueue(qp, 4, binding, { stallTimeoutMs: 100, onFail: (e) => (stalled = e) });
    const chain = sq.post(send(), 'completion');
    await expect(chain).rejects.toThrow(/no send completion for 100 ms/);
    expect(stalled).toBeInstanceOf(SendStalledError);
  });

  it('a slow but moving queue, and an idle one, are not stalled', async () => {
    const qp = new FakeQp();
    let stalled: Error | null = null;
    const sq = new SendQueue(qp, 4, binding, { stallTimeoutMs: 200, onFail: (e) => (stalled = e) });
    for (let i = 0; i < 8; i++) {
      const p = sq.post(send(), 'completion');
      await new Promise((r) => setTimeout(r, 60));
      sq.complete(qp.posted[qp.posted.length - 1]![0]!.wrId, 0);
      await p;
    }
    await new Promise((r) => setTimeout(r, 500)); // idle
    expect(stalled).toBeNull();
    sq.fail(new Error('closed'));
  });
});
