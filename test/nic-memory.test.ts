import { describe, expect, it } from 'vitest';
import { BounceArena, type BounceSlice } from '../src/transport/rdma/initiator-memory.js';
import { NicMemory, NicMemoryTable } from '../src/transport/rdma/nic-memory.js';
import { RegisteredPool } from '../src/transport/rdma/registered-pool.js';
import { fakePd } from './helpers/fake-pd.js';
import type { MemoryRegion } from '../src/transport/rdma/native-binding.js';

// The one per-NIC memory both ends lease (docs/ARCHITECTURE.md section 3): its chunk pools
// (connections' RegisteredPools), its range slabs (allocateBuffer, bounce arenas), its one
// registration count and its one release path, with a PD that only keeps count.

const KiB = 1024;
const MiB = 1024 * KiB;
const WINDOWED = 0x11;
const target = { largestBuffer: 64 * KiB, limitBytes: 0, access: 1 };

/** A fake PD that also counts deallocs and the bytes still registered. */
function countingPd() {
  const pd = fakePd();
  const counts = { deallocs: 0 };
  pd.dealloc = () => {
    counts.deallocs++;
    return true;
  };
  const live = new Set<MemoryRegion>();
  const register = pd.registerMemory.bind(pd);
  pd.registerMemory = (buffer, access) => {
    const mr = register(buffer, access) as MemoryRegion & { deregister: () => void };
    const deregister = mr.deregister;
    mr.deregister = () => {
      deregister();
      live.delete(mr);
    };
    live.add(mr);
    return mr;
  };
  const liveBytes = () => [...live].reduce((n, r) => n + r.length, 0);
  return { pd, counts, liveBytes };
}

describe('connection pools: reservations of the NIC chunk pool', () => {
  it('each connection reserves its chunks from the NIC pool of its size and access, and gives them back at teardown', () => {
    const pd = fakePd();
    const mem = new NicMemory(pd);
    const a = new RegisteredPool(mem, 256, 8, 0);
    const b = new RegisteredPool(mem, 256, 8, 0);
    const other = new RegisteredPool(mem, 256, 4, WINDOWED); // other access: another pool
    expect(pd.made).toBe(3);
    expect(mem.stats().registeredBytes).toBe(8 * 256 + 8 * 256 + 4 * 256);
    // Every chunk of a pool is its own: all 8 of `a` and all 8 of `b` at once, none shared.
    const taken = [...Array.from({ length: 8 }, () => a.acquire(256)), ...Array.from({ length: 8 }, () => b.acquire(256))];
    const places = new Set(taken.map((t) => `${pd.regions.indexOf(t.mr)}:${t.offset}`));
    expect(places.size).toBe(16);
    expect(pd.made).toBe(3);
    for (const t of taken) t.release();
    a.destroy();
    expect(pd.live).toBe(2); // a's slab went with its chunks
    b.destroy();
    other.destroy();
    expect(pd.live).toBe(0);
    expect(mem.stats().registeredBytes).toBe(0);
  });

  it('connections set up and torn down for a long time leave no trace in the pool', () => {
    const pd = fakePd();
    const mem = new NicMemory(pd);
    const stays = new RegisteredPool(mem, 64, 2, 0);
    for (let i = 0; i < 1000; i++) {
      const a = new RegisteredPool(mem, 64, 3, 0);
      const b = new RegisteredPool(mem, 64, 5, 0);
      (i % 2 ? a : b).destroy();
      (i % 2 ? b : a).destroy();
    }
    const pool = mem.chunkPool(64, 0);
    expect([pool.slabs.length, pool.chunks, pool.wanted, pool.free.length, pd.live]).toEqual([1, 2, 2, 0, 1]);
    // A chunk handed out before all that is still the one it was.
    const c = stays.acquire(64);
    expect(c.mr).toBe(pd.regions[0]);
    c.release();
    stays.destroy();
    expect(pd.live).toBe(0);
  });

  it('a chunk of the ring is reachable by index, with no acquire', () => {
    const mem = new NicMemory(fakePd());
    const ring = new RegisteredPool(mem, 64, 4, 1);
    const at = new Set([0, 1, 2, 3].map((i) => ring.offsetOf(i)));
    expect(at.size).toBe(4);
    for (let i = 0; i < 4; i++) expect(ring.offsetOf(i) + 64).toBeLessThanOrEqual(ring.regionOf(i).length);
    ring.destroy();
  });

  it('oversized or exhausted: a dedicated registration, counted in registeredBytes and released with its buffer', () => {
    const pd = fakePd();
    const mem = new NicMemory(pd);
    const pool = new RegisteredPool(mem, 128, 1, 0);
    const one = pool.acquire(100);
    const big = pool.acquire(4096);
    const extra = pool.acquire(10); // the one chunk is taken
    expect([pd.live, pool.inUse]).toEqual([3, 3]);
    expect(mem.stats().registeredBytes).toBe(128 + 4096 + 10);
    big.release();
    extra.release();
    one.release();
    expect([pd.live, pool.inUse]).toEqual([1, 0]);
    expect(mem.stats().registeredBytes).toBe(128);
    pool.destroy();
    expect(pd.live).toBe(0);
  });

  it('a failed registration at setup throws and leaves nothing reserved', () => {
    const pd = fakePd(new Error('ibv_reg_mr failed: Cannot allocate memory'));
    const mem = new NicMemory(pd);
    expect(() => new RegisteredPool(mem, 64, 4, 0)).toThrow(/Cannot allocate memory/);
    expect(mem.chunkPool(64, 0).wanted).toBe(0);
  });
});

