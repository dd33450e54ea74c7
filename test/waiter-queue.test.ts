import { describe, expect, it } from 'vitest';
import { WaiterQueue } from '../src/util/waiter-queue.js';

// The one FIFO of waiters (src/util/waiter-queue.ts) under the command-id, send-queue,
// registered-memory, bounce-arena, budget, token-bucket, NBD-source and io_uring waits.

function contents<T>(q: WaiterQueue<T>): T[] {
  const out: T[] = [];
  for (let n = q.length; n > 0; n--) {
    const t = q.shift()!;
    out.push(t);
    q.push(t);
  }
  return out;
}

describe('WaiterQueue', () => {
  it('serves waiters first in, first out, across the ring wrapping and growing', () => {
    const q = new WaiterQueue<number>(Number.POSITIVE_INFINITY);
    const served: number[] = [];
    let next = 0;
    // Interleaved: the head moves while the ring grows, so the copy on growth must keep order.
    for (let round = 0; round < 20; round++) {
      for (let i = 0; i < 3; i++) q.push(next++);
      served.push(q.shift()!);
    }
    while (q.length > 0) served.push(q.shift()!);
    expect(served).toEqual(Array.from({ length: 60 }, (_, i) => i));
    expect(q.shift()).toBeUndefined();
    expect(q.peek()).toBeUndefined();
  });

  it('peek() shows the head without taking it', () => {
    const q = new WaiterQueue<string>(4);
    q.push('a');
    q.push('b');
    expect(q.peek()).toBe('a');
    expect(q.length).toBe(2);
    expect(q.shift()).toBe('a');
    expect(q.peek()).toBe('b');
  });

  it('remove() cancels a waiter in the middle (head wrapped round the ring) and keeps the others in order', () => {
    const q = new WaiterQueue<string>(8);
    // Move the head off slot 0 so the waiters straddle the end of the ring.
    for (const s of ['x', 'y', 'z']) q.push(s);
    q.shift();
    q.shift();
    q.shift();
    for (const s of ['a', 'b', 'c', 'd', 'e']) q.push(s);
    expect(q.remove('c')).toBe(true);
    expect(q.remove('c')).toBe(false);
    expect(q.includes('c')).toBe(false);
    expect(q.length).toBe(4);
    expect(contents(q)).toEqual(['a', 'b', 'd', 'e']);
    expect(q.remove('a')).toBe(true);
    expect(q.remove('e')).toBe(true);
    expect(q.drain()).toEqual(['b', 'd']);
    expect(q.length).toBe(0);
  });

  it('refuses one more than its limit, and holds no more slots than the most that waited', () => {
    const q = new WaiterQueue<number>(3);
    expect(q.push(1) && q.push(2) && q.push(3)).toBe(true);
    expect(q.full).toBe(true);
    expect(q.push(4)).toBe(false);
    expect(contents(q)).toEqual([1, 2, 3]);
    expect(q.capacity).toBeLessThanOrEqual(3);

    // Throughput does not grow the ring: 10000 waits, never more than 5 at once.
    const r = new WaiterQueue<number>(Number.POSITIVE_INFINITY);
    for (let i = 0; i < 10000; i++) {
      r.push(i);
      if (r.length === 5) r.shift();
    }
    expect(r.length).toBe(4);
    expect(r.capacity).toBeLessThanOrEqual(8);
  });

  it('a limit of 0 lets nobody wait', () => {
    const q = new WaiterQueue<number>(0);
    expect(q.push(1)).toBe(false);
    expect(q.length).toBe(0);
    expect(() => new WaiterQueue<number>(-1)).toThrow(RangeError);
  });

  it('insertByKey() puts a waiter back in key order, behind equal keys', () => {
    const q = new WaiterQueue<{ seq: number; tag: string }>(Number.POSITIVE_INFINITY);
    for (const seq of [2, 5, 9]) q.push({ seq, tag: '' });
    q.insertByKey({ seq: 4, tag: 'back' }, (w) => w.seq);
    q.insertByKey({ seq: 0, tag: 'first' }, (w) => w.seq);
    q.insertByKey({ seq: 5, tag: 'after-5' }, (w) => w.seq);
    expect(q.drain().map((w) => `${w.seq}${w.tag}`)).toEqual(['0first', '2', '4back', '5', '5after-5', '9']);
  });

  it('drain() returns every waiter oldest first and leaves an empty queue that works again', () => {
    const q = new WaiterQueue<number>(Number.POSITIVE_INFINITY);
    for (let i = 0; i < 7; i++) q.push(i);
    q.shift();
    expect(q.drain()).toEqual([1, 2, 3, 4, 5, 6]);
    q.push(42);
    expect(q.shift()).toBe(42);
  });
});
