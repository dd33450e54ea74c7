import { describe, expect, it } from 'vitest';
import { IovaMemory } from '../src/vduse/iova-memory.js';
import { DescriptorChain, RingError, SplitRing } from '../src/vduse/split-ring.js';

/*
 * The driver's side is played here on ordinary Buffers registered as IOVA regions: two
 * adjacent 64 KiB regions, so that chains can use both and a segment can straddle them.
 * Every field is written byte by byte (little-endian, as the spec lays it out) by this file's
 * own code, not by the module under test.
 */
const R1 = 0x10000;
const R2 = 0x20000;
const REGION = 0x10000;

const F_NEXT = 1;
const F_WRITE = 2;
const F_INDIRECT = 4;

/** The spec's vring_need_event (2.7.10), written out independently of the module. */
function specNeedEvent(event: number, newIdx: number, old: number): boolean {
  return (newIdx - event - 1 + 0x10000) % 0x10000 < (newIdx - old + 0x10000) % 0x10000;
}

interface Layout {
  size: number;
  eventIdx: boolean;
  desc: number;
  avail: number;
  used: number;
  availIdx?: number;
}

class Driver {
  readonly r1 = Buffer.alloc(REGION);
  readonly r2 = Buffer.alloc(REGION);
  readonly memory = new IovaMemory();
  private idx: number;

  constructor(readonly layout: Layout) {
    this.memory.add(R1, R1 + REGION - 1, this.r1);
    this.memory.add(R2, R2 + REGION - 1, this.r2);
    this.idx = layout.availIdx ?? 0;
    this.writeU16(layout.avail + 2, this.idx);
  }

  ring(): SplitRing {
    const { size, desc, avail, used, eventIdx, availIdx } = this.layout;
    return new SplitRing(this.memory, {
      size,
      descAddr: desc,
      driverAddr: avail,
      deviceAddr: used,
      eventIdx,
      ...(availIdx !== undefined ? { availIdx } : {}),
    });
  }

  at(iova: number): [Buffer, number] {
    if (iova >= R1 && iova < R1 + REGION) return [this.r1, iova - R1];
    if (iova >= R2 && iova < R2 + REGION) return [this.r2, iova - R2];
    throw new Error(`test bug: 0x${iova.toString(16)} is not in a region`);
  }

  writeU16(iova: number, v: number): void {
    const [b, o] = this.at(iova);
    b[o] = v & 0xff;
    b[o + 1] = (v >>> 8) & 0xff;
  }

  readU16(iova: number): number {
    const [b, o] = this.at(iova);
    return b[o]! | (b[o + 1]! << 8);
  }

  readU32(iova: number): number {
    const [b, o] = this.at(iova);
    return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
  }

  writeBytes(iova: number, bytes: Buffer): void {
    const [b, o] = this.at(iova);
    bytes.copy(b, o);
  }

  readBytes(iova: number, len: number): Buffer {
    const [b, o] = this.at(iova);
    return Buffer.from(b.subarray(o, o + len));
  }

  /** Writes descriptor i of the table at tableIova (default: the ring's table). */
  desc(i: number, addr: number, len: number, flags: number, next = 0, tableIova = this.layout.desc): void {
    const [b, o] = this.at(tableIova + 16 * i);
    const lo = addr % 0x1_0000_0000;
    const hi = Math.floor(addr / 0x1_0000_0000);
    for (let k = 0; k < 4; k++) b[o + k] = (lo >>> (8 * k)) & 0xff;
    for (let k = 0; k < 4; k++) b[o + 4 + k] = (hi >>> (8 * k)) & 0xff;
    for (let k = 0; k < 4; k++) b[o + 8 + k] = (len >>> (8 * k)) & 0xff;
    b[o + 12] = flags & 0xff;
    b[o + 13] = flags >>> 8;
    b[o + 14] = next & 0xff;
    b[o + 15] = next >>> 8;
  }

  /** Makes head available: ring entry, then avail.idx. */
  offer(head: number): void {
    this.writeU16(this.layout.avail + 4 + 2 * (this.idx % this.layout.size), head);
    this.idx = (this.idx + 1) & 0xffff;
    this.writeU16(this.layout.avail + 2, this.idx);
  }

  /** Writes avail.idx directly (for a driver that jumps). */
  setAvailIdx(v: number): void {
    this.idx = v;
    this.writeU16(this.layout.avail + 2, v);
  }

  set availFlags(v: number) {
    this.writeU16(this.layout.avail, v);
  }

  set usedEvent(v: number) {
    this.writeU16(this.layout.avail + 4 + 2 * this.layout.size, v);
  }

  get usedIdx(): number {
    return this.readU16(this.layout.used + 2);
  }

  get usedFlags(): number {
    return this.readU16(this.layout.used);
  }

  get availEvent(): number {
    return this.readU16(this.layout.used + 4 + 8 * this.layout.size);
  }