describe('windowed connection pools never share a region (soft-RoCE checks windows against whole regions)', () => {
  it('each windowed pool is a registration of its own, also after others came and went', () => {
    const pd = fakePd();
    const mem = new NicMemory(pd);
    const regionsOf = (p: RegisteredPool) => new Set(Array.from({ length: p.chunkCount }, (_, i) => p.regionOf(i)));
    const a = new RegisteredPool(mem, 256, 8, WINDOWED);
    const b = new RegisteredPool(mem, 256, 8, WINDOWED);
    a.destroy();
    const c = new RegisteredPool(mem, 256, 8, WINDOWED);
    const d = new RegisteredPool(mem, 256, 4, WINDOWED);
    for (const [x, y] of [[b, c], [b, d], [c, d]] as const) {
      for (const r of regionsOf(x)) expect(regionsOf(y).has(r)).toBe(false);
    }
    for (const p of [b, c, d]) expect(regionsOf(p).size).toBe(1);
    b.destroy();
    c.destroy();
    d.destroy();
    expect(pd.live).toBe(0);
  });
});

describe('one registration count for every kind of pooled memory', () => {
  it('request pools, connection chunks, range slabs and oversized fallbacks all count in registeredBytes; limitBytes bounds the request pools only', () => {
    const { pd, liveBytes } = countingPd();
    const mem = new NicMemory(pd, { ...target, limitBytes: 1 * MiB });
    mem.reserve(64);
    const ring = new RegisteredPool(mem, 4096, 512, 1); // 2 MiB: beyond the limit, yet registered
    const buf = mem.allocateBuffer(100, WINDOWED);
    const arena = new BounceArena(mem, 64 * KiB, WINDOWED);
    let oversized: BounceSlice | null = null;
    arena.acquire(64 * KiB + 1, (s) => (oversized = s));
    const s = mem.stats();
    expect(s.requestBytes).toBeLessThanOrEqual(1 * MiB);
    expect(s.registeredBytes).toBe(liveBytes());
    expect(s.registeredBytes).toBeGreaterThan(s.requestBytes + 2 * MiB);
    arena.release(oversized!);
    arena.destroy();
    mem.freeBuffer(buf);
    ring.destroy();
    expect(mem.stats().registeredBytes).toBe(liveBytes());
    mem.destroy();
    expect(pd.live).toBe(0);
  });
});

