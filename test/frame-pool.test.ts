import { describe, expect, it } from 'vitest';
import { FramePool, FrameRetention } from '../src/transport/tcp/frame-pool.js';

describe('FramePool (TCP completion frames)', () => {
  it('hands out power-of-two frames and reuses a given-back frame of the same class', () => {
    const pool = new FramePool(1 << 20, new FrameRetention(1 << 20));
    const a = pool.take(16 + 4097);
    expect(a.length).toBe(8192);
    expect(pool.take(10).length).toBe(512);
    pool.give(a);
    expect(pool.keptBytes).toBe(8192);
    expect(pool.take(5000)).toBe(a);
    expect(pool.keptBytes).toBe(0);
    // A frame above the largest class is the caller's alone, never kept.
    const huge = pool.take(9 * 1024 * 1024);
    expect(huge.length).toBe(9 * 1024 * 1024);
    pool.give(huge);
    expect(pool.keptBytes).toBe(0);
  });

  it('keeps at most its own limit, and all pools together at most the shared limit', () => {
    const shared = new FrameRetention(3 * 8192);
    const one = new FramePool(2 * 8192, shared);
    const two = new FramePool(2 * 8192, shared);
    const frames = Array.from({ length: 3 }, () => one.take(8192));
    for (const f of frames) one.give(f);
    expect(one.keptBytes).toBe(2 * 8192); // its own limit
    const others = Array.from({ length: 3 }, () => two.take(8192));
    for (const f of others) two.give(f);
    expect(two.keptBytes).toBe(8192); // what the shared limit left
    expect(shared.kept).toBe(3 * 8192);
    // A closed pool gives its share back and keeps nothing given back later.
    one.close();
    expect(shared.kept).toBe(8192);
    one.give(frames[0]!);
    expect(one.keptBytes).toBe(0);
    expect(shared.kept).toBe(8192);
  });
});