  usedElem(slot: number): { id: number; len: number } {
    const at = this.layout.used + 4 + 8 * slot;
    return { id: this.readU32(at), len: this.readU32(at + 4) };
  }

  /** Whether this driver would kick after moving avail.idx from old to new (2.7.10). */
  wouldKick(old: number, newIdx: number): boolean {
    if (this.layout.eventIdx) return specNeedEvent(this.availEvent, newIdx, old);
    return (this.usedFlags & 1) === 0;
  }
}

/** Size 8; descriptor table in R1, available ring in R1, used ring in R2 (the rings apart). */
function layout(over: Partial<Layout> = {}): Layout {
  return { size: 8, eventIdx: false, desc: R1 + 0x100, avail: R1 + 0x400, used: R2 + 0x800, ...over };
}

/** A virtio-blk style chain: header readable, data and status writable, in both regions. */
function blkChain(d: Driver, head: number, second: number, third: number): void {
  d.desc(head, R1 + 0x2000, 16, F_NEXT, second);
  d.desc(second, R2 + 0x3000, 512, F_NEXT | F_WRITE, third);
  d.desc(third, R1 + 0x4000, 1, F_WRITE);
}

function ringError(fn: () => unknown, pattern: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  // A RingError, not a RangeError from reading past a Buffer: the check came first.
  expect(thrown).toBeInstanceOf(RingError);
  expect((thrown as Error).message).toMatch(pattern);
}

describe('IovaMemory', () => {
  it('gives views wholly inside one region, down to its first and last byte', () => {
    const m = new IovaMemory();
    const a = Buffer.alloc(0x1000);
    a[0] = 0x11;
    a[0xfff] = 0x22;
    m.add(0x5000, 0x5fff, a);
    expect(m.view(0x5000, 1)![0]).toBe(0x11);
    expect(m.view(0x5fff, 1)![0]).toBe(0x22);
    expect(m.view(0x5000, 0x1000)!.length).toBe(0x1000);
    // The view is the mapping itself (no copy).
    m.view(0x5fff, 1)![0] = 0x33;
    expect(a[0xfff]).toBe(0x33);
    expect(m.view(0x5fff, 2)).toBeNull(); // one byte past the end
    expect(m.view(0x4fff, 1)).toBeNull(); // one byte before the start
    expect(m.view(0x6000, 1)).toBeNull();
    // Length 0: an empty view inside a region, nothing outside.
    expect(m.view(0x5fff, 0)!.length).toBe(0);
    expect(m.view(0x6000, 0)).toBeNull();
  });

  it('refuses a view straddling two adjacent regions', () => {
    const m = new IovaMemory();
    m.add(0x1000, 0x1fff, Buffer.alloc(0x1000));
    m.add(0x2000, 0x2fff, Buffer.alloc(0x1000));
    expect(m.view(0x1ff0, 0x10)).not.toBeNull();
    expect(m.view(0x1ff0, 0x11)).toBeNull();
    expect(m.view(0x2000, 0x1000)).not.toBeNull();
  });

  it('never throws on peer input: negative, fractional, NaN, huge', () => {
    const m = new IovaMemory();
    m.add(0, 0xfff, Buffer.alloc(0x1000));
    for (const [iova, len] of [
      [-1, 1],
      [0.5, 1],
      [Number.NaN, 1],
      [0, -1],
      [0, 1.5],
      [Number.MAX_SAFE_INTEGER, 1],
      [2 ** 64, 1],
      [0, 2 ** 60],
      [0, Number.POSITIVE_INFINITY],
    ] as const) {
      expect(m.view(iova, len)).toBeNull();
    }
  });

  it('refuses overlaps, a bad size and addresses above 2^53 - 1', () => {
    const m = new IovaMemory();
    m.add(0x2000, 0x2fff, Buffer.alloc(0x1000));
    expect(() => m.add(0x2000, 0x2fff, Buffer.alloc(0x1000))).toThrow(/overlaps/);
    expect(() => m.add(0x1800, 0x27ff, Buffer.alloc(0x1000))).toThrow(/overlaps/);
    expect(() => m.add(0x2800, 0x37ff, Buffer.alloc(0x1000))).toThrow(/overlaps/);
    expect(() => m.add(0x1000, 0x3fff, Buffer.alloc(0x3000))).toThrow(/overlaps/);
    expect(() => m.add(0x2fff, 0x2fff, Buffer.alloc(1))).toThrow(/overlaps/);
    // Touching is not overlapping.
    m.add(0x1000, 0x1fff, Buffer.alloc(0x1000));
    m.add(0x3000, 0x3fff, Buffer.alloc(0x1000));
    expect(m.size).toBe(3);
    expect(() => m.add(0x5000, 0x5fff, Buffer.alloc(0x800))).toThrow(/mapping is 2048/);
    expect(() => m.add(0x6000, 0x5fff, Buffer.alloc(0))).toThrow(RangeError);
    const top = Number.MAX_SAFE_INTEGER;
    expect(() => m.add(top, top + 1, Buffer.alloc(2))).toThrow(RangeError);
    m.add(top, top, Buffer.alloc(1)); // the last safe byte is fine
    expect(m.view(top, 1)).not.toBeNull();
    expect(m.size).toBe(4);
  });

  it('removes every region overlapping a range, returns their mappings, and changes generation', () => {
    const m = new IovaMemory();
    const a = Buffer.alloc(0x1000);
    const b = Buffer.alloc(0x1000);
    const c = Buffer.alloc(0x1000);
    m.add(0x1000, 0x1fff, a);
    m.add(0x2000, 0x2fff, b);
    m.add(0x4000, 0x4fff, c);
    const g = m.generation;
    // Touches a's last byte and b's first: both go, whole; c stays.
    const removed = m.remove(0x1fff, 0x2000);
    expect(removed).toHaveLength(2);
    expect(removed[0]).toBe(a);
    expect(removed[1]).toBe(b);
    expect(m.generation).not.toBe(g);
    expect(m.view(0x1000, 1)).toBeNull();
    expect(m.view(0x2fff, 1)).toBeNull();
    expect(m.view(0x4000, 1)).not.toBeNull();
    expect(m.remove(0x5000, 0x5fff)).toEqual([]);
    expect(m.remove(0, Number.MAX_SAFE_INTEGER)[0]).toBe(c);
    expect(m.size).toBe(0);
  });

  it('asks resolve() for a missing region once, then looks again', () => {
    const asked: number[] = [];
    const m = new IovaMemory({
      resolve: (iova) => {
        asked.push(iova);
        if (iova >= 0x8000 && iova < 0x9000) {
          m.add(0x8000, 0x8fff, Buffer.alloc(0x1000));
          return true;
        }
        return false;
      },
    });
    expect(m.view(0x8010, 4)).not.toBeNull();
    expect(m.view(0x8020, 4)).not.toBeNull(); // mapped now: not asked again
    expect(m.view(0xa000, 4)).toBeNull();
    expect(asked).toEqual([0x8010, 0xa000]);
  });
});

