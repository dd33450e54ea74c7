import { describe, expect, it } from 'vitest';
import { FramePool, FrameRetention } from '../src/transport/tcp/frame-pool.js';

describe('FramePool (TCP completion frames)', () => {
  it('hands out frames of a power of two of data plus 64 bytes and reuses a given-back frame of the same class', () => {
    const pool = new FramePool(1 << 20, new FrameRetention(1 << 20));
    // A 4 KiB read's completion (16-byte header, 4096 bytes and the status byte) and a 4 KiB
    // write's gathered payload (16-byte request header and 4096 bytes) fit one 4160-byte frame;
    // as bare powers of two they took 8 KiB, and the budgets count what a frame holds.
    expect(pool.take(16 + 4096 + 1).length).toBe(4096 + 64);
    expect(pool.take(16 + 4096).length).toBe(4096 + 64);
    expect(FramePool.heldBytes(16 + 4096 + 1)).toBeLessThanOrEqual(4096 + 64 + 4096);
    const a = pool.take(16 + 4097 + 64);
    expect(a.length).toBe(8192 + 64);
    expect(pool.take(10).length).toBe(512 + 64);
    pool.give(a);
    expect(pool.keptBytes).toBe(8192 + 64);
    expect(pool.take(5000)).toBe(a);
    // Not a whole frame of a class: never kept.
    pool.give(Buffer.alloc(8192));
    expect(pool.keptBytes).toBe(0);
    // A frame above the largest class is the caller's alone, never kept.
    const huge = pool.take(9 * 1024 * 1024);
    expect(huge.length).toBe(9 * 1024 * 1024);
    pool.give(huge);
    expect(pool.keptBytes).toBe(0);
  });

  it('keeps at most its own limit, and all pools together at most the shared limit', () => {
    const F = 8192 + 64; // one frame of the 8 KiB class
    const shared = new FrameRetention(3 * F);
    const one = new FramePool(2 * F, shared);
    const two = new FramePool(2 * F, shared);
    const frames = Array.from({ length: 3 }, () => one.take(F));
    for (const f of frames) one.give(f);
    expect(one.keptBytes).toBe(2 * F); // its own limit
    const others = Array.from({ length: 3 }, () => two.take(F));
    for (const f of others) two.give(f);
    expect(two.keptBytes).toBe(F); // what the shared limit left
    expect(shared.kept).toBe(3 * F);
    // A closed pool gives its share back and keeps nothing given back later.
    one.close();
    expect(shared.kept).toBe(F);
    one.give(frames[0]!);
    expect(one.keptBytes).toBe(0);
    expect(shared.kept).toBe(F);
  });
});
