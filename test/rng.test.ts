import { describe, expect, it } from 'vitest';
import { EntropyExport } from '../src/index.js';
import { TokenBucket } from '../src/target/rng/token-bucket.js';
import { rngSuite } from './suites/rng-suite.js';

rngSuite('TCP', 'tcp://127.0.0.1:0');

describe('rng token bucket', () => {
  it('grants at most the burst, in order, and releases waiters on close', async () => {
    const b = new TokenBucket(1000, 100);
    expect(await b.take(500)).toBe(100);
    const order: number[] = [];
    const first = b.take(50).then((n) => order.push(1) && n);
    const second = b.take(50).then((n) => order.push(2) && n);
    expect(b.waiting).toBe(2);
    expect(await first).toBe(50);
    expect(await second).toBe(50);
    expect(order).toEqual([1, 2]);
    const pending = b.take(100);
    b.close();
    expect(await pending).toBe(0);
    expect(await b.take(1)).toBe(0);
  });

  it('rejects a rate or burst that cannot work', () => {
    expect(() => new EntropyExport({ rate: 0 })).toThrow(RangeError);
    expect(() => new EntropyExport({ rate: 10, burst: 0 })).toThrow(RangeError);
  });
});
