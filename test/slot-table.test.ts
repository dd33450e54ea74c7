import { describe, expect, it } from 'vitest';
import { SlotTable } from '../src/util/slot-table.js';

/** Take `n` ids. */
function takeAll<T>(t: SlotTable<T>, n: number): number[] {
  const ids: number[] = [];
  for (let i = 0; i < n; i++) ids.push(t.take());
  return ids;
}

describe('SlotTable', () => {
  it('a fresh table hands out ids lowest first, whatever its order', () => {
    expect(takeAll(new SlotTable(4, 'oldest-freed'), 4)).toEqual([0, 1, 2, 3]);
    expect(takeAll(new SlotTable(4, 'last-freed'), 4)).toEqual([0, 1, 2, 3]);
  });

  it('oldest-freed: an id freed is taken again only after every other free id', () => {
    const t = new SlotTable(4, 'oldest-freed');
    takeAll(t, 3); // 0, 1, 2 taken; 3 free
    t.release(1);
    t.release(0);
    // 3 was free longest, then 1, then 0.
    expect(takeAll(t, 3)).toEqual([3, 1, 0]);
    t.release(3);
    t.release(2);
    t.release(0);
    expect(takeAll(t, 3)).toEqual([3, 2, 0]);
  });

  it('last-freed: the id freed last is taken next', () => {
    const t = new SlotTable(4, 'last-freed');
    takeAll(t, 3); // 0, 1, 2 taken; 3 free
    t.release(1);
    t.release(0);
    expect(takeAll(t, 3)).toEqual([0, 1, 3]);
  });

  it('last-freed hands out what a stack topped up with fresh ids would: freed ids first, then fresh ones ascending', () => {
    const t = new SlotTable(8, 'last-freed');
    expect(takeAll(t, 2)).toEqual([0, 1]);
    t.release(0);
    t.release(1);
    expect(takeAll(t, 3)).toEqual([1, 0, 2]);
  });

  it('a full table takes nothing (-1) until an id is released; counts follow', () => {
    for (const order of ['oldest-freed', 'last-freed'] as const) {
      const t = new SlotTable<string>(2, order);
      expect(t.take('a')).toBe(0);
      expect(t.take('b')).toBe(1);
      expect(t.take('c')).toBe(-1);
      expect(t.inUse).toBe(2);
      expect(t.free).toBe(0);
      expect(t.release(0)).toBe('a');
      expect(t.inUse).toBe(1);
      expect(t.free).toBe(1);
      expect(t.take('c')).toBe(0);
      expect(t.get(0)).toBe('c');
    }
    expect(new SlotTable(0, 'oldest-freed').take()).toBe(-1);
  });

  it('get finds the value by id; a free or unknown id holds nothing', () => {
    const t = new SlotTable<{ n: number }>(3, 'last-freed');
    const v = { n: 1 };
    const id = t.take(v);
    expect(t.get(id)).toBe(v);
    expect(t.isTaken(id)).toBe(true);
    expect(t.get(1)).toBeNull();
    expect(t.get(-1)).toBeNull();
    expect(t.get(99)).toBeNull();
    t.set(id, { n: 2 });
    expect(t.get(id)).toEqual({ n: 2 });
    t.release(id);
    expect(t.get(id)).toBeNull();
    expect(t.isTaken(id)).toBe(false);
    expect(() => t.set(id, v)).toThrow(/not taken/);
  });

  it('releasing an id that is not taken throws and changes nothing', () => {
    for (const order of ['oldest-freed', 'last-freed'] as const) {
      const t = new SlotTable(3, order);
      const id = t.take();
      t.release(id);
      expect(() => t.release(id)).toThrow(/slot 0 released but not taken/);
      expect(() => t.release(2)).toThrow(/not taken/);
      expect(() => t.release(7)).toThrow(/not taken/);
      expect(() => t.release(-1)).toThrow(/not taken/);
      expect(t.free).toBe(3);
      expect(t.inUse).toBe(0);
      // Every id is handed out once, none twice.
      expect(takeAll(t, 4).sort((x, y) => x - y)).toEqual([-1, 0, 1, 2]);
    }
  });

  it('walks the taken ids in ascending order, and releaseAll empties the table', () => {
    const t = new SlotTable<string>(6, 'oldest-freed');
    for (const v of ['a', 'b', 'c', 'd', 'e']) t.take(v);
    t.release(1);
    t.release(3);
    const walked: number[] = [];
    for (let id = t.nextTaken(-1); id >= 0; id = t.nextTaken(id)) walked.push(id);
    expect(walked).toEqual([0, 2, 4]);
    // A slot holding no value is released but not returned.
    t.set(2, null);
    expect(t.releaseAll()).toEqual(['a', 'e']);
    expect(t.inUse).toBe(0);
    expect(t.free).toBe(6);
    expect(t.nextTaken(-1)).toBe(-1);
  });

  it('resize grows the table: new ids become free, the free ids lowest first again', () => {
    for (const order of ['oldest-freed', 'last-freed'] as const) {
      const t = new SlotTable<string>(2, order);
      t.take('a');
      t.take('b');
      t.release(0);
      t.resize(4);
      expect(t.capacity).toBe(4);
      expect(t.get(1)).toBe('b');
      expect(t.free).toBe(3);
      expect(takeAll(t, 4)).toEqual([0, 2, 3, -1]);
    }
  });

  it('resize shrinks it: an id taken beyond the new capacity keeps its value, and is retired when released', () => {
    for (const order of ['oldest-freed', 'last-freed'] as const) {
      const t = new SlotTable<string>(4, order);
      for (const v of ['a', 'b', 'c', 'd']) t.take(v);
      t.release(1);
      t.resize(2);
      expect(t.free).toBe(1);
      expect(t.inUse).toBe(3);
      expect(t.get(3)).toBe('d');
      expect(t.release(3)).toBe('d');
      expect(t.free).toBe(1);
      expect(t.inUse).toBe(2);
      expect(() => t.release(3)).toThrow(/not taken/);
      expect(takeAll(t, 2)).toEqual([1, -1]);
      // Growing again hands the retired ids out once more.
      t.resize(4);
      expect(takeAll(t, 2)).toEqual([3, -1]);
    }
  });

  it('a capacity is a count', () => {
    expect(() => new SlotTable(-1, 'last-freed')).toThrow(RangeError);
    expect(() => new SlotTable(1.5, 'oldest-freed')).toThrow(RangeError);
  });

  it('the oldest-freed ring keeps its order across wrap-around', () => {
    const fifo = new SlotTable(3, 'oldest-freed');
    const lifo = new SlotTable(3, 'last-freed');
    const fifoOrder: number[] = [];
    const lifoOrder: number[] = [];
    let a = fifo.take();
    let b = lifo.take();
    // One id in use at a time, released and replaced many times around the ring.
    for (let i = 0; i < 7; i++) {
      fifo.release(a);
      a = fifo.take();
      fifoOrder.push(a);
      lifo.release(b);
      b = lifo.take();
      lifoOrder.push(b);
    }
    expect(fifoOrder).toEqual([1, 2, 0, 1, 2, 0, 1]);
    expect(lifoOrder).toEqual([0, 0, 0, 0, 0, 0, 0]);
  });
});
