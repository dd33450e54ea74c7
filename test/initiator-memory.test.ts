import { describe, expect, it } from 'vitest';
import { BounceArena, type BounceSlice } from '../src/transport/rdma/initiator-memory.js';
import { NicMemory } from '../src/transport/rdma/nic-memory.js';
import { fakePd } from './helpers/fake-pd.js';
import { RangeAllocator } from '../src/transport/rdma/range-allocator.js';

describe('RangeAllocator', () => {
  it('hands out aligned, disjoint ranges and merges them back on release', () => {
    const a = new RangeAllocator(1024, 64);
    const r1 = a.allocate(1)!;
    const r2 = a.allocate(100)!;
    const r3 = a.allocate(64)!;
    expect([r1, r2, r3]).toEqual([
      { offset: 0, length: 64 },
      { offset: 64, length: 128 },
      { offset: 192, length: 64 },
    ]);
    expect(a.allocate(1024)).toBeNull();
    a.release(r2);
    a.release(r1);
    a.release(r3);
    expect(a.bytesInUse).toBe(0);
    expect(a.allocate(1024)).toEqual({ offset: 0, length: 1024 });
  });

  it('refuses a double release', () => {
    const a = new RangeAllocator(1024, 64);
    const r = a.allocate(64)!;
    a.release(r);
    expect(() => a.release(r)).toThrow(/released twice/);
  });
});

describe('BounceArena', () => {
  it('serves waiters first come, first served, registering nothing after setup', () => {
    const pd = fakePd();
    const arena = new BounceArena(new NicMemory(pd), 4096, 0);
    expect(pd.made).toBe(1);
    const got: string[] = [];
    const held: BounceSlice[] = [];
    arena.acquire(3000, (s) => (got.push('a'), held.push(s)));
    arena.acquire(2000, (s) => (got.push('b'), held.push(s)));
    // c would fit now, but b waits first.
    arena.acquire(512, (s) => (got.push('c'), held.push(s)));
    expect(got).toEqual(['a']);
    expect(arena.waiters).toBe(2);
    arena.release(held[0]!);
    expect(got).toEqual(['a', 'b', 'c']);
    expect(pd.made).toBe(1);
  });

  it('gives a command larger than the whole arena a registration of its own, released with it', () => {
    const pd = fakePd();
    const arena = new BounceArena(new NicMemory(pd), 4096, 0);
    let slice: BounceSlice | null = null;
    arena.acquire(10000, (s) => (slice = s));
    expect(slice!.view.length).toBe(10000);
    expect([pd.live, arena.oversized]).toEqual([2, 1]);
    arena.release(slice!);
    expect(pd.live).toBe(1);
    arena.destroy();
    expect(pd.live).toBe(0);
  });
});