// SplitRing refuses any host but x86-64 (its memory-ordering argument; see split-ring.ts).
const X64 = process.arch === 'x64';
if (!X64) console.warn(`\n*** test/vduse-ring.test.ts: SplitRing tests SKIPPED: this host is ${process.arch}, SplitRing runs on x64 only ***\n`);

describe.skipIf(!X64)('SplitRing', () => {
  it('pops a virtio-blk chain across two regions and pushes it back (bytes on the wire)', () => {
    const d = new Driver(layout());
    const ring = d.ring();
    const chain = new DescriptorChain();
    expect(ring.pop(chain)).toBe(false); // nothing available
    d.writeBytes(R1 + 0x2000, Buffer.from('0123456789abcdef'));
    blkChain(d, 3, 5, 1);
    d.offer(3);
    expect(ring.pop(chain)).toBe(true);
    expect(chain.head).toBe(3);
    expect(chain.readable.map((b) => b.length)).toEqual([16]);
    expect(chain.writable.map((b) => b.length)).toEqual([512, 1]);
    expect(chain.readableBytes).toBe(16);
    expect(chain.writableBytes).toBe(513);
    expect(chain.readable[0]!.toString()).toBe('0123456789abcdef');
    // The writable segments are the driver's memory: what the device writes, the driver reads.
    chain.writable[0]!.fill(0xab);
    chain.writable[1]![0] = 0; // VIRTIO_BLK_S_OK
    expect(d.readBytes(R2 + 0x3000, 512).every((x) => x === 0xab)).toBe(true);
    expect(ring.inFlight).toBe(1);
    expect(ring.lastAvailIdx).toBe(1);
    expect(ring.pop(chain)).toBe(false);
    expect(d.usedIdx).toBe(0); // nothing published before push
    ring.push(3, 513);
    expect(d.usedIdx).toBe(1);
    expect(d.usedElem(0)).toEqual({ id: 3, len: 513 });
    expect(d.readBytes(R2 + 0x800, 12)).toEqual(Buffer.from([0, 0, 1, 0, 3, 0, 0, 0, 1, 2, 0, 0]));
    expect(ring.inFlight).toBe(0);
    expect(() => ring.push(3, 1)).toThrow(/not in flight/);
  });

  it('reuses the chain object: arrays are emptied, counts reset', () => {
    const d = new Driver(layout());
    const ring = d.ring();
    const chain = new DescriptorChain();
    blkChain(d, 0, 1, 2);
    d.desc(4, R2 + 0x100, 8, 0); // a readable-only chain
    d.offer(0);
    d.offer(4);
    const readable = chain.readable;
    expect(ring.pop(chain)).toBe(true);
    expect(ring.pop(chain)).toBe(true);
    expect(chain.readable).toBe(readable);
    expect(chain.head).toBe(4);
    expect(chain.readable).toHaveLength(1);
    expect(chain.writable).toHaveLength(0);
    expect(chain.readableBytes).toBe(8);
    expect(chain.writableBytes).toBe(0);
    expect(ring.inFlight).toBe(2);
    // Out of order completion: the used ring takes heads in push order.
    ring.push(4, 0);
    ring.push(0, 7);
    expect(d.usedElem(0)).toEqual({ id: 4, len: 0 });
    expect(d.usedElem(1)).toEqual({ id: 0, len: 7 });
    expect(d.usedIdx).toBe(2);
  });

  it('follows an indirect table, as the head or after direct descriptors', () => {
    const d = new Driver(layout());
    const ring = d.ring();
    const chain = new DescriptorChain();
    const table = R2 + 0x1000;
    d.desc(0, R1 + 0x3000, 16, F_NEXT, 2, table);
    d.desc(2, R2 + 0x4000, 4096, F_NEXT | F_WRITE, 1, table);
    d.desc(1, R2 + 0x6000, 1, F_WRITE, 0, table);
    d.desc(6, table, 3 * 16, F_INDIRECT);
    d.offer(6);
    expect(ring.pop(chain)).toBe(true);
    expect(chain.head).toBe(6);
    expect(chain.readableBytes).toBe(16);
    expect(chain.writable.map((b) => b.length)).toEqual([4096, 1]);
    // A direct readable descriptor, then one pointing at a table (the spec forbids only
    // INDIRECT with NEXT): the table continues the chain.
    const table2 = R1 + 0x5000;
    d.desc(0, R2 + 0x7000, 100, F_WRITE, 0, table2);
    d.desc(2, R1 + 0x2000, 16, F_NEXT, 7);
    d.desc(7, table2, 16, F_INDIRECT);
    d.offer(2);
    expect(ring.pop(chain)).toBe(true);
    expect(chain.readableBytes).toBe(16);
    expect(chain.writableBytes).toBe(100);
  });

  it('takes a chain of exactly the queue size, and a full indirect table', () => {
    const d = new Driver(layout({ size: 4 }));
    const ring = d.ring();
    const chain = new DescriptorChain();
    for (let i = 0; i < 4; i++) d.desc(i, R1 + 0x2000 + i, 1, i < 3 ? F_NEXT : 0, (i + 1) % 4);
    d.offer(0);
    expect(ring.pop(chain)).toBe(true);
    expect(chain.readable).toHaveLength(4);
    ring.push(0, 0);
    const table = R2 + 0x1000;
    for (let i = 0; i < 5; i++) d.desc(i, R1 + 0x2000 + i, 1, i < 4 ? F_NEXT | F_WRITE : F_WRITE, i + 1, table);
    d.desc(0, table, 5 * 16, F_INDIRECT);
    d.offer(0);
    expect(ring.pop(chain)).toBe(true);
    expect(chain.writable).toHaveLength(5);
  });

  it('skips zero-length descriptors wherever they are', () => {
    const d = new Driver(layout());
    const ring = d.ring();
    const chain = new DescriptorChain();
    d.desc(0, R1 + 0x2000, 0, F_NEXT, 1);
    d.desc(1, R1 + 0x2000, 16, F_NEXT, 2);
    d.desc(2, R2 + 0x100, 8, F_NEXT | F_WRITE, 3);
    d.desc(3, 0xdead0000, 0, F_NEXT, 4); // readable, after a writable, unmapped: but empty
    d.desc(4, R2 + 0x200, 1, F_WRITE);
    d.offer(0);
    expect(ring.pop(chain)).toBe(true);
    expect(chain.readable.map((b) => b.length)).toEqual([16]);
    expect(chain.writable.map((b) => b.length)).toEqual([8, 1]);
  });

  it('wraps the 16-bit indices', () => {
    const d = new Driver(layout({ size: 4, availIdx: 0xfffe }));
    // The used ring resumes where the available one does.
    d.writeU16(d.layout.used + 2, 0xfffe);
    const ring = d.ring();
    const chain = new DescriptorChain();
    expect(ring.lastAvailIdx).toBe(0xfffe);
    for (let h = 0; h < 4; h++) d.desc(h, R1 + 0x2000 + 0x100 * h, 8 + h, 0);
    for (let h = 0; h < 4; h++) d.offer(h); // entries 0xfffe, 0xffff, 0, 1
    for (let h = 0; h < 4; h++) {
      expect(ring.pop(chain)).toBe(true);
      expect(chain.head).toBe(h);
      expect(chain.readableBytes).toBe(8 + h);
    }
    expect(ring.pop(chain)).toBe(false);
    expect(ring.lastAvailIdx).toBe(2);
    for (let h = 0; h < 4; h++) ring.push(h, h);
    expect(d.usedIdx).toBe(2);
    // 0xfffe & 3 = slot 2 first.
    expect([2, 3, 0, 1].map((s) => d.usedElem(s).id)).toEqual([0, 1, 2, 3]);
    // And on past the wrap: more chains, indices go on from 2.
    d.offer(1);
    expect(ring.pop(chain)).toBe(true);
    ring.push(1, 9);
    expect(d.usedIdx).toBe(3);
    expect(d.usedElem(2)).toEqual({ id: 1, len: 9 });
  });

  it('shouldNotify follows vring_need_event under event idx', () => {
    const start = 0xfff8; // the window crosses the 16-bit wrap
    const d = new Driver(layout({ eventIdx: true, availIdx: start }));
    const ring = d.ring();
    const chain = new DescriptorChain();
    d.desc(0, R1 + 0x2000, 4, 0);
    d.usedEvent = start;
    expect(ring.shouldNotify()).toBe(true); // the first decision always notifies
    let used = start;
    let cases = 0;
    let trues = 0;
    for (let batch = 0; batch <= 3; batch++) {
      for (let e = -2; e <= 5; e++) {
        const old = used;
        for (let k = 0; k < batch; k++) {
          d.offer(0);
          expect(ring.pop(chain)).toBe(true);
          ring.push(0, 4);
          used = (used + 1) & 0xffff;
        }
        const event = (old + e) & 0xffff;
        d.usedEvent = event;
        const expected = specNeedEvent(event, used, old);
        expect(ring.shouldNotify(), `event ${event} old ${old} new ${used}`).toBe(expected);
        cases++;
        if (expected) trues++;
      }
    }
    expect(d.usedIdx).toBe(used);
    expect(cases).toBe(32);
    expect(trues).toBeGreaterThan(0);
    expect(trues).toBeLessThan(cases);
  });

  it('shouldNotify does not lose an interrupt after 2^16 pushes without a decision', () => {
    const start = 0x1234;
    const d = new Driver(layout({ eventIdx: true, availIdx: start }));
    const ring = d.ring();
    const chain = new DescriptorChain();
    d.desc(0, R1 + 0x2000, 4, 0);
    d.usedEvent = start; // "interrupt me after the first buffer"
    expect(ring.shouldNotify()).toBe(true);
    expect(ring.shouldNotify()).toBe(false); // nothing pushed since
    for (let k = 0; k < 0x10000; k++) {
      d.offer(0);
      ring.pop(chain);
      ring.push(0, 4);
    }
    // used.idx is back where it was: the formula alone sees no progress (new === old) and
    // would never interrupt; the driver waiting for used_event must still be woken.
    expect(d.usedIdx).toBe(start);
    expect(specNeedEvent(start, start, start)).toBe(false);
    expect(ring.shouldNotify()).toBe(true);
    expect(ring.shouldNotify()).toBe(false);
  });

  it('shouldNotify follows NO_INTERRUPT without event idx', () => {
    const d = new Driver(layout());
    const ring = d.ring();
    const chain = new DescriptorChain();
    d.desc(0, R1 + 0x2000, 4, 0);
    d.offer(0);
    ring.pop(chain);
    ring.push(0, 0);
    d.availFlags = 1;
    expect(ring.shouldNotify()).toBe(false);
    d.availFlags = 0;
    expect(ring.shouldNotify()).toBe(true);
  });

  it('enable/disableNotifications under event idx: avail_event, and the re-check', () => {
    const d = new Driver(layout({ eventIdx: true, availIdx: 0xfffe }));
    const ring = d.ring();
    const chain = new DescriptorChain();
    d.desc(0, R1 + 0x2000, 4, 0);
    d.desc(1, R1 + 0x2100, 4, 0);
    // From the start, the driver's first buffer kicks.
    expect(d.availEvent).toBe(0xfffe);
    expect(d.wouldKick(0xfffe, 0xffff)).toBe(true);
    expect(ring.enableNotifications()).toBe(false);
    d.offer(0);
    expect(ring.enableNotifications()).toBe(true); // one came in: pop instead of sleeping
    ring.disableNotifications();
    expect(ring.pop(chain)).toBe(true);
    // Disabled: avail_event stays behind; a driver adding two more does not kick.
    expect(d.availEvent).toBe(0xfffe);
    d.offer(1);
    expect(d.wouldKick(0xffff, 0)).toBe(false);
    ring.push(0, 0);
    expect(ring.pop(chain)).toBe(true);
    ring.push(1, 0);
    expect(ring.enableNotifications()).toBe(false);
    expect(d.availEvent).toBe(0);
    expect(d.wouldKick(0, 1)).toBe(true);
    // Enabled and popping: avail_event follows the device, the next add kicks.
    d.offer(0);
    expect(ring.pop(chain)).toBe(true);
    expect(d.availEvent).toBe(1);
    expect(d.wouldKick(1, 2)).toBe(true);
  });

  it('enable/disableNotifications without event idx: NO_NOTIFY, and the re-check', () => {
    const d = new Driver(layout());
    const ring = d.ring();
    const chain = new DescriptorChain();
    d.desc(0, R1 + 0x2000, 4, 0);
    expect(d.usedFlags).toBe(0);
    ring.disableNotifications();
    expect(d.usedFlags).toBe(1);
    expect(d.wouldKick(0, 1)).toBe(false);
    expect(ring.enableNotifications()).toBe(false);
    expect(d.usedFlags).toBe(0);
    d.offer(0);
    expect(ring.enableNotifications()).toBe(true);
    expect(ring.pop(chain)).toBe(true);
    expect(ring.enableNotifications()).toBe(false);
  });

  it('a ring taken over after a reset asks for kicks again, whatever the memory held', () => {
    for (const eventIdx of [false, true]) {
      const d = new Driver(layout({ eventIdx, availIdx: 5 }));
      const old = d.ring();
      old.disableNotifications(); // NO_NOTIFY set by the ring before the reset
      d.writeU16(d.layout.used + 4 + 8 * d.layout.size, 0x7777); // a stale avail_event
      const ring = d.ring();
      expect(d.usedFlags).toBe(0);
      expect(d.wouldKick(5, 6)).toBe(true);
      expect(ring.enableNotifications()).toBe(false);
    }
  });

  it('takes the ring anew when the IOVA regions change', () => {
    const d = new Driver(layout());
    const ring = d.ring();
    const chain = new DescriptorChain();
    const removed = d.memory.remove(R1, R1); // the region with the table and the available ring
    expect(removed[0]).toBe(d.r1);
    ringError(() => ring.pop(chain), /descriptor table .* not inside one mapped region/);
    // Mapped again, elsewhere in memory: the ring reads the new mapping, not the old one.
    const fresh = Buffer.alloc(REGION);
    d.memory.add(R1, R1 + REGION - 1, fresh);
    d.r1.fill(0xff); // the old mapping, "unmapped": must not be read
    const off = d.layout.avail - R1;
    fresh.writeUInt16LE(1, off + 2); // avail.idx 1
    fresh.writeUInt16LE(2, off + 4); // entry 0: head 2
    fresh.writeUInt32LE(R2 + 0x100, d.layout.desc - R1 + 32); // desc 2: addr
    fresh.writeUInt32LE(5, d.layout.desc - R1 + 32 + 8); // len 5
    expect(ring.pop(chain)).toBe(true);
    expect(chain.head).toBe(2);
    expect(chain.readableBytes).toBe(5);
  });

  it('maps regions on first use through resolve(), as VDUSE_IOTLB_GET_FD does', () => {
    const d = new Driver(layout());
    const lazy = new IovaMemory({
      resolve: (iova) => {
        const [buf] = d.memory.remove(iova, iova);
        if (buf === undefined) return false;
        const start = buf === d.r1 ? R1 : R2;
        lazy.add(start, start + REGION - 1, buf);
        return true;
      },
    });
    const ring = new SplitRing(lazy, { size: 8, descAddr: R1 + 0x100, driverAddr: R1 + 0x400, deviceAddr: R2 + 0x800, eventIdx: true });
    expect(lazy.size).toBe(2);
    blkChain(d, 1, 2, 3);
    d.offer(1);
    const chain = new DescriptorChain();
    expect(ring.pop(chain)).toBe(true);
    expect(chain.writableBytes).toBe(513);
    ring.push(1, 1);
    expect(d.usedIdx).toBe(1);
  });

  it('push and shouldNotify on a ring no longer mapped: a RingError, nothing written', () => {
    const d = new Driver(layout());
    const ring = d.ring();
    const chain = new DescriptorChain();
    d.desc(0, R1 + 0x2000, 4, 0);
    d.offer(0);
    expect(ring.pop(chain)).toBe(true);
    d.memory.remove(R2, R2); // the used ring's region
    d.r2.fill(0xee); // the old mapping: must not be written
    ringError(() => ring.push(0, 4), /used ring .* not inside one mapped region/);
    ringError(() => ring.shouldNotify(), /used ring/);
    expect(d.r2.every((x) => x === 0xee)).toBe(true);
    expect(ring.inFlight).toBe(1);
  });

  describe('refuses what the driver must not write, reading nothing outside the mappings', () => {
    /** Offers `head` on a fresh ring after `setup`, expects a RingError, and that nothing was consumed. */
    function refused(setup: (d: Driver) => void, pattern: RegExp, over: Partial<Layout> = {}, head = 0): void {
      const d = new Driver(layout(over));
      const ring = d.ring();
      setup(d);
      d.offer(head);
      const chain = new DescriptorChain();
      ringError(() => ring.pop(chain), pattern);
      expect(ring.lastAvailIdx).toBe(over.availIdx ?? 0);
      expect(ring.inFlight).toBe(0);
      expect(d.usedIdx).toBe(0);
      // Refused again, the same way: the error consumed nothing.
      ringError(() => ring.pop(chain), pattern);
    }

    it('a buffer outside every region', () => {
      refused((d) => d.desc(0, 0x90000, 16, 0), /buffer \[0x90000, \+16\) is not inside one mapped region/);
    });

    it('a buffer straddling two regions', () => {
      refused((d) => d.desc(0, R2 - 8, 16, 0), /buffer \[0x1fff8, \+16\) is not inside one mapped region/);
    });

    it('a buffer running past the last region', () => {
      refused((d) => d.desc(0, R2 + REGION - 1, 2, F_WRITE), /not inside one mapped region/);
    });

    it('an address beyond 2^53', () => {
      refused((d) => d.desc(0, 2 ** 53, 16, 0), /beyond 2\^53/);
    });

    it('a loop', () => {
      refused((d) => {
        d.desc(0, R1 + 0x2000, 1, F_NEXT, 1);
        d.desc(1, R1 + 0x2000, 1, F_NEXT, 0);
      }, /longer than the queue size 8: a loop/);
    });

    it('a loop of zero-length descriptors', () => {
      refused((d) => d.desc(0, 0, 0, F_NEXT, 0), /a loop/);
    });

    it('a chain longer than the queue size (every descriptor, then the first again)', () => {
      refused(
        (d) => {
          for (let i = 0; i < 4; i++) d.desc(i, R1 + 0x2000, 1, F_NEXT, (i + 1) % 4);
        },
        /longer than the queue size 4/,
        { size: 4 },
      );
    });

    it('a chain longer than 2^32 bytes in total', () => {
      // An indirect table of 65536 descriptors (all a u16 `next` can reach), each naming the
      // same 65537 bytes: 2^32 + 65536 bytes. Table and data in a third region.
      const R3 = 0x100000;
      const count = 0x10000;
      const data = R3 + 16 * count;
      const dataLen = 0x10001;
      refused((d) => {
        d.memory.add(R3, data + dataLen - 1, Buffer.alloc(16 * count + dataLen));
        const table = d.memory.view(R3, 16 * count)!;
        for (let i = 0; i < count; i++) {
          table.writeUInt32LE(data, 16 * i);
          table.writeUInt32LE(dataLen, 16 * i + 8);
          table.writeUInt16LE(i + 1 < count ? F_NEXT : 0, 16 * i + 12);
          table.writeUInt16LE((i + 1) & 0xffff, 16 * i + 14);
        }
        d.desc(0, R3, 16 * count, F_INDIRECT);
      }, /indirect descriptor 65535 of head 0: the chain is longer than 2\^32 bytes/);
    });

    it('a readable buffer after a writable one', () => {
      refused((d) => {
        d.desc(0, R1 + 0x2000, 16, F_NEXT | F_WRITE, 1);
        d.desc(1, R1 + 0x3000, 16, 0);
      }, /device-readable buffer after a device-writable one/);
    });

    it('a readable buffer after a writable one across an indirect table', () => {
      const table = R2 + 0x1000;
      refused((d) => {
        d.desc(0, R1 + 0x2000, 16, F_NEXT | F_WRITE, 1);
        d.desc(1, table, 16, F_INDIRECT);
        d.desc(0, R1 + 0x3000, 16, 0, 0, table);
      }, /device-readable buffer after a device-writable one/);
    });

    it('NEXT past the table', () => {
      refused((d) => d.desc(0, R1 + 0x2000, 16, F_NEXT, 8), /NEXT 8 points past the table of 8 descriptors/);
    });

    it('NEXT past an indirect table', () => {
      const table = R2 + 0x1000;
      refused((d) => {
        d.desc(0, R1 + 0x2000, 16, F_NEXT, 2, table);
        d.desc(5, table, 32, F_INDIRECT);
      }, /NEXT 2 points past the indirect table of 2 descriptors/, {}, 5);
    });

    it('a loop inside an indirect table (capped at its length, not the queue size)', () => {
      const table = R2 + 0x1000;
      refused((d) => {
        d.desc(0, R1 + 0x2000, 16, F_NEXT, 1, table);
        d.desc(1, R1 + 0x2000, 16, F_NEXT, 2, table);
        d.desc(2, R1 + 0x2000, 16, F_NEXT, 1, table);
        d.desc(0, table, 48, F_INDIRECT);
      }, /longer than its indirect table \(3 reachable descriptors\)/);
    });

    it('a loop in an indirect table larger than a u16 next can reach, noticed after 65536 descriptors', () => {
      // 2^18 entries; entry i chains to i + 1 and 65535 back to 0: a loop through every
      // reachable entry. Counted: the translations pop() asks for, one per non-empty buffer.
      const R3 = 0x400000;
      const count = 0x40000;
      let views = 0;
      refused((d) => {
        d.memory.add(R3, R3 + 16 * count - 1, Buffer.alloc(16 * count));
        const table = d.memory.view(R3, 16 * count)!;
        for (let i = 0; i < 0x10000; i++) {
          table.writeUInt32LE(R1, 16 * i);
          table.writeUInt32LE(1, 16 * i + 8);
          table.writeUInt16LE(F_NEXT, 16 * i + 12);
          table.writeUInt16LE((i + 1) & 0xffff, 16 * i + 14);
        }
        d.desc(0, R3, 16 * count, F_INDIRECT);
        const view = d.memory.view.bind(d.memory);
        d.memory.view = (iova, length) => {
          views++;
          return view(iova, length);
        };
      }, /longer than its indirect table \(65536 reachable descriptors\): a loop/);
      // The ring's three areas taken anew (a region was added), then two pops (refused
      // twice), each: the table, then 65536 buffers. Without the cap: 2^18 buffers each.
      expect(views).toBe(3 + 2 * (1 + 0x10000));
    });

    it('an indirect table inside an indirect table', () => {
      const table = R2 + 0x1000;
      refused((d) => {
        d.desc(0, R2 + 0x2000, 16, F_INDIRECT, 0, table);
        d.desc(0, table, 16, F_INDIRECT);
      }, /indirect table inside an indirect table/);
    });

    it('an indirect table of a length not a multiple of 16, or 0', () => {
      refused((d) => d.desc(0, R2 + 0x1000, 24, F_INDIRECT), /indirect table of 24 bytes/);
      refused((d) => d.desc(0, R2 + 0x1000, 0, F_INDIRECT), /indirect table of 0 bytes/);
    });

    it('an indirect descriptor with NEXT', () => {
      refused((d) => d.desc(0, R2 + 0x1000, 16, F_INDIRECT | F_NEXT, 1), /both INDIRECT and NEXT/);
    });

    it('an indirect table outside the regions or straddling them', () => {
      refused((d) => d.desc(0, 0x90000, 16, F_INDIRECT), /indirect table \[0x90000, \+16\) is not inside/);
      refused((d) => d.desc(0, R2 - 16, 32, F_INDIRECT), /indirect table \[0x1fff0, \+32\) is not inside/);
    });

    it('a head not below the queue size', () => {
      refused(() => undefined, /names head 8, not below the queue size 8/, {}, 8);
      refused(() => undefined, /names head 65535/, {}, 0xffff);
    });

    it('avail idx more than the queue size ahead', () => {
      const d = new Driver(layout());
      const ring = d.ring();
      d.desc(0, R1 + 0x2000, 16, 0);
      d.setAvailIdx(9);
      ringError(() => ring.pop(new DescriptorChain()), /avail idx 9 is 9 entries ahead of the device's 0, more than the queue size 8/);
      // Exactly the queue size ahead is allowed.
      d.setAvailIdx(8);
      expect(ring.pop(new DescriptorChain())).toBe(true);
      // And behind (0xffff ahead, modulo 2^16) is a jump too.
      d.setAvailIdx(0);
      ringError(() => ring.pop(new DescriptorChain()), /65535 entries ahead/);
    });

    it('a head offered again while in flight', () => {
      const d = new Driver(layout());
      const ring = d.ring();
      const chain = new DescriptorChain();
      d.desc(0, R1 + 0x2000, 16, 0);
      d.offer(0);
      d.offer(0);
      expect(ring.pop(chain)).toBe(true);
      ringError(() => ring.pop(chain), /head 0, which is already in flight/);
      ring.push(0, 0);
      expect(ring.pop(chain)).toBe(true); // given back, it may come again
    });

    it('a queue whose geometry is wrong or whose rings are not mapped', () => {
      const d = new Driver(layout());
      const base = { descAddr: R1 + 0x100, driverAddr: R1 + 0x400, deviceAddr: R2 + 0x800, eventIdx: true };
      expect(() => new SplitRing(d.memory, { ...base, size: 6 })).toThrow(RingError);
      expect(() => new SplitRing(d.memory, { ...base, size: 0 })).toThrow(RingError);
      expect(() => new SplitRing(d.memory, { ...base, size: 65536 })).toThrow(/power of 2/);
      expect(() => new SplitRing(d.memory, { ...base, size: 8, descAddr: R1 + 8 })).toThrow(/16-byte aligned/);
      expect(() => new SplitRing(d.memory, { ...base, size: 8, driverAddr: R1 + 1 })).toThrow(/2-byte aligned/);
      expect(() => new SplitRing(d.memory, { ...base, size: 8, deviceAddr: R2 + 2 })).toThrow(/4-byte aligned/);
      expect(() => new SplitRing(d.memory, { ...base, size: 8, availIdx: 0x10000 })).toThrow(RingError);
      // The used ring with avail_event runs 2 bytes past the last region.
      expect(() => new SplitRing(d.memory, { ...base, size: 8, deviceAddr: R2 + REGION - 68 })).toThrow(
        /used ring .* not inside one mapped region/,
      );
      expect(() => new SplitRing(d.memory, { ...base, size: 8, deviceAddr: R2 + REGION - 68, eventIdx: false })).not.toThrow();
      // The descriptor table straddling the two regions.
      expect(() => new SplitRing(d.memory, { ...base, size: 8, descAddr: R2 - 64 })).toThrow(/descriptor table/);
    });
  });
});