describe('range slabs (allocateBuffer) and bounce arenas', () => {
  it('allocateBuffer buffers share one registration of their access, another access gets its own; a bounce arena has a region of its own', () => {
    const pd = fakePd();
    const mem = new NicMemory(pd);
    const lease = mem.lease();
    const a = mem.allocateBuffer(5000, WINDOWED);
    const a2 = mem.allocateBuffer(100, WINDOWED);
    expect(pd.made).toBe(1);
    expect(mem.regionOf(a2)).toBe(mem.regionOf(a));
    // The arena never shares a region: on soft-RoCE a live window reaches its whole region.
    const arena = new BounceArena(mem, 64 * KiB, WINDOWED);
    expect(pd.made).toBe(2);
    expect(arena.region).not.toBe(mem.regionOf(a));
    expect(arena.region.length).toBe(64 * KiB);
    let slice: BounceSlice | null = null;
    arena.acquire(100, (s) => (slice = s));
    expect(slice!.mr).toBe(arena.region);
    expect(slice!.offset).toBe(0);
    const b = mem.allocateBuffer(100, 1);
    expect(pd.made).toBe(3);
    expect(mem.regionOf(b)).not.toBe(mem.regionOf(a));
    expect(mem.regionOf(Buffer.alloc(10))).toBeNull();
    expect(() => mem.freeBuffer(a.subarray(1))).toThrow(/not a buffer from allocateBuffer/);
    mem.freeBuffer(a);
    expect(() => mem.freeBuffer(a)).toThrow(/freed already/);
    // Freed and allocated again: the slab is still there, nothing registered.
    mem.freeBuffer(mem.allocateBuffer(5000, WINDOWED));
    expect(pd.made).toBe(3);
    arena.release(slice!);
    arena.destroy();
    expect(pd.live).toBe(2); // the arena's region went with it; range slabs stay while the memory lives
    mem.freeBuffer(a2);
    mem.freeBuffer(b);
    expect(pd.live).toBe(2);
    lease.release();
    expect(pd.live).toBe(0);
  });
});

/** A NIC memory table whose PDs are counting fakes, kept in `pds` in the order they were made. */
function tableWithCountingPds() {
  const table = new NicMemoryTable();
  const pds: Array<ReturnType<typeof countingPd>> = [];
  const make = () => {
    const p = countingPd();
    pds.push(p);
    return p.pd;
  };
  return { table, pds, make };
}

describe('the table: one memory and one PD per NIC for both ends', () => {
  it('an initiator and a target on one NIC share one PD; it goes with the last lease and the last allocateBuffer buffer', () => {
    const { table, pds, make } = tableWithCountingPds();
    const initiator = table.lease('rxe0', make); // no request pools
    expect(initiator.memory.largestBuffer).toBe(0);
    expect(initiator.memory.stats().classes).toEqual([]);
    const t = table.lease('rxe0', make, target);
    expect(pds).toHaveLength(1);
    expect(t.memory).toBe(initiator.memory);
    expect(t.memory.largestBuffer).toBe(64 * KiB);
    const buf = t.memory.allocateBuffer(100, WINDOWED);
    initiator.release();
    t.release();
    expect(pds[0]!.counts.deallocs).toBe(0); // the buffer still uses it
    expect(table.devices).toEqual(['rxe0']);
    t.memory.freeBuffer(buf);
    expect(pds[0]!.counts.deallocs).toBe(1);
    expect(pds[0]!.pd.live).toBe(0);
    expect(table.devices).toEqual([]);
  });

  it('forget: new connections get a new memory; the old one goes with its last user, and leaves the new one in place', () => {
    const { table, pds, make } = tableWithCountingPds();
    const old = table.lease('rxe0', make);
    table.forget('rxe0', old.memory);
    const fresh = table.lease('rxe0', make, target);
    expect(pds).toHaveLength(2);
    expect(fresh.memory).not.toBe(old.memory);
    table.forget('rxe0', old.memory); // a late report about the old memory: the new one stays
    expect(table.get('rxe0')).toBe(fresh.memory);
    old.release();
    expect(pds[0]!.counts.deallocs).toBe(1);
    expect(table.get('rxe0')).toBe(fresh.memory);
    fresh.release();
    expect(table.devices).toEqual([]);
  });
});
